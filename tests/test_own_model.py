"""A model of the user's own, named in [base].model by reference: "pkg.mod:fn", "file.py:fn",
"torchvision:<name>". It trains, is measured by the stress tests and gathered like a built-in model;
its source file's sha256 is part of the run's identity; a reference that cannot work is one line at
launch naming the key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch
from torch import nn

from cnnstress import models, store
from cnnstress.engine import Precision, float32_head
from cnnstress.grid import load_grid
from conftest import REPO
from grids import tiny_grid_text

# a plain nn.Sequential CNN: no features / pool / head attributes
NET = """
from torch import nn

def build(num_classes, width=8):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
"""
# every stress test, small (shapes needs no files for any of them)
ALL_STRESS = ('corruptions = ["gaussian_noise"]\nseverities = [3]\nfaithfulness_samples = 8\ntrain_embedding_samples = 16\n'
              "adversarial = true\nadversarial_linf = [0, 8]\nadversarial_steps = 2\nadversarial_samples = 8\n"
              "ood = true\nood_samples = 8\nsanity = true\nsanity_samples = 4\n")
DATA = REPO / "scratch" / "test-data"


def _grid(folder: Path, model: str, *, options: str = "{ width = 4 }", report: str = "", name: str = "own") -> Path:
    text = tiny_grid_text(name=name, epochs=1, n_train=200, n_test=100).replace('model = "simple_cnn"', f"model = {json.dumps(model)}")
    text = text.replace("model_options = { width = 4 }", f"model_options = {options}")
    text = text.replace("[variants.flip]\naugment = [\"flip\"]\n", "")
    head, _, _ = text.partition("[stress]")
    path = folder / "own grid.toml"
    path.write_text(head + "[stress]\n" + ALL_STRESS + report)
    return path


def _launch(grid: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), *args],
                          cwd=grid.parent, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def reference_sweep(tmp_path_factory):
    """One launch of both reference forms, each a variant of its own (a package module found next
    to the grid, and a file path with a space), trained two at a time and gathered into one report."""
    folder = tmp_path_factory.mktemp("own") / "my run's \"out\" dir"
    folder.mkdir()
    for file in ("mynet.py", "my net.py"):
        (folder / file).write_text(NET)
    grid = _grid(folder, "mynet:build")
    grid.write_text(grid.read_text().replace("[variants.baseline]\n",
                                             '[variants.baseline]\n[variants.path]\nmodel = "./my net.py:build"\n'))
    out = folder / "out"
    done = _launch(grid, "--cluster", "local", "--max-parallel", "2", "--out", str(out), "--data-root", str(DATA))
    assert done.returncode == 0, done.stderr[-2000:]
    return folder, grid, out


@pytest.mark.parametrize("ref, file", [("mynet:build", "mynet.py"), ("./my net.py:build", "my net.py")])
def test_reference_model_trains_and_is_measured_by_every_stress_test(reference_sweep, ref, file):
    folder, grid, out = reference_sweep
    runs = load_grid(grid, out_root=out, data_root=DATA).runs
    assert sorted(r.model.name for r in runs) == sorted(["mynet:build", "./my net.py:build"])
    (spec,) = [r for r in runs if r.model.name == ref]
    assert spec.model_source["sha256"] and Path(spec.model_source["file"]) == (folder / file).resolve()
    run = out / "own" / "runs" / spec.run_id
    assert store.run_state(run).status == "done"
    with h5py.File(run / "results.h5", "r") as r:
        keys = set()
        r.visit(keys.add)
        assert r["test/logits"].shape == (100, 10) and r["test/embedding"].shape == (100, 4)
    for group in ("adversarial", "ood", "sanity", "stress", "faithfulness", "train_subset"):
        assert any(k.startswith(group) for k in keys), (group, sorted(keys)[:40])
    assert "Grad-CAM at 5 (the default) (16, 16)" in (run / "log.txt").read_text()
    assert (out / "own" / "report" / "index.html").is_file()
    rows = json.loads((out / "own" / "report" / "summary.json").read_text())["runs"]
    assert [r["status"] for r in rows if r["run_id"] == spec.run_id] == ["done"]


def test_editing_the_model_file_makes_a_new_run(weird_dir):
    for ref, file in (("mynet:build", "mynet.py"), ("./my net.py:build", "my net.py")):
        (weird_dir / file).write_text(NET)
        grid = _grid(weird_dir, ref)
        before = load_grid(grid).runs[0]
        (weird_dir / file).write_text(NET.replace("padding=1), nn.ReLU(), nn.MaxPool2d", "padding=1), nn.GELU(), nn.MaxPool2d"))
        after = load_grid(grid).runs[0]
        assert before.run_id != after.run_id and before.settings_hash != after.settings_hash
        # where the file lives is not part of the identity, its content is
        assert "file" not in after.identity()["model_source"] and "root" not in after.identity()["model_source"]


def test_built_in_models_have_no_source_in_their_spec(tiny_grid):
    spec = load_grid(tiny_grid).runs[0]
    assert "model_source" not in spec.to_dict() and "model_source" not in spec.identity()
    assert type(spec).from_json(spec.to_json()) == spec


@pytest.mark.parametrize("body, ref, report, key, says", [
    ("import no_such_module_here\n", "bad:build", "", "[base].model", "cannot be imported: ModuleNotFoundError"),
    (NET.replace("nn.Linear(width, num_classes)", "nn.Linear(width, 7)"), "bad:build", "", "[base].model",
     "to (2, 7), not (2, 10) logits"),
    (NET, "bad:build", 'gradcam_layer = "9"\n', "[report].gradcam_layer", "valid (modules with a spatial 4-D output): 0, 1, 2, 3, 4, 5"),
    (NET, "bad:build", 'head_layer = "3"\n', "[report].head_layer", "nn.Linear modules: 8"),
    (NET, "bad:nothing", "", "[base].model", "has no attribute 'nothing'"),
])
def test_a_reference_that_cannot_work_is_one_line_at_launch(weird_dir, body, ref, report, key, says):
    (weird_dir / "bad.py").write_text(body)
    grid = _grid(weird_dir, ref, report=f"[report]\n{report}" if report else "")
    out = _launch(grid, "--dry-run", "--out", str(weird_dir / "out"))
    assert out.returncode == 2, out.stdout + out.stderr
    line = out.stderr.strip()
    assert "\n" not in line and key in line and says in line, line
    assert not (weird_dir / "out").exists()


def test_a_model_option_the_builder_does_not_take_is_one_line(weird_dir):
    (weird_dir / "mynet.py").write_text(NET)
    out = _launch(_grid(weird_dir, "mynet:build", options="{ depth = 3 }"), "--dry-run")
    assert out.returncode == 2 and "\n" not in out.stderr.strip()
    assert "[base].model: 'mynet:build' does not build" in out.stderr and "depth" in out.stderr


def test_a_missing_reference_file_is_a_grid_error(weird_dir):
    out = _launch(_grid(weird_dir, "./nowhere.py:build"), "--status")
    assert out.returncode == 2 and "[base].model" in out.stderr and "nowhere.py" in out.stderr


def test_torchvision_weights_that_would_download_are_refused(weird_dir):
    grid = _grid(weird_dir, "torchvision:resnet18", options='{ weights = "IMAGENET1K_V1" }')
    out = _launch(grid, "--dry-run", "--set", "report.gradcam_layer=layer3")
    assert out.returncode == 2 and "\n" not in out.stderr.strip()
    assert "[base].model_options.weights" in out.stderr and "nothing is downloaded" in out.stderr


@pytest.mark.slow
def test_torchvision_resnet18_trains_at_32_pixels(weird_dir):
    grid = _grid(weird_dir, "torchvision:resnet18", options="{}")
    text = grid.read_text().split("[stress]")[0] + '[stress]\ncorruptions = []\nfaithfulness_samples = 0\n' \
        'train_embedding_samples = 0\n[report]\ngradcam_layer = "layer3"\n'
    grid.write_text(text)
    out = weird_dir / "out"
    done = _launch(grid, "--cluster", "local", "--out", str(out), "--data-root", str(DATA), "--no-gather")
    assert done.returncode == 0, done.stderr[-2000:]
    (spec,) = load_grid(grid, out_root=out, data_root=DATA).runs
    with h5py.File(out / "own" / "runs" / spec.run_id / "results.h5", "r") as r:
        assert r["test/logits"].shape == (100, 10) and r["test/embedding"].shape == (100, 512)


def test_hooked_float32_head_equals_a_plain_float32_forward(weird_dir):
    (weird_dir / "mynet.py").write_text(NET)
    torch.manual_seed(0)
    model = models.build_reference("mynet:build", 5, {"width": 6}, {"root": str(weird_dir)}).eval()
    assert not hasattr(model, "features") and models.head_path(model) == "8"
    x = torch.rand(4, 3, 32, 32)
    logits, emb = float32_head(model, x, Precision.for_device(torch.device("cpu"), True, "bfloat16"))
    assert logits.dtype == emb.dtype == torch.float32
    with torch.no_grad():
        trunk = model[:8](x)  # an independent float32 computation: the layers by hand
        expected = trunk @ model[8].weight.T + model[8].bias
    assert emb.shape == (4, 6) and torch.allclose(emb, trunk, atol=0.1)  # the trunk ran under autocast
    # the head itself is float32 on that embedding: exact to float32 rounding, not bf16's 8 bits
    assert torch.allclose(logits, emb @ model[8].weight.T + model[8].bias, atol=1e-6)
    fp32, fp32_emb = float32_head(model, x, Precision.for_device(torch.device("cpu"), False, "bfloat16"))
    assert torch.allclose(fp32, expected, atol=1e-5) and torch.allclose(fp32_emb, trunk, atol=1e-6)


def test_same_seed_same_weights_and_one_draw(weird_dir):
    (weird_dir / "mynet.py").write_text(NET)
    torch.manual_seed(3)
    a = models.build_reference("mynet:build", 3, {}, {"root": str(weird_dir)})
    after_a = torch.rand(1)
    torch.manual_seed(3)
    b = models.build_reference("mynet:build", 3, {}, {"root": str(weird_dir)})
    assert torch.rand(1) == after_a
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


def test_default_gradcam_layer_is_the_last_spatial_map():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2))
    assert models.default_gradcam_layer(net) == "2"
    assert models.resolve_layer(net, "") is net[2]


def test_timm_model_trains_at_32_pixels(weird_dir):
    pytest.importorskip("timm")
    grid = _grid(weird_dir, "timm:resnet10t", options="{}")
    grid.write_text(grid.read_text().split("[stress]")[0] + "[stress]\ncorruptions = []\nfaithfulness_samples = 0\n"
                    "train_embedding_samples = 0\nsanity = true\nsanity_samples = 4\n")
    out = weird_dir / "out"
    done = _launch(grid, "--cluster", "local", "--out", str(out), "--data-root", str(DATA), "--no-gather")
    assert done.returncode == 0, done.stderr[-2000:]
    (spec,) = load_grid(grid, out_root=out, data_root=DATA).runs
    with h5py.File(out / "own" / "runs" / spec.run_id / "results.h5", "r") as r:
        assert r["test/logits"].shape == (100, 10) and "sanity" in r


def test_timm_pretrained_weights_are_refused_at_launch(weird_dir):
    pytest.importorskip("timm")
    out = _launch(_grid(weird_dir, "timm:resnet10t", options="{ pretrained = true }"), "--dry-run")
    assert out.returncode == 2 and "[base].model_options.pretrained" in out.stderr.strip().splitlines()[-1]
    assert "nothing is downloaded" in out.stderr


def _arrays(run_dir: Path) -> dict[str, object]:
    out = {}
    with h5py.File(run_dir / "results.h5", "r") as r:
        r.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def test_a_reference_model_resumes_after_a_crash_bitwise(weird_dir):
    """A crash in epoch 2 (injected MemoryError) leaves epoch 1's checkpoint; the rerun resumes from
    it and every stored array equals an uninterrupted run's, bit for bit (determinism and resume)."""
    import os

    from cnnstress.worker import run, run_dir_for

    (weird_dir / "my net.py").write_text(NET)
    grid = _grid(weird_dir, "./my net.py:build")
    grid.write_text(grid.read_text().replace("epochs = 1", "epochs = 2"))
    (whole,) = load_grid(grid, out_root=weird_dir / "whole", data_root=DATA).runs
    assert run(whole, echo=False)["status"] == "done"
    (spec,) = load_grid(grid, out_root=weird_dir / "crashed", data_root=DATA).runs
    rd = run_dir_for(spec)
    rd.mkdir(parents=True)
    (rd / "spec.json").write_text(spec.to_json())
    crashed = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "CNNSTRESS_FAULT": "oom:epoch:2"})
    assert crashed.returncode == 1 and store.run_state(rd).status == "failed"
    assert run(spec, echo=False)["status"] == "done"
    assert "resumed from checkpoint after epoch 1" in (rd / "log.txt").read_text()
    a, b = _arrays(run_dir_for(whole)), _arrays(rd)
    assert a.keys() == b.keys() and "test/logits" in a
    for key in a:
        if not key.startswith(("history/", "timing")):
            assert (a[key] == b[key]).all() if hasattr(a[key], "shape") else a[key] == b[key], key


@pytest.mark.parametrize("model, says", [
    ("resnet19", "allowed: 'simple_cnn' | 'flexible_cnn' | 'resnet18'; or your own by reference: \"package.module:callable\""),
    ("x;y:build", "has characters a model reference may not hold"),
    ("nomod_here:build", "module 'nomod_here' not found in"),
    ("mynet:1bad", "is not a model reference"),
])
def test_a_model_name_that_is_neither_built_in_nor_a_reference_is_one_line(weird_dir, model, says):
    out = _launch(_grid(weird_dir, model), "--status", "--out", str(weird_dir / "out"))
    assert out.returncode == 2 and "\n" not in out.stderr.strip()
    assert "[base].model: " in out.stderr and says in out.stderr, out.stderr


@pytest.fixture
def no_download(monkeypatch, weird_dir):
    """An empty torch hub cache (TORCH_HOME) and every way torch and torchvision fetch a file
    replaced by a failure: a test that passes downloaded nothing."""
    import urllib.request

    home = weird_dir / "torch home"
    home.mkdir()
    monkeypatch.setenv("TORCH_HOME", str(home))

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return home


def test_torchvision_weights_not_in_the_hub_cache_fail_without_a_download(no_download):
    cached = no_download / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    line = models.check_reference({"model": "torchvision:resnet18", "options": {"weights": "IMAGENET1K_V1"},
                                   "num_classes": 1000, "image_size": 32, "gradcam_layer": "layer3"})
    assert "\n" not in line and line.startswith("[base].model_options.weights: weights 'IMAGENET1K_V1'")
    assert str(cached) in line and "[base].weights" in line and "https://download.pytorch.org/" in line
    for weights in ("IMAGENET1K_V1", "DEFAULT", "ResNet18_Weights.IMAGENET1K_V1"):
        with pytest.raises(ValueError, match="nothing is downloaded at run time"):
            models.build_reference("torchvision:resnet18", 1000, {"weights": weights}, {})


def test_torchvision_weights_already_in_the_hub_cache_are_used(no_download):
    import torchvision

    enum = torchvision.models.get_model_weights("squeezenet1_1")
    cached = no_download / "hub" / "checkpoints" / Path(enum.IMAGENET1K_V1.url).name
    cached.parent.mkdir(parents=True)
    torch.manual_seed(7)
    saved = torchvision.models.squeezenet1_1().state_dict()
    torch.save(saved, cached)
    model = models.build_reference("torchvision:squeezenet1_1", 1000, {"weights": "IMAGENET1K_V1"}, {})
    got = model.state_dict()
    assert all(torch.equal(got[k], v) for k, v in saved.items())


def test_torchvision_weights_at_launch_say_where_to_put_the_file(weird_dir):
    home = weird_dir / "empty torch home"
    home.mkdir()
    grid = _grid(weird_dir, "torchvision:resnet18", options='{ weights = "IMAGENET1K_V1" }')
    env = {**__import__("os").environ, "TORCH_HOME": str(home)}
    out = subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), "--dry-run", "--set",
                          "report.gradcam_layer=layer3"], cwd=grid.parent, capture_output=True, text=True,
                         timeout=600, env=env)
    err = out.stderr.strip()
    assert out.returncode == 2 and "\n" not in err, out.stderr
    assert str(home / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in err and "[base].weights" in err
    assert not list(home.rglob("*.pth"))  # nothing was fetched
