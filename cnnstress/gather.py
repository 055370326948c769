"""Gather: turn the finished runs of a sweep into one report.

``python -m cnnstress.gather SWEEP_DIR`` (the Slurm gather job) or ``gather(sweep_dir, grid)`` (the
launcher, after local runs and for ``--gather``). Writes ``SWEEP_DIR/report/``: ``index.html`` (one
self-contained page), ``figures/*.png``, ``summary.json``, ``failures.json`` and ``runs.csv``.

Memory is bounded by one run, not by the sweep: runs are read one at a time with
``store.open_results``, each analysis takes the datasets it needs, and only reductions are kept
(accuracies, confusion matrices, per-class and per-threshold counts, a (N,) correct mask, a few
Grad-CAM maps). The one exception is the baseline's test logits of one group, kept until the
canonical failure cases are chosen (S x N x C float32). Each results.h5 is opened exactly once: the
baseline's first seed is read last among the baseline seeds, so that the canonical cases, which
need every baseline seed, are known while its Grad-CAM maps can still be read.

No torch and no training code here (engine, worker, models, augment, corrupt): gather runs on a
login node. Images come from ``data.load_test`` by index; when the dataset is not on this machine
the report says so and shows everything else.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

from . import data, store
from .analysis import calibration, compare, failures, gradcam, metrics, robustness, shortcut
from .config import RunSpec, spec_diff
from .grid import Grid, GridError, load_sweep_grid
from .report.model import Case, CaseView, Cell, Comparison, Group, Neighbour, ReportData

HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_seconds")
FAITHFULNESS_KINDS = ("deletion_gradcam", "deletion_random", "insertion_gradcam", "insertion_random")
RELIABILITY_BINS = 15
HIST_BINS = 20
N_NEIGHBOURS = 5
N_BOOT = 2000
IMAGE_SIZE = 32
BREAKING_SHOWN = 3  # classes listed per corruption as breaking first
# Grad-CAM rows per block when computing mask energy: (rows, 32, 32) float64 stays ~8 MiB.
_ENERGY_ROWS = 1024
# summary.json's `status` takes DESIGN.md's three values; `state` keeps what gather saw, finer:
#   broken  -> failed:  DONE.json exists but results.h5 cannot be used (truncated, wrong schema, hash
#                       mismatch): the run ended and left no usable result.
#   partial -> missing: checkpoint.pt (or results.h5) without DONE.json or FAILED.json: the run may
#                       still be running, or was killed (preemption, time limit, SIGKILL) and resumes
#                       on relaunch; gather cannot tell it has ended, so it is "no result yet", as DESIGN
#                       means by missing, not a failure.
RUN_STATUSES = ("done", "failed", "missing")
RUN_STATES = ("done", "failed", "broken", "partial", "missing")
STATUS_OF_STATE = {"done": "done", "failed": "failed", "broken": "failed", "partial": "missing", "missing": "missing"}


# ------------------------------------------------------------------------------------------------
# per-run reading
# ------------------------------------------------------------------------------------------------


@dataclass
class TestData:
    """The sweep's official test split as the dataset gives it; fields are None when unavailable."""

    images: np.ndarray | None = None  # (M, 3, 32, 32) uint8
    labels: np.ndarray | None = None  # (M,)
    mask: np.ndarray | None = None  # (M, 32, 32) bool (shapes)
    bg_class: np.ndarray | None = None  # (M,) (shapes)
    class_names: list[str] | None = None
    note: str = ""  # why images are unavailable


@dataclass
class Reference:
    """The test set every run must share (set by the first run read)."""

    labels: np.ndarray | None = None
    index: np.ndarray | None = None
    num_classes: int | None = None
    mask: np.ndarray | None = None  # (N, 32, 32) aligned with the stored positions
    bg_class: np.ndarray | None = None  # (N,)
    on_first: Callable[[Reference], None] | None = None  # called once the first run has set it

    def check(self, labels: np.ndarray, index: np.ndarray, num_classes: int, where: str) -> None:
        """Raise ResultsError when a run's test set differs from the first run's."""
        if self.labels is None:
            self.labels, self.index, self.num_classes = labels, index, num_classes
            if self.on_first is not None:
                self.on_first(self)
            return
        if labels.shape != self.labels.shape or num_classes != self.num_classes:
            raise store.ResultsError(
                f"{where}: test set has N={labels.shape[0]}, C={num_classes} but other runs of the sweep have "
                f"N={self.labels.shape[0]}, C={self.num_classes}")
        if not np.array_equal(labels, self.labels) or not np.array_equal(index, self.index):
            raise store.ResultsError(f"{where}: test/label or test/index differ from the other runs of the sweep")


@dataclass
class Plan:
    """What to take from one run beyond the per-run reductions."""

    pick: Callable[[np.ndarray], np.ndarray] | None = None  # logits -> positions whose Grad-CAM to keep
    neighbours: bool = False  # nearest training neighbours of the picked positions
    keep_logits: bool = False  # keep (N, C) float32 test logits (baseline seeds, for canonical cases)


@dataclass(frozen=True)
class FailureColumns:
    """One run's high-confidence failures as numpy columns (sorted by confidence descending).

    A dict per failure costs ~0.5 KiB of Python objects and every run's list lived until the end
    of gather; these columns cost 40 bytes per failure. Dicts are made only when writing
    (``record``/``records``). ``confidence`` stays float64: failures.json prints it in full.
    """

    test_index: np.ndarray  # (k,) int64, position in the dataset's official test split
    position: np.ndarray  # (k,) int64, row of the stored test set
    true: np.ndarray  # (k,) int64
    pred: np.ndarray  # (k,) int64
    confidence: np.ndarray  # (k,) float64 top softmax probability
    names: tuple[str, ...]  # class names, shared by every record

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def record(self, i: int) -> dict[str, Any]:
        """The failures.json entry of failure ``i`` (plain Python types, as failures.failure_records)."""
        true, pred = int(self.true[i]), int(self.pred[i])
        return {"test_index": int(self.test_index[i]), "position": int(self.position[i]),
                "true": true, "true_name": self.names[true], "pred": pred, "pred_name": self.names[pred],
                "confidence": float(self.confidence[i])}

    def records(self, stop: int | None = None) -> list[dict[str, Any]]:
        """The entries of the first ``stop`` failures (all when None)."""
        n = len(self) if stop is None else min(len(self), max(0, stop))
        return [self.record(i) for i in range(n)]


def failure_columns(probs: np.ndarray, logits: np.ndarray, labels: np.ndarray, index: np.ndarray,
                    threshold: float, names: list[str]) -> FailureColumns:
    """The same failures, in the same order, as ``failures.failure_records`` (columns, not dicts).

    ``probs`` is ``metrics.softmax(logits)`` (float64), already computed by the caller.
    """
    pos = metrics.high_confidence_failures(logits, labels, threshold)
    pred = probs[pos].argmax(axis=1).astype(np.int64)
    return FailureColumns(test_index=np.asarray(index, dtype=np.int64)[pos], position=pos,
                          true=np.asarray(labels, dtype=np.int64)[pos], pred=pred,
                          confidence=np.asarray(probs[pos, pred], dtype=np.float64),
                          names=tuple(str(x) for x in names))


@dataclass
class RunResult:
    """The reductions of one finished run (no (N, C) arrays unless keep_logits)."""

    spec: RunSpec
    history: dict[str, np.ndarray]
    accuracy: float
    correct: np.ndarray  # (N,) bool
    preds: np.ndarray  # (N,) int32
    conf: np.ndarray  # (N,) float32 top softmax probability
    confusion: np.ndarray
    per_class: np.ndarray
    high_conf: int
    threshold_counts: np.ndarray
    conf_hist: dict[str, np.ndarray]
    calibration: dict[str, float | None]
    reliability: dict[str, np.ndarray]
    failures: FailureColumns
    stress_acc: dict[tuple[str, int], float] = field(default_factory=dict)
    stress_class_correct: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    # calibration under corruption: ece, nll, brier, ece_after (the clean validation temperature applied)
    stress_calibration: dict[tuple[str, int], dict[str, float | None]] = field(default_factory=dict)
    stress_reliability: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    mca: float | None = None
    faithfulness: dict[str, Any] | None = None
    shortcut: dict[str, float | None] | None = None
    cam_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cams_pred: np.ndarray | None = None  # (k, 32, 32) float32
    cams_true: np.ndarray | None = None
    neighbours: list[list[tuple[int, int, float]]] | None = None  # per picked position: (train idx, label, sim)
    logits: np.ndarray | None = None
    gradcam_size: tuple[int, int] | None = None  # (h, w) of the stored maps, at spec.gradcam_layer


def _spec_from_attrs(attrs: dict[str, Any], expected: RunSpec, where: str) -> RunSpec:
    """The run's own spec (results.h5 attrs), which must be the expected run."""
    if attrs.get("run_id") != expected.run_id:
        raise store.ResultsError(f"{where}: holds run {attrs.get('run_id')!r}, expected {expected.run_id!r}")
    try:
        return RunSpec.from_dict(attrs["spec"])
    except (KeyError, TypeError, ValueError):
        return expected  # an older spec layout: the grid's spec describes the same run


def _nanmean(values: np.ndarray) -> float | None:
    """Mean ignoring NaN; None when nothing is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def _read_rows(res: store.Results, key: str, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` of a dataset, one slice each (a few rows; never the whole array)."""
    if positions.size == 0:
        return np.zeros((0, *res.shape(key)[1:]), dtype=np.float32)
    return np.stack([res.read(key, rows=slice(int(p), int(p) + 1))[0] for p in positions])


def _cams_and_energy(res: store.Results, positions: np.ndarray, mask: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
    """Grad-CAM (predicted class) at ``positions``, and each map's energy inside the object mask.

    With a mask the maps are read in blocks of rows (all of them are needed); without, only the
    picked rows are read.
    """
    key = "test/gradcam/pred"
    if mask is None:
        return _read_rows(res, key, positions), None
    n = res.shape(key)[0]
    energy = np.full(n, np.nan)
    picked: dict[int, np.ndarray] = {}
    wanted = set(int(p) for p in positions)
    for start in range(0, n, _ENERGY_ROWS):
        stop = min(n, start + _ENERGY_ROWS)
        block = res.read(key, rows=slice(start, stop))
        energy[start:stop] = gradcam.energy_in_mask(block, mask[start:stop])
        for p in wanted.intersection(range(start, stop)):
            picked[p] = block[p - start]
    maps = np.stack([picked[int(p)] for p in positions]) if positions.size else np.zeros((0, *res.shape(key)[1:]))
    return maps, energy


def _neighbours(res: store.Results, positions: np.ndarray) -> list[list[tuple[int, int, float]]] | None:
    """The N_NEIGHBOURS training images most cosine-similar to each picked test image."""
    if positions.size == 0 or not res.has("train_subset/embedding"):
        return None
    train = res.read("train_subset/embedding").astype(np.float64)
    tidx = res.read("train_subset/index").astype(np.int64)
    tlab = res.read("train_subset/label").astype(np.int64)
    query = _read_rows(res, "test/embedding", positions).astype(np.float64)
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sims = query @ train.T
    out = []
    for row in sims:
        top = np.argsort(-row, kind="stable")[:N_NEIGHBOURS]
        out.append([(int(tidx[j]), int(tlab[j]), float(row[j])) for j in top])
    return out


def _faithfulness(res: store.Results) -> dict[str, Any] | None:
    """Mean deletion/insertion curves and mean AUC per kind (Grad-CAM vs random maps)."""
    curves, aucs, n = {}, {}, 0
    for kind in FAITHFULNESS_KINDS:
        key = f"faithfulness/{kind}"
        if not res.has(key):
            continue
        arr = res.read(key).astype(np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2 or not np.isfinite(arr).all():
            continue
        curves[kind] = arr.mean(axis=0)
        aucs[kind] = float(np.mean(gradcam.auc(arr)))
        n = arr.shape[0]
    return {"curves": curves, "auc": aucs, "n": n} if curves else None


STRESS_CALIBRATION_KEYS = ("ece", "nll", "brier", "ece_after")


def _stress(res: store.Results, labels: np.ndarray, num_classes: int, out: RunResult) -> None:
    """Accuracy, per-class right counts and calibration on every corrupted test set, one set at a time.

    Calibration uses the temperature fitted on the clean validation logits (out.calibration): the
    question is whether the clean fix still holds under a shift the model never saw, so T is not
    refitted on the corrupted set.
    """
    temperature = out.calibration.get("temperature")
    for corruption, severity in res.stress_keys():
        key = (corruption, severity)
        logits = res.read(f"stress/{corruption}/{severity}/logits")
        preds = metrics.predictions(logits)
        out.stress_acc[key] = metrics.accuracy(labels, preds)
        # float16 logits can overflow to inf on a saturated input: no calibration then, rather than a crash
        if np.isfinite(logits).all():
            sc = calibration.scores_at_temperature(logits, labels, temperature)
            out.stress_calibration[key] = {k: sc[k] for k in STRESS_CALIBRATION_KEYS}
            out.stress_reliability[key] = sc["reliability"]
        else:
            out.stress_calibration[key] = dict.fromkeys(STRESS_CALIBRATION_KEYS)
        out.stress_class_correct[(corruption, severity)] = np.bincount(labels[preds == labels], minlength=num_classes)
    if out.stress_acc:
        out.mca = robustness.corruption_table(out.accuracy, out.stress_acc)["mean_corruption_accuracy"]


def read_run(path: Path, expected: RunSpec, ref: Reference, plan: Plan, threshold: float,
             class_names: list[str] | None) -> RunResult:
    """Open one results.h5 once and reduce it (see RunResult). Raises ResultsError when broken."""
    where = str(path)
    with store.open_results(path) as res:
        spec = _spec_from_attrs(res.attrs, expected, where)
        labels = res.read("test/label").astype(np.int64)
        index = res.read("test/index").astype(np.int64)
        logits = res.read("test/logits").astype(np.float32, copy=False)
        n, c = logits.shape
        ref.check(labels, index, c, where)
        names = class_names if class_names is not None and len(class_names) == c else _generic_names(c)
        probs = metrics.softmax(logits)
        preds = probs.argmax(axis=1)
        conf = probs.max(axis=1)
        fails = failure_columns(probs, logits, labels, index, threshold, names)
        del probs
        correct = preds == labels
        val_logits = val_labels = None
        if res.has("val/logits"):
            val_logits, val_labels = res.read("val/logits"), res.read("val/label").astype(np.int64)
        out = RunResult(
            spec=spec,
            history={k: np.asarray(res.read(f"history/{k}"), dtype=np.float64) for k in HISTORY_KEYS},
            accuracy=metrics.accuracy(labels, preds),
            correct=correct,
            preds=preds.astype(np.int32),
            conf=conf.astype(np.float32),
            confusion=metrics.confusion_matrix(labels, preds, c),
            per_class=metrics.per_class_accuracy(labels, preds, c),
            high_conf=len(fails),
            threshold_counts=metrics.threshold_counts(logits, labels),
            conf_hist=metrics.confidence_histograms(logits, labels, HIST_BINS),
            calibration=calibration.calibration_summary(logits, labels, val_logits, val_labels),
            reliability=calibration.reliability(metrics.softmax(logits), labels, RELIABILITY_BINS),
            failures=fails,
        )
        if res.has("test/gradcam/pred"):
            h, w = res.shape("test/gradcam/pred")[1:3]
            out.gradcam_size = (int(h), int(w))
        _stress(res, labels, c, out)
        out.faithfulness = _faithfulness(res)
        positions = np.asarray(plan.pick(logits) if plan.pick is not None else [], dtype=np.int64)
        if ref.mask is not None or positions.size:
            maps, energy = _cams_and_energy(res, positions, ref.mask)
            if positions.size:
                out.cam_positions = positions
                out.cams_pred = gradcam.upsample_bilinear(maps, IMAGE_SIZE)
                out.cams_true = gradcam.upsample_bilinear(_read_rows(res, "test/gradcam/true", positions), IMAGE_SIZE)
            if energy is not None and ref.bg_class is not None:
                sc = shortcut.shortcut_accuracy(labels, preds, ref.bg_class)
                out.shortcut = {
                    "energy_right": _nanmean(energy[correct]), "energy_wrong": _nanmean(energy[~correct]),
                    "energy_all": _nanmean(energy), **{k: (None if isinstance(v, float) and math.isnan(v) else v)
                                                        for k, v in sc.items()},
                }
        if plan.neighbours:
            out.neighbours = _neighbours(res, positions)
        if plan.keep_logits:
            out.logits = np.array(logits, dtype=np.float32)
    return out


def _generic_names(c: int) -> list[str]:
    return [f"class {i}" for i in range(c)]


# ------------------------------------------------------------------------------------------------
# the sweep
# ------------------------------------------------------------------------------------------------


@dataclass
class Entry:
    """One expected run: where it is, its state, and its reductions once read."""

    spec: RunSpec
    run_dir: Path
    group: str
    state: str = "missing"  # one of RUN_STATES
    reason: str = ""
    result: RunResult | None = None
    restarts: int | None = None  # Slurm requeues (preemption, time limit) before the run finished
    finished_at: str = ""  # DONE.json's finish time

    @property
    def status(self) -> str:
        """DESIGN.md's status (done, failed or missing) of the state."""
        return STATUS_OF_STATE.get(self.state, "missing")  # a state this gather does not know: no result


def _results_as_of(entries: list[Entry]) -> str:
    """The newest finish time among the finished runs. The report stamps this, not the wall clock,
    so it is a function of its inputs: gathering unchanged runs again rewrites nothing."""
    times = [e.finished_at for e in entries if e.status == "done" and e.finished_at]
    return max(times) if times else "no finished runs"


def group_label(spec: RunSpec) -> str:
    """The non-seed grid values of a run as text ("" when the grid varies only the seed)."""
    return ", ".join(f"{k}={v}" for k, v in sorted(spec.grid_values.items()) if k != "seed")


def _load_test_data(spec: RunSpec) -> TestData:
    """The official test split and class names, or a note saying why they are unavailable."""
    out = TestData()
    try:
        split = data.load_test(spec.dataset.name, spec.paths.data_root, spec.dataset.params)
        info = data.dataset_info(spec.dataset.name, spec.paths.data_root, spec.dataset.params)
    except Exception as exc:  # noqa: BLE001 - DataError, OSError, ...: the report goes on without images
        out.note = f"test images unavailable ({type(exc).__name__}: {exc})"
        return out
    out.images, out.labels = split.x, np.asarray(split.y, dtype=np.int64)
    out.mask, out.bg_class = split.mask, split.bg_class
    out.class_names = [str(n) for n in info.class_names]
    return out


def _align_test(test: TestData, ref: Reference) -> str:
    """Check the dataset against the stored test set and align the shortcut arrays; note on mismatch."""
    if test.images is None or ref.index is None:
        return ""
    if ref.index.size and (ref.index.max() >= test.labels.shape[0]):
        note = f"test images unavailable (stored test/index reaches {int(ref.index.max())}, the dataset has {test.labels.shape[0]} test images)"
    elif not np.array_equal(test.labels[ref.index], ref.labels):
        note = "test images unavailable (the dataset's labels differ from the stored ones: other dataset options?)"
    else:
        if test.mask is not None and test.bg_class is not None:
            ref.mask, ref.bg_class = test.mask[ref.index], np.asarray(test.bg_class[ref.index], dtype=np.int64)
        return ""
    test.images = test.mask = test.bg_class = None
    return note


def _image(test: TestData, official_index: int) -> np.ndarray | None:
    if test.images is None:
        return None
    return np.ascontiguousarray(test.images[official_index].transpose(1, 2, 0))


class _Reader:
    """Reads the done runs of a sweep in the order that needs each file opened once."""

    def __init__(self, grid: Grid, test: TestData, console: Console):
        self.grid, self.test, self.console = grid, test, console
        self.ref = Reference(on_first=self._on_first)
        self.threshold = float(grid.report["confidence_threshold"])
        self.k_cases = int(grid.report["canonical_cases"])
        self.canonical: dict[str, np.ndarray] = {}  # group -> positions
        self.case_notes: dict[str, str] = {}

    def read(self, entry: Entry, plan: Plan) -> RunResult | None:
        try:
            entry.result = read_run(entry.run_dir / store.RESULTS_NAME, entry.spec, self.ref, plan, self.threshold,
                                    self.test.class_names)
        except (ValueError, KeyError, OSError) as exc:  # ResultsError is a ValueError
            entry.state = "broken"
            entry.reason = str(exc) if isinstance(exc, store.ResultsError) else f"{type(exc).__name__}: {exc}"
            entry.result = None
            self.console.print(f"[yellow]run {rich_escape(entry.spec.run_id)} is broken:[/yellow] "
                               f"{rich_escape(entry.reason)}", highlight=False)
        return entry.result

    def _on_first(self, ref: Reference) -> None:
        # The first run read fixes the test set: check the dataset against it once and align the
        # shortcut arrays, before that run's Grad-CAM energy is computed.
        note = _align_test(self.test, ref)
        if note:
            self.test.note = note

    def read_group(self, label: str, entries: list[Entry]) -> None:
        done = [e for e in entries if e.status == "done"]
        base = sorted((e for e in done if e.spec.variant == self.grid.baseline), key=lambda e: e.spec.seed)
        base_logits: list[np.ndarray] = []
        for e in base[1:]:
            r = self.read(e, Plan(keep_logits=True))
            if r is not None:
                base_logits.append(r.logits)
                r.logits = None
        positions = np.zeros(0, np.int64)
        if base:
            k, thr = self.k_cases, self.threshold

            def pick(logits: np.ndarray) -> np.ndarray:
                stack = np.stack(base_logits + [np.asarray(logits, dtype=np.float32)])
                return failures.canonical_failures(stack, self.ref.labels, thr, k=k)

            r = self.read(base[0], Plan(pick=pick, neighbours=True))
            if r is not None:
                positions = r.cam_positions
            elif base_logits:
                positions = failures.canonical_failures(np.stack(base_logits), self.ref.labels, self.threshold,
                                                        k=self.k_cases)
                self.case_notes[label] = (f"the baseline's first seed ({base[0].spec.seed}) is broken: its Grad-CAM "
                                          "maps and neighbours are not shown")
        del base_logits
        self.canonical[label] = positions
        for variant in self.grid.variants:
            if variant == self.grid.baseline:
                continue
            have_cams = False
            for e in sorted((e for e in done if e.spec.variant == variant), key=lambda e: e.spec.seed):
                plan = Plan(pick=(lambda _l, p=positions: p) if not have_cams and positions.size else None)
                r = self.read(e, plan)
                have_cams = have_cams or (r is not None and plan.pick is not None)


# ------------------------------------------------------------------------------------------------
# summaries over seeds
# ------------------------------------------------------------------------------------------------


def _mean_or_none(values: list[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def _stack_history(results: list[RunResult]) -> dict[str, np.ndarray]:
    """History arrays as (S, E), cut to the shortest run (runs of one cell have the same epochs)."""
    e = min(r.history["epoch"].shape[0] for r in results)
    return {k: np.stack([r.history[k][:e] for r in results]) for k in HISTORY_KEYS}


def _pooled_reliability(results: list[RunResult]) -> dict[str, np.ndarray]:
    """Reliability bins pooled over seeds (count-weighted accuracy and confidence)."""
    return _pool_bins([r.reliability for r in results])


def _pool_bins(rels: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Reliability bins pooled over several sets (count-weighted accuracy and confidence)."""
    count = np.sum([r["count"] for r in rels], axis=0)
    acc_sum = np.sum([np.nan_to_num(r["accuracy"]) * r["count"] for r in rels], axis=0)
    conf_sum = np.sum([np.nan_to_num(r["confidence"]) * r["count"] for r in rels], axis=0)
    acc = np.full(count.shape, np.nan)
    conf = np.full(count.shape, np.nan)
    np.divide(acc_sum, count, out=acc, where=count > 0)
    np.divide(conf_sum, count, out=conf, where=count > 0)
    return {"bin_edges": rels[0]["bin_edges"], "accuracy": acc, "confidence": conf, "count": count}


def _breaking_first(confusion: np.ndarray, class_correct: dict[int, np.ndarray], names: list[str]
                    ) -> list[tuple[str, float]]:
    """Classes whose accuracy drops most at the lowest severity, pooled over seeds: the ranking of
    ``analysis.robustness.rank_breaking`` over per-class right counts summed over seeds, so gather
    keeps (C,) counts per corrupted set instead of (N,) predictions."""
    support = confusion.sum(axis=1).astype(np.float64)
    present = support > 0

    def per_class(right: np.ndarray) -> np.ndarray:
        return np.where(present, right / np.where(present, support, 1.0), np.nan)

    order, drop_low = robustness.rank_breaking(per_class(np.diag(confusion)),
                                               {s: per_class(c) for s, c in class_correct.items()})
    return [(names[i], float(drop_low[i])) for i in order[:BREAKING_SHOWN] if present[i]]


def _acc_stats(accs: list[float]) -> tuple[float | None, float | None, tuple[float, float] | None]:
    if not accs:
        return None, None, None
    st = compare.mean_std_ci(accs, compare.ACCURACY)
    if st["n"] < 2:  # one seed says nothing about seed-to-seed spread
        return st["mean"], None, None
    return st["mean"], st["std"], (float(st["ci95"][0]), float(st["ci95"][1]))


def build_cell(variant: str, group: str, entries: list[Entry], is_baseline: bool, color: int, label: str,
               names: list[str], test: TestData, top_k: int) -> Cell:
    """Summarise the read runs of one (group, variant) over seeds."""
    cell = Cell(label=label, variant=variant, group=group, is_baseline=is_baseline, color=color)
    done = sorted((e for e in entries if e.result is not None), key=lambda e: e.spec.seed)
    if not done:
        return cell
    rs = [e.result for e in done]
    cell.run_ids = [e.spec.run_id for e in done]
    cell.seeds = [e.spec.seed for e in done]
    cell.accuracies = [r.accuracy for r in rs]
    cell.acc_mean, cell.acc_std, cell.acc_ci95 = _acc_stats(cell.accuracies)
    cell.high_conf = [r.high_conf for r in rs]
    cell.history = _stack_history(rs)
    cell.confusion = np.sum([r.confusion for r in rs], axis=0)
    with warnings.catch_warnings():  # classes absent from the test set stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        cell.per_class = np.nanmean(np.stack([r.per_class for r in rs]), axis=0)
    cell.threshold_counts = np.mean([r.threshold_counts for r in rs], axis=0)
    cell.conf_hist = {"edges": rs[0].conf_hist["edges"],
                      "right_counts": np.sum([r.conf_hist["right_counts"] for r in rs], axis=0),
                      "wrong_counts": np.sum([r.conf_hist["wrong_counts"] for r in rs], axis=0)}
    cell.calibration = {k: _mean_or_none([r.calibration.get(k) for r in rs])
                        for k in ("ece", "nll", "brier", "temperature", "ece_after", "nll_after")}
    cell.reliability = _pooled_reliability(rs)
    keys = sorted({k for r in rs for k in r.stress_acc})
    for corruption in sorted({c for c, _ in keys}):
        sevs = sorted(s for c, s in keys if c == corruption)
        cell.stress[corruption] = {
            "severities": sevs,
            "accuracy": [float(np.mean([r.stress_acc[(corruption, s)] for r in rs if (corruption, s) in r.stress_acc]))
                         for s in sevs],
            **{k: [_mean_or_none([r.stress_calibration.get((corruption, s), {}).get(k) for r in rs]) for s in sevs]
               for k in STRESS_CALIBRATION_KEYS}}
        complete = [r for r in rs if all((corruption, s) in r.stress_class_correct for s in sevs)]
        if complete:
            pooled = {s: np.sum([r.stress_class_correct[(corruption, s)] for r in complete], axis=0) for s in sevs}
            conf_sum = np.sum([r.confusion for r in complete], axis=0)
            cell.breaking[corruption] = _breaking_first(conf_sum, pooled, names)
    cell.mca = _mean_or_none([r.mca for r in rs])
    # the layer each run's maps come from (its own spec) and their size before upsampling; one entry
    # unless runs of the cell disagree (then every one is listed rather than one picked)
    cell.gradcam = list(dict.fromkeys((r.spec.gradcam_layer, r.gradcam_size) for r in rs))
    cell.corruption_calibration = {k: _mean_or_none([e for v in cell.stress.values() for e in v[k]])
                                   for k in STRESS_CALIBRATION_KEYS}
    # one reliability diagram under corruption: each corruption at its highest severity, pooled over
    # corruptions and seeds (the severity where miscalibration shows most)
    worst = [r.stress_reliability[(c, v["severities"][-1])] for c, v in cell.stress.items() for r in rs
             if (c, v["severities"][-1]) in r.stress_reliability]
    if worst:
        cell.stress_reliability = _pool_bins(worst)
    faith = [r.faithfulness for r in rs if r.faithfulness]
    if faith:
        kinds = [k for k in FAITHFULNESS_KINDS if all(k in f["curves"] for f in faith)]
        cell.faithfulness = {"curves": {k: np.mean([f["curves"][k] for f in faith], axis=0) for k in kinds},
                             "auc": {k: float(np.mean([f["auc"][k] for f in faith])) for k in kinds},
                             "n": int(sum(f["n"] for f in faith)), "runs": len(faith)}
    sc = [r.shortcut for r in rs if r.shortcut]
    if sc:
        cell.shortcut = {k: _mean_or_none([s.get(k) for s in sc]) for k in sc[0]}
    first = rs[0]
    cell.top_failures_seed = done[0].spec.seed
    for rec in first.failures.records(top_k):
        cell.top_failures.append({**rec, "image": _image(test, rec["test_index"])})
    return cell


def _case_view(results: list[tuple[int, RunResult]], pos: int, names: list[str]) -> CaseView | None:
    """How the first seed (and every seed, for right_seeds) saw one canonical case."""
    if not results:
        return None
    seed, first = results[0]
    cam_pred = cam_true = None
    hit = np.flatnonzero(first.cam_positions == pos)
    if hit.size and first.cams_pred is not None:
        cam_pred, cam_true = first.cams_pred[hit[0]], first.cams_true[hit[0]]
    pred = int(first.preds[pos])
    return CaseView(seed=seed, pred_name=names[pred], confidence=float(first.conf[pos]), cam_pred=cam_pred,
                    cam_true=cam_true, right_seeds=int(sum(bool(r.correct[pos]) for _, r in results)),
                    n_seeds=len(results))


def _done_results(entries: list[Entry], variant: str) -> list[tuple[int, RunResult]]:
    return [(e.spec.seed, e.result) for e in sorted(entries, key=lambda e: e.spec.seed)
            if e.spec.variant == variant and e.result is not None]


def build_cases(positions: np.ndarray, base: list[tuple[int, RunResult]], ref: Reference, names: list[str],
                test: TestData, threshold: float, train_images: dict[int, np.ndarray]) -> list[Case]:
    """The canonical failure cases of a group, as the baseline sees them."""
    cases = []
    first = base[0][1] if base else None
    for j, pos in enumerate(int(p) for p in positions):
        fails = [(not r.correct[pos]) and float(r.conf[pos]) > threshold for _, r in base]
        neighbours = []
        if first is not None and first.neighbours is not None and pos in set(first.cam_positions.tolist()):
            row = int(np.flatnonzero(first.cam_positions == pos)[0])
            for tidx, tlab, sim in first.neighbours[row]:
                neighbours.append(Neighbour(train_index=tidx, label_name=names[tlab] if tlab < len(names) else str(tlab),
                                            similarity=sim, image=train_images.get(tidx)))
        cases.append(Case(position=pos, test_index=int(ref.index[pos]), true_name=names[int(ref.labels[pos])],
                          image=_image(test, int(ref.index[pos])),
                          fail_fraction=float(np.mean(fails)) if fails else 0.0,
                          baseline=_case_view(base, pos, names), neighbours=neighbours))
    return cases


def _train_images(spec: RunSpec, wanted: set[int]) -> tuple[dict[int, np.ndarray], str]:
    """Official training images by index (for nearest neighbours); empty with a note when unavailable."""
    if not wanted:
        return {}, ""
    try:
        splits = data.load_splits(spec.dataset.name, spec.paths.data_root, val_fraction=spec.train.val_fraction,
                                  split_seed=spec.train.split_seed, options=spec.dataset.params)
    except Exception as exc:  # noqa: BLE001 - the neighbours are still listed, without images
        return {}, f"training images unavailable ({type(exc).__name__}: {exc})"
    out = {}
    for part in (splits.train, splits.val):
        where = {int(i): p for p, i in enumerate(part.index)}
        for idx in wanted:
            if idx in where:
                out[idx] = np.ascontiguousarray(part.x[where[idx]].transpose(1, 2, 0))
    return out, ""


def build_comparison(group: Group, base_cell: Cell, var_cell: Cell, entries: list[Entry], baseline: str,
                     positions: np.ndarray, names: list[str]) -> Comparison | None:
    """compare_variant over sorted-seed pairs, the per-class delta and the variant's view of the cases."""
    base = _done_results(entries, baseline)
    var = _done_results(entries, var_cell.variant)
    if not base or not var:
        return None
    stats = compare.compare_variant(np.stack([r.correct for _, r in base]), np.stack([r.correct for _, r in var]),
                                    n_boot=N_BOOT, seed=0)
    base_ids = base_cell.run_ids
    var_ids = var_cell.run_ids
    for p in stats["pairs"]:
        i = p["pair"]
        p.update(base_seed=base[i][0], var_seed=var[i][0], base_run_id=base_ids[i], var_run_id=var_ids[i])
    order, delta = metrics.per_class_delta(base_cell.per_class, var_cell.per_class)
    comp = Comparison(variant=var_cell.variant, baseline=baseline, group=group.label, label=var_cell.label,
                      stats=stats, per_class_order=order, per_class_delta=delta)
    comp.cases = [_case_view(var, int(p), names) for p in positions]
    return comp


def _spec_for(entries: list[Entry], variant: str) -> RunSpec | None:
    """The variant's spec: from a read results.h5 when there is one, else the grid's."""
    specs = [e for e in entries if e.spec.variant == variant]
    for e in specs:
        if e.result is not None:
            return e.result.spec
    return specs[0].spec if specs else None


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def shortcut_sentence(cells: list[Cell]) -> str:
    """'baseline follows the background on X% of conflicting images; cropflip on Y%'."""
    parts = []
    for c in cells:
        if c.shortcut and c.shortcut.get("follows_background") is not None:
            fb = _fmt_pct(c.shortcut["follows_background"])
            parts.append(f"{c.variant} follows the background on {fb} of conflicting images" if not parts
                         else f"{c.variant} on {fb}")
    return "; ".join(parts) + "." if parts else ""


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)


def _run_row(e: Entry) -> dict[str, Any]:
    r = e.result
    row: dict[str, Any] = {
        "run_id": e.spec.run_id, "variant": e.spec.variant, "seed": e.spec.seed, "group": e.group,
        "grid_values": e.spec.grid_values, "status": e.status, "state": e.state,
        "test_accuracy": r.accuracy if r else None, "high_conf_failures": r.high_conf if r else None,
        "ece": r.calibration["ece"] if r else None, "nll": r.calibration["nll"] if r else None,
        "brier": r.calibration["brier"] if r else None,
        "temperature": r.calibration["temperature"] if r else None,
        "ece_after": r.calibration["ece_after"] if r else None,
        "mean_corruption_accuracy": r.mca if r else None,
        "faithfulness_auc": (r.faithfulness or {}).get("auc") if r else None,
        "follows_background": (r.shortcut or {}).get("follows_background") if r else None,
        "restarts": e.restarts,
    }
    if e.status != "done" or e.reason:
        row["reason"] = e.reason
    return row


def _variant_summary(cell: Cell) -> dict[str, Any]:
    return {
        "variant": cell.variant, "group": cell.group, "baseline": cell.is_baseline, "n_runs": cell.n_runs,
        "seeds": cell.seeds, "run_ids": cell.run_ids,
        "test_accuracy_mean": cell.acc_mean, "test_accuracy_std": cell.acc_std, "ci95": cell.acc_ci95,
        "high_conf_failures_mean": _mean_or_none(cell.high_conf),
        **{f"{k}_mean": v for k, v in cell.calibration.items()},
        "mean_corruption_accuracy": cell.mca,
        "corruption_accuracy": {c: dict(zip((str(s) for s in v["severities"]), v["accuracy"]))
                                for c, v in cell.stress.items()},
        # per corruption, the classes whose accuracy drops most at the lowest severity (pooled over seeds)
        "breaking_first": {c: [{"class": name, "accuracy_drop": drop} for name, drop in v]
                           for c, v in cell.breaking.items()},
        # per corruption and severity: ECE, NLL, Brier and the ECE after the temperature fitted on
        # clean validation logits; then each one's mean over every corrupted set
        **{f"corruption_{k}": {c: dict(zip((str(s) for s in v["severities"]), v[k])) for c, v in cell.stress.items()}
           for k in STRESS_CALIBRATION_KEYS},
        **{f"mean_corruption_{k}": cell.corruption_calibration.get(k) for k in STRESS_CALIBRATION_KEYS},
        "faithfulness_auc": cell.faithfulness["auc"] if cell.faithfulness else None,
        "gradcam": _gradcam_summary(cell),
        "shortcut": cell.shortcut,
        "differs_from_baseline": [{"key": k, "baseline": a, "variant": b} for k, a, b in cell.diff],
    }


def _gradcam_summary(cell: Cell) -> dict[str, Any] | None:
    """{"layer", "map_size": [h, w]} of the cell's Grad-CAM maps; a list of them if its runs differ."""
    out = [{"layer": layer, "map_size": list(size) if size else None} for layer, size in cell.gradcam]
    return None if not out else out[0] if len(out) == 1 else out


def _comparison_summary(comp: Comparison) -> dict[str, Any]:
    s = comp.stats
    return {
        "variant": comp.variant, "baseline": comp.baseline, "group": comp.group,
        "n_pairs": s["n_pairs"], "accuracy_delta_mean": s["accuracy_delta_mean"], "ci95": s["ci95"],
        "corrected": s["corrected"], "worsened": s["worsened"], "both_wrong": s["both_wrong"],
        "both_right": s["both_right"],
        "pairs": [{"base_seed": p["base_seed"], "var_seed": p["var_seed"], "base_run_id": p["base_run_id"],
                   "var_run_id": p["var_run_id"], "corrected": p["corrected"], "worsened": p["worsened"],
                   "both_wrong": p["both_wrong"], "both_right": p["both_right"],
                   "mcnemar_p": p["mcnemar"]["p_value"], "mcnemar_method": p["mcnemar"]["method"]}
                  for p in s["pairs"]],
        "baseline_noise_floor": s["baseline_noise_floor"], "variant_disagreement": s["variant_disagreement"],
        "disagreement_exceeds_floor": s["disagreement_exceeds_floor"],
        "persistent_failures": s["persistent_failures"],
        "variant_persistent_failures": s["variant_persistent_failures"], "exceeds_noise": s["exceeds_noise"],
        "verdict": s["verdict"],
    }


def cell_key(cell: Cell, n_groups: int) -> str:
    return cell.variant if n_groups <= 1 or not cell.group else f"{cell.variant} [{cell.group}]"


def build_summary(grid: Grid, entries: list[Entry], report: ReportData) -> dict[str, Any]:
    """summary.json: at least DESIGN.md's fields (sweep, runs, variants, comparisons)."""
    n_groups = len(report.groups)
    cases = []
    for g in report.groups:
        for j, case in enumerate(g.cases):
            cases.append({"group": g.label, "position": case.position, "test_index": case.test_index,
                          "true": case.true_name, "fail_fraction": case.fail_fraction,
                          "baseline_pred": case.baseline.pred_name if case.baseline else None,
                          "baseline_right_seeds": case.baseline.right_seeds if case.baseline else None,
                          # nearest training images in the first baseline seed's embedding space
                          "neighbours": [{"train_index": n.train_index, "label": n.label_name,
                                          "similarity": n.similarity} for n in case.neighbours],
                          "variants": {c.variant: ({"pred": c.cases[j].pred_name,
                                                    "right_seeds": c.cases[j].right_seeds,
                                                    "n_seeds": c.cases[j].n_seeds} if c.cases[j] else None)
                                       for c in g.comparisons}})
    return jsonable({
        "sweep": grid.name,
        "generated_at": report.generated_at,
        "dataset": report.dataset,
        "baseline": grid.baseline,
        "confidence_threshold": report.threshold,
        "n_expected": len(entries),
        "status_counts": report.status_counts,
        "state_counts": report.state_counts,
        "images_available": not any(n.startswith("test images unavailable") for n in report.notes),
        "notes": report.notes,
        "summary": report.summary_lines,
        "runs": [_run_row(e) for e in entries],
        "variants": {cell_key(c, n_groups): _variant_summary(c) for c in report.cells},
        "comparisons": [_comparison_summary(c) for c in report.comparisons],
        "canonical_cases": cases,
    })


_RUNS_SLOT = "\x00runs\x00"  # stands in for the runs list in the skeleton of failures.json


def _failures_run(e: Entry) -> dict[str, Any]:
    """One run's entry of failures.json (its dicts exist only while it is written)."""
    fails = e.result.failures
    return jsonable({"run_id": e.spec.run_id, "variant": e.spec.variant, "seed": e.spec.seed, "group": e.group,
                     "count": len(fails), "failures": fails.records()})


def iter_failures_json(grid: Grid, entries: list[Entry], threshold: float) -> Iterator[str]:
    """The text of failures.json in pieces, one run at a time.

    Byte for byte what ``store.atomic_write_json`` writes for the whole document (sorted keys,
    indent 2, trailing newline): the skeleton is dumped with a placeholder for the runs list, and
    each run is dumped alone and indented to its depth (JSON strings hold no raw newline, so
    indenting every line is safe).
    """
    head, tail = store.json_text(jsonable({"sweep": grid.name, "confidence_threshold": threshold,
                                        "runs": _RUNS_SLOT})).split(json.dumps(_RUNS_SLOT))
    yield head
    first = True
    for e in entries:
        if e.result is None:
            continue
        yield ("[\n    " if first else ",\n    ") + store.json_text(_failures_run(e)).replace("\n", "\n    ")
        first = False
    yield ("[]" if first else "\n  ]") + tail + "\n"


CSV_COLUMNS = ("run_id", "variant", "seed", "group", "status", "state", "reason", "test_accuracy", "high_conf_failures",
               "ece", "nll", "brier", "temperature", "ece_after", "mean_corruption_accuracy", "follows_background")


def build_runs_csv(entries: list[Entry]) -> str:
    """runs.csv: one row per expected run."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = jsonable(_run_row(e))
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def _status_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"run_id": e.spec.run_id, "variant": e.spec.variant, "seed": e.spec.seed, "group": e.group,
             "status": e.status, "state": e.state, "reason": e.reason, "restarts": e.restarts} for e in entries]


def print_headline(report: ReportData, console: Console) -> None:
    """The headline numbers as a rich table."""
    table = Table(title=Text(f"{report.sweep}: test accuracy over seeds"), title_justify="left")
    for col in ("variant", "n", "accuracy", "delta vs baseline [95% CI]", "high-conf failures", "ECE"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    comps = {(c.group, c.variant): c for c in report.comparisons}
    for cell in report.cells:
        acc = "n/a" if cell.acc_mean is None else (
            f"{100 * cell.acc_mean:.2f}%" + (f" ± {100 * cell.acc_std:.2f}" if cell.acc_std is not None else ""))
        comp = comps.get((cell.group, cell.variant))
        if cell.is_baseline:
            delta = "(baseline)"
        elif comp is None:
            delta = "n/a"
        else:
            lo, hi = comp.stats["ci95"]
            delta = f"{100 * comp.stats['accuracy_delta_mean']:+.2f} [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        hc = _mean_or_none(cell.high_conf)
        ece = cell.calibration.get("ece")
        row = (cell.label, str(cell.n_runs), acc, delta, "n/a" if hc is None else f"{hc:.1f}",
               "n/a" if ece is None else f"{ece:.3f}")
        table.add_row(*(Text(x) for x in row))  # Text: labels like "v [k=1]" are not markup
    console.print(table)


def _summary_lines(entries: list[Entry], report: ReportData) -> list[str]:
    lines = []
    counts = report.status_counts
    n = len(entries)
    done = counts.get("done", 0)
    line = f"{done} of {n} runs finished"
    states = report.state_counts
    others = []
    for s in RUN_STATUSES[1:]:
        if counts.get(s):
            finer = [f"{states[t]} {t}" for t in RUN_STATES if t != s and STATUS_OF_STATE[t] == s and states.get(t)]
            others.append(f"{counts[s]} {s}" + (f" ({', '.join(finer)})" if finer else ""))
    lines.append(line + (f" ({', '.join(others)}; see Run status)." if others else "."))
    for comp in report.comparisons:
        where = f" [{comp.group}]" if comp.group else ""
        lines.append(f"{comp.variant} vs {comp.baseline}{where}: {comp.stats['verdict']}.")
    for g in report.groups:
        where = f" [{g.label}]" if g.label else ""
        if g.cells and not g.cells[0].n_runs and any(c.n_runs for c in g.cells[1:]):
            lines.append(f"No comparison{where}: the baseline '{report.baseline}' has no finished run.")
    for g in report.groups:
        if g.shortcut_sentence:
            lines.append(("Background shortcut" + (f" [{g.label}]" if g.label else "") + ": ") + g.shortcut_sentence)
    return lines


# ------------------------------------------------------------------------------------------------
# gather
# ------------------------------------------------------------------------------------------------


def _group_entries(grid: Grid, sweep_dir: Path) -> tuple[list[Entry], dict[str, list[Entry]]]:
    entries, groups = [], {}
    for spec in grid.runs:
        e = Entry(spec=spec, run_dir=sweep_dir / "runs" / spec.run_id, group=group_label(spec))
        entries.append(e)
        groups.setdefault(e.group, []).append(e)
    return entries, groups


def gather(sweep_dir: Path, grid: Grid | None = None, console: Console | None = None, *,
           figures: bool = True) -> Path:
    """Build ``sweep_dir/report/`` from the finished runs of the sweep; return report/index.html.

    ``grid`` defaults to the one the sweep was launched with (grid.load_sweep_grid).
    ``figures=False`` writes the tables, JSON and CSV without drawing (much faster on big sweeps).
    """
    t0 = time.perf_counter()
    sweep_dir = Path(sweep_dir)
    console = console if console is not None else Console()
    if grid is None:
        grid = load_sweep_grid(sweep_dir)
    threshold = float(grid.report["confidence_threshold"])
    top_k = int(grid.report["top_failures"])
    spec0 = grid.runs[0]
    entries, grouped = _group_entries(grid, sweep_dir)
    for e in entries:
        state = store.run_state(e.run_dir)
        e.state, e.reason = state.status, state.reason
        e.restarts = (state.summary or {}).get("restarts")
        e.finished_at = state.finished_at

    test = _load_test_data(spec0)
    reader = _Reader(grid, test, console)
    for label, members in grouped.items():
        reader.read_group(label, members)
    ref = reader.ref
    num_classes = ref.num_classes or spec0.num_classes
    names = test.class_names if test.class_names and len(test.class_names) == num_classes else _generic_names(num_classes)

    notes = []
    if test.note:
        notes.append(test.note)
    wanted_train = set()
    for label in grouped:
        base = _done_results(grouped[label], grid.baseline)
        if base and base[0][1].neighbours:
            wanted_train.update(t for row in base[0][1].neighbours for t, _, _ in row)
    train_images, train_note = _train_images(spec0, wanted_train) if test.images is not None else ({}, "")
    if train_note:
        notes.append(train_note)

    groups: list[Group] = []
    palette = {v: i for i, v in enumerate([grid.baseline] + [v for v in grid.variants if v != grid.baseline])}
    for label, members in grouped.items():
        order = [grid.baseline] + [v for v in grid.variants if v != grid.baseline]
        cells = []
        base_spec = _spec_for(members, grid.baseline)
        for variant in order:
            cell_label = variant if not label or len(grouped) == 1 else f"{variant} [{label}]"
            # one colour per variant; with several groups one per cell, or the groups' lines look alike
            color = palette[variant] if len(grouped) == 1 else sum(len(g.cells) for g in groups) + len(cells)
            cell = build_cell(variant, label, [e for e in members if e.spec.variant == variant],
                              variant == grid.baseline, color, cell_label, names, test, top_k)
            spec = _spec_for(members, variant)
            if variant != grid.baseline and base_spec is not None and spec is not None:
                cell.diff = [(k, a, b) for k, (a, b) in spec_diff(base_spec, spec).items()]
            cells.append(cell)
        group = Group(label=label, cells=cells)
        positions = reader.canonical.get(label, np.zeros(0, np.int64))
        group.cases = build_cases(positions, _done_results(members, grid.baseline), ref, names, test, threshold,
                                  train_images)
        group.case_note = reader.case_notes.get(label, "")
        if not _done_results(members, grid.baseline):
            group.case_note = "no finished baseline run: canonical cases need the baseline"
        elif not positions.size:
            group.case_note = (f"no image is a high-confidence failure (> {threshold:g}) in more than half of the "
                               "baseline seeds")
        for cell in cells[1:]:
            comp = build_comparison(group, cells[0], cell, members, grid.baseline, positions, names)
            if comp is not None:
                group.comparisons.append(comp)
        group.shortcut_sentence = shortcut_sentence(cells)
        groups.append(group)

    counts = {s: sum(e.status == s for e in entries) for s in RUN_STATUSES}
    state_counts = {s: sum(e.state == s for e in entries) for s in RUN_STATES}
    report = ReportData(
        sweep=grid.name, description=str(grid.raw.get("description", "")),
        generated_at=_results_as_of(entries),
        dataset=spec0.dataset.name, num_classes=num_classes, class_names=names, baseline=grid.baseline,
        threshold=threshold, thresholds=metrics.DEFAULT_THRESHOLDS, top_failures_k=top_k,
        status_rows=_status_rows(entries), status_counts={k: v for k, v in counts.items() if v},
        state_counts={k: v for k, v in state_counts.items() if v},
        groups=groups, notes=notes)
    report.summary_lines = _summary_lines(entries, report)

    from .report import render  # matplotlib is loaded only now, and only by report/

    report_dir = sweep_dir / "report"
    (report_dir / "figures").mkdir(parents=True, exist_ok=True)
    html_text = render(report, report_dir, figures=figures)
    store.atomic_write_json(report_dir / "summary.json", build_summary(grid, entries, report), if_changed=True)
    store.atomic_write_bytes(report_dir / "failures.json",
                             (piece.encode("utf-8") for piece in iter_failures_json(grid, entries, threshold)),
                             if_changed=True)  # streamed: memory does not grow with the sweep
    store.atomic_write_bytes(report_dir / "runs.csv", build_runs_csv(entries).encode("utf-8"), if_changed=True)
    index = report_dir / "index.html"
    store.atomic_write_bytes(index, html_text.encode("utf-8"), if_changed=True)  # last: a crash leaves the old page whole

    print_headline(report, console)
    not_done = [e for e in entries if e.status != "done"]
    if not_done:
        console.print(f"[yellow]{len(not_done)} of {len(entries)} runs are not done[/yellow] "
                      f"({', '.join(f'{v} {k}' for k, v in report.state_counts.items() if k != 'done')}); "
                      "the report lists them", highlight=False)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"gathered {counts['done']} runs in {time.perf_counter() - t0:.1f}s: {index}", markup=False,
                  highlight=False)
    return index


def main(argv: list[str] | None = None) -> int:
    """``python -m cnnstress.gather SWEEP_DIR``: exit 0 when a report was written."""
    ap = argparse.ArgumentParser(prog="python -m cnnstress.gather",
                                 description="Build SWEEP_DIR/report/ from the finished runs of a sweep.")
    ap.add_argument("sweep_dir", type=Path, help="the sweep folder (holds grid.toml and runs/)")
    ap.add_argument("--no-figures", action="store_true", help="tables, JSON and CSV only (no matplotlib)")
    args = ap.parse_args(argv)
    console = Console()
    try:
        gather(args.sweep_dir, console=console, figures=not args.no_figures)
    except GridError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False)
        return 2
    except OSError as exc:
        console.print(f"error: cannot write the report: {exc}", markup=False, highlight=False)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
