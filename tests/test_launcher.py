"""launch.py as a user runs it: dry run, local cluster, relaunch."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cnnstress import launcher, store
from cnnstress.grid import load_grid
from cnnstress.launcher import main

from conftest import REPO, tiny_grid_text
from grids import LEAN_STRESS

LEAN_SETS = [f"stress.{k}={v}" for k, v in LEAN_STRESS.items()]


def test_dry_run_prints_the_runs_and_writes_nothing(tiny_grid, tmp_path, capsys):
    assert main(["--grid", str(tiny_grid), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    for spec in load_grid(tiny_grid).runs:
        assert spec.run_id in out
    assert not (tmp_path / "o").exists()


def test_bad_grid_exits_2_with_one_line(tiny_grid, tmp_path):
    out = subprocess.run([sys.executable, "launch.py", "--grid", str(tiny_grid), "--set", "epochs=-1", "--dry-run"],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "[base].epochs: -1 is out of range" in out.stderr


@pytest.mark.slow
def test_two_run_grid_through_local_cluster(tiny_grid, tmp_path):
    out = tmp_path / "out 'x'"
    # clean accuracy only (the submission is under test), both runs at once
    sets = ["epochs=1", *(f"stress.{key}={value}" for key, value in LEAN_STRESS.items())]
    args = ["--grid", str(tiny_grid), "--cluster", "local", "--out", str(out), "--no-gather", "--max-parallel", "2",
            "--data-root", str(REPO / "scratch" / "test-data"), *(a for kv in sets for a in ("--set", kv))]
    assert main(args) == 0
    runs = load_grid(tiny_grid, overrides=sets, out_root=out, data_root=REPO / "scratch" / "test-data").runs
    for spec in runs:
        assert store.run_state(out / "tiny" / "runs" / spec.run_id).status == "done"
    assert (out / "tiny" / "manifest.jsonl").read_text().splitlines() == [r.to_json() for r in runs]
    logs = list((out / "tiny" / "submitit").glob("local-*/*_log.out"))
    assert len(logs) == 2  # one process per run
    # the gather job finds the runs without being told the launch's --set and --data-root
    from cnnstress import gather

    assert gather.main([str(out / "tiny"), "--no-figures"]) == 0
    summary = json.loads((out / "tiny" / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]
    # relaunch: nothing to do, nothing rewritten
    snap = {p: p.stat().st_mtime_ns for p in (out / "tiny").rglob("*") if p.is_file() and "submitit" not in p.parts}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in snap} == snap


@pytest.mark.parametrize("columns", [80, 250])
def test_dry_run_table_never_squeezed_in_a_narrow_terminal(tiny_grid, tmp_path, columns):
    # rich squeezes a wide table into 80 columns one character per column; a plain listing instead
    env = {**__import__("os").environ, "COLUMNS": str(columns)}
    out = subprocess.run([sys.executable, "launch.py", "--grid", str(tiny_grid), "--out", str(tmp_path / "o u t"),
                          "--dry-run"], cwd=REPO, capture_output=True, text=True, env=env, check=True).stdout
    grid = load_grid(tiny_grid, out_root=tmp_path / "o u t")
    lines = out.splitlines()
    assert all(len(line.rstrip()) <= columns for line in lines if "━" in line or "┃" in line)
    for r in grid.runs:
        mine = [line for line in lines if r.run_id in line]
        assert len(mine) == 1, out
        if columns == 80:  # one plain line per run, every value whole
            assert "┃" not in out and "│" not in mine[0]
            assert f"seed={r.seed}" in mine[0] and f"epochs={r.train.epochs}" in mine[0] and "state=missing" in mine[0]
        else:
            assert "│" in mine[0] and "missing" in mine[0]


@pytest.mark.slow
def test_results_copied_from_another_run_are_broken_everywhere_and_rerun(tiny_grid, tmp_path, capsys):
    """results.h5 + DONE.json copied from the baseline run into the flip run's folder agree with each
    other: --status, a relaunch, --rerun-failed and gather must all see that they are not flip's."""
    import shutil

    from cnnstress import gather, launcher

    out = tmp_path / "out 'x'"
    data = REPO / "scratch" / "test-data"
    args = ["--grid", str(tiny_grid), "--cluster", "debug", "--out", str(out), "--no-gather",
            "--data-root", str(data), "--set", "epochs=1"]
    assert main(args) == 0
    grid = load_grid(tiny_grid, overrides=["epochs=1"], out_root=out, data_root=data)
    base, flip = (out / "tiny" / "runs" / r.run_id for r in grid.runs)
    for name in ("results.h5", "DONE.json"):
        shutil.copy2(base / name, flip / name)
    capsys.readouterr()

    assert main([*args, "--status"]) == launcher.STATUS_FAILED  # a broken run: the distinct status
    said = capsys.readouterr().out
    why = f"{flip / 'DONE.json'}: holds run {base.name!r}, but this folder is run {flip.name!r}"
    assert f"broken {flip.name}: {why}" in " ".join(said.split()), said
    todo, done, _ = launcher._select(grid, out / "tiny", rerun_failed=True, ask_slurm=False)
    assert [r.run_id for r in todo] == [flip.name] and done == 1
    assert gather.main([str(out / "tiny"), "--no-figures"]) == 0
    summary = {r["run_id"]: r for r in json.loads((out / "tiny" / "report" / "summary.json").read_text())["runs"]}
    assert summary[flip.name]["status"] == "failed" and summary[flip.name]["state"] == "broken"

    assert main(args) == 0
    assert "1 already finished, 1 to run" in " ".join(capsys.readouterr().out.split())
    state = store.run_state(flip)
    assert state.status == "done"
    with store.open_results(flip / "results.h5") as r:
        assert r.attrs["run_id"] == flip.name
    assert json.loads((flip / "DONE.json").read_text())["run_id"] == flip.name
    assert "DONE.json does not match results.h5 (" + why + "); redoing the run" in (flip / "log.txt").read_text()
    assert gather.main([str(out / "tiny"), "--no-figures"]) == 0
    summary = json.loads((out / "tiny" / "report" / "summary.json").read_text())
    assert [r["status"] for r in summary["runs"]] == ["done", "done"]


# A section module whose own import fails (a missing library, a typo): the report cannot be built,
# so the launch and --gather fail with one line naming the module, never "success, no report".
BROKEN_SECTION = "cnnstress.report.sections.shortcut"
PLANTED = "planted: the shortcut section's library is missing"


class _BrokenSection:
    """A meta path finder: importing BROKEN_SECTION raises ImportError, as a broken module would."""

    def find_spec(self, name, path=None, target=None):
        if name == BROKEN_SECTION:
            raise ImportError(PLANTED)
        return None


def test_gather_fails_with_one_line_when_a_section_cannot_be_imported(tiny_grid, tmp_path, monkeypatch):
    import io

    import cnnstress
    import cnnstress.gather  # noqa: F401 - loaded now, so that every module removed below is restored after
    import cnnstress.report
    from rich.console import Console

    from cnnstress import launcher

    for name in [m for m in sys.modules if m == "cnnstress.gather" or m.startswith("cnnstress.report.sections")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(cnnstress, "gather")
    monkeypatch.delattr(cnnstress.report, "sections")
    monkeypatch.setattr(sys, "meta_path", [_BrokenSection(), *sys.meta_path])
    grid = load_grid(tiny_grid, out_root=tmp_path)
    buf = io.StringIO()
    assert launcher._gather(grid, tmp_path / "tiny", Console(file=buf, width=400)) == 1
    text = buf.getvalue().strip()
    assert "\n" not in text, text
    assert text.startswith("error: cannot build the report: ") and BROKEN_SECTION in text and PLANTED in text
    assert not (tmp_path / "tiny" / "report").exists()


def test_gather_option_exits_1_when_a_section_cannot_be_imported(tiny_grid, tmp_path):
    code = ("import sys\n"
            "sys.path.insert(0, 'tests')\n"
            "from test_launcher import _BrokenSection\n"
            "sys.meta_path.insert(0, _BrokenSection())\n"
            "from cnnstress.launcher import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    launcher.write_sweep_files(load_grid(tiny_grid, out_root=tmp_path / "o"), tmp_path / "o" / "tiny", tiny_grid)
    out = subprocess.run([sys.executable, "-c", code, "--grid", str(tiny_grid), "--gather", "--out", str(tmp_path / "o")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert len(lines) == 1 and BROKEN_SECTION in lines[0] and PLANTED in lines[0], lines
    assert "not available" not in out.stdout


@pytest.mark.slow
@pytest.mark.parametrize("cluster", ["local", "debug"])
def test_ctrl_c_prints_one_line_and_a_relaunch_resumes(weird_dir, cluster):
    """Ctrl-C used to print two KeyboardInterrupt tracebacks (the launcher's and submitit's
    controller's) and leave nothing in the run's log."""
    import os
    import signal
    import time

    grid = weird_dir / "slow grid.toml"
    grid.write_text(tiny_grid_text(name="slow", epochs=20, lean=True)
                    .replace('[variants.flip]\naugment = ["flip"]\n', ""))
    out = weird_dir / "out"
    cmd = [sys.executable, "launch.py", "--grid", str(grid), "--cluster", cluster, "--out", str(out), "--no-gather",
           "--data-root", str(REPO / "scratch" / "test-data")]
    runs = load_grid(grid, out_root=out).runs
    rd = out / "slow" / "runs" / runs[0].run_id
    # its own process group, as a terminal's job; SIGINT as a terminal gives it, whatever this
    # process inherited (a shell's background job, or a pytest-xdist worker, starts with it ignored)
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 180
    while store.progress_epochs(rd) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stdout + stderr and "KeyboardInterrupt" not in stdout + stderr, (stdout, stderr)
    [line] = stderr.strip().splitlines()
    assert line.startswith("interrupted: 1 of 1 runs stopped before the end, 1 keep a checkpoint: "
                           f"{runs[0].run_id} (epoch "), line
    assert line.endswith(f"--cluster {cluster}")
    log = (rd / "log.txt").read_text()
    assert "stopped by Ctrl-C (in stage training); checkpoint after epoch" in log, log
    assert store.run_state(rd).status == "partial"  # not failed: a relaunch resumes it
    if cluster == "local":  # (the same files either way)
        assert main(cmd[2:]) == 0
        assert "resumed from checkpoint after epoch" in (rd / "log.txt").read_text()


def test_status_and_gather_remember_the_launch(tiny_grid, tmp_path, capsys):
    """--set name=tb at launch: --status without it once reported 'missing: 4' for a finished sweep,
    and --gather with partial flags wrote a 0-run report over a good one."""
    out = tmp_path / "o"
    data = ["--data-root", str(REPO / "scratch" / "test-data")]
    launched = ["--set", "name=tb", "--set", "epochs=1", *[a for s in LEAN_SETS for a in ("--set", s)]]
    assert main(["--grid", str(tiny_grid), "--cluster", "debug", "--out", str(out), "--no-gather", *data,
                 *launched]) == 0
    capsys.readouterr()
    sweep = out / "tb"
    # no flags: the launch's; another --set: said, and the launch's used
    for extra in ([], ["--set", "epochs=3"]):
        assert main(["--grid", str(tiny_grid), "--out", str(out), "--status", *extra]) == 0
        said = capsys.readouterr()
        assert "done: 2" in said.out and "missing" not in said.out, said.out
        assert "report: none yet; build it from the finished runs: python launch.py --gather" in said.out
        assert ("not used" in said.err) == bool(extra) and "tb" in said.err
    # the sweep folder itself, for --status and --gather
    assert main(["--status", str(sweep)]) == 0
    assert "done: 2" in capsys.readouterr().out
    assert main(["--gather", str(sweep)]) == 0
    assert launcher.report_staleness(load_grid(sweep / "grid.toml", overrides=launched[1::2], out_root=out,
                                               data_root=data[1]), sweep)[0] == "current"
    assert main(["--grid", str(tiny_grid), "--out", str(out), "--status"]) == 0
    assert f"report: {sweep / 'report' / 'index.html'}\n" in capsys.readouterr().out
    # a run that finished after the report: stale, with the command that rebuilds it
    import os
    import time

    done = next((sweep / "runs").glob("*/DONE.json"))
    os.utime(done, (time.time() + 5, time.time() + 5))
    assert main(["--status", str(sweep)]) == 0
    said = capsys.readouterr().out.replace("\n", "")
    assert f"is stale (older than run {done.parent.name}" in said and f"--gather {sweep}" in said.replace("'", "")
    # a mistyped --out: one line, exit 2, no folder made, nothing generated
    wrong = tmp_path / "typo"
    assert main(["--grid", str(tiny_grid), "--out", str(wrong), "--gather"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: nothing was launched into") and err.count("\n") == 1
    assert not wrong.exists()
    # not a sweep folder
    assert main(["--status", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err


# a model by reference that takes one input side only: a Linear over the flattened 8 x side x side map
FIXED_SIDE_NET = """
from torch import nn

def build(num_classes, side=64):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * side * side, num_classes))
"""


@pytest.mark.parametrize("side, ok", [(64, True), (32, False)])
def test_the_launch_model_check_runs_at_the_datasets_image_side(weird_dir, side, ok):
    import numpy as np

    (weird_dir / "fixed net.py").write_text(FIXED_SIDE_NET)
    rng = np.random.default_rng(0)
    np.savez(weird_dir / "sixty four.npz", x_train=rng.integers(0, 256, (12, 64, 64, 3), dtype=np.uint8),
             y_train=np.arange(12) % 3, x_test=rng.integers(0, 256, (6, 64, 64, 3), dtype=np.uint8),
             y_test=np.arange(6) % 3)
    grid = weird_dir / "g.toml"
    grid.write_text(f"""
name = "side"
[base]
dataset = "arrays"
dataset_options = {{ path = "sixty four.npz" }}
model = "./fixed net.py:build"
model_options = {{ side = {side} }}
epochs = 1
[variants.baseline]
[grid]
seed = [1]
[stress]
corruptions = []
""")
    out = subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), "--dry-run", "--out",
                          str(weird_dir / "o")], cwd=weird_dir, capture_output=True, text=True, timeout=300)
    if ok:
        assert out.returncode == 0, out.stderr
    else:  # built for 32 px, it cannot take the dataset's 64 px images: one line at launch, not a failed run
        line = out.stderr.strip()
        assert out.returncode == 2 and "\n" not in line and "(2, 3, 64, 64)" in line and "[base].model" in line, line


# ------------------------------------------------------------------------------------------------
# a dataset too big for the memory its runs will have
# ------------------------------------------------------------------------------------------------


def _arrays_grid(folder, n_train: int = 40, n_test: int = 20, slurm: str = ""):
    import numpy as np

    from grids import tiny_grid_text

    rng = np.random.default_rng(0)
    np.savez(folder / "my data.npz", x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
             y_train=np.arange(n_train) % 2, x_test=rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
             y_test=np.arange(n_test) % 2)
    text = tiny_grid_text("big", epochs=1, lean=True).replace(
        'dataset = "shapes"\ndataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }\n',
        'dataset = "arrays"\ndataset_options = { path = "my data.npz" }\n')
    path = folder / "big grid.toml"
    path.write_text(text + slurm)
    return path


def test_images_held_counts_every_split_without_decoding(weird_dir):
    from cnnstress import data

    grid = load_grid(_arrays_grid(weird_dir, 40, 20))
    spec = grid.runs[0]
    assert data.images_held("arrays", spec.paths.data_root, spec.dataset.params) == (60, 60 * 32 * 32 * 3)
    assert data.images_held("cifar10", weird_dir, {}) == (60_000, 60_000 * 3072)
    n, size = data.images_held("shapes", weird_dir, {"n_train": 400, "n_test": 200})
    assert n == 600 and size == 600 * 32 * 32 * 4  # the object masks too


def test_a_dataset_too_big_for_the_free_ram_or_the_gpu_is_one_line(weird_dir):
    grid = load_grid(_arrays_grid(weird_dir, 40, 20))
    size = 60 * 32 * 32 * 3
    host = launcher.HOST_COPIES * size + launcher.MEMORY_MARGIN
    assert launcher.memory_problem(grid, "local", ram=host, gpu=size + launcher.MEMORY_MARGIN) == ""
    line = launcher.memory_problem(grid, "local", ram=host - 1)
    assert "\n" not in line and line.startswith("[base].dataset: arrays (") and "my data.npz" in line
    assert f"needs about {host / 2**30:.3g} GiB (60 images" in line and "this machine's free RAM" in line
    line = launcher.memory_problem(grid, "local", ram=10 * host, gpu=size + launcher.MEMORY_MARGIN - 1)
    assert f"needs about {(size + launcher.MEMORY_MARGIN) / 2**30:.3g} GiB" in line and "GPU's memory" in line
    # runs at once share the RAM
    two = load_grid(_arrays_grid(weird_dir, 40, 20), overrides=["grid.seed=[1, 2]"])
    assert launcher.memory_problem(two, "local", max_parallel=2, ram=2 * host - 2) != ""
    assert launcher.memory_problem(two, "local", max_parallel=1, ram=2 * host - 2) == ""


def test_a_dataset_too_big_for_slurm_mem_gb_is_refused_by_dry_run_and_launch(weird_dir):
    grid = _arrays_grid(weird_dir, 40, 20, slurm="[slurm]\nmem_gb = 0.1\ngpus_per_task = 0\n")
    for args in (("--dry-run", "--cluster", "sbatch"), ("--dry-run", "--cluster", "slurm"), ("--cluster", "sbatch")):
        res = subprocess.run([sys.executable, str(REPO / "launch.py"), "--grid", str(grid), "--out",
                              str(weird_dir / "out"), *args], cwd=REPO, capture_output=True, text=True, timeout=120)
        err = res.stderr.strip()
        assert res.returncode == 2 and "\n" not in err and "Traceback" not in res.stderr, res.stderr
        assert "[base].dataset: arrays" in err and "[slurm].mem_gb = 0.1 gives 0.1 GiB" in err, err
    assert not (weird_dir / "out" / "big" / "runs").exists()
    # the same grid with the default 16 GB is not refused for its size
    assert launcher.memory_problem(load_grid(grid, overrides=["slurm.mem_gb=16"]), "slurm") == ""


def test_missing_cifar_files_are_refused_before_any_run_starts_all_in_one_line(weird_dir, capsys):
    """Without cifar-10-batches-py, --dry-run exited 0 and the launch started every worker, each
    failing after ~26 s with the download hint (on Slurm: a whole job array failing)."""
    from fake_cifar import write_fake_cifar

    grid = weird_dir / "c.toml"
    grid.write_text(tiny_grid_text(name="c", lean=False).replace('dataset = "shapes"', 'dataset = "cifar10"')
                    .replace("dataset_options = { n_train = 400, n_test = 200, shortcut = 0.8 }", "")
                    .replace("[stress]\n", '[stress]\nsource = "official"\n'))
    root = weird_dir / "data root"
    out = weird_dir / "out"
    base = ["--grid", str(grid), "--out", str(out), "--data-root", str(root)]
    for extra in (["--dry-run"], ["--cluster", "local"]):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        # the clean files and the official corruption files, each with the command that fetches it
        assert "[base].dataset: cifar10 is not under" in err and "--download cifar10 --data-root" in err
        assert '[stress].source: "official" needs' in err and "--download cifar10-c" in err
    assert not (out / "c" / "runs").exists() or not any((out / "c" / "runs").iterdir())
    # present but a file gone and one empty: both named
    folder = write_fake_cifar(root, "cifar10", n_train=50, n_test=20)
    (folder / "data_batch_3").unlink()
    (folder / "test_batch").write_bytes(b"")
    assert main([*base, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "data_batch_3 (missing), test_batch (empty); download it with: python launch.py --download cifar10" in err


@pytest.mark.slow
def test_runs_per_gpu_on_the_cpu_runs_them_at_once_with_the_cores_split_and_bitwise_as_alone(weird_dir, monkeypatch):
    """--runs-per-gpu 2 on the CPU: two runs at once, each with half the cores; what each stores is
    bitwise what the same run stores trained alone with that many threads."""
    import os

    import numpy as np

    from cnnstress.pack import threads_per_run

    grid = weird_dir / "pack.toml"
    grid.write_text(tiny_grid_text(name="pack", epochs=2))
    data = ["--data-root", str(REPO / "scratch" / "test-data"), "--no-gather"]
    packed, alone = weird_dir / "packed", weird_dir / "alone"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main(["--grid", str(grid), "--cluster", "local", "--out", str(packed), "--runs-per-gpu", "2", *data]) == 0
    threads = threads_per_run(2)
    monkeypatch.setenv("OMP_NUM_THREADS", str(threads))  # the reference: one run at a time, as many threads
    assert main(["--grid", str(grid), "--cluster", "local", "--out", str(alone), *data]) == 0
    starts, ends = [], []
    for spec in load_grid(grid, out_root=packed).runs:
        rd = packed / "pack" / "runs" / spec.run_id
        log = (rd / "log.txt").read_text()
        assert f"{threads} threads)" in log, log  # the worker's own report of torch.get_num_threads()
        stamps = [os.path.getmtime(rd / "spec.json"), os.path.getmtime(rd / "DONE.json")]
        starts.append(stamps[0])
        ends.append(stamps[1])
        with store.open_results(rd / "results.h5") as a, \
                store.open_results(alone / "pack" / "runs" / spec.run_id / "results.h5") as b:
            assert a.keys() == b.keys()
            for key in a.keys():
                if key != "history/epoch_seconds":  # a timing
                    np.testing.assert_array_equal(a.read(key), b.read(key), err_msg=key)
    assert max(starts) < min(ends)  # the two ran at the same time
    assert main(["--grid", str(grid), "--cluster", "slurm", "--runs-per-gpu", "2", "--dry-run"]) == 2
