"""TensorBoard event files for a sweep's runs (optional: ``pip install -e '.[tensorboard]'``).

Turned on by ``[report].tensorboard = true`` or ``launch.py --tensorboard`` (``config.Runtime``: not
part of a run's id, so turning it on renames and retrains nothing). The worker writes, per run:

    <out>/<sweep>/tensorboard/<variant>/seed<seed>[-<key><value>...]/events.out.tfevents.*

so ``tensorboard --logdir <out>/<sweep>`` lists every run as ``<variant>/seed<seed>`` (plus the run's
other ``[grid]`` values, written as in its run id), and ``--logdir <out>/<sweep>/tensorboard/<variant>``
one variant's seeds. Per epoch (step = epoch, 1-based), the values stored in ``/history/*`` of
results.h5: ``loss/train``, ``loss/val``, ``accuracy/train``, ``accuracy/val``, ``lr`` (at the start of
the epoch, as in the history) and ``epoch_seconds``. At the end (step = the last epoch), what the
worker has in hand: ``test/accuracy``, ``test/ece`` (15 bins), ``test/nll``,
``stress/mean_corruption_accuracy`` and ``stress/accuracy_severity<k>`` (mean over corruptions), and
``adversarial/<norm>_<eps>`` (accuracy under attack) when the attacks are on. A text ``run`` holds
the run id and its grid values.

Resume: a run owns its folder. Whenever the worker starts on a run (fresh, resumed from
checkpoint.pt after a crash, a kill, a Slurm requeue or preemption), it deletes the folder's event
files and writes the history it resumes from, taken from the checkpoint, into a new one; then it
appends one step per epoch. The epochs a killed process had logged beyond its last checkpoint are
trained again and logged once, with the values that end up in results.h5 — every step appears
exactly once. A run that trained (partly) before TensorBoard was turned on gets its whole history
when it resumes; a finished run is not retrained and gets no event files.

Nothing here imports torch or tensorboard until a run writes (the launcher imports this module to
check that the package is installed).
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import weakref
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .atomic import refuse_links
from .layout import HISTORY, TENSORBOARD_DIR

INSTALL = "pip install -e '.[tensorboard]'"
# /history/<key> -> tag (every history key but "epoch", which is the step)
EPOCH_TAGS = {key.name: key.tag for key in HISTORY if key.tag is not None}
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def available() -> bool:
    """Whether the tensorboard package (what torch.utils.tensorboard writes with) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def missing_package(runs) -> str | None:
    """The launch error when some run asks for TensorBoard and the package is not installed."""
    if any(r.runtime.tensorboard for r in runs) and not available():
        return ("[report].tensorboard is on (or --tensorboard), but the tensorboard package is not installed "
                f"in this Python ({sys.executable}); install it with: {INSTALL}  (or: pip install tensorboard)")
    return None


def run_name(spec) -> str:
    """``<variant>/seed<seed>[-<key><value>...]``: the run's name in TensorBoard (a relative path)."""
    from .config import _short  # the same value spelling as the run id

    parts = [f"seed{spec.seed}"]
    for key, value in sorted(spec.grid_values.items()):
        if key != "seed":
            parts.append(f"{key.split('.')[-1]}{_short(value)}")
    return f"{spec.variant}/{_UNSAFE.sub('', '-'.join(parts))}"


def sweep_logdir(out_root: str | Path, sweep: str) -> Path:
    return Path(out_root).resolve() / sweep / TENSORBOARD_DIR


def run_logdir(spec) -> Path:
    return sweep_logdir(spec.paths.out_root, spec.sweep) / run_name(spec)


# ------------------------------------------------------------------------------------------------
# writing (the worker)
# ------------------------------------------------------------------------------------------------


class _Off:
    """What the worker holds when TensorBoard is off: every call does nothing."""

    def epoch(self, history: Mapping[str, list]) -> None:
        pass

    def final(self, arrays: Mapping[str, np.ndarray]) -> None:
        pass

    def close(self) -> None:
        pass


def open_board(spec, history: Mapping[str, list], log: Callable[[str], None]):
    """The run's board: rewrites the run's folder from ``history`` (the checkpoint's; empty on a
    fresh start). A no-op object when TensorBoard is off, or (with a warning in the log) when it
    cannot be written on this node: the run's results do not depend on it."""
    if not spec.runtime.tensorboard:
        return _Off()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        log(f"WARNING: [report].tensorboard is on but the tensorboard package is missing here ({e}); install it "
            f"with {INSTALL}. Training goes on without event files")
        return _Off()
    board = RunBoard(spec, log)
    board.start(SummaryWriter, history)
    return board


class RunBoard:
    """One run's event files. A failing write (a full disk, a read-only folder) never fails the
    run: it is logged once and the board stops writing."""

    def __init__(self, spec, log: Callable[[str], None]):
        self.spec, self.log = spec, log
        self.dir = run_logdir(spec)
        self.writer = None
        self.written = 0  # epochs of the history in the event file
        self.last_step = 0

    def _failed(self, e: Exception) -> None:
        self.log(f"WARNING: TensorBoard: writing to {self.dir} failed ({type(e).__name__}: {e}); "
                 "no more event files for this run")
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception:  # noqa: BLE001
                pass

    def start(self, writer_class, history: Mapping[str, list]) -> None:
        try:
            # The writer opens its event file itself, following links: a linked tensorboard/,
            # variant or run folder is refused first (a warning; the run goes on without event files).
            # An event file that is a link is only unlinked, which never touches its target.
            refuse_links(self.dir.parents[2], self.dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            refuse_links(self.dir.parents[2], self.dir)  # made a link by someone else meanwhile
            stale = sorted(self.dir.glob("events.out.tfevents.*"))
            for f in stale:  # an earlier attempt's steps: rewritten below from the checkpoint's history
                f.unlink()
            # flushed by hand after every epoch; the queue never fills before that
            self.writer = writer_class(log_dir=str(self.dir), max_queue=10_000, flush_secs=3600)
            weakref.finalize(self, self.writer.close)  # a run that fails after training still closes it
            spec = self.spec
            grid = ", ".join(f"{k} = {v!r}" for k, v in sorted(spec.grid_values.items())) or "none"
            self.writer.add_text("run", f"run id `{spec.run_id}`, variant `{spec.variant}`, seed {spec.seed}; "
                                        f"[grid] values: {grid}", global_step=0)
        except Exception as e:  # noqa: BLE001 - event files are a view on the run, not its results
            self._failed(e)
            return
        self.epoch(history)
        self.log(f"TensorBoard: event files in {self.dir}" + (
            f" ({len(stale)} from an earlier attempt deleted; {self.written} epochs rewritten from the checkpoint)"
            if stale or self.written else ""))

    def epoch(self, history: Mapping[str, list]) -> None:
        """Writes the epochs of ``history`` not written yet, then flushes (a live TensorBoard sees them)."""
        if self.writer is None:
            return
        try:
            n = len(history["epoch"])
            for i in range(self.written, n):
                step = int(history["epoch"][i])
                for key, tag in EPOCH_TAGS.items():
                    self.writer.add_scalar(tag, float(history[key][i]), global_step=step)
                self.last_step = step
            self.written = n
            self.writer.flush()
        except Exception as e:  # noqa: BLE001
            self._failed(e)

    def final(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Writes the final test and stress metrics at the last epoch's step, and closes."""
        if self.writer is None:
            return
        try:
            for tag, value in final_metrics(arrays).items():
                self.writer.add_scalar(tag, value, global_step=self.last_step)
        except Exception as e:  # noqa: BLE001
            self._failed(e)
        self.close()

    def close(self) -> None:
        """Flushes and closes (when training stops or fails, and at the end); a second call does nothing."""
        writer, self.writer = self.writer, None
        if writer is not None:
            try:
                writer.close()
            except Exception as e:  # noqa: BLE001
                self.writer = writer
                self._failed(e)


def final_metrics(arrays: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The end-of-run scalars, from the arrays the worker is about to publish (numpy only)."""
    from .analysis.calibration import ece, nll
    from .analysis.metrics import softmax

    labels = np.asarray(arrays["test/label"]).astype(np.int64)
    logits = np.asarray(arrays["test/logits"])
    out = {"test/accuracy": float((logits.argmax(1) == labels).mean()),
           "test/ece": ece(softmax(logits), labels), "test/nll": nll(logits, labels)}
    by_severity: dict[int, list[float]] = {}
    for key, value in arrays.items():
        parts = key.split("/")
        if parts[0] == "stress" and len(parts) == 4 and parts[3] == "logits":
            by_severity.setdefault(int(parts[2]), []).append(float((np.asarray(value).argmax(1) == labels).mean()))
    if by_severity:
        out["stress/mean_corruption_accuracy"] = float(np.mean([a for accs in by_severity.values() for a in accs]))
        for sev in sorted(by_severity):
            out[f"stress/accuracy_severity{sev}"] = float(np.mean(by_severity[sev]))
    if "adversarial/positions" in arrays:
        adv_labels = labels[np.asarray(arrays["adversarial/positions"]).astype(np.int64)]
        for key, value in arrays.items():
            parts = key.split("/")
            if parts[0] == "adversarial" and len(parts) == 4 and parts[3] == "logits":
                out[f"adversarial/{parts[1]}_{parts[2]}"] = float((np.asarray(value).argmax(1) == adv_labels).mean())
    return {k: v for k, v in out.items() if math.isfinite(v)}
