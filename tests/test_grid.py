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
    (lambda r: r["base"].update(epochs=0), "[base].epochs: 0 is out of range"),
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


def test_every_shipped_grid_expands():
    grids = sorted((REPO / "jobs").glob("*.toml"))
    assert len(grids) >= 6, "the demo and one grid per reference project A-E"
    from cnnstress.launcher import main

    for path in grids:
        g = load_grid(path)
        assert g.runs and g.baseline in g.variants
        assert main(["--grid", str(path), "--dry-run"]) == 0  # the CIFAR grids cannot run here


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
    """Issue 10.6: a worker trains one run on one GPU; a task given more would leave them idle."""
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
