"""Expanding and dry-running a 5 000-run grid.

    .venv/bin/python bench/launch.py [--quick] [--runs 5000] [--profile]

The grid is jobs/demo.toml's settings with 2 variants x 100 seeds x 25 learning rates (5 000 runs;
--runs picks the number of learning rates). Measured:

* ``python launch.py --grid G --dry-run`` in a subprocess: wall time including interpreter start
  and imports, with stdout captured (the 5 000-row table is printed into a pipe);
* ``python -c "import cnnstress.launcher"``: the interpreter + import part of that;
* in-process: ``grid.load_grid`` alone, and the launcher's ``print_runs`` alone (into a string).

Median of ``--repeats`` (after one untimed warm-up of each). The target is a dry run under 3 s.
When the dry run is slower (or with --profile) the in-process dry run of (at most) 1 000 runs is
profiled with cProfile and the top functions by cumulative and by own time are printed. When the
first (warm-up) dry run already takes over 15 s, one timed repeat is made instead of three. The last line is
``ratio dry-run <s>s (target 3s) load_grid <s>s``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, console, machine_text, median, spread, table, timed

TARGET_S = 3.0
PROFILE_RUNS = 1000
N_SEEDS = 100
N_VARIANTS = 2


def grid_text(n_lrs: int) -> str:
    """The demo grid's settings with a [grid] of N_SEEDS seeds x ``n_lrs`` learning rates."""
    seeds = ", ".join(str(42 + i) for i in range(N_SEEDS))
    lrs = ", ".join(f"{0.001 * (i + 1):.3f}" for i in range(n_lrs))
    return f"""name = "bench-launch"
description = "{N_VARIANTS} variants x {N_SEEDS} seeds x {n_lrs} learning rates"
[base]
dataset = "shapes"
dataset_options = {{ n_train = 4000, n_test = 1000, shortcut = 0.8 }}
model = "simple_cnn"
model_options = {{ width = 16 }}
epochs = 6
batch_size = 128
optimizer = {{ name = "adam", lr = 0.003 }}
schedule = {{ name = "cosine" }}
augment = []
[variants.baseline]
[variants.cropflip]
augment = ["crop", "flip"]
[grid]
seed = [{seeds}]
optimizer.lr = [{lrs}]
[compare]
baseline = "baseline"
[stress]
corruptions = ["gaussian_noise", "gaussian_blur", "contrast", "jpeg"]
severities = [1, 3, 5]
[report]
gradcam_layer = "block3"
"""


def run_cli(args: list[str]) -> float:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    return wall


def dry_run_in_process(grid_path: Path, out: Path) -> None:
    from cnnstress import launcher

    sink = io.StringIO()
    real_stdout = sys.stdout
    sys.stdout = sink  # the launcher's Console writes to sys.stdout
    try:
        rc = launcher.main(["--grid", str(grid_path), "--dry-run", "--out", str(out)])
    finally:
        sys.stdout = real_stdout
    if rc != 0:
        raise RuntimeError(f"dry run exited {rc}")


def profile_dry_run(grid_path: Path, out: Path, top: int) -> str:
    pr = cProfile.Profile()
    pr.enable()
    dry_run_in_process(grid_path, out)
    pr.disable()
    buf = io.StringIO()
    st = pstats.Stats(pr, stream=buf)
    st.sort_stats("cumulative").print_stats(top)
    st.sort_stats("tottime").print_stats(top)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny smoke run (< 20 s): 400 runs, 1 repeat")
    ap.add_argument("--runs", type=int, default=None, help="runs in the grid, a multiple of 200 (default 5000)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--profile", action="store_true", help="always print the cProfile of the dry run")
    args = ap.parse_args()
    runs = args.runs or (400 if args.quick else 5000)
    per_lr = N_SEEDS * N_VARIANTS
    if runs % per_lr:
        raise SystemExit(f"--runs must be a multiple of {per_lr}, got {runs}")
    repeats = args.repeats or (1 if args.quick else 3)

    tmp = Path(tempfile.mkdtemp(prefix="cnnstress-bench-launch-"))
    try:
        grid_path = tmp / "grid.toml"
        grid_path.write_text(grid_text(runs // per_lr), encoding="utf-8")
        out = tmp / "out"
        console.print(f"[bold]launch benchmark[/bold]: {runs} runs ({N_VARIANTS} variants x {N_SEEDS} seeds x "
                      f"{runs // per_lr} learning rates), grid {grid_path.stat().st_size} bytes")
        console.print(machine_text())

        from cnnstress.grid import load_grid

        cli = ["launch.py", "--grid", str(grid_path), "--dry-run", "--out", str(out)]
        imp = ["-c", "import cnnstress.launcher"]
        first = run_cli(cli)  # warm-up (untimed): .pyc files, page cache
        load_grid(grid_path, out_root=out)
        if first > 5 * TARGET_S and args.repeats is None:
            repeats = 1  # far over the target: one more repeat says as much and keeps the run short
        console.print(f"warm-up dry run: {first:.2f}s; {repeats} timed repeat(s)")
        dry, imports, loads, prints = [], [], [], []
        for _ in range(repeats):
            dry.append(run_cli(cli))
            imports.append(run_cli(imp))
            loads.append(timed(lambda: load_grid(grid_path, out_root=out)))
            grid = load_grid(grid_path, out_root=out)
            assert len(grid.runs) == runs, f"the grid expanded to {len(grid.runs)} runs, expected {runs}"
            prints.append(timed(lambda: print_runs_to_string(grid, out)))
        t = table(f"{runs}-run grid: seconds (median of {repeats}; min-max)",
                  ["what", "seconds", "min-max", "per run (ms)"])
        t.add_row("python launch.py --grid G --dry-run (subprocess, wall)", f"{median(dry):.2f}", spread(dry),
                  f"{1000 * median(dry) / runs:.3f}")
        t.add_row("  of which: interpreter start + import cnnstress.launcher", f"{median(imports):.2f}",
                  spread(imports), "")
        t.add_row("grid.load_grid (in-process)", f"{median(loads):.2f}", spread(loads),
                  f"{1000 * median(loads) / runs:.3f}")
        t.add_row("launcher.print_runs (in-process, into a string)", f"{median(prints):.2f}", spread(prints),
                  f"{1000 * median(prints) / runs:.3f}")
        console.print(t)
        ok = median(dry) < TARGET_S
        console.print(f"dry run {median(dry):.2f}s: target < {TARGET_S:g}s {'met' if ok else 'NOT met'}")
        if not ok or args.profile:
            # cProfile slows rich's rendering ~4x: profile at most PROFILE_RUNS runs (cost is per run)
            prof_path = grid_path
            if runs > PROFILE_RUNS:
                prof_path = tmp / "grid-profile.toml"
                prof_path.write_text(grid_text(PROFILE_RUNS // per_lr), encoding="utf-8")
            console.print(f"cProfile of the in-process dry run (load_grid + print_runs) of "
                          f"{min(runs, PROFILE_RUNS)} runs:")
            console.print(profile_dry_run(prof_path, out, 25), markup=False, highlight=False)
        console.print(f"after: {machine_text()}")
        print(f"ratio dry-run {median(dry):.2f}s (target {TARGET_S:g}s) load_grid {median(loads):.2f}s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_runs_to_string(grid, out: Path) -> str:
    from rich.console import Console

    from cnnstress.launcher import print_runs

    buf = io.StringIO()
    print_runs(grid, out / grid.name, Console(file=buf, width=80))
    return buf.getvalue()


if __name__ == "__main__":
    main()
