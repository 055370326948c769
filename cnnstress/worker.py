"""Train one RunSpec from scratch (or resume it), predict, and publish results.h5 + DONE.json.

Usable as a callable (``run(spec)``, what cluster/slurm.py submits) and as a command:
``python -m cnnstress.worker --spec spec.json`` or ``--manifest manifest.jsonl --index N``
(the sbatch fallback; N defaults to $SLURM_ARRAY_TASK_ID).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from contextlib import ExitStack, contextmanager
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch

from . import data, faults, probes, reuse, store
from . import weights as own_weights
from . import tensorboard as tboard
from .layout import (BEST_FILE, DONE_NAME, EXIT_BUSY, EXIT_DONE, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, HISTORY,
                     HISTORY_KEYS, IMAGE_SIZE_ATTR, LOG_FILE, RUNS_AT_ONCE, RUNS_AT_ONCE_ENV, SPEC_FILE)
from .atomic import LinkRefused, open_in_place, refuse_links
from .claims import RunBusy, claim
from .augment import BatchAugment
from .config import RunSpec, run_dir_for
from .pack import STOP_SIGNALS
from .engine import (DeviceData, Precision, Predictor, build_optimizer, build_scheduler,
                     restore_rng_state, rng_state, select_device, set_determinism, train_one_epoch, train_steps,
                     use_channels_last)
from .models import INPUT_SIZE_ATTR, build, default_gradcam_layer, resolve_layer

CHECKPOINT_KEYS = {"format", "spec_hash", "epoch", "model", "optimizer", "scheduler", "scaler", "rng", "history"}
CHECKPOINT_FORMAT = 1


# ------------------------------------------------------------------------------------------------
# log
# ------------------------------------------------------------------------------------------------


class RunLog:
    """Appends timestamped lines to log.txt (and echoes them to stdout, which submitit captures)."""

    def __init__(self, path: Path, echo: bool = True):
        fd = open_in_place(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)  # LinkRefused for a link
        self.file = os.fdopen(fd, "a", encoding="utf-8")
        self.echo = echo

    def __call__(self, msg: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {msg}"
        self.file.write(line + "\n")
        self.file.flush()
        if self.echo:
            print(line, flush=True)

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    """Write checkpoint.pt atomically, keeping the previous one as checkpoint.prev.pt.

    checkpoint.pt exists at every instant once written: the old one is hard-linked to the prev name
    while the new one is written. (Renaming it away first left a window, as long as the write, in
    which a SIGKILL left only checkpoint.prev.pt; a test caught --status calling that run missing.)"""
    data = _torch_bytes(state)
    cur, prev = run_dir / store.CHECKPOINT_NAME, run_dir / store.PREV_CHECKPOINT_NAME
    if cur.exists():
        prev.unlink(missing_ok=True)
        try:
            os.link(cur, prev, follow_symlinks=False)  # a checkpoint.pt that is a link: link the link
        except OSError:  # a file system without hard links: the short window comes back
            os.replace(cur, prev)
    store.atomic_write_bytes(cur, data)


def save_best(run_dir: Path, state: dict[str, Any]) -> None:
    """Write best.pt atomically: the model weights of the epoch with the highest validation accuracy
    so far (checkpoint.pt holds the latest epoch, so after the last one it is the final model)."""
    store.atomic_write_bytes(run_dir / BEST_FILE, _torch_bytes(state))


def _torch_bytes(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def load_checkpoint(run_dir: Path, spec_hash: str, log: RunLog) -> dict[str, Any] | None:
    """The newest readable checkpoint of this spec, or None. Unreadable ones are reported and
    skipped, never trusted: weights_only=True refuses pickled code.

    Always loaded to the CPU, whatever device the run trains on: ``load_state_dict`` places the
    model's and the optimizer's tensors next to their parameters, and the RNG states must stay CPU
    byte tensors (``Generator.set_state`` and ``torch.set_rng_state`` refuse anything else: ATen's
    ``check_rng_state``). Loading with ``map_location=device`` made every resume on a GPU fail, and
    would have put Adam's ``step`` counters on the GPU (a host sync per parameter per step)."""
    refused = False
    for name in store.CHECKPOINT_NAMES:
        path = run_dir / name
        if not path.exists():
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict) or set(state) != CHECKPOINT_KEYS:
                raise ValueError(f"unexpected contents (keys {sorted(state) if isinstance(state, dict) else type(state).__name__})")
            if state["format"] != CHECKPOINT_FORMAT or state["spec_hash"] != spec_hash:
                raise ValueError("written for another spec or format")
            return state
        except Exception as e:  # noqa: BLE001 - any unreadable checkpoint means: fall back
            refused = True
            log(f"WARNING: {name} is unusable ({_load_error(e)}); falling back")
    if refused:
        log("no usable checkpoint: training starts over from the first epoch")
    return None


def _load_error(e: Exception) -> str:
    """Why torch.load refused a checkpoint, in one line. torch's own message for a pickled object
    is ten lines that first explain how to load the file anyway; cut at 200 characters it lost
    the part that matters, so that is said here in our words, with torch's line naming the object."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # torch bolds part of it with terminal escapes
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:
        unpickler = re.search(r"WeightsUnpickler error:\s*(.*?)(?:\. Please use|\n\n|$)", text, re.S)
        which = " ".join((unpickler.group(1) if unpickler else lines[0]).split())[:300]
        if "Unsupported global" in which:
            return ("it holds pickled objects other than tensors, which could run arbitrary code when loaded, "
                    f"so it was not loaded; torch: {which}")
        return f"not a valid checkpoint ({type(e).__name__}: {which})"
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _copy_tensors(obj: Any) -> Any:
    """``obj`` with every tensor cloned (on its own device) and containers rebuilt: a snapshot that
    training can go on from without changing it."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copy_tensors(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copy_tensors(v) for v in obj)
    return obj


class CheckpointKeeper:
    """Decides when checkpoint.pt and best.pt are written: when ``every_s`` seconds have passed
    since the last write (0: after every epoch), when the job is told to stop, and at the end.

    On a GPU an epoch of a small model takes seconds while checkpoint.pt (ResNet-18 + momentum,
    ~90 MB), its rotation and best.pt are fsynced: written every epoch that can be a large part of a
    run on a shared file system. Between writes the keeper holds a snapshot of the state after the
    last finished epoch (tensors cloned where they live: on a GPU a device-to-device copy, no host
    sync), so a stop signal in the middle of an epoch still saves every finished epoch, and a resume
    continues bitwise from an epoch boundary."""

    def __init__(self, run_dir: Path, every_s: float, log: RunLog, written_epoch: int = 0):
        self.run_dir = run_dir
        self.every_s = every_s
        self.log = log
        self.written_epoch = written_epoch
        self.last_write = time.monotonic()
        self._snapshot: dict[str, Any] | None = None
        self._best: dict[str, Any] | None = None
        self._writing = False

    def epoch_end(self, state: dict[str, Any], best: dict[str, Any] | None, *, final: bool) -> bool:
        """Offer the state after an epoch (and best.pt's contents when this epoch is the best so
        far). Writes now when due; otherwise keeps a copy. Returns whether it wrote."""
        due = final or self.every_s <= 0 or time.monotonic() - self.last_write >= self.every_s
        if due:  # written at once from the live tensors: no copy needed
            self._snapshot, self._best = state, (best if best is not None else self._best)
            return self.flush()
        self._snapshot = _copy_tensors(state)
        if best is not None:  # the same epoch's weights: share the snapshot's copy, not a second one
            self._best = {**best, "model": self._snapshot["model"]}
        return False

    def flush(self, why: str = "") -> bool:
        """Write the newest finished epoch if it is not on disk yet (best.pt first: a crash in
        between redoes epochs from the older checkpoint, which rewrite the same best weights).
        Safe to call from a signal handler: a write already in progress is left to finish."""
        snap = self._snapshot
        if self._writing or snap is None or snap["epoch"] <= self.written_epoch:
            return False
        self._writing = True
        try:
            if self._best is not None:
                save_best(self.run_dir, self._best)
                self._best = None
            save_checkpoint(self.run_dir, snap)
            self.written_epoch = snap["epoch"]
            self.last_write = time.monotonic()
            self._snapshot = None  # on disk now; release the copy
        finally:
            self._writing = False
        if why:
            self.log(f"checkpoint after epoch {self.written_epoch} written ({why})")
        return True


class StopRequested(BaseException):
    """The job was told to stop (SIGTERM, or SIGUSR2 where nobody else handles it). A BaseException,
    like SystemExit: the run is left resumable, not failed."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"stopped by {signal.Signals(signum).name}")




@contextmanager
def stop_signals(keeper: CheckpointKeeper) -> Iterator[None]:
    """While training: on a stop signal, write the newest finished epoch first, then do what the
    signal did before. Where another handler was installed (submitit: USR2 checkpoints and requeues
    the job, then exits; SIGTERM is logged and ignored), it runs next, unchanged. Where none was,
    the worker stops with StopRequested. Previous handlers are restored on exit. Only the main
    thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    stopping = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal stopping
        if stopping:  # said twice (the cluster signals every process of a task, and a pack forwards it)
            return
        before = previous[signum]
        stopping = not callable(before) and before != signal.SIG_IGN
        keeper.flush(f"{signal.Signals(signum).name} received")
        if callable(before):
            before(signum, frame)
        elif stopping:
            raise StopRequested(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before if before is not None else signal.SIG_DFL)


# ------------------------------------------------------------------------------------------------
# the run
# ------------------------------------------------------------------------------------------------


def run(spec: RunSpec | dict | str, *, echo: bool = True) -> dict[str, Any]:
    """Train, predict and publish one run. Returns {"run_id", "status", ...summary}.

    Skips a finished run; resumes an unfinished one from its checkpoint; raises RunBusy if another
    live process holds the run. On failure writes FAILED.json with the reason and re-raises."""
    if isinstance(spec, str):
        spec = RunSpec.from_json(spec)
    elif isinstance(spec, dict):
        spec = RunSpec.from_dict(spec)
    run_dir = run_dir_for(spec)
    run_dir.mkdir(parents=True, exist_ok=True)
    refuse_links(run_dir.parent, run_dir)  # created by someone else between the check and mkdir
    state = store.run_state(run_dir)
    if state.status == "done":
        return {"run_id": spec.run_id, "status": "skipped", **(state.summary or {})}
    with ExitStack() as held:
        try:
            held.enter_context(claim(run_dir))
        except LinkRefused as e:
            _fail_unlogged(run_dir, e)
            raise
        state = store.run_state(run_dir)  # another process may have finished it meanwhile
        if state.status == "done":
            return {"run_id": spec.run_id, "status": "skipped", **(state.summary or {})}
        try:
            log = RunLog(run_dir / LOG_FILE, echo=echo)
        except LinkRefused as e:
            _fail_unlogged(run_dir, e)
            raise
        injected = faults.injected()
        try:
            if injected:  # a test hook left set must show where a failure is read
                log(f"WARNING: {faults.ENV}={injected} is set: faults will be injected into this run (a test hook)")
            for leftover in store.cleanup_temp_files(run_dir):
                log(f"removed leftover temp file {leftover.name} from an interrupted write")
            if (run_dir / DONE_NAME).exists():
                log(f"DONE.json does not match results.h5 ({state.reason}); redoing the run")
                os.remove(run_dir / DONE_NAME)
            store.clear_failed(run_dir)
            store.atomic_write_json(run_dir / SPEC_FILE, spec.to_dict())
            summary = _train_and_publish(spec, run_dir, log)
            return {"run_id": spec.run_id, "status": "done", **summary}
        except KeyboardInterrupt:  # Ctrl-C: not a failure; fit() has kept every finished epoch
            log(f"stopped by Ctrl-C (in stage {store.read_progress(run_dir).get('stage', 'setup')}); "
                + _resumes_from(run_dir))
            raise
        except Exception as e:
            # Only real errors: SystemExit/KeyboardInterrupt (preemption, Ctrl-C) leave the run
            # resumable instead of failed.
            reason = faults.naming(f"{type(e).__name__}: {e}"[:2000])
            log(f"FAILED: {reason}")
            try:
                store.write_failed(run_dir, reason, traceback.format_exc(), injected_faults=injected)
            except OSError as e2:  # e.g. the disk is full: the reason still reaches the log/stderr
                log(f"could not write FAILED.json: {e2}")
            raise
        finally:
            log.close()


def _resumes_from(run_dir: Path) -> str:
    """What a relaunch of a stopped run starts from, in words."""
    if not any((run_dir / name).exists() for name in store.CHECKPOINT_NAMES):
        return "no checkpoint yet: a relaunch starts it over"
    epoch = store.progress_epochs(run_dir)
    return f"checkpoint{f' after epoch {epoch}' if epoch else ''} kept: a relaunch resumes from it"


def _fail_unlogged(run_dir: Path, e: LinkRefused) -> None:
    """A run whose claim.lock or log.txt is a link fails with that one line in FAILED.json (written
    by replacing, so a link there is replaced, not written through); it is no other run's business.
    A disk that refuses even that leaves the line to the launcher's output."""
    try:
        store.write_failed(run_dir, f"{type(e).__name__}: {e}", "")
    except OSError:
        pass


Log = Callable[[str], None]


@dataclass(frozen=True)
class RunData:
    """A run's three splits: as loaded (official indices and labels) and as tensors on the device."""

    splits: data.Splits
    train: DeviceData
    val: DeviceData
    test: DeviceData


@dataclass(frozen=True)
class RunSetup:
    """What training and measuring share: the run, its device, its data there and its model (built
    from the seed; ``fit`` or a checkpoint gives it its weights) as a Predictor."""

    spec: RunSpec
    run_dir: Path
    device: torch.device
    precision_attrs: dict[str, str]  # the float32 and determinism settings in force (root attributes)
    data: RunData
    predictor: Predictor


@dataclass
class Training:
    """What trains besides the model: optimizer, schedule, loss scaler, augmentation and the
    generator that orders batches and draws augmentations."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    generator: torch.Generator


@dataclass
class Fitted:
    """What training leaves besides the final weights (which are in the setup's predictor)."""

    history: dict[str, list[float]]
    board: Any  # the run's TensorBoard writer (tensorboard.open_board); publish closes it
    seconds: float
    weights_from: str = ""  # the finished run whose final weights were adopted (reuse.py), "" if trained


@dataclass(frozen=True)
class Measured:
    """Every measurement of the final weights: arrays by results.h5 key, and the root attributes
    that describe them (``ood_sets``)."""

    arrays: dict[str, np.ndarray]
    attrs: dict[str, Any]
    seconds: float


def _train_and_publish(spec: RunSpec, run_dir: Path, log: RunLog) -> dict[str, Any]:
    t_start = time.time()
    with stage("setup", log, run_dir):
        run = setup(spec, run_dir, log)
    with stage("training", log, run_dir):
        fitted = fit(run, log)
    measured = measure(run.predictor, run.data, spec, log, progress=run_dir)
    with stage("publishing", log, run_dir):
        return publish(run, fitted, measured, t_start, log)


@contextmanager
def stage(name: str, log: Log, progress: Path | None = None) -> Iterator[None]:
    """Log a stage of a run as it starts and ends, with its duration, and record it in the run's
    progress.json (``progress``: the run folder) so that --status can say where a running run is."""
    if progress is not None:
        store.update_progress(progress, stage=name, stage_started=time.time())
    log(f"stage {name}: started")
    t0 = time.time()
    yield
    log(f"stage {name}: {time.time() - t0:.1f}s")


# ------------------------------------------------------------------------------------------------
# setup
# ------------------------------------------------------------------------------------------------


def setup(spec: RunSpec, run_dir: Path, log: Log) -> RunSetup:
    """Seeds and determinism, the device, the data on it and the model built from the seed."""
    tr = spec.train
    precision_attrs = set_determinism(spec.seed, tr.deterministic)
    device = select_device()
    precision = Precision.for_device(device, tr.amp, tr.amp_dtype)
    _announce(spec, device, precision, log)
    run_data = _load_data(spec, device, log)
    mean_l, std_l = mean_std(spec, run_data.splits.info)
    mean = torch.tensor(mean_l, device=device, dtype=torch.float32)
    std = torch.tensor(std_l, device=device, dtype=torch.float32)
    model, cl = _build(spec, device, log, image_size(run_data))
    resolve_layer(model, spec.gradcam_layer)  # an unknown Grad-CAM layer fails before training, not after
    return RunSetup(spec, run_dir, device, precision_attrs, run_data, Predictor(model, mean, std, precision, cl))


def mean_std(spec: RunSpec, info: Any) -> tuple[list[float], list[float]]:
    """The normalisation the model's input gets: [base].normalization when the grid states it (the
    preprocessing given weights expect), else the training split's statistics."""
    if spec.normalization:
        return list(spec.normalization["mean"]), list(spec.normalization["std"])
    return list(info.mean), list(info.std)


def _announce(spec: RunSpec, device: torch.device, precision: Precision, log: Log) -> None:
    tr = spec.train
    if device.type == "cpu" and os.environ.get("CUDA_VISIBLE_DEVICES", "").strip():
        log(f"WARNING: CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']} is set but torch sees no GPU "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda}): training on the CPU")
    amp_note = str(precision.dtype).replace("torch.", "") if precision.enabled else "off"
    if tr.amp and not precision.enabled:
        amp_note = "off (this CPU has no bf16 units: float32 is faster here)"
    what = f"{tr.epochs} epochs" if tr.epochs else "0 epochs (measuring the given weights)"
    log(f"run {spec.run_id}: {spec.model.name} on {spec.dataset.name}, {what}, device {_device_name(device)}, "
        f"amp {amp_note}, deterministic={tr.deterministic}")


def _load_data(spec: RunSpec, device: torch.device, log: Log) -> RunData:
    tr = spec.train
    splits = data.load_splits(spec.dataset.name, spec.paths.data_root, val_fraction=tr.val_fraction,
                              split_seed=tr.split_seed, options=spec.dataset.params)
    if splits.info.num_classes != spec.num_classes:  # your own images: a class folder added or removed since launch
        raise data.DataError(f"{spec.dataset.name} has {splits.info.num_classes} classes now but "
                             f"{spec.num_classes} at launch; allowed: relaunch the grid to start a new sweep's runs")
    if splits.note:  # which files matched the published checksums (CIFAR)
        log(f"data: {splits.note}")
    return RunData(splits, *(DeviceData.from_numpy(s.x, s.y, device) for s in (splits.train, splits.val, splits.test)))


def image_size(run_data: RunData) -> int:
    """The side of the run's square images (32 for the built-in datasets, 16..128 for your own)."""
    return int(run_data.splits.test.x.shape[-1])


def _build(spec: RunSpec, device: torch.device, log: Log, size: int) -> tuple[torch.nn.Module, bool]:
    """The model (initialised from the global RNG, seeded by set_determinism) and whether it runs channels_last."""
    model = build(spec.model.name, spec.num_classes, spec.model.params, spec.model_source).to(device)
    # a plain attribute, not in the state dict: every probe forward pass (Grad-CAM layers, the head,
    # the randomisation order) feeds the model images of this side
    setattr(model, INPUT_SIZE_ATTR, size)
    if spec.weights:  # after the build, so its RNG draws are the ones a run without weights makes
        own_weights.load_into(model, spec.weights, log)
    cl = use_channels_last(device, spec.train.channels_last)
    if spec.train.channels_last and not cl:
        log("channels_last off on the CPU (a oneDNN defect in torch 2.14: engine.use_channels_last)")
    if cl:
        model = model.to(memory_format=torch.channels_last)
    return model, cl


# ------------------------------------------------------------------------------------------------
# fit
# ------------------------------------------------------------------------------------------------


def fit(run: RunSetup, log: Log) -> Fitted:
    """Train from the first epoch, or from the newest checkpoint, to the last; the setup's
    predictor then holds the final weights. Every finished epoch is kept when training stops."""
    spec, tr = run.spec, run.spec.train
    training = _training(run)
    weights_from = _adopt_trained(run, log)
    history, start_epoch = _resume(run, training, log)
    if tr.compile and tr.deterministic:
        # Measured on CPU (docs/performance.md): two compiled runs of one spec differ (max |logit
        # diff| 0.03), so compile=true gives up the bitwise-reproducibility promise.
        log("WARNING: compile=true: torch.compile'd training is not bitwise reproducible")
    step_model = torch.compile(run.predictor.model) if tr.compile else run.predictor.model

    t_train = time.time()
    keeper = CheckpointKeeper(run.run_dir, 60.0 * spec.runtime.checkpoint_every_min, log, written_epoch=start_epoch)
    if tr.epochs == 0 and start_epoch == 0:
        # nothing to train: the given weights are the final ones, written as the last epoch's
        # checkpoint so that a remeasure finds them like any finished run's
        save_checkpoint(run.run_dir, _checkpoint_state(run, training, 0, history))
    board = tboard.open_board(spec, history, log)  # rewrites the run's event files from the checkpoint's history
    with stop_signals(keeper):
        try:
            for epoch in range(start_epoch, tr.epochs):
                row = _train_epoch(run, training, step_model, epoch)
                _end_epoch(run, training, row, history, keeper, board, log)
        except BaseException as e:
            # Stopped (signal, Ctrl-C, submitit's exit) or crashed: keep every finished epoch. A
            # failing write must not hide why training ended.
            board.close()
            try:
                keeper.flush(f"training ended by {type(e).__name__}")
            except Exception as e2:  # noqa: BLE001
                log(f"could not write the last checkpoint: {type(e2).__name__}: {e2}")
            raise
    return Fitted(history, board, time.time() - t_train, weights_from)


def _adopt_trained(run: RunSetup, log: Log) -> str:
    """Before a run's first epoch: when a finished run of the sweep has the same training settings
    (only what is measured differs), take its final checkpoint (and best.pt) as this run's, so that
    nothing is trained (cnnstress/reuse.py). Returns that run's id, or "" (then the run trains)."""
    if any((run.run_dir / name).exists() for name in store.CHECKPOINT_NAMES):
        return ""  # a started run resumes its own training
    found = reuse.donor(run.spec, run.run_dir.parent)
    if found is None:
        return ""
    ckpt = load_checkpoint(found.run_dir, found.spec_hash, log)
    if ckpt is None or int(ckpt["epoch"]) != run.spec.train.epochs:
        log(f"WARNING: finished run {found.run_id} has the same training settings but no usable checkpoint of "
            f"its last epoch; training this run instead")
        return ""
    best = found.run_dir / BEST_FILE
    if best.is_file() and not best.is_symlink():
        try:
            state = torch.load(best, map_location="cpu", weights_only=True)
            save_best(run.run_dir, {**state, "spec_hash": run.spec.spec_hash})
        except Exception as e:  # noqa: BLE001 - best.pt is a convenience copy; the run needs only the checkpoint
            log(f"WARNING: {best} is unusable ({_load_error(e)}); this run has no best.pt")
    save_checkpoint(run.run_dir, {**ckpt, "spec_hash": run.spec.spec_hash})
    log(f"re-measuring: finished run {found.run_id} has the same training settings (only the stress tests or the "
        f"Grad-CAM layer differ), so its final weights (epoch {ckpt['epoch']}) are this run's; nothing is trained")
    return found.run_id


def _training(run: RunSetup) -> Training:
    spec, tr, pred = run.spec, run.spec.train, run.predictor
    optimizer = build_optimizer(pred.model, tr.optimizer)
    scheduler = build_scheduler(optimizer, tr.schedule, tr.epochs, train_steps(len(run.data.train), tr.batch_size))
    mean, std = mean_std(spec, run.data.splits.info)
    augment = BatchAugment([a.name for a in tr.augment], {a.name: a.params for a in tr.augment},
                           mean=mean, std=std, num_classes=spec.num_classes,
                           label_smoothing=tr.label_smoothing, channels_last=pred.channels_last)
    generator = torch.Generator(device=run.device)
    generator.manual_seed(spec.seed)
    return Training(optimizer, scheduler, pred.precision.scaler(), augment, generator)


def _resume(run: RunSetup, training: Training, log: Log) -> tuple[dict[str, list[float]], int]:
    """(history, epochs done): from the newest usable checkpoint, whose state is loaded, or empty."""
    ckpt = load_checkpoint(run.run_dir, run.spec.spec_hash, log)
    if ckpt is None:
        return {k: [] for k in HISTORY_KEYS}, 0
    run.predictor.model.load_state_dict(ckpt["model"])
    training.optimizer.load_state_dict(ckpt["optimizer"])
    training.scheduler.load_state_dict(ckpt["scheduler"])
    training.scaler.load_state_dict(ckpt["scaler"])
    try:
        restore_rng_state(training.generator, ckpt["rng"])
    except Exception as e:  # resuming on another random stream would silently break reproducibility
        raise RuntimeError(f"checkpoint.pt: the RNG state could not be restored ({type(e).__name__}: {e}); "
                           "refusing to resume on a different random stream. Delete checkpoint*.pt to "
                           "restart this run from scratch.") from e
    start_epoch = int(ckpt["epoch"])
    log(f"resumed from checkpoint after epoch {start_epoch}" + (f" (Slurm restart {restarts()})" if restarts() else ""))
    return {k: list(v) for k, v in ckpt["history"].items()}, start_epoch


def _train_epoch(run: RunSetup, training: Training, step_model: torch.nn.Module, epoch: int) -> dict[str, Any]:
    """Train one epoch and validate: the epoch's history row, by HISTORY_KEYS name."""
    tr, t0 = run.spec.train, time.time()
    lr = training.optimizer.param_groups[0]["lr"]
    fit = train_one_epoch(step_model, run.data.train, training.augment, training.optimizer, training.scheduler,
                          training.scaler, run.predictor.precision, training.generator, tr.batch_size)
    ev = run.predictor.evaluate(run.data.val, tr.eval_batch_size)
    return {"epoch": epoch + 1, "lr": lr, "train_loss": fit["loss"], "train_acc": fit["acc"], "val_loss": ev["loss"],
            "val_acc": ev["acc"], "epoch_seconds": time.time() - t0}


def _checkpoint_state(run: RunSetup, training: Training, epoch: int, history: dict[str, list[float]]) -> dict[str, Any]:
    return {
        "format": CHECKPOINT_FORMAT, "spec_hash": run.spec.spec_hash, "epoch": epoch,
        "model": run.predictor.model.state_dict(), "optimizer": training.optimizer.state_dict(),
        "scheduler": training.scheduler.state_dict(), "scaler": training.scaler.state_dict(),
        "rng": rng_state(training.generator), "history": history,
    }


def _end_epoch(run: RunSetup, training: Training, row: dict[str, Any], history: dict[str, list[float]],
               keeper: CheckpointKeeper, board: Any, log: Log) -> None:
    """Record a finished epoch: history, TensorBoard, checkpoint and best.pt (when due), progress.json, log."""
    spec, tr, model, epoch = run.spec, run.spec.train, run.predictor.model, row["epoch"]
    best_before = max(history["val_acc"], default=-1.0)
    for key in HISTORY_KEYS:
        history[key].append(float(row[key]))
    board.epoch(history)
    best = None
    if row["val_acc"] > best_before:
        best = {"format": CHECKPOINT_FORMAT, "spec_hash": spec.spec_hash, "epoch": epoch,
                "val_acc": float(row["val_acc"]), "model": model.state_dict()}
    keeper.epoch_end(_checkpoint_state(run, training, epoch, history), best, final=epoch == tr.epochs)
    store.update_progress(run.run_dir, epoch=epoch, epochs=tr.epochs, val_acc=row["val_acc"],
                          checkpoint_epoch=keeper.written_epoch)
    log(f"epoch {epoch:>3}/{tr.epochs}  lr {row['lr']:.4g}  train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.4f}  val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}  {row['epoch_seconds']:.1f}s")


# ------------------------------------------------------------------------------------------------
# measure
# ------------------------------------------------------------------------------------------------


def measure(pred: Predictor, data: RunData, spec: RunSpec, log: Log, progress: Path | None = None) -> Measured:
    """What every run stores (the test and validation splits' predictions), then every stress test
    of the grid (cnnstress/probes/, in registry order) on the model in ``pred``. Needs only the final
    weights, so a finished run can be measured again without training (:func:`remeasure`)."""
    t0 = time.time()
    layer = resolve_layer(pred.model, spec.gradcam_layer)
    with stage("predictions", log, progress):
        out, preds, cams = _test_predictions(pred, layer, data, spec, log)
        out.update(_val_predictions(pred, data, spec))
    shared = probes.MeasureData(splits=data.splits, train=data.train, val=data.val, test=data.test, preds=preds,
                                cam_pred=cams)
    for probe in probes.enabled(spec):
        with stage(probe.name, log, progress):
            out.update(probe.measure(pred, shared, spec, log))
    return Measured(out, shared.attrs, time.time() - t0)


def remeasure(spec: RunSpec, log: Log) -> Measured:
    """Measure a trained run again from the final weights in its checkpoint.pt (kept after the run
    is done), without training. Writes nothing; the caller publishes."""
    run = setup(spec, run_dir_for(spec), log)
    ckpt = load_checkpoint(run.run_dir, spec.spec_hash, log)
    if ckpt is None or int(ckpt["epoch"]) != spec.train.epochs:
        raise ValueError(f"{run.run_dir / store.CHECKPOINT_NAME}: no checkpoint of the last epoch "
                         f"({spec.train.epochs}) of this spec to measure from; train the run first")
    run.predictor.model.load_state_dict(ckpt["model"])
    return measure(run.predictor, run.data, spec, log)


def _test_predictions(pred: Predictor, layer: torch.nn.Module, data: RunData, spec: RunSpec,
                      log: Log) -> tuple[dict[str, np.ndarray], torch.Tensor, torch.Tensor]:
    """The test split's logits, embeddings and Grad-CAM maps; also the predictions and the
    predicted class's maps, which later measurements start from."""
    bs, test = spec.train.eval_batch_size, data.test
    logits, emb = pred.predict(test.x, bs, with_embedding=True)
    preds = logits.argmax(1)
    cam_pred, cam_true = pred.gradcam(layer, test.x, [preds, test.y], min(bs, 256))
    at = spec.gradcam_layer or f"{default_gradcam_layer(pred.model)} (the default)"
    log(f"predicted {len(test)} test images; Grad-CAM at {at} {tuple(cam_pred.shape[1:])}")
    return {"test/index": data.splits.test.index, "test/label": data.splits.test.y,
            "test/logits": logits.cpu().numpy(), "test/embedding": emb.cpu().numpy(),
            "test/gradcam/pred": cam_pred.cpu().numpy(), "test/gradcam/true": cam_true.cpu().numpy()}, preds, cam_pred


def _val_predictions(pred: Predictor, data: RunData, spec: RunSpec) -> dict[str, np.ndarray]:
    val_logits, _ = pred.predict(data.val.x, spec.train.eval_batch_size)
    return {"val/index": data.splits.val.index, "val/label": data.splits.val.y, "val/logits": val_logits.cpu().numpy()}


# ------------------------------------------------------------------------------------------------
# publish
# ------------------------------------------------------------------------------------------------


def publish(run: RunSetup, fitted: Fitted, measured: Measured, t_start: float, log: Log) -> dict[str, Any]:
    """results.h5 (the measurements, the history and the root attributes), TensorBoard's final
    metrics, then DONE.json. Returns the run's summary."""
    spec, history = run.spec, fitted.history
    arrays = {**measured.arrays, **history_arrays(history)}
    test_acc = float((arrays["test/logits"].argmax(1) == run.data.splits.test.y).mean())
    timings = {"train_s": fitted.seconds, "predict_s": measured.seconds, "total_s": time.time() - t_start}
    attrs = {**_root_attrs(run, timings), **measured.attrs}
    if fitted.weights_from:
        attrs[reuse.ATTR] = fitted.weights_from
    injected = faults.injected()
    if injected:
        attrs["injected_faults"] = injected
    sha = store.publish_results(run.run_dir, arrays, attrs)
    summary = {
        "test_accuracy": test_acc, "val_accuracy": history["val_acc"][-1] if history["val_acc"] else None,
        "epochs": spec.train.epochs, "device": attrs["device"], "restarts": restarts(), **timings,
        RUNS_AT_ONCE: runs_at_once(),
    }
    if fitted.weights_from:
        summary[reuse.ATTR] = fitted.weights_from
    fitted.board.final(arrays)
    store.write_done(run.run_dir, summary, sha, injected_faults=injected)
    log(f"done: test accuracy {test_acc:.4f}; results.h5 sha256 {sha[:12]}; {timings['total_s']:.0f}s in all")
    return summary


def history_arrays(history: dict[str, list[float]]) -> dict[str, np.ndarray]:
    """/history/<key> arrays of a run's per-epoch history."""
    return {f"history/{key.name}": np.asarray(history[key.name], dtype=key.dtype) for key in HISTORY}


def _root_attrs(run: RunSetup, timings: dict[str, float]) -> dict[str, Any]:
    spec, precision = run.spec, run.predictor.precision
    mean, std = mean_std(spec, run.data.splits.info)
    return {
        "run_id": spec.run_id, "spec": spec.to_dict(), "variant": spec.variant, "seed": spec.seed,
        "versions": _versions(), "device": _device_name(run.device), "git_sha": _git_sha(), "timings": timings,
        "precision": {"amp": precision.enabled, "amp_dtype": str(precision.dtype).replace("torch.", "")
                      if precision.enabled else "none", "head": "float32", **run.precision_attrs},
        # what the model's input was normalised with (a reproduction needs the same)
        "normalization": {"mean": mean, "std": std,
                          "from": "[base].normalization" if spec.normalization else "the training split"},
        # the images' side, where it is not the built-in datasets' 32 (absent: 32, as in every file
        # written before other sizes were allowed)
        **({IMAGE_SIZE_ATTR: image_size(run.data)} if image_size(run.data) != data.IMAGE_SIZE else {}),
    }


def runs_at_once() -> int:
    """How many runs trained at once on this run's device, itself included, as whoever started the
    worker said (a packed task, --runs-per-gpu); 1 when nobody did. Only timings depend on it."""
    said = os.environ.get(RUNS_AT_ONCE_ENV, "")
    return int(said) if said.isdigit() and int(said) > 0 else 1


def restarts() -> int:
    """How often Slurm requeued this task (preemption or time limit) before this attempt."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def _versions() -> dict[str, Any]:
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
            "python": platform.python_version(), "numpy": np.__version__}


def _git_sha() -> str:
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return res.stdout.strip() if res.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------------------------------
# command line (the sbatch fallback and manual use)
# ------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cnnstress.worker", description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--spec", help="a spec.json (one RunSpec)")
    src.add_argument("--manifest", help="manifest.jsonl (one RunSpec per line)")
    ap.add_argument("--index", type=int, default=None, help="line of the manifest (default: $SLURM_ARRAY_TASK_ID)")
    args = ap.parse_args(argv)
    # Ctrl-C stops a worker even when it was started with SIGINT ignored (--cluster local starts
    # submitit's controller, and through it the workers, that way: see cluster/local.py)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.spec:
        text = Path(args.spec).read_text()
    else:
        index = args.index if args.index is not None else int(os.environ.get("SLURM_ARRAY_TASK_ID", "-1"))
        lines = Path(args.manifest).read_text().splitlines()
        if not 0 <= index < len(lines):
            print(f"error: index {index} is outside the manifest's {len(lines)} runs", file=sys.stderr)
            return EXIT_USAGE
        text = lines[index]
    try:
        result = run(RunSpec.from_json(text))
    except RunBusy as e:
        print(f"error: {e}", file=sys.stderr)
        print(f"busy: {e}", flush=True)  # the last line on stdout: what --cluster local reports
        return EXIT_BUSY
    except StopRequested as e:  # the run stays resumable: every finished epoch is in checkpoint.pt
        print(f"stopped: {e}; a relaunch resumes from the last checkpoint", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("stopped by Ctrl-C; a relaunch resumes from the last checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - reported in FAILED.json already
        print(f"error: {faults.naming(f'{type(e).__name__}: {e}')}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(result, sort_keys=True))
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
