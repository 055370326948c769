"""Shared helpers of the benchmark scripts: import path, machine description, timing, tables.

Every benchmark prints one rich table and ends with a single line ``ratio ...`` (the number a test
or a person reads). Timings are the median of a few repeats with warm-up excluded; the load average
is printed next to them because the CI machine's two cores are shared.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    # ``python bench/x.py`` puts bench/ on the path, not the repository root
    sys.path.insert(0, str(REPO))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

# wide enough for the tables when the output is a pipe or a file (rich would assume 80 columns)
console = Console(highlight=False, width=None if sys.stdout.isatty() else 150)


def set_threads(n: int | None) -> None:
    """torch intra-op threads (None: torch's default, one per core). On a shared, loaded machine
    two OpenMP threads can make small tensor ops 10x slower (threads wait for each other while
    other processes hold the cores), so the benchmarks can be rerun with --threads 1."""
    if n is not None:
        import torch

        torch.set_num_threads(n)


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_text() -> str:
    """``load 1.72 2.59 2.10`` (1, 5 and 15 minute load averages)."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f}"


def machine_text(device: str = "cpu") -> str:
    """One line naming the machine, the device, torch (if imported) and the current load."""
    parts = [f"{os.cpu_count()}-core CPU ({cpu_name()})"]
    torch = sys.modules.get("torch")
    if torch is not None:
        parts.append(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        if device.startswith("cuda") and torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name()}")
    parts.append(load_text())
    return "; ".join(parts)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def timed(fn: Callable[[], object], sync: Callable[[], None] | None = None) -> float:
    """Seconds one call of ``fn`` takes (``sync`` is called before both clock reads, e.g. CUDA)."""
    if sync is not None:
        sync()
    t0 = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - t0


def spread(values: list[float]) -> str:
    """``min-max`` of a list of numbers, for showing how noisy repeats were."""
    return f"{min(values):.3g}-{max(values):.3g}"


def table(title: str, columns: list[str]) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    return t
