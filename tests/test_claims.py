"""The torch-free claim on a run, and a --status that never imports torch."""

from __future__ import annotations

import subprocess
import sys

from cnnstress import store

from conftest import REPO, loaded_by
from synth import make_sweep

HOLD = """
import sys, time
from pathlib import Path
from cnnstress.claims import claim
with claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""

STATUS = """
import sys
from cnnstress.launcher import main
rc = main(["--grid", sys.argv[1], "--out", sys.argv[2], "--status"])
print("TORCH_IMPORTED" if "torch" in sys.modules else "NO_TORCH", rc)
"""


def test_status_over_runs_in_every_state_never_imports_torch(tmp_path):
    """A login node must not pay for (or fail on) importing torch to say what runs are doing:
    every run that ever started has claim.lock, and a live one is held by its worker."""
    s = make_sweep(tmp_path, seeds=(1, 2, 3), missing={("cropflip", 1)}, failed={("cropflip", 2): "boom"},
                   corrupt={("cropflip", 3)})
    runs = {(r.spec.variant, r.spec.seed): s.sweep_dir / "runs" / r.spec.run_id for r in s.runs}
    for rd in runs.values():
        rd.mkdir(parents=True, exist_ok=True)
        (rd / "claim.lock").touch()  # every run that ever started leaves one
    partial = runs[("baseline", 2)]
    for name in ("DONE.json", "results.h5"):
        (partial / name).unlink()
    (partial / store.CHECKPOINT_NAME).write_bytes(b"a checkpoint")
    running = runs[("baseline", 3)]
    for name in ("DONE.json", "results.h5"):
        (running / name).unlink()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(running)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run([sys.executable, "-c", STATUS, str(s.sweep_dir / "grid.toml"), str(tmp_path)], cwd=REPO,
                             capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    finally:
        holder.kill()
        holder.wait()
    text = out.stdout
    assert text.strip().splitlines()[-1] == "NO_TORCH 3", out.stdout + out.stderr  # 3: failed and broken runs
    for state in ("done", "failed", "broken", "partial", "running", "missing"):
        assert state in text, (state, text)
    assert f"pid {holder.pid}" in text or str(holder.pid) in text


def test_claim_module_is_torch_free():
    assert loaded_by("cnnstress.claims, cnnstress.cluster", ("torch",)) == []
