"""Decoding your own images: PNG images/s one by one, on a thread pool and on a process pool, and
the time to reload the decoded cache.

    .venv/bin/python bench/decode.py [--quick] [--images 2000] [--sizes 32,64] [--workers N]

For each size S, ``--images`` PNGs are generated (S x (S + 8): RGB noise over a colour ramp, so the
shorter-side resize and the centre crop both run) in a temporary folder, then
cnnstress.data.decode_images runs on them serially, on threads and on processes (``--workers``,
default: the CPUs of this task, os.sched_getaffinity), and cnnstress.data.decode_cached reads the
cache a first decode wrote. Each arm is the median of ``--repeats``, the arms interleaved (the page
cache is warm after the generation; a cold disk is slower for every arm alike). Every parallel
result is checked to be the serial one byte for byte. Per-core rate = images/s / workers.

The reference measured in the same run, ``ceiling``: how much faster ``workers`` processes run a
pure-Python loop than one process runs it ``workers`` times, the most any pool can gain on this
machine (shared or throttled virtual CPUs give far less than ``workers``). The last line is
``ratio ceiling <c>x <size> thread <t/serial>x process <p/serial>x reload <decode/reload>x ...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _common import console, machine_text, median, spread, table

import numpy as np  # noqa: E402  (after _common, which fixes the import path)
from PIL import Image  # noqa: E402

from cnnstress import data  # noqa: E402


def make_pngs(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 200, size + 8, dtype=np.float32)
    files = []
    for i in range(n):
        img = ramp[None, :, None] * rng.random(3, dtype=np.float32)[None, None, :] + rng.integers(0, 55, (size, size + 8, 3))
        path = folder / f"img{i:05d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        files.append(path)
    return files


def _spin(n: int) -> int:
    total = 0
    for i in range(n):
        total += i
    return total


def ceiling(workers: int, n: int = 3_000_000) -> float:
    """How much faster ``workers`` processes run a pure-Python loop than one process runs it
    ``workers`` times: what any pool can gain on this machine at best (shared or throttled virtual
    CPUs give far less than ``workers``)."""
    import multiprocessing

    t0 = time.perf_counter()
    for _ in range(workers):
        _spin(n)
    alone = time.perf_counter() - t0
    with multiprocessing.get_context("forkserver").Pool(workers) as pool:
        pool.map(_spin, [1] * workers)  # started before the clock
        t0 = time.perf_counter()
        pool.map(_spin, [n] * workers)
        together = time.perf_counter() - t0
    return alone / together


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 images, one repeat (a smoke test)")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--sizes", default="32,64")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=None, help="pool size (default: the CPUs of this task)")
    args = ap.parse_args()
    n = 200 if args.quick else args.images
    repeats = 1 if args.quick else args.repeats
    workers = args.workers or data._n_workers()
    sizes = [int(s) for s in args.sizes.split(",")]
    console.print(f"[bold]decode benchmark[/bold]: {n} PNGs per size, {workers} workers, median of {repeats}")
    console.print(machine_text())
    top = ceiling(workers)
    console.print(f"ceiling: {workers} processes run a Python loop {top:.2f}x as fast as one (the most a pool can gain here)")
    t = table("PNG decode (shorter side resized, centre-cropped) and cache reload",
              ["size", "arm", "seconds", "images/s", "images/s per core", "vs serial", "same bytes"])
    ratios = []
    tmp = Path(tempfile.mkdtemp(prefix="cnnstress decode bench "))
    try:
        for size in sizes:
            folder = tmp / f"png {size}"
            folder.mkdir()
            t0 = time.perf_counter()
            files = make_pngs(folder, n, size)
            console.print(f"  {n} PNGs of {size}x{size + 8} written in {time.perf_counter() - t0:.1f}s")
            results: dict[str, list[float]] = {}
            arrays: dict[str, np.ndarray] = {}
            for _ in range(repeats):  # arms interleaved so that load changes hit each alike
                for arm in ("serial", "thread", "process"):
                    t0 = time.perf_counter()
                    arrays[arm] = data.decode_images(files, size, pool=arm, workers=workers)
                    results.setdefault(arm, []).append(time.perf_counter() - t0)
            data.decode_cached(folder, "bench", size, files)  # writes the cache
            reload = []
            for _ in range(max(3, repeats)):
                t0 = time.perf_counter()
                cached = data.decode_cached(folder, "bench", size, files)
                reload.append(time.perf_counter() - t0)
            serial = median(results["serial"])
            for arm in ("serial", "thread", "process"):
                sec = median(results[arm])
                cores = 1 if arm == "serial" else workers
                t.add_row(f"{size}px", arm, f"{sec:.3f} [{spread(results[arm])}]", f"{n / sec:.0f}",
                          f"{n / sec / cores:.0f}", f"{serial / sec:.2f}x",
                          "yes" if np.array_equal(arrays[arm], arrays["serial"]) else "NO")
            sec = median(reload)
            t.add_row(f"{size}px", "cache reload", f"{sec:.4f} [{spread(reload)}]", f"{n / sec:.0f}", "",
                      f"{serial / sec:.0f}x", "yes" if np.array_equal(cached, arrays["serial"]) else "NO")
            ratios.append(f"{size} thread {serial / median(results['thread']):.2f}x process "
                          f"{serial / median(results['process']):.2f}x reload {serial / sec:.0f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    console.print(t)
    console.print(f"after: {machine_text()}")
    print(f"ratio ceiling {top:.2f}x " + " ".join(ratios))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
