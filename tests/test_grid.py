from __future__ import annotations

import math
from pathlib import Path

import pytest

from cnnstress import catalog
from cnnstress.grid import MAX_RUNS, GridError, expand, load_grid, parse_override

from conftest import REPO


def base_raw(**over):
    raw = {"name": "g", "base": {"dataset": "shapes", "model": "simple_cnn", "epochs": 2}}
    raw.update(over)
    return raw


def err(raw, **kw) -> str:
    with pytest.raises(GridError) as e:
        expand(raw, source="g.toml", **kw)
    msg = str(e.value)
    assert "\n" not in msg, "errors are one line"
    assert msg.startswith("g.toml: ")
    return msg


def test_cartesian_expansion_variants_times_grid():
    raw = base_raw(variants={"baseline": {}, "cut": {"augment": ["cutout"]}},
                   grid={"seed": [1, 2, 3], "optimizer": {"lr": [0.1, 0.01]}})
    g = expand(raw)
    assert len(g.runs) == 2 * 3 * 2
    assert {(r.variant, r.seed, r.train.optimizer.params["lr"]) for r in g.runs} == {
        (v, s, lr) for v in ("baseline", "cut") for s in (1, 2, 3) for lr in (0.1, 0.01)}
    assert len({r.run_id for r in g.runs}) == 12
    assert g.grid_keys == ["optimizer.lr", "seed"]
    assert any("lr0.01" in r.run_id for r in g.runs)


def test_variant_overrides_merge_tables_and_replace_on_new_name():
    raw = base_raw(variants={"baseline": {}, "lowlr": {"optimizer": {"lr": 0.01}},
                             "adam": {"optimizer": {"name": "adam"}}})
    raw["base"]["optimizer"] = {"name": "sgd", "lr": 0.1, "momentum": 0.8, "nesterov": True}
    runs = {r.variant: r for r in expand(raw).runs}
    assert runs["lowlr"].train.optimizer.params == {**runs["baseline"].train.optimizer.params, "lr": 0.01}
    assert runs["lowlr"].train.optimizer.params["momentum"] == 0.8
    assert runs["adam"].train.optimizer.name == "adam"
    assert runs["adam"].train.optimizer.params == {"lr": 1e-3, "weight_decay": 0.0}  # catalogue defaults


def test_defaults_are_filled_from_the_catalogue():
    r = expand(base_raw()).runs[0]
    assert r.dataset.params == {k: p.default for k, p in catalog.DATASETS["shapes"][1].items()}
    assert r.model.params == {"width": 32}
    assert r.gradcam_layer == "block3"
    assert r.variant == "baseline"  # no [variants] -> one implicit baseline


@pytest.mark.parametrize("mutate, expect", [
    (lambda r: r["base"].update(epochz=3), "[base].epochz: unknown key (did you mean 'epochs'?)"),
    (lambda r: r.update(strees={}), "strees: unknown key (did you mean 'stress'?)"),
    (lambda r: r["base"].update(epochs="3"), "[base].epochs: must be a number"),
    (lambda r: r["base"].update(epochs=2.5), "[base].epochs: must be an integer"),
    (lambda r: r["base"].update(epochs=0), "[base].epochs: 0 needs [base].weights"),
    (lambda r: r["base"].update(batch_size=1), "[base].batch_size: 1 is out of range"),
    (lambda r: r["base"].update(amp="yes"), "[base].amp: must be true or false"),
    (lambda r: r["base"].update(label_smoothing=math.nan), "[base].label_smoothing: must be a finite number"),
    (lambda r: r["base"].update(model="resnet19"), "[base].model: 'resnet19' is not allowed (did you mean 'resnet18'?)"),
    (lambda r: r["base"].update(optimizer={"name": "sgd", "lr": -1}), "[base].optimizer.lr: -1 is out of range"),
    (lambda r: r["base"].update(optimizer={"name": "sgdd"}), "[base].optimizer.name: 'sgdd' is not allowed (did you mean 'sgd'?)"),
    (lambda r: r["base"].update(model_options={"widht": 8}), "[base].model_options.widht: unknown key (did you mean 'width'?)"),
    (lambda r: r["base"].update(augment=["cutuot"]), "[base].augment[0].name: 'cutuot' is not allowed (did you mean 'cutout'?)"),
    (lambda r: r["base"].update(augment="flip"), "[base].augment: must be a list"),
    (lambda r: r["base"].update(schedule={"name": "multistep", "milestones": [5]}), "[base].schedule.milestones: must be increasing epochs"),
    (lambda r: r["base"].pop("dataset"), "[base].dataset: is required"),
    (lambda r: r.update(grid={"seed": []}), "[grid].seed: is an empty list"),
    (lambda r: r.update(grid={"seed": 3}), "[grid].seed: must be a list"),
    (lambda r: r.update(grid={"dataset": ["cifar10"]}), "[grid].dataset: cannot vary within a sweep"),
    (lambda r: r.update(grid={"sed": [1]}), "[grid].sed: unknown key (did you mean 'seed'?)"),
    (lambda r: r.update(variants={"a": {"seed": 3}}), "[variants.a].seed: cannot differ between variants"),
    (lambda r: r.update(compare={"baseline": "base"}, variants={"baseline": {}, "x": {"epochs": 3}}),
     "[compare].baseline: names no variant: 'base'"),
    (lambda r: r.update(stress={"corruptions": ["gaussian_nosie"]}), "[stress].corruptions: 'gaussian_nosie' is not a corruption (did you mean 'gaussian_noise'?)"),
    (lambda r: r.update(stress={"severities": [0, 6]}), "[stress].severities: 0 is out of range; allowed: list of numbers in [1, 5]"),
    (lambda r: r.update(report={"gradcam_layer": "layer3"}), "[report].gradcam_layer: 'layer3' is not a feature-map layer of simple_cnn"),
    (lambda r: r.update(report={"gradcam_layer": "block3.99"}), "[report].gradcam_layer: 'block3.99' is not a feature-map layer of simple_cnn"),
    (lambda r: r.update(report={"gradcam_layer": "block3.."}), "[report].gradcam_layer: 'block3..' is not a feature-map layer"),
    (lambda r: r["base"].update(augment=[{"name": "random_erasing", "scale_min": 0.5, "scale_max": 0.1}]),
     "[base].augment[0].scale_min: must be <= scale_max, got 0.5 > 0.1"),
    (lambda r: r["base"].update(schedule={"name": "cosine", "warmup_epochs": 500}),
     "[base].schedule.warmup_epochs: must be less than epochs=2"),
    (lambda r: r.update(report={"confidence_threshold": 1.5}), "[report].confidence_threshold: 1.5 is out of range"),
])
def test_bad_grids_name_the_key_path(mutate, expect):
    raw = base_raw()
    mutate(raw)
    assert expect in err(raw)


@pytest.mark.parametrize("bad", ["a b", "x/../y", "..", "a;rm -rf", "$(id)", "`id`", "a\nb", "a'b", 'a"b', "", "é"])
def test_unsafe_names_are_rejected(bad):
    assert "name: " in err(base_raw(name=bad)) and "not a safe name" in err(base_raw(name=bad))
    assert "not a safe name" in err(base_raw(variants={bad: {}}))


@pytest.mark.parametrize("key", ["partition", "account", "qos", "constraint"])
@pytest.mark.parametrize("bad", ["gpu\n#SBATCH --x", "a b", "$(id)", "`id`", "a;b", "a'b", "../x", "gpu..x", "a/b"])
def test_unsafe_slurm_values_are_rejected(key, bad):
    assert f"[slurm].{key}:" in err(base_raw(slurm={key: bad}))


def test_slurm_setup_lines_must_be_single_lines():
    assert "[slurm].setup[1]: must be one line" in err(base_raw(slurm={"setup": ["module load x", "a\nb"]}))


def test_oversized_grid_is_rejected_before_expansion():
    n = int(math.isqrt(MAX_RUNS)) + 2
    msg = err(base_raw(grid={"seed": list(range(n)), "batch_size": list(range(1, n + 1))}))
    assert f"expands to {n * n} runs; at most {MAX_RUNS}" in msg


def test_duplicate_runs_are_an_error():
    # two variants that resolve to the same spec (an override equal to the default)
    msg = err(base_raw(variants={"baseline": {}, "same": {"batch_size": 128}}))
    assert "[variants.same]: duplicate run: resolves to the same settings as [variants.baseline]" in msg
    assert "duplicate run" in err(base_raw(grid={"seed": [1, 1]}))


def test_overrides_apply_to_base_and_sections():
    g = expand(base_raw(), overrides=["epochs=3", "optimizer.lr=0.05", "stress.severities=[2]",
                                      "report.confidence_threshold=0.9", "name=other"])
    r = g.runs[0]
    assert (r.train.epochs, r.train.optimizer.params["lr"], r.stress.severities, r.sweep) == (3, 0.05, [2], "other")
    assert g.report["confidence_threshold"] == 0.9
    assert parse_override("model=resnet18") == ("model", "resnet18")
    with pytest.raises(GridError, match="key=value"):
        parse_override("epochs")


def test_gradcam_layer_paths_follow_the_model_options():
    ok = expand(base_raw(report={"gradcam_layer": "block2.3"})).runs[0]
    assert ok.gradcam_layer == "block2.3"
    deep = base_raw(report={"gradcam_layer": "stage2.2"})
    deep["base"].update(model="flexible_cnn", model_options={"depth": 3})
    assert expand(deep).runs[0].gradcam_layer == "stage2.2"
    deep["base"]["model_options"]["depth"] = 2  # stage2 now has blocks 0 and 1 only
    assert "'stage2.2' is not a feature-map layer of flexible_cnn" in err(deep)


def test_set_that_grid_or_a_variant_would_shadow_is_refused():
    raw = base_raw(grid={"seed": [1, 2]}, variants={"baseline": {}, "cut": {"augment": ["cutout"], "optimizer": {"name": "adam"}}})

    def refused(override: str) -> str:
        with pytest.raises(GridError) as e:
            expand(raw, source="g.toml", overrides=[override])
        assert str(e.value).startswith(f"--set: {override}: ") and "\n" not in str(e.value)
        return str(e.value)

    assert "[grid].seed sets this key for every run" in refused("seed=7")
    assert "--set grid.seed=[...]" in refused("seed=7")
    assert "[variants.cut] sets this key" in refused("augment=[]")
    assert "[variants.cut] sets this key" in refused("optimizer.lr=0.5")  # the variant names a whole component
    g = expand(raw, overrides=["grid.seed=[7]", "variants.cut.augment=[\"flip\"]", "epochs=3"])
    assert sorted((r.variant, r.seed, r.train.epochs) for r in g.runs) == [("baseline", 7, 3), ("cut", 7, 3)]
    assert [a.name for a in next(r for r in g.runs if r.variant == "cut").train.augment] == ["flip"]


def test_grid_file_errors(tmp_path: Path):
    with pytest.raises(GridError, match="cannot read the grid file .*pass a .toml file"):
        load_grid(tmp_path)  # a directory
    with pytest.raises(GridError, match="cannot read the grid file"):
        load_grid(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(GridError, match="not valid TOML"):
        load_grid(bad)


def test_every_shipped_grid_expands(tmp_path):
    grids = sorted((REPO / "jobs").glob("*.toml"))
    assert len(grids) >= 6, "the demo and one grid per reference project A-E"
    from fake_cifar import write_fake_cifar

    from cnnstress.launcher import main

    root = tmp_path / "data"
    for name in ("cifar10", "cifar100"):  # the files the launch checks for (small fakes in the official format)
        write_fake_cifar(root, name, n_train=20, n_test=10)
    for path in grids:
        g = load_grid(path)
        assert g.runs and g.baseline in g.variants
        assert main(["--grid", str(path), "--dry-run", "--data-root", str(root), "--out", str(tmp_path)]) == 0
        if g.runs[0].dataset.name.startswith("cifar"):  # without the files: refused, naming the download
            assert main(["--grid", str(path), "--dry-run", "--data-root", str(tmp_path / "none")]) == 2


def test_reference_grid_b_baseline_has_no_augmentation():
    # docs/reference-projects.md, B: the baseline reached 100% training accuracy with no augmentation; the
    # modification adds crop, flip, rotation, colour jitter and random erasing
    g = load_grid(REPO / "jobs" / "ref_b_resnet18_strongaug.toml")
    aug = {r.variant: [a.name for a in r.train.augment] for r in g.runs}
    assert aug == {"baseline": [], "strongaug": ["crop", "flip", "rotation", "color_jitter", "random_erasing"]}


@pytest.mark.parametrize("where", ["base", "grid", "stress", "top"])
@pytest.mark.parametrize("key", ["\n", "a\nb", "\r", "x\x00", "\t"])
def test_control_characters_in_keys_stay_on_one_line(where, key):
    # found by the hypothesis fuzzer in tests/test_reliability.py: a [base] key named "\n"
    raw = base_raw()
    if where == "top":
        raw[key] = 1
    else:
        raw.setdefault(where, {})[key] = [1] if where == "grid" else None
    msg = err(raw)  # asserts a single line starting with the file name
    assert "unknown key" in msg and repr(key)[1:-1] in msg


def test_more_than_one_gpu_per_task_is_refused_with_the_reason(tiny_grid):
    """A worker trains one run on one GPU; a task given more would leave them idle."""
    with pytest.raises(GridError, match=r"\[slurm\]\.gpus_per_task: 2: a run trains on one GPU.*allowed: 0 \(CPU nodes\) or 1"):
        load_grid(tiny_grid, overrides=["slurm.gpus_per_task=2"])
    assert load_grid(tiny_grid, overrides=["slurm.gpus_per_task=0"]).slurm.gpus_per_task == 0


def test_checkpoint_cadence_is_sweep_wide_and_not_part_of_the_run_id(tiny_grid):
    every = load_grid(tiny_grid, overrides=["checkpoint_every_min=0"]).runs
    timed = load_grid(tiny_grid, overrides=["checkpoint_every_min=15"]).runs
    assert [r.run_id for r in every] == [r.run_id for r in timed]
    assert {r.runtime.checkpoint_every_min for r in timed} == {15.0}
    with pytest.raises(GridError, match=r"\[grid\]\.checkpoint_every_min: cannot vary"):
        load_grid(tiny_grid, overrides=["grid.checkpoint_every_min=[0, 5]"])
    with pytest.raises(GridError, match=r"\[base\]\.checkpoint_every_min: -1 is out of range"):
        load_grid(tiny_grid, overrides=["checkpoint_every_min=-1"])


# ---- [stress] adversarial / ood / sanity ------------------------------------------------


def stress_raw(dataset: str = "shapes", **stress):
    raw = base_raw(stress=stress)
    raw["base"]["dataset"] = dataset
    return raw


@pytest.mark.parametrize("stress, expect", [
    ({"adversarial": True, "adversarial_linf": [0, 65]}, "[stress].adversarial_linf: 65 is out of range [0, 64]"),
    ({"adversarial": True, "adversarial_linf": [-1]}, "[stress].adversarial_linf: -1 is out of range [0, 64]"),
    ({"adversarial": True, "adversarial_linf": [math.inf]}, "[stress].adversarial_linf: inf is out of range [0, 64]"),
    ({"adversarial": True, "adversarial_l2": [0.5, 16.5]}, "[stress].adversarial_l2: 16.5 is out of range [0, 16]"),
    ({"adversarial": True, "adversarial_linf": 8}, "[stress].adversarial_linf: must be a list of numbers in [0, 64], got 8"),
    ({"adversarial": True, "adversarial_l2": ["1"]}, "[stress].adversarial_l2: must be a list of numbers in [0, 16], got ['1']"),
    ({"adversarial": True, "adversarial_linf": [True]}, "[stress].adversarial_linf: must be a list of numbers in [0, 64]"),
    ({"adversarial": True, "adversarial_linf": [8, 8.0]}, "[stress].adversarial_linf: has duplicates: [8, 8.0]"),
    ({"adversarial": True, "adversarial_l2": [0.5, 1, 0.5]}, "[stress].adversarial_l2: has duplicates"),
    ({"adversarial": True, "adversarial_linf": [], "adversarial_l2": []},
     "[stress].adversarial_linf: and [stress].adversarial_l2 are both empty: nothing to attack"),
    ({"adversarial": "yes"}, "[stress].adversarial: must be true or false"),
    ({"adversarial": True, "adversarial_steps": 0}, "[stress].adversarial_steps: 0 is out of range"),
    ({"adversarial": True, "adversarial_samples": 0}, "[stress].adversarial_samples: 0 is out of range"),
    ({"ood": True, "ood_samples": 0}, "[stress].ood_samples: 0 is out of range"),
    ({"sanity": True, "sanity_samples": 10_001}, "[stress].sanity_samples: 10001 is out of range"),
    ({"sanity": 1}, "[stress].sanity: must be true or false"),
    ({"ood": True, "ood_sets": "uniform_noise"}, "[stress].ood_sets: must be a list of set names, got 'uniform_noise'"),
    ({"ood": True, "ood_sets": ["uniform_noise", "uniform_noise"]}, "[stress].ood_sets: has duplicates"),
    ({"ood": True, "ood_sets": ["unifrom_noise"]},
     "[stress].ood_sets: 'unifrom_noise' is not an out-of-distribution set for shapes (did you mean 'uniform_noise'?); "
     "allowed: shapes_novel, uniform_noise, smooth_noise"),
    ({"ood": True, "ood_sets": ["cifar10"]},  # a real set, but not one offered for shapes
     "[stress].ood_sets: 'cifar10' is not an out-of-distribution set for shapes; allowed: shapes_novel, uniform_noise, "
     "smooth_noise"),
    ({"adversarial": True, "adversarial_lnf": [8]}, "[stress].adversarial_lnf: unknown key (did you mean 'adversarial_linf'?)"),
])
def test_new_stress_keys_are_validated_with_key_path_and_allowed_values(stress, expect):
    assert expect in err(stress_raw(**stress))


def test_ood_set_of_the_other_cifar_needs_its_file_at_launch_not_when_read(tmp_path: Path):
    from cnnstress import launcher
    from fake_cifar import write_fake_cifar

    # reading the grid never looks at files (gather and --status re-read it long after the launch) ...
    g = expand(stress_raw("cifar10", ood=True, ood_sets=["cifar100", "uniform_noise"]), data_root=tmp_path)
    assert g.runs[0].stress.ood == {"sets": ["cifar100", "uniform_noise"], "samples": 1000}
    # ... a launch checks them before anything is written, naming the download command
    msg = launcher.missing_files(g)
    assert "[stress].ood_sets: 'cifar100' needs the cifar100 test files under" in msg
    assert str(tmp_path) in msg and "python launch.py --download cifar100" in msg
    # not offered for cifar10 at all: the other way round
    assert "'cifar10' is not an out-of-distribution set for cifar10" in err(
        stress_raw("cifar10", ood=True, ood_sets=["cifar10"]), data_root=tmp_path)
    write_fake_cifar(tmp_path, "cifar100", n_train=10, n_test=20)
    assert launcher.missing_files(g).startswith("[base].dataset: cifar10 is not under")  # the clean data, alone
    write_fake_cifar(tmp_path, "cifar10", n_train=10, n_test=20)
    assert launcher.missing_files(g) == ""


def test_empty_ood_sets_mean_every_set_available_when_the_run_starts(tmp_path: Path):
    from fake_cifar import write_fake_cifar

    shapes = expand(stress_raw(ood=True, ood_samples=16), data_root=tmp_path).runs[0]
    assert shapes.stress.ood == {"sets": [], "samples": 16}  # resolved by the worker (oodsets.available_sets)
    before = expand(stress_raw("cifar10", ood=True), data_root=tmp_path).runs[0]
    write_fake_cifar(tmp_path, "cifar100", n_train=10, n_test=20)
    after = expand(stress_raw("cifar10", ood=True), data_root=tmp_path).runs[0]
    assert before.run_id == after.run_id  # a download after the launch does not rename the runs
    # a list given in another order is put in registry order, so it names the same run
    a = expand(stress_raw(ood=True, ood_sets=["smooth_noise", "shapes_novel"])).runs[0]
    b = expand(stress_raw(ood=True, ood_sets=["shapes_novel", "smooth_noise"])).runs[0]
    assert a.stress.ood["sets"] == ["shapes_novel", "smooth_noise"] and a.run_id == b.run_id


def test_stress_spec_of_the_new_tests_when_on():
    r = expand(stress_raw(adversarial=True, adversarial_linf=[8, 0, 2.5, 4.0], adversarial_l2=[1, 0.25],
                          adversarial_steps=3, adversarial_samples=50, sanity=True, sanity_samples=7)).runs[0]
    # sorted, integer-valued radii as ints (they name results.h5 keys), others as floats
    assert r.stress.adversarial == {"linf": [0, 2.5, 4, 8], "l2": [0.25, 1], "steps": 3, "samples": 50}
    assert [type(x) for x in r.stress.adversarial["linf"]] == [int, float, int, int]
    assert r.stress.sanity == {"samples": 7} and r.stress.ood == {}
    # the defaults of an attack turned on without radii: L-inf 0,1,2,4,8 /255, no L2
    d = expand(stress_raw(adversarial=True)).runs[0].stress.adversarial
    assert d == {"linf": [0, 1, 2, 4, 8], "l2": [], "steps": 10, "samples": 1000}
    # only L2 is fine too
    assert expand(stress_raw(adversarial=True, adversarial_linf=[], adversarial_l2=[0.5])).runs[0].stress.adversarial[
        "linf"] == []


def test_new_stress_tests_off_by_default_leave_run_ids_unchanged():
    from cnnstress.config import RunSpec

    runs = expand(base_raw(grid={"seed": [1, 2]})).runs
    for r in runs:
        assert (r.stress.adversarial, r.stress.ood, r.stress.sanity) == ({}, {}, {})
        assert not {"adversarial", "ood", "sanity"} & set(r.identity()["stress"])
        assert set(r.identity()["stress"]) == {"corruptions", "severities", "corruption_seed", "faithfulness_samples",
                                               "train_embedding_samples"}
        # a spec.json written before the keys existed
        old = r.to_dict()
        for key in ("adversarial", "ood", "sanity"):
            del old["stress"][key]
        back = RunSpec.from_dict(old)
        assert back.run_id == r.run_id and back.spec_hash == r.spec_hash and back == r
    # turning each one on makes another run; turning it on in two ways makes two different runs
    base_ids = {r.run_id for r in runs}
    ids = {}
    for stress in ({"adversarial": True}, {"ood": True}, {"sanity": True},
                   {"adversarial": True, "adversarial_steps": 5}, {"sanity": True, "sanity_samples": 5}):
        new = expand(base_raw(grid={"seed": [1, 2]}, stress=stress)).runs
        assert not {r.run_id for r in new} & base_ids, stress
        assert [r.run_id.rsplit("-", 1)[0] for r in new] == [r.run_id.rsplit("-", 1)[0] for r in runs]  # prefix kept
        ids[str(stress)] = new[0].run_id
        assert set(new[0].identity()["stress"]) - set(runs[0].identity()["stress"]) == {next(iter(stress))}
    assert len(set(ids.values())) == len(ids)
    # the --set path: stress.adversarial=true changes the id; off again gives the old id
    assert expand(base_raw(), overrides=["stress.adversarial=true"]).runs[0].run_id != expand(base_raw()).runs[0].run_id
    assert expand(base_raw(), overrides=["stress.adversarial=false"]).runs[0].run_id == expand(base_raw()).runs[0].run_id
    # radii only matter while the attack is on
    assert expand(base_raw(stress={"adversarial_linf": [1]})).runs[0].run_id == expand(base_raw()).runs[0].run_id


def test_new_stress_keys_through_a_grid_file(tmp_path: Path):
    from conftest import tiny_grid_text

    p = tmp_path / "g.toml"
    p.write_text(tiny_grid_text(extra="adversarial = true\nadversarial_linf = [0, 8]\nadversarial_l2 = [0.5]\n"
                                      "ood = true\nood_sets = []\nsanity = true\nsanity_samples = 8\n"))
    r = load_grid(p, data_root=tmp_path / "data").runs[0]
    assert r.stress.adversarial == {"linf": [0, 8], "l2": [0.5], "steps": 10, "samples": 1000}
    assert r.stress.ood == {"sets": [], "samples": 1000}  # every available set, resolved when the run starts
    assert r.stress.sanity == {"samples": 8}
    from cnnstress.config import RunSpec

    assert RunSpec.from_json(r.to_json()) == r and RunSpec.from_json(r.to_json()).run_id == r.run_id


def test_misspelt_dataset_with_ood_on_is_still_a_grid_error():
    # the control: with ood off the grid error names the key (this part passes today)
    assert "[base].dataset: 'shapez' is not allowed (did you mean 'shapes'?)" in err(stress_raw("shapez"))
    assert "[base].dataset: 'shapez' is not allowed (did you mean 'shapes'?)" in err(stress_raw("shapez", ood=True))


def test_run_ids_of_a_launched_sweep_do_not_depend_on_files_downloaded_later(tmp_path: Path):
    import json

    from cnnstress.grid import load_sweep_grid
    from fake_cifar import write_fake_cifar

    data_root = tmp_path / "data"
    sweep = tmp_path / "out" / "g"
    sweep.mkdir(parents=True)
    (sweep / "grid.toml").write_text('name = "g"\n[base]\ndataset = "cifar10"\nmodel = "simple_cnn"\nepochs = 2\n'
                                     "[stress]\nood = true\n")
    (sweep / "launch.json").write_text(json.dumps({"overrides": [], "data_root": str(data_root)}))
    before = load_sweep_grid(sweep).runs
    write_fake_cifar(data_root, "cifar100", n_train=10, n_test=20)  # e.g. launch.py --download cifar100
    assert [r.run_id for r in load_sweep_grid(sweep).runs] == [r.run_id for r in before]


# ---- [stress].source: the official CIFAR-10-C / CIFAR-100-C files ----------------------


def official_raw(dataset: str = "cifar10", **stress):
    raw = base_raw(stress={"source": "official", **stress})
    raw["base"]["dataset"] = dataset
    return raw


@pytest.fixture
def c_root(tmp_path: Path) -> Path:
    """A data root (spaces and quotes in its name) holding fake CIFAR-10-C files (only looked for)."""
    import numpy as np

    from test_cifar_c import write_fake_cifar_c

    root = tmp_path / "data \"root\" it's"
    write_fake_cifar_c(root, "cifar10", labels=np.arange(20) % 10)
    return root


def test_source_generated_is_the_default_and_leaves_run_ids_unchanged(c_root: Path):
    import json

    from cnnstress.config import RunSpec

    plain = expand(base_raw(stress={"corruptions": ["contrast"]})).runs[0]
    same = expand(base_raw(stress={"corruptions": ["contrast"], "source": "generated"})).runs[0]
    assert plain.stress.source == "generated" and "source" not in plain.identity()["stress"]
    assert same.run_id == plain.run_id
    # a spec.json written before the key existed reads as generated, with the same id
    d = json.loads(plain.to_json())
    del d["stress"]["source"]
    assert RunSpec.from_dict(d) == plain and RunSpec.from_dict(d).run_id == plain.run_id
    official = expand(official_raw(corruptions=["fog"]), data_root=c_root).runs[0]
    generated = expand(official_raw(corruptions=["fog"], source="generated"), data_root=c_root).runs[0]
    assert official.identity()["stress"]["source"] == "official"
    assert official.run_id != generated.run_id
    assert RunSpec.from_json(official.to_json()) == official


def test_official_source_takes_the_19_published_names(c_root: Path):
    from cnnstress import cifar_c

    runs = expand(official_raw(corruptions=["all"]), data_root=c_root).runs
    assert runs[0].stress.corruptions == list(cifar_c.CORRUPTIONS) and len(cifar_c.CORRUPTIONS) == 19
    picked = expand(official_raw(corruptions=["saturate", "jpeg_compression", "snow"]), data_root=c_root).runs[0]
    assert picked.stress.corruptions == ["snow", "jpeg_compression", "saturate"]  # the published order
    msg = err(official_raw(corruptions=["jpeg"]), data_root=c_root)
    assert "[stress].corruptions: 'jpeg' is not an official CIFAR-C corruption" in msg
    assert "jpeg_compression" in msg and "elastic_transform" in msg
    assert "has duplicates" in err(official_raw(corruptions=["fog", "fog"]), data_root=c_root)


def test_official_source_needs_cifar_and_its_files(c_root: Path, tmp_path: Path):
    msg = err(official_raw("shapes", corruptions=["fog"]), data_root=c_root)
    assert "[stress].source" in msg and "cifar10 and cifar100 only, not shapes" in msg
    from cnnstress import launcher

    # the files are looked for at launch (launcher.missing_files), never when the grid is read: gather
    # and --status re-read it where the files may be gone
    empty = tmp_path / "no files here"
    g = expand(official_raw(corruptions=["fog"]), data_root=empty)
    msg = launcher.missing_files(g)
    assert "[stress].source" in msg and "python launch.py --download cifar10-c" in msg
    assert str(empty / "CIFAR-10-C" / "labels.npy") in msg
    msg = launcher.missing_files(expand(official_raw("cifar100", corruptions=["fog"]), data_root=c_root))
    assert "CIFAR-100-C" in msg and "--download cifar100-c" in msg
    # the corruption files all there: only the clean batches (not in this folder) are named
    msg = launcher.missing_files(expand(official_raw(corruptions=["fog"]), data_root=c_root))
    assert msg.startswith("[base].dataset: cifar10 is not under") and "[stress]" not in msg
    assert expand(official_raw(corruptions=[]), data_root=empty).runs[0].stress.source == "official"  # nothing to read


def test_source_values_and_names_that_belong_to_the_other_source():
    msg = err(base_raw(stress={"source": "cifar-c"}))
    assert "[stress].source" in msg and "'generated' | 'official'" in msg
    msg = err(base_raw(stress={"corruptions": ["snow"]}))
    assert "'snow' is a corruption of the official CIFAR-C files" in msg and 'source = "official"' in msg


def test_official_source_through_a_grid_file_and_set(c_root: Path, tmp_path: Path):
    grid = tmp_path / "g.toml"
    grid.write_text('name = "g"\n[base]\ndataset = "cifar10"\nmodel = "simple_cnn"\nepochs = 1\n'
                    '[stress]\nsource = "official"\ncorruptions = ["fog", "spatter"]\n')
    g = load_grid(grid, data_root=c_root)
    assert g.runs[0].stress.source == "official" and g.runs[0].stress.corruptions == ["fog", "spatter"]
    g = load_grid(grid, data_root=c_root, overrides=["stress.source=generated", "stress.corruptions=[\"contrast\"]"])
    assert g.runs[0].stress.source == "generated"
