"""A chaos soak on the live dev Slurm cluster: many tiny runs, a seeded storm of faults,
relaunches with --rerun-failed, and a check that nothing was lost, duplicated or changed.

    .venv/bin/python bench/chaos.py [--quick] [--runs N] [--faults K] [--rounds R] [--seed S] [--out DIR]
                                    [--runs-per-task K]
    make chaos          # the full soak;  make chaos CHAOS_ARGS=--quick  for the short one

It needs the single-node cluster of ``slurm/dev-cluster.sh`` (root; it refuses any other Slurm: it
restarts daemons and cancels jobs). Without a controller it says so in one line and exits 0, unless
CNNSTRESS_REQUIRE_SLURM=1 (then 2).

What it does:

1. Writes one grid of N tiny runs (shapes, 200 training images, simple_cnn width 8, 2 variants x
   N/2 seeds, no stress sections, checkpoint every epoch) three times: ``chaos-slurm`` (launched with
   ``--cluster slurm``), ``chaos-sbatch`` (``--cluster sbatch``) and the undisturbed reference, trained
   once with ``--cluster local`` into ``<out>/reference`` (kept: a later soak with the same grid reuses
   it). The three expand to the same run ids (checked). With ``--runs-per-task K`` the grid sets
   ``[slurm].runs_per_task = K``: each array task of both sweeps trains K runs at once, one worker
   process each (a task fault then fires in every run of its task).
2. Submits both Slurm sweeps at once (round 1), the jobs inheriting ``CNNSTRESS_FAULT=slow:epoch:S``
   so that epochs last long enough for faults to land mid-training (results unchanged).
3. Injects K faults drawn from ``--seed`` (``draw_schedule``): each fires when that fraction of the
   round-1 tasks has ended, at a target picked among the eligible ones at that moment:
   SIGKILL of a worker process, ``scontrol requeue`` of a running task, ``scancel`` of a task, SIGSTOP
   then SIGCONT (seconds later), a restart of slurmctld or of slurmd (the recorded daemon is stopped
   the way ``dev-cluster.sh down`` stops it and started again by ``dev-cluster.sh up``), the gather job
   cancelled, a truncated ``checkpoint.pt`` of an unfinished run, a truncated ``results.h5`` of a
   finished one. ENOSPC, out-of-memory and some SIGKILLs (mid-way through writing checkpoint.pt or
   results.h5) go into chosen array tasks through ``CNNSTRESS_FAULT``: the grid's ``[slurm].setup``
   line (run by every task of both backends) appends the contents of ``<out>/faults/<backend>/task-<id>``
   to the variable and renames the file, so each such fault fires once, in round 1.
4. Relaunches each sweep with ``--rerun-failed`` once all its jobs have ended, until every run is
   done or R rounds have passed.
5. Verifies and prints: faults by kind; runs done; runs whose results.h5 arrays are bitwise equal to
   the reference (every dataset but ``history/epoch_seconds``); runs trained twice at the same time
   (two live processes with the run's log.txt open, which the worker opens only inside its flock
   claim, sampled from /proc every 0.4 s; and log.txt attempts whose epoch lines interleave); temp
   files left; DONE.json without a matching results.h5; rounds needed; the report's run table
   (summary.json and runs.csv) against the folders. The last line is one sentence with the numbers.

Exit status 0 when every run is done, bitwise equal, trained once at a time, no temp file or stale
DONE.json is left and the reports match; 1 otherwise; 2 when the soak itself could not run.
Everything (plan, events, table) is also written to ``<out>/chaos.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from _common import REPO, console, load_text, table

sys.path.insert(0, str(REPO / "tests"))  # tests/grids.py: the grid texts tests and benchmarks share
from grids import dev_slurm_text, tiny_grid_text  # noqa: E402

DEV_CLUSTER = REPO / "slurm" / "dev-cluster.sh"
DEV_MARKER = "# written by cnnstress slurm/dev-cluster.sh"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
PID_RECORDS = Path("/var/lib/slurm-dev/pids")  # dev-cluster.sh's record of the daemons `up` started
BACKENDS = ("slurm", "sbatch")
IGNORED_ARRAYS = frozenset({"history/epoch_seconds"})  # wall-clock time per epoch: differs by nature
GRID_MARKER = "# written by bench/chaos.py"
TEMP_RE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")  # atomic.py's temp names (a test pins the two together)


@dataclass(frozen=True)
class Kind:
    label: str
    weight: int  # how often the draw picks it beyond the first one of each kind
    effect: str = ""  # a log.txt line that shows the fault reached the run ("" when none does)


KINDS: dict[str, Kind] = {
    "sigkill": Kind("SIGKILL of a worker process", 3, "removed leftover temp file"),
    "requeue": Kind("scontrol requeue of a running task", 3),
    "scancel": Kind("scancel of a task", 2),
    "sigstop": Kind("SIGSTOP, SIGCONT seconds later", 3),
    "slurmctld": Kind("slurmctld restarted", 1),
    "slurmd": Kind("slurmd restarted", 1),
    "gather": Kind("gather job cancelled", 1),
    "enospc": Kind("ENOSPC in a run (CNNSTRESS_FAULT)", 2, "No space left on device"),
    "oom": Kind("out of memory in a run (CNNSTRESS_FAULT)", 2, "MemoryError"),
    "trunc_ckpt": Kind("checkpoint.pt truncated", 2, "is unusable"),
    "trunc_results": Kind("results.h5 truncated after DONE.json", 2, "DONE.json does not match results.h5"),
}


class ChaosError(RuntimeError):
    """The soak itself cannot go on (not a finding about cnnstress)."""


# ------------------------------------------------------------------------------------------------
# the grid and the fault hook
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    runs: int = 40  # per sweep (2 variants x runs/2 seeds)
    faults: int = 30
    rounds: int = 4  # round 1 plus at most rounds-1 relaunches with --rerun-failed
    seed: int = 15
    epochs: int = 2
    slow_s: float = 1.0  # CNNSTRESS_FAULT=slow:epoch:<s> in round 1
    out: Path = REPO / "scratch" / "chaos"
    round_timeout_s: float = 900.0
    backends: tuple[str, ...] = BACKENDS
    runs_per_task: int = 1  # [slurm].runs_per_task: runs trained at once in one array task

    @property
    def tasks(self) -> int:
        """Array tasks of a whole sweep's launch (task faults go to these)."""
        return -(-self.runs // self.runs_per_task)

    @property
    def seeds(self) -> list[int]:
        return list(range(1, self.runs // 2 + 1))


QUICK = dict(runs=4, faults=11, rounds=4, epochs=2, slow_s=1.0, round_timeout_s=420.0)


def fault_hook(fault_dir: Path) -> str:
    """The [slurm].setup line that hands an array task its injected fault, once: when
    ``<fault_dir>/task-<SLURM_ARRAY_TASK_ID>`` exists it is renamed to ``.taken-<job id>`` (atomic: one
    task wins) and its contents are appended to CNNSTRESS_FAULT. The gather job (no task id), later
    tasks with the same id and requeued tasks find no file."""
    d = shlex.quote(str(fault_dir))
    taken = '"$f.taken-${SLURM_JOB_ID:-0}"'
    return (f'f={d}/task-"${{SLURM_ARRAY_TASK_ID:-none}}"; '
            f'if [ -f "$f" ] && mv -f -- "$f" {taken} 2>/dev/null; then '
            f'export CNNSTRESS_FAULT="${{CNNSTRESS_FAULT:+$CNNSTRESS_FAULT,}}$(cat -- {taken})"; fi')


def grid_text(name: str, cfg: Config, setup: Sequence[str] = ()) -> str:
    """The soak's grid: tiny shapes runs, 2 variants x cfg.runs/2 seeds, no stress sections, on the
    dev cluster (the tests' grid writer, tests/grids.py, with the soak's sizes)."""
    slurm = dev_slurm_text(time_min=20, setup=setup)
    if cfg.runs_per_task > 1:  # a task's memory is its runs': 1 GB each, as unpacked
        slurm = slurm.replace("\nmem_gb = 1\n", f"\nmem_gb = {cfg.runs_per_task}\n") + f"runs_per_task = {cfg.runs_per_task}\n"
    return tiny_grid_text(name, cfg.epochs, slurm, seeds=cfg.seeds,
                          n_train=200, n_test=100, width=8, batch_size=50, lean=True,
                          header=f"{GRID_MARKER}\ndescription = \"bench/chaos.py: tiny runs for the chaos soak\"")


def sweep_name(backend: str) -> str:
    return f"chaos-{backend}"


# ------------------------------------------------------------------------------------------------
# the schedule (pure: the same seed gives the same faults)
# ------------------------------------------------------------------------------------------------


@dataclass
class Fault:
    index: int
    kind: str
    at: float  # fires when this fraction of round 1's tasks has ended (0 for the task faults)
    pick: float  # which of the eligible targets, [0, 1)
    param: str = ""  # sigstop: seconds; truncations: fraction kept; task faults: the CNNSTRESS_FAULT item
    backend: str = ""  # task faults: the sweep whose array task gets it
    task: int = -1  # task faults: the array task id in round 1
    status: str = "planned"  # planned | injected | no target | not reached | error
    target: str = ""
    t: float = -1.0  # seconds after round 1 was submitted
    detail: str = ""
    seen: bool | None = None  # the run's log.txt shows the fault's effect (None: nothing to look for)

    @property
    def task_fault(self) -> bool:
        """Fires inside a chosen array task (CNNSTRESS_FAULT through the setup line)."""
        return self.task >= 0

    @property
    def label(self) -> str:
        return KINDS[self.kind].label


def fault_caps(n_faults: int, backends: Sequence[str]) -> dict[str, int]:
    """At most this many of a kind: a daemon restart costs seconds of a dead controller, and each
    launch has one gather job."""
    return {"slurmctld": max(1, n_faults // 12), "slurmd": max(1, n_faults // 12), "gather": len(backends)}


def draw_schedule(seed: int, n_faults: int, tasks: int, epochs: int,
                  backends: Sequence[str] = BACKENDS) -> list[Fault]:
    """K faults from a seed. With K at least the number of kinds every kind comes once, the rest
    by weight; fewer: distinct kinds, by weight. Task faults (ENOSPC, out of memory, a SIGKILL in
    the middle of a write) go to distinct array tasks, at most half the tasks of a sweep; a task
    fault that finds no free task becomes an external SIGKILL (or is dropped)."""
    if n_faults < 0 or tasks < 2:
        raise ValueError(f"need faults >= 0 and tasks >= 2, got {n_faults}, {tasks}")
    rng = random.Random(seed)
    names = list(KINDS)
    weights = [KINDS[k].weight for k in names]
    caps = fault_caps(n_faults, backends)
    if n_faults >= len(names):
        kinds = list(names)
    else:
        kinds, pool, w = [], list(names), list(weights)
        while len(kinds) < n_faults:
            k = rng.choices(pool, w)[0]
            i = pool.index(k)
            pool.pop(i), w.pop(i)
            kinds.append(k)
    while len(kinds) < n_faults:
        k = rng.choices(names, weights)[0]
        if kinds.count(k) < caps.get(k, n_faults):
            kinds.append(k)
    rng.shuffle(kinds)
    free = {b: list(range(tasks)) for b in backends}
    budget = {b: max(1, tasks // 2) for b in backends}
    faults: list[Fault] = []
    for kind in kinds:
        f = Fault(len(faults), kind, at=round(rng.uniform(0.03, 0.85), 3), pick=rng.random())
        if kind == "sigstop":
            f.param = f"{rng.uniform(2.0, 15.0):.1f}"
        elif kind in ("trunc_ckpt", "trunc_results"):
            f.param = f"{rng.uniform(0.1, 0.9):.2f}"
        elif kind == "enospc":
            f.param = "enospc:" + rng.choice(("checkpoint.pt:1", "results.h5:1"))
        elif kind == "oom":
            f.param = f"oom:epoch:{rng.randint(1, epochs)}"
        elif kind == "sigkill" and rng.random() < 1 / 3:
            f.param = "kill:" + rng.choice(("checkpoint.pt:1", "results.h5:1"))
        if f.param and ":" in f.param:  # a task fault
            open_backends = [b for b in backends if budget[b] > 0 and free[b]]
            if not open_backends:
                if kind == "sigkill":
                    f.param = ""
                    faults.append(f)
                continue
            f.backend = rng.choice(open_backends)
            f.task = free[f.backend].pop(rng.randrange(len(free[f.backend])))
            budget[f.backend] -= 1
            f.at = 0.0
        faults.append(f)
    faults.sort(key=lambda x: (x.at, x.index))
    for i, f in enumerate(faults):
        f.index = i
    return faults


# ------------------------------------------------------------------------------------------------
# watching: which process trains which run (from /proc), and what log.txt says
# ------------------------------------------------------------------------------------------------


def _ppid(pid: int, proc: Path = Path("/proc")) -> int:
    try:
        return int((proc / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def log_holders(roots: Sequence[str], proc: Path = Path("/proc")) -> dict[str, set[int]]:
    """run folder -> pids of live processes with its log.txt open, for run folders under ``roots``
    (real paths). The worker opens log.txt only once it holds the run's flock claim and keeps it
    open until it lets go, so two holders mean two processes train the run at once. A child that
    inherited the descriptor from a holder (a fork) is not counted."""
    out: dict[str, set[int]] = {}
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return out
    for name in entries:
        fd_dir = proc / name / "fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(fd_dir / fd)
            except OSError:
                continue
            if target.endswith("/log.txt") and any(target.startswith(r) for r in roots):
                out.setdefault(target[: -len("/log.txt")], set()).add(int(name))
    for run, pids in out.items():
        out[run] = {p for p in pids if _ppid(p, proc) not in pids}
    return out


class Watch(threading.Thread):
    """Samples log_holders every ``every`` seconds: runs with two trainers at once, and every pid
    that trained each run."""

    def __init__(self, roots: Sequence[Path], every: float = 0.4):
        super().__init__(daemon=True, name="chaos-watch")
        self.roots = [os.path.realpath(r) + os.sep for r in roots]
        self.every = every
        self.lock = threading.Lock()
        self.current: dict[str, set[int]] = {}
        self.double: dict[str, set[int]] = {}
        self.trainers: dict[str, set[int]] = {}
        self.samples = 0
        self.max_at_once = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(self.every)

    def sample(self) -> dict[str, set[int]]:
        holders = log_holders(self.roots)
        with self.lock:
            self.current = holders
            self.samples += 1
            self.max_at_once = max(self.max_at_once, sum(len(p) for p in holders.values()))
            for run, pids in holders.items():
                self.trainers.setdefault(run, set()).update(pids)
                if len(pids) > 1:
                    self.double.setdefault(run, set()).update(pids)
        return holders

    def workers(self) -> dict[str, set[int]]:
        with self.lock:
            return {k: set(v) for k, v in self.current.items()}

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout=5)


_LINE = r"^\[[0-9:]+\] "
RUN_LINE = re.compile(_LINE + r"run \S+: ")
RESUMED_LINE = re.compile(_LINE + r"resumed from checkpoint after epoch (\d+)")
EPOCH_LINE = re.compile(_LINE + r"epoch\s+(\d+)/(\d+)\b")
DONE_LINE = re.compile(_LINE + r"done: ")


def log_attempts(text: str) -> tuple[int, list[str]]:
    """(attempts, problems) of one log.txt. An attempt starts at the worker's 'run <id>: ...' line;
    its epoch lines must count up by one from 1 (or from the epoch it resumed after) and nothing may
    follow its 'done:' line but a new attempt. Two processes training the run at once interleave
    their lines and break that; one process after another never does."""
    attempts, problems = 0, []
    expect: int | None = None
    done = False
    for n, line in enumerate(text.splitlines(), 1):
        if RUN_LINE.match(line):
            attempts += 1
            expect, done = 1, False
            continue
        m = RESUMED_LINE.match(line)
        if m:
            if expect != 1 or done:
                problems.append(f"line {n}: a resume in the middle of an attempt")
            expect = int(m.group(1)) + 1
            continue
        m = EPOCH_LINE.match(line)
        if m:
            epoch = int(m.group(1))
            if done or expect is None or epoch != expect:
                problems.append(f"line {n}: epoch {epoch} where {'nothing' if done or expect is None else expect} "
                                "was due")
            expect = epoch + 1
            continue
        if DONE_LINE.match(line):
            if done or expect is None:
                problems.append(f"line {n}: a second 'done:' in one attempt")
            done = True
    return attempts, problems


# ------------------------------------------------------------------------------------------------
# verification (files only)
# ------------------------------------------------------------------------------------------------


def compare_arrays(run_dir: Path, ref_dir: Path) -> str:
    """'' when every dataset of the two results.h5 files (but IGNORED_ARRAYS) has the same dtype,
    shape and bytes; else what differs."""
    from cnnstress import store

    try:
        with store.open_results(run_dir / store.RESULTS_NAME) as a, store.open_results(ref_dir / store.RESULTS_NAME) as b:
            ka, kb = set(a.keys()) - IGNORED_ARRAYS, set(b.keys()) - IGNORED_ARRAYS
            if ka != kb:
                return f"datasets differ: only here {sorted(ka - kb)[:3]}, only in the reference {sorted(kb - ka)[:3]}"
            for key in sorted(ka):
                x, y = a.read(key), b.read(key)
                if x.dtype != y.dtype or x.shape != y.shape or x.tobytes() != y.tobytes():
                    return f"{key} differs"
    except (store.ResultsError, OSError, KeyError) as e:
        return f"unreadable: {e}"
    return ""


def temp_files(folder: Path) -> list[Path]:
    """Temp files of the atomic writers anywhere under ``folder``."""
    found = []
    for dirpath, _, files in os.walk(folder):
        found += [Path(dirpath) / f for f in files if TEMP_RE.match(f)]
    return sorted(found)


def done_without_results(sweep_dir: Path) -> list[str]:
    """Run folders whose DONE.json does not match a valid results.h5 (sha256 checked)."""
    from cnnstress import store

    runs = sweep_dir / "runs"
    if not runs.is_dir():
        return []
    return sorted(d.name for d in runs.iterdir()
                  if (d / store.DONE_NAME).exists() and store.run_state(d, verify_hash=True).status != "done")


def disk_states(sweep_dir: Path, run_ids: Iterable[str]) -> dict[str, Any]:
    """run id -> store.RunState of its folder (hash checked)."""
    from cnnstress import store

    out = {}
    for rid in run_ids:
        d = sweep_dir / "runs" / rid
        out[rid] = store.run_state(d, verify_hash=True) if d.is_dir() else store.RunState("missing", "")
    return out


def report_matches(sweep_dir: Path, run_ids: Sequence[str]) -> tuple[bool, str]:
    """Whether report/summary.json's runs (and runs.csv's rows) name exactly these runs with the
    status and state their folders have now."""
    import csv

    from cnnstress import states

    report = sweep_dir / "report"
    try:
        summary = json.loads((report / "summary.json").read_text())
        rows = {r["run_id"]: (r.get("status"), r.get("state")) for r in summary["runs"]}
        with open(report / "runs.csv", newline="", encoding="utf-8") as fh:
            csv_rows = {r["run_id"]: r.get("status") for r in csv.DictReader(fh)}
    except (OSError, ValueError, KeyError, TypeError) as e:
        return False, f"no readable report ({type(e).__name__}: {e})"
    if set(rows) != set(run_ids) or set(csv_rows) != set(run_ids):
        return False, f"report lists {len(rows)} runs (runs.csv {len(csv_rows)}), the grid has {len(run_ids)}"
    wrong = []
    for rid, st in disk_states(sweep_dir, run_ids).items():
        want = states.summary_status(st.status)
        status, state = rows[rid]
        if status != want or (state is not None and state != st.status) or csv_rows[rid] != want:
            wrong.append(f"{rid}: report {status}/{state}, runs.csv {csv_rows[rid]}, folder {st.status}")
    if wrong:
        return False, f"{len(wrong)} rows differ from the folders, e.g. {wrong[0]}"
    return True, f"{len(rows)} rows match"


@dataclass
class SweepResult:
    backend: str
    sweep_dir: str
    runs: int
    done: int = 0
    equal: int = 0
    different: dict[str, str] = field(default_factory=dict)
    lost: dict[str, str] = field(default_factory=dict)  # not done: the state and reason
    double_live: list[str] = field(default_factory=list)
    interleaved: dict[str, list[str]] = field(default_factory=dict)
    temp_files: list[str] = field(default_factory=list)
    done_without_results: list[str] = field(default_factory=list)
    rounds: int = 0  # rounds until every run was done (0: never)
    report_ok: bool = False
    report_detail: str = ""
    report_rebuilt: bool = False
    attempts: int = 0
    retrained: int = 0  # runs with more than one attempt (one after another)

    @property
    def ok(self) -> bool:
        return (self.done == self.runs and self.equal == self.runs and not self.double_live and not self.interleaved
                and not self.temp_files and not self.done_without_results and self.report_ok)


def verify_sweep(backend: str, sweep_dir: Path, ref_runs: Path, run_ids: Sequence[str],
                 double_live: Iterable[str] = (), rounds: int = 0) -> SweepResult:
    """Everything the table says about one sweep, from its folders (and the watch's findings)."""
    res = SweepResult(backend, str(sweep_dir), len(run_ids), rounds=rounds)
    for rid, st in disk_states(sweep_dir, run_ids).items():
        if st.status != "done":
            res.lost[rid] = f"{st.status}: {st.reason}"[:300]
            continue
        res.done += 1
        diff = compare_arrays(sweep_dir / "runs" / rid, ref_runs / rid)
        if diff:
            res.different[rid] = diff
        else:
            res.equal += 1
    for rid in run_ids:
        log = sweep_dir / "runs" / rid / "log.txt"
        text = log.read_text(errors="replace") if log.exists() else ""
        n, problems = log_attempts(text)
        res.attempts += n
        res.retrained += n > 1
        if problems:
            res.interleaved[rid] = problems[:5]
    real = os.path.realpath(sweep_dir)
    res.double_live = sorted(os.path.basename(r) for r in double_live if r.startswith(real + os.sep))
    res.temp_files = [str(p.relative_to(sweep_dir)) for p in temp_files(sweep_dir)]
    res.done_without_results = done_without_results(sweep_dir)
    res.report_ok, res.report_detail = report_matches(sweep_dir, run_ids)
    return res


def fault_seen(f: Fault, log_text: str) -> bool | None:
    """Whether the run's log shows the fault's effect (None: the kind leaves no such line)."""
    effect = KINDS[f.kind].effect
    if not effect or not f.target or (f.kind == "sigkill" and not f.task_fault):
        return None
    return effect in log_text


# ------------------------------------------------------------------------------------------------
# the report: tables and the sentence
# ------------------------------------------------------------------------------------------------


def fault_counts(faults: Sequence[Fault]) -> dict[str, dict[str, int]]:
    out = {k: {"planned": 0, "injected": 0, "missed": 0, "seen": 0, "checkable": 0} for k in KINDS}
    for f in faults:
        c = out[f.kind]
        c["planned"] += 1
        c["injected"] += f.status == "injected"
        c["missed"] += f.status != "injected"
        if f.status == "injected" and f.seen is not None:
            c["checkable"] += 1
            c["seen"] += bool(f.seen)
    return out


def sentence(faults: Sequence[Fault], results: Sequence[SweepResult], seconds: float) -> str:
    """The last line: one sentence with every number of the table."""
    injected = sum(f.status == "injected" for f in faults)
    kinds = len({f.kind for f in faults if f.status == "injected"})
    runs = sum(r.runs for r in results)
    done = sum(r.done for r in results)
    equal = sum(r.equal for r in results)
    double = sum(len(set(r.double_live) | set(r.interleaved)) for r in results)
    temps = sum(len(r.temp_files) for r in results)
    stale = sum(len(r.done_without_results) for r in results)
    rounds = max((r.rounds for r in results), default=0)
    after = f"after {rounds} rounds" if results and all(r.rounds for r in results) else "when the rounds ran out"
    reports = sum(r.report_ok for r in results)
    verdict = "nothing lost, duplicated or different" if all(r.ok for r in results) else "FAILED"
    return (f"chaos soak: {injected} faults of {kinds} kinds injected into {runs} runs on "
            f"{len(results)} backends ({', '.join(r.backend for r in results)}); {done}/{runs} done "
            f"{after}, {equal}/{runs} bitwise equal to "
            f"undisturbed runs, {double} trained twice at once, {temps} temp files left, {stale} DONE.json "
            f"without a matching results.h5, {reports}/{len(results)} reports matching their folders, "
            f"in {seconds / 60:.1f} min: {verdict}.")


def print_tables(faults: Sequence[Fault], results: Sequence[SweepResult], extra: dict[str, str]) -> None:
    t = table("faults injected", ["kind", "planned", "injected", "no target / not reached", "effect in log.txt"])
    for kind, c in fault_counts(faults).items():
        if c["planned"]:
            seen = f"{c['seen']}/{c['checkable']}" if c["checkable"] else "-"
            t.add_row(KINDS[kind].label, str(c["planned"]), str(c["injected"]), str(c["missed"]), seen)
    console.print(t)
    cols = ["check", *[r.backend for r in results], "must be"]
    v = table("what survived", cols)

    def row(label: str, values: list[str], must: str) -> None:
        v.add_row(label, *values, must)

    row("runs done", [f"{r.done}/{r.runs}" for r in results], "all")
    row("bitwise equal to the undisturbed run", [f"{r.equal}/{r.runs}" for r in results], "all")
    row("trained twice at once: live claim scan", [str(len(r.double_live)) for r in results], "0")
    row("trained twice at once: log.txt interleaved", [str(len(r.interleaved)) for r in results], "0")
    row("temp files left", [str(len(r.temp_files)) for r in results], "0")
    row("DONE.json without a matching results.h5", [str(len(r.done_without_results)) for r in results], "0")
    row("rounds needed", [str(r.rounds or "-") for r in results], f"<= {extra.get('rounds', '?')}")
    row("report run table matches the folders",
        [("yes" if r.report_ok else "NO") + (" (rebuilt)" if r.report_rebuilt else "") for r in results], "yes")
    row("worker attempts (runs trained more than once, one after another)",
        [f"{r.attempts} ({r.retrained})" for r in results], "-")
    console.print(v)
    for key, value in extra.items():
        if key != "rounds":
            console.print(f"{key}: {value}", markup=False, soft_wrap=True)
    for r in results:
        for what, items in (("lost", r.lost), ("different", r.different), ("interleaved", r.interleaved)):
            for rid, why in list(items.items())[:10]:
                console.print(f"{r.backend} {what} {rid}: {why}", markup=False, soft_wrap=True)
        for name in (*r.double_live, *r.temp_files, *r.done_without_results):
            console.print(f"{r.backend}: {name}", markup=False, soft_wrap=True)
        if not r.report_ok:
            console.print(f"{r.backend} report: {r.report_detail}", markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------
# the cluster: launches, job states, faults
# ------------------------------------------------------------------------------------------------


def dev_cluster_problem() -> str:
    """'' when this machine runs the dev cluster and its controller answers; else why not."""
    from cnnstress.cluster import slurmctl

    try:
        slurmctl.check_controller()
    except slurmctl.SlurmError as e:
        return f"no live Slurm controller ({e})"
    try:
        conf = SLURM_CONF.read_text()
    except OSError as e:
        return f"cannot read {SLURM_CONF}: {e}"
    if DEV_MARKER not in conf.splitlines():
        return (f"{SLURM_CONF} was not written by slurm/dev-cluster.sh: this soak restarts Slurm daemons and "
                "cancels jobs, so it runs only on the dev cluster")
    if os.geteuid() != 0:
        return "must run as root (it signals job processes and restarts the dev cluster's daemons)"
    return ""


def _proc_alive(pid: int, name: str) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X") and comm == name


def restart_daemon(name: str) -> str:
    """Stop the daemon dev-cluster.sh recorded (TERM, KILL after 20 s, as its `down` does), forget
    its record, and let `dev-cluster.sh up` start it again (it starts only what is missing)."""
    record = PID_RECORDS / f"{name}.pid"
    try:
        pid = int(record.read_text().strip())
    except (OSError, ValueError) as e:
        raise ChaosError(f"no pid record for {name} ({e}); is the cluster from dev-cluster.sh up?") from None
    if not _proc_alive(pid, name):
        raise ChaosError(f"{name} (pid {pid}) is not running")
    t0 = time.time()
    os.kill(pid, signal.SIGTERM)
    while _proc_alive(pid, name) and time.time() - t0 < 20:
        time.sleep(0.1)
    if _proc_alive(pid, name):
        os.kill(pid, signal.SIGKILL)
        while _proc_alive(pid, name) and time.time() - t0 < 30:
            time.sleep(0.1)
    record.unlink(missing_ok=True)  # dev-cluster.sh's stop_daemon does the same; `up` must not take it for a crash
    down = time.time() - t0
    res = subprocess.run(["bash", str(DEV_CLUSTER), "up"], capture_output=True, text=True, timeout=240)
    if res.returncode != 0:
        raise ChaosError(f"dev-cluster.sh up failed after stopping {name}: {' '.join((res.stdout + res.stderr).split())[-600:]}")
    return f"pid {pid} stopped in {down:.1f}s; `dev-cluster.sh up` restarted it in {time.time() - t0 - down:.1f}s"


def truncate(path: Path, keep: float) -> str:
    size = path.stat().st_size
    new = int(size * keep)
    os.truncate(path, new)
    return f"{path.name} {size} -> {new} bytes"


def pick(items: Sequence[Any], p: float) -> Any:
    return sorted(items)[min(int(p * len(items)), len(items) - 1)]


class Soak:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.out = Path(os.path.abspath(cfg.out))
        self.data = self.out / "data"
        self.ref_out = self.out / "reference"
        self.log_dir = self.out / "logs"
        self.sweeps = {b: self.out / sweep_name(b) for b in cfg.backends}
        self.grids: dict[str, Path] = {}
        self.run_ids: list[str] = []
        self.faults: list[Fault] = []
        self.launches: dict[str, list[Any]] = {b: [] for b in cfg.backends}  # slurmctl.Launch per round
        self.rounds_done: dict[str, int] = {b: 0 for b in cfg.backends}
        self.t0 = 0.0
        self.stopped: dict[int, float] = {}  # pid -> when to SIGCONT it
        self.watch: Watch | None = None
        self.reference: subprocess.Popen | None = None
        self.max_load = 0.0
        self.max_running = 0
        self.daemon_downtime: list[str] = []

    # -- output -----------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() - self.t0 if self.t0 else 0.0

    def say(self, msg: str) -> None:
        console.print(f"[{self.now():6.1f}s] {msg}", markup=False, highlight=False, soft_wrap=True)

    # -- setup ------------------------------------------------------------------------------

    def prepare(self) -> None:
        from cnnstress import data
        from cnnstress.grid import load_grid

        cfg = self.cfg
        for d in (self.out, self.log_dir, self.data):
            d.mkdir(parents=True, exist_ok=True)
        for sweep in self.sweeps.values():
            if sweep.exists():  # an earlier soak's sweep (its grid says so) starts afresh; anything else is not ours
                try:
                    ours = (sweep / "grid.toml").read_text().startswith(GRID_MARKER)
                except OSError:
                    ours = False
                if not ours:
                    raise ChaosError(f"{sweep} exists and is not a sweep of bench/chaos.py: pick another --out")
                shutil.rmtree(sweep)
        expanded = {}
        for b in cfg.backends:
            fault_dir = self.out / "faults" / b
            fault_dir.mkdir(parents=True, exist_ok=True)
            for old in fault_dir.iterdir():
                old.unlink()
            path = self.out / f"{sweep_name(b)}.toml"
            path.write_text(grid_text(sweep_name(b), cfg, [fault_hook(fault_dir)]))
            self.grids[b] = path
            expanded[b] = [r.run_id for r in load_grid(path, out_root=self.out, data_root=self.data).runs]
        ref = self.out / "chaos-reference.toml"
        ref.write_text(grid_text("chaos-reference", cfg))
        self.grids["reference"] = ref
        grid = load_grid(ref, out_root=self.ref_out, data_root=self.data)
        self.run_ids = [r.run_id for r in grid.runs]
        for b, ids in expanded.items():
            if ids != self.run_ids:
                raise ChaosError(f"the {b} sweep expands to other run ids than the reference")
        spec = grid.runs[0]
        data.load_test("shapes", self.data, spec.dataset.params)  # the shapes cache, made once, not by 3 jobs at once
        self.faults = draw_schedule(cfg.seed, cfg.faults, max(2, cfg.tasks), cfg.epochs, cfg.backends)
        for f in self.faults:
            if f.task_fault:
                (self.out / "faults" / f.backend / f"task-{f.task}").write_text(f.param + "\n")

    def env(self, slow: bool) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CNNSTRESS_FAULT"}
        env["OMP_NUM_THREADS"] = "1"  # cpus_per_task = 1, and the reference must compute alike
        env["PYTHONUNBUFFERED"] = "1"
        if slow:
            env["CNNSTRESS_FAULT"] = f"slow:epoch:{self.cfg.slow_s:g}"
        return env

    def launch_cmd(self, grid: Path, cluster: str, out: Path, *extra: str) -> list[str]:
        return [sys.executable, str(REPO / "launch.py"), "--grid", str(grid), "--cluster", cluster, "--out", str(out),
                "--data-root", str(self.data), *extra]

    def start_reference(self) -> None:
        cmd = self.launch_cmd(self.grids["reference"], "local", self.ref_out, "--no-gather", "--max-parallel", "1")
        log = open(self.log_dir / "reference.txt", "w")
        self.say(f"reference (undisturbed, --cluster local) into {self.ref_out}")
        self.reference = subprocess.Popen(cmd, cwd=REPO, env=self.env(slow=False), stdout=log, stderr=subprocess.STDOUT)

    def launch(self, backend: str, round_no: int) -> Any | None:
        """Submit one round of a sweep; the new Launch, or None when there was nothing to submit."""
        from cnnstress.cluster import slurmctl

        sweep = self.sweeps[backend]
        before = len(slurmctl.read_launches(sweep))
        extra = ("--rerun-failed",) if round_no > 1 else ()
        cmd = self.launch_cmd(self.grids[backend], backend, self.out, *extra)
        res = subprocess.run(cmd, cwd=REPO, env=self.env(slow=round_no == 1), capture_output=True, text=True,
                             timeout=300)
        (self.log_dir / f"launch-{backend}-round{round_no}.txt").write_text(" ".join(map(shlex.quote, cmd)) + "\n"
                                                                             + res.stdout + res.stderr)
        if res.returncode != 0:
            raise ChaosError(f"launch of {backend} round {round_no} exited {res.returncode}: "
                             f"{' '.join((res.stdout + res.stderr).split())[-600:]}")
        launches = slurmctl.read_launches(sweep)
        if len(launches) == before:
            self.say(f"{backend} round {round_no}: nothing to submit")
            return None
        launch = launches[-1]
        self.launches[backend].append(launch)
        self.say(f"{backend} round {round_no}: {len(launch.runs)} runs as array {', '.join(launch.arrays)}, "
                 f"gather job {launch.gather}")
        return launch

    # -- job states -------------------------------------------------------------------------

    def jobs(self, launches: Sequence[Any]) -> tuple[dict[str, Any], bool]:
        from cnnstress.cluster import slurmctl

        ids = [j for launch in launches for j in launch.job_ids()]
        q = slurmctl.query_jobs(ids, use_sacct=False)
        return q.jobs, q.ok

    def task_map(self) -> dict[str, tuple[str, str]]:
        """array task id -> (backend, run id), over every launch."""
        return {job: (b, rid) for b, ls in self.launches.items() for launch in ls for rid, job in launch.runs.items()}

    # -- faults -----------------------------------------------------------------------------

    def inject(self, f: Fault, jobs: dict[str, Any], final: bool) -> bool:
        """Try to inject a due fault; False when no target exists right now."""
        from cnnstress import store

        tasks = self.task_map()
        workers = {run: pids for run, pids in (self.watch.workers() if self.watch else {}).items()}
        mine = {os.path.realpath(s) + os.sep: b for b, s in self.sweeps.items()}

        def backend_of(run_dir: str) -> str:
            return next((b for root, b in mine.items() if run_dir.startswith(root)), "?")

        k = f.kind
        if k in ("sigkill", "sigstop"):
            live = [(run, min(pids)) for run, pids in workers.items() if pids]
            if not live:
                return False
            run, pid = pick(live, f.pick)
            if k == "sigkill":
                os.kill(pid, signal.SIGKILL)
                f.detail = f"SIGKILL pid {pid}"
            else:
                os.kill(pid, signal.SIGSTOP)
                self.stopped[pid] = time.time() + float(f.param)
                f.detail = f"SIGSTOP pid {pid}, SIGCONT in {float(f.param):.1f}s"
            f.backend, f.target = backend_of(run), os.path.basename(run)
        elif k in ("requeue", "scancel"):
            want = ("RUNNING",) if k == "requeue" else ("RUNNING", "PENDING")
            cands = [j for j, info in jobs.items() if j in tasks and info.state in want]
            if not cands:
                return False
            job = pick(cands, f.pick)
            cmd = ["scontrol", "requeue", job] if k == "requeue" else ["scancel", job]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
            f.backend, f.target = tasks[job]
            f.detail = f"{' '.join(cmd)} ({jobs[job].state}): rc {res.returncode} {res.stderr.strip()}"[:300]
        elif k == "gather":
            gathers = {launch.gather: b for b, ls in self.launches.items() for launch in ls if launch.gather}
            cands = [j for j in gathers if j in jobs and jobs[j].active]
            if not cands:
                return False
            job = pick(cands, f.pick)
            res = subprocess.run(["scancel", job], capture_output=True, text=True, timeout=60)
            f.backend, f.target = gathers[job], f"gather job {job}"
            f.detail = f"scancel {job} ({jobs[job].state}): rc {res.returncode} {res.stderr.strip()}"[:300]
        elif k in ("slurmctld", "slurmd"):
            if final:
                return False  # after the last task a restart tests nothing the earlier ones did not
            self.say(f"fault {f.index + 1}: restarting {k}")
            f.detail = restart_daemon(k)
            f.target = k
            self.daemon_downtime.append(f"{k}: {f.detail}")
        elif k == "trunc_ckpt":
            cands = []
            for b, sweep in self.sweeps.items():
                for d in (sweep / "runs").glob("*"):
                    if (d / store.CHECKPOINT_NAME).exists() and not (d / store.DONE_NAME).exists():
                        cands.append((str(d) in workers or os.path.realpath(d) in workers, str(d), b))
            idle = [c for c in cands if not c[0]]  # a resume must read it; a live worker would just replace it
            cands = idle or cands
            if not cands:
                return False
            _, d, b = pick(cands, f.pick)
            try:
                f.detail = truncate(Path(d) / store.CHECKPOINT_NAME, float(f.param))
            except OSError:
                return False
            f.backend, f.target = b, os.path.basename(d)
        elif k == "trunc_results":
            cands = [(str(d), b) for b, sweep in self.sweeps.items() for d in (sweep / "runs").glob("*")
                     if (d / store.DONE_NAME).exists() and (d / store.RESULTS_NAME).exists()]
            if not cands:
                return False
            d, b = pick(cands, f.pick)
            f.detail = truncate(Path(d) / store.RESULTS_NAME, float(f.param))
            f.backend, f.target = b, os.path.basename(d)
        else:
            raise ValueError(k)
        f.status, f.t = "injected", self.now()
        self.say(f"fault {f.index + 1}/{len(self.faults)} {f.label}: {f.backend} {f.target}: {f.detail}")
        return True

    def check_task_faults(self) -> None:
        """Task faults whose file a task has taken (renamed): injected, into that task's run."""
        tasks = self.task_map()
        for f in self.faults:
            if not f.task_fault or f.status != "planned":
                continue
            taken = sorted((self.out / "faults" / f.backend).glob(f"task-{f.task}.taken-*"))
            if taken:
                job_id = taken[0].name.rsplit("-", 1)[1]
                launch = self.launches[f.backend][0] if self.launches[f.backend] else None
                array_job = f"{launch.arrays[0]}_{f.task}" if launch and launch.arrays else job_id
                f.target = tasks.get(array_job, (f.backend, f"task {f.task}"))[1]
                f.status, f.t = "injected", self.now()
                f.detail = f"CNNSTRESS_FAULT+={f.param} in task {array_job} (job {job_id})"
                self.say(f"fault {f.index + 1}/{len(self.faults)} {f.label}: {f.backend} {f.target}: {f.detail}")

    def continue_stopped(self, all_now: bool = False) -> None:
        for pid, when in list(self.stopped.items()):
            if all_now or time.time() >= when:
                try:
                    os.kill(pid, signal.SIGCONT)
                    self.say(f"SIGCONT pid {pid}")
                except ProcessLookupError:
                    self.say(f"pid {pid} ended while stopped")
                del self.stopped[pid]

    # -- rounds -----------------------------------------------------------------------------

    def wait_round(self, launches: Sequence[Any], round_no: int, faults: Sequence[Fault]) -> None:
        """Until every job of these launches has ended: fire the due faults (round 1), continue
        stopped processes, keep the numbers of the load."""
        total_tasks = sum(len(launch.runs) for launch in launches)
        start = time.time()
        last_note = 0.0
        while True:
            self.continue_stopped()
            jobs, ok = self.jobs(launches)
            running = sum(1 for j in jobs.values() if j.state == "RUNNING")
            self.max_running = max(self.max_running, running)
            self.max_load = max(self.max_load, os.getloadavg()[0])
            ended = sum(1 for launch in launches for job in launch.runs.values()
                        if job in jobs and not jobs[job].active)
            finished = ok and not any(j.active for j in jobs.values()) and not self.stopped
            progress = ended / max(1, total_tasks)
            if round_no == 1:
                self.check_task_faults()
                for f in faults:
                    if f.status == "planned" and not f.task_fault and (progress >= f.at or finished):
                        try:
                            if not self.inject(f, jobs, final=finished) and finished:
                                f.status, f.detail = "no target", "nothing to hit when it was due"
                                self.say(f"fault {f.index + 1}/{len(self.faults)} {f.label}: no target")
                        except ChaosError:
                            raise
                        except Exception as e:  # noqa: BLE001 - a fault that could not be made is reported
                            f.status, f.detail = "error", f"{type(e).__name__}: {e}"[:300]
                            self.say(f"fault {f.index + 1} {f.label} failed: {f.detail}")
                if finished and any(f.status == "planned" and not f.task_fault for f in faults):
                    continue  # a fault just fired (e.g. a truncated results.h5): look again
            if finished:
                self.check_task_faults()
                return
            if time.time() - last_note > 30:
                last_note = time.time()
                self.say(f"round {round_no}: {ended}/{total_tasks} tasks ended, {running} running, {self.load()}")
            if time.time() - start > self.cfg.round_timeout_s:
                raise ChaosError(f"round {round_no} still has active jobs after {self.cfg.round_timeout_s:.0f}s: "
                                 f"{ {k: v.state for k, v in jobs.items() if v.active} }")
            time.sleep(0.5)

    def load(self) -> str:
        return load_text()

    def all_done(self, backend: str) -> bool:
        return all(st.status == "done" for st in disk_states(self.sweeps[backend], self.run_ids).values())

    def cleanup_jobs(self) -> None:
        """Cancel every job of this soak still queued or running (after an error)."""
        all_launches = [launch for ls in self.launches.values() for launch in ls]
        if not all_launches:
            return
        jobs, _ = self.jobs(all_launches)
        active = sorted({j.split("_")[0] for j, info in jobs.items() if info.active})
        if active:
            subprocess.run(["scancel", *active], capture_output=True, timeout=60)
            self.say(f"cancelled the soak's remaining jobs {', '.join(active)}")

    def run(self) -> int:
        cfg = self.cfg
        t_start = time.time()
        self.prepare()
        task_faults = [f for f in self.faults if f.task_fault]
        console.print(f"chaos soak: {len(self.run_ids)} runs x {len(cfg.backends)} backends, {len(self.faults)} faults "
                      f"(seed {cfg.seed}, {len(task_faults)} of them inside array tasks), at most {cfg.rounds} rounds; "
                      f"{self.out}; {load_text()}", markup=False, soft_wrap=True)
        self.start_reference()
        self.watch = Watch(list(self.sweeps.values()))
        self.watch.start()
        try:
            self.t0 = time.time()
            first = [launch for b in cfg.backends if (launch := self.launch(b, 1)) is not None]
            self.wait_round(first, 1, self.faults)
            for f in task_faults:  # tasks that never started (cancelled while pending) did not take theirs
                if f.status == "planned":
                    f.status, f.detail = "not reached", "its task never started in round 1"
            for path in (self.out / "faults").glob("*/task-*"):
                if ".taken-" not in path.name:
                    path.unlink()
            for b in cfg.backends:
                self.rounds_done[b] = 1 if self.all_done(b) else 0
            for round_no in range(2, cfg.rounds + 1):
                todo = [b for b in cfg.backends if not self.rounds_done[b]]
                if not todo:
                    break
                launches = [launch for b in todo if (launch := self.launch(b, round_no)) is not None]
                if launches:
                    self.wait_round(launches, round_no, [])
                for b in todo:
                    if self.all_done(b):
                        self.rounds_done[b] = round_no
                if not launches:
                    break
            self.say("waiting for the reference runs")
            rc = self.reference.wait(timeout=max(60.0, cfg.round_timeout_s))
            if rc != 0:
                raise ChaosError(f"the reference launch exited {rc}; see {self.log_dir / 'reference.txt'}")
        except BaseException:
            self.continue_stopped(all_now=True)
            self.cleanup_jobs()
            if self.reference is not None and self.reference.poll() is None:
                self.reference.kill()
            raise
        finally:
            self.continue_stopped(all_now=True)
            self.watch.stop()
        return self.verify(time.time() - t_start)

    def verify(self, seconds: float) -> int:
        double = set(self.watch.double) if self.watch else set()
        results = []
        ref_runs = self.ref_out / "chaos-reference" / "runs"
        for b in self.cfg.backends:
            sweep = self.sweeps[b]
            res = verify_sweep(b, sweep, ref_runs, self.run_ids, double, self.rounds_done[b])
            if not res.report_ok and res.done == res.runs:
                # e.g. its gather job was cancelled and nothing was left to submit with it: a person
                # would run --gather, and so does the soak (said in the table)
                cmd = self.launch_cmd(self.grids[b], "local", self.out, "--gather")
                out = subprocess.run(cmd, cwd=REPO, env=self.env(False), capture_output=True, text=True, timeout=600)
                (self.log_dir / f"gather-{b}.txt").write_text(out.stdout + out.stderr)
                self.say(f"{b}: report did not match ({res.report_detail}); rebuilt with --gather")
                res = verify_sweep(b, sweep, ref_runs, self.run_ids, double, self.rounds_done[b])
                res.report_rebuilt = True
            results.append(res)
        for f in self.faults:
            if f.status == "injected" and f.target and f.backend in self.sweeps:
                log = self.sweeps[f.backend] / "runs" / f.target / "log.txt"
                f.seen = fault_seen(f, log.read_text(errors="replace") if log.exists() else "")
        extra = {
            "rounds": str(self.cfg.rounds),
            "load": f"{self.watch.samples if self.watch else 0} samples of /proc; at most {self.max_running} tasks "
                    f"running and {self.watch.max_at_once if self.watch else 0} workers training at once; "
                    f"highest 1-min load {self.max_load:.2f}; now {load_text()}",
            "daemon restarts": "; ".join(self.daemon_downtime) or "none",
        }
        print_tables(self.faults, results, extra)
        line = sentence(self.faults, results, seconds)
        record = {"config": {k: str(v) for k, v in asdict(self.cfg).items()}, "faults": [asdict(f) for f in self.faults],
                  "results": [asdict(r) for r in results], "extra": extra, "seconds": seconds, "sentence": line,
                  "launches": {b: [launch.to_dict() for launch in ls] for b, ls in self.launches.items()}}
        (self.out / "chaos.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        console.print(f"written: {self.out / 'chaos.json'}", markup=False, soft_wrap=True)
        print(line, flush=True)
        return 0 if all(r.ok for r in results) else 1


def config_from_args(argv: Sequence[str] | None = None) -> Config:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help=f"a handful of runs and faults (a few minutes): {QUICK}")
    ap.add_argument("--runs", type=int, default=None, help="runs per sweep (even; default 40, --quick 4)")
    ap.add_argument("--faults", type=int, default=None, help="faults in all (default 30, --quick 11: one of each kind)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds at most, the first included (default 4)")
    ap.add_argument("--seed", type=int, default=15, help="draws the faults, their moments and targets (default 15)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2)")
    ap.add_argument("--slow", type=float, default=None, help="seconds of CNNSTRESS_FAULT=slow:epoch per epoch in round 1")
    ap.add_argument("--backends", default=",".join(BACKENDS), help="slurm,sbatch (default) or one of them")
    ap.add_argument("--out", type=Path, default=None,
                    help="output root (default scratch/chaos, --quick scratch/chaos-quick); its sweeps must not exist yet")
    ap.add_argument("--round-timeout", type=float, default=None, help="seconds a round may take (default 900)")
    ap.add_argument("--runs-per-task", type=int, default=1,
                    help="[slurm].runs_per_task: runs trained at once in each array task (default 1)")
    args = ap.parse_args(argv)
    base = dict(QUICK) if args.quick else {}
    chosen = {"runs": args.runs, "faults": args.faults, "rounds": args.rounds, "epochs": args.epochs,
              "slow_s": args.slow, "round_timeout_s": args.round_timeout}
    base.update({k: v for k, v in chosen.items() if v is not None})
    backends = tuple(b for b in args.backends.split(",") if b)
    if not backends or any(b not in BACKENDS for b in backends):
        ap.error(f"--backends: a comma-separated subset of {','.join(BACKENDS)}")
    out = args.out or REPO / "scratch" / ("chaos-quick" if args.quick else "chaos")
    cfg = Config(seed=args.seed, out=out, backends=backends, runs_per_task=args.runs_per_task, **base)
    if cfg.runs < 2 or cfg.runs % 2:
        ap.error("--runs must be an even number >= 2 (2 variants x runs/2 seeds)")
    if cfg.runs_per_task < 1:
        ap.error("--runs-per-task must be >= 1")
    if cfg.rounds < 1 or cfg.faults < 0 or cfg.epochs < 1:
        ap.error("--rounds and --epochs must be >= 1, --faults >= 0")
    return cfg


def main(argv: Sequence[str] | None = None) -> int:
    cfg = config_from_args(argv)
    problem = dev_cluster_problem()
    if problem:
        print(f"chaos soak not run: {problem}. Start the dev cluster with `sudo bash slurm/dev-cluster.sh up`.",
              flush=True)
        return 2 if os.environ.get("CNNSTRESS_REQUIRE_SLURM") == "1" else 0
    try:
        return Soak(cfg).run()
    except ChaosError as e:
        print(f"chaos soak could not finish: {e}", flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
