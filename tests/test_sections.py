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
from cnnstress import gather, store
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


class LackingSection(Section):
    """Needs arrays the synthetic runs do not have (like an older results.h5 without /adversarial)."""

    id = "lacking"
    title = "Needs adversarial arrays"
    requires = ("adversarial/positions",)
    run_keys = ("lacking_accuracy",)

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
    SECTIONS.insert(len(SECTIONS) - 1, LackingSection())
    try:
        index, summary, page = _gather(sweep, figures=False)
    finally:
        SECTIONS.pop(len(SECTIONS) - 2)
    body = page.split('<section id="lacking">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Needs adversarial arrays</h2>" in body
    assert f"Not available for {len(sweep.runs)} of {len(sweep.runs)} finished runs" in body
    assert "adversarial/positions" in body
    for run in sweep.runs:
        assert run.run_id in body
    assert all(r["status"] == "done" for r in summary["runs"]), "lacking arrays is not a broken run"
    assert all(r["lacking_accuracy"] is None for r in summary["runs"])


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


# ---- what a section declares: depends, runs.csv and terminal columns, extra files ----------------


def _toy(sid: str, depends: tuple[str, ...] = ()) -> Section:
    return type(f"Toy{sid}", (Section,), {"id": sid, "title": sid, "depends": depends,
                                          "html": lambda self, report, figs: ""})()


def test_dependency_order_keeps_the_given_order_where_dependencies_allow() -> None:
    a, b, c, d = _toy("a", ("c",)), _toy("b"), _toy("c"), _toy("d", ("a",))
    assert [s.id for s in sections.dependency_order([a, b, c, d])] == ["b", "c", "a", "d"]
    assert [s.id for s in sections.dependency_order([b, c, a, d])] == ["b", "c", "a", "d"]


def test_registry_runs_every_section_after_the_ones_it_depends_on() -> None:
    order = [s.id for s in sections.compute_order()]
    assert sorted(order) == sorted(s.id for s in SECTIONS)
    for s in SECTIONS:
        for dep in s.depends:
            assert order.index(dep) < order.index(s.id), (s.id, dep)
    by_id = {s.id: s for s in SECTIONS}
    assert "changes" in by_id["findings"].depends  # listed first on the page, computed after "changes"
    assert "calibration" in by_id["robustness"].depends
    assert [s.id for s in SECTIONS][0] == "findings"  # the page keeps the registry's order


def test_a_cycle_an_unknown_or_a_duplicate_id_fails_building_the_registry() -> None:
    with pytest.raises(sections.SectionRegistryError, match=r"cycle: a -> c -> a;"):
        sections.dependency_order([_toy("a", ("c",)), _toy("b"), _toy("c", ("a",))])
    with pytest.raises(sections.SectionRegistryError, match=r"cycle: a -> a;"):
        sections.dependency_order([_toy("a", ("a",))])
    with pytest.raises(sections.SectionRegistryError,
                       match=r"'b' depends on 'nope', which is not a registered section \(registered: a, b\)"):
        sections.dependency_order([_toy("a"), _toy("b", ("a", "nope"))])
    with pytest.raises(sections.SectionRegistryError, match=r"share the id 'a'"):
        sections.dependency_order([_toy("a"), _toy("a")])
    with pytest.raises(sections.SectionRegistryError,
                       match=r"report section module cnnstress.report.sections.no_such_section cannot be imported"):
        sections.load("no_such_section")
    planning = {"read_plan": lambda self, runs, grid: iter(())}
    two = [type(f"Plan{i}", (type(_toy(i)),), planning)() for i in ("p", "q")]
    with pytest.raises(sections.SectionRegistryError, match=r"'p', 'q' each define read_plan: only one section"):
        sections.dependency_order(two)
    assert [s.id for s in SECTIONS if type(s).read_plan is not Section.read_plan] == ["canonical"]
    assert sections.planner() is next(s for s in SECTIONS if s.id == "canonical")


class TopLogitSection(Section):
    """A toy section with its own runs.csv column, terminal column and file, and a dependency."""

    id = "top-logit"
    title = "Top logit"
    depends = ("calibration",)
    run_keys = ("top_logit_mean",)
    csv_columns = run_keys
    headline_columns = ("top logit",)

    def reduce(self, res, run):
        assert "calibration" in run.parts  # read after what it depends on
        return float(run.logits.max(axis=1).astype(np.float64).mean())

    def aggregate(self, cell, parts, ctx):
        return float(np.mean(parts))

    def run_fields(self, run, part):
        return {"top_logit_mean": part}

    def headline(self, cell, agg):
        return ("n/a" if agg is None else f"{agg:.4f}",)

    def extra_files(self, report, runs):
        return {"top logit.txt": lambda: (f"{r.run_id} {r.parts[self.id]!r}\n".encode() for r in runs
                                          if r.parts is not None)}

    def html(self, report, figs):
        return para("Mean top logit.")


def test_a_sections_columns_and_files_need_no_change_to_gather(sweep) -> None:
    _gather(sweep, figures=False)
    report = sweep.sweep_dir / "report"
    csv_before = (report / "runs.csv").read_text().splitlines()
    SECTIONS.insert(0, TopLogitSection())  # first on the page: computed after calibration all the same
    try:
        buf = io.StringIO()
        gather.gather(sweep.sweep_dir, console=Console(file=buf, width=300), figures=False)
    finally:
        SECTIONS.pop(0)
    rows = (report / "runs.csv").read_text().splitlines()
    assert rows[0] == csv_before[0].replace(",high_conf_failures", ",top_logit_mean,high_conf_failures")
    want = {r.run_id: float(r.arrays["test/logits"].astype(np.float64).max(axis=1).mean()) for r in sweep.runs}
    for line, before in zip(rows[1:], csv_before[1:]):
        cols = line.split(",")
        assert float(cols[8]) == pytest.approx(want[cols[0]], abs=1e-9)
        assert cols[:8] + cols[9:] == before.split(",")
    text = buf.getvalue()
    header = next(line for line in text.splitlines() if "variant" in line)
    assert header.index("delta vs baseline") < header.index("top logit") < header.index("high-conf failures")
    for variant in sweep.grid.variants:
        runs = [r for r in sweep.runs if r.spec.variant == variant]
        assert f"{np.mean([want[r.run_id] for r in runs]):.4f}" in text
    assert (report / "top logit.txt").read_text().splitlines() == [
        f"{r.run_id} {want[r.run_id]!r}" for r in sweep.runs]


# ---- the stress sections: adversarial, ood (+ selective prediction), sanity ---------------------
#
# A synthetic sweep (synth.make_sweep) whose finished runs are republished with /adversarial, /ood
# and /sanity arrays of known content; every number in summary.json is recomputed here from those
# arrays by the plainest method (argmax counts, pairwise AUROC, loop ranks), not through analysis/.

ADV_M, SAN_S = 40, 10
ADV_LINF = (0, 2, 8)  # plus L2 0.5 without a stored eps 0: the section falls back on the clean test logits
OOD_K = {"uniform_noise": 30, "smooth_noise": 25}
SAN_STEPS = ("trained", "head", "block3", "block2")
T_975_DF1 = 12.706204736174698  # Student t, 97.5% quantile, 1 degree of freedom (two seeds)


def _planted_logits(rng: np.random.Generator, labels: np.ndarray, right: np.ndarray, c: int) -> np.ndarray:
    """(M, C) float32 logits whose argmax is the label exactly where ``right`` (unique maxima)."""
    m = labels.shape[0]
    target = np.where(right, labels, (labels + 1 + rng.integers(0, c - 1, m)) % c)
    x = rng.normal(0.0, 1.0, (m, c))
    x[np.arange(m), target] = x.max(axis=1) + 0.5 + rng.random(m)
    return x.astype(np.float32)


def _planted_counts(variant_index: int, seed_index: int) -> dict[tuple[str, float], int]:
    """How many of the ADV_M attacked images stay right at each (norm, eps) (eps 0: from the test logits)."""
    base = 4 * variant_index + seed_index
    return {("linf", 2): 20 + base, ("linf", 8): 2 + base, ("l2", 0.5): 12 + base}


def _add_new_arrays(s: synth.Synth) -> dict[str, dict]:
    """Republish every finished run of ``s`` with the adversarial, OOD and sanity arrays; returns what was planted per run id."""
    rng = np.random.default_rng(7)
    n = s.labels.shape[0]
    adv_pos = np.sort(rng.permutation(n)[:ADV_M])  # the same sample in every run, as the worker draws it
    san_pos = np.sort(rng.permutation(n)[:SAN_S])
    variants = list(s.grid.variants)
    seeds = sorted({r.spec.seed for r in s.runs})
    planted = {}
    for run in s.runs:
        if run.status != "done":
            continue
        vi, si = variants.index(run.spec.variant), seeds.index(run.spec.seed)
        c = run.spec.num_classes
        r_rng = np.random.default_rng(1000 + 10 * vi + si)
        labels = s.labels[adv_pos]
        new = {"adversarial/positions": adv_pos.astype(np.int32),
               "adversarial/linf/0/logits": run.arrays["test/logits"][adv_pos]}
        for (norm, eps), k in _planted_counts(vi, si).items():
            right = np.zeros(ADV_M, bool)
            right[r_rng.permutation(ADV_M)[:k]] = True
            new[f"adversarial/{norm}/{eps:g}/logits"] = _planted_logits(r_rng, labels, right, c)
        # OOD: uniform_noise scores 1/C exactly (all-zero logits), below every test image's MSP; smooth_noise overlaps
        new["ood/uniform_noise/logits"] = np.zeros((OOD_K["uniform_noise"], c), np.float32)
        new["ood/smooth_noise/logits"] = (r_rng.normal(0.0, 2.0, (OOD_K["smooth_noise"], c))).astype(np.float32)
        # sanity: baseline's maps never change (a method blind to the weights); the other variant's are random
        ref = r_rng.random((SAN_S, synth.MAP_SIZE, synth.MAP_SIZE)).astype(np.float16)
        new["sanity/positions"] = san_pos.astype(np.int32)
        for i, step in enumerate(SAN_STEPS):
            maps = ref if (i == 0 or vi == 0) else r_rng.random(ref.shape).astype(np.float16)
            new[f"sanity/randomization/{i:02d}_{step}/gradcam"] = maps
        arrays = {**run.arrays, **new}
        ood_attr = {name: {"name": name, "kind": "far", "description": f"planted {name}", "count": k}
                    for name, k in OOD_K.items()}
        attrs = {"run_id": run.spec.run_id, "spec": run.spec.to_dict(), "variant": run.spec.variant,
                 "seed": run.spec.seed, "versions": {"synthetic": True}, "device": "none", "git_sha": "synthetic",
                 "timings": {}, "ood_sets": ood_attr}
        sha = store.publish_results(run.run_dir, arrays, attrs)
        store.write_done(run.run_dir, {"test_accuracy": 0.0}, sha)
        run.arrays = arrays
        planted[run.run_id] = {"counts": _planted_counts(vi, si), "adv_pos": adv_pos, "san_pos": san_pos}
    return planted


@pytest.fixture(scope="module")
def new_sweep(tmp_path_factory):
    s = synth.make_sweep(tmp_path_factory.mktemp("new sections") / "s w", n_test=120, seeds=(1, 2), corruptions=(),
                         val=False, train_subset=False, faithfulness=False)
    planted = _add_new_arrays(s)
    index, summary, page = _gather(s, figures=True)
    return s, planted, index, summary, page


def _softmax64(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _scores(logits: np.ndarray) -> dict[str, np.ndarray]:
    x = logits.astype(np.float64)
    return {"msp": _softmax64(x).max(axis=1), "max_logit": x.max(axis=1),
            "energy": np.log(np.exp(x).sum(axis=1))}


def _auroc_pairs(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """P(in > out) + P(in == out) / 2, by counting every pair."""
    gt = (s_in[:, None] > s_out[None, :]).sum()
    eq = (s_in[:, None] == s_out[None, :]).sum()
    return float((gt + 0.5 * eq) / (s_in.size * s_out.size))


def _fpr95(s_in: np.ndarray, s_out: np.ndarray) -> float:
    """Share of out-samples accepted (>= t) at the largest threshold t that accepts >= 95% of in-samples."""
    t = max(v for v in s_in if np.mean(s_in >= v) >= 0.95)
    return float(np.mean(s_out >= t))


def _ap(pos: np.ndarray, neg: np.ndarray) -> float:
    """Average precision: the mean over positives of the precision among samples scoring at least as high."""
    allv = np.concatenate([pos, neg])
    return float(np.mean([np.sum(pos >= p) / np.sum(allv >= p) for p in pos]))


def _aurc(logits: np.ndarray, labels: np.ndarray) -> float:
    conf = _softmax64(logits).max(axis=1)
    assert np.unique(conf).size == conf.size, "the plain computation assumes no tied confidences"
    wrong = (np.argmax(logits, axis=1) != labels)[np.argsort(-conf)]
    return float(np.mean([wrong[:k].mean() for k in range(1, wrong.size + 1)]))


def _augrc_pairs(logits: np.ndarray, labels: np.ndarray) -> float:
    """Traub et al.'s AUGRC = (1 - AUROC) acc (1 - acc) + (1 - acc)^2 / 2, AUROC of right against wrong
    predictions by counting every pair."""
    conf = _softmax64(logits).max(axis=1)
    right = np.argmax(logits, axis=1) == labels
    acc = right.mean()
    if right.all() or not right.any():
        return float((1 - acc) ** 2 / 2)
    return float((1 - _auroc_pairs(conf[right], conf[~right])) * acc * (1 - acc) + (1 - acc) ** 2 / 2)


def _ranks(v: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank, by counting."""
    return np.array([np.sum(v < x) + (np.sum(v == x) + 1) / 2.0 for x in v])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = _ranks(a.astype(np.float64).ravel()), _ranks(b.astype(np.float64).ravel())
    return float(np.corrcoef(ra, rb)[0, 1])


def _body(page: str, sid: str) -> str:
    return page.split(f'<section id="{sid}">', 1)[1].split("</section>", 1)[0]


def test_adversarial_numbers_against_argmax_counts(new_sweep) -> None:
    s, planted, _, summary, page = new_sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    per_variant: dict[str, list[float]] = {}
    for run in s.runs:
        row, p = runs[run.run_id], planted[run.run_id]
        labels = s.labels[p["adv_pos"]]
        want = {"linf": {}, "l2": {}}
        for key, logits in run.arrays.items():
            parts = key.split("/")
            if parts[0] == "adversarial" and parts[-1] == "logits":
                want[parts[1]][parts[2]] = float(np.mean(np.argmax(logits, axis=1) == labels))
        want["l2"]["0"] = float(np.mean(np.argmax(run.arrays["test/logits"][p["adv_pos"]], axis=1) == labels))
        assert set(row["adversarial_accuracy"]) == set(want)
        for norm in want:
            assert row["adversarial_accuracy"][norm] == pytest.approx(want[norm], abs=1e-12), norm
        # the planted counts, and the headline 8/255
        for (norm, eps), k in p["counts"].items():
            assert row["adversarial_accuracy"][norm][f"{eps:g}"] == k / ADV_M
        assert row["robust_accuracy_linf_8"] == p["counts"][("linf", 8)] / ADV_M
        per_variant.setdefault(run.spec.variant, []).append(row["robust_accuracy_linf_8"])
    for variant, values in per_variant.items():
        got = summary["variants"][variant]["robust_accuracy_linf_8"]
        mean, half = float(np.mean(values)), T_975_DF1 * float(np.std(values, ddof=1)) / np.sqrt(2)
        assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["upper_bound"] is True
        assert got["ci95"] == pytest.approx([max(0.0, mean - half), min(1.0, mean + half)], rel=1e-6)
        acc_mean = summary["variants"][variant]["adversarial_accuracy_mean"]
        assert set(acc_mean) == {"linf", "l2"} and set(acc_mean["linf"]) == {"0", "2", "8"}
    # the comparison reads adversarial accuracy image by image (every run attacks the same sample)
    from cnnstress.analysis import verdicts
    rows = {m["name"]: m for m in summary["comparisons"][0]["metrics"]}
    adv = rows["adversarial_linf_8"]
    assert adv["method"] == verdicts.METHOD_IMAGE_T
    assert adv["base_mean_all"] == pytest.approx(np.mean(per_variant["baseline"]), abs=1e-12)
    body = _body(page, "adversarial")
    assert "<h2>Adversarial robustness (PGD)</h2>" in body and "Not available" not in body
    assert f"same {ADV_M} test images" in body and "8/255" in body and 'id="fig-adversarial"' in body


def test_ood_and_selective_numbers_against_pairwise_counts(new_sweep) -> None:
    s, _, _, summary, page = new_sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    sums: dict[str, dict] = {}
    for run in s.runs:
        row = runs[run.run_id]
        test_scores = _scores(run.arrays["test/logits"])
        assert set(row["ood"]) == set(OOD_K)
        for name in OOD_K:
            out_scores = _scores(run.arrays[f"ood/{name}/logits"])
            for score in ("msp", "max_logit", "energy"):
                s_in, s_out = test_scores[score], out_scores[score]
                got = row["ood"][name][score]
                assert got["auroc"] == pytest.approx(_auroc_pairs(s_in, s_out), abs=1e-12), (name, score)
                assert got["fpr95"] == pytest.approx(_fpr95(s_in, s_out), abs=1e-12), (name, score)
                assert got["aupr_in"] == pytest.approx(_ap(s_in, s_out), abs=1e-9), (name, score)
                assert got["aupr_out"] == pytest.approx(_ap(-s_out, -s_in), abs=1e-9), (name, score)
                sums.setdefault(run.spec.variant, {}).setdefault((name, score), []).append(got["auroc"])
        # planted: every test image's MSP is above 1/C, the all-zero logits' MSP
        assert row["ood"]["uniform_noise"]["msp"]["auroc"] == 1.0
        assert row["ood"]["uniform_noise"]["msp"]["fpr95"] == 0.0
        assert 0.0 < row["ood"]["smooth_noise"]["msp"]["auroc"] < 1.0
        assert row["aurc"] == pytest.approx(_aurc(run.arrays["test/logits"], s.labels), abs=1e-12)
        assert row["augrc"] == pytest.approx(_augrc_pairs(run.arrays["test/logits"], s.labels), abs=1e-12)
        sums.setdefault(run.spec.variant, {}).setdefault("aurc", []).append(row["aurc"])
        sums.setdefault(run.spec.variant, {}).setdefault("augrc", []).append(row["augrc"])
    for variant, got in sums.items():
        v = summary["variants"][variant]
        assert v["aurc_mean"] == pytest.approx(np.mean(got["aurc"]), abs=1e-12)
        assert v["augrc_mean"] == pytest.approx(np.mean(got["augrc"]), abs=1e-12)
        assert set(v["ood"]) == set(OOD_K)
        for (name, score), values in ((k, x) for k, x in got.items() if k not in ("aurc", "augrc")):
            assert v["ood"][name][score]["auroc"] == pytest.approx(np.mean(values), abs=1e-12)
        assert v["ood"]["uniform_noise"]["msp"]["auroc"] == 1.0
    body = _body(page, "ood")
    assert "uniform_noise (far-OOD, 30 images): planted uniform_noise" in body
    assert 'id="fig-ood_histograms"' in body and 'id="fig-risk_coverage"' in body
    assert 'id="fig-generalized_risk_coverage"' in body and "AUGRC" in body
    assert "AUGRC (generalised selective risk)" in _body(page, "changes")


def test_sanity_numbers_and_verdicts(new_sweep) -> None:
    s, planted, _, summary, page = new_sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    finals: dict[str, list[float]] = {}
    for run in s.runs:
        ref = run.arrays["sanity/randomization/00_trained/gradcam"]
        last = run.arrays[f"sanity/randomization/{len(SAN_STEPS) - 1:02d}_{SAN_STEPS[-1]}/gradcam"]
        want = float(np.mean([_spearman(ref[i], last[i]) for i in range(SAN_S)]))
        got = runs[run.run_id]["sanity_final_rank_correlation"]
        assert got == pytest.approx(want, abs=1e-9)
        if run.spec.variant == "baseline":
            assert got == pytest.approx(1.0, abs=1e-12)
        else:
            assert abs(got) < 0.5
        finals.setdefault(run.spec.variant, []).append(got)
    base, other = summary["variants"]["baseline"]["sanity"], summary["variants"]["cropflip"]["sanity"]
    for v, values in (("baseline", base), ("cropflip", other)):
        assert values["steps"] == list(SAN_STEPS)
        assert values["rank_correlation"][0] == pytest.approx(1.0) and values["topk_overlap"][0] == pytest.approx(1.0)
        assert values["rank_correlation"][-1] == pytest.approx(np.mean(finals[v]), abs=1e-12)
    assert base["maps_stay_similar"] is True and other["maps_stay_similar"] is False
    assert base["rank_correlation"] == pytest.approx([1.0] * 4) and base["topk_overlap"] == pytest.approx([1.0] * 4)
    body = _body(page, "sanity")
    assert "baseline: the maps still correlate 1.00" in body and "do not read its maps as explanations" in body
    assert "cropflip: the correlation falls to" in body and "the sanity check passes" in body
    assert any("baseline: Grad-CAM maps stay similar" in line and "they do not explain this model" in line
               for line in summary["summary"])
    assert not any(line.startswith("cropflip: Grad-CAM maps stay similar") for line in summary["summary"])
    assert 'id="fig-sanity"' in body


def test_new_sections_are_on_the_page_with_their_figures(new_sweep) -> None:
    _, _, index, summary, page = new_sweep
    for sid in ("adversarial", "ood", "sanity"):
        assert f'<section id="{sid}">' in page and f'<a href="#{sid}">' in page
        assert "Not available" not in _body(page, sid)
    for name in ("adversarial", "ood_histograms", "risk_coverage", "sanity"):
        png = index.parent / "figures" / f"{name}.png"
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert all(r["status"] == "done" for r in summary["runs"])


@pytest.fixture(scope="module")
def lacking_sweep(tmp_path_factory):
    """Runs written before the adversarial, OOD and sanity tests existed: no /adversarial, /ood or /sanity (figures drawn too: nothing may fail)."""
    s = synth.make_sweep(tmp_path_factory.mktemp("old runs") / "old", n_test=100, variants=("baseline",), seeds=(1, 2),
                         corruptions=(), val=False, train_subset=False, faithfulness=False)
    index, summary, page = _gather(s, figures=True)
    return s, index, summary, page


def test_sweep_without_the_new_arrays_says_so(lacking_sweep) -> None:
    s, index, summary, page = lacking_sweep
    ids = ", ".join(r.run_id for r in s.runs)
    for sid, key in (("adversarial", "adversarial/positions"), ("sanity", "sanity/positions")):
        body = _body(page, sid)
        assert f"Not available for 2 of 2 finished runs: their results.h5 lacks {key} ({ids})." in body
        assert "No finished run has the arrays this section needs." in body
    for row in summary["runs"]:
        assert row["status"] == "done"
        assert row["adversarial_accuracy"] is None and row["robust_accuracy_linf_8"] is None
        assert row["sanity_final_rank_correlation"] is None
        # [stress].ood off: no set scored, and selective prediction (which comes with it) is not reported
        assert row["ood"] is None and row["aurc"] is None
    v = summary["variants"]["baseline"]
    assert v["robust_accuracy_linf_8"] is None and v["sanity"] is None and not v["ood"]
    figures = index.parent / "figures"
    assert not (figures / "adversarial.png").exists() and not (figures / "sanity.png").exists()
    assert not (figures / "ood_histograms.png").exists() and not (figures / "risk_coverage.png").exists()


def test_ood_section_without_ood_arrays_says_none_were_stored(lacking_sweep) -> None:
    body = _body(lacking_sweep[3], "ood")
    assert "Sets: ." not in body
    assert "No run stored out-of-distribution logits" in body


# ---- corruption robustness: classes that break first only beyond the seed spread ----------------

def _stress_runs(clean_right: list[list[int]], low_right: list[list[int]], support: int = 20):
    """One RunStress per seed for 3 classes of ``support`` images each: clean right counts and the
    right counts under "fog" at severities 1 (``low_right``) and 3 (none right)."""
    from cnnstress.report.sections.robustness import RunStress

    runs = []
    for clean, low in zip(clean_right, low_right):
        r = RunStress()
        r.support, r.clean_right = np.full(3, support), np.array(clean)
        r.class_right = {("fog", 1): np.array(low), ("fog", 3): np.zeros(3, dtype=int)}
        runs.append(r)
    return runs


def test_breaking_first_lists_only_drops_beyond_the_seed_spread() -> None:
    from cnnstress.report.sections.robustness import CellStress, breaking_first, breaking_text

    names = ["ring", "square", "star"]
    # ring: 0 of 20 lost in two seeds, 1 in the third (noise); square: 6, 7 and 6 lost in every seed;
    # star: +2, -2, 0 (noise)
    clean = [[18, 18, 18], [18, 18, 18], [18, 18, 18]]
    low = [[18, 12, 16], [18, 11, 20], [17, 12, 18]]
    got = breaking_first(_stress_runs(clean, low), "fog", [1, 3], names)
    assert [g[0] for g in got] == ["square"]
    drops = [(18 - 12) / 20, (18 - 11) / 20, (18 - 12) / 20]
    assert got[0][1] == pytest.approx(sum(drops) / 3)  # pooled over the seeds
    assert got[0][2][0] > 0
    agg = CellStress(breaking={"fog": got}, breaking_seeds=3)
    assert breaking_text(agg, "fog") == "square (-31.67)"

    # every drop is noise: no class listed, and the table says why
    noise = [[18, 18, 18], [18, 17, 20], [17, 18, 18]]
    none = breaking_first(_stress_runs(clean, noise), "fog", [1, 3], names)
    assert none == []
    assert breaking_text(CellStress(breaking={"fog": none}, breaking_seeds=3), "fog") == \
        "no class drops beyond the seed spread"
    # one seed: no spread to judge a drop by, whatever the drop
    one = breaking_first(_stress_runs(clean[:1], low[:1]), "fog", [1, 3], names)
    assert one == []
    assert "one seed" in breaking_text(CellStress(breaking={"fog": one}, breaking_seeds=1), "fog")


def test_calibration_beyond_ece_clean_and_under_corruption(sweep) -> None:
    from cnnstress.analysis import calibration

    _, summary, page = _gather(sweep, figures=True)
    runs = {r["run_id"]: r for r in summary["runs"]}
    per_variant: dict[str, list] = {}
    for run in sweep.runs:
        row = runs[run.run_id]
        logits = run.arrays["test/logits"].astype(np.float64)
        probs = metrics.softmax(logits)
        assert row["ace"] == pytest.approx(calibration.adaptive_ece(probs, sweep.labels), abs=1e-12)
        assert row["classwise_ece"] == pytest.approx(calibration.classwise_ece(probs, sweep.labels), abs=1e-12)
        assert row["smece"] == pytest.approx(calibration.smooth_ece(probs, sweep.labels)[0], abs=1e-12)
        stressed = metrics.softmax(run.arrays["stress/contrast/1/logits"].astype(np.float64))
        per_variant.setdefault(run.spec.variant, []).append(calibration.smooth_ece(stressed, sweep.labels)[0])
    for variant, values in per_variant.items():
        v = summary["variants"][variant]
        assert v["corruption_smece"]["contrast"]["1"] == pytest.approx(np.mean(values), abs=1e-9)
        assert v["mean_corruption_smece"] == pytest.approx(np.mean(values), abs=1e-9)
        assert v["smece_mean"] == pytest.approx(np.mean([runs[r.run_id]["smece"] for r in sweep.runs
                                                         if r.spec.variant == variant]), abs=1e-12)
    cal, rob = _body(page, "calibration"), _body(page, "robustness")
    assert 'id="fig-reliability_smooth"' in cal and "smooth ECE" in cal and "adaptive ECE" in cal
    assert 'id="fig-reliability_smooth_corrupted"' in rob and "classwise ECE" in rob
    changes = _body(page, "changes")  # each is a row of the paired comparison with the baseline
    assert all(w in changes for w in ("adaptive ECE", "classwise ECE under corruption", "smooth ECE under corruption"))


@pytest.fixture(scope="module")
def road_sweep(tmp_path_factory):
    s = synth.make_sweep(tmp_path_factory.mktemp("road") / "s w", n_test=120, seeds=(1, 2), corruptions=(),
                         val=False, train_subset=False, road=True)
    index, summary, page = _gather(s, figures=True)
    return s, summary, page


def test_faithfulness_with_road_beside_mean_fill_and_top_share_in_object(road_sweep) -> None:
    from cnnstress.analysis import gradcam

    s, summary, page = road_sweep
    runs = {r["run_id"]: r for r in summary["runs"]}
    for run in s.runs:
        row = runs[run.run_id]
        for kind in ("deletion_gradcam", "deletion_random", "insertion_gradcam", "insertion_random"):
            for suffix in ("", "_road"):
                arr = run.arrays[f"faithfulness/{kind}{suffix}"].astype(np.float64)
                trapezoid = float(np.mean([np.trapezoid(r, np.linspace(0, 1, r.size)) for r in arr]))
                assert row["faithfulness_auc"][kind + suffix] == pytest.approx(trapezoid, abs=1e-9)
    body = _body(page, "faithfulness")
    assert 'id="fig-faithfulness_road"' in body and "ROAD imputation" in body and "mean fill" in body
    # the top 20% of each predicted-class map inside the object, right and wrong predictions apart
    mask = s.mask
    assert mask is not None
    per_variant: dict[str, list] = {}
    for run in s.runs:
        maps = run.arrays["test/gradcam/pred"].astype(np.float64)
        right = np.argmax(run.arrays["test/logits"], axis=1) == s.labels
        share = gradcam.top_share_in_mask(maps, mask, 0.2)
        per_variant.setdefault(run.spec.variant, []).append(
            (np.nanmean(share[right]), np.nanmean(share[~right])))
    for variant, values in per_variant.items():
        sc = summary["variants"][variant]["shortcut"]
        assert sc["top20_right"] == pytest.approx(np.mean([v[0] for v in values]), abs=1e-9)
        assert sc["top20_wrong"] == pytest.approx(np.mean([v[1] for v in values]), abs=1e-9)
        assert sc["top20_right"] > sc["top20_wrong"]  # planted: wrong predictions' maps drift off the object
    assert "top 20% in object (right)" in _body(page, "shortcut")
    changes = _body(page, "changes")
    assert "deletion AUC of Grad-CAM, ROAD imputation" in changes and "top 20% of Grad-CAM inside the object" in changes
