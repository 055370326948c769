"""Findings: the page opens with 3-7 plain sentences, test accuracy first and then ranked by effect,
each with its number, its interval and its verdict against the noise floor, and a link to the
section it comes from. Built from the rows of "What the modification changed" (``changes``): the
same numbers from the same computation; the terminal prints the same sentences."""

from __future__ import annotations

import math

from ...analysis import verdicts
from ..markup import empty, esc, end_sentence
from .base import Section

MIN_FINDINGS, MAX_FINDINGS = 3, 7
FAR = 3.0  # a change this many noise floors away is "far beyond reseeding noise"


def _number(r: dict, x: float, signed: bool = False) -> str:
    if r["points"]:
        value = 100.0 * x
        return f"{value:+.1f}" if signed else f"{abs(value):.1f}"
    return f"{x:+.3g}" if signed else f"{abs(x):.3g}"


def sentence(comp: dict, r: dict, group: str = "") -> str:
    """The row's sentence (:func:`_sentence`), with a word when its baseline is at chance."""
    text = _sentence(comp, r, group)
    if r.get("at_chance") and comp.get("chance"):
        text += (f" The baseline is at chance here ({100 * r['base_mean']:.1f}%; chance "
                 f"{100 * comp['chance']:.1f}%).")
    return text


def confounding_sentence(comp: dict, r: dict, group: str = "") -> str | None:
    """For a robustness row when clean accuracy changed: does the change survive normalising by
    clean accuracy (corrupted / clean accuracy per run; relative mCE)? None when nothing to say."""
    conf = comp.get("confounded")
    if not conf or r["name"] not in conf["relative"]:
        return None
    rel = next((m for m in comp["metrics"] if m["name"] == conf["relative"][r["name"]]), None)
    if rel is None:
        return None
    who = f"{comp['variant']}{f' [{group}]' if group else ''}"
    text = (f"{who} also changed clean test accuracy ({100 * conf['clean_delta']:+.1f} points), so its "
            f"{r['label']} is confounded with it: as a share of clean accuracy it moved by {rel['delta']:+.3g}")
    if rel["ci95"] is not None:
        text += f" (95% CI {rel['ci95'][0]:+.3g} to {rel['ci95'][1]:+.3g})"
    v = rel["verdict"]
    if v in verdicts.CHANGED_VERDICTS:
        text += ", and the effect survives that normalisation"
    elif v == verdicts.VERDICT_NOT_DISTINGUISHABLE:
        text += ", and the effect does not survive that normalisation"
    else:
        text += f"; whether the effect survives that normalisation cannot be said: {rel['verdict_text']}"
    if r["name"] == "mean_corruption_accuracy" and conf.get("relative_mce") is not None:
        text += f" (relative mCE against the baseline {conf['relative_mce']:.2f}; below 1: a smaller drop from clean)"
    return end_sentence(text)


def _sentence(comp: dict, r: dict, group: str = "") -> str:
    """'huejitter raised test accuracy by 31.0 points (95% CI over test images +27.0 to +35.0), far
    beyond reseeding noise (±4.0).' The number, its interval and its verdict are the row's own
    (``verdicts.compare_metric``), said with what the interval covers."""
    unit = " points" if r["points"] else ""
    who = f"{comp['variant']}{f' [{group}]' if group else ''}"
    verb = "raised" if r["delta"] > 0 else "lowered"
    head = f"{who} {verb} {r['label']} by {_number(r, r['delta'])}{unit}"
    if r["delta"] == 0:
        head = f"{who} left {r['label']} unchanged"
    if r["ci95"] is None:
        return head + " (no interval: one run per side), too few seeds to judge."
    lo, hi = r["ci95"]
    over = " over test images" if r.get("method") == verdicts.METHOD_IMAGE_T else ""
    head += f" (95% CI{over} {_number(r, lo, True)} to {_number(r, hi, True)})"
    floor = r["noise_floor"]
    v = r["verdict"]
    if v == verdicts.VERDICT_CHANGED:
        far = r["effect"] is None or r["effect"] >= FAR
        return head + f", {'far ' if far else ''}beyond reseeding noise (±{_number(r, floor)})."
    if v in (verdicts.VERDICT_CHANGED_IMAGES, verdicts.VERDICT_SAME_IMAGES):
        what = "beyond" if v == verdicts.VERDICT_CHANGED_IMAGES else "within"
        if floor is None:
            why = (f"with {r['n_base']} baseline seed{'s' if r['n_base'] != 1 else ''} reseeding noise is not estimated "
                   f"(that needs ≥ {verdicts.MIN_FLOOR_SEEDS})")
        elif floor == 0.0:
            why = "the baseline's seeds do not vary, so reseeding noise cannot be estimated"
        else:
            why = f"with {r['n_pairs']} seed pair{'s' if r['n_pairs'] != 1 else ''} reseeding noise is not estimated (that needs ≥ 2)"
        return head + f", {what} test-image sampling noise; {why}."
    if v == verdicts.VERDICT_NOT_DISTINGUISHABLE:
        excludes = lo > 0 or hi < 0
        if excludes and floor is not None and abs(r["delta"]) > floor and r.get("fdr_rejected") is False:
            return head + (", not distinguishable once every metric of the table is tested together "
                           "(false discovery rate 5%).")
        return head + f", not distinguishable from reseeding (±{_number(r, floor)})."
    return end_sentence(head + f", {r.get('verdict_text', v)}")


#: Verdicts that are never a Finding: a per-run metric from too few seeds or without a spread.
UNJUDGED = (verdicts.VERDICT_TOO_FEW, verdicts.VERDICT_NO_SPREAD)


def _rank_key(r: dict) -> tuple:
    # clean test accuracy first, whatever its verdict (the headline every reader asks for, and what
    # the caption promises); then changed ones by effect (change / noise floor)
    changed = r["verdict"] in verdicts.CHANGED_VERDICTS
    effect = r["effect"] if r["effect"] is not None else (math.inf if changed else 0.0)
    return (r["name"] != "test_accuracy", not changed, -effect)


class FindingsSection(Section):
    id = "findings"
    title = "Findings"
    depends = ("changes",)
    terminal_heading = "Findings:"

    def finish(self, report, ctx):
        """Test accuracy first, then the headline metrics' changes beyond noise by effect, the
        largest of each section only (at most 7); when fewer than 3, the largest of the rest, said
        to be indistinguishable. Per-run metrics from too few seeds are never a Finding. Details
        (one corruption at one severity, one OOD score of three) stay in the table."""
        items = []
        for g in report.groups:
            for comp in g.parts.get("changes") or []:
                items += [(r, comp, g.label) for r in comp["metrics"]
                          if r.get("headline") and r["verdict"] not in UNJUDGED]
        items.sort(key=lambda t: _rank_key(t[0]))
        # one finding per section and comparison (its largest), so that seven sentences tell seven things
        seen: set[tuple] = set()
        items = [t for t in items if not ((key := (t[0].get("section"), t[1]["variant"], t[2])) in seen or seen.add(key))]
        first = [t for t in items if t[0]["name"] == "test_accuracy"]
        others = [t for t in items if t[0]["name"] != "test_accuracy"]
        changed = [t for t in others if t[0]["verdict"] in verdicts.CHANGED_VERDICTS]
        rest = [t for t in others if t[0]["verdict"] not in verdicts.CHANGED_VERDICTS]
        chosen = (first + changed)[:MAX_FINDINGS]
        chosen += rest[:max(0, MIN_FINDINGS - len(chosen))]
        out = []
        for r, comp, group in chosen:
            out.append({"sentence": sentence(comp, r, group), "section": r.get("section", "changes"),
                        "metric": r["name"], "verdict": r["verdict"]})
            extra = confounding_sentence(comp, r, group)
            if extra:  # right after the robustness finding it qualifies
                out.append({"sentence": extra, "section": r.get("section", "changes"),
                            "metric": comp["confounded"]["relative"][r["name"]], "verdict": None})
        if len(out) > MAX_FINDINGS and out[MAX_FINDINGS]["verdict"] is None:
            return out[:MAX_FINDINGS - 1]  # a finding goes with its qualifier, or not at all
        return out[:MAX_FINDINGS]

    def terminal_lines(self, report):
        return [f"  {i}. {f['sentence']}" for i, f in enumerate(report.parts.get(self.id) or [], 1)]

    def summary_fields(self, report):
        return {"findings": [f["sentence"] for f in report.parts.get(self.id) or []]}

    def html(self, report, figs):
        found = report.parts.get(self.id) or []
        if not found:
            return empty("No findings yet: they need finished runs of a variant next to finished runs of its "
                         "baseline.")
        titles = {s.id: s.title for s in _sections()}
        items = "".join(f'<li>{esc(f["sentence"])} <a href="#{esc(f["section"])}">{esc(titles.get(f["section"], ""))}'
                        f" →</a></li>" for f in found)
        return (f'<ol class="findings">{items}</ol>'
                '<p class="meta">Test accuracy first, then the headline metrics that changed, by effect (change / '
                'the baseline\'s seed-to-seed spread), the largest of each section; a metric measured once per run '
                'is not judged from fewer than 3 baseline seeds. Every metric is in '
                '<a href="#changes">What the modification changed</a>.</p>')


def _sections():
    from . import SECTIONS  # the registry (imported here: it imports this module)

    return SECTIONS


SECTION = FindingsSection()
