"""Summary: the sweep's description, the headline sentences, and the one-page overview figure."""

from __future__ import annotations

from ..markup import empty, esc, figure, para
from .base import FigureSpec, Section
from .calibration import scores


class SummarySection(Section):
    id = "summary"
    title = "Summary"
    depends = ("calibration", "comparison")

    def figures(self, report):
        def draw():
            from .. import figures as F

            return F.overview(report, scores)

        return [FigureSpec("overview", draw, "One-page comparison: test accuracy per run, accuracy delta vs the "
                                             "baseline with its 95% interval over test images, disagreement counts and "
                                             "ECE.")]

    def html(self, report, figs):
        out = []
        if report.description:
            out.append(para(report.description))
        out.append('<ul class="summary">' + "".join(f"<li>{esc(line)}</li>" for line in report.summary_lines)
                   + "</ul>")
        out.append(figure(figs, "overview") or empty("No finished runs: nothing to plot yet."))
        return "".join(out)


SECTION = SummarySection()
