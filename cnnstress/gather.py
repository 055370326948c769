"""Gather: turn the finished runs of a sweep into one report.

``python -m cnnstress.gather SWEEP_DIR`` (the Slurm gather job) or ``gather(sweep_dir, grid)`` (the
launcher, after local runs and for ``--gather``). Writes ``SWEEP_DIR/report/``: ``index.html`` (one
self-contained page), ``figures/*.png``, ``summary.json``, ``runs.csv`` and the files sections add
(``Section.extra_files``).

What the report shows is made by the report sections (``cnnstress.report.sections``, one module
each, listed in its registry): gather opens each run's results.h5 once, reads what every section
shares (test labels, index and logits, softmax, predictions), and hands the open file to every
section's ``reduce``; then it builds one cell per (group, variant) and lets each section aggregate
over seeds, compare within groups, and contribute summary.json fields, runs.csv and terminal
columns, files, figures and HTML. Gather itself owns only the run states, the read order, and the
files. It names no section: what each one needs and gives, it declares (``report.sections.base``).

Memory is bounded by one run, not by the sweep: runs are read one at a time with
``store.open_results`` and sections keep only reductions (accuracies, confusion matrices,
per-class and per-threshold counts, a (N,) correct mask, a few Grad-CAM maps). Each results.h5 is
opened exactly once, in the order of the registry's one read plan (``Section.read_plan``: the
canonical cases' section reads the baseline's first seed last among the baseline seeds, so that
the cases, which need every baseline seed, are known while its Grad-CAM maps can still be read);
the logits a plan keeps (one group's baseline seeds, S x N x C float32) are the one exception.

No torch and no training code here (engine, worker, models, augment, corrupt): gather runs on a
login node. Images come from ``data.load_test`` by index; when the dataset is not on this machine
the report says so and shows everything else.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import secrets
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table
from rich.text import Text

from . import data, states, store
from .layout import (FIGURES_DIR, IMAGE_SIZE_ATTR, REPORT_DIR, REPORT_INDEX, REPORT_PREV_DIR, REPORT_RUNS_CSV,
                     REPORT_STAGING_PREFIX, REPORT_SUMMARY, RUNS_DIR)
from .analysis import compare, metrics
from .config import RunSpec, spec_diff
from .grid import Grid, GridError, load_grid, load_sweep_grid
from .report.model import Cell, Group, ReportData, ReportWriteError, jsonable
from .report.sections import SECTIONS, compute_order, planner
from .report.sections.base import GatherContext, PlannedRun, ReadOutcome, ReadRequest, RunContext, RunRecord


# summary.json's `status` takes docs/design.md's three values; `state` keeps what gather saw, finer:
#   broken  -> failed:  DONE.json exists but results.h5 cannot be used (truncated, wrong schema, hash
#                       mismatch): the run ended and left no usable result.
#   partial -> missing: checkpoint.pt (or results.h5) without DONE.json or FAILED.json: the run may
#                       still be running, or was killed (preemption, time limit, SIGKILL) and resumes
#                       on relaunch; gather cannot tell it has ended, so it is "no result yet", as DESIGN
#                       means by missing, not a failure.
RUN_STATUSES = states.SUMMARY_STATUSES
RUN_STATES = states.ON_DISK  # gather reads files only: no running/pending here


# ------------------------------------------------------------------------------------------------
# per-run reading
# ------------------------------------------------------------------------------------------------

#: The dataset's per-image arrays besides images and labels (``data.Split`` fields, present for
#: some datasets only) that sections see as ``run.annotations``, aligned with the stored positions.
ANNOTATIONS = ("mask", "bg_class")


@dataclass
class TestData:
    """The sweep's official test split as the dataset gives it; fields are None when unavailable."""

    images: np.ndarray | None = None  # (M, 3, S, S) uint8
    labels: np.ndarray | None = None  # (M,)
    annotations: dict[str, np.ndarray] = field(default_factory=dict)  # ANNOTATIONS the dataset has, (M, ...)
    class_names: list[str] | None = None
    note: str = ""  # why images are unavailable
    verified: str = ""  # how the dataset's files were verified (data.Split.note)


@dataclass
class Reference:
    """The test set every run must share (set by the first run read)."""

    labels: np.ndarray | None = None
    index: np.ndarray | None = None
    num_classes: int | None = None
    annotations: dict[str, np.ndarray] = field(default_factory=dict)  # aligned with the stored positions
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
    """What to take from one run beyond the per-run reductions (from a section's ReadRequest)."""

    section: str = ""  # the id of the section whose read plan asked
    pick: Callable[[RunContext], Any] | None = None  # the run -> run.picked[section]
    keep_logits: bool = False  # keep (N, C) float32 test logits until the plan has them


@dataclass
class RunData:
    """One read run: what every section shares, and each section's reduction in ``parts``."""

    spec: RunSpec
    accuracy: float
    correct: np.ndarray  # (N,) bool
    preds: np.ndarray  # (N,) int32
    conf: np.ndarray  # (N,) float32 top softmax probability
    gradcam_size: tuple[int, int] | None = None  # (h, w) of the stored maps, at spec.gradcam_layer
    image_size: int = data.IMAGE_SIZE  # side of the run's square images (results.h5's image_size; absent: 32)
    picked: dict[str, Any] = field(default_factory=dict)  # what the read plan's pick took (section id ->)
    logits: np.ndarray | None = None  # (N, C) float32, only while the read plan keeps it
    parts: dict[str, Any] = field(default_factory=dict)  # section id -> reduction
    missing: dict[str, list[str]] = field(default_factory=dict)  # section id -> results.h5 keys it lacked


def _spec_from_attrs(attrs: dict[str, Any], expected: RunSpec, where: str) -> RunSpec:
    """The run's own spec (results.h5 attrs), which must be the expected run."""
    if attrs.get("run_id") != expected.run_id:
        raise store.ResultsError(f"{where}: holds run {attrs.get('run_id')!r}, expected {expected.run_id!r}")
    try:
        return RunSpec.from_dict(attrs["spec"])
    except (KeyError, TypeError, ValueError):
        return expected  # an older spec layout: the grid's spec describes the same run


def read_run(path: Path, expected: RunSpec, ref: Reference, plan: Plan, threshold: float,
             class_names: list[str] | None) -> RunData:
    """Open one results.h5 once and hand it to every section. Raises ResultsError when broken."""
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
        correct = preds == labels
        out = RunData(spec=spec, accuracy=metrics.accuracy(labels, preds), correct=correct,
                      preds=preds.astype(np.int32), conf=conf.astype(np.float32),
                      image_size=int(res.attrs.get(IMAGE_SIZE_ATTR, data.IMAGE_SIZE)))
        if res.has("test/gradcam/pred"):
            h, w = res.shape("test/gradcam/pred")[1:3]
            out.gradcam_size = (int(h), int(w))
        run = RunContext(spec=spec, where=where, labels=labels, index=index, logits=logits, probs=probs,
                         preds=preds, conf=conf, correct=correct, num_classes=c, names=names, threshold=threshold,
                         annotations=ref.annotations, image_size=out.image_size)
        if plan.pick is not None:
            run.picked[plan.section] = plan.pick(run)
        out.picked = run.picked
        for section in compute_order():
            ok, got = section.read(res, run)
            if not ok:
                out.missing[section.id] = got
        out.parts = run.parts
        del run, probs
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
    result: RunData | None = None
    restarts: int | None = None  # Slurm requeues (preemption, time limit) before the run finished
    finished_at: str = ""  # DONE.json's finish time

    @property
    def status(self) -> str:
        """docs/design.md's status (done, failed or missing) of the state."""
        return states.summary_status(self.state)


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
    out.annotations = {k: getattr(split, k) for k in ANNOTATIONS if getattr(split, k) is not None}
    out.class_names = [str(n) for n in info.class_names]
    out.verified = split.note
    return out


def _align_test(test: TestData, ref: Reference) -> str:
    """Check the dataset against the stored test set and align its annotations; note on mismatch."""
    if test.images is None or ref.index is None:
        return ""
    if ref.index.size and (ref.index.max() >= test.labels.shape[0]):
        note = f"test images unavailable (stored test/index reaches {int(ref.index.max())}, the dataset has {test.labels.shape[0]} test images)"
    elif not np.array_equal(test.labels[ref.index], ref.labels):
        note = "test images unavailable (the dataset's labels differ from the stored ones: other dataset options?)"
    else:
        ref.annotations = {k: v[ref.index] for k, v in test.annotations.items()}
        return ""
    test.images, test.annotations = None, {}
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
        self.planner = planner()
        self.planned: dict[str, Any] = {}  # group -> what the read plan returned

    def read(self, entry: Entry, plan: Plan) -> RunData | None:
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
        """Read the group's done runs: first those the read plan asks for, in its order, then the rest."""
        done = {e.spec.run_id: e for e in entries if e.status == "done"}
        todo = dict(done)
        if self.planner is not None:
            sid = self.planner.id
            runs = [PlannedRun(run_id=e.spec.run_id, variant=e.spec.variant, seed=e.spec.seed,
                               is_baseline=e.spec.variant == self.grid.baseline) for e in done.values()]
            steps = self.planner.read_plan(runs, self.grid)
            outcome = None
            try:
                while True:
                    req: ReadRequest = steps.send(outcome)
                    e = todo.pop(req.run.run_id, None)
                    if e is None:
                        raise ValueError(f"report section {sid!r}: its read plan asks for run {req.run.run_id!r} "
                                         "twice or for a run that is not a finished run of the group")
                    r = self.read(e, Plan(section=sid, pick=req.pick, keep_logits=req.keep_logits))
                    outcome = ReadOutcome(read=r is not None, labels=self.ref.labels,
                                          logits=r.logits if r is not None else None,
                                          picked=r.picked.get(sid) if r is not None else None)
                    if r is not None:
                        r.logits = None  # the plan holds them now, for as long as it needs them
                    del r
            except StopIteration as stop:
                self.planned[label] = stop.value
            outcome = None
        for e in todo.values():
            self.read(e, Plan())


# ------------------------------------------------------------------------------------------------
# cells, groups
# ------------------------------------------------------------------------------------------------


def _acc_stats(accs: list[float]) -> tuple[float | None, float | None, tuple[float, float] | None]:
    if not accs:
        return None, None, None
    st = compare.mean_std_ci(accs, compare.ACCURACY)
    if st["n"] < 2:  # one seed says nothing about seed-to-seed spread
        return st["mean"], None, None
    return st["mean"], st["std"], (float(st["ci95"][0]), float(st["ci95"][1]))


def build_cell(variant: str, group: str, entries: list[Entry], is_baseline: bool, color: int, label: str,
               ctx: GatherContext) -> Cell:
    """The read runs of one (group, variant) by seed, and every section's aggregate over them."""
    cell = Cell(label=label, variant=variant, group=group, is_baseline=is_baseline, color=color)
    done = sorted((e for e in entries if e.result is not None), key=lambda e: e.spec.seed)
    if not done:
        return cell
    rs = [e.result for e in done]
    cell.runs = rs
    cell.run_ids = [e.spec.run_id for e in done]
    cell.seeds = [e.spec.seed for e in done]
    cell.accuracies = [r.accuracy for r in rs]
    cell.acc_mean, cell.acc_std, cell.acc_ci95 = _acc_stats(cell.accuracies)
    # the layer each run's maps come from (its own spec) and their size before upsampling; one entry
    # unless runs of the cell disagree (then every one is listed rather than one picked)
    cell.gradcam = list(dict.fromkeys((r.spec.gradcam_layer, r.gradcam_size) for r in rs))
    for section in compute_order():
        lacking = [(e.spec.run_id, e.result.missing[section.id]) for e in done if section.id in e.result.missing]
        if lacking:
            cell.missing[section.id] = lacking
        parts = [r.parts[section.id] for r in rs if section.id in r.parts]
        cell.parts[section.id] = section.aggregate(cell, parts, ctx) if parts else None
    return cell


def _spec_for(entries: list[Entry], variant: str) -> RunSpec | None:
    """The variant's spec: from a read results.h5 when there is one, else the grid's."""
    specs = [e for e in entries if e.spec.variant == variant]
    for e in specs:
        if e.result is not None:
            return e.result.spec
    return specs[0].spec if specs else None


# ------------------------------------------------------------------------------------------------
# outputs
# ------------------------------------------------------------------------------------------------


def _run_row(e: Entry) -> dict[str, Any]:
    r = e.result
    row: dict[str, Any] = {
        "run_id": e.spec.run_id, "variant": e.spec.variant, "seed": e.spec.seed, "group": e.group,
        "grid_values": e.spec.grid_values, "status": e.status, "state": e.state,
        "test_accuracy": r.accuracy if r else None, "restarts": e.restarts,
    }
    for section in SECTIONS:
        if r is not None and section.id in r.parts:
            row.update(section.run_fields(r, r.parts[section.id]))
        else:
            row.update(dict.fromkeys(section.run_keys))
    if e.status != "done" or e.reason:
        row["reason"] = e.reason
    return row


def _variant_summary(cell: Cell) -> dict[str, Any]:
    out = {
        "variant": cell.variant, "group": cell.group, "baseline": cell.is_baseline, "n_runs": cell.n_runs,
        "seeds": cell.seeds, "run_ids": cell.run_ids,
        "test_accuracy_mean": cell.acc_mean, "test_accuracy_std": cell.acc_std, "ci95": cell.acc_ci95,
        "gradcam": _gradcam_summary(cell),
    }
    for section in SECTIONS:
        out.update(section.variant_fields(cell, cell.parts.get(section.id)))
    return out


def _gradcam_summary(cell: Cell) -> dict[str, Any] | None:
    """{"layer", "map_size": [h, w]} of the cell's Grad-CAM maps; a list of them if its runs differ."""
    out = [{"layer": layer, "map_size": list(size) if size else None} for layer, size in cell.gradcam]
    return None if not out else out[0] if len(out) == 1 else out


def cell_key(cell: Cell, n_groups: int) -> str:
    return cell.variant if n_groups <= 1 or not cell.group else f"{cell.variant} [{cell.group}]"


def build_summary(grid: Grid, entries: list[Entry], report: ReportData) -> dict[str, Any]:
    """summary.json: at least docs/design.md's fields (sweep, runs, variants, comparisons), and each section's."""
    n_groups = len(report.groups)
    out = {
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
    }
    for section in SECTIONS:
        out.update(section.summary_fields(report))
    return jsonable(out)


#: runs.csv's own columns; each section adds its ``csv_columns`` after them, in page order.
RUN_COLUMNS = ("run_id", "variant", "seed", "group", "status", "state", "reason", "test_accuracy")


def csv_columns() -> tuple[str, ...]:
    """runs.csv's header: gather's columns, then every section's (registry order)."""
    return RUN_COLUMNS + tuple(c for section in SECTIONS for c in section.csv_columns)


def build_runs_csv(entries: list[Entry]) -> str:
    """runs.csv: one row per expected run."""
    columns = csv_columns()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for e in entries:
        row = jsonable(_run_row(e))
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def run_records(entries: list[Entry]) -> list[RunRecord]:
    """Every expected run, in the grid's order, as the sections' extra files see it."""
    return [RunRecord(run_id=e.spec.run_id, variant=e.spec.variant, seed=e.spec.seed, group=e.group,
                      parts=e.result.parts if e.result is not None else None) for e in entries]


def _status_rows(entries: list[Entry]) -> list[dict[str, Any]]:
    return [{"run_id": e.spec.run_id, "variant": e.spec.variant, "seed": e.spec.seed, "group": e.group,
             "status": e.status, "state": e.state, "reason": e.reason, "restarts": e.restarts} for e in entries]


def print_headline(report: ReportData, console: Console) -> None:
    """The headline numbers as a rich table: gather's columns, then each section's (registry order)."""
    table = Table(title=Text(f"{report.sweep}: test accuracy over seeds"), title_justify="left")
    extra = [s for s in SECTIONS if s.headline_columns]
    for col in ("variant", "n", "accuracy", "delta vs baseline [95% CI]") + tuple(
            c for s in extra for c in s.headline_columns):
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
            delta = f"{100 * comp.stats['accuracy_delta_mean']:+.2f}"
            if comp.stats["ci95"] is not None:
                lo, hi = comp.stats["ci95"]
                delta += f" [{100 * lo:+.2f}, {100 * hi:+.2f}]"
        row = [cell.label, str(cell.n_runs), acc, delta]
        for s in extra:
            texts = tuple(s.headline(cell, cell.parts.get(s.id)))
            if len(texts) != len(s.headline_columns):
                raise ValueError(f"report section {s.id!r}: headline() gave {len(texts)} texts for its "
                                 f"{len(s.headline_columns)} headline_columns")
            row.extend(texts)
        table.add_row(*(Text(x) for x in row))  # Text: labels like "v [k=1]" are not markup
    console.print(table)


def print_section_lines(report: ReportData, console: Console) -> None:
    """Each section's lines for the terminal after the table (registry order), under its heading."""
    for section in SECTIONS:
        lines = section.terminal_lines(report)
        if lines and section.terminal_heading:
            console.print(section.terminal_heading, style="bold")
        for line in lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)


def _summary_lines(entries: list[Entry], report: ReportData) -> list[str]:
    """The run counts, then each section's sentences (registry order)."""
    counts = report.status_counts
    n = len(entries)
    done = counts.get("done", 0)
    line = f"{done} of {n} runs finished"
    by_state = report.state_counts
    others = []
    for s in RUN_STATUSES[1:]:
        if counts.get(s):
            finer = [f"{by_state[t]} {t}" for t in RUN_STATES if t != s and states.summary_status(t) == s and by_state.get(t)]
            others.append(f"{counts[s]} {s}" + (f" ({', '.join(finer)})" if finer else ""))
    lines = [line + (f" ({', '.join(others)}; see Run status)." if others else ".")]
    for section in SECTIONS:
        lines.extend(section.summary_lines(report))
    return lines


# ------------------------------------------------------------------------------------------------
# gather
# ------------------------------------------------------------------------------------------------


def _group_entries(grid: Grid, sweep_dir: Path) -> tuple[list[Entry], dict[str, list[Entry]]]:
    entries, groups = [], {}
    for spec in grid.runs:
        e = Entry(spec=spec, run_dir=sweep_dir / RUNS_DIR / spec.run_id, group=group_label(spec))
        entries.append(e)
        groups.setdefault(e.group, []).append(e)
    return entries, groups


def _report_file(report_dir: Path, name: str, write: Callable[[Path], Any]) -> None:
    """Write one report file, re-creating report/ first; a failure names the file."""
    path = report_dir / name
    try:
        report_dir.mkdir(parents=True, exist_ok=True)
        write(path)
    except OSError as exc:
        raise ReportWriteError(exc, path) from exc


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
    ctx = GatherContext(grid=grid, names=names, threshold=threshold, top_k=top_k, baseline=grid.baseline,
                        image=lambda i: _image(test, i), has_images=test.images is not None,
                        ref_index=ref.index, ref_labels=ref.labels,
                        planned=reader.planned, notes=notes, spec0=spec0)

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
                              variant == grid.baseline, color, cell_label, ctx)
            spec = _spec_for(members, variant)
            if variant != grid.baseline and base_spec is not None and spec is not None:
                cell.diff = [(k, a, b) for k, (a, b) in spec_diff(base_spec, spec).items()]
            cells.append(cell)
        group = Group(label=label, cells=cells)
        for section in compute_order():
            part = section.compare(group, ctx)
            if part is not None:
                group.parts[section.id] = part
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
    for section in compute_order():
        part = section.finish(report, ctx)
        if part is not None:
            report.parts[section.id] = part
    report.summary_lines = _summary_lines(entries, report)

    from .report import render  # matplotlib is loaded only now, and only by report/

    index = sweep_dir / REPORT_DIR / REPORT_INDEX
    for stale in remove_dead_stagings(sweep_dir):
        console.print(f"removed {stale.name}/, left by a gather that was stopped", markup=False, highlight=False)
    staging = sweep_dir / f"{REPORT_STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        try:
            (staging / FIGURES_DIR).mkdir(parents=True)
            html_text = render(report, staging, figures=figures)
            _report_file(staging, REPORT_SUMMARY, lambda p: store.atomic_write_json(
                p, build_summary(grid, entries, report)))
            runs = run_records(entries)
            for section in SECTIONS:  # written from pieces: memory does not grow with the sweep
                for name, pieces in section.extra_files(report, runs).items():
                    _report_file(staging, name, lambda p, pieces=pieces: store.atomic_write_bytes(p, pieces()))
            _report_file(staging, REPORT_RUNS_CSV, lambda p: store.atomic_write_bytes(
                p, build_runs_csv(entries).encode("utf-8")))
            _report_file(staging, index.name, lambda p: store.atomic_write_bytes(p, html_text.encode("utf-8")))
        except ReportWriteError as exc:  # named as the file it was going to be (report/...)
            exc.message = exc.message.replace(str(staging), str(sweep_dir / REPORT_DIR))
            raise
        except OSError as exc:  # disk full, folder removed, no permission: one line naming the file
            raise ReportWriteError(exc, sweep_dir / REPORT_DIR) from exc
        kept = _put_in_place(staging, sweep_dir, counts["done"])
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # (gone once renamed into place)
    if kept is not None:
        console.print(f"[yellow]warning[/yellow]: this report has {counts['done']} finished runs, the one it replaced "
                      f"had {kept}; that one is kept whole in {sweep_dir / REPORT_PREV_DIR}", highlight=False)

    print_headline(report, console)
    print_section_lines(report, console)
    not_done = [e for e in entries if e.status != "done"]
    if not_done:
        console.print(f"[yellow]{len(not_done)} of {len(entries)} runs are not done[/yellow] "
                      f"({', '.join(f'{v} {k}' for k, v in report.state_counts.items() if k != 'done')}); "
                      "the report lists them", highlight=False)
    if test.verified:
        console.print(f"data: {test.verified}", markup=False, highlight=False, soft_wrap=True)
    for note in notes:
        console.print(f"note: {note}", markup=False, highlight=False)
    console.print(f"gathered {counts['done']} runs in {time.perf_counter() - t0:.1f}s: {index}", markup=False,
                  highlight=False)
    return index


def finished_in_report(report_dir: Path) -> int | None:
    """How many finished runs the report in ``report_dir`` shows (its summary.json), None if none."""
    try:
        summary = json.loads((report_dir / REPORT_SUMMARY).read_text(encoding="utf-8"))
        return sum(1 for r in summary["runs"] if isinstance(r, dict) and r.get("status") == "done")
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _put_in_place(staging: Path, sweep_dir: Path, done: int) -> int | None:
    """Rename the built report to report/. The one it replaces is deleted, or, when it showed more
    finished runs than this one, kept whole as report.prev/ (the number it showed is returned)."""
    report_dir, prev = sweep_dir / REPORT_DIR, sweep_dir / REPORT_PREV_DIR
    before = finished_in_report(report_dir)
    kept = before if before is not None and done < before else None
    if _same_files(staging, report_dir):  # a gather with nothing new changes no file, not even a time
        return None
    try:
        if report_dir.is_symlink() or report_dir.is_file():
            report_dir.unlink()
        elif report_dir.exists():
            if kept is not None:
                shutil.rmtree(prev, ignore_errors=True)
                os.rename(report_dir, prev)
            else:  # renamed aside first: report/ is never a mix of two reports
                aside = sweep_dir / f"{REPORT_STAGING_PREFIX}{socket.gethostname()}-{os.getpid()}-old"
                os.rename(report_dir, aside)
                shutil.rmtree(aside, ignore_errors=True)
        os.rename(staging, report_dir)
    except OSError as exc:
        raise ReportWriteError(exc, report_dir) from exc
    return kept


def _same_files(staging: Path, report_dir: Path) -> bool:
    """Whether the report built in ``staging`` holds exactly the files of ``report_dir``, byte for
    byte. Files that are equal also get the old file's times, so that a report that changed in
    one figure leaves the others' modification times as they were."""
    if report_dir.is_symlink() or not report_dir.is_dir():
        return False
    new = {p.relative_to(staging) for p in staging.rglob("*") if p.is_file()}
    try:
        old = {p.relative_to(report_dir) for p in report_dir.rglob("*") if p.is_file() and not p.is_symlink()}
    except OSError:
        return False
    same = True
    for rel in new:
        a, b = staging / rel, report_dir / rel
        try:
            if rel in old and a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes():
                st = b.stat()
                os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
                continue
        except OSError:
            pass
        same = False
    return same and new == old


def remove_dead_stagings(sweep_dir: Path) -> list[Path]:
    """Remove the half-built reports of gathers that are no longer running: those of this host
    whose process is gone (a live gather's is left alone), and any older than a day (another
    host's). Returns what was removed."""
    removed = []
    try:
        entries = list(sweep_dir.iterdir())
    except OSError:
        return removed
    host = socket.gethostname()
    for path in entries:
        if not path.name.startswith(REPORT_STAGING_PREFIX) or path.is_symlink() or not path.is_dir():
            continue
        rest = path.name[len(REPORT_STAGING_PREFIX):]
        head, _, tail = rest.rpartition("-")
        owner, _, pid = head.rpartition("-")
        dead = False
        if owner == host and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                dead = True
            except PermissionError:
                pass
        try:
            dead = dead or time.time() - path.stat().st_mtime > 86400
        except OSError:
            continue
        if dead:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def gather_as_launched(launch_args: Sequence[str], console: Console | None = None) -> Path:
    """The gather job: the report of the sweep exactly as it was launched. ``launch_args`` are the
    launch's own arguments (``cluster.base.gather_arguments``: ``--grid`` the sweep's copy of the grid,
    ``--out``, ``--data-root`` and its ``--set`` values), so the report sees the runs that were
    submitted. The cluster side calls this, never the command line (no launcher <-> cluster cycle)."""
    ap = argparse.ArgumentParser(prog="gather job", add_help=False, exit_on_error=False)
    ap.add_argument("--grid", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--data-root", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(list(launch_args))
    grid = load_grid(args.grid, overrides=args.overrides, out_root=args.out, data_root=args.data_root)
    return gather(Path(args.out) / grid.name, grid=grid, console=console)


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
    except ReportWriteError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except OSError as exc:
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)  # e.g. unreadable files
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
