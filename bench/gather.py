"""Gather time and peak memory vs number of runs.

    .venv/bin/python bench/gather.py [--quick] [--sizes 8,32,128] [--n-test 10000] [--keep DIR]

One synthetic sweep is written with tests/synth.py (results.h5 through store.publish_results,
DONE.json through store.write_done; no training): 4 variants x S seeds, shapes test set of
``--n-test`` images x 10 classes, 4 corruptions x 3 severities, val logits, a training-embedding
subset and faithfulness curves, like the demo grid. Its generation time is reported apart (it is
not part of gather). For each size N the grid of the first N/4 seeds is gathered with
``gather(sweep_dir, grid=...)`` (the runs of the other seeds are not read), each in a fresh
Python process that reports: seconds inside gather (imports excluded), the process's peak resident
memory (VmHWM from /proc/self/status) after the imports and after gather, and the wall time of
the whole process. A first, untimed gather of the smallest size warms the page cache and the
dataset cache (not in --quick). Gather time is fitted as fixed + marginal x runs. The last line is
``ratio per-run <t(Nmax)/Nmax over t(Nmin)/Nmin>x peak-memory <peak(Nmax)/peak(Nmin)>x marginal
<s>/run fixed <s> fit-residual <%>``: a small residual means time linear in runs, a peak-memory
ratio near 1 flat memory.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, console, load_text, machine_text, table

import numpy as np  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))  # tests/synth.py, the project's synthetic sweep writer

VARIANTS = ("baseline", "cropflip", "flip", "crop")
CORRUPTIONS = ("gaussian_noise", "gaussian_blur", "contrast", "jpeg")
SEVERITIES = (1, 3, 5)

# Runs in a fresh interpreter: argv = sweep_dir, grid_path, out_root. Prints one JSON line.
CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
from pathlib import Path
from rich.console import Console
from cnnstress.gather import gather
from cnnstress.grid import load_grid

def hwm_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")

t_import = time.perf_counter() - t0
hwm_import = hwm_mib()
sweep_dir, grid_path, out_root = sys.argv[1:4]
t1 = time.perf_counter()
grid = load_grid(grid_path, out_root=out_root)
with open(os.devnull, "w") as devnull:
    gather(Path(sweep_dir), grid=grid, console=Console(file=devnull))
seconds = time.perf_counter() - t1
import resource
print(json.dumps({"seconds": seconds, "import_s": t_import, "hwm_import_mib": hwm_import,
                  "hwm_mib": hwm_mib(), "maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
                  "runs": len(grid.runs)}))
"""


def write_sweep(root: Path, seeds: int, n_test: int, quick: bool) -> tuple[Path, float]:
    """The synthetic sweep (4 variants x ``seeds`` seeds) and the seconds it took to write."""
    import synth

    t0 = time.perf_counter()
    corruptions, severities = (CORRUPTIONS[:1], SEVERITIES[:1]) if quick else (CORRUPTIONS, SEVERITIES)
    synth.make_sweep(root, name="bench", variants=VARIANTS, seeds=tuple(range(1, seeds + 1)), n_test=n_test,
                     corruptions=corruptions, severities=severities)
    return root / "bench", time.perf_counter() - t0


def subset_grid(sweep_dir: Path, root: Path, seeds: int, folder: Path) -> Path:
    """A copy of the sweep's grid.toml listing only the first ``seeds`` seeds."""
    text = (sweep_dir / "grid.toml").read_text(encoding="utf-8")
    lines = [f"seed = [{', '.join(str(s) for s in range(1, seeds + 1))}]" if ln.startswith("seed = [") else ln
             for ln in text.splitlines()]
    path = folder / f"grid-{seeds}.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def check_subset(grid_path: Path, root: Path, sweep_dir: Path, expected: int) -> None:
    """The subset grid must name runs that exist in the written sweep (same run ids)."""
    from cnnstress.grid import load_grid

    grid = load_grid(grid_path, out_root=root)
    missing = [r.run_id for r in grid.runs if not (sweep_dir / "runs" / r.run_id / "DONE.json").exists()]
    if len(grid.runs) != expected or missing:
        raise SystemExit(f"subset grid {grid_path} names {len(grid.runs)} runs, {len(missing)} not written")


def gather_in_child(sweep_dir: Path, grid_path: Path, root: Path) -> dict:
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", CHILD, str(sweep_dir), str(grid_path), str(root)],
                         cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"gather failed (exit {res.returncode}):\n{res.stderr[-3000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    out["wall_s"] = wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run (about 15 s, most of it the report's fixed cost): one gather of 4 runs of 500 images")
    ap.add_argument("--sizes", default=None, help="comma-separated run counts, multiples of 4 (default 8,32,128)")
    ap.add_argument("--n-test", type=int, default=None, help="test images per run (default 10000)")
    ap.add_argument("--keep", type=Path, default=None, help="write the synthetic sweep here and keep it")
    args = ap.parse_args()
    sizes = sorted(int(s) for s in (args.sizes or ("4" if args.quick else "8,32,128")).split(","))
    if any(s < 4 or s % len(VARIANTS) for s in sizes):
        raise SystemExit(f"--sizes must be multiples of {len(VARIANTS)} (variants x seeds), got {sizes}")
    n_test = args.n_test or (500 if args.quick else 10_000)

    root = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="cnnstress-bench-gather-"))
    root.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]gather benchmark[/bold]: 4 variants x seeds, {n_test} test images x 10 classes, "
                  f"in {root}")
    console.print(machine_text())
    try:
        sweep_dir, gen_s = write_sweep(root, sizes[-1] // len(VARIANTS), n_test, args.quick)
        size_mib = sum(p.stat().st_size for p in (sweep_dir / "runs").rglob("*")) / 2**20
        console.print(f"synthetic sweep: {sizes[-1]} runs ({size_mib:.0f} MiB) written in {gen_s:.1f}s "
                      f"({gen_s / sizes[-1]:.2f}s per run, including the shapes test set); not part of gather")
        grids = {}
        for n in sizes:
            grids[n] = subset_grid(sweep_dir, root, n // len(VARIANTS), root)
            check_subset(grids[n], root, sweep_dir, n)
        if not args.quick:  # (--quick skips it to stay short)
            gather_in_child(sweep_dir, grids[sizes[0]], root)  # warm-up, untimed
        t = table("gather: one fresh process per size", ["runs", "gather s", "s per run", "peak RSS MiB",
                                                         "RSS after imports MiB", "process wall s", "load"])
        rows = []
        for n in sizes:
            r = gather_in_child(sweep_dir, grids[n], root)
            rows.append((n, r))
            t.add_row(str(n), f"{r['seconds']:.1f}", f"{r['seconds'] / n:.3f}", f"{r['hwm_mib']:.0f}",
                      f"{r['hwm_import_mib']:.0f}", f"{r['wall_s']:.1f}", load_text().removeprefix("load "))
            console.print(f"  gathered {n} runs in {r['seconds']:.1f}s ({load_text()})")
        console.print(t)
        (n0, r0), (n1, r1) = rows[0], rows[-1]
        per_run = (r1["seconds"] / n1) / (r0["seconds"] / n0)
        mem = r1["hwm_mib"] / r0["hwm_mib"]
        if len(rows) >= 2:
            # time = fixed + marginal * runs (least squares); the fixed part is mostly the report's
            # figures, the marginal part reading one run; the residual says how straight the line is
            ns = np.array([n for n, _ in rows], dtype=float)
            ts = np.array([r["seconds"] for _, r in rows])
            marginal, fixed = np.polyfit(ns, ts, 1)
            resid = float(np.max(np.abs(fixed + marginal * ns - ts) / ts))
            mem_per_run = (r1["hwm_mib"] - r0["hwm_mib"]) / (n1 - n0)
            console.print(f"time = {fixed:.1f}s + {marginal:.3f}s x runs (largest residual {100 * resid:.1f}%); "
                          f"per-run time {n1} vs {n0} runs: {per_run:.2f}x; peak memory {r1['hwm_mib']:.0f} vs "
                          f"{r0['hwm_mib']:.0f} MiB ({mem:.2f}x, {mem_per_run:+.2f} MiB per extra run)")
            fit = f" marginal {marginal:.3f}s/run fixed {fixed:.1f}s fit-residual {100 * resid:.1f}%"
        else:
            fit = " (one size only: no fit)"
        console.print(f"after: {machine_text()}")
        print(f"ratio per-run {per_run:.2f}x peak-memory {mem:.2f}x" + fit)
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
