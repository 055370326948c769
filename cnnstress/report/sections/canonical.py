"""Canonical failure cases and Grad-CAM: test images that are high-confidence failures in most
baseline seeds, with Grad-CAM for the predicted and the true class of the baseline and each variant.

Which positions are canonical is decided by this section's read plan: each results.h5 is opened
once, so the baseline's first seed is read last among the baseline seeds, with every other seed's
logits at hand, and its Grad-CAM rows of the chosen positions are read while it is open; then the
first seed of each variant (its first readable one) gets the same positions. ``run.picked[id]``
is a ``Picked`` for those runs and absent for the others. Memory: one group's baseline logits
(S x N x C float32) are kept until the cases are chosen.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ...analysis import failures, gradcam
from ..markup import empty, figure, figure_key, gradcam_note, group_suffix, group_title, para, table
from ..model import Case, CaseView
from ..model import slug
from .base import FigureSpec, ReadRequest, Section


def read_rows(res, key: str, positions: np.ndarray) -> np.ndarray:
    """Rows ``positions`` of a dataset, one slice each (a few rows; never the whole array)."""
    if positions.size == 0:
        return np.zeros((0, *res.shape(key)[1:]), dtype=np.float32)
    return np.stack([res.read(key, rows=slice(int(p), int(p) + 1))[0] for p in positions])


@dataclass
class RunCams:
    positions: np.ndarray  # (k,) int64
    pred: np.ndarray  # (k, S, S) float32 Grad-CAM for the predicted class, upsampled to the image side S
    true: np.ndarray  # (k, S, S) float32 for the true class


@dataclass(frozen=True)
class Picked:
    """What the read plan takes from one run: the canonical positions, and whether the nearest
    training neighbours of those images are looked up (the baseline's first seed only)."""

    positions: np.ndarray  # (k,) int64
    neighbours: bool = False


@dataclass
class GroupCases:
    cases: list[Case]
    note: str = ""  # why there are no (or fewer) cases, when so
    views: dict[str, list[CaseView | None]] = field(default_factory=dict)  # variant -> its view of each case


def cases_of(group) -> list[Case]:
    """The canonical cases of a group ([] when there are none)."""
    part = group.parts.get(CanonicalSection.id)
    return part.cases if part else []


def case_view(cell, pos: int, names: list[str]) -> CaseView | None:
    """How the cell's first seed (and every seed, for right_seeds) saw one canonical case."""
    if not cell.runs:
        return None
    first = cell.runs[0]
    cam_pred = cam_true = None
    cams = first.parts.get(CanonicalSection.id)
    if cams is not None:
        hit = np.flatnonzero(cams.positions == pos)
        if hit.size:
            cam_pred, cam_true = cams.pred[hit[0]], cams.true[hit[0]]
    pred = int(first.preds[pos])
    return CaseView(seed=cell.seeds[0], pred_name=names[pred], confidence=float(first.conf[pos]), cam_pred=cam_pred,
                    cam_true=cam_true, right_seeds=int(sum(bool(r.correct[pos]) for r in cell.runs)),
                    n_seeds=len(cell.runs))


class CanonicalSection(Section):
    id = "canonical"
    title = "Canonical failure cases and Grad-CAM"
    depends = ("comparison",)

    def read_plan(self, runs, grid):
        """Baseline seeds 2.. (logits kept), then seed 1 (cases chosen from every seed's logits), then
        each variant's seeds, the first readable one with the cases' positions; returns the group's
        {"positions", "note"}."""
        thr, k = float(grid.report["confidence_threshold"]), int(grid.report["canonical_cases"])
        base = sorted((r for r in runs if r.is_baseline), key=lambda r: r.seed)
        base_logits: list[np.ndarray] = []
        labels = None
        for r in base[1:]:
            got = yield ReadRequest(r, keep_logits=True)
            if got.read:
                base_logits.append(got.logits)
            labels = got.labels
        positions, note = np.zeros(0, np.int64), ""
        if base:
            def pick(run) -> Picked:
                stack = np.stack(base_logits + [np.asarray(run.logits, dtype=np.float32)])
                return Picked(np.asarray(failures.canonical_failures(stack, run.labels, thr, k=k), dtype=np.int64),
                              neighbours=True)

            got = yield ReadRequest(base[0], pick=pick)
            if got.read:
                positions = got.picked.positions
            elif base_logits:
                positions = np.asarray(failures.canonical_failures(np.stack(base_logits), labels, thr, k=k),
                                       dtype=np.int64)
                note = (f"the baseline's first seed ({base[0].seed}) is broken: its Grad-CAM maps and neighbours "
                        "are not shown")
        del base_logits
        for variant in grid.variants:
            if variant == grid.baseline:
                continue
            have_cams = False
            for r in sorted((r for r in runs if r.variant == variant), key=lambda r: r.seed):
                given = not have_cams and positions.size
                got = yield ReadRequest(r, pick=(lambda _run, p=positions: Picked(p)) if given else None)
                have_cams = have_cams or (got.read and given)
        return {"positions": positions, "note": note}

    def reduce(self, res, run):
        picked = run.picked.get(self.id)
        if picked is None or not picked.positions.size:
            return None
        pos = picked.positions
        return RunCams(positions=pos,
                       pred=gradcam.upsample_bilinear(read_rows(res, "test/gradcam/pred", pos), run.image_size),
                       true=gradcam.upsample_bilinear(read_rows(res, "test/gradcam/true", pos), run.image_size))

    def compare(self, group, ctx):
        planned = ctx.planned.get(group.label) or {}
        positions = planned.get("positions", np.zeros(0, np.int64))
        base = group.cells[0]
        cases = []
        for pos in (int(p) for p in positions):
            fails = [(not r.correct[pos]) and float(r.conf[pos]) > ctx.threshold for r in base.runs]
            cases.append(Case(position=pos, test_index=int(ctx.ref_index[pos]),
                              true_name=ctx.names[int(ctx.ref_labels[pos])], image=ctx.image(int(ctx.ref_index[pos])),
                              fail_fraction=float(np.mean(fails)) if fails else 0.0,
                              baseline=case_view(base, pos, ctx.names)))
        note = planned.get("note", "")
        if not base.runs:
            note = "no finished baseline run: canonical cases need the baseline"
        elif not positions.size:
            note = (f"no image is a high-confidence failure (> {ctx.threshold:g}) in more than half of the "
                    "baseline seeds")
        out = GroupCases(cases=cases, note=note)
        if base.runs:
            for cell in group.cells[1:]:
                if cell.runs:
                    out.views[cell.variant] = [case_view(cell, int(p), ctx.names) for p in positions]
        return out

    def summary_fields(self, report):
        cases = []
        for g in report.groups:
            part = g.parts.get(self.id)
            for j, case in enumerate(part.cases if part else []):
                views = {c.variant: part.views.get(c.variant, [])[j] for c in g.comparisons}
                cases.append({"group": g.label, "position": case.position, "test_index": case.test_index,
                              "true": case.true_name, "fail_fraction": case.fail_fraction,
                              "baseline_pred": case.baseline.pred_name if case.baseline else None,
                              "baseline_right_seeds": case.baseline.right_seeds if case.baseline else None,
                              # nearest training images in the first baseline seed's embedding space
                              "neighbours": [{"train_index": n.train_index, "label": n.label_name,
                                              "similarity": n.similarity} for n in case.neighbours],
                              "variants": {v: ({"pred": view.pred_name, "right_seeds": view.right_seeds,
                                                "n_seeds": view.n_seeds} if view else None)
                                           for v, view in views.items()}})
        return {"canonical_cases": cases}

    def figures(self, report):
        specs = []
        for gi, group in enumerate(report.groups):
            part = group.parts.get(self.id)
            cases = part.cases if part else []
            layer = group.cells[0].gradcam_text if group.cells else ""
            if not group.comparisons:
                def draw(cases=cases, layer=layer):
                    from .. import figures as F

                    return F.canonical(cases, None, [], layer)

                specs.append(FigureSpec(f"canonical{group_suffix(report, gi)}", draw,
                                        "Canonical failures with the baseline's Grad-CAM."))
            for comp in group.comparisons:
                views = part.views.get(comp.variant, []) if part else []

                def draw(cases=cases, comp=comp, views=views, layer=layer):
                    from .. import figures as F

                    return F.canonical(cases, comp, views, layer)

                specs.append(FigureSpec(f"canonical_{slug(comp.label)}", draw,
                                        f"Canonical failures: Grad-CAM of {comp.baseline} and {comp.variant} side "
                                        "by side."))
        return specs

    def html(self, report, figs):
        out = [para("Canonical cases are chosen automatically: test images that are high-confidence failures in "
                    "more than half of the baseline seeds (2 of 2, 2 of 3, 3 of 4), ranked by that share and then by "
                    "confidence. Grad-CAM is "
                    "shown for the predicted and the true class, for the first seed of the baseline and of each "
                    "variant; 'right in k/S' counts the seeds that classify the image correctly."),
               gradcam_note(report)]
        for gi, group in enumerate(report.groups):
            part = group.parts.get(self.id)
            out.append(group_title(group, report))
            if part and part.note:
                out.append(para(part.note, "note"))
            if not part or not part.cases:
                out.append(empty("No canonical case."))
                continue
            heads = ["test index", "true", "baseline predicts", "baseline fails in"]
            heads += [f"{c.variant}: right in" for c in group.comparisons]
            rows = []
            for j, case in enumerate(part.cases):
                b = case.baseline
                row = [case.test_index, case.true_name, f"{b.pred_name} ({b.confidence:.2f})" if b else "n/a",
                       f"{100 * case.fail_fraction:.0f}% of seeds"]
                for comp in group.comparisons:
                    views = part.views.get(comp.variant, [])
                    v = views[j] if j < len(views) else None
                    row.append("no run" if v is None else
                               f"{v.right_seeds}/{v.n_seeds}" + (" (fixed)" if v.right_seeds == v.n_seeds else ""))
                rows.append(row)
            out.append(table(heads, rows, numeric=(0,)))
            if group.comparisons:
                for comp in group.comparisons:
                    out.append(figure(figs, f"canonical_{figure_key(comp.label)}"))
            else:
                out.append(figure(figs, f"canonical{group_suffix(report, gi)}"))
        return "".join(out)


SECTION = CanonicalSection()
