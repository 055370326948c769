"""Re-measure without retraining: a run whose training settings match a finished run's starts from
that run's final weights instead of training.

A run's identity (its id) covers everything in its spec, so adding, removing or changing a stress
test on a finished sweep gives new run ids, and old sweeps keep theirs. But what determines the
trained weights is only the training identity (``RunSpec.training_hash``: model, data, training
settings, seed); the stress tests measure them. So before training, a run looks in its sweep's
``runs/`` for a finished run of the same training identity and adopts its last checkpoint (the
final weights, optimizer state and history, which every finished run keeps): nothing is trained,
and the run measures, publishes and is done like any other. Its results.h5 records where the
weights came from (the root attribute ``weights_from_run``).

Every file read here lies in a run folder and is untrusted: a spec.json that does not parse, a
folder that is a link, a run that is not done (``store.run_state``) is not a candidate, and the
adopted checkpoint is loaded with ``weights_only=True`` by the worker and must be of the last epoch.

The launcher asks the same question (:func:`plan`) so that ``--dry-run`` and the launch say which
runs will train and which will only be measured.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from . import store
from .config import RunSpec
from .layout import CHECKPOINT_NAME, SPEC_FILE

#: the results.h5 root attribute naming the finished run whose final weights a run measured
ATTR = "weights_from_run"


@dataclass(frozen=True)
class Trained:
    """A finished run whose final checkpoint may stand for another run's training."""

    run_id: str
    run_dir: Path
    spec_hash: str
    epochs: int


def finished_by_training(runs_dir: Path, wanted: Iterable[str] | None = None) -> dict[str, Trained]:
    """training_hash -> a finished run of the sweep with a checkpoint (the first in run-id order,
    so every caller picks the same), for the hashes in ``wanted`` (all when None)."""
    wanted = None if wanted is None else set(wanted)
    out: dict[str, Trained] = {}
    try:
        names = sorted(os.listdir(runs_dir))
    except OSError:
        return out
    for name in names:
        run_dir = runs_dir / name
        spec = _spec(run_dir)
        if spec is None or spec.run_id != name:
            continue
        key = spec.training_hash
        if key in out or (wanted is not None and key not in wanted):
            continue
        if not (run_dir / CHECKPOINT_NAME).is_file() or store.run_state(run_dir, verify_hash=False).status != "done":
            continue
        out[key] = Trained(name, run_dir, spec.spec_hash, spec.train.epochs)
    return out


def donor(spec: RunSpec, runs_dir: Path) -> Trained | None:
    """A finished run, other than ``spec``'s own, whose final weights are ``spec``'s (None if none)."""
    found = finished_by_training(runs_dir, [spec.training_hash]).get(spec.training_hash)
    if found is None or found.run_id == spec.run_id:
        return None
    return found


def plan(specs: Iterable[RunSpec], runs_dir: Path) -> dict[str, str]:
    """run id -> the finished run whose weights it would measure, for those of ``specs`` that would
    not train: no checkpoint of their own (a started run resumes its own training) and a finished
    run of the same training identity in the sweep."""
    specs = list(specs)
    found = finished_by_training(runs_dir, {s.training_hash for s in specs})
    out = {}
    for s in specs:
        t = found.get(s.training_hash)
        if t is not None and t.run_id != s.run_id and not (runs_dir / s.run_id / CHECKPOINT_NAME).exists():
            out[s.run_id] = t.run_id
    return out


def _spec(run_dir: Path) -> RunSpec | None:
    if run_dir.is_symlink() or not run_dir.is_dir():
        return None
    path = run_dir / SPEC_FILE
    try:
        if path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        return RunSpec.from_json(path.read_text())
    except (OSError, ValueError, TypeError, KeyError, json.JSONDecodeError):
        return None
