"""Faults and bad input: real SIGKILLs, corrupt files, concurrent launches, full disks, bad grids."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnstress import store
from cnnstress.grid import GridError, expand, load_grid
from cnnstress.claims import claim_holder
from cnnstress.worker import run, run_dir_for

from conftest import REPO, tiny_grid_text

DATA = REPO / "scratch" / "test-data"
ARRAYS = ("test/logits", "test/embedding", "test/gradcam/pred", "test/gradcam/true", "val/logits")


def _runs(tmp: Path, epochs: int = 2, name: str = "tiny", lean: bool = False):
    tmp.mkdir(parents=True, exist_ok=True)
    grid = tmp / "g.toml"
    grid.write_text(tiny_grid_text(name=name, epochs=epochs, lean=lean))
    return grid, load_grid(grid, out_root=tmp / "out", data_root=DATA).runs


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with store.open_results(run_dir / "results.h5") as r:
        return {k: r.read(k) for k in ARRAYS}


def _worker(spec, env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    rd = run_dir_for(spec)
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "spec.json").write_text(spec.to_json())
    env = {**os.environ, **env_extra}
    return subprocess.run([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)


def _temp_files(rd: Path) -> list[str]:
    return sorted(p.name for p in rd.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


def _published_files_are_valid(rd: Path) -> None:
    """No published file fails validation; no DONE.json without a matching, valid results.h5."""
    if (rd / "results.h5").exists():
        store.validate_results(rd / "results.h5")
    if (rd / "DONE.json").exists():
        assert store.run_state(rd).status == "done"
    if (rd / "checkpoint.pt").exists():
        torch.load(rd / "checkpoint.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run; every recovered run below must end bitwise equal to it."""
    _, runs = _runs(tmp_path_factory.mktemp("ref"))
    run(runs[0], echo=False)
    return _arrays(run_dir_for(runs[0]))


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["kill:checkpoint.pt:2", "kill:results.h5", "kill:DONE.json"])
def test_sigkill_during_a_write_leaves_only_valid_files_and_relaunch_completes(fault, tmp_path, reference):
    _, runs = _runs(tmp_path)
    spec = runs[0]
    rd = run_dir_for(spec)
    res = _worker(spec, {"CNNSTRESS_FAULT": fault})
    assert res.returncode == -signal.SIGKILL, res.stderr
    assert _temp_files(rd), "the kill happened half-way through a temp file"
    _published_files_are_valid(rd)
    assert store.run_state(rd).status != "done"
    if fault.startswith("kill:checkpoint.pt"):
        # killed while writing epoch 2's checkpoint: epoch 1's is still there under its own name
        assert torch.load(rd / "checkpoint.pt", weights_only=True)["epoch"] == 1
        assert store.run_state(rd).status == "partial"
    result = run(spec, echo=False)
    assert result["status"] == "done"
    assert _temp_files(rd) == []
    assert "removed leftover temp file" in (rd / "log.txt").read_text()
    _published_files_are_valid(rd)
    got = _arrays(rd)
    for key in ARRAYS:
        assert np.array_equal(got[key], reference[key]), key


def _finished_then_undone(tmp_path: Path):
    """A finished run whose results were lost: checkpoint.pt (epoch 2) and checkpoint.prev.pt (epoch 1)."""
    _, runs = _runs(tmp_path)
    spec = runs[0]
    run(spec, echo=False)
    rd = run_dir_for(spec)
    (rd / "DONE.json").unlink()
    (rd / "results.h5").unlink()
    return spec, rd


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncate", "garbage", "both"])
@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")  # the garbage says protocol 4
def test_damaged_checkpoint_falls_back_and_says_so(damage, tmp_path, reference):
    spec, rd = _finished_then_undone(tmp_path)
    cur = rd / "checkpoint.pt"
    if damage == "truncate":
        cur.write_bytes(cur.read_bytes()[: cur.stat().st_size // 2])
    else:
        cur.write_bytes(os.urandom(5000))
    if damage == "both":
        (rd / "checkpoint.prev.pt").write_bytes(b"\x80\x04garbage")
    run(spec, echo=False)
    log = (rd / "log.txt").read_text()
    assert "WARNING: checkpoint.pt is unusable" in log
    if damage == "both":
        assert "WARNING: checkpoint.prev.pt is unusable" in log
        assert log.count("resumed from checkpoint") == 0  # a fresh start
    else:
        assert "resumed from checkpoint after epoch 1" in log
    got = _arrays(rd)
    for key in ARRAYS:
        assert np.array_equal(got[key], reference[key]), key


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {PAYLOAD_MARKER}",))


PAYLOAD_MARKER = Path("/tmp/cnnstress-pickle-payload-ran")


@pytest.mark.slow
def test_checkpoint_with_a_pickle_payload_is_refused(tmp_path):
    spec, rd = _finished_then_undone(tmp_path)
    PAYLOAD_MARKER.unlink(missing_ok=True)
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        with open(rd / name, "wb") as f:
            torch.save({"model": _Payload()}, f, pickle_module=pickle)
    run(spec, echo=False)
    assert not PAYLOAD_MARKER.exists(), "the payload ran: checkpoint loaded without weights_only"
    assert "WARNING: checkpoint.pt is unusable" in (rd / "log.txt").read_text()


@pytest.mark.slow
def test_failed_rng_restore_is_an_error_not_skipped(tmp_path):
    spec, rd = _finished_then_undone(tmp_path)
    state = torch.load(rd / "checkpoint.pt", weights_only=True)
    state["rng"]["generator"] = torch.zeros(3, dtype=torch.uint8)  # not a generator state
    buf = rd / "checkpoint.pt"
    torch.save(state, buf)
    with pytest.raises(RuntimeError, match="RNG state could not be restored"):
        run(spec, echo=False)
    st_ = store.run_state(rd)
    assert st_.status == "failed" and "RNG state could not be restored" in st_.reason


@pytest.mark.slow
def test_two_launches_at_once_train_each_run_once(tmp_path):
    # the first launch is held at its first epoch until the second has ended, so two epochs suffice
    grid, runs = _runs(tmp_path, epochs=2, lean=True)
    out = tmp_path / "out"
    cmd = [sys.executable, "launch.py", "--grid", str(grid), "--cluster", "debug", "--out", str(out),
           "--data-root", str(DATA), "--no-gather"]
    # The first launch holds at each epoch until `gate` exists, so the second meets it at work
    # on a machine of any speed; the gate opens once the second launch has ended.
    gate = tmp_path / "gate"
    first = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env={**os.environ, "CNNSTRESS_FAULT": f"hold:epoch:{gate}"})
    rd0 = run_dir_for(runs[0])
    deadline = time.time() + 120
    while time.time() < deadline and not (claim_holder(rd0) or {}).get("pid"):
        time.sleep(0.05)
    holder = claim_holder(rd0)
    assert holder is not None and holder["pid"] == first.pid
    try:
        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    finally:
        gate.touch()
    first.communicate(timeout=600)
    said = " ".join((second.stdout + second.stderr).split())
    # the second launch says which process holds which run
    assert f"claimed by pid {first.pid}" in said or f'"pid": {first.pid}' in said, said
    for spec in runs:
        rd = run_dir_for(spec)
        assert store.run_state(rd).status == "done"
        assert (rd / "log.txt").read_text().count(f"run {spec.run_id}: ") == 1, "trained exactly once"


@pytest.mark.slow
@pytest.mark.parametrize("fault, reason", [("enospc:results.h5", "No space left on device"),
                                           ("oom:epoch", "MemoryError: injected out-of-memory")])
def test_a_run_that_runs_out_of_disk_or_memory_fails_alone(fault, reason, tmp_path):
    grid, runs = _runs(tmp_path, epochs=1)
    out = subprocess.run([sys.executable, "launch.py", "--grid", str(grid), "--cluster", "debug", "--out",
                          str(tmp_path / "out"), "--data-root", str(DATA), "--no-gather"],
                         cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CNNSTRESS_FAULT": fault})
    assert out.returncode == 1
    first, second = (store.run_state(run_dir_for(r)) for r in runs)
    assert first.status == "failed" and reason in first.reason
    assert second.status == "done"
    assert _temp_files(run_dir_for(runs[0])) == []
    assert runs[0].run_id in out.stderr and reason in out.stderr


@pytest.mark.slow
def test_a_local_run_killed_like_the_oom_killer_ends_failed_with_its_reason_and_relaunch_resumes(tmp_path):
    # The kernel's OOM killer sends SIGKILL: the worker cannot write FAILED.json, so the launcher
    # must, or the run would stay 'partial' with no reason in summary.json or the report.
    grid, runs = _runs(tmp_path, epochs=2, lean=True)
    # both runs at once (one thread each): the two workers' start-up overlaps on two cores
    args = [sys.executable, "launch.py", "--grid", str(grid), "--cluster", "local", "--out", str(tmp_path / "out"),
            "--data-root", str(DATA), "--max-parallel", "2"]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CNNSTRESS_FAULT": "kill:epoch:2"})
    assert out.returncode == 1, out.stderr
    why = ("killed by signal 9 (SIGKILL: out of memory, or killed by hand); checkpoint after epoch 1 kept, relaunch resumes"
           "; CNNSTRESS_FAULT=kill:epoch:2 was set")  # the hook, not the kernel, killed it: the reason says so
    for spec in runs:
        state = store.run_state(run_dir_for(spec))
        assert state.status == "failed" and state.reason == why
        assert spec.run_id in out.stderr
    assert why in " ".join(out.stderr.split())
    report = tmp_path / "out" / "tiny" / "report"
    summary = json.loads((report / "summary.json").read_text())
    assert [(r["status"], r.get("reason")) for r in summary["runs"]] == [("failed", why)] * 2
    assert "out of memory, or killed by hand" in (report / "index.html").read_text()
    # a plain relaunch picks the failed runs up again and resumes them from their checkpoints
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    for spec in runs:
        assert store.run_state(run_dir_for(spec)).status == "done"
        assert "resumed from checkpoint after epoch 1" in (run_dir_for(spec) / "log.txt").read_text()
    summary = json.loads((report / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]


BAD_NAMES = ["a\nb", "a'b", 'a"b', "$(id)", "`id`", "a;b", "..", "a/b", "../up", "a b"]


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("where", ["name", "variant", "partition", "account"])
def test_injection_is_rejected_before_anything_is_written(bad, where, tmp_path):
    text = tiny_grid_text()
    if where == "name":
        text = text.replace('name = "tiny"', f"name = {json.dumps(bad)}")
    elif where == "variant":
        text = text.replace("[variants.flip]", f"[variants.{json.dumps(bad)}]")
    else:
        text += f"\n[slurm]\n{where} = {json.dumps(bad)}\n"
    grid = tmp_path / "g.toml"
    grid.write_text(text)
    out = tmp_path / "out"
    for cluster in ("local", "sbatch"):
        res = subprocess.run([sys.executable, "launch.py", "--grid", str(grid), "--cluster", cluster, "--out", str(out)],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
        assert res.returncode == 2, res.stderr
        assert res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0
        assert not out.exists(), "nothing may be written for a rejected grid"


# -- fuzzing the grid parser: it raises nothing but GridError ------------------------------------

_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                  st.text(max_size=12), st.sampled_from(["sgd", "adam", "cosine", "flip", "shapes", "resnet18",
                                                         "all", "layer3", "baseline"]))


def _nest(inner: st.SearchStrategy) -> st.SearchStrategy:
    # a def, not a lambda over two lines: hypothesis reads a lambda's source to check that it
    # uses its argument, fails on that one and warns "can't actually recurse" (it does recurse)
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4))


_value = st.recursive(_leaf, _nest, max_leaves=12)
_keys = st.sampled_from(["name", "base", "variants", "grid", "compare", "stress", "report", "slurm", "base.epochs",
                         "base.optimizer", "base.augment", "base.model", "base.model_options", "grid.seed",
                         "variants.v", "variants.v.augment", "stress.corruptions", "stress.severities",
                         "report.gradcam_layer", "slurm.setup", "slurm.additional", "base.schedule",
                         "base.dataset_options", "compare.baseline", "grid.optimizer"])


def _put(raw: dict, dotted: str, value) -> dict:
    node = raw
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(_keys, _value), max_size=4))
def test_fuzzed_grids_raise_only_grid_errors(edits):
    raw = {"name": "f", "base": {"dataset": "shapes", "model": "simple_cnn", "epochs": 2}}
    for key, value in edits:
        raw = _put(raw, key, value)
    try:
        g = expand(raw, source="fuzz.toml")
    except GridError as e:
        assert "\n" not in str(e)
        return
    assert g.runs and all(r.run_id for r in g.runs)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_grid_text_raises_only_grid_errors(text):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "g.toml"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        try:
            load_grid(p)
        except GridError:
            pass


def _rewrite_schema_version(path: Path, version: int) -> None:
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = version


@pytest.mark.parametrize("damage, why", [
    ("truncate", "results.h5"),
    ("schema", "schema_version"),
    ("hash", "sha256"),
])
def test_gather_and_status_report_broken_results_and_go_on(damage, why, tmp_path):
    """A truncated results.h5, a wrong schema version, or a results.h5 that no longer matches its
    DONE.json: that run is reported broken with the reason; the others are read."""
    import synth
    from rich.console import Console

    from cnnstress import gather
    from cnnstress.launcher import main

    s = synth.make_sweep(tmp_path / "sweep's root", n_test=100, seeds=(1, 2), corruptions=(), val=False,
                         train_subset=False, faithfulness=False)
    victim = s.runs[1]
    h5 = victim.run_dir / "results.h5"
    if damage == "truncate":
        data = h5.read_bytes()
        h5.write_bytes(data[: len(data) // 2])
    elif damage == "schema":
        # keep DONE.json consistent with the new bytes: only the version is wrong
        _rewrite_schema_version(h5, store.SCHEMA_VERSION + 1)
        done = json.loads((victim.run_dir / "DONE.json").read_text())
        done["results_sha256"] = store.sha256_file(h5)
        (victim.run_dir / "DONE.json").write_text(json.dumps(done))
    else:
        _rewrite_schema_version(h5, store.SCHEMA_VERSION)  # same content, new bytes: hash mismatch
    state = store.run_state(victim.run_dir)
    assert state.status == "broken" and why in state.reason
    index = gather.gather(s.sweep_dir, console=Console(quiet=True), figures=False)
    rows = {r["run_id"]: r for r in json.loads((index.parent / "summary.json").read_text())["runs"]}
    row = rows[victim.spec.run_id]  # DESIGN's status, with the finer state beside it
    assert (row["status"], row["state"]) == ("failed", "broken") and why in row["reason"]
    assert sum(r["status"] == "done" for r in rows.values()) == len(s.runs) - 1
    grid_copy = s.sweep_dir / "grid.toml"
    import io
    from contextlib import redirect_stdout

    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = main(["--grid", str(grid_copy), "--status", "--out", str(s.sweep_dir.parent)])
    assert rc == 3  # a broken run
    text = " ".join(buf.getvalue().split())
    assert "broken" in text and why in text
