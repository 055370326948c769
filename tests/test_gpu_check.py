"""bench/gpu_check.py (make gpu-check) keeps working although CI has no GPU: without one it says so in
one line and checks nothing; its hidden CPU smoke mode (--device cpu --quick) runs every check end to
end on tiny sizes and writes the JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = str(REPO / "bench" / "gpu_check.py")
MODELS = ("simple_cnn", "flexible_cnn", "resnet18")
DTYPES = ("bfloat16", "float16", "float32")
EXPECTED = ([f"pipeline/{m}/{d}" for m in MODELS for d in DTYPES]
            + [f"fresh_process_bitwise/{m}/{d}" for m in MODELS for d in DTYPES]
            + ["kill_resume", "host_syncs_per_step", "resnet18_throughput", "runs_per_hour"])
# --quick leaves ResNet-18's pipeline to the GPU run (30 s to minutes a process on a CPU)
QUICK_SKIPPED = {f"{kind}/resnet18/{d}" for kind in ("pipeline", "fresh_process_bitwise") for d in DTYPES}
# and the packing measurement (bench/pack.py --quick runs in tests/test_bench.py)
QUICK_SKIPPED.add("runs_per_hour")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CNNSTRESS_FAULT"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # as on a machine without a GPU, even where one exists
    return env


def test_without_a_gpu_it_says_so_in_one_line_and_checks_nothing(tmp_path):
    out = tmp_path / "gpu check.json"
    res = subprocess.run([sys.executable, SCRIPT, "--out", str(out)], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1 and "no CUDA GPU" in lines[0], res.stdout
    assert "Traceback" not in res.stderr
    assert not out.exists()


def test_a_machine_that_shows_a_gpu_torch_cannot_use_fails_saying_why(tmp_path):
    """make gpu-check on a GPU node whose torch cannot use the GPU said "no CUDA GPU here" and
    exited 0, as on a CPU machine. CUDA_VISIBLE_DEVICES=0 names a GPU (Slurm sets it so)."""
    env = {**_env(), "CUDA_VISIBLE_DEVICES": "0"}
    res = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "x.json")], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 1, res.stdout + res.stderr
    [line] = res.stderr.strip().splitlines()
    assert line.startswith("gpu-check: error: CUDA_VISIBLE_DEVICES=0 names GPUs") and "torch sees no GPU" in line
    assert not (tmp_path / "x.json").exists()


def test_device_cuda_without_a_gpu_is_an_error():
    res = subprocess.run([sys.executable, SCRIPT, "--device", "cuda"], cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2 and "no CUDA GPU" in res.stderr


@pytest.mark.slow
def test_cpu_quick_mode_runs_every_check_end_to_end(tmp_path):
    out = tmp_path / "out dir" / "gpu check.json"
    res = subprocess.run([sys.executable, SCRIPT, "--device", "cpu", "--quick", "--out", str(out)], cwd=REPO,
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("gpu-check passed"), res.stdout[-1000:]
    report = json.loads(out.read_text())
    checks = {c["name"]: c for c in report["checks"]}
    assert list(checks) == EXPECTED
    for name, check in checks.items():
        want = "skip" if name in QUICK_SKIPPED else "pass"
        assert check["status"] == want and check["ok"], (name, check)
    assert report["passed"] is True
    assert report["environment"]["device"] == "cpu" and report["environment"]["quick"] is True
    # the work really happened: every Grad-CAM layer hashed, two processes compared, a kill resumed
    for m in ("simple_cnn", "flexible_cnn"):
        for d in DTYPES:
            numbers = checks[f"pipeline/{m}/{d}"]["numbers"]
            assert numbers["gradcam_layers"] >= 3 and numbers["corrupted_sets"] == 12
            bitwise = checks[f"fresh_process_bitwise/{m}/{d}"]["numbers"]
            assert bitwise["differ"] == 0 and bitwise["arrays_gradcam"] == 2 * numbers["gradcam_layers"]
    kr = checks["kill_resume"]["numbers"]
    assert kr["killed_launch_rc"] == 1 and kr["relaunch_rc"] == 0 and kr["arrays_compared"] > 10
    assert checks["resnet18_throughput"]["numbers"]["ours_images_per_s"] > 0
    assert checks["host_syncs_per_step"]["numbers"]["method"].startswith("cpu stand-in")
