"""Report sections are plugins: a new section is one module plus one registry line, and a section
whose arrays a run lacks says so on the page instead of failing."""

from __future__ import annotations

import io
import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import synth
from cnnstress import gather
from cnnstress.analysis import metrics
from cnnstress.report import html as report_html
from cnnstress.report import sections
from cnnstress.report.markup import empty, figure, num, para, table
from cnnstress.report.sections import SECTIONS, FigureSpec, Section

REPO = Path(__file__).resolve().parents[1]


# ---- a tiny extra section: what a new stress test's author writes (one module's worth) ------------


class WorstClassSection(Section):
    """The worst class's test accuracy per run, its mean over seeds, one figure and one table."""

    id = "worst-class"
    title = "Worst class"
    requires = ("test/logits",)
    run_keys = ("worst_class_accuracy",)

    def reduce(self, res, run):
        return float(np.nanmin(metrics.per_class_accuracy(run.labels, run.preds, run.num_classes)))

    def aggregate(self, cell, parts, ctx):
        return {"per_run": parts, "mean": float(np.mean(parts))}

    def run_fields(self, run, part):
        return {"worst_class_accuracy": part}

    def variant_fields(self, cell, agg):
        return {"worst_class_accuracy_mean": agg["mean"] if agg else None}

    def figures(self, report):
        def draw():
            from cnnstress.report.figures import _figure  # matplotlib only when drawn

            fig = _figure(4.0, 3.0)
            ax = fig.subplots()
            cells = [c for c in report.cells if c.parts.get(self.id)]
            ax.bar(range(len(cells)), [c.parts[self.id]["mean"] for c in cells])
            return fig

        return [FigureSpec("worst_class", draw, "Worst-class accuracy, mean over seeds.")]

    def html(self, report, figs):
        rows = [[c.label, num(c.parts[self.id]["mean"])] for c in report.cells if c.parts.get(self.id)]
        if not rows:
            return empty("No finished runs.")
        return para("The lowest per-class accuracy.") + table(("variant", "worst class"), rows) + figure(figs, "worst_class")


class AdversarialSection(Section):
    """Needs arrays the synthetic runs do not have (like an older results.h5 without /adversarial)."""

    id = "adversarial"
    title = "Adversarial robustness"
    requires = ("adversarial/positions",)
    run_keys = ("adversarial_accuracy",)

    def reduce(self, res, run):  # never called here: every run lacks the arrays
        raise AssertionError("reduce must not be called for a run that lacks the required arrays")

    def html(self, report, figs):
        raise AssertionError("html must not be called when no run has the arrays")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return synth.make_sweep(tmp_path_factory.mktemp("sections") / "s w", n_test=120, seeds=(1, 2),
                            corruptions=("contrast",), severities=(1,))


def _gather(s, *, figures: bool) -> tuple[Path, dict, str]:
    index = gather.gather(s.sweep_dir, console=Console(file=io.StringIO(), width=200), figures=figures)
    return index, json.loads((index.parent / "summary.json").read_text()), index.read_text(encoding="utf-8")


def _strip(summary: dict, run_keys: set[str], variant_keys: set[str]) -> dict:
    out = json.loads(json.dumps(summary))
    for r in out["runs"]:
        for k in run_keys:
            r.pop(k, None)
    for v in out["variants"].values():
        for k in variant_keys:
            v.pop(k, None)
    return out


def test_new_section_is_one_module_and_one_registry_line(sweep) -> None:
    _, before, page_before = _gather(sweep, figures=False)
    csv_before = (sweep.sweep_dir / "report" / "runs.csv").read_text()
    fails_before = (sweep.sweep_dir / "report" / "failures.json").read_text()
    # the one registry line (here inserted before "files" at run time; in the package, one line in
    # sections/__init__.py)
    SECTIONS.insert(len(SECTIONS) - 1, WorstClassSection())
    try:
        index, after, page = _gather(sweep, figures=True)
    finally:
        SECTIONS.pop(len(SECTIONS) - 2)
    # the page: a TOC entry, the section with its table and figure
    assert '<a href="#worst-class">Worst class</a>' in page
    body = page.split('<section id="worst-class">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Worst class</h2>" in body and "The lowest per-class accuracy." in body
    assert (index.parent / "figures" / "worst_class.png").is_file()
    assert 'id="fig-worst_class"' in body
    # summary.json: the new fields, computed from the arrays ...
    for run in sweep.runs:
        row = next(r for r in after["runs"] if r["run_id"] == run.run_id)
        pred = np.argmax(run.arrays["test/logits"], axis=1)
        y = run.arrays["test/label"]
        want = min(float(np.mean(pred[y == c] == c)) for c in np.unique(y))
        assert row["worst_class_accuracy"] == pytest.approx(want, abs=1e-12)
    for v in after["variants"].values():
        assert v["worst_class_accuracy_mean"] is not None
    # ... and everything else unchanged: extend, never break
    strip = lambda s: _strip(s, {"worst_class_accuracy"}, {"worst_class_accuracy_mean"})  # noqa: E731
    assert strip(after) == strip(before)
    assert (sweep.sweep_dir / "report" / "runs.csv").read_text() == csv_before
    assert (sweep.sweep_dir / "report" / "failures.json").read_text() == fails_before
    assert [sid for sid, _ in report_html.SECTIONS] == [s.id for s in SECTIONS]  # registry restored
    assert "worst-class" not in page_before


def test_section_whose_arrays_runs_lack_says_so(sweep) -> None:
    SECTIONS.insert(len(SECTIONS) - 1, AdversarialSection())
    try:
        index, summary, page = _gather(sweep, figures=False)
    finally:
        SECTIONS.pop(len(SECTIONS) - 2)
    body = page.split('<section id="adversarial">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Adversarial robustness</h2>" in body
    assert f"Not available for {len(sweep.runs)} of {len(sweep.runs)} finished runs" in body
    assert "adversarial/positions" in body
    for run in sweep.runs:
        assert run.run_id in body
    assert all(r["status"] == "done" for r in summary["runs"]), "lacking arrays is not a broken run"
    assert all(r["adversarial_accuracy"] is None for r in summary["runs"])


def test_every_section_module_is_registered_once() -> None:
    modules = {m.name for m in pkgutil.iter_modules(sections.__path__)} - {"base"}
    registered = {type(s).__module__.rsplit(".", 1)[1] for s in SECTIONS}
    assert registered == modules == set(sections.MODULES)
    ids = [s.id for s in SECTIONS]
    assert len(ids) == len(set(ids)) and all(s.title for s in SECTIONS)
    assert [sid for sid, _ in report_html.SECTIONS] == ids
    for s in SECTIONS:  # every section renders its own body
        assert type(s).html is not Section.html, s.id


def test_sections_load_no_matplotlib_and_no_torch() -> None:
    code = ("import sys, cnnstress.gather, cnnstress.report.sections, cnnstress.report.html\n"
            "print(sorted(m for m in ('matplotlib', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
