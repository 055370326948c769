"""--cluster slurm and --cluster sbatch against the live single-node dev cluster
(``sudo bash slurm/dev-cluster.sh up``). Skipped with a reason when no controller answers, unless
CNNSTRESS_REQUIRE_SLURM=1 (set by .ci/run), which turns the skip into a failure.

The jobs run on this machine, so tmp_path works as shared storage. The two interrupted runs
(``scontrol requeue`` and a 1-minute time limit) start when the module starts and are checked by
its last test, so their requeue waits (about 35 s each on the dev cluster) overlap the others.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from cnnstress import store
from cnnstress.cluster import slurmctl
from cnnstress.grid import load_grid
from cnnstress.launcher import main

from conftest import REPO, tiny_grid_text
from grids import LEAN, dev_slurm_text

pytestmark = pytest.mark.slurm

DATA = REPO / "scratch" / "test-data"
# Small and quick: the slurm tests test submission, not training.
INTERRUPTED_TEST = "test_requeued_and_timed_out_runs_resume_and_match_an_uninterrupted_run"
PACKED_TIMELIMIT_TEST = "test_a_packed_task_at_its_time_limit_saves_every_run_and_is_requeued_by_submitit"


def _grid_file(folder: Path, name: str, epochs: int = 1, time_min: int = 10, one_run: bool = False,
               small: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    text = tiny_grid_text(name=name, epochs=epochs, extra=dev_slurm_text(time_min))
    if one_run:
        text = text.replace('[variants.flip]\naugment = ["flip"]\n', "")
    if small:
        text = text.replace("n_train = 400, n_test = 200", "n_train = 200, n_test = 100")
    path = folder / f"{name} grid.toml"
    path.write_text(text)
    return path


# jobs/demo.toml itself, at tiny size: one seed, a tiny model and data, one epoch, one corruption
DEMO_TINY = ["--set", "grid.seed=[42]", "--set", "dataset_options.n_train=400", "--set", "dataset_options.n_test=200",
             "--set", "model_options.width=4", "--set", "epochs=1", "--set", 'stress.corruptions=["gaussian_noise"]',
             "--set", "stress.severities=[1]", "--set", "stress.faithfulness_samples=16",
             "--set", "stress.train_embedding_samples=32", "--set", "stress.adversarial_samples=10",
             "--set", "stress.adversarial_steps=2", "--set", "stress.ood_samples=20", "--set", "stress.sanity_samples=5"]


def _demo_grid(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "the demo's \"grid\".toml"
    path.write_text((REPO / "jobs" / "demo.toml").read_text())
    return path


def _demo_args(grid: Path, out: Path, kind: str) -> list[str]:
    return ["--grid", str(grid), "--cluster", kind, "--out", str(out), "--data-root", str(DATA), *DEMO_TINY]


def _demo_specs(grid: Path, out: Path):
    return load_grid(grid, overrides=DEMO_TINY[1::2], out_root=out, data_root=DATA).runs


def _launch_args(grid: Path, out: Path, kind: str) -> list[str]:
    return ["--grid", str(grid), "--cluster", kind, "--out", str(out), "--data-root", str(DATA), *LEAN]


def _specs(grid: Path, out: Path):
    return load_grid(grid, overrides=LEAN[1::2], out_root=out, data_root=DATA).runs


def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, slurmctl.JobInfo]:
    """Poll squeue (-t all) until none of these jobs is queued or running; their last states."""
    t0 = time.time()
    while True:
        query = slurmctl.query_jobs(job_ids, use_sacct=False)
        if query.ok and not any(j.active for j in query.jobs.values()):
            return query.jobs
        if time.time() - t0 > timeout:
            states = {k: v.state for k, v in query.jobs.items()}
            pytest.fail(f"jobs {job_ids} still active after {timeout:.0f} s: {states} {query.notes}")
        time.sleep(1)


def _logits(run_dir: Path) -> np.ndarray:
    with h5py.File(run_dir / "results.h5", "r") as f:
        return f["test/logits"][:]


def _scancel_active(sweeps: list[Path]) -> None:
    ids = [j for s in sweeps for launch in slurmctl.read_launches(s) for j in launch.job_ids()]
    if ids:
        active = [j for j, info in slurmctl.query_jobs(ids, use_sacct=False).jobs.items() if info.active]
        if active:
            subprocess.run(["scancel", *sorted({a.split("_")[0] for a in active})], capture_output=True)
            # scancel only asks; wait (KillWait=5 on the dev cluster) so no test leaves a job running.
            wait_for_jobs(active, timeout=60)


# ------------------------------------------------------------------------------------------------
# the live cluster, and the interrupted runs started in the background
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def live_cluster():
    try:
        slurmctl.check_controller()
    except slurmctl.SlurmError as e:
        if os.environ.get("CNNSTRESS_REQUIRE_SLURM") == "1":
            pytest.fail(f"CNNSTRESS_REQUIRE_SLURM=1 but {e}")
        pytest.skip(f"no live Slurm controller: {e}")
    old = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # cpus_per_task = 1; the reference run uses the same
    yield
    if old is None:
        os.environ.pop("OMP_NUM_THREADS", None)
    else:
        os.environ["OMP_NUM_THREADS"] = old


class Interrupter(threading.Thread):
    """Requeues one run with `scontrol requeue` once it has a checkpoint, and freezes the other
    (SIGSTOP) once it has a checkpoint, so that Slurm's time-limit warning (USR2, 20-50 s after
    the start of a 1-minute job) finds it mid-training whatever this machine's speed. Slurm has
    been seen continuing the stopped process itself (13 s later, here), but with
    proctrack/linuxproc it may only queue USR2, so the thread continues it as soon as USR2 is
    pending; after 55 s it would continue it anyway."""

    def __init__(self, requeue_dir: Path, requeue_job: str, timed_dir: Path):
        super().__init__(daemon=True)
        self.requeue_dir, self.requeue_job, self.timed_dir = requeue_dir, requeue_job, timed_dir
        self.events: list[str] = []
        self.error = ""

    def run(self) -> None:
        try:
            todo = {"requeue", "stop"}
            t0 = time.time()
            stopped_pid, t_stop, seen_stopped = None, 0.0, False
            while todo and time.time() - t0 < 300:
                if "requeue" in todo and _epoch(self.requeue_dir) >= 1:
                    res = subprocess.run(["scontrol", "requeue", self.requeue_job], capture_output=True, text=True)
                    self.events.append(f"scontrol requeue {self.requeue_job}: rc {res.returncode} {res.stderr.strip()} "
                                       f"at epoch {_epoch(self.requeue_dir)}")
                    todo.discard("requeue")
                if "stop" in todo and stopped_pid is None and _epoch(self.timed_dir) >= 1:
                    holder = json.loads((self.timed_dir / "claim.lock").read_text())
                    assert holder["host"] == socket.gethostname(), holder
                    stopped_pid, t_stop = int(holder["pid"]), time.time()
                    os.kill(stopped_pid, signal.SIGSTOP)  # ProcessLookupError: the run ended first
                    self.events.append(f"SIGSTOP {stopped_pid} at epoch {_epoch(self.timed_dir)}")
                elif stopped_pid is not None and "stop" in todo:
                    state, waited = _proc_state(stopped_pid), time.time() - t_stop
                    seen_stopped = seen_stopped or state in ("T", "t")
                    if state is None:
                        self.events.append(f"pid {stopped_pid} gone {waited:.0f} s later")
                        todo.discard("stop")
                    elif seen_stopped and state not in ("T", "t"):
                        self.events.append(f"pid {stopped_pid} continued by Slurm {waited:.0f} s later")
                        todo.discard("stop")
                    elif seen_stopped and _usr2_pending(stopped_pid):
                        self.events.append(f"USR2 pending {waited:.0f} s after SIGSTOP: SIGCONT {stopped_pid}")
                        os.kill(stopped_pid, signal.SIGCONT)
                        todo.discard("stop")
                    elif waited > 55:
                        self.events.append(f"SIGCONT {stopped_pid} ourselves after 55 s (state {state})")
                        os.kill(stopped_pid, signal.SIGCONT)
                        todo.discard("stop")
                time.sleep(0.1)
            if todo:
                self.error = f"never got to {todo} within 300 s"
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = f"{type(e).__name__}: {e}"


def _usr2_pending(pid: int) -> bool:
    """Whether SIGUSR2 waits, undelivered, for process `pid` (SigPnd/ShdPnd of /proc/PID/status)."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return False
    bit = 1 << (signal.SIGUSR2 - 1)
    return any(int(line.split()[1], 16) & bit for line in lines if line.startswith(("SigPnd:", "ShdPnd:")))


def _epoch(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / "progress.json").read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _proc_state(pid: int) -> str | None:
    """The state letter of a process (R, S, T = stopped, Z...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.fixture(scope="module")
def interrupted(request, tmp_path_factory):
    """Starts, at module start: one run to be requeued with scontrol, the same run under a
    1-minute time limit, and an uninterrupted reference run of the same spec."""
    root = tmp_path_factory.mktemp("interrupted runs' \"dir\"")
    epochs = 30
    rq_grid = _grid_file(root / "grids", "requeued", epochs=epochs, one_run=True, small=True)
    tl_grid = _grid_file(root / "grids", "timelimit", epochs=epochs, time_min=1, one_run=True, small=True)
    rq_out, tl_out = root / "rq out", root / "tl out"
    # `scontrol requeue` sends SIGTERM, which submitit ignores, and SIGKILL KillWait (5 s) later: a
    # tiny run at full speed can finish all its epochs in that window (CI saw it, 30 epochs in 5 s),
    # so the requeued run sleeps 0.5 s an epoch; the time-limited one 0.2 s, so that the thread's
    # SIGSTOP finds it mid-training. Slurm keeps the job's environment across requeues.
    for grid, out, slow in ((tl_grid, tl_out, 0.2), (rq_grid, rq_out, 0.5)):
        os.environ["CNNSTRESS_FAULT"] = f"slow:epoch:{slow}"
        try:
            assert main(_launch_args(grid, out, "slurm")) == 0
        finally:
            del os.environ["CNNSTRESS_FAULT"]
    spec = _specs(rq_grid, rq_out)[0]
    assert spec.run_id == _specs(tl_grid, tl_out)[0].run_id  # the same run, in two sweeps
    ref_spec = _specs(rq_grid, root / "reference out")[0]
    ref_dir = root / "reference out" / "requeued" / "runs" / spec.run_id
    ref_dir.mkdir(parents=True)
    (ref_dir / "spec.json").write_text(ref_spec.to_json())
    reference = subprocess.Popen([sys.executable, "-m", "cnnstress.worker", "--spec", str(ref_dir / "spec.json")],
                                 cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    rq_launch = slurmctl.read_launches(rq_out / "requeued")[0]
    thread = Interrupter(rq_out / "requeued" / "runs" / spec.run_id, rq_launch.runs[spec.run_id],
                         tl_out / "timelimit" / "runs" / spec.run_id)
    thread.start()
    info = {"run_id": spec.run_id, "rq": rq_out / "requeued", "tl": tl_out / "timelimit", "ref_dir": ref_dir,
            "reference": reference, "thread": thread, "t0": time.time()}
    yield info
    if reference.poll() is None:
        reference.kill()
    _scancel_active([info["rq"], info["tl"]])


class HoldAfterFirstEpoch(threading.Thread):
    """For a packed task under a 1-minute time limit, whose runs sleep 5 s at the start of each
    epoch and then wait while ``release`` is missing (CNNSTRESS_FAULT=slow:epoch:5,hold:epoch:<release>):
    lets every run finish its first epoch, then holds them (removes ``release``, within the next
    epoch's 5 s) until the time limit's USR2 has stopped them all (their claims are free), then lets
    the requeued task go on (puts ``release`` back)."""

    def __init__(self, run_dirs: list[Path], release: Path):
        super().__init__(daemon=True)
        self.run_dirs, self.release = run_dirs, release
        self.events: list[str] = []
        self.error = ""

    def run(self) -> None:
        from cnnstress.claims import claim_holder

        try:
            t0 = time.time()
            while not all(_epoch(d) >= 1 for d in self.run_dirs):
                if time.time() - t0 > 300:
                    raise TimeoutError("the packed runs never finished an epoch")
                time.sleep(0.05)
            self.release.unlink()
            self.events.append(f"held at epochs {[_epoch(d) for d in self.run_dirs]} after {time.time() - t0:.0f} s")
            while any(claim_holder(d) for d in self.run_dirs):
                if time.time() - t0 > 300:
                    raise TimeoutError("the packed runs were never stopped")
                time.sleep(0.2)
            self.release.touch()
            self.events.append(f"stopped and released after {time.time() - t0:.0f} s")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.release.touch()
            self.error = f"{type(e).__name__}: {e}"


@pytest.fixture(scope="module")
def packed_timelimit(tmp_path_factory):
    """Started at module start: two runs packed in one submitit task with a 1-minute time limit."""
    root = tmp_path_factory.mktemp("packed time limit")
    grid = root / "packed timelimit grid.toml"
    grid.write_text(tiny_grid_text(name="packedtl", epochs=4, lean=True, n_train=200, n_test=100,
                                   extra=dev_slurm_text(time_min=1).replace("cpus_per_task = 1", "cpus_per_task = 2")
                                   .replace("\nmem_gb = 1\n", "\nmem_gb = 2\n") + "runs_per_task = 2\n"))
    out, release = root / "out", root / "release"
    release.touch()
    # 5 s at the start of every epoch, then the hold: the thread has those seconds, after both runs'
    # first epochs, to take the release away before either goes further
    os.environ["CNNSTRESS_FAULT"] = f"slow:epoch:5,hold:epoch:{release}"
    try:
        assert main(_launch_args(grid, out, "slurm")) == 0
    finally:
        del os.environ["CNNSTRESS_FAULT"]
    specs = _specs(grid, out)
    # no report is looked at here: the gather job (still waiting on the array) would only cost time
    subprocess.run(["scancel", slurmctl.read_launches(out / "packedtl")[0].gather], check=True, capture_output=True)
    thread = HoldAfterFirstEpoch([out / "packedtl" / "runs" / s.run_id for s in specs], release)
    thread.start()
    info = {"grid": grid, "out": out, "sweep": out / "packedtl", "specs": specs, "thread": thread}
    yield info
    _scancel_active([info["sweep"]])


@pytest.fixture(scope="module", autouse=True)
def _start_interrupted_runs_first(request, live_cluster):
    """The interrupted runs need minutes of (mostly idle) waiting: start them before anything else
    when their test is selected."""
    if any(item.name == INTERRUPTED_TEST for item in request.session.items):
        request.getfixturevalue("interrupted")
    if any(item.name == PACKED_TIMELIMIT_TEST for item in request.session.items):
        request.getfixturevalue("packed_timelimit")


# ------------------------------------------------------------------------------------------------
# end to end
# ------------------------------------------------------------------------------------------------


def _all_job_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_slurm_wait_end_to_end_then_relaunch_submits_nothing(tmp_path, capsys):
    grid = _demo_grid(tmp_path / "grids")
    out = tmp_path / "out dir's \"x\""
    t0 = time.time()
    assert main([*_demo_args(grid, out, "slurm"), "--wait"]) == 0
    seconds = time.time() - t0
    printed = capsys.readouterr().out
    sweep = out / "demo"
    specs = _demo_specs(grid, out)
    assert sorted(s.variant for s in specs) == ["baseline", "huejitter"]
    for spec in specs:
        assert store.run_state(sweep / "runs" / spec.run_id).status == "done"
    summary = json.loads((sweep / "report" / "summary.json").read_text())
    assert sorted((r["run_id"], r["status"]) for r in summary["runs"]) == sorted((s.run_id, "done") for s in specs)
    # rich wraps long lines, at a space when it can (this path has one): compare without whitespace
    assert "".join(f"report: {sweep / 'report' / 'index.html'}".split()) in "".join(printed.split())
    launches = slurmctl.read_launches(sweep)
    assert len(launches) == 1 and len(launches[0].arrays) == 1 and launches[0].gather
    assert set(launches[0].runs) == {s.run_id for s in specs}
    print(f"slurm --wait, 2 runs + gather: {seconds:.0f} s")
    # relaunch: nothing is submitted
    before = _all_job_ids()
    assert main(_demo_args(grid, out, "slurm")) == 0
    assert "nothing to submit" in capsys.readouterr().out
    assert len(slurmctl.read_launches(sweep)) == 1
    assert _all_job_ids() == before


def test_sbatch_end_to_end_to_a_report(tmp_path, capsys):
    grid = _demo_grid(tmp_path / "grids")
    out = tmp_path / "out dir's \"y\""
    assert main(_demo_args(grid, out, "sbatch")) == 0
    sweep = out / "demo"
    launch = slurmctl.read_launches(sweep)[0]
    assert launch.cluster == "sbatch" and launch.gather
    states = wait_for_jobs(launch.job_ids(), timeout=600)  # a guard against a hang, not a speed test
    assert states[launch.gather].state == "COMPLETED", states
    for spec in _demo_specs(grid, out):
        assert store.run_state(sweep / "runs" / spec.run_id).status == "done"
        assert (sweep / "slurm-logs" / f"{launch.runs[spec.run_id]}.out").exists()
    assert (sweep / "report" / "index.html").exists()
    assert "gather.sbatch: job" in (sweep / "slurm-logs" / f"gather-{launch.gather}.out").read_text()
    # --status agrees, from files and squeue
    assert main(["--grid", str(grid), "--status", "--out", str(out), "--data-root", str(DATA), *DEMO_TINY]) == 0
    assert "done: 2" in capsys.readouterr().out


def test_failing_task_is_reported_while_the_other_run_and_the_gather_job_finish(tmp_path, capsys):
    grid = _grid_file(tmp_path, "onefails")
    out = tmp_path / "out"
    ok, bad = _specs(grid, out)
    # the flip run cannot write its spec.json: a directory is in the way, so the worker raises
    obstacle = out / "onefails" / "runs" / bad.run_id / "spec.json"
    obstacle.mkdir(parents=True)
    assert main([*_launch_args(grid, out, "slurm"), "--wait"]) == 1
    printed = capsys.readouterr().out.replace("\n", "")
    sweep = out / "onefails"
    assert store.run_state(sweep / "runs" / ok.run_id).status == "done"
    assert store.run_state(sweep / "runs" / bad.run_id).status == "failed"
    summary = json.loads((sweep / "report" / "summary.json").read_text())  # the gather job still ran
    assert {r["run_id"]: r["status"] for r in summary["runs"]} == {ok.run_id: "done", bad.run_id: "failed"}
    assert "report: " in printed
    assert main(["--grid", str(grid), "--status", "--out", str(out), "--data-root", str(DATA), *LEAN]) == 3  # failed
    status = capsys.readouterr().out
    assert f"failed {bad.run_id}: IsADirectoryError" in status  # the reason, below the table
    # --rerun-failed submits only the failed run
    obstacle.rmdir()
    assert main([*_launch_args(grid, out, "slurm"), "--rerun-failed"]) == 0
    launches = slurmctl.read_launches(sweep)
    assert len(launches) == 2 and list(launches[1].runs) == [bad.run_id]
    _scancel_active([sweep])


# ------------------------------------------------------------------------------------------------
# preemption and time limits (started by the fixture when the module started)
# ------------------------------------------------------------------------------------------------


def test_requeued_and_timed_out_runs_resume_and_match_an_uninterrupted_run(interrupted):
    run_id = interrupted["run_id"]
    thread: Interrupter = interrupted["thread"]
    thread.join(timeout=300)
    assert not thread.error, f"{thread.error}; events: {thread.events}"
    launches = {k: slurmctl.read_launches(interrupted[k])[0] for k in ("rq", "tl")}
    wait_for_jobs([launches["rq"].runs[run_id], launches["tl"].runs[run_id]], timeout=300)
    assert interrupted["reference"].wait(timeout=120) == 0, interrupted["reference"].stderr.read()
    reference = _logits(interrupted["ref_dir"])
    for key in ("rq", "tl"):
        run_dir = interrupted[key] / "runs" / run_id
        state = store.run_state(run_dir)
        log = (run_dir / "log.txt").read_text()
        assert state.status == "done", (key, state, log, thread.events)
        assert re.search(r"resumed from checkpoint after epoch [1-9]\d* \(Slurm restart [1-9]\)", log), (key, log)
        assert state.summary["restarts"] >= 1
        np.testing.assert_array_equal(_logits(run_dir), reference, err_msg=key)
    # the time-limited one was requeued by submitit's timeout handling (USR2 before the limit)
    job = launches["tl"].runs[run_id]
    text = "".join((Path(launches["tl"].folder) / f"{job}_0_log.{ext}").read_text() for ext in ("out", "err"))
    assert "Caught signal SIGUSR2" in text and "this job is timed-out" in text and "Requeued job" in text
    print(f"interrupted runs finished {time.time() - interrupted['t0']:.0f} s after submission; {thread.events}")


# ------------------------------------------------------------------------------------------------
# several runs in one task ([slurm].runs_per_task)
# ------------------------------------------------------------------------------------------------


def test_packed_tasks_on_both_backends_train_bitwise_as_alone_and_a_requeued_one_resumes(tmp_path, capsys):
    """Four runs, two at once per submitit task and three at once per sbatch task (cpus_per_task 2:
    one thread a run, like the in-process reference). The sbatch fallback's first task is requeued
    with scontrol while its three runs train: each saves, the requeued task resumes them."""
    import torch

    grid = tmp_path / "packed grid.toml"
    text = tiny_grid_text(name="packed", epochs=3, seeds=(1, 2), lean=True, n_train=200, n_test=100,
                          extra=dev_slurm_text().replace("cpus_per_task = 1", "cpus_per_task = 2")
                          .replace("mem_gb = 1\n", "mem_gb = 2\n")
                          + "runs_per_task = 2\n")
    grid.write_text(text)
    outs = {"slurm": tmp_path / "submitit out", "sbatch": tmp_path / "sbatch out"}
    assert main(_launch_args(grid, outs["slurm"], "slurm")) == 0
    os.environ["CNNSTRESS_FAULT"] = "slow:epoch:2"  # time for the requeue to find them mid-training
    try:
        assert main([*_launch_args(grid, outs["sbatch"], "sbatch"), "--set", "slurm.runs_per_task=3"]) == 0
    finally:
        del os.environ["CNNSTRESS_FAULT"]
    specs = _specs(grid, outs["slurm"])
    sb = {k: slurmctl.read_launches(outs[k] / "packed")[0] for k in outs}
    # no report is looked at here: the gather jobs (still waiting on the arrays) would only cost time
    subprocess.run(["scancel", *(sb[k].gather for k in outs)], check=True, capture_output=True)
    assert len({sb["slurm"].runs[s.run_id] for s in specs}) == 2 and len({sb["sbatch"].runs[s.run_id] for s in specs}) == 2
    first = [s for s in specs if sb["sbatch"].runs[s.run_id].endswith("_0")]
    assert len(first) == 3
    dirs = [outs["sbatch"] / "packed" / "runs" / s.run_id for s in first]
    deadline = time.time() + 300
    while not all(store.progress_epochs(d) >= 1 for d in dirs):
        assert time.time() < deadline, "the packed sbatch task did not start training"
        time.sleep(0.2)
    subprocess.run(["scontrol", "requeue", sb["sbatch"].runs[first[0].run_id]], check=True, capture_output=True)
    # the reference meanwhile: each run alone in this process, one thread
    ref = tmp_path / "alone"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*_launch_args(grid, ref, "debug"), "--no-gather"]) == 0
    finally:
        torch.set_num_threads(threads)
    wait_for_jobs([j for k in outs for j in sb[k].job_ids()], timeout=600)
    for k in outs:
        for spec in specs:
            run_dir = outs[k] / "packed" / "runs" / spec.run_id
            state = store.run_state(run_dir)
            assert state.status == "done", (k, spec.run_id, state)
            np.testing.assert_array_equal(_logits(run_dir), _logits(ref / "packed" / "runs" / spec.run_id), err_msg=k)
    for d in dirs:
        log = (d / "log.txt").read_text()
        assert re.search(r"resumed from checkpoint after epoch [1-9] \(Slurm restart 1\)", log), log
    assert main(["--grid", str(grid), "--status", "--out", str(outs["sbatch"]), "--data-root", str(DATA), *LEAN,
                 "--set", "slurm.runs_per_task=3"]) == 0
    status = capsys.readouterr().out
    assert f"task {sb['sbatch'].runs[first[0].run_id]} trains 3 runs at once: " in status, status


def test_a_packed_task_at_its_time_limit_saves_every_run_and_is_requeued_by_submitit(packed_timelimit, tmp_path):
    """The time limit's USR2 reaches a packed submitit task: its runs save and stop, then submitit's
    own handler checkpoints the task and requeues it, and the requeued task resumes both runs to
    results bitwise equal to each run trained alone."""
    import torch

    info = packed_timelimit
    thread: HoldAfterFirstEpoch = info["thread"]
    thread.join(timeout=400)
    assert not thread.error, f"{thread.error}; events: {thread.events}"
    launch = slurmctl.read_launches(info["sweep"])[0]
    [job] = {launch.runs[s.run_id] for s in info["specs"]}
    wait_for_jobs([job], timeout=300)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([*_launch_args(info["grid"], tmp_path / "alone", "debug"), "--no-gather"]) == 0
    finally:
        torch.set_num_threads(threads)
    for spec in info["specs"]:
        run_dir = info["sweep"] / "runs" / spec.run_id
        state, log = store.run_state(run_dir), (run_dir / "log.txt").read_text()
        assert state.status == "done", (spec.run_id, state, log, thread.events)
        assert re.search(r"resumed from checkpoint after epoch [1-9] \(Slurm restart 1\)", log), log
        np.testing.assert_array_equal(_logits(run_dir), _logits(tmp_path / "alone" / "packedtl" / "runs" / spec.run_id))
    text = "".join((Path(launch.folder) / f"{job}_0_log.{ext}").read_text() for ext in ("out", "err"))
    assert "SIGUSR2 received: passed on to every run still training" in text, text[-3000:]
    assert "Caught signal SIGUSR2" in text and "this job is timed-out" in text and "Requeued job" in text, text[-3000:]
