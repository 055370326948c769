"""Stress tests are plugins: a new one is one module plus one registry line. Its grid keys are
validated like every key, an off one changes no run id, the worker writes its arrays into
results.h5 (checked by store against its rows) and its section is on the report page."""

from __future__ import annotations

import io
import json
import pkgutil
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
from rich.console import Console

from cnnstress import gather, probes, store
from cnnstress.config import RunSpec
from cnnstress.grid import GridError, load_grid
from cnnstress.report import sections

from conftest import REPO, loaded_by, tiny_grid_text

# What a stress test's author writes: one module (here into a package of its own, outside cnnstress).
TOY_MODULE = '''
"""Top-2 logit margin on the first test images: a toy stress test."""

from cnnstress.catalog import Param
from cnnstress.layout import Field
from cnnstress.probes.base import Probe


class ToyProbe(Probe):
    name = "toy"
    keys = {
        "toy": Param(False, doc="measure the top-2 logit margin"),
        "toy_samples": Param(8, 1, 64, doc="test images measured"),
    }
    fields = {"toy": {}}  # {"samples": n} while on; {} = off, left out of a run's identity
    rows = (
        Field("toy/positions", "int32", ("Y",), check="positions", doc="rows of /test measured"),
        Field("toy/margin", "float32", ("Y",), doc="top-1 minus top-2 logit"),
    )
    section = "toy"

    def measure(self, pred, data, spec, log):
        import numpy as np

        n = min(spec.stress.toy["samples"], len(data.test))
        logits, _ = pred.predict(data.test.x[:n], n)
        top = logits.topk(2, dim=1).values
        log(f"toy margin on {n} test images")
        return {"toy/positions": np.arange(n, dtype=np.int32), "toy/margin": (top[:, 0] - top[:, 1]).cpu().numpy()}

    def report_section(self):
        from cnnstress.report.markup import num, para, table
        from cnnstress.report.sections.base import Section

        class ToySection(Section):
            id = "toy"
            title = "Toy margin"
            requires = ("toy/margin",)
            run_keys = ("toy_margin",)

            def reduce(self, res, run):
                return float(res.read("toy/margin").mean())

            def aggregate(self, cell, parts, ctx):
                return {"mean": sum(parts) / len(parts)} if parts else None

            def run_fields(self, run, part):
                return {"toy_margin": part}

            def html(self, report, figs):
                rows = [[c.label, num(c.parts[self.id]["mean"])] for c in report.cells if c.parts.get(self.id)]
                return para("Mean top-2 logit margin.") + table(("variant", "margin"), rows)

        return ToySection()


PROBE = ToyProbe()
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Registers the toy stress test the way a user does: its module, and one line in the registry
    (here added to probes.MODULES for the length of the test)."""
    pkg = tmp_path / "user's \"probes\"" / "toyprobes"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "margin.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(pkg.parent))
    monkeypatch.setattr(probes, "MODULES", (*probes.MODULES, "toyprobes.margin"))
    yield probes.registered()[-1]
    monkeypatch.undo()
    sections.sync_probe_sections()  # its section leaves the page with it


def _grid(tmp: Path, extra: str = "") -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "toy grid.toml"
    path.write_text(tiny_grid_text(name="toy", epochs=1, extra=extra))
    return path


def _load(path: Path, tmp: Path):
    return load_grid(path, out_root=tmp / "out dir", data_root=REPO / "scratch" / "test-data")


def test_the_builtin_stress_tests_are_registered_once_and_load_no_torch() -> None:
    modules = {m.name for m in pkgutil.iter_modules(probes.__path__)} - {"base"}
    assert modules == set(probes.MODULES) and len(probes.MODULES) == len(set(probes.MODULES))
    ids = {s.id for s in sections.SECTIONS}
    assert all(p.section in ids for p in probes.registered())  # each names a section of the page
    assert loaded_by("cnnstress.probes, " + ", ".join(f"cnnstress.probes.{m}" for m in modules)) == []
    # the composed schema holds every stress test's rows, the catch-all rows last
    templates = [f.template for f in store.SCHEMA]
    for p in probes.registered():
        assert all(r.template in templates for r in p.rows)
    assert templates[-2:] == ["faithfulness/<name>", "shortcut/<name>"]


def test_a_toy_stress_tests_keys_are_validated_and_off_it_changes_no_run_id(toy, tmp_path) -> None:
    grid = _grid(tmp_path)
    with_toy = _load(grid, tmp_path)
    assert with_toy.runs[0].stress.toy == {}
    bad = _grid(tmp_path / "bad", 'toy_samples = 999')
    with pytest.raises(GridError) as err:
        _load(bad, tmp_path)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith("[stress].toy_samples: 999 is out of range; allowed: int in [1, 64]"), msg
    on = _load(_grid(tmp_path / "on", "toy = true\ntoy_samples = 4"), tmp_path).runs[0]
    assert on.stress.toy == {"samples": 4} and on.identity()["stress"]["toy"] == {"samples": 4}
    assert on.run_id != with_toy.runs[0].run_id  # turned on, it is another measurement


def test_an_off_stress_test_leaves_run_ids_as_they_were(tmp_path, monkeypatch) -> None:
    grid = _grid(tmp_path)
    old = _load(grid, tmp_path).runs
    before = [r.run_id for r in old]
    pkg = tmp_path / "pkg"
    (pkg / "toyprobes").mkdir(parents=True)
    (pkg / "toyprobes" / "__init__.py").write_text("")
    (pkg / "toyprobes" / "margin.py").write_text(TOY_MODULE)
    monkeypatch.syspath_prepend(str(pkg))
    with pytest.raises(GridError, match=r"\[stress\]\.toy: unknown key"):
        _load(_grid(tmp_path / "early", "toy = true"), tmp_path)  # not registered yet
    monkeypatch.setattr(probes, "MODULES", (*probes.MODULES, "toyprobes.margin"))
    runs = _load(grid, tmp_path).runs
    assert [r.run_id for r in runs] == before
    assert "toy" not in runs[0].identity()["stress"] and runs[0].stress.toy == {}
    # a spec.json written before the stress test existed reads as the same run, the test off
    again = RunSpec.from_json(old[0].to_json())
    assert again == runs[0] and again.run_id == before[0] and again.stress.toy == {}


def test_a_stress_test_module_that_cannot_be_imported_is_one_line_naming_it(tmp_path, monkeypatch) -> None:
    (tmp_path / "brokenprobes").mkdir()
    (tmp_path / "brokenprobes" / "__init__.py").write_text("")
    (tmp_path / "brokenprobes" / "typo.py").write_text("from cnnstress.probes.base import Probe\nPROBE = Prob()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(probes, "MODULES", (*probes.MODULES, "brokenprobes.typo"))
    with pytest.raises(GridError) as err:  # what a launch prints, and exits 2 with
        _load(_grid(tmp_path), tmp_path)
    assert str(err.value).endswith("toy grid.toml: [stress]: stress test module brokenprobes.typo cannot be "
                                   "imported (NameError: name 'Prob' is not defined)"), str(err.value)
    # two stress tests claiming one [stress] key
    (tmp_path / "brokenprobes" / "twin.py").write_text(
        "from cnnstress.probes.sanity import SanityProbe\nclass Twin(SanityProbe):\n    name = 'twin'\nPROBE = Twin()\n")
    monkeypatch.setattr(probes, "MODULES", (*probes.MODULES[:-1], "brokenprobes.twin"))
    with pytest.raises(probes.ProbeRegistryError, match="modules cnnstress.probes.sanity and brokenprobes.twin both declare the "
                                                        r"\[stress\] key 'sanity'"):
        probes.registered()


@pytest.mark.slow
def test_a_toy_stress_test_is_measured_stored_and_reported(toy, tmp_path) -> None:
    from cnnstress.worker import run, run_dir_for

    grid = _load(_grid(tmp_path, "toy = true\ntoy_samples = 6"), tmp_path)
    spec = grid.runs[0]
    assert run(spec, echo=False)["status"] == "done"
    path = run_dir_for(spec) / "results.h5"
    store.validate_results(path)  # its rows are part of the schema
    assert store.field_for("toy/margin").doc == "top-1 minus top-2 logit"
    with h5py.File(path, "r") as f:
        margin = f["toy/margin"][:]
        assert f["toy/positions"][:].tolist() == list(range(6)) and margin.dtype == np.float32
        assert (margin >= 0).all()
        logits = f["test/logits"][:6]
    top = np.sort(logits, axis=1)
    np.testing.assert_allclose(margin, top[:, -1] - top[:, -2], rtol=1e-5, atol=1e-5)  # the final model's
    assert "toy margin on 6 test images" in (run_dir_for(spec) / "log.txt").read_text()

    # the store checks its arrays like any other: a NaN in one is refused, naming the dataset
    with pytest.raises(store.ResultsError, match="toy/margin"):
        store.publish_results(tmp_path, {**_arrays(path), "toy/margin": np.full(6, np.nan, np.float32)},
                              _attrs(path))

    for r in grid.runs[1:]:
        run(r, echo=False)
    sweep = Path(spec.paths.out_root) / spec.sweep
    index = gather.gather(sweep, grid=grid, console=Console(file=io.StringIO(), width=200), figures=False)
    page = index.read_text(encoding="utf-8")
    assert '<a href="#toy">Toy margin</a>' in page
    body = page.split('<section id="toy">', 1)[1].split("</section>", 1)[0]
    assert "<h2>Toy margin</h2>" in body and "Mean top-2 logit margin." in body
    summary = json.loads((index.parent / "summary.json").read_text())
    row = next(r for r in summary["runs"] if r["run_id"] == spec.run_id)
    assert row["toy_margin"] == pytest.approx(float(margin.mean()), rel=1e-6)


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with store.open_results(path) as r:
        return {k: r.read(k) for k in r.keys()}


def _attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f.attrs[k] for k in f.attrs if k != "schema_version"}
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in out.items()}


def test_road_removal_off_changes_no_run_id_and_on_is_a_measurement_setting(tmp_path) -> None:
    before = _load(_grid(tmp_path / "plain"), tmp_path).runs
    off = _load(_grid(tmp_path / "off", "faithfulness_road = false\n"), tmp_path).runs
    on = _load(_grid(tmp_path / "on", "faithfulness_road = true\n"), tmp_path).runs
    assert [r.run_id for r in off] == [r.run_id for r in before]
    assert "faithfulness_road" not in before[0].identity()["stress"] and before[0].stress.faithfulness_road is False
    assert on[0].stress.faithfulness_road is True and on[0].run_id != before[0].run_id
    # what decides the weights is untouched: the same training, measured with one more removal
    assert on[0].identity()["stress"]["faithfulness_road"] is True
    assert on[0].training_hash == before[0].training_hash
    with pytest.raises(GridError, match=r"\[stress\]\.faithfulness_road"):
        _load(_grid(tmp_path / "bad", "faithfulness_road = 3\n"), tmp_path)


def test_a_run_with_road_stores_both_removals_and_mean_fill_is_unchanged_by_it(tmp_path) -> None:
    """The worker measures ROAD's curves beside mean fill's on the same images; turning ROAD on
    leaves the mean-fill curves bitwise as they were (ROAD's noise has its own seeded stream)."""
    from cnnstress.worker import run, run_dir_for

    def lean(folder: str, extra: str = ""):
        # clean accuracy and 6 faithfulness images only: the curves are what this test is about
        text = tiny_grid_text(name="toy", epochs=1, lean=True, n_train=200, n_test=100)
        path = tmp_path / folder / "toy grid.toml"
        path.parent.mkdir(parents=True)
        path.write_text(text.replace("faithfulness_samples = 0", "faithfulness_samples = 6\n" + extra))
        return _load(path, tmp_path).runs[0]

    plain = lean("plain")
    assert run(plain, echo=False)["status"] == "done"
    with h5py.File(run_dir_for(plain) / "results.h5", "r") as f:
        mean_fill = {k: f[f"faithfulness/{k}"][:] for k in ("deletion_gradcam", "insertion_random")}
        assert "faithfulness/deletion_gradcam_road" not in f
    road = lean("road", "faithfulness_road = true\n")
    assert road.stress.faithfulness_road and road.training_hash == plain.training_hash
    assert run(road, echo=False)["status"] == "done"
    path = run_dir_for(road) / "results.h5"
    store.validate_results(path)
    with h5py.File(path, "r") as f:
        for k, v in mean_fill.items():
            np.testing.assert_array_equal(f[f"faithfulness/{k}"][:], v)
        for kind in ("deletion_gradcam", "deletion_random", "insertion_gradcam", "insertion_random"):
            curve = f[f"faithfulness/{kind}_road"][:]
            assert curve.shape == (6, 17) and curve.dtype == np.float32 and np.isfinite(curve).all()
        # nothing removed yet: ROAD's first deletion point is the image itself, as mean fill's
        np.testing.assert_allclose(f["faithfulness/deletion_gradcam_road"][:, 0],
                                   f["faithfulness/deletion_gradcam"][:, 0], atol=1e-6)
