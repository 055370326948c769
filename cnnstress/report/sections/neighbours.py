"""Nearest training neighbours: for each canonical case, the stored training images closest to it in
the first baseline seed's penultimate feature space (cosine similarity)."""

from __future__ import annotations

import numpy as np

from ... import data
from ..markup import empty, figure, group_suffix, group_title, para, table
from ..model import Neighbour
from .base import FigureSpec, Section
from .canonical import CanonicalSection, cases_of, read_rows

N_NEIGHBOURS = 5


def nearest(res, positions: np.ndarray) -> list[list[tuple[int, int, float]]] | None:
    """The N_NEIGHBOURS training images most cosine-similar to each picked test image."""
    if positions.size == 0 or not res.has("train_subset/embedding"):
        return None
    train = res.read("train_subset/embedding").astype(np.float64)
    tidx = res.read("train_subset/index").astype(np.int64)
    tlab = res.read("train_subset/label").astype(np.int64)
    query = read_rows(res, "test/embedding", positions).astype(np.float64)
    train /= np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    query /= np.maximum(np.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    sims = query @ train.T
    out = []
    for row in sims:
        top = np.argsort(-row, kind="stable")[:N_NEIGHBOURS]
        out.append([(int(tidx[j]), int(tlab[j]), float(row[j])) for j in top])
    return out


def train_images(spec, wanted: set[int]) -> tuple[dict[int, np.ndarray], str]:
    """Official training images by index; empty with a note when unavailable."""
    if not wanted:
        return {}, ""
    try:
        splits = data.load_splits(spec.dataset.name, spec.paths.data_root, val_fraction=spec.train.val_fraction,
                                  split_seed=spec.train.split_seed, options=spec.dataset.params)
    except Exception as exc:  # noqa: BLE001 - the neighbours are still listed, without images
        return {}, f"training images unavailable ({type(exc).__name__}: {exc})"
    out = {}
    for part in (splits.train, splits.val):
        where = {int(i): p for p, i in enumerate(part.index)}
        for idx in wanted:
            if idx in where:
                out[idx] = np.ascontiguousarray(part.x[where[idx]].transpose(1, 2, 0))
    return out, ""


class NeighboursSection(Section):
    id = "neighbours"
    title = "Nearest training neighbours"
    depends = ("canonical",)

    def reduce(self, res, run):
        picked = run.picked.get(CanonicalSection.id)  # the canonical cases' read plan
        return nearest(res, picked.positions) if picked is not None and picked.neighbours else None

    def compare(self, group, ctx):
        """Attach each canonical case's neighbours (images come in ``finish``)."""
        base = group.cells[0]
        if not base.runs:
            return None
        first = base.runs[0]
        rows = first.parts.get(self.id)
        if rows is None:
            return None
        cams = first.parts.get(CanonicalSection.id)  # the positions the read plan picked for this run
        positions = cams.positions if cams is not None else np.zeros(0, np.int64)
        picked = positions.tolist()
        for case in cases_of(group):
            if case.position in set(picked):
                row = int(np.flatnonzero(positions == case.position)[0])
                case.neighbours = [Neighbour(train_index=tidx, label_name=ctx.names[tlab] if tlab < len(ctx.names)
                                             else str(tlab), similarity=sim, image=None)
                                   for tidx, tlab, sim in rows[row]]
        return None

    def finish(self, report, ctx):
        """Load the neighbours' training images once for the whole report (a note when unavailable)."""
        wanted: set[int] = set()
        for g in report.groups:
            runs = g.cells[0].runs if g.cells else []
            if runs and runs[0].parts.get(self.id):
                wanted.update(t for row in runs[0].parts[self.id] for t, _, _ in row)
        images, note = train_images(ctx.spec0, wanted) if ctx.has_images else ({}, "")
        if note:
            ctx.notes.append(note)
        for g in report.groups:
            for case in cases_of(g):
                for n in case.neighbours:
                    n.image = images.get(n.train_index)
        return None

    def figures(self, report):
        specs = []
        for gi, group in enumerate(report.groups):
            def draw(group=group):
                from .. import figures as F

                return F.neighbours(cases_of(group))

            specs.append(FigureSpec(f"neighbours{group_suffix(report, gi)}", draw,
                                    "Canonical failures beside their nearest training images (baseline feature space)."))
        return specs

    def html(self, report, figs):
        out = [para("For each canonical failure, the training images closest to it in the baseline's penultimate "
                    "feature space (cosine similarity, first baseline seed, among the stored training subset).")]
        found = False
        for gi, group in enumerate(report.groups):
            cases = [c for c in cases_of(group) if c.neighbours]
            if not cases:
                continue
            found = True
            out.append(group_title(group, report))
            fig = figure(figs, f"neighbours{group_suffix(report, gi)}")
            if fig:
                out.append(fig)
            else:
                out.append(table(("test index", "true", "neighbours (train index, class, similarity)"),
                                 ([c.test_index, c.true_name,
                                   "; ".join(f"#{n.train_index} {n.label_name} {n.similarity:.2f}"
                                             for n in c.neighbours)]
                                  for c in cases), numeric=(0,)))
        if not found:
            out.append(empty("Not available: needs canonical cases and train_subset embeddings "
                             "([stress].train_embedding_samples > 0)."))
        return "".join(out)


SECTION = NeighboursSection()
