"""Baseline vs variant: per seed pair and summed, disagreement against the seed noise floor, a verdict."""

from __future__ import annotations

import math

import numpy as np

from ...analysis import compare
from ..markup import empty, esc, para, pct, points, end_sentence, table
from ..model import Comparison
from .base import Section

N_BOOT = 2000


def _pairs_table(comp: Comparison) -> str:
    s = comp.stats
    rows = []
    for p in s["pairs"]:
        mc = p["mcnemar"]
        rows.append([f"{p['base_seed']} / {p['var_seed']}", p["corrected"], p["worsened"], p["both_wrong"],
                     p["both_right"], f"{mc['p_value']:.3g} ({mc['method']})"])
    rows.append(["sum", s["corrected"], s["worsened"], s["both_wrong"], s["both_right"], ""])
    return table(("seeds (baseline / variant)", "corrected", "worsened", "both wrong", "both right", "McNemar p"),
                 rows, numeric=(1, 2, 3, 4, 5))


def comparison_summary(comp: Comparison) -> dict:
    s = comp.stats
    return {
        "variant": comp.variant, "baseline": comp.baseline, "group": comp.group,
        "n_pairs": s["n_pairs"], "accuracy_delta_mean": s["accuracy_delta_mean"], "ci95": s["ci95"],
        "accuracy_method": s["accuracy_method"], "accuracy_verdict": s["accuracy"]["verdict"],
        "unmatched_base_seeds": s["unmatched_base_seeds"], "unmatched_var_seeds": s["unmatched_var_seeds"],
        "corrected": s["corrected"], "worsened": s["worsened"], "both_wrong": s["both_wrong"],
        "both_right": s["both_right"],
        "pairs": [{"base_seed": p["base_seed"], "var_seed": p["var_seed"], "base_run_id": p["base_run_id"],
                   "var_run_id": p["var_run_id"], "corrected": p["corrected"], "worsened": p["worsened"],
                   "both_wrong": p["both_wrong"], "both_right": p["both_right"],
                   "mcnemar_p": p["mcnemar"]["p_value"], "mcnemar_method": p["mcnemar"]["method"]}
                  for p in s["pairs"]],
        "baseline_noise_floor": s["baseline_noise_floor"], "variant_disagreement": s["variant_disagreement"],
        "disagreement_exceeds_floor": s["disagreement_exceeds_floor"],
        "persistent_failures": s["persistent_failures"],
        "variant_persistent_failures": s["variant_persistent_failures"], "exceeds_noise": s["exceeds_noise"],
        "verdict": s["verdict"],
    }


class ComparisonSection(Section):
    id = "comparison"
    title = "Baseline vs variant"
    depends = ("changes",)

    def compare(self, group, ctx):
        """compare_variant over the seed pairs (by seed value) of every variant with finished runs (a
        list). Its accuracy change is the test-accuracy row of "What the modification changed" (the
        same computation, so that the two tables, the Findings and the terminal agree)."""
        base_cell = group.cells[0]
        rows = {c["variant"]: c for c in (group.parts.get("changes") or [])}
        out = []
        for var_cell in group.cells[1:]:
            if not base_cell.runs or not var_cell.runs:
                continue
            found = rows.get(var_cell.variant)
            acc = next((r for r in found["metrics"] if r["name"] == "test_accuracy"), None) if found else None
            stats = compare.compare_variant(np.stack([r.correct for r in base_cell.runs]),
                                            np.stack([r.correct for r in var_cell.runs]),
                                            base_seeds=base_cell.seeds, var_seeds=var_cell.seeds, accuracy=acc)
            ids_b = dict(zip(base_cell.seeds, base_cell.run_ids))
            ids_v = dict(zip(var_cell.seeds, var_cell.run_ids))
            for p in stats["pairs"]:
                p.update(base_run_id=ids_b[p["base_seed"]], var_run_id=ids_v[p["var_seed"]])
            out.append(Comparison(variant=var_cell.variant, baseline=ctx.baseline, group=group.label,
                                  label=var_cell.label, stats=stats))
        return out

    def summary_fields(self, report):
        # every metric compared the same way (the "changes" section), under its comparison
        changes = {(g.label, c["variant"]): c for g in report.groups for c in (g.parts.get("changes") or [])}
        out = []
        for comp in report.comparisons:
            entry = comparison_summary(comp)
            found = changes.get((comp.group, comp.variant))
            if found is not None:
                entry["metrics"] = [{k: r.get(k) for k in ("name", "label", "delta", "ci95", "noise_floor", "verdict",
                                                           "effect", "direction", "section", "headline", "verdict_text",
                                                           "p_value", "fdr_rejected", "method", "n_pairs", "at_chance",
                                                           "base_mean", "var_mean", "base_mean_all", "var_mean_all")}
                                    for r in found["metrics"]]
                entry["metric_pairs"] = found.get("pairs", [])
                # clean accuracy changed: robustness also as a share of clean accuracy, and the relative mCE
                entry["relative_to_clean"] = found.get("confounded")
                entry["seeds_needed"] = [{k: p[k] for k in ("metric", "n_seeds", "detectable", "target",
                                                            "seeds_needed")} for p in found["power"]]
                # metrics some run lacks or has as NaN/infinity: listed, never silently dropped
                entry["left_out"] = [{k: m[k] for k in ("name", "label", "section", "reason")}
                                     for m in found.get("left_out", [])]
            out.append(entry)
        return {"comparisons": out}

    def summary_lines(self, report):
        lines = []
        for comp in report.comparisons:
            where = f" [{comp.group}]" if comp.group else ""
            lines.append(f"{comp.variant} vs {comp.baseline}{where}: {comp.stats['verdict']}")
        for g in report.groups:
            where = f" [{g.label}]" if g.label else ""
            if g.cells and not g.cells[0].n_runs and any(c.n_runs for c in g.cells[1:]):
                lines.append(f"No comparison{where}: the baseline '{report.baseline}' has no finished run.")
        return lines

    def html(self, report, figs):
        if not report.comparisons:
            return empty("No comparison: it needs at least one finished baseline run and one finished variant run "
                         "in the same group.")
        out = [para("On the full test set, per seed pair (runs paired by seed value) and summed: corrected = "
                    "variant right where the baseline is wrong, worsened = the reverse. The accuracy change and its "
                    "interval are those of What the modification changed.")]
        for comp in report.comparisons:
            s = comp.stats
            out.append(f"<h3>{esc(comp.label)} vs {esc(comp.baseline)}</h3>")  # labels name the group
            unmatched = compare.unmatched_text(s["unmatched_base_seeds"], s["unmatched_var_seeds"], comp.variant,
                                               comp.baseline)
            if unmatched:
                out.append(para(f"{unmatched[0].upper()}{unmatched[1:]} Unmatched runs are left out of the pairs "
                                "below and of the paired change; they count in each side's mean accuracy."))
            out.append(_pairs_table(comp) if s["pairs"] else empty("No seed is shared by both sides: no pairs."))
            pf = s["persistent_failures"]
            out.append(table(("statistic", "value"), [
                ["accuracy delta (points)", _delta_text(s)],
                ["seed pairs", s["n_pairs"]],
                ["baseline seed noise floor (share of images two baseline seeds disagree on)",
                 _floor_text(s["baseline_noise_floor"])],
                ["variant vs baseline disagreement (mean over pairs)",
                 pct(s["variant_disagreement"]) + {True: " (above the floor)", False: " (within the floor)",
                                                    None: ""}[s["disagreement_exceeds_floor"]]],
                ["persistent baseline failures (wrong in every seed)", pf["persistent"]],
                ["... of which the variant gets right in every paired seed", pf["persistent_fixed_by_variant"]],
                ["seed-dependent baseline failures", pf["seed_dependent"]],
                ["persistent / seed-dependent variant failures",
                 f'{s["variant_persistent_failures"]["persistent"]} / '
                 f'{s["variant_persistent_failures"]["seed_dependent"]}'],
            ], numeric=(1,)))
            out.append(f'<p class="verdict">Verdict: {esc(end_sentence(s["verdict"]))}</p>')
        return "".join(out)


def _delta_text(s: dict) -> str:
    """"+1.50 [-0.40, +3.40] (t over test images)": the accuracy row's number, interval and method."""
    if s["ci95"] is None:
        return f"{points(s['accuracy_delta_mean'])} (no interval: one run per side)"
    lo, hi = s["ci95"]
    return f"{points(s['accuracy_delta_mean'])} [{points(lo)}, {points(hi)}] ({s['accuracy_method']})"


def _floor_text(floor) -> str:
    """The floor as a share; one baseline seed has none (NaN), said in words rather than "nan%"."""
    if floor is None or not math.isfinite(floor):
        return "none: one baseline seed gives no noise floor"
    return pct(floor)


SECTION = ComparisonSection()
