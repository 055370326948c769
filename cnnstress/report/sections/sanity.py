"""Are the Grad-CAM maps about the model at all? The cascading model-parameter randomisation test
(Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018) from ``/sanity``: the rank
correlation of the maps with the trained model's as its blocks are re-initialised from the output
down."""

from __future__ import annotations

import re

import numpy as np

from ...analysis import sanity
from ..markup import empty, figure, num, para, table
from .base import FigureSpec, Metric, Section, cell_parts

_KEY = re.compile(r"^sanity/randomization/([0-9]{2})_([a-z0-9_]+)/gradcam$")
#: Mean rank correlation above which the maps after the last step are called "still similar".
SIMILAR = 0.5
TOPK = 0.1  # top-k overlap: the top 10% of pixels


class SanitySection(Section):
    id = "sanity"
    title = "Grad-CAM sanity check (weight randomisation)"
    requires = ("sanity/positions",)
    run_keys = ("sanity_final_rank_correlation",)

    def reduce(self, res, run):
        """The randomisation curve: mean Spearman rho and top-10% overlap with the trained maps per step."""
        steps = sorted((int(m.group(1)), m.group(2), key) for key in res.keys() if (m := _KEY.match(key)))
        if len(steps) < 2 or steps[0][0] != 0:
            return None
        ref = res.read(steps[0][2]).astype(np.float32)
        curve = sanity.randomization_curve(ref, {name: res.read(key).astype(np.float32) for _, name, key in steps},
                                           k_fraction=TOPK)
        return {"curve": curve, "n": int(ref.shape[0])}

    def aggregate(self, cell, parts, ctx):
        parts = [p for p in parts if p]
        if not parts:
            return None
        names = parts[0]["curve"]["steps"]
        parts = [p for p in parts if p["curve"]["steps"] == names]
        rho = np.array([p["curve"]["spearman"] for p in parts])
        overlap = np.array([p["curve"]["topk_overlap"] for p in parts])
        mean_curve = {"steps": names, "spearman": np.nanmean(rho, axis=0), "topk_overlap": overlap.mean(axis=0)}
        return {"steps": names, "rho": rho, "overlap": overlap, "mean": mean_curve,
                "stays": sanity.stays_similar(mean_curve, SIMILAR), "n": parts[0]["n"], "seeds": len(parts)}

    def run_fields(self, run, part):
        return {"sanity_final_rank_correlation": float(part["curve"]["spearman"][-1]) if part else None}

    def variant_fields(self, cell, agg):
        if not agg:
            return {"sanity": None}
        return {"sanity": {"steps": agg["steps"], "rank_correlation": [float(x) for x in agg["mean"]["spearman"]],
                           "topk_overlap": [float(x) for x in agg["mean"]["topk_overlap"]],
                           "maps_stay_similar": agg["stays"]}}

    def summary_lines(self, report):
        lines = []
        for c in report.cells:
            agg = c.parts.get(self.id)
            if agg and agg["stays"]:
                lines.append(f"{c.label}: Grad-CAM maps stay similar to the trained model's after every weight is "
                             f"re-initialised (rank correlation {num(agg['mean']['spearman'][-1], 2)}): they do not "
                             "explain this model.")
        return lines

    def figures(self, report):
        items = [(c, c.parts.get(self.id)) for c in report.cells]
        return [FigureSpec("sanity", lambda: _draw(items),
                           "Rank correlation (left) and top-10% overlap (right) of Grad-CAM maps with the trained "
                           "model's, as blocks are re-initialised from the output down (cumulatively); mean over "
                           "seeds (line), min..max (band).")]

    def html(self, report, figs):
        items = cell_parts(report.cells, self.id)
        if not items:
            return empty("No run stored the randomisation maps ([stress].sanity is off).")
        rows, words = [], []
        for c, agg in items:
            for i, name in enumerate(agg["steps"]):
                rows.append([c.label, i, "none (trained)" if i == 0 else f"…, {name}", num(agg["mean"]["spearman"][i], 2),
                             num(agg["mean"]["topk_overlap"][i], 2)])
            final = agg["mean"]["spearman"][-1]
            if agg["stays"]:
                words.append(f"{c.label}: the maps still correlate {num(final, 2)} with the trained model's once every "
                             "block is random, so at this layer Grad-CAM shows image structure rather than what the "
                             "model learned; do not read its maps as explanations.")
            else:
                words.append(f"{c.label}: the correlation falls to {num(final, 2)} once the weights are random: the "
                             "maps depend on what the model learned (the sanity check passes).")
        return (para(f"On {items[0][1]['n']} test images (the trained model's predicted class), the model's blocks are "
                     "re-initialised one after another from the output down, and Grad-CAM is recomputed after each "
                     "step. Maps that stay the same when the weights are random cannot be explaining the model.")
                + "".join(para(w) for w in words)
                + table(("variant", "step", "blocks re-initialised", "rank correlation", "top-10% overlap"), rows,
                        numeric=(1, 3, 4))
                + figure(figs, "sanity"))

    def metrics(self, part):
        return [Metric("sanity_rank_correlation", "Grad-CAM rank correlation after full randomisation",
                       float(part["curve"]["spearman"][-1]), None, points=False, headline=True)]


def _draw(items):
    items = [(c, a) for c, a in items if a]
    if not items:
        return None
    from .. import figures as F

    fig = F._figure(10.0, 3.6)
    axes = fig.subplots(1, 2)
    for ax, key, ylabel in ((axes[0], "rho", "Spearman rank correlation"), (axes[1], "overlap", "top-10% overlap")):
        for c, a in items:
            x = np.arange(len(a["steps"]))
            F._band(ax, x, np.nan_to_num(a[key], nan=0.0), F.color(c), c.label)
        steps = items[0][1]["steps"]
        ax.set_xticks(np.arange(len(steps)), ["trained", *[f"+{s}" for s in steps[1:]]], rotation=30, fontsize=7)
        ax.set(ylabel=ylabel, ylim=(-0.3 if key == "rho" else 0, 1.05))
        ax.axhline(SIMILAR if key == "rho" else 0, color="0.6", lw=0.8, ls=":")
        ax.legend(fontsize=7, loc="upper right")
    return fig


SECTION = SanitySection()
