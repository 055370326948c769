"""Every run's state: its files first (store.run_state, claims), then what the backend that last
launched it says about its job. Used by --status, the launcher's selection and the report."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .. import states, store
from ..claims import claim_holder
from ..config import RunSpec
from ..layout import LOG_FILE, RUNS_DIR
from . import BACKENDS
from .slurmctl import PENDING_STATES, RUNNING_STATES, JobInfo, JobQuery, Launch, latest_jobs, read_launches


# ------------------------------------------------------------------------------------------------
# run status: files first, then the recorded job's state
# ------------------------------------------------------------------------------------------------

RUN_STATUSES = states.ALL  # the one vocabulary (states.py)


@dataclass
class RunStatus:
    run_id: str
    status: str  # one of RUN_STATUSES
    detail: str = ""
    epoch: int = 0
    epochs: int = 0
    job_id: str = ""
    log: str = ""
    summary: dict[str, Any] | None = None


def classify(disk: store.RunState, job: JobInfo | None, claim: dict[str, Any] | None,
             epoch: int = 0, job_id: str = "", squeue_ok: bool = False) -> tuple[str, str]:
    """(status, detail) of one run from its files, its latest job's state and a live claim.

    DONE.json wins; a queued or running job comes next (a failed run being retried is pending);
    then FAILED.json / a broken DONE.json; then a job that ended without DONE.json is failed
    (time limit, out of memory, cancelled, killed: the worker could not write FAILED.json).
    job_id is the run's recorded job; when squeue answered and no longer lists it (and sacct could
    not say more), that job has ended too: Slurm forgets ended jobs after MinJobAge, and calling
    the run 'partial' would keep --rerun-failed from ever resubmitting it."""
    if disk.status == "done":
        return "done", ""
    if job is not None and job.state in PENDING_STATES:
        why = f" ({job.reason})" if job.reason else ""
        return "pending", f"job {job.job_id} {job.state.lower()}{why}"
    if job is not None and job.state in RUNNING_STATES:
        return "running", f"job {job.job_id}"
    if claim is not None:
        return "running", f"claimed by pid {claim.get('pid')} on {claim.get('host')}"
    if disk.status in ("failed", "broken"):
        return disk.status, disk.reason
    after = f"; checkpoint after epoch {epoch}" if epoch else ""
    if job is not None:
        extra = f", {job.reason}" if job.reason else ""
        return "failed", f"job {job.job_id} ended {job.state}{extra} without DONE.json{after}"
    if job_id and squeue_ok:
        return "failed", f"its Slurm job {job_id} ended without a result (no accounting to say why){after}"
    return disk.status, disk.reason


def run_statuses(runs: Sequence[RunSpec], sweep_dir: Path, ask_slurm: bool = True,
                 verify_hash: bool = False) -> tuple[list[RunStatus], list[str]]:
    """Every run's status, and notes on what could not be asked."""
    launches = read_launches(sweep_dir) if ask_slurm else []
    latest = latest_jobs(launches)
    query = _job_states([latest[r.run_id] for r in runs if r.run_id in latest])
    out = []
    for spec in runs:
        run_dir = sweep_dir / RUNS_DIR / spec.run_id
        job_id, launch = latest.get(spec.run_id, ("", None))
        job = query.jobs.get(job_id) if job_id else None
        # a job of a backend this version lacks was asked nowhere: its absence from squeue says nothing
        asked = query.ok and launch is not None and launch.cluster in BACKENDS
        status, detail, epoch, disk = state_of(run_dir, job, job_id, asked, verify_hash)
        if status == "running":
            where = store.progress_stage(run_dir)
            detail += f"; stage {where}" if where else ""
        log = _task_log(launch, job_id) if launch is not None and job_id else ""
        if status in ("failed", "broken") and log:
            detail += f" (log: {log}; {run_dir / LOG_FILE})"
        out.append(RunStatus(spec.run_id, status, detail, epoch, spec.train.epochs, job_id, log, disk.summary))
    return out, query.notes


def state_of(run_dir: Path, job: JobInfo | None, job_id: str = "", squeue_ok: bool = False,
             verify_hash: bool = False) -> tuple[str, str, int, store.RunState]:
    """(status, detail, epoch, files' state) of one run from its folder, its recorded job's state
    (None: none, or Slurm no longer knows it) and a live claim (asked only when no job is active)."""
    disk = store.run_state(run_dir, verify_hash=verify_hash) if run_dir.exists() else store.RunState("missing", "")
    epoch = store.progress_epochs(run_dir)
    claim = claim_holder(run_dir) if disk.status != "done" and (job is None or not job.active) else None
    status, detail = classify(disk, job, claim, epoch, job_id, squeue_ok)
    return status, detail, epoch, disk


def _task_log(launch: Launch, job_id: str) -> str:
    """Where a recorded task's output went, as the backend that launched it names its logs."""
    from . import backend

    try:
        return backend(launch.cluster).task_log(launch.folder, job_id)
    except ValueError:  # a launch record of a backend this version does not have
        return ""




def _job_states(jobs: Sequence[tuple[str, Launch]]) -> JobQuery:
    """Ask each backend that launched some of these jobs about its own jobs (one query each)."""
    from . import backend

    by_cluster: dict[str, list[str]] = {}
    for job_id, launch in jobs:
        by_cluster.setdefault(launch.cluster, []).append(job_id)
    merged = JobQuery({}, True)
    for cluster, ids in by_cluster.items():
        try:
            answer = backend(cluster).job_states(ids)
        except ValueError:  # a launch record of a backend this version does not have
            merged.notes.append(f"launches.jsonl names an unknown backend {cluster!r}; its jobs are judged from files")
            continue
        if answer is None:
            continue
        merged.jobs.update(answer.jobs)
        merged.ok = merged.ok and answer.ok
        merged.notes.extend(n for n in answer.notes if n not in merged.notes)
    return merged
