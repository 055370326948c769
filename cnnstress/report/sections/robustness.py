"""Corruption robustness: accuracy and calibration on every corrupted test set (the clean validation
temperature applied unchanged), and the classes that break first."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...analysis import calibration, metrics, robustness
from ..markup import empty, figure, num, para, pct, points, table
from .base import FigureSpec, Metric, Section
from .calibration import mean_or_none, pool_bins, scores

STRESS_CALIBRATION_KEYS = ("ece", "nll", "brier", "ece_after")
BREAKING_SHOWN = 3  # classes listed per corruption as breaking first


@dataclass
class RunStress:
    acc: dict[tuple[str, int], float] = field(default_factory=dict)
    class_right: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (C,) right per class
    support: np.ndarray | None = None  # (C,) clean test images per class
    clean_right: np.ndarray | None = None  # (C,) clean right predictions per class
    # ece, nll, brier, ece_after (the clean validation temperature applied)
    calibration: dict[tuple[str, int], dict[str, float | None]] = field(default_factory=dict)
    reliability: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    mca: float | None = None


@dataclass
class CellStress:
    stress: dict[str, dict[str, list]] = field(default_factory=dict)  # corruption -> severities, accuracy, ece, ...
    mca: float | None = None  # mean corruption accuracy, mean over seeds
    # ece, nll, brier, ece_after on the corrupted sets, mean over all and seeds
    corruption_calibration: dict[str, float | None] = field(default_factory=dict)
    stress_reliability: dict[str, np.ndarray] | None = None  # highest severities, pooled over corruptions, seeds
    breaking: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # corruption -> (class, drop)


def breaking_first(support: np.ndarray, clean_right: np.ndarray, right_by_severity: dict[int, np.ndarray],
                   names: list[str]) -> list[tuple[str, float]]:
    """The BREAKING_SHOWN classes whose accuracy drops most at the lowest severity (pooled counts)."""
    order, drop_low, present = robustness.breaking_from_counts(support, clean_right, right_by_severity)
    return [(names[i], float(drop_low[i])) for i in order[:BREAKING_SHOWN] if present[i]]


class RobustnessSection(Section):
    id = "robustness"
    title = "Corruption robustness"
    run_keys = ("mean_corruption_accuracy",)

    def reduce(self, res, run):
        """Accuracy, per-class right counts and calibration on every corrupted test set, one set at a time.

        Calibration uses the temperature fitted on the clean validation logits (the calibration
        section's): the question is whether the clean fix still holds under a shift the model never
        saw, so T is not refitted on the corrupted set.
        """
        out = RunStress()
        cal = run.parts.get("calibration")
        temperature = cal["scores"].get("temperature") if cal else None
        labels, c = run.labels, run.num_classes
        for corruption, severity in res.stress_keys():
            key = (corruption, severity)
            logits = res.read(f"stress/{corruption}/{severity}/logits")
            preds = metrics.predictions(logits)
            out.acc[key] = metrics.accuracy(labels, preds)
            # float16 logits can overflow to inf on a saturated input: no calibration then, rather than a crash
            if np.isfinite(logits).all():
                sc = calibration.scores_at_temperature(logits, labels, temperature)
                out.calibration[key] = {k: sc[k] for k in STRESS_CALIBRATION_KEYS}
                out.reliability[key] = sc["reliability"]
            else:
                out.calibration[key] = dict.fromkeys(STRESS_CALIBRATION_KEYS)
            out.class_right[key] = robustness.class_counts(labels, preds, c)[1]
        if out.acc:
            out.support, out.clean_right = robustness.class_counts(labels, run.preds, c)
            accuracy = metrics.accuracy(labels, run.preds)
            out.mca = robustness.corruption_table(accuracy, out.acc)["mean_corruption_accuracy"]
        return out

    def aggregate(self, cell, parts, ctx):
        out = CellStress()
        keys = sorted({k for r in parts for k in r.acc})
        for corruption in sorted({c for c, _ in keys}):
            sevs = sorted(s for c, s in keys if c == corruption)
            out.stress[corruption] = {
                "severities": sevs,
                "accuracy": [float(np.mean([r.acc[(corruption, s)] for r in parts if (corruption, s) in r.acc]))
                             for s in sevs],
                **{k: [mean_or_none([r.calibration.get((corruption, s), {}).get(k) for r in parts]) for s in sevs]
                   for k in STRESS_CALIBRATION_KEYS}}
            complete = [r for r in parts if all((corruption, s) in r.class_right for s in sevs)]
            if complete:
                pooled = {s: np.sum([r.class_right[(corruption, s)] for r in complete], axis=0) for s in sevs}
                out.breaking[corruption] = breaking_first(np.sum([r.support for r in complete], axis=0),
                                                          np.sum([r.clean_right for r in complete], axis=0),
                                                          pooled, ctx.names)
        out.mca = mean_or_none([r.mca for r in parts])
        out.corruption_calibration = {k: mean_or_none([e for v in out.stress.values() for e in v[k]])
                                      for k in STRESS_CALIBRATION_KEYS}
        # one reliability diagram under corruption: each corruption at its highest severity, pooled over
        # corruptions and seeds (the severity where miscalibration shows most)
        worst = [r.reliability[(c, v["severities"][-1])] for c, v in out.stress.items() for r in parts
                 if (c, v["severities"][-1]) in r.reliability]
        if worst:
            out.stress_reliability = pool_bins(worst)
        return out

    def run_fields(self, run, part):
        return {"mean_corruption_accuracy": part.mca}

    def variant_fields(self, cell, agg):
        stress = agg.stress if agg else {}
        cal = agg.corruption_calibration if agg else {}
        return {
            "mean_corruption_accuracy": agg.mca if agg else None,
            "corruption_accuracy": {c: dict(zip((str(s) for s in v["severities"]), v["accuracy"]))
                                    for c, v in stress.items()},
            # per corruption, the classes whose accuracy drops most at the lowest severity (pooled over seeds)
            "breaking_first": {c: [{"class": name, "accuracy_drop": drop} for name, drop in v]
                               for c, v in (agg.breaking if agg else {}).items()},
            # per corruption and severity: ECE, NLL, Brier and the ECE after the temperature fitted on
            # clean validation logits; then each one's mean over every corrupted set
            **{f"corruption_{k}": {c: dict(zip((str(s) for s in v["severities"]), v[k])) for c, v in stress.items()}
               for k in STRESS_CALIBRATION_KEYS},
            **{f"mean_corruption_{k}": cal.get(k) for k in STRESS_CALIBRATION_KEYS},
        }

    def figures(self, report):
        def accuracy():
            from .. import figures as F

            return F.robustness([(c, c.parts[self.id].stress) for c in report.cells if c.parts.get(self.id)])

        def reliability():
            from .. import figures as F

            return F.reliability([(c, c.parts[self.id].stress_reliability, c.parts[self.id].corruption_calibration)
                                  for c in report.cells if c.parts.get(self.id)], corrupted=True)

        return [FigureSpec("robustness", accuracy, "Accuracy under each corruption by severity (mean over seeds)."),
                FigureSpec("reliability_corrupted", reliability,
                           "Reliability diagrams under corruption: every corruption at its highest severity, pooled "
                           "over corruptions and seeds, with the ECE of those bins; second line: mean ECE over all "
                           "corrupted sets before → after the temperature fitted on clean validation logits.")]

    def html(self, report, figs):
        cells = [(c, c.parts[self.id]) for c in report.cells if c.parts.get(self.id) and c.parts[self.id].stress]
        if not cells:
            return empty("No corrupted test sets were stored ([stress].corruptions is empty).")
        rows = []
        for c, a in cells:
            k, clean = a.corruption_calibration, scores(c)
            rows.append([c.label, pct(c.acc_mean), pct(a.mca),
                         pct(a.mca / c.acc_mean) if a.mca is not None and c.acc_mean else "n/a",
                         num(clean.get("ece")), num(k.get("ece")), num(k.get("ece_after")),
                         num(clean.get("nll")), num(k.get("nll")), num(clean.get("brier")),
                         num(k.get("brier"))])
        out = [para("Mean corruption accuracy (mCA) and calibration under corruption are means over every corruption "
                    "and severity (and over seeds). 'after T' applies the temperature fitted on each run's clean "
                    "validation logits, unchanged, to the corrupted test sets: does the clean fix survive the shift?"),
               table(("variant", "clean accuracy", "mCA", "mCA / clean", "ECE clean", "ECE corrupted",
                      "ECE corrupted after T", "NLL clean", "NLL corrupted", "Brier clean", "Brier corrupted"), rows,
                     numeric=range(1, 11)),
               figure(figs, "robustness"), figure(figs, "reliability_corrupted")]
        sev_rows = []
        for c, a in cells:
            for name, v in sorted(a.stress.items()):
                for i, sev in enumerate(v["severities"]):
                    sev_rows.append([c.label, name, sev, pct(v["accuracy"][i]), num(v["ece"][i]),
                                     num(v["ece_after"][i]), num(v["nll"][i]), num(v["brier"][i])])
        if sev_rows:
            out.append(para("Calibration under corruption per corruption and severity (ECE on 15 bins), mean over "
                            "seeds."))
            opened = " open" if len(sev_rows) <= 24 else ""
            out.append(f"<details{opened}><summary>{len(sev_rows)} corrupted test sets</summary>"
                       + table(("variant", "corruption", "severity", "accuracy", "ECE", "ECE after T", "NLL", "Brier"),
                               sev_rows, numeric=range(2, 8)) + "</details>")
        corruptions = sorted({k for _, a in cells for k in a.breaking})
        if corruptions:
            out.append(para("Classes that break first: the largest per-class accuracy drop at the lowest severity "
                            "(pooled over seeds)."))
            heads = ["corruption"] + [c.label for c, _ in cells]
            rows = [[name] + ["; ".join(f"{cls} ({points(-d)})" for cls, d in a.breaking.get(name, [])) or "-"
                              for _, a in cells] for name in corruptions]
            out.append(table(heads, rows))
        return "".join(out)

    def metrics(self, part):
        out = [] if part.mca is None else [Metric("mean_corruption_accuracy", "mean corruption accuracy", part.mca,
                                                  True)]
        out += [Metric(f"corruption_{c}_{s}", f"accuracy, {c} severity {s}", a, True)
                for (c, s), a in sorted(part.acc.items())]
        for key, label in (("ece", "ECE under corruption"),
                           ("ece_after", "ECE under corruption (clean-validation temperature)"),
                           ("nll", "NLL under corruption"), ("brier", "Brier score under corruption")):
            vals = [v[key] for v in part.calibration.values() if v.get(key) is not None]
            if vals:
                out.append(Metric(f"corruption_{key}", label, float(np.mean(vals)), False,
                                  points=key in ("ece", "ece_after")))
        return out


SECTION = RobustnessSection()
