"""Grad-CAM faithfulness: deletion and insertion curves of Grad-CAM maps against random maps."""

from __future__ import annotations

import numpy as np

from ...analysis import gradcam
from ..markup import empty, figure, gradcam_note, num, para, table
from .base import FigureSpec, Metric, Section, cell_parts

FAITHFULNESS_KINDS = ("deletion_gradcam", "deletion_random", "insertion_gradcam", "insertion_random")


class FaithfulnessSection(Section):
    id = "faithfulness"
    title = "Grad-CAM faithfulness"
    run_keys = ("faithfulness_auc",)

    def reduce(self, res, run):
        """Mean deletion/insertion curves and mean AUC per kind (Grad-CAM vs random maps); None without."""
        curves, aucs, n = {}, {}, 0
        for kind in FAITHFULNESS_KINDS:
            key = f"faithfulness/{kind}"
            if not res.has(key):
                continue
            arr = res.read(key).astype(np.float64)
            if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] < 2 or not np.isfinite(arr).all():
                continue
            curves[kind] = arr.mean(axis=0)
            aucs[kind] = float(np.mean(gradcam.auc(arr)))
            n = arr.shape[0]
        return {"curves": curves, "auc": aucs, "n": n} if curves else None

    def aggregate(self, cell, parts, ctx):
        faith = [f for f in parts if f]
        if not faith:
            return None
        kinds = [k for k in FAITHFULNESS_KINDS if all(k in f["curves"] for f in faith)]
        return {"curves": {k: np.mean([f["curves"][k] for f in faith], axis=0) for k in kinds},
                "auc": {k: float(np.mean([f["auc"][k] for f in faith])) for k in kinds},
                "n": int(sum(f["n"] for f in faith)), "runs": len(faith)}

    def run_fields(self, run, part):
        return {"faithfulness_auc": (part or {}).get("auc")}

    def variant_fields(self, cell, agg):
        return {"faithfulness_auc": agg["auc"] if agg else None}

    def figures(self, report):
        def draw():
            from .. import figures as F

            return F.faithfulness([(c, c.parts.get(self.id)) for c in report.cells])

        return [FigureSpec("faithfulness", draw, "Deletion and insertion curves: Grad-CAM maps vs random maps "
                                                 "(mean over the sampled test images and seeds).")]

    def html(self, report, figs):
        items = [(c, a) for c, a in cell_parts(report.cells, self.id) if a["auc"]]
        if not items:
            return empty("No deletion/insertion curves were stored ([stress].faithfulness_samples is 0).")
        rows = []
        for c, f in items:
            a = f["auc"]
            verdict = []
            if "deletion_gradcam" in a and "deletion_random" in a:
                verdict.append("deletion " + ("beats" if a["deletion_gradcam"] < a["deletion_random"]
                                              else "does not beat") + " random")
            if "insertion_gradcam" in a and "insertion_random" in a:
                verdict.append("insertion " + ("beats" if a["insertion_gradcam"] > a["insertion_random"]
                                               else "does not beat") + " random")
            rows.append([c.label, f["n"], num(a.get("deletion_gradcam")), num(a.get("deletion_random")),
                         num(a.get("insertion_gradcam")), num(a.get("insertion_random")), "; ".join(verdict)])
        return (para("Pixels are removed (deletion) or revealed (insertion) in the order a map ranks them; a faithful "
                     "map makes the predicted class's probability fall fast (low deletion AUC) and rise fast (high "
                     "insertion AUC), compared with random maps.")
                + gradcam_note(report, [c for c, _ in items])
                + table(("variant", "images", "deletion AUC Grad-CAM", "deletion AUC random", "insertion AUC Grad-CAM",
                         "insertion AUC random", "Grad-CAM vs random"), rows, numeric=range(1, 6))
                + figure(figs, "faithfulness"))

    def metrics(self, part):
        labels = {"deletion_gradcam": ("deletion AUC of Grad-CAM", False),
                  "insertion_gradcam": ("insertion AUC of Grad-CAM", True)}
        return [Metric(k, label, part["auc"][k], better, points=False, headline=True)
                for k, (label, better) in labels.items()
                if k in part["auc"]]


SECTION = FaithfulnessSection()
