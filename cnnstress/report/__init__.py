"""The gather report: figures (matplotlib, Agg) and one self-contained HTML page.

``render(report, report_dir)`` draws every figure the sections (``report.sections``) ask for into
``report_dir/figures/*.png`` and returns the text of ``index.html`` with the same figures embedded
as base64 PNG; the caller writes index.html (last, atomically) next to the JSON and CSV files.

This package is the only importer of matplotlib in the project. Importing ``cnnstress.report`` or
``cnnstress.report.model`` loads no matplotlib; ``render`` does.
"""

from __future__ import annotations

from pathlib import Path

from ..layout import FIGURES_DIR
from .model import ReportData


def render(report: ReportData, report_dir: Path, *, figures: bool = True) -> str:
    """Write ``report_dir/figures/*.png`` (removing stale ones) and return index.html's text.

    ``figures=False`` draws nothing (and loads no matplotlib): the page has tables only.
    """
    from . import html

    figs = {}
    if figures:
        from . import figures as drawing  # matplotlib loads here, on first use
        from .sections import SECTIONS

        figs = drawing.draw_all(report, Path(report_dir) / FIGURES_DIR, SECTIONS)
    return html.page(report, figs)


__all__ = ["render", "ReportData"]
