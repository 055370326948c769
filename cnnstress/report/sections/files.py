"""Files: what the report folder holds besides this page."""

from __future__ import annotations

from ..markup import esc
from .base import Section


class FilesSection(Section):
    id = "files"
    title = "Files"

    def html(self, report, figs):
        items = [("summary.json", "headline numbers per run, per variant and per comparison"),
                 ("failures.json", "every high-confidence failure of every run"),
                 ("runs.csv", "one row per expected run"),
                 ("figures/", f"the {len(figs)} figures of this page as PNG files")]
        return "<ul>" + "".join(f"<li><code>{esc(n)}</code>: {esc(d)}</li>" for n, d in items) + "</ul>"


SECTION = FilesSection()
