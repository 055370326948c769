"""TensorBoard event files: [report].tensorboard / --tensorboard, one folder per run
under <sweep>/tensorboard/<variant>/seed<seed>..., the scalars equal /history/* of results.h5
(float32, bitwise), one value per step after a resume, a launch error without the package, and
run ids that do not change. The tests that read event files skip without the tensorboard package
(`make test` installs it: the Makefile installs '.[test,tensorboard]')."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from cnnstress import store
from cnnstress import tensorboard as tboard
from cnnstress.config import RunSpec, Runtime
from cnnstress.grid import GridError, load_grid
from cnnstress.layout import HISTORY_KEYS

from conftest import REPO, tiny_grid_text
from grids import LEAN, dev_slurm_text
from test_atomic import _outside, _untouched

DATA = REPO / "scratch" / "test-data"


def _grid(folder: Path, name: str = "tiny", epochs: int = 2, extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name} grid.toml"
    path.write_text(tiny_grid_text(name=name, epochs=epochs, extra=extra))
    return path


def _history(run_dir: Path) -> dict[str, np.ndarray]:
    with store.open_results(run_dir / "results.h5") as r:
        return {k: r.read(f"history/{k}") for k in HISTORY_KEYS}


def _events(folder: Path):
    """(scalars: tag -> [(step, value)], how often each (tag, step) occurs in the raw files, event files)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    files = sorted(folder.glob("events.out.tfevents.*"))
    counts: Counter = Counter()
    for f in files:
        for event in EventFileLoader(str(f)).Load():
            for v in event.summary.value:
                counts[(v.tag, event.step)] += 1
    # purge_orphaned_data=False: a duplicated step must show, not be hidden by the reader
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0}, purge_orphaned_data=False)
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    texts = [t.tensor_proto.string_val[0].decode() for t in acc.Tensors("run/text_summary")]
    return scalars, counts, files, texts


def _assert_history_equal(scalars: dict, history: dict[str, np.ndarray]) -> None:
    steps = [int(s) for s in history["epoch"]]
    for key, tag in tboard.EPOCH_TAGS.items():
        assert [s for s, _ in scalars[tag]] == steps, tag
        got = np.asarray([v for _, v in scalars[tag]], dtype=np.float32)
        want = history[key].astype(np.float32)
        assert got.tobytes() == want.tobytes(), (tag, got, want)  # bitwise float32


# ------------------------------------------------------------------------------------------------
# the grid key, the run id, the launch check (no tensorboard package needed)
# ------------------------------------------------------------------------------------------------


def test_turning_tensorboard_on_keeps_the_run_ids(tmp_path):
    grid = _grid(tmp_path)
    off = load_grid(grid, out_root=tmp_path / "out", data_root=DATA)
    on = load_grid(grid, overrides=["report.tensorboard=true"], out_root=tmp_path / "out", data_root=DATA)
    in_file = load_grid(_grid(tmp_path / "b", extra="[report]\ntensorboard = true"), out_root=tmp_path / "out",
                        data_root=DATA)
    assert off.report["tensorboard"] is False and on.report["tensorboard"] is True
    assert [r.run_id for r in on.runs] == [r.run_id for r in off.runs] == [r.run_id for r in in_file.runs]
    assert all(r.runtime.tensorboard for r in on.runs + in_file.runs)
    assert not any(r.runtime.tensorboard for r in off.runs)
    spec = on.runs[0]
    assert RunSpec.from_json(spec.to_json()) == spec
    # a spec.json written before the key existed reads as off
    old = json.loads(spec.to_json())
    old["runtime"] = {"checkpoint_every_min": 0.0}
    assert RunSpec.from_dict(old).runtime == Runtime(checkpoint_every_min=0.0, tensorboard=False)
    with pytest.raises(GridError, match=r"\[report\]\.tensorboard"):
        load_grid(grid, overrides=['report.tensorboard="yes"'], out_root=tmp_path / "out", data_root=DATA)


def test_run_folders_group_by_variant_and_seed(tmp_path):
    grid = _grid(tmp_path, extra="")
    runs = load_grid(grid, overrides=["grid.batch_size=[32, 64]", "report.tensorboard=true"],
                     out_root=tmp_path / "out", data_root=DATA).runs
    names = sorted(tboard.run_name(r) for r in runs)
    assert names == ["baseline/seed1-batch_size32", "baseline/seed1-batch_size64",
                     "flip/seed1-batch_size32", "flip/seed1-batch_size64"]
    assert tboard.run_logdir(runs[0]) == (tmp_path / "out").resolve() / "tiny" / "tensorboard" / tboard.run_name(runs[0])
    one = load_grid(grid, out_root=tmp_path / "out", data_root=DATA).runs
    assert sorted(tboard.run_name(r) for r in one) == ["baseline/seed1", "flip/seed1"]


def _no_tensorboard(monkeypatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == "tensorboard" or name.startswith("tensorboard.") else real(name, *args, **kwargs)

    monkeypatch.setattr(tboard.importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("cluster", ["local", "slurm", "sbatch"])
@pytest.mark.parametrize("ask", [["--tensorboard"], ["--set", "report.tensorboard=true"]])
def test_asking_for_tensorboard_without_the_package_stops_the_launch(tmp_path, monkeypatch, capsys, cluster, ask):
    from cnnstress import launcher

    _no_tensorboard(monkeypatch)

    def never(*args, **kwargs):
        raise AssertionError("the launch went on")

    monkeypatch.setattr(launcher, "write_sweep_files", never)
    monkeypatch.setattr(launcher, "_launch", never)
    out = tmp_path / "out"
    rc = launcher.main(["--grid", str(_grid(tmp_path)), "--out", str(out), "--data-root", str(DATA),
                        "--cluster", cluster, *ask])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "tensorboard package is not installed" in err and "pip install -e '.[tensorboard]'" in err, err
    assert err.count("\n") == 1, err  # one line
    assert not (out / "tiny").exists()  # nothing written, nothing submitted


def test_without_the_package_status_works_and_a_grid_without_tensorboard_is_not_refused(tmp_path, monkeypatch,
                                                                                        capsys):
    from cnnstress import launcher

    _no_tensorboard(monkeypatch)
    grid = _grid(tmp_path)
    base = ["--grid", str(grid), "--out", str(tmp_path / "out"), "--data-root", str(DATA)]
    assert launcher.main([*base, "--tensorboard", "--status"]) == 0  # --status needs no package
    assert tboard.missing_package(load_grid(grid, out_root=tmp_path / "out", data_root=DATA).runs) is None
    capsys.readouterr()


# ------------------------------------------------------------------------------------------------
# event files (need the tensorboard package)
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_runs_write_their_history_and_final_metrics_as_events(tmp_path, capsys):
    """Two runs launched with --tensorboard (--cluster debug): one folder each, grouped by variant
    and seed, whose scalars are results.h5's history (float32, bitwise) and whose final metrics
    equal what the run published; a relaunch retrains nothing and leaves the files alone."""
    pytest.importorskip("tensorboard")
    from cnnstress.analysis.calibration import ece, nll
    from cnnstress.analysis.metrics import softmax
    from cnnstress.launcher import main

    grid = _grid(tmp_path)
    out = tmp_path / "out dir's \"x\""
    args = ["--grid", str(grid), "--out", str(out), "--data-root", str(DATA), "--cluster", "debug", "--no-gather"]
    t0 = time.time()
    assert main([*args, "--tensorboard"]) == 0
    print(f"2 runs of 2 epochs with TensorBoard: {time.time() - t0:.1f} s")
    runs = load_grid(grid, out_root=out, data_root=DATA).runs
    board = out / "tiny" / "tensorboard"
    assert sorted(str(p.relative_to(board)) for p in board.glob("*/*")) == ["baseline/seed1", "flip/seed1"]
    for spec in runs:
        run_dir = out / "tiny" / "runs" / spec.run_id
        folder = board / spec.variant / f"seed{spec.seed}"
        scalars, counts, files, texts = _events(folder)
        assert len(files) == 1
        assert max(counts.values()) == 1, counts
        history = _history(run_dir)
        _assert_history_equal(scalars, history)
        with store.open_results(run_dir / "results.h5") as r:
            logits, labels = r.read("test/logits"), r.read("test/label").astype(np.int64)
            stress = [r.read(f"stress/gaussian_noise/{s}/logits") for s in (1, 5)]
        done = json.loads((run_dir / "DONE.json").read_text())
        final = {tag: v for tag, v in scalars.items() if tag.startswith(("test/", "stress/"))}
        assert all(len(v) == 1 and v[0][0] == 2 for v in final.values()), final
        value = {tag: np.float32(v[0][1]) for tag, v in final.items()}
        assert value["test/accuracy"] == np.float32(done["summary"]["test_accuracy"])
        assert value["test/ece"] == np.float32(ece(softmax(logits), labels))
        assert value["test/nll"] == np.float32(nll(logits, labels))
        accs = [float((s.argmax(1) == labels).mean()) for s in stress]
        assert value["stress/mean_corruption_accuracy"] == np.float32(np.mean(accs))
        assert value["stress/accuracy_severity1"] == np.float32(accs[0])
        assert value["stress/accuracy_severity5"] == np.float32(accs[1])
        assert texts and spec.run_id in texts[0]
        assert f"TensorBoard: event files in {folder.resolve()}" in (run_dir / "log.txt").read_text()
    # relaunch: both runs are finished, so nothing trains and no event file changes
    before = {p: p.stat().st_mtime_ns for p in board.rglob("events.out.tfevents.*")}
    capsys.readouterr()
    assert main([*args, "--tensorboard"]) == 0
    assert "2alreadyfinished,0torun" in "".join(capsys.readouterr().out.split())
    assert {p: p.stat().st_mtime_ns for p in board.rglob("events.out.tfevents.*")} == before


@pytest.mark.slow
def test_a_run_killed_after_epoch_1_resumes_with_one_value_per_step(tmp_path):
    """The worker is SIGKILLed while it writes epoch 2's checkpoint (CNNSTRESS_FAULT), so its event
    file already holds epoch 2 while checkpoint.pt holds epoch 1. The relaunch resumes after epoch
    1, rewrites the folder from the checkpoint's history and trains epochs 2 and 3 again: every
    step appears once, with the values that results.h5 holds (epoch 2's time is the second
    attempt's)."""
    pytest.importorskip("tensorboard")
    import torch

    from cnnstress.worker import run, run_dir_for

    spec = load_grid(_grid(tmp_path, epochs=3), overrides=["report.tensorboard=true"],
                     out_root=tmp_path / "out", data_root=DATA).runs[0]
    rd = run_dir_for(spec)
    rd.mkdir(parents=True)
    (rd / "spec.json").write_text(spec.to_json())
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "cnnstress.worker", "--spec", str(rd / "spec.json")], cwd=REPO,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "CNNSTRESS_FAULT": "kill:checkpoint.pt:2"})
    assert proc.returncode == -9, proc.stderr
    assert torch.load(rd / "checkpoint.pt", weights_only=True)["epoch"] == 1
    folder = tboard.run_logdir(spec)
    killed, _, files, _ = _events(folder)
    # the premise: the event file is one epoch ahead of the checkpoint
    assert [s for s, _ in killed["loss/train"]] == [1, 2], killed
    assert len(files) == 1

    assert run(spec, echo=False)["status"] == "done"
    print(f"killed after epoch 1 and resumed, 3 epochs: {time.time() - t0:.1f} s")
    log = (rd / "log.txt").read_text()
    assert "resumed from checkpoint after epoch 1" in log
    assert "(1 from an earlier attempt deleted; 1 epochs rewritten from the checkpoint)" in log
    scalars, counts, files, texts = _events(folder)
    assert len(files) == 1 and len(texts) == 1
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    assert {step for (tag, step) in counts if tag == "loss/train"} == {1, 2, 3}
    history = _history(rd)
    _assert_history_equal(scalars, history)
    # epoch 1 comes from the checkpoint, epoch 2 from the second attempt (not the killed one's)
    assert scalars["loss/train"][0][1] == killed["loss/train"][0][1]
    assert scalars["epoch_seconds"][1][1] == np.float32(history["epoch_seconds"][1])
    assert all(len(v) == 1 and v[0][0] == 3 for t, v in scalars.items() if t.startswith(("test/", "stress/")))


# ------------------------------------------------------------------------------------------------
# under Slurm (the live dev cluster; skipped without one unless CNNSTRESS_REQUIRE_SLURM=1)
# ------------------------------------------------------------------------------------------------



@pytest.mark.slurm
def test_a_slurm_run_requeued_mid_training_has_one_value_per_step(tmp_path):
    """--cluster slurm --tensorboard; `scontrol requeue` after the first epoch (SIGTERM, then
    SIGKILL): the requeued task resumes and the event file still has each step once."""
    from cnnstress.cluster import slurmctl
    from cnnstress.launcher import main

    try:
        slurmctl.check_controller()
    except slurmctl.SlurmError as e:
        if os.environ.get("CNNSTRESS_REQUIRE_SLURM") == "1":
            pytest.fail(f"CNNSTRESS_REQUIRE_SLURM=1 but {e}")
        pytest.skip(f"no live Slurm controller: {e}")
    pytest.importorskip("tensorboard")
    text = tiny_grid_text(name="tbslurm", epochs=12, extra=dev_slurm_text())
    text = text.replace('[variants.flip]\naugment = ["flip"]\n', "").replace("n_train = 400, n_test = 200",
                                                                             "n_train = 200, n_test = 100")
    grid = tmp_path / "grid.toml"
    grid.write_text(text)
    out = tmp_path / "out"
    args = ["--grid", str(grid), "--out", str(out), "--data-root", str(DATA), "--cluster", "slurm", *LEAN,
            "--tensorboard"]
    # slow epochs (1 s more each), so that the requeue's SIGTERM and the SIGKILL 5 s later (KillWait
    # on the dev cluster) land mid-training; Slurm keeps the environment across requeues
    os.environ["CNNSTRESS_FAULT"] = "slow:epoch:1"
    old_threads, os.environ["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS"), "1"
    try:
        assert main(args) == 0
    finally:
        del os.environ["CNNSTRESS_FAULT"]
        os.environ["OMP_NUM_THREADS"] = old_threads or "2"
    spec = load_grid(grid, overrides=[*LEAN[1::2], "report.tensorboard=true"], out_root=out, data_root=DATA).runs[0]
    sweep = out / "tbslurm"
    rd = sweep / "runs" / spec.run_id
    launch = slurmctl.read_launches(sweep)[0]
    job = launch.runs[spec.run_id]
    t0 = time.time()
    try:
        while time.time() - t0 < 300:
            try:
                if json.loads((rd / "progress.json").read_text())["epoch"] >= 1:
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        deadline = time.time() + 600
        while time.time() < deadline:
            query = slurmctl.query_jobs(launch.job_ids(), use_sacct=False)
            if query.ok and not any(j.active for j in query.jobs.values()):
                break
            time.sleep(1)
    finally:
        subprocess.run(["scancel", *sorted({j.split("_")[0] for j in launch.job_ids()})], capture_output=True)
    assert store.run_state(rd).status == "done", (rd / "log.txt").read_text()
    assert json.loads((rd / "DONE.json").read_text())["summary"]["restarts"] >= 1
    log = (rd / "log.txt").read_text()
    assert "resumed from checkpoint after epoch" in log and "epochs rewritten from the checkpoint)" in log
    scalars, counts, files, _ = _events(tboard.run_logdir(spec))
    assert len(files) == 1
    assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]
    _assert_history_equal(scalars, _history(rd))


@pytest.mark.parametrize("linked", ["tensorboard", "tensorboard/baseline", "tensorboard/baseline/seed1"])
def test_a_linked_event_folder_is_refused_and_the_run_goes_on_without_event_files(tmp_path, linked):
    """The writer opens its event file itself, following links: a linked tensorboard/, variant or
    run folder is refused first (a warning in the log; TensorBoard never fails a run)."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "out 'x'"
    spec = load_grid(_grid(tmp_path), overrides=["report.tensorboard=true"], out_root=out, data_root=DATA).runs[0]
    elsewhere = tmp_path / "elsewhere \"dir\""
    elsewhere.mkdir()
    link = out / "tiny" / linked
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    said: list[str] = []
    board = tboard.open_board(spec, {k: [] for k in HISTORY_KEYS}, said.append)
    board.epoch({k: [1.0] for k in HISTORY_KEYS})
    board.close()
    assert list(elsewhere.iterdir()) == []
    assert len(said) == 1 and said[0].startswith("WARNING: TensorBoard: writing to ")
    assert f"(LinkRefused: {link} is a symbolic link; cnnstress does not write through links" in said[0]


def test_a_linked_stale_event_file_is_unlinked_and_its_target_left_alone(tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "out 'x'"
    spec = load_grid(_grid(tmp_path), overrides=["report.tensorboard=true"], out_root=out, data_root=DATA).runs[0]
    folder = tboard.run_logdir(spec)
    folder.mkdir(parents=True)
    target = _outside(tmp_path)
    (folder / "events.out.tfevents.1.host.1.0").symlink_to(target)
    board = tboard.open_board(spec, {k: [] for k in HISTORY_KEYS}, lambda msg: None)
    board.close()
    files = sorted(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1 and not files[0].is_symlink() and _untouched(target)
