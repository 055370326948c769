"""The backend interface: what every way of running a sweep implements (debug and local in
``local.py``, submitit job arrays in ``slurm.py``, static sbatch scripts in ``sbatch.py``).

A backend checks that it can run a grid, says what it would do (``--dry-run``), runs or submits
the unfinished runs, and, for backends that record their launches in ``launches.jsonl``, reports
the state of their jobs and where their logs are. The launcher calls only this interface.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..config import RunSpec, SlurmConfig

if TYPE_CHECKING:
    from .slurmctl import JobQuery

# Where the package lives: jobs run with this as their working directory, so that
# ``python -m cnnstress.worker`` and submitit's unpickling find the package even when it is not
# installed into the interpreter (an editable install works either way).
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class LaunchContext:
    """What a launch hands its backend besides the runs."""

    sweep: str
    sweep_dir: Path
    slurm: SlurmConfig
    console: Console
    gather_args: list[str] = field(default_factory=list)  # launch.py arguments that rebuild this sweep
    max_parallel: int | None = None  # --max-parallel


@dataclass
class Outcome:
    """How one run of a local (non-batch) launch ended."""

    run_id: str
    status: str  # done | skipped | failed | busy
    detail: str = ""
    summary: dict[str, Any] | None = None


class Backend(ABC):
    """One way of running a sweep's runs. ``batch`` backends submit and return (their jobs are
    recorded in launches.jsonl and followed with --status / --wait); the others run every run to
    its end before ``submit`` returns, and return one Outcome per run."""

    name: str = ""
    batch: bool = False

    def check(self, slurm: SlurmConfig, sweep: str) -> None:
        """Refuse (ValueError naming the key) a grid this backend cannot run, before anything is
        written or submitted."""

    def check_environment(self) -> None:
        """Refuse (SlurmError, saying what to do) when this machine cannot run the backend."""

    @abstractmethod
    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        """What ``--dry-run`` prints about how these runs would be started (no side effects)."""

    @abstractmethod
    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Any:
        """Run (non-batch: list[Outcome]) or submit (batch: the recorded Launch) these runs."""

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
