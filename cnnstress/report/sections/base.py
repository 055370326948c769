"""The report section interface: one template, small overrides (in the spirit of pytorch-grad-cam's
``BaseCAM``).

Gather opens each finished run's ``results.h5`` once and hands it to every section in registry
order (``sections/__init__.py``); then it builds one ``Cell`` per (group, variant) and one ``Group``
per set of non-seed grid values, and the page. A section overrides only what it needs:

============================  ==================================================================
``reduce(res, run)``          one run -> a small reduction (memory stays bounded by one run);
                              stored as ``run.parts[id]`` of gather's RunData
``aggregate(cell, parts, ctx)`` the reductions of a cell's finished seeds -> ``cell.parts[id]``
``compare(group, ctx)``       across the cells of a group (baseline vs variants) -> ``group.parts[id]``
``finish(report, ctx)``       once every group is built -> ``report.parts[id]``
``run_fields``                fields of the run's row in summary.json (and runs.csv columns)
``variant_fields``            fields of the cell's entry under summary.json's ``variants``
``summary_fields``            top-level summary.json fields
``summary_lines``             sentences for the page's summary and summary.json's ``summary``
``figures(report)``           ``FigureSpec``s: name, a draw function returning a matplotlib
                              Figure (or None), caption; drawn only when figures are asked for
``html(report, figs)``        the section's body on the page
``metrics(part)``             the numbers of one run's reduction that "What the modification
                              changed" compares variant vs baseline (``Metric``s)
``headline(cell, agg)``       the texts of ``headline_columns`` for one cell (terminal table)
``terminal_lines(report)``    lines printed after that table, under ``terminal_heading``
``read_plan(runs, grid)``     the order in which a group's runs are read, and what to take from
                              each beyond the reductions (at most one section plans; see
                              ``ReadRequest``)
``extra_files(report, runs)`` files of report/ besides the page, summary.json and runs.csv:
                              name -> a function returning the file's bytes in pieces
============================  ==================================================================

And declares what it needs and gives, as class attributes:

============================  ==================================================================
``depends``                   ids of the sections whose results (``parts[id]`` of a run, cell,
                              group or the report) this one reads; the registry runs every step
                              so that they come first, and refuses a cycle or an unknown id
``requires``                  results.h5 datasets ``reduce`` needs
``run_keys``                  the keys ``run_fields`` returns
``csv_columns``               which of ``run_keys`` are also runs.csv columns (in this order)
``headline_columns``          the column titles this section adds to the terminal's table
============================  ==================================================================

The page shows the sections in the registry's order; every step (reduce, aggregate, compare,
finish) runs them in an order where each comes after the sections it ``depends`` on.

The template methods ``read`` (per run) and ``render`` (the ``<section>`` on the page) are not
overridden: ``read`` skips a run whose results.h5 lacks one of ``requires`` and records that,
and ``render`` then says so on the page instead of failing.

Importing this module loads no matplotlib: draw functions import it when they are called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Generator, Iterable

import numpy as np

from ..markup import empty, esc, para

if TYPE_CHECKING:  # pragma: no cover
    from ...config import RunSpec
    from ...grid import Grid
    from ..model import Cell, FigureRef, Group, ReportData


@dataclass(frozen=True)
class FigureSpec:
    """A figure a section asks for: saved as ``figures/<slug(name)>.png`` and embedded in the page."""

    name: str
    draw: Callable[[], Any]  # -> matplotlib.figure.Figure | None (None: nothing to draw)
    caption: str


@dataclass(frozen=True)
class Metric:
    """One number a section measures per run. "What the modification changed" compares it between
    each variant and its baseline (paired by seed) with an interval and the baseline's noise floor."""

    key: str  # stable id in summary.json, e.g. "ece" or "adversarial_linf_8"
    label: str  # words on the page, e.g. "ECE after temperature scaling"
    value: Any  # a float, or (N,) per-image values whose mean is the metric (the same images in every run)
    higher_is_better: bool | None
    points: bool = True  # a fraction shown as percentage points (False: shown as a plain number)
    headline: bool = False  # may be one of the page's Findings (details such as one severity are not)


@dataclass
class RunContext:
    """What gather already read from one run, shared by every section's ``reduce``.

    ``parts`` holds the reductions of the sections read before this one, among them every section
    this one ``depends`` on (robustness uses calibration's temperature).
    """

    spec: RunSpec
    where: str  # the results.h5 path, for messages
    labels: np.ndarray  # (N,) int64
    index: np.ndarray  # (N,) int64 positions in the dataset's official test split
    logits: np.ndarray  # (N, C) float32 test logits
    probs: np.ndarray  # (N, C) float64 softmax of logits
    preds: np.ndarray  # (N,) int64 argmax of probs
    conf: np.ndarray  # (N,) float64 top probability
    correct: np.ndarray  # (N,) bool
    num_classes: int
    names: list[str]  # class names (generic "class i" when the dataset's are unavailable)
    threshold: float  # report.confidence_threshold
    # the dataset's per-image annotations, aligned with the stored positions, when it has them and
    # they match the stored test set (shapes: "mask" (N, S, S) object pixels, "bg_class" (N,))
    annotations: dict[str, np.ndarray] = field(default_factory=dict)
    picked: dict[str, Any] = field(default_factory=dict)  # section id -> what its read plan picked here
    parts: dict[str, Any] = field(default_factory=dict)
    image_size: int = 32  # the side S of the run's square images (results.h5's image_size; absent: 32)


@dataclass
class GatherContext:
    """Sweep-wide inputs for ``aggregate``, ``compare`` and ``finish``."""

    grid: Grid
    names: list[str]
    threshold: float
    top_k: int  # report.top_failures
    baseline: str
    image: Callable[[int], np.ndarray | None]  # official test index -> (S, S, 3) uint8, or None
    has_images: bool  # whether the dataset's images are on this machine (and match the stored test set)
    ref_index: np.ndarray | None  # (N,) official test index of each stored position
    ref_labels: np.ndarray | None  # (N,)
    planned: dict[str, Any]  # group label -> what the read plan's section found while reading it
    notes: list[str]  # the page's notes (a section may add one)
    spec0: RunSpec  # the grid's first run (dataset, paths)


@dataclass(frozen=True)
class PlannedRun:
    """A finished run of one group, before it is read (what ``read_plan`` orders)."""

    run_id: str
    variant: str
    seed: int
    is_baseline: bool


@dataclass(frozen=True)
class ReadRequest:
    """What ``read_plan`` yields: read ``run`` now. ``keep_logits``: hand its (N, C) float32 test
    logits back in the outcome. ``pick(run)`` (the run's RunContext, before any reduce) -> what the
    planning section takes from this run, seen by every section's reduce as ``run.picked[its id]``."""

    run: PlannedRun
    keep_logits: bool = False
    pick: Callable[[RunContext], Any] | None = None


@dataclass(frozen=True)
class ReadOutcome:
    """What gather sends back into ``read_plan`` after reading a requested run."""

    read: bool  # False: the run turned out broken (nothing of it was kept)
    labels: np.ndarray | None  # (N,) the sweep's test labels, once any run was read
    logits: np.ndarray | None = None  # (N, C) float32 when keep_logits asked for them
    picked: Any = None  # what ``pick`` returned


#: ``read_plan``'s generator: yields ReadRequests, is sent ReadOutcomes, returns the group's result.
ReadPlan = Generator[ReadRequest, ReadOutcome, Any]


@dataclass(frozen=True)
class RunRecord:
    """One expected run as ``extra_files`` sees it (all of them, in the grid's order)."""

    run_id: str
    variant: str
    seed: int
    group: str  # the run's non-seed grid values ("" when the grid varies only the seed)
    parts: dict[str, Any] | None  # each section's reduction; None when the run has no usable result


class Section:
    """One section of the report. Subclasses set ``id`` and ``title`` and override what they need."""

    id: str = ""  # the HTML id and the key of parts[...]
    title: str = ""  # the <h2> heading and the table of contents entry
    depends: tuple[str, ...] = ()  # ids of the sections whose results this one reads
    requires: tuple[str, ...] = ()  # results.h5 datasets ``reduce`` needs (a run lacking one is skipped)
    run_keys: tuple[str, ...] = ()  # the keys ``run_fields`` returns (None for runs without a result)
    csv_columns: tuple[str, ...] = ()  # those of run_keys that are runs.csv columns, in this order
    headline_columns: tuple[str, ...] = ()  # titles of this section's columns in the terminal's table
    terminal_heading: str = ""  # printed (bold) above this section's ``terminal_lines``, when it has any

    # -- overrides ---------------------------------------------------------------------------------

    def reduce(self, res: Any, run: RunContext) -> Any:
        """One run's reduction (res: store.Results, opened once for every section)."""
        return None

    def aggregate(self, cell: Cell, parts: list[Any], ctx: GatherContext) -> Any:
        """The reductions of the cell's finished seeds (by seed; ``cell.runs`` are those runs) -> the
        cell's aggregate. Called only when at least one run has a reduction."""
        return None

    def compare(self, group: Group, ctx: GatherContext) -> Any:
        """A result across the cells of one group (cell.parts are set) -> group.parts[id]."""
        return None

    def finish(self, report: ReportData, ctx: GatherContext) -> Any:
        """A result over the whole report, once every group is built -> report.parts[id]."""
        return None

    def run_fields(self, run: Any, part: Any) -> dict[str, Any]:
        """summary.json run-row fields of one read run (``part`` is its reduction)."""
        return {}

    def variant_fields(self, cell: Cell, agg: Any) -> dict[str, Any]:
        """summary.json ``variants`` fields of one cell (``agg`` is None when it has no finished run)."""
        return {}

    def summary_fields(self, report: ReportData) -> dict[str, Any]:
        """Top-level summary.json fields."""
        return {}

    def summary_lines(self, report: ReportData) -> list[str]:
        """Sentences for the page's summary list (and summary.json's ``summary``)."""
        return []

    def figures(self, report: ReportData) -> list[FigureSpec]:
        """The figures this section draws (names are stable ids; draw functions import matplotlib)."""
        return []

    def html(self, report: ReportData, figs: dict[str, FigureRef]) -> str:
        """The section's body (escaped HTML)."""
        raise NotImplementedError

    def metrics(self, part: Any) -> list[Metric]:
        """The metrics of one run's reduction (``part``, never None) for the verdict table."""
        return []

    def read_plan(self, runs: list[PlannedRun], grid: Grid) -> ReadPlan | None:
        """The finished runs of one group in the order to read them (a generator of ReadRequests,
        each sent the ReadOutcome of its read), returning what it found, ``ctx.planned[group]``.
        Runs it does not request are read after it, in the grid's order. Every results.h5 is opened
        once, so a plan is how a section uses several runs' arrays while one of them is still open
        (canonical cases: every baseline seed's logits, then the first seed's Grad-CAM rows).
        Only one section of the registry may plan. None: this section does not plan."""
        return None

    def headline(self, cell: Cell, agg: Any) -> tuple[str, ...]:
        """One text per ``headline_columns`` for a cell (``agg`` is None when it has no finished run)."""
        return ()

    def terminal_lines(self, report: ReportData) -> list[str]:
        """Plain lines printed after the terminal's table (no markup)."""
        return []

    def extra_files(self, report: ReportData, runs: list[RunRecord]) -> dict[str, Callable[[], Iterable[bytes]]]:
        """report/ files this section writes: name -> a function returning the bytes in pieces (so a big
        file is written without being held whole). Gather writes them atomically, after summary.json."""
        return {}

    # -- template methods --------------------------------------------------------------------------

    def read(self, res: Any, run: RunContext) -> tuple[bool, Any]:
        """Reduce one run unless its results.h5 lacks a required dataset: (read?, part or missing keys)."""
        lacking = [k for k in self.requires if not res.has(k)]
        if lacking:
            return False, lacking
        part = self.reduce(res, run)
        run.parts[self.id] = part
        return True, part

    def missing_note(self, report: ReportData) -> tuple[str, bool]:
        """A note naming the finished runs that lack this section's arrays, and whether every run does."""
        lacking = [(c, rid, keys) for c in report.cells for rid, keys in c.missing.get(self.id, [])]
        if not lacking:
            return "", False
        n_done = sum(c.n_runs for c in report.cells)
        keys = sorted({k for _, _, ks in lacking for k in ks})
        runs = ", ".join(rid for _, rid, _ in lacking)
        text = (f"Not available for {len(lacking)} of {n_done} finished runs: their results.h5 lacks "
                f"{', '.join(keys)} ({runs}).")
        return para(text, "note"), len(lacking) >= n_done

    def render(self, report: ReportData, figs: dict[str, FigureRef]) -> str:
        """The whole ``<section>``: heading, a note when runs lack arrays, then the body."""
        note, none = self.missing_note(report)
        body = note + (empty("No finished run has the arrays this section needs.") if none
                       else self.html(report, figs))
        return f'<section id="{esc(self.id)}"><h2>{esc(self.title)}</h2>{body}</section>'


def cell_parts(cells: list[Cell], section_id: str) -> list[tuple[Cell, Any]]:
    """(cell, aggregate) of the cells that have one for ``section_id``."""
    return [(c, c.parts[section_id]) for c in cells if c.parts.get(section_id) is not None]
