"""Per-class accuracy: every cell side by side, and each variant's per-class change vs the baseline."""

from __future__ import annotations

import math
import warnings

import numpy as np

from ...analysis import metrics
from ..markup import empty, esc, figure, figure_key, group_suffix, group_title, pct, points, table
from ..model import slug
from .base import FigureSpec, Section, cell_parts


class PerClassSection(Section):
    id = "per-class"
    title = "Per-class accuracy"
    depends = ("comparison",)

    def reduce(self, res, run):
        return metrics.per_class_accuracy(run.labels, run.preds, run.num_classes)

    def aggregate(self, cell, parts, ctx):
        with warnings.catch_warnings():  # classes absent from the test set stay NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmean(np.stack(parts), axis=0)

    def compare(self, group, ctx):
        """variant -> (class order, largest gain first; delta variant - baseline), for each variant
        that has per-class accuracy when the baseline has it too."""
        base = group.cells[0].parts.get(self.id)
        if base is None:
            return None
        return {c.variant: metrics.per_class_delta(base, agg) for c, agg in cell_parts(group.cells[1:], self.id)}

    def figures(self, report):
        specs = []
        names = report.class_names
        for gi, group in enumerate(report.groups):
            g = group_suffix(report, gi)

            def bars(group=group):
                from .. import figures as F

                return F.per_class([(c, c.parts.get(self.id)) for c in group.cells], names)

            specs.append(FigureSpec(f"per_class{g}", bars, "Per-class test accuracy (mean over seeds)."))
            deltas = group.parts.get(self.id) or {}
            for comp in group.comparisons:
                if comp.variant not in deltas:
                    continue

                def fall(comp=comp, od=deltas[comp.variant]):
                    from .. import figures as F

                    return F.waterfall(comp, od[0], od[1], names)

                specs.append(FigureSpec(f"waterfall_{slug(comp.label)}", fall,
                                        f"{comp.label} − {comp.baseline}: per-class accuracy change, sorted."))
        return specs

    def _delta_table(self, report, group, comp) -> str:
        """Every class's accuracy in the baseline and the variant and their difference, sorted as the
        waterfall (largest gain first): the figure can only label so many classes, the table has all."""
        base = group.cells[0]
        var = next((c for c in group.cells if c.variant == comp.variant), None)
        delta = (group.parts.get(self.id) or {}).get(comp.variant)
        if base.parts.get(self.id) is None or var is None or var.parts.get(self.id) is None or delta is None:
            return ""
        base_acc, var_acc = base.parts[self.id], var.parts[self.id]
        order, diff = delta

        def known(x: float) -> float | None:  # a class absent from the test set has NaN accuracy
            return None if math.isnan(x) else float(x)

        rows = [[report.class_names[i], pct(known(base_acc[i]), 1), pct(known(var_acc[i]), 1), points(known(diff[i]))]
                for i in (int(i) for i in order)]
        opened = " open" if len(rows) <= 20 else ""
        return (f"<details{opened}><summary>{esc(comp.label)} − {esc(comp.baseline)}: all {len(rows)} classes, "
                "sorted by change</summary>"
                + table(("class", f"{base.variant} accuracy", f"{comp.variant} accuracy", "change (points)"), rows,
                        numeric=(1, 2, 3)) + "</details>")

    def html(self, report, figs):
        out = []
        for gi, group in enumerate(report.groups):
            out.append(group_title(group, report))
            out.append(figure(figs, f"per_class{group_suffix(report, gi)}"))
            for comp in group.comparisons:
                out.append(figure(figs, f"waterfall_{figure_key(comp.label)}"))
                out.append(self._delta_table(report, group, comp))
        body = "".join(out)
        return body if "<figure" in body else empty("No finished runs.")


SECTION = PerClassSection()
