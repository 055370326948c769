"""Re-measuring a finished sweep with other stress tests: nothing is trained, the new arrays come
from the same final weights, and they are what training the run from scratch would have measured."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cnnstress import reuse, store
from cnnstress.config import StressSpec
from cnnstress.grid import load_grid
from cnnstress.launcher import main

from conftest import REPO

DATA = REPO / "scratch" / "test-data"
LEAN = ["stress.corruptions=[]", "stress.faithfulness_samples=0", "stress.train_embedding_samples=0"]
# every stress test that draws random numbers (noise, PGD starts, OOD sets, re-initialisation)
MORE = ["stress.corruptions=[\"gaussian_noise\"]", "stress.severities=[2]", "stress.faithfulness_samples=8",
        "stress.train_embedding_samples=16", "stress.adversarial=true", "stress.adversarial_samples=8",
        "stress.ood=true", "stress.ood_samples=16", "stress.sanity=true", "stress.sanity_samples=4"]


def _args(grid, out, sets):
    args = ["--grid", str(grid), "--cluster", "debug", "--out", str(out), "--no-gather", "--data-root", str(DATA),
            "--set", "epochs=1"]
    for s in sets:
        args += ["--set", s]
    return args


def _runs(grid, out, sets):
    return load_grid(grid, overrides=["epochs=1", *sets], out_root=out, data_root=DATA).runs


def _arrays(path):
    with store.open_results(path) as r:
        return {k: r.read(k) for k in r.keys()}, dict(r.attrs)


def test_training_hash_ignores_only_what_is_measured(tiny_grid):
    a = load_grid(tiny_grid, overrides=LEAN).runs[0]
    b = load_grid(tiny_grid, overrides=MORE).runs[0]
    assert a.run_id != b.run_id and a.training_hash == b.training_hash
    c = dataclasses.replace(a, gradcam_layer="features.0")
    assert c.spec_hash != a.spec_hash and c.training_hash == a.training_hash
    for changed in (dataclasses.replace(a, seed=a.seed + 1),
                    dataclasses.replace(a, train=dataclasses.replace(a.train, epochs=a.train.epochs + 1)),
                    dataclasses.replace(a, model=dataclasses.replace(a.model, params={"width": 8}))):
        assert changed.training_hash != a.training_hash
    # the variant's name alone does not change the weights; its augmentation does
    baseline, flip = load_grid(tiny_grid).runs[:2]
    assert dataclasses.replace(baseline, variant="other").training_hash == baseline.training_hash
    assert flip.training_hash != baseline.training_hash
    # a stress field away from its off value, or back, never reaches the training identity
    off = dataclasses.replace(a, stress=StressSpec(**{**a.stress.to_dict(), "faithfulness_samples": 0}))
    assert off.training_hash == a.training_hash


@pytest.mark.slow
def test_adding_a_stress_test_re_measures_and_trains_nothing(tiny_grid, tmp_path, capsys):
    out = tmp_path / "out 'x'"
    assert main(_args(tiny_grid, out, LEAN)) == 0
    old = {r.training_hash: r for r in _runs(tiny_grid, out, LEAN)}
    capsys.readouterr()

    # the dry run says which runs would only be measured, and from which
    assert main(["--dry-run", *_args(tiny_grid, out, MORE)]) == 0
    said = capsys.readouterr().out
    new = _runs(tiny_grid, out, MORE)
    assert "0 to train, 2 to re-measure" in said
    for spec in new:
        assert f"re-measure {spec.run_id} <- weights of {old[spec.training_hash].run_id}" in said

    assert main(_args(tiny_grid, out, MORE)) == 0
    runs_dir = out / "tiny" / "runs"
    for spec in new:
        source = old[spec.training_hash]
        assert spec.run_id != source.run_id  # old sweeps keep their run ids; the new runs have their own
        log = (runs_dir / spec.run_id / "log.txt").read_text()
        assert f"re-measuring: finished run {source.run_id}" in log and "epoch   1/1" not in log
        got, attrs = _arrays(runs_dir / spec.run_id / "results.h5")
        was, _ = _arrays(runs_dir / source.run_id / "results.h5")
        assert attrs[reuse.ATTR] == source.run_id
        assert store.read_done(runs_dir / spec.run_id)["summary"][reuse.ATTR] == source.run_id
        for key in ("test/logits", "test/embedding", "val/logits", *[k for k in was if k.startswith("history/")]):
            np.testing.assert_array_equal(got[key], was[key], err_msg=key)
        assert any(k.startswith("stress/") for k in got) and not any(k.startswith("stress/") for k in was)
    # the new measurements reach the report
    from cnnstress import gather

    assert gather.main([str(out / "tiny"), "--no-figures"]) == 0
    summary = json.loads((out / "tiny" / "report" / "summary.json").read_text())
    assert sorted(r["run_id"] for r in summary["runs"]) == sorted(s.run_id for s in new)
    assert all(r["status"] == "done" and r["robust_accuracy_linf_8"] is not None for r in summary["runs"])
    # once done, a relaunch has nothing left to run or re-measure
    capsys.readouterr()
    assert main(["--dry-run", *_args(tiny_grid, out, MORE)]) == 0
    assert "to re-measure" not in capsys.readouterr().out

    # what a re-measured run stores is what the same run trained from scratch measures, bitwise
    fresh = tmp_path / "fresh"
    assert main(_args(tiny_grid, fresh, MORE)) == 0
    for spec in new:
        got, _ = _arrays(runs_dir / spec.run_id / "results.h5")
        alone, attrs = _arrays(fresh / "tiny" / "runs" / spec.run_id / "results.h5")
        assert reuse.ATTR not in attrs
        assert sorted(got) == sorted(alone)
        for key in got:
            if key != "history/epoch_seconds":  # a timing
                np.testing.assert_array_equal(got[key], alone[key], err_msg=key)


def test_a_run_that_has_started_training_keeps_its_own_and_a_broken_source_is_no_source(tiny_grid, tmp_path):
    out = tmp_path / "o"
    specs = _runs(tiny_grid, out, MORE)
    runs_dir = out / "tiny" / "runs"
    # a source must be a finished run of the same training identity, with a checkpoint
    src = dataclasses.replace(specs[0], stress=StressSpec(**{**specs[0].stress.to_dict(), "corruptions": []}))
    d = runs_dir / src.run_id
    d.mkdir(parents=True)
    (d / "spec.json").write_text(src.to_json())
    (d / "checkpoint.pt").write_bytes(b"x")
    assert reuse.plan(specs, runs_dir) == {}  # not done
    (d / "spec.json").write_text("{not json")
    assert reuse.finished_by_training(runs_dir) == {}
