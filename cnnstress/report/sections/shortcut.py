"""Background shortcut (shapes): Grad-CAM energy inside the object mask, the share of the map's top
20% inside it, and whether the model follows a background hue that names another class. The mask
numbers need only object masks (shapes, or your own ``arrays`` with mask_test)."""

from __future__ import annotations

import math

import numpy as np

from ...analysis import gradcam, shortcut
from ..markup import empty, figure, gradcam_note, num, para, pct, table
from .base import FigureSpec, Metric, Section, cell_parts
from .calibration import mean_or_none

# Grad-CAM rows per block when computing mask energy: (rows, 32, 32) float64 stays ~8 MiB (and as
# many bytes at other image sides: fewer rows per block for larger masks).
ENERGY_ROWS = 1024
TOP_SHARE = 0.2  # the share of the map's highest pixels whose place (inside the object or not) is counted


def _nanmean(values: np.ndarray) -> float | None:
    """Mean ignoring NaN; None when nothing is left."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def mask_energy(res, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each predicted-class Grad-CAM map's energy inside the object mask, whether its peak is
    inside (pointing game) and the share of its top 20% inside, read in blocks of rows."""
    key = "test/gradcam/pred"
    n = res.shape(key)[0]
    energy, hits, top = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    rows = max(1, ENERGY_ROWS * 32 * 32 // max(1, mask.shape[-2] * mask.shape[-1]))
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        maps = res.read(key, rows=slice(start, stop))
        energy[start:stop] = gradcam.energy_in_mask(maps, mask[start:stop])
        hits[start:stop] = gradcam.pointing_game(maps, mask[start:stop])
        top[start:stop] = gradcam.top_share_in_mask(maps, mask[start:stop], TOP_SHARE)
    return energy, hits, top


def sentence(cells) -> str:
    """'baseline follows the background on X% of conflicting images; cropflip on Y%'."""
    parts = []
    for c in cells:
        sc = c.parts.get(ShortcutSection.id)
        if sc and sc.get("follows_background") is not None:
            fb = "n/a" if sc["follows_background"] is None else f"{100 * sc['follows_background']:.1f}%"
            parts.append(f"{c.variant} follows the background on {fb} of conflicting images" if not parts
                         else f"{c.variant} on {fb}")
    return "; ".join(parts) + "." if parts else ""


class ShortcutSection(Section):
    id = "shortcut"
    title = "Background shortcut"
    run_keys = ("follows_background",)
    csv_columns = run_keys

    def reduce(self, res, run):
        # masks: shapes and your own arrays with mask_test; background classes: shapes only
        mask, bg_class = run.annotations.get("mask"), run.annotations.get("bg_class")
        if mask is None:
            return None
        energy, hits, top = mask_energy(res, mask)
        correct = run.correct
        out = {"energy_right": _nanmean(energy[correct]), "energy_wrong": _nanmean(energy[~correct]),
               "energy_all": _nanmean(energy), "pointing_game": _nanmean(hits),
               "top20_right": _nanmean(top[correct]), "top20_wrong": _nanmean(top[~correct]),
               "top20_all": _nanmean(top)}
        if bg_class is not None:
            sc = shortcut.shortcut_accuracy(run.labels, run.preds, np.asarray(bg_class, dtype=np.int64))
            out.update({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in sc.items()})
        return out

    def aggregate(self, cell, parts, ctx):
        sc = [s for s in parts if s]
        return {k: mean_or_none([s.get(k) for s in sc]) for k in sc[0]} if sc else None

    def compare(self, group, ctx):
        return sentence(group.cells)

    def run_fields(self, run, part):
        return {"follows_background": (part or {}).get("follows_background")}

    def variant_fields(self, cell, agg):
        return {"shortcut": agg}

    def summary_lines(self, report):
        return [("Background shortcut" + (f" [{g.label}]" if g.label else "") + ": ") + g.parts[self.id]
                for g in report.groups if g.parts.get(self.id)]

    def figures(self, report):
        def draw():
            from .. import figures as F

            return F.shortcut([(c, c.parts.get(self.id)) for c in report.cells])

        return [FigureSpec("shortcut", draw, "Grad-CAM energy inside the object mask and accuracy when the "
                                             "background hue names another class (mean over seeds).")]

    def html(self, report, figs):
        items = cell_parts(report.cells, self.id)
        if not items:
            return empty("Not available: needs object masks on this machine (the shapes dataset, or your own "
                         "arrays with mask_test).")
        out = [para(g.parts[self.id], "verdict") for g in report.groups if g.parts.get(self.id)]
        rows = [[c.label, num(s.get("energy_right")), num(s.get("energy_wrong")), pct(s.get("top20_right"), 1),
                 pct(s.get("top20_wrong"), 1), pct(s.get("pointing_game"), 1), pct(s.get("acc_aligned"), 1),
                 pct(s.get("acc_conflicting"), 1),
                 pct(s.get("follows_background"), 1), num(s.get("n_conflicting"), 0)] for c, s in items]
        out.append(para("Energy: fraction of the predicted class's Grad-CAM mass inside the object mask; top 20%: "
                        "the share of the map's 20% highest pixels that lie inside the object (pixels tied at the "
                        "cut share the slots left); pointing game: share of maps whose peak lies inside it. Each "
                        "for right and for wrong predictions where the table says so: a map that leaves the object "
                        "on wrong predictions points at what misled the model. A conflicting image has a "
                        "background hue that names another class than its label (shapes only)."))
        out.append(gradcam_note(report, [c for c, _ in items]))
        out.append(table(("variant", "energy in object (right)", "energy in object (wrong)",
                          "top 20% in object (right)", "top 20% in object (wrong)", "pointing game",
                          "accuracy, aligned", "accuracy, conflicting", "follows background", "conflicting images"),
                         rows, numeric=range(1, 10)))
        out.append(figure(figs, "shortcut"))
        return "".join(out)

    def metrics(self, part):
        labels = {"energy_all": ("Grad-CAM energy inside the object", True, False),
                  "pointing_game": ("pointing game (Grad-CAM peak inside the object)", True, True),
                  "top20_all": ("top 20% of Grad-CAM inside the object", True, True),
                  "top20_right": ("top 20% of Grad-CAM inside the object, right predictions", True, True),
                  "top20_wrong": ("top 20% of Grad-CAM inside the object, wrong predictions", True, True),
                  "follows_background": ("background-following rate (conflicting images)", False, True),
                  "acc_conflicting": ("accuracy on conflicting images", True, True)}
        return [Metric(k, label, part[k], better, points=pts, headline=True) for k, (label, better, pts) in labels.items()
                if part.get(k) is not None]


SECTION = ShortcutSection()
