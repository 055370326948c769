"""HTML building blocks shared by the report sections: escaping, number formats, tables,
paragraphs, embedded figures, group titles. Pure strings: no matplotlib, no numpy needed.

Every string that comes from files (run ids, reasons, class names, spec values) goes through
``esc``; numbers are formatted here.
"""

from __future__ import annotations

import html
import math
from typing import Any, Iterable

from ..layout import FIGURES_DIR
from .model import FigureRef, Group, ReportData, slug

CSS = """
:root { --fg: #1d2330; --muted: #5b6475; --line: #d9dee7; --bg: #ffffff; --soft: #f5f7fa; --warn: #fff4e0;
        --bad: #fde8e8; --ok: #e8f6ec; --accent: #1f5fbf; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 28px 64px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 40px 0 10px; padding-top: 10px; border-top: 2px solid var(--line); }
h3 { font-size: 16px; margin: 24px 0 8px; }
h3.group { font-size: 17px; color: var(--accent); border-bottom: 1px solid var(--line); padding-bottom: 2px; }
h4 { font-size: 15px; margin: 16px 0 6px; }
p.meta { color: var(--muted); margin: 0 0 16px; }
p, li, figcaption { overflow-wrap: break-word; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 16px; }
nav.toc ol { columns: 3; margin: 6px 0; padding-left: 22px; }
nav.toc a { color: var(--accent); text-decoration: none; }
.note { background: var(--warn); border-left: 4px solid #e0a030; padding: 8px 12px; margin: 8px 0; }
.empty { color: var(--muted); font-style: italic; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 13px; }
div.scroll { max-width: 100%; overflow-x: auto; }
div.scroll > table { margin-bottom: 8px; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.reason { max-width: 560px; overflow-wrap: anywhere; font-family: ui-monospace, Menlo, Consolas, monospace;
            font-size: 12px; }
tr.st-failed td, tr.st-broken td { background: var(--bad); }
tr.st-missing td, tr.st-partial td { background: var(--warn); }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12.5px; overflow-wrap: anywhere; }
figure { margin: 12px 0 20px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
ul.summary li { margin: 4px 0; }
details summary { cursor: pointer; color: var(--accent); }
.verdict { background: var(--soft); border-left: 4px solid var(--accent); padding: 6px 12px; }
tr.changed td { background: var(--soft); font-weight: 600; }
ol.findings li { margin: 6px 0; font-size: 16px; }
ol.findings a { font-size: 13px; white-space: nowrap; }
"""


def esc(value: Any) -> str:
    """Any value as escaped HTML text (quotes too: values end up inside attributes)."""
    return html.escape(str(value), quote=True)


def _missing(x: float | None) -> bool:
    # None or NaN/infinity: shown as "n/a", never as "nan%" or "inf"
    return x is None or not math.isfinite(float(x))


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if _missing(x) else f"{100 * x:.{digits}f}%"


def num(x: float | None, digits: int = 3) -> str:
    return "n/a" if _missing(x) else f"{x:.{digits}f}"


def count_mean(x: float | None) -> str:
    """A mean of integer counts: "68" when it is a whole number, "68.5" otherwise (never "68.0")."""
    if x is None:
        return "n/a"
    return f"{x:.0f}" if float(x).is_integer() else f"{x:.1f}"


def points(x: float | None) -> str:
    return "n/a" if _missing(x) else f"{100 * x:+.2f}"


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], numeric: Iterable[int] = (),
          row_classes: Iterable[str] | None = None) -> str:
    """An HTML table; cells are escaped unless given as a ``Raw``."""
    numeric = set(numeric)
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    classes = list(row_classes) if row_classes is not None else None
    for i, row in enumerate(rows):
        cells = []
        for j, v in enumerate(row):
            cls = ' class="num"' if j in numeric else (' class="reason"' if isinstance(v, Reason) else "")
            cells.append(f"<td{cls}>{v if isinstance(v, Raw) else esc(v)}</td>")
        tr = f'<tr class="{esc(classes[i])}">' if classes else "<tr>"
        body.append(tr + "".join(cells) + "</tr>")
    # in its own scrolling box: a table wider than a narrow window scrolls there, not the whole page
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


class Raw(str):
    """Already-escaped HTML for a table cell."""


class Reason(str):
    """A long free-text reason (escaped, set in a wrapping monospace cell)."""


def para(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{esc(text)}</p>' if cls else f"<p>{esc(text)}</p>"


def end_sentence(text: str) -> str:
    """``text`` closed by exactly one full stop. Generated sentences are closed here, because their
    last part (a verdict, a reason, a list) is often built elsewhere and may end in one already:
    "ones." + "." must read "ones.", never "ones..". A closing ellipsis ("...") is kept as it is."""
    t = text.rstrip()
    return t if t.endswith("...") else t.rstrip(".") + "."


def empty(text: str) -> str:
    return para(text, "empty")


def figure(figs: dict[str, FigureRef], name: str) -> str:
    ref = figs.get(name)
    if ref is None:
        return ""
    return (f'<figure id="fig-{esc(ref.filename[:-4])}"><img src="{ref.data_uri}" alt="{esc(ref.caption)}">'
            f"<figcaption>{esc(ref.caption)} <code>{FIGURES_DIR}/{esc(ref.filename)}</code></figcaption></figure>")


def group_title(group: Group, report: ReportData) -> str:
    return f'<h3 class="group">Group {esc(group.label)}</h3>' if len(report.groups) > 1 and group.label else ""


def heading(report: ReportData) -> str:
    """Heading level under a section: h4 when groups take h3."""
    return "h4" if len(report.groups) > 1 else "h3"


def figure_key(label: str) -> str:
    return slug(label)


def group_suffix(report: ReportData, gi: int) -> str:
    return f"_g{gi}" if len(report.groups) > 1 else ""


def gradcam_note(report: ReportData, cells: list | None = None) -> str:
    """Which layer the Grad-CAM maps come from and their size, once when every cell agrees."""
    cells = [c for c in (cells if cells is not None else report.cells) if c.gradcam]
    if not cells:
        return ""
    texts = {c.gradcam_text for c in cells}
    where = (next(iter(texts)) if len(texts) == 1
             else "; ".join(f"{c.label}: {c.gradcam_text}" for c in cells))
    sizes = sorted({getattr(r, "image_size", 32) for c in cells for r in c.runs} or {32})
    images = " or ".join(f"{s}×{s}" for s in sizes)
    return para(f"Grad-CAM layer and map size (before upsampling to the images' {images}): {where}. Choose the "
                "layer with [report].gradcam_layer in the grid file.", "meta")
