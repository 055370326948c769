"""Several runs in one task (``[slurm].runs_per_task``), each in a worker process of its own.

A packed task starts one ``python -m cnnstress.worker`` per run, all at once, on the task's one
GPU (or its CPUs), and gives each its share of the task's CPUs as OMP_NUM_THREADS, so that a run's
numbers are those of the same run trained alone with as many threads. Each run keeps its own
claim, checkpoints, log and DONE.json / FAILED.json: one run failing, or killed outright (the
kernel's OOM killer), does not stop the others, and a requeued task resumes the unfinished runs
and skips the finished ones.

A stop signal (the time limit's USR2, preemption, ``scontrol requeue``'s TERM) is forwarded to
every worker still running, since a site may signal only the task's first process; each writes
its newest finished epoch and exits, and the task waits for them before it goes the way the
signal says (submitit: checkpoint and requeue; alone: ``PackStopped``).

With ``mps`` the task's workers share the GPU through a CUDA MPS control daemon of the task's own
(``nvidia-cuda-mps-control -d`` with private pipe and log folders), stopped when they have ended;
where the site has none, they share it by plain time-slicing. The log says which.

Torch-free: the workers import torch, the task that watches them does not.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from . import faults, store
from .cluster.base import PACKAGE_ROOT  # workers start there, where `python -m cnnstress.worker` imports it
from .config import RunSpec
from .layout import EXIT_BUSY, EXIT_INTERRUPTED, RUNS_AT_ONCE_ENV, RUNS_DIR, SPEC_FILE

#: What a job is told before it is stopped: SIGTERM (scontrol requeue, preemption, scancel, the
#: sbatch fallback's USR2 trap, which requeues) and SIGUSR2 (submitit's --signal=USR2@delay before the
#: time limit, and preemption). The worker saves on either; a packed task passes either on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR2)
#: the CUDA MPS control program (in the CUDA toolkit and the driver packages)
MPS_CONTROL = "nvidia-cuda-mps-control"
#: how long a stopped task waits for its workers to save and exit (Slurm's USR2 comes
#: [slurm].signal_delay_s, at least 10 s, before the kill)
STOP_WAIT_S = 60.0

Log = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"pack: {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class RunEnd:
    """How one run of a pack ended: done, skipped (done before), failed, busy (another live process
    holds it) or stopped (a stop signal; resumable)."""

    run_id: str
    status: str
    detail: str = ""
    summary: dict[str, Any] | None = None


class PackStopped(Exception):
    """The task was told to stop while its runs trained; every run that had not finished is
    resumable. ``signum`` is the signal."""

    def __init__(self, signum: int, ends: Sequence[RunEnd]):
        self.signum = signum
        self.ends = list(ends)
        stopped = [e.run_id for e in ends if e.status == "stopped"]
        super().__init__(f"stopped by {signal.Signals(signum).name}: {len(stopped)} run(s) resumable"
                         + (f" ({', '.join(stopped)})" if stopped else ""))


def cpus_here() -> int:
    """The CPUs this task may use: Slurm's SLURM_CPUS_PER_TASK when it set one, else this process's
    CPU affinity."""
    said = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if said.isdigit() and int(said) > 0:
        return int(said)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def threads_per_run(at_once: int, cpus: int | None = None) -> int:
    """Threads for each of ``at_once`` runs sharing ``cpus`` (default: cpus_here()), at least 1."""
    return max(1, (cpus if cpus is not None else cpus_here()) // max(1, at_once))


# ------------------------------------------------------------------------------------------------
# a worker's end, as the process that started it sees it
# ------------------------------------------------------------------------------------------------

SIGNAL_CAUSES = {"SIGKILL": "out of memory, or killed by hand", "SIGTERM": "stopped by the system or by hand",
                 "SIGSEGV": "crashed in native code", "SIGBUS": "crashed in native code",
                 "SIGABRT": "aborted in native code"}


def record_unreported_end(run_dir: Path, exit_status: int | None) -> str | None:
    """A worker that ended with neither DONE.json nor FAILED.json died where it could not write its
    reason (the kernel's OOM killer sends SIGKILL, which nothing can catch). Write FAILED.json for
    it, in the worker's own format, so --status, --rerun-failed and the report see a failed run
    with a reason instead of a 'partial' one. Returns the reason written, else None."""
    state = store.run_state(run_dir, verify_hash=False)
    if state.status in ("done", "failed") or not run_dir.is_dir() or run_dir.is_symlink() or run_dir.parent.is_symlink():
        return None  # (a linked run folder: nothing is written into it)
    if exit_status is not None and exit_status < 0:
        try:
            name = signal.Signals(-exit_status).name
        except ValueError:
            name = f"signal {-exit_status}"
        cause = SIGNAL_CAUSES.get(name)
        how = f"killed by signal {-exit_status} ({name}{': ' + cause if cause else ''})"
    elif exit_status is not None:
        how = f"its process exited with status {exit_status} without a result"
    else:
        how = "its process ended without a result"
    if any((run_dir / name).exists() for name in store.CHECKPOINT_NAMES):
        after = f" after epoch {store.progress_epochs(run_dir)}" if store.progress_epochs(run_dir) else ""
        rest = f"checkpoint{after} kept, relaunch resumes"
    else:
        rest = "no checkpoint yet, relaunch starts it over"
    reason = faults.naming(f"{how}; {rest}")  # the worker inherited this process's environment
    try:
        store.write_failed(run_dir, reason, "written by the launcher: the worker process could not report",
                           injected_faults=faults.injected())
    except OSError:
        return None
    return reason


def _stopped_by_signal(rc: int) -> bool:
    """A worker's exit status after a stop signal: killed by it (-N), or worker.main's 128 + N."""
    return rc < 0 and -rc in STOP_SIGNALS or rc - 128 in STOP_SIGNALS or rc == EXIT_INTERRUPTED


def run_end(run_id: str, run_dir: Path, rc: int, last_line: str, stopping: bool) -> RunEnd:
    """How a worker ended, from its exit status, the last line it printed and its run folder."""
    if rc == 0:
        try:
            result = json.loads(last_line)
            return RunEnd(run_id, "skipped" if result.get("status") == "skipped" else "done", summary=result)
        except (ValueError, AttributeError):
            return RunEnd(run_id, "failed", f"the worker exited 0 without a result line (last: {last_line[:200]!r})")
    if rc == EXIT_BUSY:
        return RunEnd(run_id, "busy", last_line[len("busy: "):] if last_line.startswith("busy: ") else last_line)
    state = store.run_state(run_dir, verify_hash=False)
    if state.status == "failed":
        return RunEnd(run_id, "failed", state.reason)
    if stopping and _stopped_by_signal(rc):
        return RunEnd(run_id, "stopped", "resumable from its last checkpoint")
    return RunEnd(run_id, "failed", record_unreported_end(run_dir, rc) or f"the worker exited with status {rc}")


# ------------------------------------------------------------------------------------------------
# the workers
# ------------------------------------------------------------------------------------------------


class _Worker:
    """One worker process training one run; its output lines go to this task's, each prefixed with
    the run id (stdout's last line is the worker's result)."""

    def __init__(self, spec: RunSpec, spec_file: Path, argv: Sequence[str], env: dict[str, str]):
        self.run_id = spec.run_id
        self.run_dir = Path(spec.paths.out_root) / spec.sweep / RUNS_DIR / spec.run_id
        self.last = ""
        self.proc = subprocess.Popen([*argv, "--spec", str(spec_file)], cwd=PACKAGE_ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        self.pumps = [threading.Thread(target=self._pump, args=(self.proc.stdout, sys.stdout, True), daemon=True),
                      threading.Thread(target=self._pump, args=(self.proc.stderr, sys.stderr, False), daemon=True)]
        for pump in self.pumps:
            pump.start()

    def _pump(self, source: Any, sink: Any, keep_last: bool) -> None:
        for line in source:
            if keep_last and line.strip():
                self.last = line.strip()
            sink.write(f"[{self.run_id}] {line}" if line.endswith("\n") else f"[{self.run_id}] {line}\n")
            sink.flush()

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def end(self, stopping: bool) -> RunEnd:
        rc = self.proc.wait()
        for pump in self.pumps:
            pump.join(timeout=10)
        return run_end(self.run_id, self.run_dir, rc, self.last, stopping)


@contextmanager
def _forwarded_stops(workers: list[_Worker], log: Log) -> Iterator[dict[str, Any]]:
    """While the workers run: a stop signal to this process is passed on to each of them at once
    and remembered (``said["signum"]``), the first one only. Only the main thread can install
    handlers; elsewhere nothing is forwarded (the cluster's own signal still reaches them)."""
    said: dict[str, Any] = {"signum": None, "previous": {}}
    if threading.current_thread() is not threading.main_thread():
        yield said
        return
    said["previous"] = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handler(signum: int, frame: Any) -> None:
        if said["signum"] is not None:
            return
        said["signum"] = signum
        for w in workers:
            w.signal(signum)
        log(f"{signal.Signals(signum).name} received: passed on to every run still training; waiting for them "
            "to save their checkpoints")

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield said
    finally:
        for sig, before in said["previous"].items():
            signal.signal(sig, before if before is not None else signal.SIG_DFL)


@contextmanager
def mps_daemon(enabled: bool, log: Log, control: str = MPS_CONTROL) -> Iterator[dict[str, str]]:
    """A CUDA MPS control daemon for this task's GPU while the block runs, when ``enabled`` and the
    site has one: yields the environment that puts a worker under it (its private pipe and log
    folders), {} otherwise (plain time-slicing). The daemon is told to quit afterwards."""
    if not enabled:
        yield {}
        return
    program = shutil.which(control)
    if program is None:
        log(f"MPS: not running ({control} is not on the path here); the runs share the GPU by time-slicing")
        yield {}
        return
    top = Path(tempfile.mkdtemp(prefix="cnnstress-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(top / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(top / "log")}
    for folder in env.values():
        Path(folder).mkdir()
    full = {**os.environ, **env}
    try:
        res = subprocess.run([program, "-d"], env=full, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        res = subprocess.CompletedProcess([program, "-d"], 1, "", str(e))
    if res.returncode != 0:
        why = " ".join((res.stderr or res.stdout).split())[:300] or f"exit status {res.returncode}"
        log(f"MPS: not running ({program} -d failed: {why}); the runs share the GPU by time-slicing")
        shutil.rmtree(top, ignore_errors=True)
        yield {}
        return
    log(f"MPS: control daemon started ({program} -d, pipe folder {env['CUDA_MPS_PIPE_DIRECTORY']})")
    try:
        yield env
    finally:
        try:
            res = subprocess.run([program], input="quit\n", env=full, capture_output=True, text=True, timeout=60)
            log("MPS: control daemon stopped" if res.returncode == 0 else
                f"MPS: 'quit' to the control daemon exited {res.returncode}: "
                f"{' '.join((res.stderr or res.stdout).split())[:300]}")
        except (OSError, subprocess.SubprocessError) as e:
            log(f"MPS: could not tell the control daemon to quit: {e}")
        shutil.rmtree(top, ignore_errors=True)


def run_pack(spec_jsons: Sequence[str], *, mps: bool = False, threads: int | None = None,
             worker_argv: Sequence[str] | None = None, log: Log = _say, poll_s: float = 0.2,
             stop_wait_s: float = STOP_WAIT_S) -> list[RunEnd]:
    """Train these runs at once, one worker process each, and return how each ended (in order).

    A stop signal is passed on to every worker; once they have ended (or ``stop_wait_s`` has
    passed), the handler that was installed before (submitit's: checkpoint and requeue) runs, or,
    where there was none, PackStopped is raised. ``threads``: each worker's OMP_NUM_THREADS
    (default: this task's CPUs split between the runs); ``worker_argv``: the command that trains
    a spec file (default ``python -m cnnstress.worker``; it gets ``--spec FILE``)."""
    specs = [RunSpec.from_json(text) for text in spec_jsons]
    if not specs:
        return []
    each = threads if threads is not None else threads_per_run(len(specs))
    argv = list(worker_argv) if worker_argv else [sys.executable, "-m", "cnnstress.worker"]
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    log(f"{len(specs)} run(s) at once in this task, {each} thread(s) each (OMP_NUM_THREADS), "
        + (f"on GPU {gpu}" if gpu else "on the CPU") + ": " + ", ".join(s.run_id for s in specs))
    workers: list[_Worker] = []
    with mps_daemon(mps and bool(gpu), log) as mps_env, tempfile.TemporaryDirectory(prefix="cnnstress-pack-") as tmp:
        if mps and not gpu:
            log("MPS: not used (this task has no GPU)")
        env = {**os.environ, **mps_env, "OMP_NUM_THREADS": str(each), RUNS_AT_ONCE_ENV: str(len(specs))}
        with _forwarded_stops(workers, log) as said:
            for i, spec in enumerate(specs):
                spec_file = Path(tmp) / f"{i}-{SPEC_FILE}"
                spec_file.write_text(spec.to_json())
                workers.append(_Worker(spec, spec_file, argv, env))
                if said["signum"] is not None:  # told to stop while starting them
                    workers[-1].signal(said["signum"])
            deadline = None
            while not all(w.ended() for w in workers):
                if said["signum"] is not None:
                    deadline = deadline or time.monotonic() + stop_wait_s
                    if time.monotonic() > deadline:
                        log(f"stop: {sum(not w.ended() for w in workers)} run(s) still running after "
                            f"{stop_wait_s:g} s; not waiting longer")
                        break
                time.sleep(poll_s)
            signum = said["signum"]
            ends = [w.end(signum is not None) if w.ended() else RunEnd(w.run_id, "stopped", "still saving when the task "
                                                                                              "stopped waiting")
                    for w in workers]
        for end in ends:
            log(f"{end.status} {end.run_id}" + (f": {end.detail}" if end.detail else ""))
    if signum is not None:
        before = said["previous"].get(signum)
        if callable(before):  # submitit's handler: checkpoint (the same task, again) and requeue
            before(signum, None)
        if before != signal.SIG_IGN:
            raise PackStopped(signum, ends)
    return ends


# ------------------------------------------------------------------------------------------------
# command line (the sbatch fallback's packed tasks)
# ------------------------------------------------------------------------------------------------


def pack_lines(n_lines: int, first: int, count: int) -> range:
    """The manifest lines one packed task trains: ``count`` from ``first``, fewer at the end."""
    return range(first, min(first + count, n_lines))


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    from .layout import EXIT_DONE, EXIT_FAILED, EXIT_USAGE

    ap = argparse.ArgumentParser(prog="python -m cnnstress.pack",
                                 description="Train several lines of a manifest at once, one worker process each.")
    ap.add_argument("--manifest", required=True, help="manifest.jsonl (one RunSpec per line)")
    ap.add_argument("--index", type=int, required=True, help="the first line this task trains")
    ap.add_argument("--count", type=int, required=True, help="how many lines from there ([slurm].runs_per_task)")
    ap.add_argument("--mps", action="store_true", help="share the GPU through a CUDA MPS daemon of this task's own")
    args = ap.parse_args(argv)
    lines = Path(args.manifest).read_text().splitlines()
    chosen = pack_lines(len(lines), args.index, args.count)
    if args.count < 1 or not 0 <= args.index < len(lines):
        print(f"error: lines {args.index}..{args.index + args.count - 1} are outside the manifest's {len(lines)} runs",
              file=sys.stderr)
        return EXIT_USAGE
    try:
        ends = run_pack([lines[i] for i in chosen], mps=args.mps)
    except PackStopped as e:
        print(f"stopped: {e}; a relaunch resumes them from their last checkpoints", file=sys.stderr)
        return 128 + e.signum
    print(json.dumps({e.run_id: e.status for e in ends}, sort_keys=True))
    if any(e.status == "failed" for e in ends):
        return EXIT_FAILED
    return EXIT_BUSY if any(e.status == "busy" for e in ends) else EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
