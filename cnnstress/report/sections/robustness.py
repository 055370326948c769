"""Corruption robustness: accuracy and calibration on every corrupted test set (the clean validation
temperature applied unchanged), the corruption error relative to the baseline (CE, mCE), the classes
that break first, and, with CIFAR-10 and the official CIFAR-10-C files, a published reference curve."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ... import cifar_c
from ...analysis import calibration, metrics, robustness
from ..markup import empty, figure, num, para, pct, points, table
from .base import FigureSpec, Metric, Section, cell_parts
from .calibration import mean_or_none, pool_bins, scores

STRESS_CALIBRATION_KEYS = ("ece", "nll", "brier", "ece_after", "ace", "classwise_ece", "smece")
BREAKING_SHOWN = 3  # classes listed per corruption as breaking first (those beyond the seed spread)


@dataclass
class RunStress:
    acc: dict[tuple[str, int], float] = field(default_factory=dict)
    # (N,) bool: which test images are right under each corruption and severity (the comparison's
    # per-image values: judged over test images even from 2 seeds)
    right: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    class_right: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (C,) right per class
    support: np.ndarray | None = None  # (C,) clean test images per class
    clean_right: np.ndarray | None = None  # (C,) clean right predictions per class
    # ece, nll, brier, ece_after (the clean validation temperature applied)
    calibration: dict[tuple[str, int], dict[str, float | None]] = field(default_factory=dict)
    reliability: dict[tuple[str, int], dict[str, np.ndarray]] = field(default_factory=dict)
    # smooth reliability curve of every corruption's highest severity, pooled (analysis.calibration)
    smooth: dict[str, np.ndarray] | None = None
    mca: float | None = None
    # set by compare (they need the group's baseline): CE per corruption and their mean, against the
    # baseline variant's error averaged over its seeds
    corruption_error: dict[str, float] = field(default_factory=dict)
    mce: float | None = None


@dataclass
class CellStress:
    stress: dict[str, dict[str, list]] = field(default_factory=dict)  # corruption -> severities, accuracy, ece, ...
    mca: float | None = None  # mean corruption accuracy, mean over seeds
    # ece, nll, brier, ece_after on the corrupted sets, mean over all and seeds
    corruption_calibration: dict[str, float | None] = field(default_factory=dict)
    stress_reliability: dict[str, np.ndarray] | None = None  # highest severities, pooled over corruptions, seeds
    stress_smooth: dict[str, np.ndarray] | None = None  # the same as a smooth reliability curve
    # corruption -> (class, pooled drop, 95% interval of the drop over seeds): only classes whose drop
    # is beyond the seed spread, so an empty list says none is; breaking_seeds: the seeds judged by
    breaking: dict[str, list[tuple[str, float, tuple[float, float]]]] = field(default_factory=dict)
    breaking_seeds: int = 0
    # set by compare: CE per corruption and mCE, means over seeds; the baseline they are relative to
    corruption_error: dict[str, float | None] = field(default_factory=dict)
    mce: float | None = None
    ce_baseline: str | None = None
    # with the official files: accuracy per severity averaged over the benchmark corruptions present
    # and over seeds ({"severities", "accuracy", "n_corruptions"}), beside the reference curve
    benchmark_mean: dict[str, list] | None = None


def breaking_first(runs: list[RunStress], corruption: str, sevs: list[int],
                   names: list[str]) -> list[tuple[str, float, tuple[float, float]]]:
    """Up to BREAKING_SHOWN classes whose accuracy drops most at the lowest severity (ranked on counts
    pooled over ``runs``, the seeds), keeping only those whose drop is beyond the seed spread: its
    95% t-interval over the seeds' own drops lies above 0. A drop of a few images that one seed has
    and another has not is noise, not a class that breaks."""
    pooled = {s: np.sum([r.class_right[(corruption, s)] for r in runs], axis=0) for s in sevs}
    support = np.stack([r.support for r in runs])
    clean = np.stack([r.clean_right for r in runs])
    order, drop_low, present = robustness.breaking_from_counts(support.sum(axis=0), clean.sum(axis=0), pooled)
    spread = robustness.drop_beyond_seeds(support, clean, np.stack([r.class_right[(corruption, sevs[0])] for r in runs]))
    keep = [int(i) for i in order if present[i] and spread["beyond"][i]][:BREAKING_SHOWN]
    return [(names[i], float(drop_low[i]), (float(spread["lo"][i]), float(spread["hi"][i]))) for i in keep]


class RobustnessSection(Section):
    id = "robustness"
    title = "Corruption robustness"
    depends = ("calibration",)  # reduce uses its fitted temperature
    run_keys = ("mean_corruption_accuracy", "corruption_error", "mce")
    csv_columns = ("mean_corruption_accuracy",)

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
        keys = list(res.stress_keys())
        highest = {name: max(s for n, s in keys if n == name) for name, _ in keys}
        top_conf, top_right = [], []
        for corruption, severity in keys:
            key = (corruption, severity)
            logits = res.read(f"stress/{corruption}/{severity}/logits")
            preds = metrics.predictions(logits)
            out.acc[key] = metrics.accuracy(labels, preds)
            out.right[key] = preds == labels
            # float16 logits can overflow to inf on a saturated input: no calibration then, rather than a crash
            if np.isfinite(logits).all():
                sc = calibration.scores_at_temperature(logits, labels, temperature)
                out.calibration[key] = {k: sc[k] for k in STRESS_CALIBRATION_KEYS}
                out.reliability[key] = sc["reliability"]
                if highest[corruption] == severity:
                    probs = metrics.softmax(logits)
                    top_conf.append(probs.max(axis=1))
                    top_right.append(out.right[key])
            else:
                out.calibration[key] = dict.fromkeys(STRESS_CALIBRATION_KEYS)
            out.class_right[key] = robustness.class_counts(labels, preds, c)[1]
        if top_conf:
            out.smooth = calibration.smooth_reliability_top(np.concatenate(top_conf), np.concatenate(top_right))
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
                out.breaking[corruption] = breaking_first(complete, corruption, sevs, ctx.names)
                out.breaking_seeds = max(out.breaking_seeds, len(complete))
        out.mca = mean_or_none([r.mca for r in parts])
        if _official(ctx):
            out.benchmark_mean = benchmark_mean(out.stress)
        out.corruption_calibration = {k: mean_or_none([e for v in out.stress.values() for e in v[k]])
                                      for k in STRESS_CALIBRATION_KEYS}
        # one reliability diagram under corruption: each corruption at its highest severity, pooled over
        # corruptions and seeds (the severity where miscalibration shows most)
        worst = [r.reliability[(c, v["severities"][-1])] for c, v in out.stress.items() for r in parts
                 if (c, v["severities"][-1]) in r.reliability]
        if worst:
            out.stress_reliability = pool_bins(worst)
        out.stress_smooth = calibration.pool_smooth([r.smooth for r in parts])
        return out

    def compare(self, group, ctx):
        """Every run's corruption error (CE per corruption, mCE) relative to the group's baseline variant:
        Hendrycks & Dietterich's definition with the baseline's error, averaged over its seeds, in place
        of AlexNet's. Stored on each run's reduction (summary.json's run rows) and, averaged over seeds,
        on each cell's aggregate."""
        base = next((c for c in group.cells if c.is_baseline), None)
        base_runs = [r.parts[self.id] for r in (base.runs if base else []) if r.parts.get(self.id) is not None]
        base_runs = [p for p in base_runs if p.acc]
        if not base_runs:
            return None
        base_acc = robustness.mean_accuracy([p.acc for p in base_runs])
        for cell in group.cells:
            parts = [r.parts[self.id] for r in cell.runs if r.parts.get(self.id) is not None and r.parts[self.id].acc]
            for p in parts:
                res = robustness.corruption_error(p.acc, base_acc)
                p.corruption_error = res["corruption_error"]
                p.mce = res["mce"] if np.isfinite(res["mce"]) else None
            agg = cell.parts.get(self.id)
            if agg is not None and parts:
                names = sorted({c for p in parts for c in p.corruption_error})
                agg.corruption_error = {c: mean_or_none([_finite(p.corruption_error.get(c)) for p in parts])
                                        for c in names}
                agg.mce = mean_or_none([p.mce for p in parts])
                agg.ce_baseline = base.variant
        return {"baseline": base.variant, "baseline_accuracy": base_acc}

    def finish(self, report, ctx):
        """The published reference curve when this sweep can be compared with it (CIFAR-10, official files)."""
        return {"source": _source(ctx), "reference": cifar_c.REFERENCE_CIFAR10C if _official(ctx, "cifar10") else None}

    def run_fields(self, run, part):
        return {"mean_corruption_accuracy": part.mca, "corruption_error": part.corruption_error or None,
                "mce": part.mce}

    def variant_fields(self, cell, agg):
        stress = agg.stress if agg else {}
        cal = agg.corruption_calibration if agg else {}
        return {
            "mean_corruption_accuracy": agg.mca if agg else None,
            # CE per corruption and mCE relative to the group's baseline variant (means over seeds)
            "corruption_error": (agg.corruption_error or None) if agg else None,
            "mce": agg.mce if agg else None,
            "corruption_accuracy": {c: dict(zip((str(s) for s in v["severities"]), v["accuracy"]))
                                    for c, v in stress.items()},
            # per corruption, the classes whose accuracy drops most at the lowest severity (pooled over
            # seeds), only those whose drop is beyond the seed spread (95% interval over seeds above 0)
            "breaking_first": {c: [{"class": name, "accuracy_drop": drop, "ci95": list(ci)} for name, drop, ci in v]
                               for c, v in (agg.breaking if agg else {}).items()},
            # per corruption and severity: ECE, NLL, Brier and the ECE after the temperature fitted on
            # clean validation logits; then each one's mean over every corrupted set
            **{f"corruption_{k}": {c: dict(zip((str(s) for s in v["severities"]), v[k])) for c, v in stress.items()}
               for k in STRESS_CALIBRATION_KEYS},
            **{f"mean_corruption_{k}": cal.get(k) for k in STRESS_CALIBRATION_KEYS},
        }

    def summary_fields(self, report):
        part = report.parts.get(self.id) or {}
        return {"corruption_source": part.get("source"), "corruption_reference": part.get("reference")}

    def figures(self, report):
        reference = (report.parts.get(self.id) or {}).get("reference")

        def accuracy():
            from .. import figures as F

            cells = cell_parts(report.cells, self.id)
            return F.robustness([(c, a.stress) for c, a in cells], reference=reference,
                                means=[(c, a.benchmark_mean) for c, a in cells] if reference else None)

        def reliability():
            from .. import figures as F

            return F.reliability([(c, a.stress_reliability, a.corruption_calibration)
                                  for c, a in cell_parts(report.cells, self.id)], corrupted=True)

        def smooth():
            from .. import figures as F

            return F.smooth_reliability([(c, a.stress_smooth, a.corruption_calibration)
                                         for c, a in cell_parts(report.cells, self.id)], corrupted=True)

        caption = "Accuracy under each corruption by severity (mean over seeds)."
        if reference:
            caption += (f" First panel: the mean over the benchmark corruptions beside {reference['label']}, "
                        f"from {reference['source']} (dashed).")
        return [FigureSpec("robustness", accuracy, caption),
                FigureSpec("reliability_corrupted", reliability,
                           "Reliability diagrams under corruption: every corruption at its highest severity, pooled "
                           "over corruptions and seeds, with the ECE of those bins; second line: mean ECE over all "
                           "corrupted sets before → after the temperature fitted on clean validation logits."),
                FigureSpec("reliability_smooth_corrupted", smooth,
                           "Smooth reliability diagrams under corruption: the same images (every corruption at its "
                           "highest severity, pooled), accuracy kernel-smoothed over confidence at the smooth ECE's "
                           "bandwidth; second line: mean smooth ECE over all corrupted sets.")]

    def html(self, report, figs):
        cells = [(c, a) for c, a in cell_parts(report.cells, self.id) if a.stress]
        if not cells:
            return empty("No corrupted test sets were stored ([stress].corruptions is empty).")
        rows = []
        for c, a in cells:
            k, clean = a.corruption_calibration, scores(c)
            rows.append([c.label, pct(c.acc_mean), pct(a.mca),
                         pct(a.mca / c.acc_mean) if a.mca is not None and c.acc_mean else "n/a",
                         num(clean.get("ece")), num(k.get("ece")), num(k.get("ece_after")),
                         num(clean.get("nll")), num(k.get("nll")), num(clean.get("brier")),
                         num(k.get("brier")), num(clean.get("ace")), num(k.get("ace")),
                         num(clean.get("classwise_ece")), num(k.get("classwise_ece")),
                         num(clean.get("smece")), num(k.get("smece"))])
        out = [para("Mean corruption accuracy (mCA) and calibration under corruption are means over every corruption "
                    "and severity (and over seeds). 'after T' applies the temperature fitted on each run's clean "
                    "validation logits, unchanged, to the corrupted test sets: does the clean fix survive the shift?"),
               table(("variant", "clean accuracy", "mCA", "mCA / clean", "ECE clean", "ECE corrupted",
                      "ECE corrupted after T", "NLL clean", "NLL corrupted", "Brier clean", "Brier corrupted",
                      "adaptive ECE clean", "adaptive ECE corrupted", "classwise ECE clean",
                      "classwise ECE corrupted", "smooth ECE clean", "smooth ECE corrupted"), rows,
                     numeric=range(1, 17)),
               figure(figs, "robustness"), figure(figs, "reliability_corrupted"),
               figure(figs, "reliability_smooth_corrupted")]
        out += self._scaled_html(report, cells) + self._reference_html(report, cells) + self._ce_html(cells)
        sev_rows = []
        for c, a in cells:
            for name, v in sorted(a.stress.items()):
                for i, sev in enumerate(v["severities"]):
                    sev_rows.append([c.label, name, sev, pct(v["accuracy"][i]), num(v["ece"][i]),
                                     num(v["ece_after"][i]), num(v["nll"][i]), num(v["brier"][i]),
                                     num(v["ace"][i]), num(v["classwise_ece"][i]), num(v["smece"][i])])
        if sev_rows:
            out.append(para("Calibration under corruption per corruption and severity (ECE on 15 equal-width bins, "
                            "adaptive ECE on 15 equal-count bins, classwise ECE, smooth ECE), mean over seeds."))
            opened = " open" if len(sev_rows) <= 24 else ""
            out.append(f"<details{opened}><summary>{len(sev_rows)} corrupted test sets</summary>"
                       + table(("variant", "corruption", "severity", "accuracy", "ECE", "ECE after T", "NLL", "Brier",
                                "adaptive ECE", "classwise ECE", "smooth ECE"),
                               sev_rows, numeric=range(2, 11)) + "</details>")
        corruptions = sorted({k for _, a in cells for k in a.breaking})
        if corruptions:
            out.append(para(f"Classes that break first: the largest per-class accuracy drop at the lowest severity "
                            f"(pooled over seeds; change in points), at most {BREAKING_SHOWN} per corruption, and only "
                            "classes whose drop is beyond the seed spread (its 95% interval over the seeds' own "
                            "drops lies above 0; that needs at least 2 seeds)."))
            heads = ["corruption"] + [c.label for c, _ in cells]
            rows = [[name] + [breaking_text(a, name) for _, a in cells] for name in corruptions]
            out.append(table(heads, rows))
        return "".join(out)

    def _scaled_html(self, report, cells) -> list[str]:
        """Generated corruptions on images of another side than 32: say that their parameters were scaled."""
        if (report.parts.get(self.id) or {}).get("source") == "official":
            return []
        sizes = sorted({getattr(r, "image_size", 32) for c, _ in cells for r in c.runs} - {32})
        if not sizes:
            return []
        return [para(scaled_corruptions_note(sizes))]

    def _reference_html(self, report, cells) -> list[str]:
        part = report.parts.get(self.id) or {}
        ref = part.get("reference")
        if part.get("source") != "official":
            if report.dataset not in cifar_c.DATASETS:
                return []
            return [para("Corrupted test sets generated on the device (corrupt.py, CIFAR-10-C's definitions with "
                         "the differences listed in its docstring): not the published files, so these numbers are "
                         "not directly comparable with published CIFAR-10-C results ([stress].source = "
                         "\"official\" reads those).")]
        if ref is None:
            return [para(f"Corrupted test sets from the published {_folder(report.dataset)} files.")]
        rows = [["reference", pct(ref["clean_accuracy"])] + [pct(a) for a in ref["accuracy"]]
                + [pct(ref["mean_accuracy"]), "15"]]
        for c, a in cells:
            m = a.benchmark_mean
            if not m:
                continue
            by_sev = dict(zip(m["severities"], m["accuracy"]))
            rows.append([c.label, pct(c.acc_mean)] + [pct(by_sev[s]) if s in by_sev else "-"
                                                      for s in ref["severities"]]
                        + [pct(float(np.mean(m["accuracy"]))), str(m["n_corruptions"])])
        return [para(f"Corrupted test sets from the published CIFAR-10-C files. Reference: {ref['label']}, "
                     f"mean {pct(ref['mean_accuracy'])} over the 15 benchmark corruptions and 5 severities "
                     f"(source: {ref['source']}). The variants' rows average the benchmark corruptions this sweep "
                     "evaluated, over seeds; they match the reference's set only when all 15 and all 5 severities "
                     "are there."),
                table(("", "clean") + tuple(f"severity {s}" for s in ref["severities"]) + ("mean", "corruptions"),
                      rows, numeric=range(1, 9))]

    def _ce_html(self, cells) -> list[str]:
        with_ce = [(c, a) for c, a in cells if a.corruption_error]
        if not with_ce:
            return []
        base = with_ce[0][1].ce_baseline
        names = sorted({n for _, a in with_ce for n in a.corruption_error})
        rows = [["mCE"] + [num(a.mce) for _, a in with_ce]]
        rows += [[n] + [num(a.corruption_error.get(n)) for _, a in with_ce] for n in names]
        return [para(f"Corruption error relative to the baseline ({base}): Hendrycks & Dietterich's CE, the sum over "
                     "severities of a run's error divided by the same sum for the baseline variant's error averaged "
                     "over its seeds (in place of AlexNet's); mCE is its mean over corruptions. 1 = as robust as the "
                     "baseline, lower = more robust; the baseline's own runs scatter around 1 by their seed noise. "
                     "Per run in summary.json (corruption_error, mce)."),
                table(["corruption"] + [c.label for c, _ in with_ce], rows, numeric=range(1, len(with_ce) + 1))]

    def metrics(self, part):
        # per image where the run has the arrays (0/1 right; their mean is the accuracy), else per run
        right = part.right if part.right and set(part.right) == set(part.acc) else None
        mca = part.mca if right is None or part.mca is None else np.mean([right[k] for k in sorted(right)], axis=0)
        out = [] if part.mca is None else [Metric("mean_corruption_accuracy", "mean corruption accuracy", mca,
                                                  True, headline=True)]
        out += [Metric(f"corruption_{c}_{s}", f"accuracy, {c} severity {s}", a if right is None else right[(c, s)],
                       True)
                for (c, s), a in sorted(part.acc.items())]
        for key, label in (("ece", "ECE under corruption"),
                           ("ece_after", "ECE under corruption (clean-validation temperature)"),
                           ("nll", "NLL under corruption"), ("brier", "Brier score under corruption"),
                           ("ace", "adaptive ECE under corruption"),
                           ("classwise_ece", "classwise ECE under corruption"),
                           ("smece", "smooth ECE under corruption")):
            vals = [v[key] for v in part.calibration.values() if v.get(key) is not None]
            if vals:
                out.append(Metric(f"corruption_{key}", label, float(np.mean(vals)), False,
                                  points=key not in ("nll", "brier")))
        return out


def breaking_text(agg: CellStress, corruption: str) -> str:
    """One cell of the table of classes that break first: the classes with their change in points,
    or why there are none."""
    if corruption not in agg.breaking:
        return "-"
    shown = agg.breaking[corruption]
    if shown:
        return "; ".join(f"{cls} ({points(-d)})" for cls, d, _ in shown)
    if agg.breaking_seeds < 2:
        return "one seed: no seed spread to judge a drop by"
    return "no class drops beyond the seed spread"


def scaled_corruptions_note(sizes: list[int]) -> str:
    """The sentence saying how corruptions generated at image sides ``sizes`` (none of them 32) were made."""
    at = " and ".join(f"{s} px" for s in sizes)
    return (f"The corrupted test sets were generated at {at}: their parameters were CIFAR-10-C's at 32 px, the "
            f"spatial ones scaled to {at} (blur sigmas and radii, pixelate's blocks and fog's map by the image "
            "side / 32; corrupt.py's docstring lists them); the noises, contrast, brightness and saturate (per "
            "pixel) and jpeg (its 8x8 blocks are the format's) are not scaled.")


def benchmark_mean(stress: dict[str, dict[str, list]]) -> dict[str, list] | None:
    """Accuracy per severity averaged over the benchmark corruptions in ``stress`` (a cell's means over
    seeds), the curve the reference is read against; None without any."""
    names = [n for n in cifar_c.BENCHMARK_CORRUPTIONS if n in stress]
    if not names:
        return None
    sevs = sorted({s for n in names for s in stress[n]["severities"]})
    acc = [float(np.mean([dict(zip(stress[n]["severities"], stress[n]["accuracy"]))[s]
                          for n in names if s in stress[n]["severities"]])) for s in sevs]
    return {"severities": sevs, "accuracy": acc, "n_corruptions": len(names)}


def _source(ctx) -> str:
    spec = getattr(ctx, "spec0", None)
    return getattr(getattr(spec, "stress", None), "source", "generated") if spec is not None else "generated"


def _official(ctx, dataset: str | None = None) -> bool:
    """Whether the sweep read the published files (of ``dataset``, when given)."""
    if _source(ctx) != "official":
        return False
    return dataset is None or ctx.spec0.dataset.name == dataset


def _folder(dataset: str) -> str:
    try:
        return cifar_c.official_set(dataset).folder
    except ValueError:
        return "CIFAR-C"


def _finite(v: float | None) -> float | None:
    return v if v is not None and np.isfinite(v) else None


SECTION = RobustnessSection()
