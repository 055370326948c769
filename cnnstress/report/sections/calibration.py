"""Calibration: ECE, NLL, Brier, temperature scaling fitted on the validation logits, reliability diagrams."""

from __future__ import annotations

import math

import numpy as np

from ...analysis import calibration, metrics
from ..markup import empty, figure, num, para, table
from .base import FigureSpec, Metric, Section, cell_parts

RELIABILITY_BINS = 15
KEYS = ("ece", "nll", "brier", "temperature", "ece_after", "nll_after")


def mean_or_none(values: list) -> float | None:
    """Mean ignoring None and NaN; None when nothing is left."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(vals)) if vals else None


def pool_bins(rels: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Reliability bins pooled over several sets (count-weighted accuracy and confidence)."""
    count = np.sum([r["count"] for r in rels], axis=0)
    acc_sum = np.sum([np.nan_to_num(r["accuracy"]) * r["count"] for r in rels], axis=0)
    conf_sum = np.sum([np.nan_to_num(r["confidence"]) * r["count"] for r in rels], axis=0)
    acc = np.full(count.shape, np.nan)
    conf = np.full(count.shape, np.nan)
    np.divide(acc_sum, count, out=acc, where=count > 0)
    np.divide(conf_sum, count, out=conf, where=count > 0)
    return {"bin_edges": rels[0]["bin_edges"], "accuracy": acc, "confidence": conf, "count": count}


class CalibrationSection(Section):
    id = "calibration"
    title = "Calibration"
    run_keys = ("ece", "nll", "brier", "temperature", "ece_after")
    csv_columns = run_keys
    headline_columns = ("ECE",)

    def reduce(self, res, run):
        val_logits = val_labels = None
        if res.has("val/logits"):
            val_logits, val_labels = res.read("val/logits"), res.read("val/label").astype(np.int64)
        return {"scores": calibration.calibration_summary(run.logits, run.labels, val_logits, val_labels),
                "reliability": calibration.reliability(metrics.softmax(run.logits), run.labels, RELIABILITY_BINS)}

    def aggregate(self, cell, parts, ctx):
        """Means over seeds (``scores``) and the reliability bins pooled over seeds."""
        return {"scores": {k: mean_or_none([p["scores"].get(k) for p in parts]) for k in KEYS},
                "reliability": pool_bins([p["reliability"] for p in parts])}

    def run_fields(self, run, part):
        return {k: part["scores"][k] for k in self.run_keys}

    def variant_fields(self, cell, agg):
        return {f"{k}_mean": v for k, v in (agg["scores"] if agg else {}).items()}

    def headline(self, cell, agg):
        ece = (agg["scores"] if agg else {}).get("ece")
        return ("n/a" if ece is None else f"{ece:.3f}",)

    def figures(self, report):
        def draw():
            from .. import figures as F

            return F.reliability([(c, a["reliability"], a["scores"]) for c, a in cell_parts(report.cells, self.id)])

        return [FigureSpec("reliability", draw, "Reliability diagrams pooled over seeds; title: ECE before → after "
                                                "temperature scaling (fitted on validation logits).")]

    def html(self, report, figs):
        rows = []
        for c in report.cells:
            k = scores(c)
            rows.append([c.label, c.n_runs, num(k.get("ece")), num(k.get("nll")), num(k.get("brier")),
                         num(k.get("temperature"), 2), num(k.get("ece_after")), num(k.get("nll_after"))])
        if not any(c.n_runs for c in report.cells):
            return empty("No finished runs.")
        return (para("Means over seeds. The temperature is fitted on each run's validation logits (never on the "
                     "test set); 'after' is the test set scaled by it.")
                + table(("variant", "n", "ECE", "NLL", "Brier", "temperature", "ECE after", "NLL after"), rows,
                        numeric=range(1, 8))
                + figure(figs, "reliability"))

    def metrics(self, part):
        sc = part["scores"]
        out = [Metric("ece", "ECE", sc.get("ece"), False, headline=True), Metric("nll", "NLL", sc.get("nll"), False, points=False),
               Metric("brier", "Brier score", sc.get("brier"), False, points=False),
               Metric("ece_after", "ECE after temperature scaling", sc.get("ece_after"), False),
               Metric("nll_after", "NLL after temperature scaling", sc.get("nll_after"), False, points=False)]
        return [m for m in out if m.value is not None]


def scores(cell) -> dict:
    """The cell's calibration means over seeds ({} when it has none)."""
    agg = cell.parts.get(CalibrationSection.id)
    return agg["scores"] if agg else {}


SECTION = CalibrationSection()
