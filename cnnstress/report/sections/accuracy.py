"""Test accuracy: per variant over seeds, with the paired delta against the baseline.

The accuracies themselves are shared by every section (gather reads them with the test logits:
``Cell.accuracies``, ``acc_mean``, ``acc_std``, ``acc_ci95``); this section shows them.
"""

from __future__ import annotations

from ..markup import para, pct, points, table
from .base import Section


def delta_text(comp) -> str:
    if comp is None:
        return "n/a"
    if comp.stats["ci95"] is None:
        return f"{points(comp.stats['accuracy_delta_mean'])} (no interval)"
    lo, hi = comp.stats["ci95"]
    return f"{points(comp.stats['accuracy_delta_mean'])} [{points(lo)}, {points(hi)}]"


class AccuracySection(Section):
    id = "accuracy"
    title = "Test accuracy"
    depends = ("comparison",)

    def html(self, report, figs):
        comps = {(c.group, c.variant): c for c in report.comparisons}
        rows = []
        for cell in report.cells:
            ci = f"[{pct(cell.acc_ci95[0])}, {pct(cell.acc_ci95[1])}]" if cell.acc_ci95 else "n/a"
            delta = "(baseline)" if cell.is_baseline else delta_text(comps.get((cell.group, cell.variant)))
            rows.append([cell.label, cell.n_runs, ", ".join(str(s) for s in cell.seeds) or "-",
                         pct(cell.acc_mean), pct(cell.acc_std), ci, delta,
                         ", ".join(pct(a) for a in cell.accuracies) or "-"])
        return (para("Accuracies are over the full test set; mean and std (ddof=1) over seeds, the 95% CI of the "
                     "mean from Student's t. The delta pairs runs by seed value (points, with its 95% "
                     "interval over test images; the same numbers as What the modification changed).")
                + table(("variant", "n", "seeds", "mean", "std", "95% CI of mean", "delta vs baseline (points)",
                         "per run"), rows, numeric=(1, 3, 4, 5, 6)))


SECTION = AccuracySection()
