"""launch.py as a user runs it, on input and environments that used to end in a traceback, a hang
or a misleading line: grid files nested 1 000 deep, a FIFO for a grid, --out on a read-only file
system, a forgotten CNNSTRESS_FAULT, a checkpoint holding pickled objects, and --status's exit
status. Every failure is one line on stderr naming the file or key."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import torch

from cnnstress import atomic, store
from cnnstress.grid import MAX_NESTING, GridError, load_grid
from cnnstress.launcher import STATUS_FAILED, write_sweep_files

from conftest import REPO, tiny_grid_text

DATA = REPO / "scratch" / "test-data"
DEEP = 1000


def launch(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "CNNSTRESS_FAULT"}
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**base, **(env or {})})


def one_line(res: subprocess.CompletedProcess) -> str:
    err = res.stderr.strip()
    assert "Traceback" not in res.stderr and err.count("\n") == 0 and err, res.stderr
    return err


def one_run_grid(weird_dir: Path, name: str = "tiny") -> Path:
    """The tiny grid with its baseline only, one epoch: one run, a few seconds on a CPU."""
    path = weird_dir / "one run.toml"
    path.write_text(tiny_grid_text(name, epochs=1).replace('[variants.flip]\naugment = ["flip"]\n', ""))
    return path


# ------------------------------------------------------------------------------------------------
# grid files and --set nested too deep; a FIFO for a grid
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("where, text, named", [
    ("array", "deep = " + "[" * DEEP + "]" * DEEP + "\n", ""),  # tomllib itself recurses per level
    ("inline table", "deep = " + "{ a = " * DEEP + "1" + " }" * DEEP + "\n", ""),
    ("dotted [grid] key", None, "[grid].a.a.a"),  # parses; the key walkers recursed
])
def test_a_grid_file_nested_a_thousand_deep_is_one_line_exit_2(weird_dir, where, text, named):
    path = weird_dir / "deep grid.toml"
    base = tiny_grid_text()
    if text is None:
        path.write_text(base.replace("[grid]\n", "[grid]\n" + ".".join(["a"] * DEEP) + " = [1]\n"))
    else:
        path.write_text(text + base)
    res = launch("--grid", str(path), "--dry-run", "--out", str(weird_dir / "o"))
    err = one_line(res)
    assert res.returncode == 2 and err.startswith(f"error: {path}: ")
    assert f"at most {MAX_NESTING} levels" in err and named in err.replace("grid.a", "[grid].a")


@pytest.mark.parametrize("setting, named", [
    ("epochs=" + "[" * DEEP + "]" * DEEP, "--set: epochs: "),
    ("grid." + ".".join(["a"] * DEEP) + "=[1]", "--set: grid.a.a.a.a.a..."),
    ("stress." + ".".join(["a"] * 20) + "=" + "[" * 20 + "]" * 20, "--set: "),  # neither alone is too deep
])
def test_a_set_nested_a_thousand_deep_is_one_line_exit_2(tiny_grid, tmp_path, setting, named):
    res = launch("--grid", str(tiny_grid), "--set", setting, "--dry-run", "--out", str(tmp_path / "o"))
    err = one_line(res)
    assert res.returncode == 2 and named in err and f"at most {MAX_NESTING}" in err


def test_nesting_within_the_limit_reaches_the_usual_checks(tiny_grid):
    with pytest.raises(GridError, match=r"\[stress\]\.x: unknown key"):  # not "nested"
        load_grid(tiny_grid, overrides=["stress.x=" + "[" * 8 + "]" * 8])


def test_a_fifo_for_a_grid_is_refused_at_once(weird_dir):
    fifo = weird_dir / "grid pipe.toml"
    os.mkfifo(fifo)
    res = launch("--grid", str(fifo), "--dry-run", timeout=60)  # opening it would wait for a writer, forever
    assert res.returncode == 2
    assert one_line(res) == f"error: {fifo}: not a regular file (a FIFO); pass a .toml file"


# ------------------------------------------------------------------------------------------------
# --out on a read-only file system
# ------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def tmpfs(mount_point: Path, *options: str):
    """A real (small) file system at ``mount_point``: as root, chmod does not stop a write, a
    read-only mount does. Skips where mounting is not permitted."""
    mount_point.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(["size=4m", *options]), "tmpfs", str(mount_point)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount_read_only(mount_point: Path) -> None:
    subprocess.run(["mount", "-o", "remount,ro", str(mount_point)], check=True)


def test_out_on_a_read_only_file_system_is_one_line_exit_1(tiny_grid, weird_dir):
    with tmpfs(weird_dir / "read only", "ro") as ro:
        res = launch("--grid", str(tiny_grid), "--out", str(ro / "o u t"), "--data-root", str(DATA))
        assert res.returncode == 1
        assert one_line(res) == f"error: cannot write {ro / 'o u t'}: Read-only file system"


def test_an_existing_sweep_on_a_file_system_gone_read_only_names_the_file_not_a_temp_file(tiny_grid, weird_dir):
    """The first write is a temp file's; its cleanup's own unlink failed too (EROFS) and replaced the
    real error with a traceback naming the temp file."""
    with tmpfs(weird_dir / "was writable") as fs:
        out = fs / "o u t"
        write_sweep_files(load_grid(tiny_grid, out_root=out, data_root=DATA), out / "tiny", tiny_grid)
        remount_read_only(fs)
        # another --set changes launch.json: the launch must write it
        res = launch("--grid", str(tiny_grid), "--out", str(out), "--data-root", str(DATA), "--set", "epochs=1")
        assert res.returncode == 1
        assert one_line(res) == f"error: cannot write {out / 'tiny' / 'launch.json'}: Read-only file system"
        with pytest.raises(OSError) as caught:
            atomic.atomic_write_bytes(out / "tiny" / "x.json", b"{}")
        assert caught.value.__context__ is None  # the open's error, not the cleanup's
        assert atomic.written_path(caught.value.filename) == out / "tiny" / "x.json"


# ------------------------------------------------------------------------------------------------
# CNNSTRESS_FAULT, left set
# ------------------------------------------------------------------------------------------------

def warning_for(value: str) -> str:
    return (f"warning: CNNSTRESS_FAULT={value} is set: runs of this launch will have faults injected (a test hook); "
            "unset it for real runs")


@pytest.mark.parametrize("cluster, fault, why", [
    ("debug", "raise:epoch:1", "RuntimeError: injected failure at epoch"),
    ("local", "kill:epoch:1", "killed by signal 9 (SIGKILL: out of memory, or killed by hand)"),
])
def test_an_injected_failure_names_the_variable_everywhere_it_is_read(weird_dir, cluster, fault, why):
    grid = one_run_grid(weird_dir)
    out = weird_dir / "o u t"
    res = launch("--grid", str(grid), "--cluster", cluster, "--out", str(out), "--data-root", str(DATA),
                 "--no-gather", env={"CNNSTRESS_FAULT": fault})
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert lines[0] == warning_for(fault) and sum(warning_for(fault) in line for line in lines) == 1
    [rd] = (out / "tiny" / "runs").iterdir()
    log = (rd / "log.txt").read_text()
    assert f"WARNING: CNNSTRESS_FAULT={fault} is set: faults will be injected into this run (a test hook)" in log
    failed = json.loads((rd / "FAILED.json").read_text())
    assert failed["reason"].startswith(why) and failed["reason"].endswith(f"; CNNSTRESS_FAULT={fault} was set")
    assert failed["injected_faults"] == fault
    assert f"run {rd.name}: failed: {why}" in res.stderr and f"CNNSTRESS_FAULT={fault} was set" in lines[-1]
    status = launch("--grid", str(grid), "--out", str(out), "--data-root", str(DATA), "--status")
    assert status.returncode == STATUS_FAILED and f"CNNSTRESS_FAULT={fault} was set" in status.stdout


def test_a_run_with_the_hook_set_records_it_and_one_without_is_unchanged(weird_dir):
    grid = one_run_grid(weird_dir)
    recorded = {}
    for fault in ("slow:epoch:0.01", None):
        out = weird_dir / f"out {fault is None}"
        res = launch("--grid", str(grid), "--cluster", "debug", "--out", str(out), "--data-root", str(DATA),
                     "--no-gather", env={"CNNSTRESS_FAULT": fault} if fault else None)
        assert res.returncode == 0, res.stderr
        [rd] = (out / "tiny" / "runs").iterdir()
        assert store.run_state(rd).status == "done"  # the attribute passes validation
        with h5py.File(rd / "results.h5", "r") as fh:
            attr = fh.attrs.get("injected_faults")
        done = json.loads((rd / "DONE.json").read_text())
        recorded[fault] = (attr, done.get("injected_faults"), sorted(done), res.stderr,
                           "CNNSTRESS_FAULT" in (rd / "log.txt").read_text())
        status = launch("--grid", str(grid), "--out", str(out), "--data-root", str(DATA), "--status")
        assert status.returncode == 0
    attr, in_done, keys, stderr, logged = recorded["slow:epoch:0.01"]
    assert (attr, in_done, logged) == ("slow:epoch:0.01", "slow:epoch:0.01", True)
    assert stderr.strip() == warning_for("slow:epoch:0.01")
    attr, in_done, keys, stderr, logged = recorded[None]
    assert (attr, in_done, logged, stderr) == (None, None, False, "")
    assert keys == ["finished_at", "results_sha256", "run_id", "summary"]


# ------------------------------------------------------------------------------------------------
# a checkpoint holding pickled objects
# ------------------------------------------------------------------------------------------------

class Opens:
    """Unpickled, it would create a file: the proof that nothing of it ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_a_checkpoint_with_pickled_objects_is_refused_in_our_words_and_training_starts_over(weird_dir):
    grid = one_run_grid(weird_dir)
    out = weird_dir / "o u t"
    [spec] = load_grid(grid, out_root=out, data_root=DATA).runs
    rd = out / "tiny" / "runs" / spec.run_id
    rd.mkdir(parents=True)
    marker = weird_dir / "ran"
    torch.save({"model": Opens(marker)}, rd / "checkpoint.pt")
    res = launch("--grid", str(grid), "--cluster", "debug", "--out", str(out), "--data-root", str(DATA), "--no-gather")
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    log = (rd / "log.txt").read_text().splitlines()
    [line] = [x for x in log if "checkpoint.pt is unusable" in x]
    assert ("it holds pickled objects other than tensors, which could run arbitrary code when loaded, so it was not "
            "loaded; torch: Unsupported global: GLOBAL io.open") in line
    assert "\x1b" not in line and "two options" not in line  # not torch's how-to-load-it-anyway text
    assert any("no usable checkpoint: training starts over from the first epoch" in x for x in log)
    assert store.run_state(rd).status == "done"
