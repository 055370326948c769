"""'What the modification changed' (report/sections/changes.py) and the --dry-run power sentence,
against independent computations on a synthetic sweep (tests/synth.py: planted accuracies)."""

from __future__ import annotations

import io
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

sys.path.insert(0, str(Path(__file__).parent))
import synth  # noqa: E402

from cnnstress import gather, launcher  # noqa: E402
from cnnstress.analysis import verdicts  # noqa: E402

SEEDS = (1, 2, 3)


def _accuracy(v: int, s: int) -> float:
    # baseline 0.60..0.62 over seeds; the variant 10-12 points better: far beyond reseeding (and the
    # paired difference varies, so that there is a spread to compute power from)
    return 0.60 + 0.10 * v + 0.01 * s * (1 + v)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    s = synth.make_sweep(tmp_path_factory.mktemp("changes") / "s 'w'", n_test=300, seeds=SEEDS,
                         accuracies={(v, s): _accuracy(vi, si) for vi, v in enumerate(("baseline", "cropflip"))
                                     for si, s in enumerate(SEEDS)},
                         corruptions=("contrast",), severities=(1,))
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200), figures=False)
    return s, json.loads((index.parent / "summary.json").read_text()), index.read_text(encoding="utf-8")


def _correct(s, variant: str) -> np.ndarray:
    return np.stack([np.argmax(s.run(variant, seed).arrays["test/logits"], axis=1) == s.labels for seed in SEEDS])


def _metric(summary: dict, name: str) -> dict:
    found = [m for m in summary["comparisons"][0]["metrics"] if m["name"] == name]
    assert len(found) == 1, name
    return found[0]


def test_accuracy_change_against_the_arrays(sweep) -> None:
    s, summary, _ = sweep
    base, var = _correct(s, "baseline").mean(axis=1), _correct(s, "cropflip").mean(axis=1)
    m = _metric(summary, "test_accuracy")
    assert m["delta"] == pytest.approx(var.mean() - base.mean(), abs=1e-12)
    floor = np.mean([abs(a - b) for a, b in itertools.combinations(base, 2)])
    assert m["noise_floor"] == pytest.approx(floor, abs=1e-12)
    assert m["verdict"] == verdicts.VERDICT_CHANGED and m["ci95"][0] > 0 and m["direction"] == "better"
    assert m["effect"] == pytest.approx(abs(m["delta"]) / floor, rel=1e-9)


def test_every_per_run_metric_is_compared_and_ranked(sweep) -> None:
    s, summary, page = sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    # a per-run metric: ECE from the runs' rows of summary.json, compared by mean difference
    b = [runs[s.run("baseline", seed).run_id]["ece"] for seed in SEEDS]
    v = [runs[s.run("cropflip", seed).run_id]["ece"] for seed in SEEDS]
    ece = _metric(summary, "ece")
    assert ece["delta"] == pytest.approx(np.mean(v) - np.mean(b), abs=1e-12)
    assert ece["noise_floor"] == pytest.approx(np.mean([abs(x - y) for x, y in itertools.combinations(b, 2)]),
                                               abs=1e-12)
    names = [m["name"] for m in summary["comparisons"][0]["metrics"]]
    for expected in ("test_accuracy", "ece", "nll", "brier", "mean_corruption_accuracy", "corruption_contrast_1"):
        assert expected in names
    verdict_order = [m["verdict"] == verdicts.VERDICT_CHANGED for m in summary["comparisons"][0]["metrics"]]
    assert verdict_order == sorted(verdict_order, reverse=True)  # changed ones first
    assert set(m["verdict"] for m in summary["comparisons"][0]["metrics"]) <= set(verdicts.VERDICTS)
    body = page.split('<section id="changes">')[1].split("</section>")[0]
    assert "<h2>What the modification changed</h2>" in body and '<tr class="changed">' in body


def test_seeds_needed_against_the_paired_spread(sweep) -> None:
    s, summary, page = sweep
    base, var = _correct(s, "baseline").mean(axis=1), _correct(s, "cropflip").mean(axis=1)
    sd = float(np.std(var - base, ddof=1))
    entry = [p for p in summary["comparisons"][0]["seeds_needed"] if p["metric"] == "test_accuracy"][0]
    assert entry["n_seeds"] == 3 and entry["target"] == 0.01
    assert entry["detectable"] == pytest.approx(verdicts.detectable_difference(sd, 3), rel=1e-9)
    assert entry["seeds_needed"] == verdicts.seeds_needed(sd, 0.01)
    assert "with 3 seeds this sweep detects" in page


def test_dry_run_says_how_many_seeds_before_more_are_launched(sweep) -> None:
    s, _, _ = sweep
    from cnnstress.grid import load_sweep_grid

    grid = load_sweep_grid(s.sweep_dir)
    lines = launcher.power_notes(grid, s.sweep_dir)
    base = [json.loads((s.run("baseline", x).run_dir / "DONE.json").read_text())["summary"]["test_accuracy"]
            for x in SEEDS]
    var = [json.loads((s.run("cropflip", x).run_dir / "DONE.json").read_text())["summary"]["test_accuracy"]
           for x in SEEDS]
    sd = float(np.std(np.subtract(var, base), ddof=1))
    want = verdicts.power_sentence("test accuracy", 3, sd, 0.01, unit="points", scale=100)
    assert lines == [f"cropflip vs baseline, from the finished runs: {want}"]
    # no finished runs, no sentence
    assert launcher.power_notes(grid, s.sweep_dir.parent / "elsewhere") == []


def test_findings_open_the_page_ranked_by_effect(sweep) -> None:
    s, summary, page = sweep
    # the confounding qualifiers (test_robustness_is_also_read_relative_to_clean_accuracy) aside
    found = [f for f in summary["findings"] if " also changed clean test accuracy " not in f]
    assert 3 <= len(found) <= 7
    metrics = summary["comparisons"][0]["metrics"]
    changed = [m for m in metrics if m["verdict"] == verdicts.VERDICT_CHANGED]
    # clean test accuracy first (+10 points planted, seeds 1 point apart), with the arrays' numbers ...
    base, var = _correct(s, "baseline").mean(axis=1), _correct(s, "cropflip").mean(axis=1)
    acc = next(m for m in changed if m["name"] == "test_accuracy")
    lo, hi = acc["ci95"]
    assert found[0] == (f"cropflip raised test accuracy by {100 * (var.mean() - base.mean()):.1f} points "
                        f"(95% CI over test images {100 * lo:+.1f} to {100 * hi:+.1f}), far beyond reseeding noise "
                        f"(±{100 * acc['noise_floor']:.1f}).")
    # ... then the other headline metrics that changed, the largest of each section, by effect
    section_of = {m["name"]: m for m in metrics}
    rest = [m for m in changed if m["name"] != "test_accuracy" and m["headline"]]
    best: dict = {}
    for m in sorted(rest, key=lambda m: -(m["effect"] if m["effect"] is not None else float("inf"))):
        best.setdefault(m["section"], m)
    best.pop("accuracy", None)
    # one per section; fewer than 3 changed ones are topped up with the largest of the rest
    assert len(found) == max(3, min(7, 1 + len(best))) and section_of
    for sentence, m in zip(found[1:], list(best.values())):
        assert sentence.startswith(f"cropflip {'raised' if m['delta'] > 0 else 'lowered'} {m['label']} by ")
    # the page opens with them, each linking to its section
    first = page.split("<section id=", 1)[1]
    assert first.startswith('"findings"') and '<a href="#accuracy">Test accuracy →</a>' in first.split("</section>")[0]


def test_terminal_prints_the_findings_after_the_table(sweep) -> None:
    s, summary, _ = sweep
    out = io.StringIO()
    gather.gather(s.sweep_dir, console=Console(file=out, width=80), figures=False)
    text = out.getvalue()
    assert "Findings:" in text and text.index("Findings:") > text.index("test accuracy over seeds")
    for i, sentence in enumerate(summary["findings"], 1):
        assert f"  {i}. {sentence}" in text  # one line each, not wrapped at 80 columns


# --- metrics left out of the comparison are listed, never silently dropped ---------------------


def test_the_full_sweep_leaves_nothing_out(sweep) -> None:
    _, summary, page = sweep
    assert summary["comparisons"][0]["left_out"] == []
    assert "left out:" not in page


@pytest.fixture(scope="module")
def one_run_without_faithfulness(tmp_path_factory):
    """A sweep where cropflip seed 2's results.h5 (valid, republished) has no faithfulness arrays."""
    from cnnstress import store

    s = synth.make_sweep(tmp_path_factory.mktemp("leftout") / "s 'w'", n_test=200, seeds=(1, 2),
                         corruptions=("contrast",), severities=(1,))
    run = s.run("cropflip", 2)
    with store.open_results(run.run_dir / "results.h5") as res:
        attrs = {k: v for k, v in res.attrs.items() if k != "schema_version"}
    arrays = {k: v for k, v in run.arrays.items() if not k.startswith("faithfulness/")}
    sha = store.publish_results(run.run_dir, arrays, attrs)
    store.write_done(run.run_dir, {"test_accuracy": 0.5}, sha)
    out = io.StringIO()
    index = gather.gather(s.sweep_dir, console=Console(file=out, width=200), figures=False)
    return s, json.loads((index.parent / "summary.json").read_text()), index.read_text(encoding="utf-8"), out.getvalue()


def test_a_metric_one_run_lacks_is_listed_with_the_reason(one_run_without_faithfulness) -> None:
    _, summary, page, _ = one_run_without_faithfulness
    comp = summary["comparisons"][0]
    names = {m["name"] for m in comp["metrics"]}
    left = {m["name"]: m for m in comp["left_out"]}
    assert set(left) == {"deletion_gradcam", "insertion_gradcam"} and not names & set(left)
    for m in left.values():
        assert m["reason"] == "not measured in cropflip seed 2" and m["section"] == "faithfulness"
    body = page.split('<section id="changes">')[1].split("</section>")[0]
    assert ("left out: deletion AUC of Grad-CAM (<code>deletion_gradcam</code>): not measured in cropflip seed 2"
            in body)
    assert "left out of the comparison: deletion AUC of Grad-CAM (not measured in cropflip seed 2)" in page
    assert "test_accuracy" in names and "ece" in names  # the rest is still compared


def test_a_nonfinite_metric_is_left_out_with_the_reason() -> None:
    from types import SimpleNamespace

    from cnnstress.report.sections import changes
    from cnnstress.report.sections.base import Metric

    def run(variant, seed, ece):
        return (SimpleNamespace(spec=SimpleNamespace(variant=variant, seed=seed), missing={}),
                {"ece": (Metric("ece", "ECE", ece, False), "calibration"),
                 "nll": (Metric("nll", "NLL", 0.5, False), "calibration")})

    pairs = [run("baseline", 1, 0.1), run("baseline", 2, 0.2), run("v", 1, float("inf")), run("v", 2, float("nan"))]
    keys, left = changes._comparable([r for r, _ in pairs], [m for _, m in pairs])
    assert keys == ["nll"]
    assert left == [{"name": "ece", "label": "ECE", "section": "calibration",
                     "reason": "not a finite number in v seed 1, v seed 2"}]


# --- pairing by seed value, one computation per number, too few seeds --------------------------

@pytest.fixture(scope="module")
def gapped(tmp_path_factory):
    """Seeds 1, 2, 3 of the baseline, 2 and 3 of cutout (seed 1 missing)."""
    seeds = (1, 2, 3)
    s = synth.make_sweep(tmp_path_factory.mktemp("gapped") / "gap 'x'", n_test=300, seeds=seeds,
                         variants=("baseline", "cutout"),
                         accuracies={(v, x): 0.6 + 0.03 * vi + 0.02 * x * (1 + vi)
                                     for vi, v in enumerate(("baseline", "cutout")) for x in seeds},
                         corruptions=("contrast",), severities=(1,), missing={("cutout", 1)})
    out = io.StringIO()
    index = gather.gather(s.sweep_dir, console=Console(file=out, width=250), figures=False)
    return s, json.loads((index.parent / "summary.json").read_text()), index.read_text(encoding="utf-8"), out.getvalue()


def test_runs_pair_by_seed_value_with_a_missing_run(gapped) -> None:
    s, summary, page, _ = gapped
    comp = summary["comparisons"][0]
    assert [(p["base_seed"], p["var_seed"]) for p in comp["pairs"]] == [(2, 2), (3, 3)]
    assert comp["unmatched_base_seeds"] == [1] and comp["unmatched_var_seeds"] == []
    assert "Seed 1 has no cutout run." in page and "Paired by seed: 2/2, 3/3" in page
    # the paired accuracy change, recomputed from the arrays by seed
    b = {x: _correct_one(s, "baseline", x) for x in (1, 2, 3)}
    v = {x: _correct_one(s, "cutout", x) for x in (2, 3)}
    d = np.mean([v[x].astype(float) - b[x] for x in (2, 3)], axis=0)
    assert comp["accuracy_delta_mean"] == pytest.approx(d.mean(), abs=1e-12)
    half = verdicts.t_quantile(0.975, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    assert comp["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-12)


def _correct_one(s, variant: str, seed: int) -> np.ndarray:
    return np.argmax(s.run(variant, seed).arrays["test/logits"], axis=1) == s.labels


def test_one_number_one_computation_everywhere(gapped) -> None:
    _, summary, page, terminal = gapped
    comp = summary["comparisons"][0]
    row = next(m for m in comp["metrics"] if m["name"] == "test_accuracy")
    # the comparison table's number is the changes table's row, from the same call
    assert (comp["accuracy_delta_mean"], comp["ci95"]) == (row["delta"], row["ci95"])
    lo, hi = row["ci95"]
    table_text = f"{100 * row['delta']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
    assert table_text in page  # "Baseline vs variant" and the changes table
    assert table_text in terminal  # the terminal's headline table
    finding = summary["findings"][0]
    assert finding.startswith(f"cutout raised test accuracy by {100 * row['delta']:.1f} points (95% CI over test "
                              f"images {100 * lo:+.1f} to {100 * hi:+.1f})")
    assert finding in terminal


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    seeds = (1, 2)
    s = synth.make_sweep(tmp_path_factory.mktemp("two") / "two seeds", n_test=300, seeds=seeds,
                         accuracies={(v, x): 0.6 + 0.1 * vi + 0.01 * x for vi, v in enumerate(("baseline", "cropflip"))
                                     for x in seeds},
                         corruptions=("contrast",), severities=(1,))
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200), figures=False)
    return s, json.loads((index.parent / "summary.json").read_text()), index.read_text(encoding="utf-8")


def test_two_seeds_judge_no_per_run_metric(two_seeds) -> None:
    _, summary, page = two_seeds
    metrics = {m["name"]: m for m in summary["comparisons"][0]["metrics"]}
    for name in ("ece", "nll", "brier"):
        assert metrics[name]["verdict"] == verdicts.VERDICT_TOO_FEW
        assert metrics[name]["verdict_text"] == "too few seeds to judge (n = 2; this needs ≥ 3)"
        assert metrics[name]["noise_floor"] is None
    assert "too few seeds to judge (n = 2; this needs ≥ 3)" in page
    found = summary["findings"]
    too_few = [m["label"] for m in metrics.values() if m["verdict"] == verdicts.VERDICT_TOO_FEW]
    assert too_few and not any(f" {label} by " in f for f in found for label in too_few)  # never a Finding
    # accuracy is still judged over test images, and says what the interval covers
    acc = metrics["test_accuracy"]
    assert acc["verdict"] in (verdicts.VERDICT_CHANGED_IMAGES, verdicts.VERDICT_SAME_IMAGES)
    assert found[0].startswith("cropflip raised test accuracy by") and "reseeding noise is not estimated" in found[0]
    assert "would detect a change of any size" not in page and "far beyond reseeding noise" not in page
    # corrupted accuracy is a mean over test images too: judged over them, never "too few seeds"
    for name in ("mean_corruption_accuracy", "corruption_contrast_1"):
        assert metrics[name]["method"] == verdicts.METHOD_IMAGE_T
        assert metrics[name]["verdict"] in (verdicts.VERDICT_CHANGED_IMAGES, verdicts.VERDICT_SAME_IMAGES)


def test_calibration_says_the_temperature_does_not_transfer(gapped) -> None:
    s, summary, page, _ = gapped
    shortcut = s.grid.runs[0].dataset.params["shortcut"]
    body = page.split('<section id="calibration">')[1].split("</section>")[0]
    if shortcut > 0:
        assert "The temperature fitted on validation does not transfer to the test set" in body
        assert f"{100 * shortcut:.0f}% of the images carry the planted background shortcut" in body
        assert summary["calibration_transfer"].startswith("The temperature fitted on validation does not transfer")
    rows = {r["run_id"]: r for r in summary["runs"]}
    worse = [c for c in summary["variants"].values() if c.get("ece_after_mean") is not None
             and c["ece_after_mean"] > c["ece_mean"]]
    for c in worse:  # a higher ECE after scaling is named with its numbers
        assert f"{c['ece_mean']:.3f} → {c['ece_after_mean']:.3f}" in body
    assert rows


def test_robustness_is_also_read_relative_to_clean_accuracy(sweep) -> None:
    s, summary, page = sweep
    comp = summary["comparisons"][0]
    rows = {m["name"]: m for m in comp["metrics"]}
    assert rows["test_accuracy"]["verdict"] == verdicts.VERDICT_CHANGED  # +10 points planted: confounds
    runs = {r["run_id"]: r for r in summary["runs"]}
    ratio = {v: np.array([runs[s.run(v, x).run_id]["mean_corruption_accuracy"]
                          / runs[s.run(v, x).run_id]["test_accuracy"] for x in SEEDS]) for v in ("baseline", "cropflip")}
    rel = rows["mean_corruption_accuracy_over_clean"]
    d = ratio["cropflip"] - ratio["baseline"]
    assert rel["delta"] == pytest.approx(d.mean(), abs=1e-12)
    half = verdicts.t_quantile(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert rel["ci95"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-9)
    for name in ("acc_conflicting", "corruption_contrast_1"):
        assert f"{name}_over_clean" in rows
    assert "ood_auroc" not in " ".join(n for n in rows if n.endswith("_over_clean"))
    # relative mCE: (clean - corrupted) of the variant over the same of the baseline, one corruption here
    clean, c1 = rows["test_accuracy"], rows["corruption_contrast_1"]
    want = (clean["var_mean"] - c1["var_mean"]) / (clean["base_mean"] - c1["base_mean"])
    from cnnstress.report.sections import changes
    assert changes.relative_mce([{**m, "section": m["section"]} for m in comp["metrics"]]) == pytest.approx(want)
    # a Finding right after the robustness finding it qualifies says whether the effect survives
    found = summary["findings"]
    extra = [i for i, f in enumerate(found) if " also changed clean test accuracy " in f]
    assert extra and all(i > 0 for i in extra)
    for i in extra:
        f = found[i]
        assert f.startswith(f"cropflip also changed clean test accuracy ({100 * rows['test_accuracy']['delta']:+.1f} "
                            "points), so its ")
        label = f.split("so its ", 1)[1].split(" is confounded")[0]
        rel = next(m for m in rows.values() if m["label"] == f"{label} / clean accuracy")
        assert found[i - 1].startswith(f"cropflip ") and f" {label} by " in found[i - 1]
        words = {True: "the effect survives that normalisation",
                 False: "the effect does not survive that normalisation"}
        if rel["verdict"] in (verdicts.VERDICT_CHANGED, verdicts.VERDICT_NOT_DISTINGUISHABLE):
            assert words[rel["verdict"] == verdicts.VERDICT_CHANGED] in f


def test_a_baseline_within_two_points_of_chance_is_said_to_be_at_chance() -> None:
    from cnnstress.report.sections import changes, findings

    def row(name, label, base_mean):
        return {"name": name, "label": label, "base_mean": base_mean, "var_mean": base_mean + 0.1,
                "delta": 0.1, "ci95": (0.05, 0.15), "method": verdicts.METHOD_IMAGE_T, "noise_floor": 0.01,
                "verdict": verdicts.VERDICT_CHANGED, "verdict_text": "changed", "effect": 10.0, "points": True}
    rows = [row("adversarial_linf_8", "accuracy under L∞ PGD", 0.119), row("adversarial_linf_4", "accuracy", 0.121),
            row("ood_auroc_svhn_msp", "OOD AUROC", 0.10)]
    changes._mark_chance(rows, 0.1)
    assert [r["at_chance"] for r in rows] == [True, False, False]  # 11.9% is within 2 points of 10%; AUROC is no accuracy
    assert rows[0]["verdict_text"] == "changed; the baseline is at chance"
    text = findings.sentence({"variant": "cutout", "chance": 0.1}, rows[0])
    assert text.endswith("The baseline is at chance here (11.9%; chance 10.0%).")


def test_per_image_corruption_accuracy_has_the_runs_accuracy_as_mean(sweep) -> None:
    s, summary, _ = sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    rows = {m["name"]: m for m in summary["comparisons"][0]["metrics"]}
    for v, side in (("baseline", "base_mean_all"), ("cropflip", "var_mean_all")):
        mca = np.mean([runs[s.run(v, x).run_id]["mean_corruption_accuracy"] for x in SEEDS])
        assert rows["mean_corruption_accuracy"][side] == pytest.approx(mca, abs=1e-12)
    assert rows["mean_corruption_accuracy"]["method"] == verdicts.METHOD_IMAGE_T


def test_findings_say_why_a_per_image_row_is_judged_over_test_images_only() -> None:
    from cnnstress.report.sections import findings

    base = [np.arange(400) < 200 + k for k in (0, 20, 40)]  # 3 baseline seeds: a floor
    var = [np.arange(400) < 300]  # one variant run: one pair, no seed-level test
    r = verdicts.compare_metric("test_accuracy", base, var, higher_is_better=True, base_seeds=[1, 2, 3],
                                var_seeds=[2])
    r.update(label="test accuracy", points=True)
    assert r["verdict"] == verdicts.VERDICT_CHANGED_IMAGES and r["p_seeds"] is None
    text = findings.sentence({"variant": "cutout"}, r)
    assert text.endswith("beyond test-image sampling noise; with 1 seed pair reseeding noise is not estimated "
                         "(that needs ≥ 2).")
