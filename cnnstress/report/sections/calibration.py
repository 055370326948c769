"""Calibration: ECE (binned, adaptive, classwise, smooth), NLL, Brier, temperature scaling fitted on the
validation logits, binned and smooth reliability diagrams."""

from __future__ import annotations

import math

import numpy as np

from ...analysis import calibration, metrics
from ..markup import empty, figure, num, para, table
from .base import FigureSpec, Metric, Section, cell_parts

RELIABILITY_BINS = 15
KEYS = ("ece", "nll", "brier", "temperature", "ece_after", "nll_after", "ace", "classwise_ece", "smece")
# the calibration errors beside 15-bin ECE: (key, words on the page); analysis.calibration defines them
EXTRA_ECES = (("ace", "adaptive ECE"), ("classwise_ece", "classwise ECE"), ("smece", "smooth ECE"))


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
    run_keys = ("ece", "nll", "brier", "temperature", "ece_after", "ace", "classwise_ece", "smece")
    csv_columns = run_keys
    headline_columns = ("ECE",)

    def reduce(self, res, run):
        val_logits = val_labels = None
        if res.has("val/logits"):
            val_logits, val_labels = res.read("val/logits"), res.read("val/label").astype(np.int64)
        return {"scores": calibration.calibration_summary(run.logits, run.labels, val_logits, val_labels),
                "reliability": calibration.reliability(metrics.softmax(run.logits), run.labels, RELIABILITY_BINS),
                "smooth": calibration.smooth_reliability_top(run.conf, run.correct)}

    def aggregate(self, cell, parts, ctx):
        """Means over seeds (``scores``), the reliability bins pooled over seeds and the smooth
        reliability curves pooled over seeds (weighted by each run's confidence density)."""
        return {"scores": {k: mean_or_none([p["scores"].get(k) for p in parts]) for k in KEYS},
                "reliability": pool_bins([p["reliability"] for p in parts]),
                "smooth": calibration.pool_smooth([p.get("smooth") for p in parts])}

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

        def draw_smooth():
            from .. import figures as F

            return F.smooth_reliability([(c, a.get("smooth"), a["scores"])
                                         for c, a in cell_parts(report.cells, self.id)])

        return [FigureSpec("reliability", draw, "Reliability diagrams pooled over seeds; title: ECE before → after "
                                                "temperature scaling (fitted on validation logits)."),
                FigureSpec("reliability_smooth", draw_smooth,
                           "Smooth reliability diagrams (Błasiok & Nakkiran 2024): accuracy as a Gaussian-kernel "
                           "smoothed function of confidence at the smooth ECE's own bandwidth, with the density of "
                           "the confidences below; no bin count to choose. Curves of the seeds pooled, weighted by "
                           "their densities; title: smooth ECE (mean over seeds).")]

    def html(self, report, figs):
        rows = []
        for c in report.cells:
            k = scores(c)
            rows.append([c.label, c.n_runs, num(k.get("ece")), num(k.get("nll")), num(k.get("brier")),
                         num(k.get("temperature"), 2), num(k.get("ece_after")), num(k.get("nll_after")),
                         num(k.get("ace")), num(k.get("classwise_ece")), num(k.get("smece"))])
        if not any(c.n_runs for c in report.cells):
            return empty("No finished runs.")
        note = transfer_text(report.parts.get(self.id))
        return (para("Means over seeds. The temperature is fitted on each run's validation logits (never on the "
                     "test set); 'after' is the test set scaled by it. ECE uses 15 equal-width bins of the top "
                     "probability; adaptive ECE 15 bins of equal counts; classwise ECE is the binned ECE of every "
                     "class's probability, averaged over classes; smooth ECE smooths instead of binning, so it has "
                     "no bin count to choose (docs/calibration-and-selective.md).")
                + (para(note) if note else "")
                + table(("variant", "n", "ECE", "NLL", "Brier", "temperature", "ECE after", "NLL after",
                         "adaptive ECE", "classwise ECE", "smooth ECE"), rows, numeric=range(1, 11))
                + figure(figs, "reliability") + figure(figs, "reliability_smooth"))

    def finish(self, report, ctx):
        """Whether the temperature fitted on validation can be trusted on the test set: the planted
        shortcut of shapes puts validation (carved from the training images) and test in different
        distributions, and a higher test ECE after scaling than before shows it did not transfer."""
        spec = ctx.spec0
        frac = float(spec.dataset.params.get("shortcut", 0.0)) if spec.dataset.name == "shapes" else 0.0
        worse = [(c.label, k["ece"], k["ece_after"]) for c in report.cells
                 if (k := scores(c)).get("ece") is not None and k.get("ece_after") is not None
                 and k["ece_after"] > k["ece"]]
        return {"shortcut": frac if frac > 0 else None, "worse_after": worse}

    def summary_fields(self, report):
        return {"calibration_transfer": transfer_text(report.parts.get(self.id))}

    def summary_lines(self, report):
        text = transfer_text(report.parts.get(self.id))
        return [text] if text else []

    def metrics(self, part):
        sc = part["scores"]
        out = [Metric("ece", "ECE", sc.get("ece"), False, headline=True), Metric("nll", "NLL", sc.get("nll"), False, points=False),
               Metric("brier", "Brier score", sc.get("brier"), False, points=False),
               Metric("ece_after", "ECE after temperature scaling", sc.get("ece_after"), False),
               Metric("nll_after", "NLL after temperature scaling", sc.get("nll_after"), False, points=False)]
        out += [Metric(k, label, sc.get(k), False) for k, label in EXTRA_ECES]
        return [m for m in out if m.value is not None]


def transfer_text(found) -> str | None:
    """Why the temperature fitted on validation does not transfer to the test set (None: no sign)."""
    if not found or (found["shortcut"] is None and not found["worse_after"]):
        return None
    why = []
    if found["shortcut"] is not None:
        why.append(f"validation and test differ in distribution: the validation images are carved from the training "
                   f"split, where {100 * found['shortcut']:.0f}% of the images carry the planted background shortcut, "
                   "while the test images carry none, so a network that uses the shortcut is more confident and "
                   "more often right on validation than on test")
    if found["worse_after"]:
        listed = ", ".join(f"{label} {b:.3f} → {a:.3f}" for label, b, a in found["worse_after"][:4])
        more = f" and {len(found['worse_after']) - 4} more" if len(found["worse_after"]) > 4 else ""
        why.append(f"test ECE is higher after scaling than before ({listed}{more})")
    return ("The temperature fitted on validation does not transfer to the test set: " + "; and ".join(why) + ". "
            "Read 'after' as what validation-fitted scaling does under this shift, not as calibration achieved.")


def scores(cell) -> dict:
    """The cell's calibration means over seeds ({} when it has none)."""
    agg = cell.parts.get(CalibrationSection.id)
    return agg["scores"] if agg else {}


SECTION = CalibrationSection()
