"""Files: what the report folder holds besides this page."""

from __future__ import annotations

from ...layout import FIGURES_DIR, REPORT_FAILURES, REPORT_RUNS_CSV, REPORT_SUMMARY
from ..markup import esc
from .base import Section


class FilesSection(Section):
    id = "files"
    title = "Files"

    def html(self, report, figs):
        items = [(REPORT_SUMMARY, "headline numbers per run, per variant and per comparison"),
                 (REPORT_FAILURES, "every high-confidence failure of every run"),
                 (REPORT_RUNS_CSV, "one row per expected run"),
                 (f"{FIGURES_DIR}/", f"the {len(figs)} figures of this page as PNG files")]
        return "<ul>" + "".join(f"<li><code>{esc(n)}</code>: {esc(d)}</li>" for n, d in items) + "</ul>"


SECTION = FilesSection()
