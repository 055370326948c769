"""Findings: the page opens with 3-7 plain sentences, ranked by effect, each with its number, its
interval and its verdict against the noise floor, and a link to the section it comes from. Built
from "What the modification changed" (``changes``); the terminal prints the same sentences."""

from __future__ import annotations

import math

from ...analysis import verdicts
from ..markup import empty, esc
from .base import Section

MIN_FINDINGS, MAX_FINDINGS = 3, 7
FAR = 3.0  # a change this many noise floors away is "far beyond reseeding noise"


def _number(r: dict, x: float, signed: bool = False) -> str:
    if r["points"]:
        value = 100.0 * x
        return f"{value:+.1f}" if signed else f"{abs(value):.1f}"
    return f"{x:+.3g}" if signed else f"{abs(x):.3g}"


def sentence(comp: dict, r: dict, group: str = "") -> str:
    """'huejitter raised test accuracy by 31.0 points (95% CI +27.0 to +35.0), far beyond reseeding
    noise (±4.0).'"""
    lo, hi = r["ci95"]
    unit = " points" if r["points"] else ""
    verb = "raised" if r["delta"] > 0 else "lowered" if r["delta"] < 0 else "left"
    head = (f"{comp['variant']}{f' [{group}]' if group else ''} {verb} {r['label']} by {_number(r, r['delta'])}{unit} "
            f"(95% CI {_number(r, lo, True)} to {_number(r, hi, True)})")
    if r["delta"] == 0:
        head = f"{comp['variant']}{f' [{group}]' if group else ''} left {r['label']} unchanged"
    floor = r["noise_floor"]
    if floor is None:
        return head + ", with one baseline seed: no noise floor to judge it by."
    floor_text = f"±{_number(r, floor)}"
    if r["verdict"] == verdicts.VERDICT_CHANGED:
        far = r["effect"] is None or r["effect"] >= FAR
        return head + f", {'far ' if far else ''}beyond reseeding noise ({floor_text})."
    return head + f", not distinguishable from reseeding ({floor_text})."


def _rank_key(r: dict) -> tuple:
    # changed ones first; among them clean test accuracy (the headline every reader asks for), then
    # by effect (change / noise floor)
    changed = r["verdict"] == verdicts.VERDICT_CHANGED
    effect = r["effect"] if r["effect"] is not None else (math.inf if changed else 0.0)
    return (not changed, r["name"] != "test_accuracy", -effect)


class FindingsSection(Section):
    id = "findings"
    title = "Findings"
    depends = ("changes",)
    terminal_heading = "Findings:"

    def finish(self, report, ctx):
        """The headline metrics' changes beyond reseeding noise, test accuracy first, then by effect,
        the largest of each section only (at most 7); when fewer than 3, the largest of the rest,
        said to be indistinguishable from reseeding. Details (one corruption at one severity, one
        OOD score of three) stay in the table."""
        items = []
        for g in report.groups:
            for comp in g.parts.get("changes") or []:
                items += [(r, comp, g.label) for r in comp["metrics"] if r.get("headline")]
        items.sort(key=lambda t: _rank_key(t[0]))
        # one finding per section and comparison (its largest), so that seven sentences tell seven things
        seen: set[tuple] = set()
        items = [t for t in items if not ((key := (t[0].get("section"), t[1]["variant"], t[2])) in seen or seen.add(key))]
        changed = [t for t in items if t[0]["verdict"] == verdicts.VERDICT_CHANGED][:MAX_FINDINGS]
        rest = [t for t in items if t[0]["verdict"] != verdicts.VERDICT_CHANGED]
        chosen = changed + rest[:max(0, MIN_FINDINGS - len(changed))]
        return [{"sentence": sentence(comp, r, group), "section": r.get("section", "changes"), "metric": r["name"],
                 "verdict": r["verdict"]} for r, comp, group in chosen]

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
                '<p class="meta">Test accuracy first, then by effect (change / the baseline\'s seed-to-seed spread), '
                'the largest of each section; every metric is in '
                '<a href="#changes">What the modification changed</a>.</p>')


def _sections():
    from . import SECTIONS  # the registry (imported here: it imports this module)

    return SECTIONS


SECTION = FindingsSection()
