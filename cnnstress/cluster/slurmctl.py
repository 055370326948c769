"""What the two Slurm backends (``slurm.py``: submitit job arrays; ``sbatch.py``: the static
sbatch scripts) share: the Slurm client commands (scontrol, squeue, sacct), what a job asks for
(``job_request``: the one reading of the grid's ``[slurm]`` table, which each backend only
spells in its own syntax), splitting arrays at MaxArraySize, the launch records in
``<sweep>/launches.jsonl``, job states and ``--wait``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console

from .. import atomic
from ..config import SlurmConfig
from ..layout import DONE_NAME, LAUNCHES_FILE, LAUNCHES_LOCK, RUNS_AT_ONCE, RUNS_DIR, SPEC_FILE
from .base import Backend, BackendError, Handle, progress_bar

DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
CMD_TIMEOUT_S = 30
# how long wait_for_launch lets squeue fail in a row before it gives up
SQUEUE_PATIENCE_S = 600.0

# Slurm job states (squeue %T / sacct State), grouped by what they mean for a run.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
                            "STOPPED", "SPECIAL_EXIT"})
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
ACTIVE_STATES = PENDING_STATES | RUNNING_STATES
# Everything else (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED,
# BOOT_FAIL, DEADLINE, REVOKED) means the job has ended.

# [slurm].additional may not set what cnnstress sets itself (or has a [slurm] key for).
RESERVED_SBATCH = {
    "array": "cnnstress builds the array from the unfinished runs",
    "output": "logs go to the sweep's folder", "error": "logs go to the sweep's folder",
    "open_mode": "requeued tasks append to their log", "parsable": "cnnstress reads the job id",
    "wrap": "the job script is cnnstress's", "dependency": "the gather job depends on the arrays",
    "signal": "use [slurm].signal_delay_s", "job_name": "the job name is cnnstress-<sweep>",
    "partition": "use [slurm].partition", "account": "use [slurm].account", "qos": "use [slurm].qos",
    "constraint": "use [slurm].constraint", "time": "use [slurm].time_min", "mem": "use [slurm].mem_gb",
    "cpus_per_task": "use [slurm].cpus_per_task", "gpus_per_node": "use [slurm].gpus_per_task",
    "gres": "use [slurm].gpus_per_task", "requeue": "tasks are always requeueable",
    # submitit lets additional parameters replace its own lines, and sbatch takes the last of two
    "chdir": "jobs run in the cnnstress package folder, where the worker and submitit's pickles import it",
    "nodes": "an array task is one task on one node ([slurm].runs_per_task packs several runs into it)",
    "ntasks": "an array task is one task on one node ([slurm].runs_per_task packs several runs into it)",
    "ntasks_per_node": "an array task is one task on one node (more would train its runs several times at once)",
    "mem_per_cpu": "use [slurm].mem_gb (sbatch refuses it next to --mem)",
    "mem_per_gpu": "use [slurm].mem_gb (sbatch refuses it next to --mem)",
    "gpus": "use [slurm].gpus_per_task", "gpus_per_task": "use [slurm].gpus_per_task",
}


class SlurmError(BackendError):
    """Slurm cannot be used or refused a submission; the message says what to do."""






# ------------------------------------------------------------------------------------------------
# talking to the controller
# ------------------------------------------------------------------------------------------------


def _slurm_cmd(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a Slurm client command (never through a shell). A missing command or a hang becomes a
    CompletedProcess with returncode 127 / 124 and the reason in stderr."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer within {timeout:g} s")


def check_controller() -> None:
    """Fail fast (SlurmError) unless ``scontrol ping`` says the controller is UP. submitit alone
    would pick Slurm whenever srun is on PATH and then hang or fail obscurely."""
    res = _slurm_cmd(["scontrol", "ping"], timeout=15)
    text = (res.stdout + res.stderr).strip()
    if res.returncode == 0 and "is UP" in res.stdout:
        return
    raise SlurmError(
        "the Slurm controller does not answer (`scontrol ping`: "
        f"{' '.join(text.split()) or f'exit status {res.returncode}'}). "
        "On the dev machine start it with `sudo bash slurm/dev-cluster.sh up`; on a real cluster run this "
        "on a login node or ask your admin whether slurmctld is up; or use --cluster local.")


def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (Slurm's default 1001 when it cannot be read)."""
    return max_array_size_said()[0]


def max_array_size_said() -> tuple[int, str]:
    """(MaxArraySize, where that number comes from, in words for a dry run)."""
    res = _slurm_cmd(["scontrol", "show", "config"])
    if res.returncode != 0:
        return DEFAULT_MAX_ARRAY_SIZE, "Slurm's default: scontrol show config could not be read here"
    if re.search(r"^\s*MaxArraySize\s*=\s*[1-9]", res.stdout, re.MULTILINE):
        return parse_max_array_size(res.stdout), "read from scontrol show config"
    return DEFAULT_MAX_ARRAY_SIZE, "Slurm's default: scontrol show config does not set it"


def parse_max_array_size(config_text: str) -> int:
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", config_text, re.MULTILINE)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE



# ------------------------------------------------------------------------------------------------
# [slurm] -> what one job asks for (read once here; slurm.py and sbatch.py only spell it)
# ------------------------------------------------------------------------------------------------


def check_additional(additional: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """[slurm].additional as a dict, refusing the names cnnstress sets itself (RESERVED_SBATCH)."""
    for key, _ in additional:
        if key in RESERVED_SBATCH:
            raise ValueError(f"[slurm].additional.{key}: cannot be set here ({RESERVED_SBATCH[key]}); "
                             f"reserved names: {', '.join(sorted(RESERVED_SBATCH))}")
    return dict(additional)


@dataclass(frozen=True)
class JobRequest:
    """What one job (a training array or the gather job) asks Slurm for."""

    job_name: str
    time_min: int
    cpus: int
    mem_gb: float
    gpus: int  # 0: no GPU line at all (a cluster without GPUs refuses any)
    partition: str
    account: str
    qos: str
    constraint: str
    signal_delay_s: int | None  # USR2 this long before the time limit (arrays; the gather job has none)
    array_parallelism: int | None  # arrays only
    requeue: bool  # arrays: a preempted or timed-out task comes back and resumes
    additional: dict[str, Any]
    setup: tuple[str, ...]


def job_request(slurm: SlurmConfig, sweep: str, kind: str, array_parallelism: int | None = None) -> JobRequest:
    """The request of the training array (kind "array": one GPU if [slurm].gpus_per_task, the
    run's time, cpus and memory, the stop signal) or of the gather job (kind "gather": no GPU, no
    constraint, its own time, cpus and memory)."""
    additional = check_additional(slurm.additional)
    if kind == "array":
        return JobRequest(f"cnnstress-{sweep}", slurm.time_min, slurm.cpus_per_task, slurm.mem_gb,
                          slurm.gpus_per_task, slurm.partition, slurm.account, slurm.qos, slurm.constraint,
                          slurm.signal_delay_s, int(array_parallelism or slurm.array_parallelism), True,
                          additional, slurm.setup)
    if kind == "gather":
        return JobRequest(f"cnnstress-{sweep}-gather", slurm.gather_time_min, slurm.gather_cpus, slurm.gather_mem_gb,
                          0, slurm.partition, slurm.account, slurm.qos, "", None, None, False, additional, slurm.setup)
    raise ValueError(f"job kind {kind!r}: allowed: array, gather")


class SlurmLikeBackend(Backend):
    """Both Slurm backends: the controller must answer, [slurm] must render, states from squeue."""

    batch = True

    def check(self, slurm: SlurmConfig, sweep: str) -> None:
        job_request(slurm, sweep, "array")  # ValueError for reserved [slurm].additional names

    def check_environment(self) -> None:
        check_controller()

    def job_states(self, job_ids: Sequence[str]) -> JobQuery:
        return query_jobs(job_ids)

    def states(self, handle: Handle) -> dict[str, str]:
        """Each submitted run's state from its files and what squeue/sacct say about its job."""
        from .status import state_of

        query = self.job_states([handle.job_of(r) for r in handle.run_ids if handle.job_of(r)])
        out = {}
        for run_id in handle.run_ids:
            job_id = handle.job_of(run_id)
            out[run_id] = state_of(handle.sweep_dir / RUNS_DIR / run_id, query.jobs.get(job_id), job_id, query.ok)[0]
        return out

    def wait(self, handle: Handle, console: Console) -> None:
        if handle.launch is not None:
            wait_for_launch(handle.launch, handle.run_ids, handle.sweep_dir, console)


def chunk_items(n: int, max_array_size: int) -> list[range]:
    """Split n array tasks (indices 0..n-1 each) into arrays of at most max_array_size tasks."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    return [range(i, min(i + max_array_size, n)) for i in range(0, n, max_array_size)]


def packs(runs: Sequence[Any], runs_per_task: int) -> list[list[Any]]:
    """The runs each array task trains ([slurm].runs_per_task at once): consecutive runs of the
    launch, which in grid order are mostly seeds of one variant and so take about as long."""
    if runs_per_task < 1:
        raise ValueError(f"runs_per_task must be at least 1, got {runs_per_task}")
    runs = list(runs)
    return [runs[i:i + runs_per_task] for i in range(0, len(runs), runs_per_task)]


def finished_timings(sweep_dir: Path) -> list[tuple[str, int, float]]:
    """(model, runs at once, seconds) of every finished run of a sweep, from DONE.json's summary
    and spec.json (runs whose files do not say are left out)."""
    from .. import store

    out = []
    runs_dir = sweep_dir / RUNS_DIR
    for run_dir in sorted(runs_dir.iterdir()) if runs_dir.is_dir() else []:
        if run_dir.is_symlink() or not run_dir.is_dir():
            continue
        state = store.run_state(run_dir, verify_hash=False)
        summary = state.summary or {}
        seconds = summary.get("total_s")
        if state.status != "done" or not isinstance(seconds, (int, float)) or not seconds > 0:
            continue
        try:
            model = str(json.loads((run_dir / SPEC_FILE).read_text())["model"]["name"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        at_once = summary.get(RUNS_AT_ONCE, 1)
        out.append((model, at_once if isinstance(at_once, int) and at_once > 0 else 1, float(seconds)))
    return out


def expected_hours(runs: Sequence[Any], runs_per_task: int, timings: Sequence[tuple[str, int, float]],
                   ) -> tuple[float, float, str] | None:
    """(low, high, how) task-hours of training ``runs`` at ``runs_per_task`` per task, from finished
    runs' timings (``finished_timings``), each run timed by the median of finished runs of its model
    (of any model where none has finished). Measured at this packing, a task of k runs takes about
    as long as one of them: low = high. Measured only at another packing, what sharing costs is not
    known: low assumes it costs nothing (each task as long as one run alone), high that it gains
    nothing (as long as its runs one after another). None when no run has finished."""
    if not timings:
        return None
    at_k = [t for t in timings if t[1] == runs_per_task]
    pool = at_k or timings
    by_model: dict[str, list[float]] = {}
    for model, _, seconds in pool:
        by_model.setdefault(model, []).append(seconds)
    every = statistics.median(t[2] for t in pool)
    per_run = [statistics.median(by_model[r.model.name]) if r.model.name in by_model else every for r in runs]
    tasks = packs(per_run, runs_per_task)
    longest = sum(max(task) for task in tasks) / 3600  # a task lasts as long as its slowest run
    if at_k:
        return longest, longest, f"the median time of {len(pool)} finished run(s) trained {runs_per_task} at once"
    packed = sorted({t[1] for t in timings})
    if runs_per_task == 1:
        return longest, longest, (f"the median time of {len(pool)} finished run(s) trained {', '.join(map(str, packed))} "
                                  "at once: sharing slows a run, so this is an upper bound")
    how = (f"the median time of {len(pool)} finished run(s) trained {', '.join(map(str, packed))} at once; none "
           f"trained {runs_per_task} at once yet, so the cost of sharing is a range")
    return longest, sum(per_run) / 3600, how


def packing_lines(runs: Sequence[Any], slurm: Any, sweep_dir: Path) -> list[str]:
    """A Slurm dry run's lines on packing ([slurm].runs_per_task, mps) and the expected GPU-hours."""
    k = slurm.runs_per_task
    n_tasks = len(packs(runs, k))
    lines = []
    if k > 1:
        from ..pack import threads_per_run

        lines.append(f"{k} runs at once in each array task: {n_tasks} task(s) for {len(runs)} runs, each task's "
                     f"{slurm.cpus_per_task} CPUs split into {threads_per_run(k, slurm.cpus_per_task)} thread(s) a run, "
                     f"mem_gb {slurm.mem_gb:g} for the whole task; "
                     + ("MPS: on where the node has nvidia-cuda-mps-control" if slurm.mps else
                        "the runs share the GPU by time-slicing ([slurm].mps = true for CUDA MPS)"))
    unit = "GPU-hours" if slurm.gpus_per_task else f"task-hours ({slurm.cpus_per_task} CPUs each, no GPU)"
    est = expected_hours(runs, k, finished_timings(sweep_dir))
    if est is None:
        lines.append(f"expected {unit}: not known until a run of this sweep has finished (they are timed from "
                     "finished runs)")
    else:
        low, high, how = est
        said = f"{low:.2f}" if abs(high - low) < 0.005 else f"{low:.2f} to {high:.2f}"
        lines.append(f"expected {unit} at runs_per_task = {k}: {said} ({n_tasks} task(s); from {how})")
    return lines


def share_parallelism(total: int, n_arrays: int) -> list[int]:
    """The %N limit of each of the n arrays one launch is split into. They are submitted together
    and run at once, so each getting the whole [slurm].array_parallelism would let the launch run
    n times that many tasks; the shares sum to ``total`` instead (at least 1 each, so with more
    arrays than ``total`` the launch runs one task per array)."""
    if n_arrays < 1:
        raise ValueError(f"n_arrays must be at least 1, got {n_arrays}")
    base, extra = divmod(int(total), n_arrays)
    return [max(1, base + (i < extra)) for i in range(n_arrays)]


def split_indices(indices: Sequence[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """Manifest lines -> arrays whose task ids all stay below MaxArraySize: [(offset, task ids)],
    where line = offset + task id. Lines are taken in order; each array starts at its first line."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    rest = sorted(set(indices))
    if any(i < 0 for i in rest):
        raise ValueError(f"manifest indices must be >= 0, got {rest[0]}")
    out: list[tuple[int, list[int]]] = []
    while rest:
        offset = rest[0]
        take = [i for i in rest if i < offset + max_array_size]
        out.append((offset, [i - offset for i in take]))
        rest = rest[len(take):]
    return out


def array_ranges(task_ids: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    ids = sorted(set(task_ids))
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)



def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)



# ------------------------------------------------------------------------------------------------
# launches.jsonl: what was submitted, for --status and --wait
# ------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """One submission, as launches.jsonl records it: the job ids and where each run went. A plain
    record: where its logs are is for the backend named ``cluster`` to say (Handle, status.py)."""

    cluster: str
    folder: str  # submitit folder (slurm) or slurm-logs folder (sbatch)
    arrays: list[str] = field(default_factory=list)
    gather: str | None = None
    runs: dict[str, str] = field(default_factory=dict)  # run_id -> "<array>_<task>"
    time: str = ""

    def job_ids(self) -> list[str]:
        return [*self.arrays, *([self.gather] if self.gather else [])]

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "cluster": self.cluster, "folder": self.folder, "arrays": self.arrays,
                "gather": self.gather, "runs": self.runs}


def record_launch(sweep_dir: Path, launch: Launch) -> None:
    """Append one line to <sweep>/launches.jsonl (rewritten atomically: never a half line).

    Read, append and replace happen under an exclusive flock on launches.jsonl.lock: two launches
    of one sweep finishing at once would otherwise each rewrite the file from the same old content
    and one line (jobs --status and --wait then never hear of) would be lost. Readers need no lock,
    since they only ever see a whole old or a whole new file."""
    import fcntl

    path = sweep_dir / LAUNCHES_FILE
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # never through a link (LinkRefused): the launcher refuses one before it submits anything
    with os.fdopen(atomic.open_in_place(sweep_dir / LAUNCHES_LOCK, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic.atomic_write_bytes(path, old + (json.dumps(launch.to_dict(), sort_keys=True) + "\n").encode())


def read_launches(sweep_dir: Path) -> list[Launch]:
    """The launches recorded for a sweep, oldest first (unreadable lines are skipped)."""
    path = sweep_dir / LAUNCHES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append(Launch(cluster=str(d["cluster"]), folder=str(d["folder"]),
                              arrays=[str(a) for a in d.get("arrays", [])], gather=d.get("gather"),
                              runs={str(k): str(v) for k, v in d.get("runs", {}).items()}, time=str(d.get("time", ""))))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def latest_jobs(launches: Sequence[Launch]) -> dict[str, tuple[str, Launch]]:
    """run_id -> (job id, launch) of the most recent submission of each run."""
    out: dict[str, tuple[str, Launch]] = {}
    for launch in launches:
        for run_id, job in launch.runs.items():
            out[run_id] = (job, launch)
    return out


# ------------------------------------------------------------------------------------------------
# job states: squeue first (works everywhere), sacct only if accounting answers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # squeue %T / sacct State, first word ("CANCELLED by 0" -> CANCELLED)
    reason: str = ""  # squeue %r (why pending) or sacct ExitCode
    source: str = "squeue"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass
class JobQuery:
    """Result of asking Slurm about some job ids."""

    jobs: dict[str, JobInfo]
    ok: bool  # squeue answered (an empty answer is then trustworthy)
    notes: list[str] = field(default_factory=list)


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines '%i|%T|%r' -> job id -> JobInfo."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = JobInfo(parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN",
                                    parts[2] if len(parts) > 2 and parts[2] != "None" else "")
    return out


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines 'JobID|State|ExitCode' (sacct -n -P -X) -> job id -> JobInfo. Collapsed pending
    array lines ('12_[3-5]') are skipped: squeue knows those."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] and "[" not in parts[0]:
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"
            out[parts[0]] = JobInfo(parts[0], state, f"exit {parts[2]}" if len(parts) > 2 and parts[2] else "", "sacct")
    return out


def query_jobs(job_ids: Sequence[str], use_sacct: bool = True) -> JobQuery:
    """States of these jobs (array ids are expanded into '<array>_<task>'). squeue -t all also
    shows jobs that ended less than MinJobAge ago; sacct is asked about the rest, and its failure
    (no accounting) only costs detail."""
    mains = sorted({j.split("_")[0] for j in job_ids if j}, key=lambda x: (len(x), x))
    if not mains:
        return JobQuery({}, True)
    res = _slurm_cmd(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", f"--jobs={','.join(mains)}"])
    notes = []
    if res.returncode == 0:
        jobs, ok = parse_squeue(res.stdout), True
    elif "Invalid job id" in res.stderr:
        jobs, ok = {}, True  # every id has been purged from the controller's memory
    else:
        jobs, ok = {}, False
        notes.append(f"squeue failed: {' '.join((res.stderr or res.stdout).split())[:200]}")
    unknown = [j for j in job_ids if j not in jobs and not any(k.startswith(j + "_") for k in jobs)]
    if use_sacct and unknown:
        sres = _slurm_cmd(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode",
                           f"--jobs={','.join(sorted({j.split('_')[0] for j in unknown}))}"])
        if sres.returncode == 0:
            for jid, info in parse_sacct(sres.stdout).items():
                jobs.setdefault(jid, info)
        else:
            notes.append("sacct unavailable (no accounting?): jobs that left squeue are judged from files only")
    return JobQuery(jobs, ok, notes)



def _one_line(text: str, limit: int = 600) -> str:
    return " ".join(text.split())[:limit]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")



# ------------------------------------------------------------------------------------------------
# waiting (--wait)
# ------------------------------------------------------------------------------------------------


def wait_for_launch(launch: Launch, run_ids: Sequence[str], sweep_dir: Path, console: Console,
                    poll_s: float | None = None) -> None:
    """Block until no job of this launch is queued or running any more (squeue; no accounting
    needed). Prints each run as it finishes. Polls every 2 s at first, then less often (at most
    every 30 s), unless poll_s is given. SlurmError when squeue fails for SQUEUE_PATIENCE_S in a row."""
    ids = launch.job_ids()
    by_run = [r for r in run_ids if r in launch.runs]
    reported: set[str] = set()
    t0 = last_ok = time.time()
    with progress_bar(console) as progress:
        bar = progress.add_task(f"{len(by_run)} runs (jobs {', '.join(ids)})", total=len(by_run))
        while True:
            query = query_jobs(ids, use_sacct=False)
            now = time.time()
            if query.ok:
                last_ok = now
            elif now - last_ok > SQUEUE_PATIENCE_S:
                raise SlurmError(f"squeue has not answered for {SQUEUE_PATIENCE_S:.0f} s: {'; '.join(query.notes)}")
            for rid in by_run:
                if rid in reported:
                    continue
                job = query.jobs.get(launch.runs[rid])
                finished = (sweep_dir / RUNS_DIR / rid / DONE_NAME).exists()
                if finished or (query.ok and (job is None or not job.active)):
                    reported.add(rid)
                    progress.advance(bar)
                    colour = "green" if finished else "red"
                    word = "done" if finished else f"ended ({job.state if job else 'gone from squeue'})"
                    console.print(f"[{colour}]{word}[/{colour}] {rid} (job {launch.runs[rid]})")
            active = [j for j in query.jobs.values() if j.active]
            if query.ok and not active:
                break
            time.sleep(poll_s if poll_s is not None else min(30.0, 2.0 + (now - t0) / 20))
