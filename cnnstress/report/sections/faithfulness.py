"""Grad-CAM faithfulness: deletion and insertion curves of Grad-CAM maps against random maps, with removed
pixels mean-filled and, where the run measured it, by ROAD's noisy linear imputation."""

from __future__ import annotations

import numpy as np

from ...analysis import gradcam
from ..markup import empty, figure, gradcam_note, num, para, table
from .base import FigureSpec, Metric, Section, cell_parts

BASE_KINDS = ("deletion_gradcam", "deletion_random", "insertion_gradcam", "insertion_random")
# (array suffix, words): mean fill and ROAD's noisy linear imputation ([stress].faithfulness_road)
REMOVALS = (("", "mean fill"), ("_road", "ROAD imputation"))
FAITHFULNESS_KINDS = tuple(k + suffix for suffix, _ in REMOVALS for k in BASE_KINDS)


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
        def draw(suffix: str = ""):
            from .. import figures as F

            return F.faithfulness([(c, c.parts.get(self.id)) for c in report.cells], suffix=suffix)

        return [FigureSpec("faithfulness", draw, "Deletion and insertion curves: Grad-CAM maps vs random maps "
                                                 "(mean over the sampled test images and seeds); removed pixels "
                                                 "take the dataset mean."),
                FigureSpec("faithfulness_road", lambda: draw("_road"),
                           "The same curves with removed pixels filled by ROAD's noisy linear imputation (Rong et al. "
                           "2022): each removed pixel the weighted mean of its neighbours plus a little noise, so the "
                           "image stays closer to the data than a flat patch.")]

    def html(self, report, figs):
        items = [(c, a) for c, a in cell_parts(report.cells, self.id) if a["auc"]]
        if not items:
            return empty("No deletion/insertion curves were stored ([stress].faithfulness_samples is 0).")
        rows = []
        for c, f in items:
            for suffix, words in REMOVALS:
                a = {k: f["auc"][k + suffix] for k in BASE_KINDS if k + suffix in f["auc"]}
                if not a:
                    continue
                rows.append([c.label, words, f["n"], num(a.get("deletion_gradcam")), num(a.get("deletion_random")),
                             num(a.get("insertion_gradcam")), num(a.get("insertion_random")), _verdict(a)])
        road = any(k.endswith("_road") for _, f in items for k in f["auc"])
        return (para("Pixels are removed (deletion) or revealed (insertion) in the order a map ranks them; a faithful "
                     "map makes the predicted class's probability fall fast (low deletion AUC) and rise fast (high "
                     "insertion AUC), compared with random maps. Mean fill puts flat patches of the dataset mean in "
                     "place of removed pixels, which takes images off the data the model saw: the probability may "
                     "fall because of the patch's shape, not the pixels lost."
                     + (" ROAD's noisy linear imputation fills them from their neighbours instead; where the two "
                        "removals disagree on Grad-CAM against random, the mean-fill verdict is the one to doubt."
                        if road else " [stress].faithfulness_road = true adds ROAD's imputation beside it."))
                + gradcam_note(report, [c for c, _ in items])
                + table(("variant", "removal", "images", "deletion AUC Grad-CAM", "deletion AUC random",
                         "insertion AUC Grad-CAM", "insertion AUC random", "Grad-CAM vs random"), rows,
                        numeric=range(2, 7))
                + figure(figs, "faithfulness") + figure(figs, "faithfulness_road"))

    def metrics(self, part):
        labels = {"deletion_gradcam": ("deletion AUC of Grad-CAM", False),
                  "insertion_gradcam": ("insertion AUC of Grad-CAM", True),
                  "deletion_gradcam_road": ("deletion AUC of Grad-CAM, ROAD imputation", False),
                  "insertion_gradcam_road": ("insertion AUC of Grad-CAM, ROAD imputation", True)}
        return [Metric(k, label, part["auc"][k], better, points=False, headline=True)
                for k, (label, better) in labels.items()
                if k in part["auc"]]


def _verdict(a: dict[str, float]) -> str:
    """'deletion beats random; insertion does not beat random' from one removal's AUCs."""
    verdict = []
    if "deletion_gradcam" in a and "deletion_random" in a:
        verdict.append("deletion " + ("beats" if a["deletion_gradcam"] < a["deletion_random"] else "does not beat")
                       + " random")
    if "insertion_gradcam" in a and "insertion_random" in a:
        verdict.append("insertion " + ("beats" if a["insertion_gradcam"] > a["insertion_random"] else "does not beat")
                       + " random")
    return "; ".join(verdict)


SECTION = FaithfulnessSection()
