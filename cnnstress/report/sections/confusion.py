"""Confusion matrices: per cell, summed over seeds."""

from __future__ import annotations

import numpy as np

from ...analysis import metrics
from ..markup import empty, figure, figure_key, para
from ..model import slug
from .base import FigureSpec, Section


class ConfusionSection(Section):
    id = "confusion"
    title = "Confusion matrices"

    def reduce(self, res, run):
        return metrics.confusion_matrix(run.labels, run.preds, run.num_classes)

    def aggregate(self, cell, parts, ctx):
        return np.sum(parts, axis=0)

    def figures(self, report):
        specs = []
        for cell in report.cells:
            def draw(cell=cell):
                from .. import figures as F

                return F.confusion(cell, cell.parts.get(self.id), report.class_names)

            specs.append(FigureSpec(f"confusion_{slug(cell.label)}", draw,
                                    f"{cell.label}: confusion matrix summed over seeds (rows: true class)."))
        return specs

    def html(self, report, figs):
        body = "".join(figure(figs, f"confusion_{figure_key(c.label)}") for c in report.cells)
        note = para("Rows are true classes, columns predicted classes; counts are summed over seeds." +
                    (" With more than 20 classes the cells carry no numbers." if report.num_classes > 20 else ""))
        return note + body if body else empty("No finished runs.")


SECTION = ConfusionSection()
