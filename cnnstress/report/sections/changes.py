"""What the modification changed: every metric the report shows, compared the same way.

For each variant against its baseline and each metric a section measures per run (its
``metrics``; clean accuracy per test image here), runs paired by seed value: the difference with a
95% interval (a paired t-interval over seeds for a per-run metric, a t-interval over test images
for a per-image one), and the baseline's own seed-to-seed spread as its noise floor
(``analysis.verdicts``; docs/statistics.md). A change is called one only when its test survives
Benjamini-Hochberg control of the false discovery rate over the table (5%) and it exceeds that
floor. Sorted by effect size. Then: how many seeds a claim needs (paired design, two-sided alpha
0.05, power 0.8) for the headline metrics.
"""

from __future__ import annotations

import numpy as np

from ...analysis import compare, verdicts
from ..markup import empty, esc, num, para, points, end_sentence, table
from .base import Metric, Section

N_BOOT = 2000
#: The metrics the "how many seeds" sentences are about (when a run has them).
HEADLINE = ("test_accuracy", "mean_corruption_accuracy", "ece", "adversarial_linf_8", "autoattack")


def run_metrics(run, sections) -> dict[str, tuple[Metric, str]]:
    """Every metric of one read run, with the id of the section it belongs to: clean accuracy (per
    image, the accuracy section's) and each section's own."""
    out = {"test_accuracy": (Metric("test_accuracy", "test accuracy", run.correct.astype(np.float64), True,
                                    headline=True),
                             "accuracy")}
    for sec in sections:
        part = run.parts.get(sec.id)
        if part is not None:
            for m in sec.metrics(part):
                out.setdefault(m.key, (m, sec.id))
    return out


class ChangesSection(Section):
    id = "changes"
    title = "What the modification changed"

    def compare(self, group, ctx):
        """Per variant: every shared metric compared with its baseline, ranked; and the power numbers."""
        from . import SECTIONS  # the registry (imported here: it imports this module)

        base = group.cells[0]
        target = float(ctx.grid.report.get("target_difference", 0.01)) if ctx.grid is not None else 0.01
        out = []
        for cell in group.cells[1:]:
            if not base.runs or not cell.runs:
                continue
            bm = [run_metrics(r, SECTIONS) for r in base.runs]
            vm = [run_metrics(r, SECTIONS) for r in cell.runs]
            keys, left_out = _comparable(base.runs + cell.runs, bm + vm)
            match = verdicts.pair_by_seed(base.seeds, cell.seeds)
            rows = []
            for key in keys:
                first, section = bm[0][key]
                res = verdicts.compare_metric(key, [m[key][0].value for m in bm], [m[key][0].value for m in vm],
                                              higher_is_better=first.higher_is_better, base_seeds=base.seeds,
                                              var_seeds=cell.seeds)
                res.update(label=first.label, points=first.points, section=section, headline=first.headline)
                rows.append(res)
            verdicts.control_fdr(rows)
            chance = 1.0 / ctx.spec0.num_classes if ctx is not None and ctx.spec0.num_classes else None
            confound = _relative_to_clean(rows, bm, vm, base.seeds, cell.seeds)
            if confound is not None:  # the new rows join the table's family: judged again together
                verdicts.control_fdr(rows)
            _mark_chance(rows, chance)
            power = []
            for key in HEADLINE:
                if key not in keys:
                    continue
                b = [float(np.mean(m[key][0].value)) for m in bm]
                if len(match["pairs"]) >= 2:  # the paired spread, over the runs that share a seed
                    bp = [b[i] for i, _ in match["pairs"]]
                    vp = [float(np.mean(vm[j][key][0].value)) for _, j in match["pairs"]]
                    sd = verdicts.sd_of_paired_difference(bp, vp)
                else:
                    sd = verdicts.sd_of_paired_difference(b, None)
                if sd is None or sd == 0.0:  # no spread to speak of: no power sentence
                    continue
                pts = bm[0][key][0].points
                power.append({"metric": key, "label": bm[0][key][0].label, "n_seeds": len(b), "sd_difference": sd,
                              "detectable": verdicts.detectable_difference(sd, len(b)) if len(b) >= 2 else None,
                              "target": target, "seeds_needed": verdicts.seeds_needed(sd, target),
                              "sentence": verdicts.power_sentence(bm[0][key][0].label, len(b), sd, target,
                                                                  unit="points" if pts else "",
                                                                  scale=100 if pts else 1)})
            out.append({"variant": cell.variant, "label": cell.label, "baseline": base.variant,
                        "metrics": verdicts.rank_changes(rows), "power": power, "left_out": left_out,
                        "pairs": [(base.seeds[i], cell.seeds[j]) for i, j in match["pairs"]],
                        "unmatched_base": match["unmatched_base"], "unmatched_var": match["unmatched_var"],
                        "confounded": confound, "chance": chance})
        return out

    def summary_lines(self, report):
        lines = []
        for g in report.groups:
            for comp in g.parts.get(self.id) or []:
                changed = [r for r in comp["metrics"] if r["verdict"] in verdicts.CHANGED_VERDICTS]
                names = ", ".join(f"{r['label']} ({_delta(r)})" for r in changed[:5])
                lines.append(end_sentence(f"{comp['variant']} vs {comp['baseline']}: {len(changed)} of "
                                      f"{len(comp['metrics'])} metrics changed (false discovery rate 5%)"
                                      + (f": {names}" if names else "")))
                lines += [p["sentence"] for p in comp["power"][:1]]
                if comp.get("left_out"):
                    lines.append(f"{comp['variant']} vs {comp['baseline']}: left out of the comparison: "
                                 + end_sentence("; ".join(f"{m['label']} ({m['reason']})" for m in comp["left_out"])))
        return lines

    def html(self, report, figs):
        comps = [(g, comp) for g in report.groups for comp in (g.parts.get(self.id) or [])]
        if not comps:
            return empty("No variant has finished runs next to a finished baseline.")
        out = [para("Each metric of each variant against its baseline, runs paired by seed value: the change with a "
                    "95% interval -- a paired t-interval over seeds for a metric measured once per run, a t-interval "
                    "over test images (within the seed pairs) for a mean over images, which covers another draw "
                    "of test images, not reseeding -- and the baseline's own seed-to-seed spread (mean |difference| "
                    "between two baseline seeds, from 3 or more seeds) as the noise floor. The table tests every "
                    "metric at once, so a change counts only when its test survives Benjamini-Hochberg control of "
                    "the false discovery rate at 5% over this table (at most 5% of the rows marked changed are "
                    "expected to be false) and it exceeds the noise floor; for a mean over images the test is "
                    "both the one over images and the paired t-test over the seed pairs, since the one over "
                    "images alone does not cover reseeding. A row whose interval excludes 0 may therefore still "
                    "read \"not distinguishable\"; \"changed over test images\" (fewer than 3 baseline seeds) "
                    "says these networks differ, not that reseeding could not explain it. Sorted by effect (change / noise floor). "
                    "Fractions are in percentage points; docs/statistics.md in the repository gives the methods.")]
        for g, comp in comps:
            where = f" [{g.label}]" if g.label else ""
            rows, classes = [], []
            for r in comp["metrics"]:
                classes.append("changed" if r["verdict"] in verdicts.CHANGED_VERDICTS else "")
                rows.append([r["label"], _value(r, "base_mean"), _value(r, "var_mean"), _delta(r),
                             _interval(r), _floor(r), "-" if r["effect"] is None else f"{r['effect']:.1f}",
                             r.get("verdict_text", r["verdict"])])
            out.append(f"<h3>{esc(comp['variant'])} vs {esc(comp['baseline'])}{esc(where)}</h3>")
            out.append(para(pairing_text(comp, comp["variant"], comp["baseline"])))
            out.append(table(("metric", "baseline", "variant", "change", "95% interval", "noise floor", "effect",
                              "verdict"), rows, numeric=(1, 2, 3, 5, 6), row_classes=classes))
            out += [para(p["sentence"]) for p in comp["power"]]
            if comp.get("left_out"):
                out.append("<p>Left out of this comparison:</p><ul>" + "".join(
                    f"<li>left out: {esc(m['label'])} (<code>{esc(m['name'])}</code>): {esc(m['reason'])}</li>"
                    for m in comp["left_out"]) + "</ul>")
        return "".join(out)


#: The sections whose metrics measure robustness: a change of clean accuracy confounds them.
ROBUSTNESS_SECTIONS = ("robustness", "adversarial", "ood", "shortcut")
RELATIVE_SUFFIX = "_over_clean"
CHANCE_MARGIN = 0.02  # a baseline accuracy within 2 points of chance is at chance


def is_accuracy(r: dict) -> bool:
    """An accuracy row (clean, corrupted, adversarial, on conflicting images): a fraction of images
    classified right, which can be divided by clean accuracy and compared with chance."""
    key = r["name"]
    if key.endswith(RELATIVE_SUFFIX):  # a share of clean accuracy is a ratio, not an accuracy
        return False
    return (key in ("test_accuracy", "mean_corruption_accuracy", "acc_conflicting") or key.startswith("adversarial_")
            or (key.startswith("corruption_") and r["label"].startswith("accuracy")))


def _relative_to_clean(rows: list[dict], bm: list[dict], vm: list[dict], base_seeds, var_seeds) -> dict | None:
    """When clean accuracy changed: every robustness accuracy of ``rows`` also as a share of clean
    accuracy (per run: metric / clean accuracy), compared like the rest and appended to ``rows``, and
    the relative mCE of Hendrycks & Dietterich (2019) against the baseline. Returns what the
    Findings say about it, or None when clean accuracy did not change beyond noise."""
    acc = next((r for r in rows if r["name"] == "test_accuracy"), None)
    if acc is None or acc["verdict"] not in verdicts.CHANGED_VERDICTS:
        return None
    clean_b = [float(np.mean(m["test_accuracy"][0].value)) for m in bm]
    clean_v = [float(np.mean(m["test_accuracy"][0].value)) for m in vm]
    added = []
    for r in [r for r in rows if r["section"] in ROBUSTNESS_SECTIONS and is_accuracy(r)]:
        key = r["name"]
        if min(clean_b + clean_v) <= 0.0:
            break  # a run with no image right: no ratio
        b = [float(np.mean(m[key][0].value)) / c for m, c in zip(bm, clean_b)]
        v = [float(np.mean(m[key][0].value)) / c for m, c in zip(vm, clean_v)]
        res = verdicts.compare_metric(key + RELATIVE_SUFFIX, b, v, higher_is_better=True, base_seeds=base_seeds,
                                      var_seeds=var_seeds)
        res.update(label=f"{r['label']} / clean accuracy", points=False, section=r["section"], headline=False,
                   relative_to=key)
        added.append(res)
    mce = relative_mce(rows)
    rows += added
    return {"clean_delta": acc["delta"], "relative_mce": mce,
            "relative": {r["relative_to"]: r["name"] for r in added}}


def relative_mce(rows: list[dict]) -> float | None:
    """Relative mCE of the variant with the baseline as reference (Hendrycks & Dietterich 2019):
    per corruption c, sum over severities of (clean accuracy - accuracy under c) of the variant over
    the same sum of the baseline; then the mean over corruptions. From the rows' means over the
    paired runs; None without per-severity rows or with a baseline that loses nothing."""
    clean = next((r for r in rows if r["name"] == "test_accuracy"), None)
    if clean is None:
        return None
    by_c: dict[str, list[dict]] = {}
    for r in rows:
        if r["section"] == "robustness" and r["name"].startswith("corruption_") and is_accuracy(r) \
                and r["label"].startswith("accuracy, ") and " severity " in r["label"]:
            by_c.setdefault(r["label"][len("accuracy, "):].rsplit(" severity ", 1)[0], []).append(r)
    ratios = []
    for group in by_c.values():
        num = sum(clean["var_mean"] - r["var_mean"] for r in group)
        den = sum(clean["base_mean"] - r["base_mean"] for r in group)
        if den <= 0.0:
            return None
        ratios.append(num / den)
    return float(np.mean(ratios)) if ratios else None


def _mark_chance(rows: list[dict], chance: float | None) -> None:
    """Mark accuracy rows whose baseline is within CHANCE_MARGIN of chance (1 / classes)."""
    for r in rows:
        r["at_chance"] = bool(chance is not None and is_accuracy(r) and r["base_mean"] <= chance + CHANCE_MARGIN)
        if r["at_chance"]:
            r["verdict_text"] = f"{r['verdict_text']}; the baseline is at chance"


def _runs_text(runs, section: str = "") -> str:
    """"baseline seed 2, cropflip seed 1" (at most four named), with the arrays a section lacked."""
    names = []
    for r in runs[:4]:
        lacking = (getattr(r, "missing", None) or {}).get(section)
        names.append(f"{r.spec.variant} seed {r.spec.seed}" + (f" (results.h5 has no {', '.join(lacking)})"
                                                               if lacking else ""))
    more = f" and {len(runs) - 4} more" if len(runs) > 4 else ""
    return ", ".join(names) + more


def _finite(value) -> bool:
    try:
        return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))
    except (TypeError, ValueError):
        return False


def _comparable(runs, metrics) -> tuple[list[str], list[dict]]:
    """The metric keys every run has with finite values (first run's order first), and every other
    metric some run has, with the reason it is left out (never dropped without a word)."""
    every = list(dict.fromkeys(k for m in metrics for k in m))
    keys, left_out = [], []
    for key in every:
        first, section = next(m[key] for m in metrics if key in m)
        absent = [r for r, m in zip(runs, metrics) if key not in m]
        bad = [r for r, m in zip(runs, metrics) if key in m and not _finite(m[key][0].value)]
        if absent:
            reason = f"not measured in {_runs_text(absent, section)}"
        elif bad:
            reason = f"not a finite number in {_runs_text(bad)}"
        else:
            keys.append(key)
            continue
        left_out.append({"name": key, "label": first.label, "section": section, "reason": reason})
    return keys, left_out


def _value(r, key) -> str:
    return f"{100 * r[key]:.2f}%" if r["points"] else num(r[key])


def _delta(r) -> str:
    return points(r["delta"]) if r["points"] else f"{r['delta']:+.3g}"


def pairing_text(comp: dict, variant: str, baseline: str) -> str:
    """"Paired by seed: 1/1, 3/3 (baseline / variant); seed 2 has no cutout run." """
    pairs = ", ".join(f"{b}/{v}" for b, v in comp["pairs"]) or "none"
    text = f"Paired by seed: {pairs} (seed of baseline / variant)."
    extra = compare.unmatched_text(comp["unmatched_base"], comp["unmatched_var"], variant, baseline)
    return text + (f" {extra[0].upper()}{extra[1:]} Unmatched runs count in each side's mean and the noise floor, "
                   "not in the paired change." if extra else "")


def _interval(r) -> str:
    if r["ci95"] is None:
        return "none (one run per side)"
    lo, hi = r["ci95"]
    return f"[{points(lo)}, {points(hi)}]" if r["points"] else f"[{lo:+.3g}, {hi:+.3g}]"


def _floor(r) -> str:
    f = r["noise_floor"]
    if f is None:
        return f"n/a ({r['n_base']} baseline seeds; needs ≥ {verdicts.MIN_FLOOR_SEEDS})"
    return f"±{100 * f:.2f}" if r["points"] else f"±{f:.3g}"


SECTION = ChangesSection()
