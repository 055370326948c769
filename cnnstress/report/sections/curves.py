"""Training curves: /history/* per epoch, mean over seeds with a min..max band."""

from __future__ import annotations

import numpy as np

from ...layout import HISTORY_KEYS
from ..markup import empty, figure, figure_key
from ..model import slug
from .base import FigureSpec, Section


class CurvesSection(Section):
    id = "curves"
    title = "Training curves"

    def reduce(self, res, run):
        return {k: np.asarray(res.read(f"history/{k}"), dtype=np.float64) for k in HISTORY_KEYS}

    def aggregate(self, cell, parts, ctx):
        """History arrays as (S, E), cut to the shortest run (runs of one cell have the same epochs)."""
        e = min(h["epoch"].shape[0] for h in parts)
        return {k: np.stack([h[k][:e] for h in parts]) for k in HISTORY_KEYS}

    def figures(self, report):
        def val():
            from .. import figures as F

            return F.val_accuracy([(c, c.parts.get(self.id)) for c in report.cells])

        specs = [FigureSpec("val_accuracy", val, "Validation accuracy of every variant (band: min..max over seeds).")]
        for cell in report.cells:
            def draw(cell=cell):
                from .. import figures as F

                return F.curves(cell, cell.parts.get(self.id))

            specs.append(FigureSpec(f"curves_{slug(cell.label)}", draw,
                                    f"{cell.label}: loss and accuracy per epoch, mean over seeds with a min..max band."))
        return specs

    def html(self, report, figs):
        parts = [figure(figs, "val_accuracy")]
        for cell in report.cells:
            parts.append(figure(figs, f"curves_{figure_key(cell.label)}"))
        body = "".join(parts)
        return body or empty("No finished runs.")


SECTION = CurvesSection()
