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
from grids import tiny_grid_text  # noqa: E402,F401 - tests import it from here too


@pytest.fixture
def weird_dir(tmp_path: Path) -> Path:
    d = tmp_path / "my run's \"out\" dir"
    d.mkdir()
    return d


@pytest.fixture
def tiny_grid(weird_dir: Path) -> Path:
    p = weird_dir / "tiny grid.toml"
    p.write_text(tiny_grid_text())
    return p


@pytest.fixture(autouse=True)
def _few_threads(monkeypatch):
    # two cores: keep torch from oversubscribing when tests start worker processes
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
