"""The benchmarks still run (their --quick mode) and end with their ratio line. Speed itself is
measured by the scripts, never asserted here."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script", ["train_input", "gradcam", "gather", "launch", "decode", "shift", "faithfulness",
                                    "pack"])
def test_benchmark_quick_mode_runs(script):
    res = subprocess.run([sys.executable, f"bench/{script}.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("ratio"), res.stdout[-500:]
