"""The backend interface: what every way of running a sweep implements (debug and local in
``local.py``, submitit job arrays in ``slurm.py``, static sbatch scripts in ``sbatch.py``).

A backend checks that it can run a grid, says what it would do (``--dry-run``), and runs or
submits the unfinished runs. ``submit`` returns one ``Handle`` for every backend (as submitit's
executors all return a ``Job``): its ``states()`` speak states.py's vocabulary and its ``wait()``
returns when nothing of it is left to follow. The launcher calls only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .. import states
from ..config import RunSpec, SlurmConfig

if TYPE_CHECKING:
    from .slurmctl import JobQuery, Launch

# Where the package lives: jobs run with this as their working directory, so that
# ``python -m cnnstress.worker`` and submitit's unpickling find the package even when it is not
# installed into the interpreter (an editable install works either way).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class BackendError(RuntimeError):
    """A backend cannot be used here or refused a submission; the message says what to do."""


def gather_arguments(grid_copy: Path, out_root: Path, data_root: Path, overrides: Sequence[str]) -> list[str]:
    """launch.py arguments that rebuild exactly this sweep (the gather job adds --gather)."""
    args = ["--grid", str(grid_copy), "--out", str(out_root), "--data-root", str(data_root)]
    for text in overrides:
        args += ["--set", text]
    return args


@dataclass(frozen=True)
class LaunchContext:
    """What a launch hands its backend besides the runs."""

    sweep: str
    sweep_dir: Path
    slurm: SlurmConfig
    console: Console
    gather_args: list[str] = field(default_factory=list)  # launch.py arguments that rebuild this sweep
    max_parallel: int | None = None  # --max-parallel
    runs_per_gpu: int = 1  # --runs-per-gpu (local): runs at once on each visible GPU, or on the CPU


@dataclass(frozen=True)
class Outcome:
    """How one run that a backend ran to its end (before ``submit`` returned) ended, in states.py's
    words: done, failed, or running (refused: another live process holds the run's claim)."""

    run_id: str
    state: str  # a key of states.STATES
    detail: str = ""
    summary: dict[str, Any] | None = None
    skipped: bool = False  # done before this launch: the worker found DONE.json and trained nothing

    def __post_init__(self) -> None:
        if self.state not in states.STATES:
            raise ValueError(f"Outcome.state {self.state!r}: allowed: {', '.join(states.ALL)}")

    @classmethod
    def of_result(cls, run_id: str, result: dict[str, Any]) -> Outcome:
        """The outcome of a worker's result line ({"status": "done" | "skipped", ...summary})."""
        return cls(run_id, "done", summary=result, skipped=result.get("status") == "skipped")

    @property
    def word(self) -> str:
        """What a line about it prints: the state, except 'skipped' (done, before this launch) and
        'busy' (running, but in someone else's process: this launch did not start it)."""
        if self.state == "done" and self.skipped:
            return "skipped"
        return "busy" if self.state == "running" else self.state


@dataclass(frozen=True)
class Handle:
    """What ``submit`` returns, for every backend: the runs it was given, the outcomes of those it
    ran to their end (local, debug: every run), and the recorded launch of those it queued (slurm,
    sbatch: job ids, logs). ``states()`` and ``wait()`` ask the backend that made it."""

    backend: Backend
    sweep_dir: Path
    run_ids: tuple[str, ...]
    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    launch: Launch | None = None  # the line this submission added to launches.jsonl

    @property
    def finished(self) -> bool:
        """Every run has an outcome: nothing is left to follow."""
        return all(r in self.outcomes for r in self.run_ids)

    def states(self) -> dict[str, str]:
        """run id -> its state (a key of states.STATES), now."""
        return self.backend.states(self)

    def wait(self, console: Console) -> None:
        """Return when no job of this submission is queued or running (at once when finished)."""
        if not self.finished:
            self.backend.wait(self, console)

    def job_of(self, run_id: str) -> str:
        """The job that trains this run ("" when it ran here)."""
        return self.launch.runs.get(run_id, "") if self.launch is not None else ""

    def task_log(self, job_id: str) -> str:
        """Where a task's output goes ("" when there is no such file)."""
        return self.backend.task_log(self.launch.folder, job_id) if self.launch is not None else ""

    def gather_log(self) -> str:
        """Where the gather job's output goes ("" when there is no gather job)."""
        if self.launch is None or not self.launch.gather:
            return ""
        return self.backend.gather_log(self.launch.folder, self.launch.gather)


class Backend(ABC):
    """One way of running a sweep's runs. ``batch`` backends hand their runs to a scheduler and
    return (their jobs are recorded in launches.jsonl and followed with --status / --wait): the
    launcher asks the scheduler which runs are queued before it selects, and says "submit" rather
    than "run". Either way ``submit`` returns a ``Handle`` and the launcher goes on the same way."""

    name: str = ""
    batch: bool = False

    def check(self, slurm: SlurmConfig, sweep: str) -> None:
        """Refuse (ValueError naming the key) a grid this backend cannot run, before anything is
        written or submitted."""

    def check_environment(self) -> None:
        """Refuse (BackendError, saying what to do) when this machine cannot run the backend."""

    @abstractmethod
    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        """What ``--dry-run`` prints about how these runs would be started (no side effects)."""

    @abstractmethod
    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Handle:
        """Run or submit these runs (BackendError when refused)."""

    def states(self, handle: Handle) -> dict[str, str]:
        """The states of a handle's runs. This default serves backends that run every run before
        ``submit`` returns: the outcomes' states (a run without one never started: missing)."""
        return {r: handle.outcomes[r].state if r in handle.outcomes else "missing" for r in handle.run_ids}

    def wait(self, handle: Handle, console: Console) -> None:
        """Block until no job of this handle is queued or running (default: there are none)."""

    def job_states(self, job_ids: Sequence[str]) -> JobQuery | None:
        """The states of this backend's recorded jobs (None: it records none)."""
        return None

    def task_log(self, folder: str, job_id: str) -> str:
        """Where a recorded task's output goes ("" when there is no such file)."""
        return ""

    def gather_log(self, folder: str, job_id: str) -> str:
        """Where the recorded gather job's output goes."""
        return ""


def progress_bar(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)
