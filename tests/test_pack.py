"""Several runs in one task (cnnstress/pack.py): real worker processes training tiny runs at once,
a SIGKILL that takes one of them, stop signals passed on, the MPS daemon's start and stop, and the
sbatch fallback's packed command line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cnnstress import pack, store
from cnnstress.claims import claim_holder
from cnnstress.grid import load_grid
from cnnstress.layout import RUNS_AT_ONCE
from conftest import REPO, tiny_grid_text

DATA = REPO / "scratch" / "test-data"


def _specs(folder: Path, n: int, epochs: int = 1):
    grid = folder / "pack grid.toml"
    grid.write_text(tiny_grid_text(name="pack", epochs=epochs, seeds=(1, 2), lean=True, n_train=200, n_test=100))
    runs = load_grid(grid, out_root=folder / "out", data_root=DATA).runs[:n]
    return runs, [folder / "out" / "pack" / "runs" / r.run_id for r in runs]


def _arrays(run_dir: Path) -> dict[str, np.ndarray]:
    with store.open_results(run_dir / "results.h5") as f:
        return {k: f.read(k) for k in f.keys() if k != "history/epoch_seconds"}  # (a timing)


def _wait_for(check, what: str, limit_s: float = 120.0) -> None:
    deadline = time.monotonic() + limit_s
    while not check():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_a_pack_trains_its_runs_at_once_survives_a_killed_one_and_resumes_only_that_one(weird_dir, monkeypatch):
    """Three runs in one task, one thread each: the one SIGKILLed mid-run (as the OOM killer would)
    ends failed with its reason written by the task; the other two finish, bitwise what each
    stores trained alone with one thread; the task run again skips them and trains the third."""
    import torch

    from cnnstress import worker

    runs, dirs = _specs(weird_dir, 3)
    release = weird_dir / "go"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setenv("CNNSTRESS_FAULT", f"hold:epoch:{release}")  # every run waits in its epoch for the file
    ends: list = []
    task = threading.Thread(target=lambda: ends.extend(pack.run_pack([r.to_json() for r in runs], threads=1)))
    task.start()
    _wait_for(lambda: all(claim_holder(d) for d in dirs), "the three runs to claim their folders")
    holders = [claim_holder(d) for d in dirs]
    assert len({h["pid"] for h in holders}) == 3, "one process a run"
    os.kill(int(holders[2]["pid"]), signal.SIGKILL)
    release.touch()
    task.join(timeout=300)
    assert [e.status for e in ends] == ["done", "done", "failed"], ends
    reason = store.run_state(dirs[2]).reason
    assert reason.startswith("killed by signal 9 (SIGKILL: out of memory, or killed by hand)"), reason
    assert "CNNSTRESS_FAULT=hold:epoch:" in reason  # the hook is named, as every injected failure's reason does
    for d in dirs[:2]:
        assert store.run_state(d).summary[RUNS_AT_ONCE] == 3
        assert "1 threads)" in (d / "log.txt").read_text()  # the worker's own torch.get_num_threads()
    monkeypatch.delenv("CNNSTRESS_FAULT")
    # the reference: each of the two trained alone, in this process, with one thread
    alone = weird_dir / "alone"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for spec, d in zip(runs[:2], dirs):
            moved = json.loads(spec.to_json())
            moved["paths"]["out_root"] = str(alone)
            worker.run(json.dumps(moved), echo=False)
            ref, got = _arrays(alone / "pack" / "runs" / spec.run_id), _arrays(d)
            assert ref.keys() == got.keys()
            for key in ref:
                np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    finally:
        torch.set_num_threads(threads)
    again = pack.run_pack([r.to_json() for r in runs], threads=1)
    assert [e.status for e in again] == ["skipped", "skipped", "done"]
    assert store.run_state(dirs[2]).status == "done"


def test_a_stop_signal_to_the_task_reaches_every_run_which_stays_resumable(weird_dir, monkeypatch):
    """The sbatch fallback's packed task (python -m cnnstress.pack) told to stop: only the task's
    own process is signalled here, so the runs hear of it only if it is passed on."""
    runs, dirs = _specs(weird_dir, 2)
    manifest = weird_dir / "manifest.jsonl"
    manifest.write_text("".join(r.to_json() + "\n" for r in runs))
    release = weird_dir / "never"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "CNNSTRESS_FAULT": f"hold:epoch:{release}"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnstress.pack", "--manifest", str(manifest), "--index", "0",
                             "--count", "2", "--mps"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: all(store.read_progress(d).get("stage") == "training" for d in dirs),
                  "both runs to start training")
        time.sleep(2)  # into their first epoch, where the fault hook holds them
        proc.send_signal(signal.SIGUSR2)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + signal.SIGUSR2, err
    assert "MPS: not used (this task has no GPU)" in err
    assert "SIGUSR2 received: passed on to every run still training" in err
    for r, d in zip(runs, dirs):
        assert f"[{r.run_id}] stopped: stopped by SIGUSR2" in err, err  # the worker's own last word
        assert f"pack: stopped {r.run_id}: resumable" in err
        assert store.run_state(d).status in ("missing", "partial"), "stopped, not failed"
        assert claim_holder(d) is None
    assert "2 run(s) resumable" in err


def test_a_worker_ignores_a_stop_signal_said_twice(tmp_path):
    """The cluster signals every process of a task and the task passes the signal on too: the
    second must not interrupt the first one's save."""
    from cnnstress.worker import CheckpointKeeper, RunLog, StopRequested, stop_signals

    keeper = CheckpointKeeper(tmp_path, 3600, RunLog(tmp_path / "log.txt", echo=False))
    with stop_signals(keeper):
        handler = signal.getsignal(signal.SIGTERM)
        with pytest.raises(StopRequested):
            handler(signal.SIGTERM, None)
        assert handler(signal.SIGTERM, None) is None
        assert handler(signal.SIGUSR2, None) is None


def _stand_in_mps(folder: Path, fail_start: bool = False) -> Path:
    """A program named nvidia-cuda-mps-control that writes down how it was called (this machine has
    no GPU, so no real MPS): its arguments, its pipe folder and what it read."""
    bin_dir = folder / "bin dir"
    bin_dir.mkdir()
    record = folder / "mps calls.txt"
    script = bin_dir / pack.MPS_CONTROL
    script.write_text(f"""#!/usr/bin/env bash
input=""
[[ $# -eq 0 ]] && input=$(cat)
echo "args=$* pipe=$CUDA_MPS_PIPE_DIRECTORY log=$CUDA_MPS_LOG_DIRECTORY input=$input" >> {json.dumps(str(record))}
{"echo 'cannot start: no GPU' >&2; exit 3" if fail_start else "exit 0"}
""")
    script.chmod(0o755)
    return bin_dir


def test_mps_starts_a_daemon_of_the_tasks_own_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{_stand_in_mps(tmp_path)}{os.pathsep}{os.environ['PATH']}")
    said: list[str] = []
    with pack.mps_daemon(True, said.append) as env:
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        assert pipe.is_dir() and Path(env["CUDA_MPS_LOG_DIRECTORY"]).is_dir()
    calls = (tmp_path / "mps calls.txt").read_text().splitlines()
    assert calls == [f"args=-d pipe={pipe} log={env['CUDA_MPS_LOG_DIRECTORY']} input=",
                     f"args= pipe={pipe} log={env['CUDA_MPS_LOG_DIRECTORY']} input=quit"]
    assert not pipe.exists(), "its folders are removed"
    assert said[0].startswith("MPS: control daemon started") and said[-1] == "MPS: control daemon stopped"


def test_without_mps_the_runs_share_the_gpu_by_time_slicing_and_the_log_says_why(tmp_path, monkeypatch):
    said: list[str] = []
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pack.mps_daemon(True, said.append) as env:
        assert env == {}
    assert said == ["MPS: not running (nvidia-cuda-mps-control is not on the path here); the runs share the GPU by "
                    "time-slicing"]
    monkeypatch.setenv("PATH", f"{_stand_in_mps(tmp_path, fail_start=True)}{os.pathsep}{path}")
    said.clear()
    with pack.mps_daemon(True, said.append) as env:
        assert env == {}
    assert len(said) == 1 and "-d failed: cannot start: no GPU" in said[0] and "time-slicing" in said[0]
    with pack.mps_daemon(False, said.append) as env:
        assert env == {}


def test_a_local_end_without_result_is_recorded_as_failed_in_the_workers_format(tmp_path):
    rd = tmp_path / "run"
    rd.mkdir()
    assert pack.record_unreported_end(rd, -9) == ("killed by signal 9 (SIGKILL: out of memory, or killed by hand); "
                                                  "no checkpoint yet, relaunch starts it over")
    assert store.run_state(rd).status == "failed"
    # the worker's own FAILED.json (its reason is better) and DONE.json are never overwritten
    store.write_failed(rd, "MemoryError: x")
    assert pack.record_unreported_end(rd, -9) is None and store.run_state(rd).reason == "MemoryError: x"
    store.clear_failed(rd)
    (rd / "checkpoint.pt").write_bytes(b"x")
    store.atomic_write_json(rd / "progress.json", {"epoch": 3})
    assert pack.record_unreported_end(rd, 1) == ("its process exited with status 1 without a result; "
                                                 "checkpoint after epoch 3 kept, relaunch resumes")
    assert json.loads((rd / "FAILED.json").read_text())["reason"].startswith("its process exited with status 1")


@pytest.mark.parametrize("rc, stopping, status", [(-15, True, "stopped"), (128 + 12, True, "stopped"),
                                                   (-15, False, "failed"), (-9, True, "failed"), (1, True, "failed")])
def test_how_a_worker_ended_is_read_from_its_exit_status(tmp_path, rc, stopping, status):
    rd = tmp_path / "run"
    rd.mkdir()
    assert pack.run_end("r", rd, rc, "", stopping).status == status


def test_threads_are_the_tasks_cpus_split_between_its_runs(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")
    assert [pack.threads_per_run(k) for k in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.delenv("SLURM_CPUS_PER_TASK")
    assert pack.threads_per_run(1) == len(os.sched_getaffinity(0))


def test_the_sbatch_fallback_script_hands_a_packed_task_its_lines(tmp_path):
    """slurm/array.sbatch with RUNS_PER_TASK = 2: task 1 of an array at offset 1 trains lines 4 and
    5, through python -m cnnstress.pack (a stand-in interpreter prints what it was asked)."""
    manifest = tmp_path / "manifest's \"lines\".jsonl"
    manifest.write_text("{}\n" * 6)
    fake = tmp_path / "python"
    fake.write_text("#!/usr/bin/env bash\nprintf '%s\\n' \"$@\"\n")
    fake.chmod(0o755)
    script = str(REPO / "slurm" / "array.sbatch")
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "1", "SLURM_JOB_ID": "7"}
    res = subprocess.run(["bash", script, str(manifest), str(fake), "1", "3", "", "", "2", "1"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[-9:] == ["-m", "cnnstress.pack", "--manifest", str(manifest), "--index", "4",
                                            "--count", "2", "--mps"]
    assert "manifest lines 4-5" in res.stdout
    res = subprocess.run(["bash", script, str(manifest), str(fake), "0", "3", "", "", "0"], env=env,
                         capture_output=True, text=True)
    assert res.returncode == 2 and "RUNS_PER_TASK must be a whole number of at least 1, got '0'" in res.stderr
