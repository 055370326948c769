"""The run states: one torch-free vocabulary for ``--status``, the launcher, ``--rerun-failed``
and the report. Each state knows how summary.json reports it and whether a launch starts it.

    done     DONE.json matches results.h5                               reported done
    failed   FAILED.json, or its job ended without a result              reported failed; rerun
    broken   DONE.json, but results.h5 is unusable (truncated, hash,      reported failed; rerun
             or either names another run than its folder)
    partial  a checkpoint without DONE.json or FAILED.json               reported missing; a plain
             (killed, preempted, or still running elsewhere)            launch resumes it
    missing  nothing written yet                                         reported missing; rerun
    running  a live claim, or a job Slurm says is running                reported missing; never twice
    pending  a job Slurm has queued                                      reported missing; never twice
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class State:
    name: str
    summary_status: str  # summary.json's `status`: docs/design.md's done | failed | missing
    launch_starts: bool  # a plain relaunch trains it (resuming from its checkpoint if any)
    rerun_failed_starts: bool  # --rerun-failed trains it
    busy: bool  # someone is working on it: never started a second time
    meaning: str


STATES: dict[str, State] = {s.name: s for s in (
    State("done", "done", False, False, False, "finished: DONE.json matches results.h5"),
    State("failed", "failed", True, True, False, "ended with a reason (FAILED.json, or its job ended without a result)"),
    State("broken", "failed", True, True, False, "DONE.json exists but results.h5 cannot be used, or they are another run's"),
    State("partial", "missing", True, False, False, "a checkpoint, no result yet: killed, preempted or still running"),
    State("missing", "missing", True, True, False, "nothing written yet"),
    State("running", "missing", False, False, True, "being trained (a live claim or a running job)"),
    State("pending", "missing", False, False, True, "queued by Slurm"),
)}

#: every state, in the order tables list them
ALL = tuple(STATES)
#: summary.json's three values
SUMMARY_STATUSES = ("done", "failed", "missing")
#: what the files alone can say (gather and the report; running/pending need the claim or Slurm)
ON_DISK = ("done", "failed", "broken", "partial", "missing")


def to_start(rerun_failed: bool) -> tuple[str, ...]:
    """The states a launch trains: with ``--rerun-failed`` only failed, broken and never-started runs."""
    return tuple(s.name for s in STATES.values() if (s.rerun_failed_starts if rerun_failed else s.launch_starts))


def summary_status(state: str) -> str:
    """summary.json's status of a state; one this code does not know reads as no result."""
    s = STATES.get(state)
    return s.summary_status if s is not None else "missing"
