"""Shared fixtures. Paths deliberately contain spaces and quotes."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline anywhere: a stall on a busy 2-core machine is not a failure (CI=true
# already selects hypothesis's "ci" profile, which has none; this makes a local `make test` agree).
settings.register_profile("cnnstress", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "cnnstress")

REPO = Path(__file__).resolve().parents[1]


def loaded_by(modules: str, watched: tuple[str, ...] = ("torch", "h5py")) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after ``import <modules>``: the check that
    a module stays free of a heavy or a cyclic import (only a new process starts from nothing)."""
    code = f"import sys, {modules}; print(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())
sys.path.insert(0, str(Path(__file__).parent))  # fake_cifar and helpers


@pytest.fixture
def weird_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my run's \"out\" dir"
    d.mkdir()
    return d


def tiny_grid_text(name: str = "tiny", epochs: int = 2, extra: str = "") -> str:
    """A shapes grid small enough to train in seconds on a CPU."""
    return f"""
name = "{name}"
[base]
dataset = "shapes"
dataset_options = {{ n_train = 400, n_test = 200, shortcut = 0.8 }}
model = "simple_cnn"
model_options = {{ width = 4 }}
epochs = {epochs}
checkpoint_every_min = 0
batch_size = 64
eval_batch_size = 100
optimizer = {{ name = "adam", lr = 0.003 }}
[variants.baseline]
[variants.flip]
augment = ["flip"]
[grid]
seed = [1]
[stress]
corruptions = ["gaussian_noise"]
severities = [1, 5]
faithfulness_samples = 16
train_embedding_samples = 32
{extra}
"""


@pytest.fixture
def tiny_grid(weird_dir: Path) -> Path:
    p = weird_dir / "tiny grid.toml"
    p.write_text(tiny_grid_text())
    return p


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # two cores: keep torch from oversubscribing when tests start worker processes
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
