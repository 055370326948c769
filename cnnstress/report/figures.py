"""The report's drawing library (matplotlib's Agg backend): the figure functions the sections
(``report.sections``) ask for, and ``draw_all``, which draws every section's ``FigureSpec``s.

Figures are built with the object API (``matplotlib.figure.Figure``, no pyplot), so no global
figure list grows; each is saved once to PNG bytes, written to ``figures/<name>.png`` and released.
Grids of images (top failures, Grad-CAM overlays, neighbours) are drawn as one mosaic image on one
axes with text labels, which is much faster than one axes per image.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: before anything that could pick an interactive backend

import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .. import atomic  # noqa: E402
from ..analysis.metrics import row_normalize  # noqa: E402
from .model import Case, CaseView, Cell, Comparison, FigureRef, ReportData, ReportWriteError, slug  # noqa: E402

DPI = 100
LAYOUT = "constrained"
CELL_TEXT_MAX_CLASSES = 20  # confusion matrices print counts in cells up to this many classes
BARS_MAX_CLASSES = 30  # per-class accuracy as grouped bars up to this many classes, a scatter above
WATERFALL_FULL = 100  # waterfall shows every class up to this many (CIFAR-100), else the top and bottom 20
WATERFALL_TALL = 40  # above this many bars, thinner rows and smaller labels (the page also has a table)
CASE_ROWS_MAX = 12  # canonical cases drawn per figure
_CAPTION_LINES = 2  # text lines under each tile of a mosaic
STYLE = {
    "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "xtick.labelsize": 8,
    "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False, "figure.dpi": DPI,
    "savefig.dpi": DPI, "axes.grid": True, "grid.alpha": 0.25,
    # Class names, variant names and reasons come from users' files: "$x^2$" or "$$" must be drawn
    # as typed, not parsed as mathtext (a parse error would abort the whole report). Every Text
    # made while drawing gets this default; plain_text() enforces it again before saving.
    "text.parse_math": False, "text.usetex": False,
}
_TAB10 = colormaps["tab10"]
#: The colours that mean a variant (cell.color indexes them): tab10's ten, baseline first.
VARIANT_COLORS: tuple[tuple[float, float, float, float], ...] = tuple(_TAB10(i) for i in range(10))
# Everything else that a colour tells apart (right/wrong, gain/loss, corrected/worsened, the shortcut's
# measures) is drawn in neutrals, told apart by lightness and hatching, so that a hue in any figure
# of the report means a variant and nothing else.
CATEGORY_DARK = "#262626"
CATEGORY_LIGHT = "#c4c4c4"
CATEGORY_WHITE = "#ffffff"  # always with HATCH and a CATEGORY_DARK edge
HATCH = "////"
_JET = colormaps["jet"]


def plain_text(fig: Figure) -> Figure:
    """Every Text of ``fig`` (titles, tick labels, legends, annotations) drawn as plain text: no
    mathtext, no TeX. The one place that makes user-provided strings safe for matplotlib."""
    from matplotlib.text import Text

    for text in fig.findobj(Text):
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def color(cell: Cell) -> tuple[float, float, float, float]:
    return _TAB10(cell.color % 10)


def relative_luminance(rgb) -> float:
    """WCAG 2 relative luminance of an sRGB colour given as floats in [0, 1] (alpha ignored)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in (float(x) for x in rgb[:3])]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(a, b) -> float:
    """WCAG 2 contrast ratio of two colours, 1 (same) to 21 (black on white)."""
    la, lb = relative_luminance(a), relative_luminance(b)
    return (max(la, lb) + 0.05) / (min(la, lb) + 0.05)


def text_color(background) -> str:
    """Black or white, whichever contrasts more with ``background`` (WCAG ratio): the text colour
    for a number printed on a coloured cell. A fixed threshold on the value would put white on
    mid-pale cells of some colormaps."""
    return "black" if contrast_ratio(background, (0, 0, 0)) >= contrast_ratio(background, (1, 1, 1)) else "white"


# ------------------------------------------------------------------------------------------------
# saving
# ------------------------------------------------------------------------------------------------


class FigureWriter:
    """Saves figures to a folder under unique names; remembers them in order."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.refs: dict[str, FigureRef] = {}

    def add(self, name: str, fig: Figure | None, caption: str) -> FigureRef | None:
        if fig is None:
            return None
        buf = io.BytesIO()
        plain_text(fig)
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})  # no version stamp
        fig.clf()  # release the artists now; no pyplot, so nothing else holds the figure
        filename = f"{slug(name)}.png"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)  # report/ removed while drawing: made again
            atomic.atomic_write_bytes(self.folder / filename, buf.getvalue(), if_changed=True)
        except OSError as exc:  # disk full: one line naming the figure, not a traceback
            raise ReportWriteError(exc, self.folder / filename) from exc
        ref = FigureRef(name=name, filename=filename, png=buf.getvalue(), caption=caption)
        self.refs[name] = ref
        return ref

    def remove_stale(self) -> None:
        """Delete PNGs from an earlier gather that this one did not write."""
        keep = {r.filename for r in self.refs.values()}
        for path in self.folder.glob("*.png"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=DPI, layout=LAYOUT)


# ------------------------------------------------------------------------------------------------
# curves
# ------------------------------------------------------------------------------------------------


def _band(ax, x: np.ndarray, runs: np.ndarray, col, label: str, ls: str = "-") -> None:
    """Mean over seeds as a line, min..max over seeds as a band."""
    ax.plot(x, runs.mean(axis=0), ls=ls, color=col, label=label, lw=1.6)
    if runs.shape[0] > 1:
        ax.fill_between(x, runs.min(axis=0), runs.max(axis=0), color=col, alpha=0.18, lw=0)


def curves(cell: Cell, h: dict[str, np.ndarray] | None) -> Figure | None:
    """Training and validation loss and accuracy of one cell (``h``: name -> (S, E)), mean over
    seeds with a min..max band."""
    if not h:
        return None
    fig = _figure(9.0, 3.0)
    ax_loss, ax_acc = fig.subplots(1, 2)
    x = h["epoch"][0]
    col = color(cell)
    _band(ax_loss, x, h["train_loss"], col, "train", "--")
    _band(ax_loss, x, h["val_loss"], col, "validation")
    _band(ax_acc, x, h["train_acc"], col, "train", "--")
    _band(ax_acc, x, h["val_acc"], col, "validation")
    ax_loss.set(title=f"{cell.label}: loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title=f"{cell.label}: accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_acc.legend(loc="lower right")
    fig.suptitle(f"{cell.n_runs} seed(s); band = min..max over seeds", fontsize=8)
    return fig


def val_accuracy(items: list[tuple[Cell, dict[str, np.ndarray]]]) -> Figure | None:
    """Every cell's validation accuracy on one plot (``items``: (cell, history))."""
    items = [(c, h) for c, h in items if h]
    if not items:
        return None
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    for c, h in items:
        _band(ax, h["epoch"][0], h["val_acc"], color(c), f"{c.label} (n={c.n_runs})")
    ax.set(title="validation accuracy, all variants", xlabel="epoch", ylabel="accuracy")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(loc="lower right")
    return fig


# ------------------------------------------------------------------------------------------------
# overview
# ------------------------------------------------------------------------------------------------


def overview(report: ReportData, calibration_of: Any) -> Figure | None:
    """One-page comparison: accuracy per run, delta vs baseline with CI, disagreement, ECE
    (``calibration_of(cell)``: the cell's calibration means, a dict)."""
    cells = [c for c in report.cells if c.n_runs]
    if not cells:
        return None
    comps = report.comparisons
    fig = _figure(11.0, 7.0)
    (a, b), (c, d) = fig.subplots(2, 2)
    labels = [cl.label for cl in cells]
    for i, cl in enumerate(cells):
        jitter = np.linspace(-0.12, 0.12, len(cl.accuracies)) if len(cl.accuracies) > 1 else np.zeros(1)
        a.scatter(np.full(len(cl.accuracies), i) + jitter, cl.accuracies, color=color(cl), s=22, zorder=3)
        if cl.acc_std is not None:
            a.errorbar(i + 0.3, cl.acc_mean, yerr=cl.acc_std, fmt="o", color="black", ms=4, capsize=3)
    a.set_xticks(range(len(cells)), labels, rotation=20, ha="right")
    a.set(title="test accuracy per run (black: mean ± std)", ylabel="accuracy")

    if comps:
        y = np.arange(len(comps))
        deltas = np.array([100 * cp.stats["accuracy_delta_mean"] for cp in comps])
        # no interval (one run per side): a point without bars
        lo = np.array([100 * (cp.stats["ci95"] or (cp.stats["accuracy_delta_mean"],) * 2)[0] for cp in comps])
        hi = np.array([100 * (cp.stats["ci95"] or (cp.stats["accuracy_delta_mean"],) * 2)[1] for cp in comps])
        b.errorbar(deltas, y, xerr=[deltas - lo, hi - deltas], fmt="o", color="black", capsize=4)
        b.axvline(0, color="grey", lw=1)
        b.set_yticks(y, [cp.label for cp in comps])
        b.set(title="delta vs baseline (95% CI over test images)", xlabel="variant − baseline (points)")
        b.set_ylim(len(comps) - 0.4, -0.6)
        keys = (("corrected", CATEGORY_DARK, None), ("worsened", CATEGORY_WHITE, HATCH),
                ("both_wrong", CATEGORY_LIGHT, None))
        left = np.zeros(len(comps))
        for key, col, hatch in keys:
            vals = np.array([cp.stats[key] for cp in comps], dtype=float)
            bars = c.barh(y, vals, left=left, color=col, label=key.replace("_", " "), height=0.55, hatch=hatch,
                          edgecolor=CATEGORY_DARK, linewidth=0.6)
            c.bar_label(bars, labels=[f"{int(v)}" if v else "" for v in vals], label_type="center",
                        color=text_color(to_rgb(col)), fontsize=8,
                        bbox=dict(boxstyle="square,pad=0.1", fc=CATEGORY_WHITE, ec="none") if hatch else None)
            left += vals
        c.set_yticks(y, [cp.label for cp in comps])
        c.set_ylim(len(comps) - 0.4, -1.0)  # inverted, with room above the bars for the legend
        c.set(title="disagreement with baseline (images, summed over seed pairs)", xlabel="images")
        c.legend(loc="upper center", ncols=3)
    else:
        for ax in (b, c):
            ax.text(0.5, 0.5, "no comparison: needs finished baseline and variant runs", ha="center",
                    va="center", transform=ax.transAxes)
            ax.set_axis_off()
    x = np.arange(len(cells))
    ece = [calibration_of(cl).get("ece") for cl in cells]
    after = [calibration_of(cl).get("ece_after") for cl in cells]
    d.bar(x - 0.18, [e if e is not None else 0 for e in ece], 0.36, color=[color(cl) for cl in cells], label="ECE")
    if any(v is not None for v in after):
        d.bar(x + 0.18, [e if e is not None else 0 for e in after], 0.36, color=[color(cl) for cl in cells],
              alpha=0.45, hatch="//", label="after temperature scaling")
    d.set_xticks(x, labels, rotation=20, ha="right")
    top = max([v for v in ece + after if v is not None] or [0.1])
    d.set(title="expected calibration error (mean over seeds)", ylabel="ECE", ylim=(0, 1.35 * top))
    # the bars carry the variants' colours; the legend says which bar is which in neutrals, so that
    # the baseline's colour never stands for "ECE"
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=CATEGORY_LIGHT, edgecolor=CATEGORY_DARK, label="ECE")]
    if any(v is not None for v in after):
        handles.append(Patch(facecolor=CATEGORY_WHITE, edgecolor=CATEGORY_DARK, hatch="//",
                             label="after temperature scaling (lighter)"))
    d.legend(handles=handles, loc="upper center", ncols=2)
    return fig


# ------------------------------------------------------------------------------------------------
# confusion and per-class
# ------------------------------------------------------------------------------------------------


def _class_ticks(ax, names: list[str]) -> None:
    c = len(names)
    if c <= BARS_MAX_CLASSES:
        ax.set_xticks(range(c), names, rotation=90, fontsize=7)
        ax.set_yticks(range(c), names, fontsize=7)
    else:  # too many names to read: every tenth class index
        ticks = list(range(0, c, 10))
        ax.set_xticks(ticks, [str(t) for t in ticks], fontsize=7)
        ax.set_yticks(ticks, [str(t) for t in ticks], fontsize=7)
    ax.grid(False)


def confusion(cell: Cell, cm: np.ndarray | None, names: list[str]) -> Figure | None:
    """Confusion matrix of one cell summed over seeds: counts and row-normalised.

    Laid out by hand (margins from the longest class name) rather than by a layout engine: with
    hundreds of cell labels the engine's repeated text measuring is most of the drawing time.
    """
    if cm is None:
        return None
    c = cm.shape[0]
    side = 4.0 if c <= CELL_TEXT_MAX_CLASSES else 5.2
    label_in = (max(len(n) for n in names) if c <= BARS_MAX_CLASSES else 3) * 0.065 + 0.45
    left, bottom, top, bar_w, bar_gap, bar_labels = label_in, label_in + 0.05, 0.65, 0.14, 0.1, 0.45
    panel_w = left + side + bar_gap + bar_w + bar_labels
    width, height = 2 * panel_w, bottom + side + top
    fig = Figure(figsize=(width, height), dpi=DPI)
    norm = row_normalize(cm)
    for k, (mat, title, fmt, vmax) in enumerate(((cm, "counts", "{:d}", None),
                                                 (norm, "row-normalised (recall)", "{:.2f}", 1.0))):
        x0 = k * panel_w + left
        ax = fig.add_axes((x0 / width, bottom / height, side / width, side / height))
        cax = fig.add_axes(((x0 + side + bar_gap) / width, bottom / height, bar_w / width, side / height))
        im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=vmax, interpolation="nearest", aspect="auto")
        fig.colorbar(im, cax=cax)
        _class_ticks(ax, names)
        ax.set(title=f"{cell.label}: {title}", xlabel="predicted", ylabel="true")
        if c <= CELL_TEXT_MAX_CLASSES:
            for i in range(c):
                for j in range(c):
                    v = mat[i, j]
                    if v:
                        # the text colour from the cell's own colour as drawn (colormap and norm)
                        ax.text(j, i, fmt.format(int(v) if fmt == "{:d}" else float(v)), ha="center", va="center",
                                fontsize=6 if c > 10 else 7, color=text_color(im.cmap(im.norm(v))))
    fig.text(0.5, 1 - 0.08 / height, f"summed over {cell.n_runs} seed(s)", ha="center", va="top", fontsize=8)
    return fig


def per_class(items: list[tuple[Cell, np.ndarray]], names: list[str]) -> Figure | None:
    """Per-class accuracy of every cell side by side (a scatter against the baseline above 30 classes);
    ``items``: (cell, (C,) accuracy)."""
    items = [(c, a) for c, a in items if a is not None]
    if not items:
        return None
    cells = [c for c, _ in items]
    acc = {id(c): a for c, a in items}
    c = len(names)
    if c <= BARS_MAX_CLASSES:
        fig = _figure(min(14.0, max(7.0, 0.28 * c * len(cells) + 2.0)), 3.8)
        ax = fig.subplots()
        width = 0.8 / len(cells)
        x = np.arange(c)
        for k, cl in enumerate(cells):
            ax.bar(x - 0.4 + width * (k + 0.5), acc[id(cl)], width, color=color(cl), label=cl.label)
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set(ylabel="accuracy", title="per-class test accuracy (mean over seeds)", ylim=(0, 1.22))
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.legend(ncols=min(4, len(cells)), loc="upper center", fontsize=7)
        return fig
    base = cells[0]
    others = cells[1:] or cells
    fig = _figure(6.0, 5.6)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="grey", lw=1)
    for cl in others:
        ax.scatter(acc[id(base)], acc[id(cl)], s=12, color=color(cl), label=cl.label, alpha=0.8)
        delta = acc[id(cl)] - acc[id(base)]
        for i in np.argsort(-np.abs(np.nan_to_num(delta)))[:5]:
            ax.annotate(names[i], (acc[id(base)][i], acc[id(cl)][i]), fontsize=6, xytext=(3, 3),
                        textcoords="offset points")
    ax.set(xlabel=f"{base.label} accuracy", ylabel="variant accuracy", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=f"per-class accuracy, {c} classes (labels: 5 largest changes)")
    ax.legend(loc="lower right")
    return fig


def waterfall(comp: Comparison, per_class_order: np.ndarray, per_class_delta: np.ndarray,
              names: list[str]) -> Figure | None:
    """Per-class accuracy change vs baseline, sorted (top and bottom 20 when there are many classes)."""
    order = [int(i) for i in per_class_order if not np.isnan(per_class_delta[i])]
    if not order:
        return None
    cut = len(order) > WATERFALL_FULL
    shown = order[:20] + order[-20:] if cut else order
    vals = 100 * per_class_delta[shown]
    tall = len(shown) > WATERFALL_TALL
    # 0.13 in per bar with 6 pt labels keeps 100 class names legible without overlap (0.2 in / 7 pt below)
    fig = _figure(6.5, (0.13 if tall else 0.2) * len(shown) + 1.4)
    ax = fig.subplots()
    y = np.arange(len(shown)) + (np.arange(len(shown)) >= 20) * (1 if cut else 0)
    # gains dark, losses light: the zero line says the sign, the shade repeats it without a variant's hue
    ax.barh(y, vals, color=np.where(vals >= 0, CATEGORY_DARK, CATEGORY_LIGHT), edgecolor=CATEGORY_DARK,
            linewidth=0.4, height=0.8)
    ax.set_yticks(y, [names[i] for i in shown], fontsize=6 if tall else 7)
    ax.grid(axis="y", visible=False)  # one grid line per class would hide the bars
    ax.margins(y=0.5 / len(shown))
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.8)
    title = f"{comp.label} − {comp.baseline}: per-class accuracy change"
    if cut:
        title += f"\n(20 largest gains and 20 largest losses of {len(order)} classes; every class in the table)"
        ax.axhline(20, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="change (points)", title=title)
    return fig


# ------------------------------------------------------------------------------------------------
# failures and confidence
# ------------------------------------------------------------------------------------------------


def thresholds(items: list[tuple[Cell, np.ndarray]], ts: np.ndarray, threshold: float) -> Figure | None:
    """High-confidence failure counts across thresholds, every cell on one plot ((cell, counts) items)."""
    items = [(c, t) for c, t in items if t is not None]
    if not items:
        return None
    fig = _figure(7.0, 3.6)
    ax = fig.subplots()
    for c, counts in items:
        ax.plot(ts, counts, color=color(c), label=c.label, lw=1.6)
    ax.axvline(threshold, color="grey", ls=":", lw=1)
    ax.set(xlabel="confidence threshold", ylabel="wrong predictions above it (mean over seeds)",
           title="high-confidence failures across thresholds")
    ax.legend()
    return fig


def _panels(n: int, per_row: int = 4, w: float = 3.2, h: float = 2.8) -> tuple[Figure, list]:
    cols = min(per_row, max(1, n))
    rows = -(-n // cols)
    fig = _figure(w * cols, h * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel().tolist()
    for ax in axes[n:]:
        ax.set_axis_off()
    return fig, axes[:n]


def confidence_hist(items: list[tuple[Cell, dict[str, np.ndarray]]]) -> Figure | None:
    """Top-probability distributions of right and wrong predictions, one panel per cell."""
    items = [(c, h) for c, h in items if h is not None]
    if not items:
        return None
    fig, axes = _panels(len(items))
    for ax, (c, hist) in zip(axes, items):
        e = hist["edges"]
        for key, lab, ls, hatch in (("right_counts", "right", "-", None), ("wrong_counts", "wrong", "--", HATCH)):
            counts = hist[key].astype(float)
            total = counts.sum()
            share = counts / total if total else counts
            if hatch:
                ax.stairs(share, e, label=f"{lab} (n={int(total)})", fill=True, facecolor="none",
                          edgecolor=CATEGORY_DARK, hatch=hatch, lw=0)
            else:
                ax.stairs(share, e, label=f"{lab} (n={int(total)})", fill=True, color=CATEGORY_LIGHT, alpha=0.6)
            ax.stairs(share, e, color=CATEGORY_DARK, lw=1.2, ls=ls)
        ax.set(title=c.label, xlabel="confidence (top probability)", ylabel="share of group")
        ax.legend(loc="best", fontsize=7)
    return fig


def reliability(items: list[tuple[Cell, dict[str, np.ndarray] | None, dict[str, Any]]],
                corrupted: bool = False) -> Figure | None:
    """Reliability diagrams, pooled over seeds, one panel per cell; ``items``: (cell, bins, scores)
    with scores holding "ece" and "ece_after".

    ``corrupted``: the cells' diagrams on the corrupted test sets (each corruption at its highest
    severity, pooled), titled with the ECE on all corrupted sets before and after the clean temperature.
    """
    items = [it for it in items if it[1] is not None]
    if not items:
        return None
    fig, axes = _panels(len(items), w=3.1, h=3.1)
    for ax, (c, r, k) in zip(axes, items):
        e = r["bin_edges"]
        mids = (e[:-1] + e[1:]) / 2
        ok = r["count"] > 0
        ax.bar(mids[ok], r["accuracy"][ok], width=np.diff(e)[ok], color=color(c), alpha=0.7, edgecolor="white",
               label="accuracy")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ax.plot(r["confidence"][ok], r["accuracy"][ok], "o", color="black", ms=2.5, label="(confidence, accuracy)")
        ece, after = k.get("ece"), k.get("ece_after")
        title = f"{c.label}: ECE {ece:.3f}" if ece is not None else c.label
        if after is not None:
            title += f" → {after:.3f}"
        if corrupted:  # the bins drawn are the highest severities only: say their own ECE too
            n = r["count"].sum()
            drawn = float(np.sum(r["count"][ok] / n * np.abs(r["accuracy"][ok] - r["confidence"][ok]))) if n else None
            title = (f"{c.label}, highest severities" + (f": ECE {drawn:.3f}" if drawn is not None else "")
                     + ("\nall corrupted sets: " + title.split(": ", 1)[1] if ece is not None else ""))
        ax.set(title=title, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=7)
    return fig


def smooth_reliability(items: list[tuple[Cell, dict[str, np.ndarray] | None, dict[str, Any]]],
                       corrupted: bool = False) -> Figure | None:
    """Smooth reliability diagrams, one panel per cell; ``items``: (cell, curve, scores) with the
    curve from ``analysis.calibration.pool_smooth`` (mesh, accuracy, density, smece) and scores
    holding "smece" (the mean over seeds; on the corrupted sets their mean when ``corrupted``)."""
    items = [it for it in items if it[1] is not None]
    if not items:
        return None
    fig, axes = _panels(len(items), w=3.1, h=3.1)
    for ax, (c, r, k) in zip(axes, items):
        t, dens = r["mesh"], r["density"]
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        # the curve means little where no confidence falls: draw it thin there
        solid = dens > 0.02 * dens.max() if dens.max() > 0 else np.ones_like(t, dtype=bool)
        ax.plot(t, r["accuracy"], color=color(c), lw=0.8, alpha=0.5)
        ax.plot(np.where(solid, t, np.nan), np.where(solid, r["accuracy"], np.nan), color=color(c), lw=2,
                label="smoothed accuracy")
        ax.fill_between(t, 0, 0.25 * dens / dens.max() if dens.max() > 0 else dens, color=color(c), alpha=0.25,
                        label="confidence density")
        value = k.get("smece") if k else None
        head = f"{c.label}, highest severities" if corrupted else c.label
        drawn = r.get("smece")
        title = head + (f": smooth ECE {drawn:.3f}" if drawn is not None else "")
        if corrupted and value is not None:
            title += f"\nall corrupted sets: {value:.3f}"
        ax.set(title=title, xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1))
        ax.legend(loc="upper left", fontsize=7)
    return fig


# ------------------------------------------------------------------------------------------------
# image mosaics
# ------------------------------------------------------------------------------------------------


def overlay(image: np.ndarray | None, cam: np.ndarray | None) -> np.ndarray | None:
    """A Grad-CAM map (S, S) in [0, 1] as a jet heat map blended onto the (S, S, 3) image (RGB
    floats); a map of another size (a variant run at another image size) is resized to the image."""
    if cam is None:
        return None
    if image is not None and cam.shape != image.shape[:2]:
        from ..analysis.gradcam import upsample_bilinear

        cam = upsample_bilinear(np.asarray(cam, dtype=np.float32)[None], image.shape[:2])[0]
    heat = _JET(np.clip(cam, 0.0, 1.0))[..., :3]
    if image is None:
        return heat
    return 0.5 * image.astype(np.float64) / 255.0 + 0.5 * heat


def _tile(img: np.ndarray | None) -> np.ndarray | None:
    if img is None:
        return None
    arr = np.asarray(img)
    return arr.astype(np.float64) / 255.0 if arr.dtype == np.uint8 else np.clip(arr.astype(np.float64), 0, 1)


def mosaic(tiles: list[list[np.ndarray | None]], captions: list[list[str]], title: str,
           col_titles: list[str] | None = None, tile_in: float = 1.25) -> Figure:
    """Rows of S x S RGB tiles with a caption under each, drawn as one image on one axes.

    S is the largest tile's side (the dataset's image side: 32 for the built-in sets, up to 128 for
    your own); padding scales with it, and tiles get wider than ``tile_in`` only where an image
    pixel would otherwise be drawn smaller than one pixel of the PNG, so no image is downsampled."""
    rows, cols = len(tiles), max(len(r) for r in tiles)
    size = max([np.asarray(t).shape[0] for row in tiles for t in row if t is not None] or [32])
    pad = max(4, round(4 * size / 32))
    tile_in = max(tile_in, (size + 2 * pad) / DPI)
    px_per_in = (size + 2 * pad) / tile_in
    cap_px = int(np.ceil(_CAPTION_LINES * 9.5 / 72 * px_per_in)) + 2  # 9.5 pt per caption line
    head_px = int(np.ceil(11 / 72 * px_per_in)) + 2 if col_titles else 0
    cell_w, cell_h = size + 2 * pad, size + pad + cap_px
    canvas = np.ones((head_px + rows * cell_h, cols * cell_w, 3))
    for r, row in enumerate(tiles):
        for k, t in enumerate(row):
            y0, x0 = head_px + r * cell_h + pad, k * cell_w + pad
            t = _tile(t)
            if t is None:
                canvas[y0:y0 + size, x0:x0 + size] = 0.88
            else:
                th, tw = t.shape[:2]
                canvas[y0:y0 + th, x0:x0 + tw] = t[:size, :size, :3]
    height_in = canvas.shape[0] / px_per_in
    width_in = cols * tile_in
    lines = textwrap.wrap(title, width=max(20, int(width_in * 72 / (9.5 * 0.55))))
    title_in = 0.12 + 0.17 * len(lines)
    fig = Figure(figsize=(width_in, height_in + title_in), dpi=DPI)
    ax = fig.add_axes((0, 0, 1, height_in / (height_in + title_in)))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    ax.set_axis_off()
    for r, row in enumerate(captions):
        for k, text in enumerate(row):
            if text:
                ax.text(k * cell_w + cell_w / 2, head_px + r * cell_h + pad + size + 1, text, ha="center",
                        va="top", fontsize=6.5, linespacing=1.15)
            if tiles[r][k] is None and k < len(tiles[r]):
                ax.text(k * cell_w + cell_w / 2, head_px + r * cell_h + pad + size / 2, "n/a", ha="center",
                        va="center", fontsize=7, color="grey")
    for k, text in enumerate(col_titles or []):
        ax.text(k * cell_w + cell_w / 2, head_px - 2, text, ha="center", va="bottom", fontsize=7.5,
                fontweight="bold")
    fig.text(0.5, 1.0 - 0.04 / (height_in + title_in), "\n".join(lines), ha="center", va="top", fontsize=9.5)
    return fig


def top_failures(cell: Cell, items: list[dict[str, Any]], seed: int | None, per_row: int = 8) -> Figure | None:
    """The cell's most confident wrong predictions (first seed): image, index, true → predicted."""
    if not items or all(it.get("image") is None for it in items):
        return None
    tiles, caps = [], []
    for start in range(0, len(items), per_row):
        chunk = items[start:start + per_row]
        tiles.append([it["image"] for it in chunk])
        caps.append([f"#{it['test_index']}  {it['confidence']:.2f}\n{it['true_name'][:12]}→{it['pred_name'][:12]}"
                     for it in chunk])
    return mosaic(tiles, caps, f"{cell.label}, seed {seed}: {len(items)} most confident "
                               "failures (test index, confidence, true → predicted)")


def _view_caption(v: CaseView | None, which: str, true_name: str) -> str:
    """Caption under a Grad-CAM tile: the predicted class and confidence, or the true class."""
    if v is None:
        return "no run"
    if which == "pred":
        return f"{v.pred_name[:12]} {v.confidence:.2f}\nright in {v.right_seeds}/{v.n_seeds} seeds"
    return f"{true_name[:14]}\n(true class)"


def canonical(cases: list[Case], comp: Comparison | None, views: list[CaseView | None],
              layer: str) -> Figure | None:
    """Canonical cases: image, then Grad-CAM (predicted and true class) of baseline and variant
    (``views``: the variant's view of each case, aligned with ``cases``; ``layer``: the baseline's
    Grad-CAM layer text)."""
    cases = cases[:CASE_ROWS_MAX]
    if not cases:
        return None
    tiles, caps = [], []
    base_name = cases[0].baseline.seed if cases[0].baseline else None
    for j, case in enumerate(cases):
        b = case.baseline
        v = views[j] if comp is not None and j < len(views) else None
        row = [case.image, overlay(case.image, b.cam_pred if b else None), overlay(case.image, b.cam_true if b else None)]
        cap = [f"#{case.test_index} true {case.true_name[:12]}\nfails in {100 * case.fail_fraction:.0f}% of seeds",
               _view_caption(b, "pred", case.true_name), _view_caption(b, "true", case.true_name)]
        if comp is not None:
            row += [overlay(case.image, v.cam_pred if v else None), overlay(case.image, v.cam_true if v else None)]
            cap += [_view_caption(v, "pred", case.true_name), _view_caption(v, "true", case.true_name)]
        tiles.append(row)
        caps.append(cap)
    heads = ["image", "baseline: pred", "baseline: true"]
    if comp is not None:
        heads += [f"{comp.variant[:12]}: pred", f"{comp.variant[:12]}: true"]
    title = f"canonical failures: Grad-CAM for the predicted and the true class (baseline seed {base_name})"
    if comp is not None:
        seed = next((v.seed for v in views if v is not None), None)
        title = (f"{comp.label} vs {comp.baseline}: Grad-CAM for the predicted and the true class "
                 f"(seeds: {comp.baseline} {base_name}, {comp.variant} {seed})")
    if layer:
        title += f"; layer {layer}"
    return mosaic(tiles, caps, title, col_titles=heads, tile_in=1.35)


def neighbours(cases: list[Case]) -> Figure | None:
    """Each canonical case beside its nearest training images in the baseline's feature space."""
    cases = [c for c in cases[:CASE_ROWS_MAX] if c.neighbours]
    if not cases or all(c.image is None and all(n.image is None for n in c.neighbours) for c in cases):
        return None
    tiles, caps = [], []
    for case in cases:
        pred = case.baseline.pred_name if case.baseline else "?"
        tiles.append([case.image] + [n.image for n in case.neighbours])
        caps.append([f"test #{case.test_index}\n{case.true_name[:10]}→{pred[:10]}"] +
                    [f"train #{n.train_index}\n{n.label_name[:12]} {n.similarity:.2f}" for n in case.neighbours])
    heads = ["test image"] + [f"neighbour {i + 1}" for i in range(max(len(c.neighbours) for c in cases))]
    return mosaic(tiles, caps, "nearest training images (cosine similarity of baseline embeddings)",
                  col_titles=heads)


# ------------------------------------------------------------------------------------------------
# robustness, faithfulness, shortcut
# ------------------------------------------------------------------------------------------------


def robustness(items: list[tuple[Cell, dict[str, dict[str, list]]]],
               reference: dict[str, Any] | None = None,
               means: list[tuple[Cell, dict[str, list]]] | None = None) -> Figure | None:
    """Accuracy vs severity per corruption (small multiples), clean accuracy at severity 0;
    ``items``: (cell, {corruption: {"severities", "accuracy"}}).

    With ``reference`` (a published curve: "label", "source", "severities", "accuracy" and
    "clean_accuracy") a first panel shows it, dashed black and labelled with its source, beside each
    cell's mean over the same corruptions (``means``: (cell, {"severities", "accuracy",
    "n_corruptions"}))."""
    items = [(c, st) for c, st in items if st]
    if not items:
        return None
    cells = [c for c, _ in items]
    stress = {id(c): st for c, st in items}
    corruptions = sorted({k for c in cells for k in stress[id(c)]})
    first = 1 if reference is not None else 0
    fig, axes = _panels(len(corruptions) + first, per_row=4, w=3.0, h=2.6)
    if reference is not None:
        ax = axes[0]
        for c, m in means or []:
            if m and m["severities"]:
                ax.plot([0] + list(m["severities"]), [c.acc_mean] + list(m["accuracy"]), "o-", color=color(c),
                        label=f"{c.label} (mean of {m['n_corruptions']})", ms=3, lw=1.4)
        ax.plot([0] + list(reference["severities"]), [reference["clean_accuracy"]] + list(reference["accuracy"]),
                "s--", color="black", ms=3, lw=1.2,
                label=textwrap.fill(reference["label"], 44) + "\n" + textwrap.fill(f"source: {reference['source']}", 44))
        ax.set(title="mean over the benchmark corruptions", xlabel="severity (0 = clean)", ylabel="accuracy",
               ylim=(0, 1))
        ax.set_xticks([0] + list(reference["severities"]))
        ax.legend(fontsize=5.5, loc="lower left")
    for ax, name in zip(axes[first:], corruptions):
        for c in cells:
            if name not in stress[id(c)]:
                continue
            s = stress[id(c)][name]
            ax.plot([0] + s["severities"], [c.acc_mean] + s["accuracy"], "o-", color=color(c), label=c.label,
                    ms=3, lw=1.4)
        ax.set(title=name.replace("_", " "), xlabel="severity (0 = clean)", ylabel="accuracy", ylim=(0, 1))
        ax.set_xticks([0] + sorted({s for c in cells if name in stress[id(c)] for s in stress[id(c)][name]["severities"]}))
    if corruptions:
        axes[first].legend(fontsize=7, loc="lower left")
    return fig


_FAITH_STYLE = {"gradcam": "-", "random": ":"}


def faithfulness(items: list[tuple[Cell, dict[str, Any]]], suffix: str = "") -> Figure | None:
    """Mean deletion and insertion curves, Grad-CAM (solid) vs random maps (dotted), AUC in the legend;
    ``suffix``: which removal's curves ("" mean fill, "_road" ROAD's imputation)."""
    items = [(c, f) for c, f in items if f and any(f"{kind}_{maps}{suffix}" in f["curves"]
                                                   for kind in ("deletion", "insertion") for maps in _FAITH_STYLE)]
    if not items:
        return None
    fig = _figure(10.0, 3.6)
    axes = fig.subplots(1, 2)
    for ax, kind, better in ((axes[0], "deletion", "lower"), (axes[1], "insertion", "higher")):
        for c, faith in items:
            for maps, ls in _FAITH_STYLE.items():
                key = f"{kind}_{maps}{suffix}"
                if key not in faith["curves"]:
                    continue
                y = faith["curves"][key]
                x = np.linspace(0, 1, y.shape[0])
                ax.plot(x, y, ls=ls, color=color(c), lw=1.6,
                        label=f"{c.label} {maps}: AUC {faith['auc'][key]:.3f}")
        how = ", ROAD imputation" if suffix == "_road" else ""
        ax.set(title=f"{kind}{how} ({better} AUC = more faithful)", xlabel="fraction of pixels " +
               ("removed" if kind == "deletion" else "inserted"), ylabel="probability of the predicted class")
        ax.legend(fontsize=7)
    return fig


#: (face colour, hatch) of the shortcut figure's measures, in the order each panel lists them
SHORTCUT_STYLES = ((CATEGORY_DARK, None), (CATEGORY_LIGHT, None), (CATEGORY_WHITE, HATCH))


def shortcut(items: list[tuple[Cell, dict[str, Any]]]) -> Figure | None:
    """Grad-CAM energy inside the object and accuracy on background-conflicting images, per cell."""
    items = [(c, sc) for c, sc in items if sc]
    if not items:
        return None
    cells = [c for c, _ in items]
    fig = _figure(11.0, 3.9)
    a, b = fig.subplots(1, 2)
    x = np.arange(len(cells))
    labels = [c.label for c in cells]

    def bars(ax, keys: list[tuple[str, str]], title: str, ylabel: str) -> None:
        w = 0.8 / len(keys)
        for k, (key, lab) in enumerate(keys):
            vals = [sc.get(key) for _, sc in items]
            col, hatch = SHORTCUT_STYLES[k % len(SHORTCUT_STYLES)]
            ax.bar(x - 0.4 + w * (k + 0.5), [v if v is not None else 0 for v in vals], w, label=lab,
                   color=col, hatch=hatch, edgecolor=CATEGORY_DARK, linewidth=0.6)
        ax.set_xticks(x, labels, rotation=15, ha="right")
        ax.set(title=title, ylabel=ylabel, ylim=(0, 1))
        # below the axes: bars reach 1.0, so a legend inside would hide some of them
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=len(keys), frameon=False)

    bars(a, [("energy_right", "right predictions"), ("energy_wrong", "wrong predictions")],
         "Grad-CAM energy inside the object mask", "fraction of map energy")
    bars(b, [("acc_aligned", "accuracy, background agrees"), ("acc_conflicting", "accuracy, background conflicts"),
             ("follows_background", "predicts the background's class")],
         "background shortcut on the test set", "fraction")
    return fig


# ------------------------------------------------------------------------------------------------
# all figures
# ------------------------------------------------------------------------------------------------


def draw_all(report: ReportData, folder: Path, sections: list[Any]) -> dict[str, FigureRef]:
    """Draw every figure the sections ask for and the data allows; returns name -> FigureRef (names
    are stable ids). Figures from an earlier gather that this one did not draw are removed."""
    out = FigureWriter(folder)
    specs = [spec for section in sections for spec in section.figures(report)]
    with matplotlib.rc_context(STYLE):
        for spec in specs:
            out.add(spec.name, spec.draw(), spec.caption)
    out.remove_stale()
    return out.refs
