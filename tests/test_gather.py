"""Tests for cnnstress.gather: numbers in summary.json/failures.json/runs.csv against independent
computations from the synthetic arrays, run states, reading discipline, and no torch."""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import synth
from cnnstress import data, gather, store

REPO = Path(__file__).resolve().parents[1]
THRESHOLD = 0.7
N = 200
EVIL = "<script>alert(1)</script>"


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    """One full synthetic sweep (2 variants x 2 seeds), gathered once with open_results counted.

    Without figures: this file checks numbers; test_report.py checks the drawn page.
    """
    root = tmp_path_factory.mktemp("gather") / "my data's \"dir\""
    s = synth.make_sweep(root, n_test=N, seeds=(1, 2), threshold=THRESHOLD)
    opened: Counter = Counter()
    original = store.open_results

    def counting(path):
        opened[Path(path).parent.name] += 1
        return original(path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "open_results", counting)
        index = gather.gather(s.sweep_dir, console=quiet(), figures=False)
    summary = json.loads((index.parent / "summary.json").read_text())
    return s, index, summary, opened


# ---- independent computations ---------------------------------------------------------------


def probs_of(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def accuracy_of(run: synth.SynthRun) -> float:
    return float(np.mean(np.argmax(run.arrays["test/logits"], axis=1) == run.arrays["test/label"]))


def correct_of(run: synth.SynthRun) -> np.ndarray:
    return np.argmax(run.arrays["test/logits"], axis=1) == run.arrays["test/label"]


def failures_of(run: synth.SynthRun, threshold: float) -> list[tuple[int, int, int, float]]:
    """(test_index, true, pred, confidence) of wrong predictions above the threshold, by a loop."""
    p = probs_of(run.arrays["test/logits"])
    out = []
    for i in range(p.shape[0]):
        pred = int(np.argmax(p[i]))
        true = int(run.arrays["test/label"][i])
        if pred != true and p[i, pred] > threshold:
            out.append((int(run.arrays["test/index"][i]), true, pred, float(p[i, pred])))
    return sorted(out, key=lambda t: (-t[3], t[0]))


def nll_of(run: synth.SynthRun) -> float:
    p = probs_of(run.arrays["test/logits"])
    y = run.arrays["test/label"].astype(int)
    return float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))


def ece_of(run: synth.SynthRun, bins: int = 15, key: str = "test/logits") -> float:
    p = probs_of(run.arrays[key])
    conf, pred = p.max(axis=1), p.argmax(axis=1)
    right = pred == run.arrays["test/label"]
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(conf[i] > lo or (b == 0 and conf[i] >= lo)) and conf[i] <= hi for i in range(len(conf))]
        inside = np.array(inside)
        if inside.any():
            total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
    return total


def by_id(summary: dict) -> dict[str, dict]:
    return {r["run_id"]: r for r in summary["runs"]}


# ---- summary.json -----------------------------------------------------------------------------


def test_summary_has_design_fields(gathered) -> None:
    s, index, summary, _ = gathered
    assert summary["sweep"] == "synth"
    assert set(summary) >= {"sweep", "runs", "variants", "comparisons"}
    for row in summary["runs"]:
        assert set(row) >= {"run_id", "variant", "seed", "status", "test_accuracy", "high_conf_failures", "ece", "nll"}
    for v in summary["variants"].values():
        assert set(v) >= {"n_runs", "test_accuracy_mean", "test_accuracy_std", "ci95"}
    for c in summary["comparisons"]:
        assert set(c) >= {"variant", "baseline", "accuracy_delta_mean", "ci95", "corrected", "worsened",
                          "both_wrong", "both_right"}


def test_run_numbers_exact(gathered) -> None:
    s, _, summary, _ = gathered
    rows = by_id(summary)
    assert len(rows) == len(s.grid.runs) == 4
    for run in s.runs:
        row = rows[run.run_id]
        assert row["status"] == "done"
        assert row["variant"] == run.spec.variant and row["seed"] == run.spec.seed
        assert row["test_accuracy"] == accuracy_of(run)
        # planted: exactly round(acc * N) right
        vi = ["baseline", "cropflip"].index(run.spec.variant)
        assert round(row["test_accuracy"] * N) == round(synth.default_accuracy(vi, [1, 2].index(run.spec.seed)) * N)
        assert row["high_conf_failures"] == len(failures_of(run, THRESHOLD))
        assert row["nll"] == pytest.approx(nll_of(run), rel=1e-9)
        assert row["ece"] == pytest.approx(ece_of(run), abs=1e-9)
        assert 0 <= row["test_accuracy"] <= 1


def test_variant_mean_std(gathered) -> None:
    s, _, summary, _ = gathered
    for variant in ("baseline", "cropflip"):
        accs = [accuracy_of(s.run(variant, seed)) for seed in (1, 2)]
        v = summary["variants"][variant]
        assert v["n_runs"] == 2
        assert v["test_accuracy_mean"] == pytest.approx(sum(accs) / 2, abs=1e-15)
        assert v["test_accuracy_std"] == pytest.approx(float(np.std(accs, ddof=1)), abs=1e-15)
        lo, hi = v["ci95"]
        assert lo <= v["test_accuracy_mean"] <= hi
        highs = [len(failures_of(s.run(variant, seed), THRESHOLD)) for seed in (1, 2)]
        assert v["high_conf_failures_mean"] == pytest.approx(np.mean(highs))


def test_disagreement_counts_match_a_loop(gathered) -> None:
    s, _, summary, _ = gathered
    (comp,) = summary["comparisons"]
    assert comp["variant"] == "cropflip" and comp["baseline"] == "baseline" and comp["n_pairs"] == 2
    totals = Counter()
    deltas = []
    for k, seed in enumerate((1, 2)):  # paired by sorted seed order
        b, v = correct_of(s.run("baseline", seed)), correct_of(s.run("cropflip", seed))
        pair = Counter()
        for i in range(N):
            key = {(False, True): "corrected", (True, False): "worsened", (False, False): "both_wrong",
                   (True, True): "both_right"}[(bool(b[i]), bool(v[i]))]
            pair[key] += 1
        got = comp["pairs"][k]
        assert (got["base_seed"], got["var_seed"]) == (seed, seed)
        assert {key: got[key] for key in pair} == dict(pair)
        assert 0.0 <= got["mcnemar_p"] <= 1.0
        totals += pair
        deltas.append(v.mean() - b.mean())
    for key in ("corrected", "worsened", "both_wrong", "both_right"):
        assert comp[key] == totals[key]
    assert sum(comp[k] for k in ("corrected", "worsened", "both_wrong", "both_right")) == 2 * N
    assert comp["accuracy_delta_mean"] == pytest.approx(float(np.mean(deltas)), abs=1e-12)
    assert comp["ci95"][0] <= comp["ci95"][1]
    assert isinstance(comp["verdict"], str) and comp["verdict"]
    assert comp["baseline_noise_floor"] == pytest.approx(
        float(np.mean(correct_of(s.run("baseline", 1)) != correct_of(s.run("baseline", 2)))))
    var_wrong = np.stack([~correct_of(s.run("cropflip", seed)) for seed in (1, 2)])
    assert comp["variant_persistent_failures"] == {"persistent": int(var_wrong.all(axis=0).sum()),
                                                   "seed_dependent": int((var_wrong.any(axis=0)
                                                                          & ~var_wrong.all(axis=0)).sum())}
    assert comp["disagreement_exceeds_floor"] is (comp["variant_disagreement"] > comp["baseline_noise_floor"])


def test_failures_json_matches(gathered) -> None:
    s, index, _, _ = gathered
    fails = json.loads((index.parent / "failures.json").read_text())
    assert fails["confidence_threshold"] == THRESHOLD
    runs = {r["run_id"]: r for r in fails["runs"]}
    assert set(runs) == {r.run_id for r in s.runs}
    for run in s.runs:
        expected = failures_of(run, THRESHOLD)
        got = runs[run.run_id]["failures"]
        assert runs[run.run_id]["count"] == len(got) == len(expected)
        assert [(g["test_index"], g["true"], g["pred"]) for g in got] == [e[:3] for e in expected]
        assert [g["confidence"] for g in got] == pytest.approx([e[3] for e in expected], rel=1e-12)
        names = s.grid.runs[0].num_classes
        assert all(isinstance(g["true_name"], str) and g["true_name"] != g["pred_name"] for g in got)
        assert names == 10


def test_runs_csv_one_row_per_expected_run(gathered) -> None:
    s, index, summary, _ = gathered
    rows = list(csv.DictReader((index.parent / "runs.csv").read_text().splitlines()))
    assert [r["run_id"] for r in rows] == [spec.run_id for spec in s.grid.runs]
    for r in rows:
        assert r["status"] == "done"
        assert float(r["test_accuracy"]) == pytest.approx(by_id(summary)[r["run_id"]]["test_accuracy"], abs=1e-12)


def test_each_results_file_opened_once(gathered) -> None:
    s, _, _, opened = gathered
    assert dict(opened) == {r.run_id: 1 for r in s.runs}


def test_report_files_exist(gathered) -> None:
    _, index, summary, _ = gathered
    report = index.parent
    assert index.name == "index.html" and index.is_file()
    for name in ("summary.json", "failures.json", "runs.csv"):
        assert (report / name).is_file()
    assert not list((report / "figures").glob("*.png")), "figures=False draws nothing"
    assert summary["canonical_cases"], "the synthetic baseline has persistent high-confidence failures"
    assert summary["images_available"] is True
    # shortcut planted: the baseline follows the background more often than the variant
    base, var = summary["variants"]["baseline"]["shortcut"], summary["variants"]["cropflip"]["shortcut"]
    assert base["follows_background"] > var["follows_background"]
    assert not list(report.glob(".*.tmp-*")), "no temp files left behind"


# ---- run states -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def troubled(tmp_path_factory):
    """A sweep with one run missing, one failed (hostile reason) and one corrupt results.h5,
    gathered in a subprocess through main(), which also reports the modules it imported."""
    root = tmp_path_factory.mktemp("troubled") / "sweep 'dir'"
    s = synth.make_sweep(root, name="trouble", variants=("baseline", "flip"), seeds=(1, 2, 3), n_test=120,
                         corruptions=(), faithfulness=False, train_subset=False,
                         missing={("flip", 3)}, failed={("flip", 2): EVIL}, corrupt={("baseline", 3)})
    stale = s.sweep_dir / "report" / "figures" / "stale_from_an_earlier_gather.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\x89PNG old")
    code = (
        "import json, sys\n"
        "from cnnstress import gather\n"
        "rc = gather.main([sys.argv[1]])\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.') or m in "
        "('cnnstress.engine', 'cnnstress.worker', 'cnnstress.models', 'cnnstress.augment', 'cnnstress.corrupt'))\n"
        "print('MODULES=' + json.dumps(bad))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(s.sweep_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    return s, proc


def test_main_exit_zero_and_no_torch(troubled) -> None:
    s, proc = troubled
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = s.sweep_dir / "report" / "figures"
    assert not (figures / "stale_from_an_earlier_gather.png").exists(), "stale figures are removed"
    assert (figures / "overview.png").is_file()
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES=")][-1]
    assert json.loads(line[len("MODULES="):]) == []


def test_troubled_runs_named_with_status_and_reason(troubled) -> None:
    s, _ = troubled
    report = s.sweep_dir / "report"
    summary = json.loads((report / "summary.json").read_text())
    rows = by_id(summary)
    missing, failed, broken = s.run("flip", 3), s.run("flip", 2), s.run("baseline", 3)
    # status within docs/design.md's three values; the finer state beside it
    assert (rows[missing.run_id]["status"], rows[missing.run_id]["state"]) == ("missing", "missing")
    assert (rows[failed.run_id]["status"], rows[failed.run_id]["state"]) == ("failed", "failed")
    assert rows[failed.run_id]["reason"] == EVIL
    assert (rows[broken.run_id]["status"], rows[broken.run_id]["state"]) == ("failed", "broken")
    assert "results.h5" in rows[broken.run_id]["reason"]
    assert {r["status"] for r in summary["runs"]} <= {"done", "failed", "missing"}
    for rid in (missing.run_id, failed.run_id, broken.run_id):
        assert rows[rid]["test_accuracy"] is None
    assert summary["status_counts"] == {"done": 3, "failed": 2, "missing": 1}
    assert summary["state_counts"] == {"done": 3, "failed": 1, "broken": 1, "missing": 1}
    # the report still compares what is there: baseline seeds 1, 2 with flip seed 1
    assert summary["variants"]["baseline"]["n_runs"] == 2 and summary["variants"]["flip"]["n_runs"] == 1
    (comp,) = summary["comparisons"]
    assert comp["n_pairs"] == 1
    b, v = correct_of(s.run("baseline", 1)), correct_of(s.run("flip", 1))
    assert comp["corrected"] == int(np.sum(~b & v)) and comp["worsened"] == int(np.sum(b & ~v))
    csv_rows = {r["run_id"]: r for r in csv.DictReader((report / "runs.csv").read_text().splitlines())}
    assert len(csv_rows) == 6
    assert csv_rows[failed.run_id]["reason"] == EVIL and csv_rows[missing.run_id]["status"] == "missing"
    assert (csv_rows[broken.run_id]["status"], csv_rows[broken.run_id]["state"]) == ("failed", "broken")
    page = (report / "index.html").read_text()
    for rid in (missing.run_id, failed.run_id, broken.run_id):
        assert rid in page
    assert EVIL not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    for word in (">missing<", ">failed<", ">broken<", ">failed (broken)<"):
        assert word in page
    assert "3 of 6 runs finished (2 failed (1 broken), 1 missing; see Run status)." in html.unescape(page)


def test_partial_run_and_unreadable_sweep(tmp_path: Path) -> None:
    """A run with only a checkpoint is state 'partial', status 'missing' (it may still be running, or
    resume on relaunch: no result yet, not a failure); a sweep with no grid.toml makes main() exit 2."""
    s = synth.make_sweep(tmp_path / "a b", name="part", variants=("baseline",), seeds=(1,), n_test=100,
                         corruptions=(), faithfulness=False, train_subset=False, val=False, missing={("baseline", 1)})
    run_dir = s.sweep_dir / "runs" / s.runs[0].run_id
    run_dir.mkdir(parents=True)
    (run_dir / store.CHECKPOINT_NAME).write_bytes(b"not really")
    index = gather.gather(s.sweep_dir, console=quiet())
    summary = json.loads((index.parent / "summary.json").read_text())
    (row,) = summary["runs"]
    assert (row["status"], row["state"]) == ("missing", "partial") and "checkpoint" in row["reason"]
    assert summary["status_counts"] == {"missing": 1} and summary["state_counts"] == {"partial": 1}
    assert ">missing (partial)<" in index.read_text()
    assert summary["variants"]["baseline"]["n_runs"] == 0
    assert summary["comparisons"] == []
    assert gather.main([str(tmp_path / "nowhere")]) == 2


def test_groups_of_grid_values_compare_within_group(tmp_path: Path) -> None:
    """A non-seed grid key splits runs into groups; each variant is compared with its group's baseline."""
    s = synth.make_sweep(tmp_path / "g r", name="groups", dataset="cifar100", variants=("baseline", "mix"),
                         seeds=(1, 2), n_test=150, extra_grid="model_options.width = [4, 8]", corruptions=(),
                         faithfulness=False, train_subset=False)
    index = gather.gather(s.sweep_dir, console=quiet(), figures=False)
    summary = json.loads((index.parent / "summary.json").read_text())
    assert summary["images_available"] is False  # no CIFAR-100 on disk: the report goes on
    assert len(summary["runs"]) == 8
    groups = {"model_options.width=4": 4, "model_options.width=8": 8}
    assert set(summary["variants"]) == {f"{v} [{g}]" for v in ("baseline", "mix") for g in groups}
    assert len(summary["comparisons"]) == 2
    for comp in summary["comparisons"]:
        width = groups[comp["group"]]
        for pair in comp["pairs"]:
            base = next(r for r in s.runs if r.run_id == pair["base_run_id"])
            var = next(r for r in s.runs if r.run_id == pair["var_run_id"])
            assert base.spec.model.params["width"] == var.spec.model.params["width"] == width
            assert (base.spec.variant, var.spec.variant) == ("baseline", "mix")
            assert base.spec.seed == var.spec.seed == pair["base_seed"]
            b, v = correct_of(base), correct_of(var)
            assert (pair["corrected"], pair["worsened"]) == (int(np.sum(~b & v)), int(np.sum(b & ~v)))


def test_slurm_restarts_reach_summary_and_page(tmp_path: Path) -> None:
    s = synth.make_sweep(tmp_path / "sweep root's", n_test=100, seeds=(1,), corruptions=(), val=False,
                         train_subset=False, faithfulness=False)
    requeued = s.runs[0]
    done = json.loads((requeued.run_dir / "DONE.json").read_text())
    store.write_done(requeued.run_dir, {**done["summary"], "restarts": 2}, done["results_sha256"])
    index = gather.gather(s.sweep_dir, console=quiet(), figures=False)
    rows = {r["run_id"]: r for r in json.loads((index.parent / "summary.json").read_text())["runs"]}
    assert rows[requeued.spec.run_id]["restarts"] == 2
    assert "requeued by Slurm" in index.read_text()


def val_nll_at(run: synth.SynthRun, t: float) -> float:
    p = probs_of(run.arrays["val/logits"].astype(np.float64) / t)
    y = run.arrays["val/label"].astype(int)
    return float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))


def corrupted_scores_of(run: synth.SynthRun, key: str, t: float) -> dict[str, float]:
    """ECE, NLL, Brier of one corrupted set by loops, and the ECE after dividing by ``t``."""
    x = run.arrays[key].astype(np.float64)
    y = run.arrays["test/label"].astype(int)
    p = probs_of(x)
    nll = float(np.mean([-math.log(p[i, y[i]]) for i in range(len(y))]))
    brier = float(np.mean([sum((p[i, k] - (k == y[i])) ** 2 for k in range(p.shape[1])) for i in range(len(y))]))
    scaled = synth.SynthRun(run.spec, run.run_dir, run.status, arrays={"x": (x / t), "test/label": y})
    return {"ece": ece_of(run, key=key), "nll": nll, "brier": brier, "ece_after": ece_of(scaled, key="x")}


def test_calibration_under_corruption_matches_a_loop(gathered) -> None:
    """ECE, NLL, Brier and ECE after the clean-validation temperature, per corrupted set, against loops."""
    s, _, summary, _ = gathered
    rows = by_id(summary)
    for name, v in summary["variants"].items():
        runs = [r for r in s.runs if r.spec.variant == v["variant"] and r.status == "done"]
        assert v["corruption_ece"], "the synthetic sweep stores corrupted logits"
        temps = {}
        for r in runs:  # the temperature is fitted on the clean validation split: a minimum of its NLL
            t = rows[r.run_id]["temperature"]
            assert all(val_nll_at(r, t) <= val_nll_at(r, t * f) + 1e-12 for f in (0.98, 1.02)), r.run_id
            temps[r.run_id] = t
        every: dict[str, list[float]] = {}
        for corruption, per_sev in v["corruption_ece"].items():
            for sev in per_sev:
                per_run = [corrupted_scores_of(r, f"stress/{corruption}/{sev}/logits", temps[r.run_id]) for r in runs]
                for k in ("ece", "nll", "brier", "ece_after"):
                    want = float(np.mean([p[k] for p in per_run]))
                    assert v[f"corruption_{k}"][corruption][sev] == pytest.approx(want, abs=1e-9), (name, k, sev)
                    every.setdefault(k, []).append(want)
        for k, vals in every.items():
            assert v[f"mean_corruption_{k}"] == pytest.approx(float(np.mean(vals)), abs=1e-9), (name, k)


def test_gradcam_layer_and_map_size_in_summary_and_page(gathered) -> None:
    """Each variant names the layer its maps come from (its spec) and their stored size."""
    s, index, summary, _ = gathered
    for name, v in summary["variants"].items():
        runs = [r for r in s.runs if r.spec.variant == v["variant"] and r.status == "done"]
        layers = {r.spec.gradcam_layer for r in runs}
        sizes = {r.arrays["test/gradcam/pred"].shape[1:] for r in runs}
        assert len(layers) == len(sizes) == 1
        assert v["gradcam"] == {"layer": layers.pop(), "map_size": list(sizes.pop())}
        assert v["gradcam"] == {"layer": "block3", "map_size": [synth.MAP_SIZE, synth.MAP_SIZE]}  # simple_cnn default
    page = index.read_text()
    for sid in ("canonical", "faithfulness", "shortcut"):
        section = page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]
        assert f"block3, {synth.MAP_SIZE}×{synth.MAP_SIZE}" in section, sid
        assert "[report].gradcam_layer" in section, sid


def test_breaking_first_in_summary_matches_a_loop(gathered) -> None:
    """Per variant and corruption: classes ranked by pooled accuracy drop at the lowest severity,
    ties by the drop at the middle severity, then by class index; of those whose drop is beyond the
    seed spread (the 95% t-interval over the seeds' own drops above 0), the first three."""
    s, _, summary, _ = gathered
    spec = s.grid.runs[0]
    names = [str(n) for n in data.dataset_info(spec.dataset.name, spec.paths.data_root, spec.dataset.params).class_names]
    listed = 0
    for name, v in summary["variants"].items():
        runs = [r for r in s.runs if r.spec.variant == v["variant"] and r.status == "done"]
        assert set(v["breaking_first"]) == set(v["corruption_accuracy"])
        for corruption, per_sev in v["corruption_accuracy"].items():
            sevs = sorted(int(k) for k in per_sev)
            low, mid = sevs[0], sevs[len(sevs) // 2]

            def pooled_acc(key):
                right, total = Counter(), Counter()
                for r in runs:
                    pred = np.argmax(r.arrays[key], axis=1)
                    for y, p in zip(r.arrays["test/label"], pred):
                        total[int(y)] += 1
                        right[int(y)] += int(p == y)
                return {c: right[c] / total[c] for c in total}

            def seed_drop(r, c):
                y = r.arrays["test/label"]
                right = [np.argmax(r.arrays[k][y == c], axis=1) == c for k in ("test/logits", f"stress/{corruption}/{low}/logits")]
                return float(np.mean(right[0]) - np.mean(right[1]))

            def lower_bound(c):  # 95% t-interval over the seeds' drops (t quantile from printed tables)
                d = [seed_drop(r, c) for r in runs]
                mean = sum(d) / len(d)
                sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1))
                return mean - {1: 12.706, 2: 4.303}[len(d) - 1] * sd / math.sqrt(len(d))

            clean = pooled_acc("test/logits")
            at_low, at_mid = pooled_acc(f"stress/{corruption}/{low}/logits"), pooled_acc(f"stress/{corruption}/{mid}/logits")
            ranked = sorted(clean, key=lambda c: (-(clean[c] - at_low[c]), -(clean[c] - at_mid[c]), c))
            ranked = [c for c in ranked if lower_bound(c) > 1e-9][:3]
            got = v["breaking_first"][corruption]
            assert [g["accuracy_drop"] for g in got] == pytest.approx([clean[c] - at_low[c] for c in ranked], abs=1e-12)
            assert [g["class"] for g in got] == [names[c] for c in ranked]
            assert all(g["ci95"][0] > 0 for g in got)
            listed += len(got)
    assert listed, "the synthetic sweep has drops beyond the seed spread: some class is listed"


def test_canonical_neighbours_in_summary_match_a_loop(gathered) -> None:
    """Each canonical case lists its 5 nearest stored training images by cosine similarity of the
    first baseline seed's embeddings."""
    s, _, summary, _ = gathered
    first = s.run("baseline", 1)
    a = first.arrays
    train = a["train_subset/embedding"].astype(np.float64)
    assert summary["canonical_cases"]
    for case in summary["canonical_cases"]:
        q = a["test/embedding"][case["position"]].astype(np.float64)
        sims = [float(q @ t / (np.linalg.norm(q) * np.linalg.norm(t))) for t in train]
        top = sorted(range(len(sims)), key=lambda j: (-sims[j], j))[:5]
        got = case["neighbours"]
        assert [g["train_index"] for g in got] == [int(a["train_subset/index"][j]) for j in top]
        assert [g["similarity"] for g in got] == pytest.approx([sims[j] for j in top], abs=1e-9)
        assert all(isinstance(g["label"], str) for g in got)


def test_canonical_cases_are_strict_majority_failures(gathered) -> None:
    """With 2 baseline seeds a canonical case fails confidently in both (1 of 2 is not 'most')."""
    s, _, summary, _ = gathered
    base = [s.run("baseline", seed) for seed in (1, 2)]
    keyed = []
    for i in range(N):
        confs = []
        for r in base:
            p = probs_of(r.arrays["test/logits"])[i]
            if int(np.argmax(p)) != int(r.arrays["test/label"][i]) and p.max() > THRESHOLD:
                confs.append(float(p.max()))
        if 2 * len(confs) > len(base):
            keyed.append((-len(confs) / len(base), -sum(confs) / len(confs), i))
    k = int(s.grid.report["canonical_cases"])
    cases = summary["canonical_cases"]
    assert [c["position"] for c in cases] == [i for *_, i in sorted(keyed)][:k]
    assert cases and all(c["fail_fraction"] == 1.0 for c in cases)


# ---- a non-finite array in a finished run ------------------------------------------------------


@pytest.mark.parametrize("key", ["test/embedding", "test/gradcam/pred", "faithfulness/deletion_gradcam"])
def test_a_run_with_an_infinite_array_is_broken_naming_the_key(tmp_path, key) -> None:
    import h5py  # tests may bypass store to write what the worker never would

    s = synth.make_sweep(tmp_path / "inf 'sweep'", n_test=N, seeds=(1, 2), corruptions=(), faithfulness=True)
    run = s.run("cropflip", 2)
    path = run.run_dir / store.RESULTS_NAME
    with h5py.File(path, "r+") as fh:
        fh[key][0] = np.inf  # written after publish, DONE.json's hash then updated to match
    done = json.loads((run.run_dir / store.DONE_NAME).read_text())
    done["results_sha256"] = store.sha256_file(path)
    (run.run_dir / store.DONE_NAME).write_text(json.dumps(done))
    with pytest.raises(store.ResultsError, match=f"{key}: contains infinity"):
        store.validate_results(path)
    state = store.run_state(run.run_dir)
    assert state.status == "broken" and key in state.reason
    index = gather.gather(s.sweep_dir, console=quiet(), figures=False)
    summary = json.loads((index.parent / "summary.json").read_text())
    row = by_id(summary)[run.run_id]
    assert (row["status"], row["state"]) == ("failed", "broken") and key in row["reason"]
    assert summary["variants"]["cropflip"]["n_runs"] == 1  # the rest is still compared
    assert key in html.unescape(index.read_text(encoding="utf-8"))


# ---- the report cannot be written --------------------------------------------------------------


@pytest.fixture
def small_sweep(tmp_path):
    root = tmp_path / "full 'disk'"
    return root, synth.make_sweep(root, n_test=N, seeds=(1,), corruptions=())


def _mount_tiny(folder: Path, size: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


COMMANDS = {
    "gather module": lambda root, s, extra: [sys.executable, "-m", "cnnstress.gather", str(s.sweep_dir), *extra],
    "launch.py --gather": lambda root, s, extra: [sys.executable, str(REPO / "launch.py"), "--grid",
                                                  str(s.sweep_dir / "grid.toml"), "--out", str(root), "--gather"],
}


@pytest.mark.parametrize("figures", [True, False], ids=["figures", "no figures"])
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_a_full_disk_is_one_line_and_exit_1(small_sweep, command, figures) -> None:
    root, s = small_sweep
    if not figures and command == "launch.py --gather":
        pytest.skip("launch.py always draws the figures")
    report = s.sweep_dir / "report"
    # the sweep on a file system with 64 KiB to spare, which holds no full set of figures; 4 KiB
    # (one page) not even summary.json (the report is built beside report/, then renamed into place)
    copy = root / "sweep copy"
    shutil.copytree(s.sweep_dir, copy)
    shutil.rmtree(s.sweep_dir)
    _mount_tiny(s.sweep_dir, "64m")
    try:
        shutil.copytree(copy, s.sweep_dir, dirs_exist_ok=True)
        st = os.statvfs(s.sweep_dir)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
        spare = 64 * 1024 if figures else 4096
        subprocess.run(["mount", "-o", f"remount,size={used + spare}", str(s.sweep_dir)], check=True)
        proc = subprocess.run(COMMANDS[command](root, s, [] if figures else ["--no-figures"]), cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert not [p.name for p in s.sweep_dir.iterdir() if p.name.startswith(".report.tmp-")]
    finally:
        subprocess.run(["umount", str(s.sweep_dir)], check=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "cannot write the report" in ln]
    assert len(lines) == 1 and lines[0].endswith(": No space left on device"), out
    where = f"{report / 'figures'}/" if figures else f"{report / 'summary.json'}:"
    assert f"error: cannot write the report: {where}" in lines[0], out


def test_report_folder_removed_while_drawing_is_made_again(small_sweep, monkeypatch) -> None:
    import shutil

    from cnnstress.report import figures as F

    _, s = small_sweep
    report = s.sweep_dir / "report"
    gather.gather(s.sweep_dir, console=quiet(), figures=False)  # the report a user deletes next
    real, removed = F.FigureWriter.add, []

    def add_then_remove(self, name, fig, caption):
        ref = real(self, name, fig, caption)
        if ref is not None and not removed:  # someone deletes report/ after the first figure
            shutil.rmtree(report)
            removed.append(name)
        return ref

    monkeypatch.setattr(F.FigureWriter, "add", add_then_remove)
    index = gather.gather(s.sweep_dir, console=quiet())
    assert removed and index.is_file()
    for name in ("summary.json", "failures.json", "runs.csv"):
        assert (report / name).is_file()
    assert len(list((report / "figures").glob("*.png"))) >= 3


def test_a_report_with_fewer_finished_runs_keeps_the_one_it_replaces(small_sweep) -> None:
    _, s = small_sweep
    report, prev = s.sweep_dir / "report", s.sweep_dir / "report.prev"
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    first = (report / "summary.json").read_bytes()
    before = gather.finished_in_report(report)
    assert before == len(s.runs)
    (s.runs[0].run_dir / "DONE.json").unlink()  # one run is no longer finished
    said = quiet()
    gather.gather(s.sweep_dir, console=said, figures=False)
    assert gather.finished_in_report(report) == before - 1
    assert (prev / "summary.json").read_bytes() == first and (prev / "index.html").is_file()
    text = said.file.getvalue()
    assert f"this report has {before - 1} finished runs, the one it replaced had {before}" in text
    assert str(prev) in text.replace("\n", "")
    # as many or more: the previous report goes, report.prev/ is left as it was
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    assert (prev / "summary.json").read_bytes() == first
    assert sorted(p.name for p in s.sweep_dir.iterdir() if p.name.startswith(".report")) == []


def test_a_stopped_gather_leaves_report_alone_and_its_leftovers_go_at_the_next(small_sweep, monkeypatch) -> None:
    import socket

    _, s = small_sweep
    report = s.sweep_dir / "report"
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    page = (report / "index.html").read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as a gather job cancelled while it writes

    monkeypatch.setattr(gather, "build_runs_csv", killed)
    with pytest.raises(KeyboardInterrupt):
        gather.gather(s.sweep_dir, console=quiet(), figures=False)
    monkeypatch.undo()
    assert (report / "index.html").read_bytes() == page  # the last good report, whole
    # what a SIGKILLed gather leaves: its half-built folder; and one of a gather still running
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    left = s.sweep_dir / f".report.tmp-{host}-{dead.pid}-0badf00d"
    live = s.sweep_dir / f".report.tmp-{host}-{os.getpid()}-0badf00d"
    for d in (left, live):
        (d / "figures").mkdir(parents=True)
        (d / "index.html").write_text("half")
    said = quiet()
    gather.gather(s.sweep_dir, console=said, figures=False)
    assert not left.exists() and live.exists()
    assert f"removed {left.name}/" in said.file.getvalue()


def test_a_gather_with_nothing_new_changes_no_file_and_an_unchanged_figure_keeps_its_time(small_sweep) -> None:
    _, s = small_sweep
    report = s.sweep_dir / "report"
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    snap = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in report.rglob("*") if p.is_file()}
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in report.rglob("*") if p.is_file()} == snap
    # one run fewer: summary.json changes, runs.csv too; a file with the same bytes keeps its time
    (s.runs[0].run_dir / "DONE.json").unlink()
    gather.gather(s.sweep_dir, console=quiet(), figures=False)
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in report.rglob("*") if p.is_file()}
    assert after[report / "summary.json"] != snap[report / "summary.json"]
    for p, (t, data) in after.items():
        if p in snap and snap[p][1] == data:
            assert t == snap[p][0], p
