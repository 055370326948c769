"""Adversarial robustness under AutoAttack (Croce & Hein 2020): robust accuracy per variant on the
same fixed sample of test images in every run (``/autoattack``), and which attack broke the
images. The number to compare with published results (RobustBench ranks by it); the PGD curve of
the adversarial section shows the shape over radii."""

from __future__ import annotations

import numpy as np

from ...analysis import compare
from ...probes.autoattack import CODES, DEFAULT_EPS
from ..markup import empty, figure, para, pct, table
from .base import FigureSpec, Metric, Section, cell_parts

NORM_TEXT = {"Linf": "L∞", "L2": "L2"}


def eps_text(norm: str, eps: float) -> str:
    """8/255-style for an L-inf radius on the 1/255 grid, else the number."""
    k = eps * 255
    return f"{k:g}/255" if norm == "Linf" and abs(k - round(k)) < 1e-6 else f"{eps:.4g}"


class AutoAttackSection(Section):
    id = "autoattack"
    title = "Adversarial robustness (AutoAttack)"
    requires = ("autoattack/positions", "autoattack/logits", "autoattack/broken_by")
    run_keys = ("autoattack_accuracy",)
    csv_columns = ("autoattack_accuracy",)

    def reduce(self, res, run):
        """Which attacked images stay right, and which attack broke each one."""
        pos = res.read("autoattack/positions").astype(np.int64)
        logits = np.asarray(res.read("autoattack/logits"))
        codes = np.asarray(res.read("autoattack/broken_by")).astype(np.int64)
        if codes.size and (codes.min() < 0 or codes.max() >= len(CODES)):
            raise ValueError(f"{run.where}: autoattack/broken_by holds {int(codes.min())}..{int(codes.max())}, "
                             f"codes are 0..{len(CODES) - 1}")
        labels = run.labels[pos]
        right = np.argmax(logits, axis=1) == labels
        if np.any(right != (codes == 0)):
            raise ValueError(f"{run.where}: autoattack/broken_by says {int((codes == 0).sum())} images are not broken "
                             f"but autoattack/logits classify {int(right.sum())} right: the two disagree")
        aa = run.spec.stress.autoattack or {}
        norm = aa.get("norm", "Linf")
        return {"right": right, "clean_right": run.logits[pos].argmax(1) == labels,
                "counts": np.bincount(codes, minlength=len(CODES)), "n": int(pos.size), "norm": norm,
                "eps": float(aa.get("eps", DEFAULT_EPS[norm])), "version": aa.get("version", "standard")}

    def aggregate(self, cell, parts, ctx):
        parts = [p for p in parts if p]
        if not parts:
            return None
        acc = np.array([p["right"].mean() if p["n"] else np.nan for p in parts])
        clean = np.array([p["clean_right"].mean() if p["n"] else np.nan for p in parts])
        share = np.array([p["counts"] / max(p["n"], 1) for p in parts]).mean(axis=0)
        first = parts[0]
        return {"runs": acc, "stats": compare.mean_std_ci(acc, bounds=(0.0, 1.0)),
                "clean": compare.mean_std_ci(clean, bounds=(0.0, 1.0)), "share": share, "n": first["n"],
                "norm": first["norm"], "eps": first["eps"], "version": first["version"], "seeds": len(parts)}

    def run_fields(self, run, part):
        if not part or not part["n"]:
            return {"autoattack_accuracy": None}
        return {"autoattack_accuracy": float(part["right"].mean())}

    def variant_fields(self, cell, agg):
        if not agg:
            return {"autoattack_accuracy": None}
        s = agg["stats"]
        return {"autoattack_accuracy": {"mean": s["mean"], "ci95": list(s["ci95"]), "norm": agg["norm"],
                                        "eps": agg["eps"], "version": agg["version"], "upper_bound": True,
                                        "broken_by": {CODES[i]: float(v) for i, v in enumerate(agg["share"])}}}

    def summary_lines(self, report):
        items = [(c, c.parts.get(self.id)) for c in report.cells]
        items = [(c, a) for c, a in items if a]
        if not items:
            return []
        a0 = items[0][1]
        parts = ", ".join(f"{c.label} {pct(a['stats']['mean'])}" for c, a in items)
        return [f"Robust accuracy under AutoAttack ({a0['version']}, {NORM_TEXT[a0['norm']]} ε = "
                f"{eps_text(a0['norm'], a0['eps'])}; the number to compare with published results): {parts}."]

    def figures(self, report):
        def draw():
            return _draw([(c, c.parts.get(self.id)) for c in report.cells])

        return [FigureSpec("autoattack", draw, "Which attack broke the attacked images, per variant (mean share over "
                                                "seeds): each attack runs on the images the ones before it left "
                                                "standing.")]

    def html(self, report, figs):
        items = cell_parts(report.cells, self.id)
        if not items:
            return empty("No run stored AutoAttack results ([stress].autoattack is off).")
        attacks = [i for i in range(2, len(CODES)) if any(a["share"][i] > 0 for _, a in items)]
        rows = []
        for c, a in items:
            s = a["stats"]
            rows.append([c.label, NORM_TEXT[a["norm"]], eps_text(a["norm"], a["eps"]), a["version"],
                         pct(a["clean"]["mean"]), pct(s["mean"]),
                         f"{pct(s['ci95'][0])} to {pct(s['ci95'][1])}" if s["n"] > 1 else "one seed", s["n"]]
                        + [pct(a["share"][i]) for i in attacks])
        n = items[0][1]["n"]
        return (para(f"AutoAttack (Croce & Hein, ICML 2020; torchattacks' attacks with the reference's settings) "
                     f"attacks the same {n} test images in every run: APGD-CE, then APGD-T, FAB-T and Square on the "
                     "images still standing (the rand version: APGD-CE and APGD-DLR with expectation over "
                     "transformation). Inputs in [0, 1], the normalisation inside the attacked model, float32 "
                     "gradients. This is the robust accuracy to compare with published results (RobustBench ranks "
                     "by it); it is still an upper bound. The last columns say which attack broke the images.")
                + table(("variant", "norm", "ε", "version", "clean (sample)", "robust accuracy (mean)",
                         "95% interval over seeds", "seeds") + tuple(f"broken by {CODES[i]}" for i in attacks),
                        rows, numeric=tuple(range(4, 8 + len(attacks))))
                + figure(figs, "autoattack"))

    def metrics(self, part):
        if not part or not part["n"]:
            return []
        return [Metric("autoattack", f"accuracy under AutoAttack ({NORM_TEXT[part['norm']]} ε = "
                                     f"{eps_text(part['norm'], part['eps'])})", part["right"].astype(np.float64), True,
                       headline=True)]


def _draw(items):
    items = [(c, a) for c, a in items if a]
    if not items:
        return None
    from .. import figures as F

    fig = F._figure(max(4.0, 1.2 * len(items) + 2.5), 3.4)
    ax = fig.subplots()
    x = np.arange(len(items))
    bottom = np.zeros(len(items))
    for i, name in enumerate(CODES):
        h = np.array([a["share"][i] for _, a in items])
        if np.any(h > 0):
            ax.bar(x, h, bottom=bottom, label=name, color=f"C{i}")
            bottom += h
    ax.set_xticks(x, [c.label for c, _ in items], rotation=20, fontsize=7)
    ax.set(ylabel="share of attacked images", ylim=(0, 1))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


SECTION = AutoAttackSection()
