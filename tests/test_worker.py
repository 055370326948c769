"""The worker's real output: schema, bitwise determinism, resume after SIGKILL, skip on relaunch."""

from __future__ import annotations

import fcntl
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from cnnstress import oodsets, probes, store
from cnnstress.atomic import LinkRefused
from cnnstress.grid import load_grid
from cnnstress.claims import RunBusy, claim, claim_holder
from cnnstress.worker import remeasure, run, run_dir_for

from conftest import REPO, tiny_grid_text
from test_atomic import PRECIOUS, _outside, _untouched

pytestmark = pytest.mark.slow


def _spec(tmp: Path, epochs: int = 2, variant: int = 0, extra: str = ""):
    tmp.mkdir(parents=True, exist_ok=True)
    grid = tmp / "g.toml"
    grid.write_text(tiny_grid_text(epochs=epochs, extra=extra))
    # one shared data root so the shapes cache is generated once per test session
    return load_grid(grid, out_root=tmp / "out dir", data_root=REPO / "scratch" / "test-data").runs[variant]


ARRAYS = ("test/logits", "test/embedding", "test/gradcam/pred", "test/gradcam/true", "val/logits",
          "train_subset/embedding", "stress/gaussian_noise/1/logits", "faithfulness/deletion_gradcam")


def _read(run_dir: Path) -> dict[str, np.ndarray]:
    with store.open_results(run_dir / "results.h5") as r:
        return {k: r.read(k) for k in ARRAYS}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("worker run's \"dir\"")
    spec = _spec(tmp)
    result = run(spec, echo=False)
    return spec, run_dir_for(spec), result


def test_results_follow_the_design_schema(finished):
    spec, run_dir, result = finished
    assert result["status"] == "done"
    info = store.validate_results(run_dir / "results.h5")
    n, c = 200, 10
    assert (info["n_test"], info["num_classes"], info["epochs"]) == (n, c, 2)
    with h5py.File(run_dir / "results.h5", "r") as f:
        assert f.attrs["schema_version"] == store.SCHEMA_VERSION
        assert json.loads(f.attrs["spec"]) == spec.to_dict()
        assert f.attrs["run_id"] == spec.run_id
        expect = {"test/index": ((n,), np.int32), "test/label": ((n,), np.int16), "test/logits": ((n, c), np.float32),
                  "test/gradcam/pred": ((n, 8, 8), np.float16), "test/gradcam/true": ((n, 8, 8), np.float16),
                  "stress/gaussian_noise/5/logits": ((n, c), np.float16), "history/val_acc": ((2,), np.float64)}
        for key, (shape, dtype) in expect.items():
            assert f[key].shape == shape and f[key].dtype == dtype, key
        assert f["test/embedding"].shape[0] == n and f["test/embedding"].dtype == np.float16
        assert list(f["history/epoch"][:]) == [1, 2]
        cams = f["test/gradcam/pred"][:].astype(np.float32)
        assert cams.min() >= 0 and cams.max() <= 1.0 and np.isclose(cams.reshape(n, -1).max(1), 1, atol=1e-3).mean() > 0.9
        # test labels are the dataset's, in its order
        from cnnstress import data
        test = data.load_test("shapes", spec.paths.data_root, spec.dataset.params)
        assert np.array_equal(f["test/label"][:], test.y) and np.array_equal(f["test/index"][:], test.index)
    done = json.loads((run_dir / "DONE.json").read_text())
    assert done["results_sha256"] == store.sha256_file(run_dir / "results.h5")
    logits = _read(run_dir)["test/logits"]
    assert done["summary"]["test_accuracy"] == pytest.approx(float((logits.argmax(1) == test.y).mean()))
    assert store.run_state(run_dir).status == "done"
    assert "epoch   2/2" in (run_dir / "log.txt").read_text()
    # best and final weights: best.pt is the epoch with the highest val accuracy (the first, on ties)
    val_acc = _read_history(run_dir)
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert best["epoch"] == int(np.argmax(val_acc)) + 1 and best["val_acc"] == pytest.approx(val_acc.max())
    final = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert final["epoch"] == 2 and best["spec_hash"] == final["spec_hash"] == spec.spec_hash
    if best["epoch"] == 2:
        assert all(torch.equal(best["model"][k], final["model"][k]) for k in final["model"])


def _read_history(run_dir: Path) -> np.ndarray:
    with h5py.File(run_dir / "results.h5", "r") as f:
        return f["history/val_acc"][:]


def test_same_spec_twice_is_bitwise_identical(finished, tmp_path):
    spec, run_dir, _ = finished
    again = _spec(tmp_path)
    assert again.run_id == spec.run_id
    run(again, echo=False)
    a, b = _read(run_dir), _read(run_dir_for(again))
    for key in ARRAYS:
        assert np.array_equal(a[key], b[key]), key


def test_relaunch_of_a_finished_run_trains_nothing_and_changes_no_file(finished):
    spec, run_dir, _ = finished
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert run(spec, echo=False)["status"] == "skipped"
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run_dir.iterdir() if p.is_file()}
    assert after == before


@pytest.fixture(scope="module")
def three_epochs(tmp_path_factory):
    """An uninterrupted 3-epoch run: the reference the interrupted ones must equal bitwise."""
    spec3 = _spec(tmp_path_factory.mktemp("ref"), epochs=3)
    run(spec3, echo=False)
    return spec3


def _start_worker(spec, rd: Path, fault: str) -> subprocess.Popen:
    rd.mkdir(parents=True, exist_ok=True)
    (rd / "spec.json").write_text(spec.to_json())
    return subprocess.Popen([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "CNNSTRESS_FAULT": fault})


def _wait_for_epoch(proc: subprocess.Popen, rd: Path, epoch: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((rd / "progress.json").read_text())["epoch"] >= epoch:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.02)


def _assert_equal_to(reference, rd: Path) -> None:
    a, b = _read(run_dir_for(reference)), _read(rd)
    for key in ARRAYS:
        assert np.array_equal(a[key], b[key]), key
    best_a = torch.load(run_dir_for(reference) / "best.pt", weights_only=True)
    best_b = torch.load(rd / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    assert all(torch.equal(best_a["model"][k], best_b["model"][k]) for k in best_a["model"])


def _tensors(obj, path="state"):
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{path}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}[{i}]")


def test_a_crash_between_timed_checkpoints_keeps_every_finished_epoch_and_resume_is_bitwise(three_epochs, tmp_path):
    """With checkpoint_every_min = 60 nothing is written after each epoch; a
    crash in epoch 2 (injected MemoryError) still leaves epoch 1's checkpoint. It loads to the CPU
    whatever device the run trains on (CUDA and meta refuse RNG states that are not CPU byte
    tensors; map_location=device failed every GPU resume), restores every RNG, and the relaunch
    ends bitwise equal to the uninterrupted run."""
    spec = _respec(three_epochs, tmp_path, every_min=60.0)
    assert spec.run_id == three_epochs.run_id  # the cadence is not part of the run's identity
    rd = run_dir_for(spec)
    proc = _start_worker(spec, rd, "oom:epoch:2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert store.run_state(rd).status == "failed"
    log = (rd / "log.txt").read_text()
    assert "checkpoint after epoch 1 written (training ended by MemoryError)" in log
    assert not (rd / store.PREV_CHECKPOINT_NAME).exists(), "epoch 1 was written once, at the crash"

    from cnnstress.engine import restore_rng_state
    from cnnstress.worker import RunLog, load_checkpoint
    ckpt = load_checkpoint(rd, spec.spec_hash, RunLog(tmp_path / "l.txt", echo=False))
    assert ckpt is not None and ckpt["epoch"] == 1
    assert {p: t.device.type for p, t in _tensors(ckpt) if t.device.type != "cpu"} == {}
    restore_rng_state(torch.Generator(), ckpt["rng"])  # what CUDA and meta refuse unless the state is on the CPU
    on_meta = torch.load(rd / "checkpoint.pt", map_location="meta", weights_only=True)
    with pytest.raises(Exception):  # the premise: a device-mapped RNG state cannot be restored
        restore_rng_state(torch.Generator(), on_meta["rng"])

    assert run(spec, echo=False)["status"] == "done"
    assert "resumed from checkpoint after epoch 1" in (rd / "log.txt").read_text()
    _assert_equal_to(three_epochs, rd)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR2])
def test_a_stop_signal_writes_the_last_finished_epoch_and_resume_is_bitwise(three_epochs, tmp_path, sig):
    """Told to stop (scontrol requeue and preemption send SIGTERM; USR2 comes before
    the time limit) between timed checkpoints, the worker writes the last finished epoch, exits
    resumable (128 + signal, no FAILED.json), and the relaunch is bitwise equal."""
    spec = _respec(three_epochs, tmp_path, every_min=60.0)
    rd = run_dir_for(spec)
    proc = _start_worker(spec, rd, "slow:epoch:0.5")
    _wait_for_epoch(proc, rd, 1)
    assert proc.poll() is None, "worker ended before it could be signalled"
    assert not (rd / "checkpoint.pt").exists(), "no checkpoint is due yet"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "a relaunch resumes from the last checkpoint" in err
    state = store.run_state(rd)
    assert state.status == "partial", state
    done = json.loads((rd / "progress.json").read_text())["epoch"]
    ckpt = torch.load(rd / "checkpoint.pt", weights_only=True)
    assert 1 <= ckpt["epoch"] <= done
    assert f"checkpoint after epoch {ckpt['epoch']} written ({signal.Signals(sig).name} received)" in (rd / "log.txt").read_text()
    assert run(spec, echo=False)["status"] == "done"
    _assert_equal_to(three_epochs, rd)


def _respec(reference, tmp_path: Path, every_min: float):
    """The reference spec (same run id) in another output folder with another checkpoint cadence."""
    return type(reference).from_dict({**reference.to_dict(), "runtime": {"checkpoint_every_min": every_min},
                                      "paths": {"out_root": str(tmp_path / "out dir"),
                                                "data_root": reference.paths.data_root}})


def test_sigkill_after_an_epoch_then_resume_is_bitwise_equal(finished, three_epochs, tmp_path):
    """Really kill a worker process after its first epoch; the relaunch resumes from the checkpoint
    and its final arrays equal those of an uninterrupted run."""
    spec3 = three_epochs
    killed = _spec(tmp_path / "killed", epochs=3)
    rd = run_dir_for(killed)
    rd.mkdir(parents=True)
    (rd / "spec.json").write_text(killed.to_json())
    # 0.4 s more an epoch, so that the kill lands before the end on a machine of any speed
    proc = subprocess.Popen([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "CNNSTRESS_FAULT": "slow:epoch:0.4"})
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((rd / "progress.json").read_text())["epoch"] >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    time.sleep(random.Random().uniform(0, 0.5))  # a random point after the first epoch's checkpoint
    assert proc.poll() is None, "worker ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (rd / "DONE.json").exists()
    assert store.run_state(rd).status == "partial"
    result = run(killed, echo=False)
    assert result["status"] == "done"
    assert "resumed from checkpoint after epoch" in (rd / "log.txt").read_text()
    _assert_equal_to(spec3, rd)


def test_worker_command_line_reads_a_manifest_line(finished, tmp_path):
    spec, run_dir, _ = finished
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text(spec.to_json() + "\n")
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "0"}
    out = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--manifest", str(manifest)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["status"] == "skipped"
    env["SLURM_ARRAY_TASK_ID"] = "1"
    out = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--manifest", str(manifest)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "outside the manifest" in out.stderr


def test_cifar_pickles_train_end_to_end(tmp_path):
    """The real CIFAR loading path (official pickle format, written small by the test) through a run."""
    from fake_cifar import write_fake_cifar

    root = tmp_path / "data root's"
    write_fake_cifar(root, "cifar10", n_train=250, n_test=100, seed=3)
    grid = tmp_path / "g.toml"
    grid.write_text(tiny_grid_text(epochs=1).replace('dataset = "shapes"', 'dataset = "cifar10"')
                    .replace("dataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }", ""))
    spec = load_grid(grid, out_root=tmp_path / "out", data_root=root).runs[0]
    assert run(spec, echo=False)["status"] == "done"
    info = store.validate_results(run_dir_for(spec) / "results.h5")
    assert (info["n_test"], info["num_classes"]) == (100, 10)
    # the log says how the batches were verified (the test's own files are not the official ones)
    assert "test_batch: not the official file: read with a restricted unpickler" in (run_dir_for(spec) / "log.txt").read_text()


def test_missing_cifar_names_the_download_command(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text(tiny_grid_text(epochs=1).replace('dataset = "shapes"', 'dataset = "cifar100"')
                    .replace("dataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }", ""))
    spec = load_grid(grid, out_root=tmp_path / "out", data_root=tmp_path / "empty").runs[0]
    with pytest.raises(Exception, match="python launch.py --download cifar100"):
        run(spec, echo=False)
    assert "--download cifar100" in store.run_state(run_dir_for(spec)).reason


def test_a_run_folder_cannot_escape_the_output_root(finished):
    """Names are validated by the grid; run_dir_for refuses a spec built around it anyway."""
    import dataclasses

    spec, _, _ = finished
    for sweep in ("../../etc", "/abs"):
        bad = dataclasses.replace(spec, sweep=sweep)
        with pytest.raises(ValueError, match="escapes the output root"):
            run_dir_for(bad)


# --- claim: one process per run ------------------------------------------------------------------


def test_claim_is_exclusive_and_names_its_holder(tmp_path):
    with claim(tmp_path):
        holder = claim_holder(tmp_path)
        assert holder["pid"] == os.getpid()
        # flock is per open file, so a second claim from this process is refused like another's
        with pytest.raises(RunBusy, match=f"is claimed by pid {os.getpid()} on {socket.gethostname()} since "):
            with claim(tmp_path):
                pass
    assert claim_holder(tmp_path) is None  # released with the context


def test_a_second_worker_names_the_pid_and_host_of_the_first(tmp_path):
    """Two processes on one run: the refused one says who trains it (from the claim file)."""
    hold = ("import sys, time\nfrom pathlib import Path\nfrom cnnstress.claims import claim\n"
            "with claim(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusy) as err:
            with claim(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert f"run {tmp_path.name} is claimed by pid {holder.pid} on {socket.gethostname()} since " in str(err.value)


def test_claim_waits_out_a_status_check_that_holds_the_lock_for_a_moment(tmp_path):
    """claim_holder takes a shared lock for an instant; a worker claiming then must not give up."""
    (tmp_path / "claim.lock").write_text("")
    fd = os.open(tmp_path / "claim.lock", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    threading.Timer(0.2, os.close, args=(fd,)).start()  # like a slow `--status`
    with claim(tmp_path):
        assert claim_holder(tmp_path)["pid"] == os.getpid()


def test_flexible_cnn_with_projection_shortcuts_trains_on_the_cpu(tmp_path):
    """torch 2.14.1's oneDNN backward of a 1x1 stride-2 channels_last conv from 4 channels aborted
    ("double free or corruption") or hung on this CPU: the worker trains NCHW on the CPU."""
    spec = _spec(tmp_path, epochs=1, extra="")
    d = spec.to_dict()
    spec = type(spec).from_dict({**d, "model": {"name": "flexible_cnn", "params": {"width": 4, "depth": 1, "residual": True}},
                                 "gradcam_layer": "stage3", "train": {**d["train"], "amp": False}})  # float32: the crashing path
    rd = run_dir_for(spec)
    rd.mkdir(parents=True)
    (rd / "spec.json").write_text(spec.to_json())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "channels_last off on the CPU" in (rd / "log.txt").read_text()


# ---- [stress] adversarial / ood / sanity in a real run ---------------------------------

NEW_STRESS = ("adversarial = true\nadversarial_linf = [0, 8]\nadversarial_l2 = [0.5]\nadversarial_steps = 2\n"
              "adversarial_samples = 20\nood = true\nood_samples = 16\nsanity = true\nsanity_samples = 8\n")
# what these tests do not look at, off to keep a run at a few seconds on two cores
LEAN = ["stress.corruptions=[]", "stress.faithfulness_samples=0", "stress.train_embedding_samples=0",
        "grid.seed=[1, 2]"]
NEW_PREFIXES = ("adversarial/", "ood/", "sanity/")
OOD_NAMES = ("shapes_novel", "uniform_noise", "smooth_noise")  # every set shapes offers, none needs a file


def _new_specs(tmp: Path):
    """The baseline runs (seeds 1 and 2) of the tiny grid with the three new stress tests on."""
    tmp.mkdir(parents=True, exist_ok=True)
    grid = tmp / "g.toml"
    grid.write_text(tiny_grid_text(epochs=3, extra=NEW_STRESS))
    runs = load_grid(grid, out_root=tmp / "out dir", data_root=REPO / "scratch" / "test-data", overrides=LEAN).runs
    return [r for r in runs if r.variant == "baseline"]


def _new_arrays(run_dir: Path) -> tuple[dict[str, np.ndarray], dict]:
    with store.open_results(run_dir / "results.h5") as r:
        return {k: r.read(k) for k in r.keys() if k.startswith(NEW_PREFIXES)}, r.attrs.get("ood_sets")


@pytest.fixture(scope="module")
def stressed(tmp_path_factory):
    spec = _new_specs(tmp_path_factory.mktemp("stressed run"))[0]
    assert run(spec, echo=False)["status"] == "done"
    return spec, run_dir_for(spec)


def test_new_stress_results_follow_the_schema(stressed):
    spec, rd = stressed
    assert spec.stress.ood["sets"] == []  # every set available when the run starts: all three for shapes
    info = store.validate_results(rd / "results.h5")
    assert (info["n_test"], info["num_classes"]) == (200, 10)
    assert store.run_state(rd).status == "done"
    with store.open_results(rd / "results.h5") as r:
        keys = [k for k in r.keys() if k.startswith(NEW_PREFIXES)]
        assert sorted(keys) == sorted([
            "adversarial/positions", "adversarial/linf/0/logits", "adversarial/linf/8/logits",
            "adversarial/l2/0.5/logits", "ood/shapes_novel/logits", "ood/uniform_noise/logits",
            "ood/smooth_noise/logits", "sanity/positions",
            *(f"sanity/randomization/{i:02d}_{b}/gradcam" for i, b in enumerate(("trained", "head", "block3",
                                                                                  "block2", "block1")))])
        # the attacked sample: [stress].seed (0) draws 20 of the 200 test positions, sorted
        pos = r.read("adversarial/positions")
        assert pos.dtype == np.int32 and np.array_equal(pos, np.sort(np.random.default_rng(0).permutation(200)[:20]))
        labels, test_logits = r.read("test/label")[pos], r.read("test/logits")[pos]
        clean = r.read("adversarial/linf/0/logits")
        assert clean.shape == (20, 10) and clean.dtype == np.float32
        # eps 0 is no attack: the stored test logits of those rows. predict ran in batches of 100 over all 200
        # test images, the attack over the 20 picked ones (one batch); on the CPU they agree bitwise anyway.
        if r.attrs["device"].startswith("cpu"):
            assert np.array_equal(clean, test_logits)
        else:
            np.testing.assert_allclose(clean, test_logits, rtol=1e-4, atol=1e-4)
        acc = {k: float(np.mean(np.argmax(r.read(k), axis=1) == labels)) for k in keys
               if k.startswith("adversarial/l") and k.endswith("/logits")}
        assert acc["adversarial/linf/8/logits"] <= acc["adversarial/linf/0/logits"]
        assert acc["adversarial/l2/0.5/logits"] <= acc["adversarial/linf/0/logits"]
        # images already wrong without an attack are not attacked: their logits are carried over unchanged
        wrong = np.argmax(clean, axis=1) != labels
        for k in ("adversarial/linf/8/logits", "adversarial/l2/0.5/logits"):
            assert np.array_equal(r.read(k)[wrong], clean[wrong]), k
            assert wrong.sum() < 20 and not np.array_equal(r.read(k)[~wrong], clean[~wrong]), f"{k}: nothing attacked"
        # sanity: positions from the same seed; the first step is the trained model's Grad-CAM of those rows
        spos = r.read("sanity/positions")
        assert np.array_equal(spos, np.sort(np.random.default_rng(0).permutation(200)[:8]))
        ref = r.read("sanity/randomization/00_trained/gradcam")
        assert ref.dtype == np.float16 and ref.shape == (8, *r.shape("test/gradcam/pred")[1:])
        np.testing.assert_allclose(ref.astype(np.float32), r.read("test/gradcam/pred")[spos].astype(np.float32),
                                   rtol=0, atol=2.0**-10)
        last = r.read("sanity/randomization/04_block1/gradcam").astype(np.float32)
        assert not np.array_equal(last, ref.astype(np.float32)), "re-initialising every block changed no map"
        # OOD: the stored count of each set, the model's classes, and a root attribute describing each set
        described = r.attrs["ood_sets"]
        assert set(described) == set(OOD_NAMES)
        for name in OOD_NAMES:
            logits = r.read(f"ood/{name}/logits")
            assert logits.shape == (16, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()
            d = described[name]
            assert d["count"] == logits.shape[0] == spec.stress.ood["samples"]
            assert (d["name"], d["dataset"], d["seed"]) == (name, "shapes", spec.stress.corruption_seed)
            assert (d["kind"], d["description"]) == (oodsets.OOD_SETS[name].kind, oodsets.OOD_SETS[name].description)


def test_new_stress_logits_are_the_final_models(stressed):
    """The OOD logits are the trained model's on the named sets (recomputed from checkpoint.pt, the last epoch)."""
    from cnnstress import data
    from cnnstress.engine import Precision, predict, use_channels_last
    from cnnstress.models import build_model

    spec, rd = stressed
    with store.open_results(rd / "results.h5") as r:
        device = torch.device("cuda" if r.attrs["device"].startswith("cuda") else "cpu")
    cl = use_channels_last(device, spec.train.channels_last)
    state = torch.load(rd / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == spec.train.epochs
    model = build_model(spec.model.name, spec.num_classes, **spec.model.params).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(state["model"])
    splits = data.load_splits("shapes", spec.paths.data_root, val_fraction=spec.train.val_fraction,
                              split_seed=spec.train.split_seed, options=spec.dataset.params)
    mean = torch.tensor(splits.info.mean, dtype=torch.float32, device=device)
    std = torch.tensor(splits.info.std, dtype=torch.float32, device=device)
    precision = Precision.for_device(device, spec.train.amp, spec.train.amp_dtype)
    stored, _ = _new_arrays(rd)
    for name in OOD_NAMES:
        x, _ = oodsets.load_ood_set(name, "shapes", spec.paths.data_root, 16, spec.stress.corruption_seed)
        logits, _ = predict(model, torch.from_numpy(x).to(device), mean, std, precision, spec.train.eval_batch_size, cl)
        # the same model, batches and device as the worker's: bitwise
        assert np.array_equal(stored[f"ood/{name}/logits"], logits.float().cpu().numpy()), name


def test_attacked_and_sanity_positions_are_the_same_for_every_seed(stressed, tmp_path):
    spec1, rd1 = stressed
    spec2 = _new_specs(tmp_path)[1]
    assert spec2.seed == 2 and spec2.run_id != spec1.run_id
    assert run(spec2, echo=False)["status"] == "done"
    a, _ = _new_arrays(rd1)
    b, _ = _new_arrays(run_dir_for(spec2))
    assert store.validate_results(run_dir_for(spec2) / "results.h5")
    for key in ("adversarial/positions", "sanity/positions"):
        assert np.array_equal(a[key], b[key]), key
    assert not np.array_equal(a["adversarial/linf/0/logits"], b["adversarial/linf/0/logits"])  # another model


def test_new_stress_arrays_are_bitwise_reproducible(stressed, tmp_path):
    spec, rd = stressed
    again = _new_specs(tmp_path)[0]
    assert again.run_id == spec.run_id and run_dir_for(again) != rd
    assert run(again, echo=False)["status"] == "done"
    a, a_attr = _new_arrays(rd)
    b, b_attr = _new_arrays(run_dir_for(again))
    assert sorted(a) == sorted(b) and len(a) == 13
    for key in a:
        assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key]), key
    assert a_attr == b_attr


@pytest.mark.parametrize("which", ["finished", "stressed"])
def test_measuring_again_from_the_final_checkpoint_gives_the_published_arrays_bitwise(which, request):
    """Measuring needs only the final weights: re-measured from checkpoint.pt, without training, a
    finished run gives every array of its results.h5 bitwise (corruptions, faithfulness, training
    subset; adversarial, OOD, sanity), and its run folder is left as it was."""
    spec, rd = request.getfixturevalue(which)[:2]
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in rd.iterdir() if p.is_file()}
    said: list[str] = []
    again = remeasure(spec, said.append)
    with store.open_results(rd / "results.h5") as r:
        stored = {k: r.read(k) for k in r.keys() if not k.startswith("history/")}
        assert again.attrs.get("ood_sets") == r.attrs.get("ood_sets")
    assert sorted(again.arrays) == sorted(stored)
    for key, value in stored.items():
        mine = np.asarray(again.arrays[key]).astype(value.dtype)  # stored in the schema's dtype
        assert np.array_equal(mine, value), key
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in rd.iterdir() if p.is_file()} == before
    assert not any("resumed" in line or "epoch " in line for line in said)


def test_measuring_again_without_a_final_checkpoint_names_it(tmp_path):
    spec = _spec(tmp_path, epochs=1)
    run_dir_for(spec).mkdir(parents=True)
    with pytest.raises(ValueError, match=r"checkpoint\.pt: no checkpoint of the last epoch \(1\) of this spec"):
        remeasure(spec, lambda msg: None)


# ---- [stress].source = "official": the published CIFAR-10-C files in a real run ---------


def _official_spec(tmp_path: Path, root: Path, corruptions: str = '["jpeg_compression", "fog"]'):
    grid = tmp_path / "g.toml"
    grid.write_text(tiny_grid_text(epochs=1).replace('dataset = "shapes"', 'dataset = "cifar10"')
                    .replace("dataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }", ""))
    return load_grid(grid, out_root=tmp_path / "out \"dir\"", data_root=root,
                     overrides=["stress.source=official", f"stress.corruptions={corruptions}", "stress.severities=[2, 5]",
                                "stress.faithfulness_samples=0", "stress.train_embedding_samples=0"]).runs[0]


def test_official_source_predicts_on_the_files_images(tmp_path):
    """A tiny official-source run on fake CIFAR-10 + fake CIFAR-10-C: the stored stress logits are the
    final model's predictions on the file's images of that corruption and severity."""
    from cnnstress import cifar_c, data
    from cnnstress.engine import Precision, predict, use_channels_last
    from cnnstress.models import build_model
    from fake_cifar import write_fake_cifar
    from test_cifar_c import write_fake_cifar_c

    root = tmp_path / "data \"root\" it's"
    write_fake_cifar(root, "cifar10", n_train=250, n_test=60, seed=3)
    write_fake_cifar_c(root, "cifar10", names=["fog", "jpeg_compression"])
    spec = _official_spec(tmp_path, root)
    assert spec.stress.source == "official" and spec.stress.corruptions == ["fog", "jpeg_compression"]
    assert run(spec, echo=False)["status"] == "done"
    rd = run_dir_for(spec)
    assert "(the official CIFAR-10-C files)" in (rd / "log.txt").read_text()
    with store.open_results(rd / "results.h5") as r:
        keys = sorted(k for k in r.keys() if k.startswith("stress/"))
        stored = {k: r.read(k) for k in keys}
        clean = r.read("test/logits")
        device = torch.device("cuda" if r.attrs["device"].startswith("cuda") else "cpu")
    assert keys == [f"stress/{c}/{s}/logits" for c in ("fog", "jpeg_compression") for s in (2, 5)]
    cl = use_channels_last(device, spec.train.channels_last)
    state = torch.load(rd / "checkpoint.pt", weights_only=True)
    model = build_model(spec.model.name, spec.num_classes, **spec.model.params).to(device)
    if cl:
        model = model.to(memory_format=torch.channels_last)
    model.load_state_dict(state["model"])
    splits = data.load_splits("cifar10", root, val_fraction=spec.train.val_fraction, split_seed=spec.train.split_seed)
    mean = torch.tensor(splits.info.mean, dtype=torch.float32, device=device)
    std = torch.tensor(splits.info.std, dtype=torch.float32, device=device)
    precision = Precision.for_device(device, spec.train.amp, spec.train.amp_dtype)
    for c in ("fog", "jpeg_compression"):
        for s in (2, 5):
            x = cifar_c.load_corruption("cifar10", root, c, s)
            logits, _ = predict(model, torch.from_numpy(x).to(device), mean, std, precision, 500, cl)
            want = logits.float().cpu().numpy().astype(np.float16)  # results.h5 keeps stress logits in float16
            assert np.array_equal(stored[f"stress/{c}/{s}/logits"], want), (c, s)
            assert not np.allclose(stored[f"stress/{c}/{s}/logits"], clean.astype(np.float16), atol=1e-3)


def test_official_source_refuses_files_for_another_test_set(tmp_path):
    """labels.npy that is not the test labels: the run fails naming the file and the download command."""
    from fake_cifar import write_fake_cifar
    from test_cifar_c import write_fake_cifar_c

    root = tmp_path / "data root"
    write_fake_cifar(root, "cifar10", n_train=250, n_test=60, seed=3)
    folder = write_fake_cifar_c(root, "cifar10", names=["fog"])
    labels = np.load(folder / "labels.npy")
    np.save(folder / "labels.npy", (labels + 1) % 10)
    spec = _official_spec(tmp_path, root, '["fog"]')
    with pytest.raises(Exception, match="differ from the test labels"):
        run(spec, echo=False)
    reason = store.run_state(run_dir_for(spec)).reason
    assert "labels.npy" in reason and "--download cifar10-c" in reason


def test_a_nonfinite_array_fails_the_run_naming_the_array(tmp_path, monkeypatch):
    # a Grad-CAM map gone infinite (a numerical fault on the device): the worker must not publish it
    import cnnstress.worker as worker_module

    real = worker_module.measure

    def broken_maps(*args, **kwargs):
        out = real(*args, **kwargs)
        out.arrays["test/gradcam/true"] = out.arrays["test/gradcam/true"].copy()
        out.arrays["test/gradcam/true"][3] = np.inf
        return out

    monkeypatch.setattr(worker_module, "measure", broken_maps)
    spec = _spec(tmp_path, epochs=1)
    with pytest.raises(store.ResultsError, match="test/gradcam/true"):
        run(spec, echo=False)
    rd = run_dir_for(spec)
    failed = json.loads((rd / "FAILED.json").read_text())
    assert failed["reason"].startswith("ResultsError: test/gradcam/true: contains infinity (first in row 3)")
    state = store.run_state(rd)
    assert state.status == "failed" and "test/gradcam/true" in state.reason and "\n" not in state.reason
    assert not (rd / "results.h5").exists() and not (rd / "DONE.json").exists()


# --- symbolic links in a run folder: never written through ---------------------------------------


def _refusal(link: Path) -> str:
    return f"LinkRefused: {link} is a symbolic link; cnnstress does not write through links in a run or sweep folder: remove it"


@pytest.mark.parametrize("name", ["claim.lock", "log.txt"])
def test_a_linked_claim_or_log_fails_the_run_and_leaves_the_target_alone(tmp_path, name):
    """A relaunch used to truncate claim.lock's target and append log lines to log.txt's. Now the
    run fails with one line naming the link, in FAILED.json and from the worker command; removing
    the link is all it takes to train it (a linked progress.json is then replaced, not written to)."""
    spec = _spec(tmp_path)
    rd = run_dir_for(spec)
    rd.mkdir(parents=True)
    target = _outside(tmp_path)
    (rd / name).symlink_to(target)
    with pytest.raises(LinkRefused):
        run(spec, echo=False)
    state = store.run_state(rd)
    assert state == store.RunState("failed", _refusal(rd / name)), state
    assert _untouched(target) and (rd / name).is_symlink()
    assert not (rd / "log.txt").exists() or (rd / "log.txt").is_symlink()  # nothing trained

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    out = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--spec", str(spec_file)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1 and out.stderr.strip() == f"error: {_refusal(rd / name)}", out.stderr
    assert _untouched(target)

    (rd / name).unlink()
    (rd / "progress.json").symlink_to(target)
    assert run(spec, echo=False)["status"] == "done"
    assert store.run_state(rd).status == "done"
    assert not (rd / "progress.json").is_symlink() and json.loads((rd / "progress.json").read_text())["epoch"] == 2
    assert _untouched(target) and target.read_bytes() == PRECIOUS


@pytest.mark.parametrize("linked", ["run folder", "runs folder"])
def test_a_linked_run_folder_is_refused_and_nothing_lands_where_it_points(tmp_path, linked):
    """runs/<run_id> (or runs/) as a link to elsewhere: the worker refuses before it writes. Out
    of the output root that was already refused ("escapes"); inside it (another sweep's or another
    run's folder) it is refused as a link."""
    spec = _spec(tmp_path)
    sweep = Path(spec.paths.out_root).resolve() / spec.sweep
    with pytest.raises(ValueError, match="escapes the output root"):
        (sweep / "runs").mkdir(parents=True)
        (sweep / "runs" / spec.run_id).symlink_to(tmp_path)
        run(spec, echo=False)
    shutil.rmtree(sweep)
    elsewhere = sweep.parent / "another sweep's 'dir'"
    elsewhere.mkdir()
    (sweep / "runs").mkdir(parents=True)
    link = sweep / "runs" / spec.run_id if linked == "run folder" else sweep / "runs"
    if linked == "runs folder":
        (sweep / "runs").rmdir()
    link.symlink_to(elsewhere)
    with pytest.raises(LinkRefused, match=f"{link.name} is a symbolic link"):
        run(spec, echo=False)
    assert list(elsewhere.iterdir()) == []


def test_every_stage_of_a_run_logs_its_start_and_duration(stressed):
    """A run used to pass 13-24 s between two log lines (faithfulness, embeddings) saying nothing."""
    spec, rd = stressed
    lines = (rd / "log.txt").read_text().splitlines()
    expected = ["setup", "training", "predictions", *[p.name for p in probes.enabled(spec)], "publishing"]
    assert {"adversarial", "ood", "sanity"} <= set(expected)
    started = [ln.split("stage ", 1)[1].split(":")[0] for ln in lines if ln.endswith(": started")]
    ended = [ln.split("stage ", 1)[1].split(":")[0] for ln in lines if re.search(r"stage \S+: [0-9.]+s$", ln)]
    assert started == expected and ended == expected
    # progress.json names the last stage (what --status shows for a running run) and keeps the epochs
    progress = store.read_progress(rd)
    assert progress["stage"] == "publishing" and progress["epoch"] == spec.train.epochs
    assert store.progress_stage(rd).startswith("publishing (")
