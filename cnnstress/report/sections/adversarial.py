"""Adversarial robustness: accuracy under PGD (Madry et al.) against the attack radius, per variant,
on the same fixed sample of test images in every run (``/adversarial``)."""

from __future__ import annotations

import re

import numpy as np

from ...analysis import adversarial, compare
from ..markup import empty, figure, para, pct, table
from .base import FigureSpec, Metric, Section, cell_parts

_KEY = re.compile(r"^adversarial/(linf|l2)/([^/]+)/logits$")
#: The headline radius: RobustBench's CIFAR-10 L-inf threat model, 8/255.
HEADLINE = ("linf", 8.0)
NORM_TEXT = {"linf": "L∞", "l2": "L2"}


def eps_label(norm: str, eps: float) -> str:
    text = f"{eps:g}"
    return f"{text}/255" if norm == "linf" else text


class AdversarialSection(Section):
    id = "adversarial"
    title = "Adversarial robustness (PGD)"
    requires = ("adversarial/positions",)
    run_keys = ("adversarial_accuracy", "robust_accuracy_linf_8")

    def reduce(self, res, run):
        """Accuracy at every stored (norm, radius) on the attacked sample: {norm: curve}."""
        pos = res.read("adversarial/positions").astype(np.int64)
        labels = run.labels[pos]
        by_norm: dict[str, dict[float, np.ndarray]] = {}
        for key in res.keys():
            m = _KEY.match(key)
            if m:
                by_norm.setdefault(m.group(1), {})[float(m.group(2))] = res.read(key)
        for logits in by_norm.values():  # every curve starts at the clean accuracy on the sample
            logits.setdefault(0.0, run.logits[pos])
        curves = {norm: adversarial.accuracy_curve(by_norm[norm], labels) for norm in NORM_TEXT if norm in by_norm}
        # which attacked images stay right, per norm and radius: every run attacks the same sample,
        # so the comparison reads them image by image
        right = {norm: {float(e): np.argmax(lg, axis=1) == labels for e, lg in by_norm[norm].items()}
                 for norm in curves}
        return {"curves": curves, "n": int(pos.size), "right": right} if curves else None

    def aggregate(self, cell, parts, ctx):
        """Per norm: the radii every seed has, accuracy (S, E), mean and 95% interval per radius."""
        parts = [p for p in parts if p]
        if not parts:
            return None
        out = {}
        for norm in [n for n in NORM_TEXT if all(n in p["curves"] for p in parts)]:
            common = sorted(set.intersection(*(set(p["curves"][norm]["eps"].tolist()) for p in parts)))
            acc = np.array([[p["curves"][norm]["accuracy"][list(p["curves"][norm]["eps"]).index(e)] for e in common]
                            for p in parts])
            stats = [compare.mean_std_ci(acc[:, j], bounds=(0.0, 1.0)) for j in range(len(common))]
            out[norm] = {"eps": np.array(common), "runs": acc, "stats": stats}
        return {"norms": out, "n": parts[0]["n"], "seeds": len(parts)}

    def run_fields(self, run, part):
        if not part:
            return {"adversarial_accuracy": None, "robust_accuracy_linf_8": None}
        acc = {norm: {f"{e:g}": float(a) for e, a in zip(c["eps"], c["accuracy"])} for norm, c in part["curves"].items()}
        return {"adversarial_accuracy": acc, "robust_accuracy_linf_8": _headline(part["curves"])}

    def variant_fields(self, cell, agg):
        if not agg:
            return {"adversarial_accuracy_mean": None, "robust_accuracy_linf_8": None}
        acc = {norm: {f"{e:g}": s["mean"] for e, s in zip(v["eps"], v["stats"])} for norm, v in agg["norms"].items()}
        head = _headline_stats(agg)
        return {"adversarial_accuracy_mean": acc,
                "robust_accuracy_linf_8": None if head is None else {"mean": head["mean"], "ci95": list(head["ci95"]),
                                                                     "upper_bound": True}}

    def summary_lines(self, report):
        items = [(c, _headline_stats(c.parts.get(self.id))) for c in report.cells]
        items = [(c, h) for c, h in items if h is not None]
        if not items:
            return []
        parts = ", ".join(f"{c.label} {pct(h['mean'])}" for c, h in items)
        return [f"Robust accuracy at ε = 8/255 (L∞ PGD; an upper bound, since it is an attack, not a certificate): {parts}."]

    def figures(self, report):
        def draw():
            return _draw([(c, c.parts.get(self.id)) for c in report.cells])

        return [FigureSpec("adversarial", draw, "Accuracy under PGD against the attack radius: mean over seeds "
                                                "(line) and min..max (band); every run attacks the same test images.")]

    def html(self, report, figs):
        items = cell_parts(report.cells, self.id)
        if not items:
            return empty("No run stored adversarial logits ([stress].adversarial is off).")
        rows = []
        for c, agg in items:
            for norm, v in agg["norms"].items():
                for e, s in zip(v["eps"], v["stats"]):
                    rows.append([c.label, NORM_TEXT[norm], eps_label(norm, e), pct(s["mean"]),
                                 f"{pct(s['ci95'][0])} to {pct(s['ci95'][1])}" if s["n"] > 1 else "one seed",
                                 s["n"]])
        n = items[0][1]["n"]
        return (para(f"PGD with a random start attacks the same {n} test images in every run (inputs in [0, 1], the "
                     "normalisation inside the attacked model, float32). Each number is an upper bound on the true "
                     "robust accuracy: a stronger attack can only lower it. At ε = 0 it is the clean accuracy on "
                     "the sample. Standard training is expected near 0% at 8/255 (RobustBench's Standard CIFAR-10 "
                     "model: 94.78% clean, 0.00% under AutoAttack), so the small radii are what separate variants. PGD "
                     "overestimates robustness; the number to compare with published results is AutoAttack's "
                     "([stress].autoattack, the next section): this curve shows the shape over radii.")
                + table(("variant", "norm", "ε", "accuracy (mean)", "95% interval over seeds", "seeds"), rows,
                        numeric=(3, 5))
                + figure(figs, "adversarial"))

    def metrics(self, part):
        right = part.get("right") or {}
        return [Metric(f"adversarial_{norm}_{e:g}", f"accuracy under {NORM_TEXT[norm]} PGD at ε = {eps_label(norm, e)}",
                       right[norm][float(e)] if float(e) in right.get(norm, {}) else float(a), True,
                       headline=norm == "linf")
                for norm, c in part["curves"].items() for e, a in zip(c["eps"], c["accuracy"]) if e > 0]


def _headline(curves: dict) -> float | None:
    norm, eps = HEADLINE
    c = curves.get(norm)
    if c is None or not np.any(np.isclose(c["eps"], eps)):
        return None
    return float(adversarial.robust_accuracy_at(c, eps))


def _headline_stats(agg) -> dict | None:
    if not agg:
        return None
    norm, eps = HEADLINE
    v = agg["norms"].get(norm)
    if v is None or not np.any(np.isclose(v["eps"], eps)):
        return None
    return v["stats"][int(np.argmin(np.abs(v["eps"] - eps)))]


def _draw(items):
    items = [(c, a) for c, a in items if a]
    if not items:
        return None
    from .. import figures as F

    norms = [n for n in NORM_TEXT if any(n in a["norms"] for _, a in items)]
    fig = F._figure(5.2 * len(norms), 3.6)
    axes = np.atleast_1d(fig.subplots(1, len(norms)))
    for ax, norm in zip(axes, norms):
        for c, a in items:
            v = a["norms"].get(norm)
            if v is not None:
                F._band(ax, v["eps"], v["runs"], F.color(c), c.label)
                ax.plot(v["eps"], v["runs"].mean(axis=0), "o", ms=3.5, color=F.color(c))
        ax.set(title=f"{NORM_TEXT[norm]} PGD", xlabel="ε" + (" (/255)" if norm == "linf" else " (L2, pixels in [0, 1])"),
               ylabel="accuracy (upper bound)", ylim=(0, 1))
        ax.legend(fontsize=7, loc="upper right")
    return fig


SECTION = AdversarialSection()
