"""High-confidence failures: counts per run, across thresholds, confidence histograms, and the most
confident failures of each variant's first seed. Its per-run columns also make failures.json (every
failure of every run), written one run at a time."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from ...atomic import json_text
from ...analysis import failures, metrics
from ...layout import REPORT_FAILURES
from ..markup import count_mean, esc, figure, figure_key, num, para, table
from ..model import jsonable, slug
from .base import FigureSpec, Section, cell_parts

HIST_BINS = 20
FAILURES_FILE = REPORT_FAILURES
_RUNS_SLOT = "\x00runs\x00"  # stands in for the runs list in the skeleton of failures.json


@dataclass
class RunFailures:
    failures: failures.FailureColumns  # sorted by confidence, descending
    threshold_counts: np.ndarray  # (T,) at metrics.DEFAULT_THRESHOLDS
    conf_hist: dict[str, np.ndarray]  # edges, right_counts, wrong_counts

    @property
    def high_conf(self) -> int:
        return len(self.failures)


@dataclass
class CellFailures:
    high_conf: list[int]  # per run, by seed
    threshold_counts: np.ndarray  # (T,) mean over seeds
    conf_hist: dict[str, np.ndarray]  # summed over seeds
    top_failures: list[dict[str, Any]] = field(default_factory=list)  # first seed, by confidence (+ "image")
    top_failures_seed: int | None = None


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean([float(v) for v in values])) if values else None


class FailuresSection(Section):
    id = "failures"
    title = "High-confidence failures"
    run_keys = ("high_conf_failures",)
    csv_columns = run_keys
    headline_columns = ("high-conf failures",)

    def reduce(self, res, run):
        cols = failures.failure_columns(run.logits, run.labels, run.index, run.threshold, run.names, probs=run.probs)
        return RunFailures(failures=cols, threshold_counts=metrics.threshold_counts(run.logits, run.labels),
                           conf_hist=metrics.confidence_histograms(run.logits, run.labels, HIST_BINS))

    def aggregate(self, cell, parts, ctx):
        out = CellFailures(
            high_conf=[p.high_conf for p in parts],
            threshold_counts=np.mean([p.threshold_counts for p in parts], axis=0),
            conf_hist={"edges": parts[0].conf_hist["edges"],
                       "right_counts": np.sum([p.conf_hist["right_counts"] for p in parts], axis=0),
                       "wrong_counts": np.sum([p.conf_hist["wrong_counts"] for p in parts], axis=0)})
        out.top_failures_seed = cell.seeds[0]
        for rec in parts[0].failures.records(ctx.top_k):
            out.top_failures.append({**rec, "image": ctx.image(rec["test_index"])})
        return out

    def run_fields(self, run, part):
        return {"high_conf_failures": part.high_conf}

    def variant_fields(self, cell, agg):
        return {"high_conf_failures_mean": _mean_or_none(agg.high_conf) if agg else None}

    def headline(self, cell, agg):
        return (count_mean(_mean_or_none(agg.high_conf) if agg else None),)

    def extra_files(self, report, runs):
        return {FAILURES_FILE: lambda: (piece.encode("utf-8")
                                        for piece in iter_failures_json(report.sweep, report.threshold, runs))}

    def figures(self, report):
        cells = report.cells

        def thresholds():
            from .. import figures as F

            return F.thresholds([(c, a.threshold_counts) for c, a in cell_parts(cells, self.id)],
                                report.thresholds, report.threshold)

        def hist():
            from .. import figures as F

            return F.confidence_hist([(c, a.conf_hist) for c, a in cell_parts(cells, self.id)])

        specs = [FigureSpec("thresholds", thresholds,
                            "Number of wrong predictions with confidence above each threshold (mean over seeds); "
                            "dotted line: the report's threshold."),
                 FigureSpec("confidence_hist", hist,
                            "Confidence of right and wrong predictions (pooled over seeds, each group normalised "
                            "to 1).")]
        for cell in cells:
            agg = cell.parts.get(self.id)

            def top(cell=cell, agg=agg):
                from .. import figures as F

                return F.top_failures(cell, agg.top_failures, agg.top_failures_seed) if agg else None

            seed = agg.top_failures_seed if agg else None
            specs.append(FigureSpec(f"top_failures_{slug(cell.label)}", top,
                                    f"{cell.label}: most confident failures of seed {seed}."))
        return specs

    def html(self, report, figs):
        out = [para(f"A high-confidence failure is a wrong prediction whose top softmax probability exceeds "
                    f"{report.threshold:g}. failures.json lists every one of every run.")]
        rows = []
        for c in report.cells:
            hc = c.parts[self.id].high_conf if c.parts.get(self.id) else []
            rows.append([c.label, c.n_runs, ", ".join(str(h) for h in hc) or "-",
                         count_mean(sum(hc) / len(hc)) if hc else "n/a"])
        out.append(table(("variant", "n", f"failures > {report.threshold:g} per run", "mean"), rows, numeric=(1, 3)))
        out.append(figure(figs, "thresholds"))
        out.append(figure(figs, "confidence_hist"))
        for cell in report.cells:
            fig = figure(figs, f"top_failures_{figure_key(cell.label)}")
            agg = cell.parts.get(self.id)
            if fig:
                out.append(fig)
            elif agg and agg.top_failures:
                out.append(f"<h3>{esc(cell.label)}: most confident failures (seed {esc(agg.top_failures_seed)})</h3>")
                out.append(table(("test index", "true", "predicted", "confidence"),
                                 ([t["test_index"], t["true_name"], t["pred_name"], num(t["confidence"])]
                                  for t in agg.top_failures), numeric=(0, 3)))
        return "".join(out)


def _failures_run(run, part: RunFailures) -> dict[str, Any]:
    """One run's entry of failures.json (its dicts exist only while it is written)."""
    fails = part.failures
    return jsonable({"run_id": run.run_id, "variant": run.variant, "seed": run.seed, "group": run.group,
                     "count": len(fails), "failures": fails.records()})


def iter_failures_json(sweep: str, threshold: float, runs) -> Iterator[str]:
    """The text of failures.json in pieces, one run at a time (``runs``: base.RunRecord, grid order).

    Byte for byte what ``atomic.atomic_write_json`` writes for the whole document (sorted keys,
    indent 2, trailing newline): the skeleton is dumped with a placeholder for the runs list, and
    each run is dumped alone and indented to its depth (JSON strings hold no raw newline, so
    indenting every line is safe).
    """
    head, tail = json_text(jsonable({"sweep": sweep, "confidence_threshold": threshold,
                                           "runs": _RUNS_SLOT})).split(json.dumps(_RUNS_SLOT))
    yield head
    first = True
    for run in runs:
        if run.parts is None or FailuresSection.id not in run.parts:
            continue
        yield ("[\n    " if first else ",\n    ") + json_text(
            _failures_run(run, run.parts[FailuresSection.id])).replace("\n", "\n    ")
        first = False
    yield ("[]" if first else "\n  ]") + tail + "\n"


SECTION = FailuresSection()
