"""The demo grid end to end, as `make demo` runs it (minus the venv), at a tiny size.

Shrunk, the runs are far too short to learn the shapes (both variants stay near chance accuracy),
so only the first half of the demo's finding is asserted: the baseline picks up the planted
background shortcut within 16 steps and hue jitter cannot (measured at this size on four seed sets,
42-44, 1-3, 7-9 and 100-102: every baseline run followed the background on 62-84% of the
conflicting test images, every hue-jitter run on 5-15%, and the comparison called the difference
"changed" each time). The accuracy gain, the Grad-CAM energy and everything else are checked for
structure only.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cnnstress import data, store
from cnnstress.grid import load_grid

from conftest import REPO

pytestmark = pytest.mark.slow

SHRINK = ["--set", "epochs=2", "--set", "dataset_options.n_train=500", "--set", "dataset_options.n_test=200",
          "--set", "stress.faithfulness_samples=20", "--set", "stress.train_embedding_samples=50",
          "--set", "stress.adversarial_samples=20", "--set", "stress.adversarial_steps=3",
          "--set", "stress.ood_samples=50", "--set", "stress.sanity_samples=10"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo out's \"root\"")
    # two runs at once (one thread each): at this size a run is mostly its worker's start-up, which
    # then overlaps on two cores
    cmd = [sys.executable, "launch.py", "--grid", "jobs/demo.toml", "--cluster", "local", "--out", str(out),
           "--data-root", str(REPO / "scratch" / "test-data"), "--max-parallel", "2", *SHRINK]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return cmd, out / "demo", res


def _snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in folder.rglob("*") if p.is_file() and "submitit" not in p.parts}


def test_demo_ends_with_a_report(demo):
    _, sweep, res = demo
    index = sweep / "report" / "index.html"
    assert f"report: {index}" in " ".join(res.stdout.split())
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done"] * 6
    assert set(summary["variants"]) == {"baseline", "huejitter"}
    # the demo turns on every stress section: each shows up for every run
    for run in summary["runs"]:
        assert set(run["adversarial_accuracy"]["linf"]) == {"0", "1", "2", "4", "8"}
        assert set(run["ood"]) == {"shapes_novel", "uniform_noise", "smooth_noise"}
        assert run["aurc"] is not None and run["sanity_final_rank_correlation"] is not None
        assert set(run["shift"]) == {"shapes_shifted"} and run["shift"]["shapes_shifted"]["images"] == 500
    page = index.read_text()
    for sec in ("adversarial", "ood", "sanity", "shift"):
        assert f'<section id="{sec}">' in page and "not available" not in page.split(f'<section id="{sec}">')[1][:400]
    comp = summary["comparisons"][0]
    assert comp["corrected"] + comp["worsened"] + comp["both_wrong"] + comp["both_right"] == 3 * 200
    for key in ("test_accuracy", "follows_background", "energy_all"):  # the numbers the demo's finding is told in
        row = next(m for m in comp["metrics"] if m["name"] == key)
        assert row["ci95"][0] <= row["delta"] <= row["ci95"][1] and row["verdict"]
    for v in summary["variants"].values():
        assert {"follows_background", "energy_all", "energy_right"} <= set(v["shortcut"])


def test_the_baseline_follows_the_background_and_hue_jitter_does_not(demo):
    """The part of the demo's finding that already shows at the tiny size (see the module docstring)."""
    _, sweep, _ = demo
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    follows = {v: [r["follows_background"] for r in summary["runs"] if r["variant"] == v]
               for v in ("baseline", "huejitter")}
    assert len(follows["baseline"]) == len(follows["huejitter"]) == 3
    assert min(follows["baseline"]) > 0.4, follows
    assert max(follows["huejitter"]) < 0.3, follows
    row = next(m for m in summary["comparisons"][0]["metrics"] if m["name"] == "follows_background")
    assert row["verdict"] == "changed" and row["ci95"][1] < -0.3, row


def test_shortcut_numbers_match_an_independent_computation(demo):
    """The planted background shortcut, measured on real small runs, as the report states it."""
    cmd, sweep, _ = demo
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    grid = load_grid(REPO / "jobs" / "demo.toml", overrides=[a for a in cmd[cmd.index("--set"):] if a != "--set"],
                     out_root=sweep.parent, data_root=REPO / "scratch" / "test-data")
    test = data.load_test("shapes", grid.runs[0].paths.data_root, grid.runs[0].dataset.params)
    conflicting = test.bg_class != test.y
    assert 0.8 < conflicting.mean() < 0.98  # in the test split the background is independent of the class
    for run in summary["runs"]:
        with store.open_results(sweep / "runs" / run["run_id"] / "results.h5") as r:
            preds = r.read("test/logits").argmax(1)
        follows = float(np.mean(preds[conflicting] == test.bg_class[conflicting]))
        assert run["follows_background"] == pytest.approx(follows)
        assert run["test_accuracy"] == pytest.approx(float(np.mean(preds == test.y)))


def test_relaunching_the_finished_demo_trains_nothing_and_changes_no_file(demo):
    cmd, sweep, _ = demo
    before = _snapshot(sweep)
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0
    assert "6 already finished, 0 to run" in " ".join(res.stdout.split())
    assert _snapshot(sweep) == before  # runs and report: same bytes, same modification times
