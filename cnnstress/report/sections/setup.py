"""What each variant changes: the resolved spec keys that differ from the baseline."""

from __future__ import annotations

import json
from typing import Any

from ..markup import Raw, empty, esc, group_title, heading, para, table
from .base import Section


def _value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)


class SetupSection(Section):
    id = "setup"
    title = "What each variant changes"

    def variant_fields(self, cell, agg):
        return {"differs_from_baseline": [{"key": k, "baseline": a, "variant": b} for k, a, b in cell.diff]}

    def html(self, report, figs):
        out = [para(f"Each variant is compared with the baseline '{report.baseline}' of its group. The spec keys "
                    "below are all that differs (seed and grid values aside), so a reader can check that a "
                    "modification is constrained to one thing.")]
        any_rows = False
        for group in report.groups:
            out.append(group_title(group, report))
            for cell in group.cells[1:]:
                any_rows = True
                h = heading(report)
                out.append(f"<{h}>{esc(cell.label)} vs {esc(report.baseline)}</{h}>")
                if cell.diff:
                    out.append(para(f"{len(cell.diff)} setting(s) differ."))
                    out.append(table(("setting", "baseline", cell.variant),
                                     ([Raw(f"<code>{esc(k)}</code>"), _value(a), _value(b)] for k, a, b in cell.diff)))
                else:
                    out.append(empty("No difference found in the resolved specs."))
        if not any_rows:
            out.append(empty("The sweep has only the baseline."))
        return "".join(out)


SECTION = SetupSection()
