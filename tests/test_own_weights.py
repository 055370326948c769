"""Trained weights named in [base].weights: with epochs = 0 a run measures them as they are (and
reproduces the run they came from bitwise), with the preprocessing [base].normalization states;
the file's bytes are part of the run's identity; a state dict that does not fit the model is one
line at launch listing the missing and unexpected keys."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from cnnstress import data, models, store
from cnnstress.grid import GridError, load_grid
from conftest import REPO
from grids import tiny_grid_text

DATA = REPO / "scratch" / "test-data"


def _grid(folder: Path, name: str, *, epochs: int = 1, base: str = "", file: str = "grid.toml") -> Path:
    """One run of the tiny shapes grid (clean accuracy only), AMP off, ``base`` lines added to [base]."""
    text = tiny_grid_text(name=name, epochs=epochs, n_train=200, n_test=100, lean=True)
    text = text.replace("[variants.flip]\naugment = [\"flip\"]\n", "")
    text = text.replace("[variants.baseline]", f"amp = false\n{base}\n[variants.baseline]")
    path = folder / file
    path.write_text(text)
    return path


def _launch(grid: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), "--cluster", "debug",
                           "--out", str(out), "--data-root", str(DATA), *args],
                          cwd=grid.parent, capture_output=True, text=True, timeout=600)


def _run_dir(grid: Path, out: Path) -> Path:
    (spec,) = load_grid(grid, out_root=out, data_root=DATA).runs
    return out / spec.sweep / "runs" / spec.run_id


def _logits(run: Path) -> torch.Tensor:
    with h5py.File(run / "results.h5", "r") as r:
        return torch.from_numpy(r["test/logits"][...])


def _export(run: Path, path: Path, prefix: str = "module.", key: str = "state_dict") -> dict[str, torch.Tensor]:
    """The run's final weights from checkpoint.pt, saved as a wrapped checkpoint would hold them."""
    sd = torch.load(run / store.CHECKPOINT_NAME, map_location="cpu", weights_only=True)["model"]
    torch.save({key: {prefix + k: v for k, v in sd.items()}, "epoch": 1}, path)
    return sd


def _toml_list(values) -> str:
    return "[" + ", ".join(repr(float(x)) for x in values) + "]"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished one-epoch run, its weights exported to a file in a folder with spaces and quotes,
    and the normalisation it used (its results.h5 says which)."""
    folder = tmp_path_factory.mktemp("w") / "my \"weights\" dir's"
    folder.mkdir()
    grid, out = _grid(folder, "first"), folder / "out"
    done = _launch(grid, out, "--no-gather")
    assert done.returncode == 0, done.stderr[-2000:]
    run = _run_dir(grid, out)
    sd = _export(run, folder / "final 'w'.pt")
    with h5py.File(run / "results.h5", "r") as r:
        norm = json.loads(r.attrs["normalization"])
    assert norm["from"] == "the training split"
    return folder, run, sd, norm


def _eval_grid(folder: Path, norm: dict, name: str = "measure", weights: str = "final 'w'.pt") -> Path:
    base = (f"weights = {json.dumps(weights)}\nweights_key = \"state_dict\"\n"
            f"normalization = {{ mean = {_toml_list(norm['mean'])}, std = {_toml_list(norm['std'])} }}")
    return _grid(folder, name, epochs=0, base=base, file=f"{name} grid.toml")


def test_measuring_exported_weights_reproduces_the_runs_logits_bitwise(trained):
    folder, first, _, norm = trained
    grid, out = _eval_grid(folder, norm), folder / "out"
    done = _launch(grid, out)  # gathered too: the report of runs with no training history
    assert done.returncode == 0, done.stderr[-2000:]
    run = _run_dir(grid, out)
    assert store.run_state(run).status == "done"
    assert torch.equal(_logits(run), _logits(first))
    log = (run / "log.txt").read_text()
    assert "stripped the prefix 'module.'" in log and "0 epochs (measuring the given weights)" in log
    with h5py.File(run / "results.h5", "r") as r:
        assert r["history/epoch"].shape == (0,)
        assert json.loads(r.attrs["normalization"])["from"] == "[base].normalization"
    ckpt = torch.load(run / store.CHECKPOINT_NAME, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0  # the final checkpoint a remeasure reads
    assert (out / "measure" / "report" / "index.html").is_file()
    summary = json.loads((out / "measure" / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done"]


def test_measured_logits_equal_an_independent_float32_forward_pass(trained):
    folder, _, sd, _ = trained
    # a normalisation of its own (not the training split's): the stated one is what the run uses
    norm = {"mean": [0.25, 0.5, 0.75], "std": [0.5, 0.25, 0.125]}
    grid, out = _eval_grid(folder, norm, name="stated"), folder / "out"
    done = _launch(grid, out, "--no-gather")
    assert done.returncode == 0, done.stderr[-2000:]
    (spec,) = load_grid(grid, out_root=out, data_root=DATA).runs
    model = models.build_model("simple_cnn", 10, width=4)
    model.load_state_dict(sd)
    model.float().eval()
    test = data.load_test("shapes", DATA, spec.dataset.params)
    x = torch.from_numpy(test.x).float() / 255.0
    x = (x - torch.tensor(norm["mean"]).view(1, 3, 1, 1)) / torch.tensor(norm["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = model(x)
    got = _logits(out / "stated" / "runs" / spec.run_id)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_a_state_dict_that_does_not_fit_is_one_line_at_launch_listing_the_keys(trained):
    folder, _, sd, norm = trained
    renamed = {("block1.0.renamed" if k == "block1.0.weight" else k): v for k, v in sd.items()}
    assert renamed.keys() != sd.keys()
    torch.save(renamed, folder / "renamed.pt")
    grid = _eval_grid(folder, norm, name="wrong", weights="renamed.pt")
    grid.write_text(grid.read_text().replace('weights_key = "state_dict"\n', ""))
    done = _launch(grid, folder / "out")
    assert done.returncode == 2, done.stdout + done.stderr
    line = done.stderr.strip()
    assert "\n" not in line and "[base].weights" in line, line
    assert "1 missing: block1.0.weight" in line and "1 unexpected: block1.0.renamed" in line, line
    assert not (folder / "out" / "wrong").exists()  # refused before anything was written


def test_a_weights_key_that_is_not_there_is_one_line_at_launch(trained):
    folder, _, _, norm = trained
    grid = _eval_grid(folder, norm, name="nokey")
    grid.write_text(grid.read_text().replace('weights_key = "state_dict"', 'weights_key = "model"'))
    done = _launch(grid, folder / "out")
    assert done.returncode == 2 and "\n" not in done.stderr.strip(), done.stderr
    assert "[base].weights_key: 'model' is not a key" in done.stderr and "state_dict" in done.stderr


def test_the_weights_files_bytes_are_the_identity_not_its_path(weird_dir):
    torch.save({"a": torch.zeros(2)}, weird_dir / "w.pt")
    grid = _grid(weird_dir, "ids", epochs=0, base='weights = "w.pt"')
    (first,) = load_grid(grid, out_root=weird_dir / "out").runs
    assert first.weights["sha256"] and Path(first.weights["file"]) == weird_dir / "w.pt"
    (weird_dir / "moved").mkdir()
    (weird_dir / "w.pt").rename(weird_dir / "moved" / "w.pt")
    grid.write_text(grid.read_text().replace('"w.pt"', '"moved/w.pt"'))
    (moved,) = load_grid(grid, out_root=weird_dir / "out").runs
    assert moved.run_id == first.run_id
    torch.save({"a": torch.ones(2)}, weird_dir / "moved" / "w.pt")
    (changed,) = load_grid(grid, out_root=weird_dir / "out").runs
    assert changed.run_id != first.run_id


def test_grids_without_weights_keep_their_spec_json():
    for spec in load_grid(REPO / "jobs" / "demo.toml", out_root="/nonexistent").runs:
        d = json.loads(spec.to_json())
        assert "weights" not in d and "normalization" not in d and "weights" not in spec.identity()


@pytest.mark.parametrize("base, key, says", [
    ("", "[base].epochs", "0 needs [base].weights"),
    ('weights = "nowhere.pt"', "[base].weights", "no such file"),
    ('weights = "w.pt"\nnormalization = { mean = [0.5], std = [0.0] }', "[base].normalization.std",
     "1 or 3 positive numbers"),
    ('weights = "w.pt"\nnormalization = { mean = [0.5, 0.5], std = [1.0] }', "[base].normalization.mean",
     "1 or 3 finite numbers"),
    ('weights_key = "model"', "[base].weights_key", "[base].weights, which is not set"),
])
def test_bad_weights_settings_are_one_line_when_the_grid_is_read(weird_dir, base, key, says):
    torch.save({"a": torch.zeros(2)}, weird_dir / "w.pt")
    grid = _grid(weird_dir, "bad", epochs=0, base=base)
    with pytest.raises(GridError) as e:
        load_grid(grid, out_root=weird_dir / "out")
    assert key in str(e.value) and says in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_one_mean_and_std_stand_for_all_three_channels(weird_dir):
    torch.save({"a": torch.zeros(2)}, weird_dir / "w.pt")
    grid = _grid(weird_dir, "one", epochs=0, base='weights = "w.pt"\nnormalization = { mean = [0.5], std = [0.25] }')
    (spec,) = load_grid(grid, out_root=weird_dir / "out").runs
    assert spec.normalization == {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}


def test_the_own_model_example_runs_and_is_reported(weird_dir):
    # jobs/example_own_model.toml as shipped, shrunk: its model file resolves next to the grid file
    out = weird_dir / "out"
    shrink = ["epochs=1", "dataset_options.n_train=200", "dataset_options.n_test=100", "grid.seed=[1]",
              "stress.corruptions=[]", "stress.faithfulness_samples=0", "stress.train_embedding_samples=0"]
    done = subprocess.run([sys.executable, "launch.py", "--grid", "jobs/example_own_model.toml", "--cluster", "debug",
                           "--out", str(out), "--data-root", str(DATA), *[a for s in shrink for a in ("--set", s)]],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads((out / "example_own_model" / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]
    assert (out / "example_own_model" / "report" / "index.html").is_file()
    assert len((REPO / "jobs" / "example_own_model.toml").read_text().splitlines()) <= 15


def test_training_starts_from_the_weights(trained):
    folder, _, sd, _ = trained
    # one epoch at the smallest learning rate: the weights move by ~1e-7, far less than a fresh
    # initialisation differs from them
    base = 'weights = "final \'w\'.pt"\nweights_key = "state_dict"'
    grid = _grid(folder, "further", epochs=1, base=base, file="further grid.toml")
    grid.write_text(grid.read_text().replace('{ name = "adam", lr = 0.003 }', '{ name = "sgd", lr = 1e-7 }'))
    out = folder / "out"
    done = _launch(grid, out, "--no-gather")
    assert done.returncode == 0, done.stderr[-2000:]
    run = _run_dir(grid, out)
    after = torch.load(run / store.CHECKPOINT_NAME, map_location="cpu", weights_only=True)["model"]
    fresh = models.build_model("simple_cnn", 10, width=4).state_dict()
    for key in ("block1.0.weight", "head.weight"):
        torch.testing.assert_close(after[key], sd[key], rtol=0, atol=1e-5)
        assert (fresh[key] - sd[key]).abs().max() > 1e-2
    assert "weights: loaded" in (run / "log.txt").read_text()


def test_a_grid_over_weights_compares_checkpoints(weird_dir):
    torch.save({"a": torch.zeros(2)}, weird_dir / "a.pt")
    torch.save({"a": torch.ones(2)}, weird_dir / "b b.pt")
    grid = _grid(weird_dir, "cmp", epochs=0)
    grid.write_text(grid.read_text().replace("[grid]\n", '[grid]\nweights = ["a.pt", "b b.pt"]\n'))
    runs = load_grid(grid, out_root=weird_dir / "out").runs
    assert [Path(r.weights["file"]).name for r in runs] == ["a.pt", "b b.pt"]
    assert len({r.run_id for r in runs}) == 2 and all(r.train.epochs == 0 for r in runs)
