"""Runs per hour with several runs packed on one device ([slurm].runs_per_task, --runs-per-gpu).

    .venv/bin/python bench/pack.py [--quick] [--models simple_cnn,flexible_cnn,resnet18] [--k 1,2]
                                   [--runs N] [--train N] [--repeats R]

For each model, ``--runs`` real runs (shapes images, one epoch, clean accuracy only, one seed each)
are trained through cnnstress's packed task (``pack.run_pack``: one worker process a run, started
and measured exactly as a Slurm array task does) K at a time, for every K of ``--k``: K = 1 is one
run after another, each with every core (or the whole GPU); K = 2 is two at once with the cores
split between them (``OMP_NUM_THREADS``), and so on. The time is the wall clock from the first
worker's start to the last one's end, process start-up, data loading and measuring included: what
a task costs. Runs per hour = runs / time. The K orders alternate from repeat to repeat so that load
changes hit every K; the median of the repeats is shown with its spread, and the load average.

On this project's 2-core CPU only K <= 2 means anything; ``make gpu-check`` runs K = 1, 2, 4, 8 on
a GPU (bench/gpu_check.py imports ``measure``). The last line is ``ratio <model> k=<K> <x>x ...``:
runs per hour at K over runs per hour at K = 1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from _common import REPO, console, load_text, machine_text, median, spread, table

from cnnstress import pack  # noqa: E402  (after _common, which fixes the import path)
from cnnstress.grid import load_grid  # noqa: E402

DATA = REPO / "scratch" / "bench-pack" / "data"
MODEL_OPTIONS = {"simple_cnn": "{ width = 32 }", "flexible_cnn": "{}", "resnet18": "{}"}


@dataclass(frozen=True)
class Plan:
    models: tuple[str, ...]
    ks: tuple[int, ...]
    runs: int  # runs per (model, K) measurement
    n_train: int
    repeats: int


def grid_text(model: str, runs: int, n_train: int) -> str:
    """``runs`` runs of one model: shapes, one epoch, one seed each, clean accuracy only."""
    seeds = ", ".join(str(s) for s in range(1, runs + 1))
    return f"""name = "pack-{model.replace('_', '-')}"
[base]
dataset = "shapes"
dataset_options = {{ n_train = {n_train}, n_test = 200 }}
model = "{model}"
model_options = {MODEL_OPTIONS.get(model, "{}")}
epochs = 1
batch_size = 64
eval_batch_size = 200
optimizer = {{ name = "sgd", lr = 0.05, momentum = 0.9 }}
[variants.baseline]
[grid]
seed = [{seeds}]
[stress]
corruptions = []
faithfulness_samples = 0
train_embedding_samples = 0
"""


def time_packed(model: str, k: int, plan: Plan, work: Path, cpus: int) -> float:
    """Seconds to train plan.runs runs of ``model``, k at a time, in a fresh output folder."""
    grid_file = work / f"{model}.toml"
    grid_file.write_text(grid_text(model, plan.runs, plan.n_train))
    out = Path(tempfile.mkdtemp(prefix=f"k{k}-", dir=work))
    specs = [r.to_json() for r in load_grid(grid_file, out_root=out, data_root=DATA).runs]
    quiet = open(os.devnull, "w")
    stdout, stderr = sys.stdout, sys.stderr
    t0 = time.perf_counter()
    try:
        sys.stdout = sys.stderr = quiet  # the workers' lines; the pack's own go to its log function
        for i in range(0, len(specs), k):
            ends = pack.run_pack(specs[i:i + k], threads=pack.threads_per_run(k, cpus), log=lambda _: None)
            bad = [e for e in ends if e.status not in ("done", "skipped")]
            if bad:
                raise RuntimeError(f"{model} k={k}: {bad[0].run_id} {bad[0].status}: {bad[0].detail}")
    finally:
        sys.stdout, sys.stderr = stdout, stderr
        quiet.close()
    seconds = time.perf_counter() - t0
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def measure(plan: Plan, cpus: int | None = None) -> dict[str, dict[int, list[float]]]:
    """model -> K -> seconds of each repeat."""
    cpus = cpus or pack.cpus_here()
    DATA.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict[int, list[float]]] = {m: {k: [] for k in plan.ks} for m in plan.models}
    with tempfile.TemporaryDirectory(prefix="cnnstress-bench-pack-") as tmp:
        work = Path(tmp)
        for model in plan.models:
            if plan.repeats > 1:  # warm-up (the data cache); one repeat is a smoke run, where it only costs time
                time_packed(model, 1, Plan(plan.models, (1,), 1, plan.n_train, 1), work, cpus)
            for rep in range(plan.repeats):
                for k in (plan.ks if rep % 2 == 0 else tuple(reversed(plan.ks))):
                    out[model][k].append(time_packed(model, k, plan, work, cpus))
    return out


def rows(plan: Plan, seconds: dict[str, dict[int, list[float]]]) -> list[dict]:
    """One row per (model, K): median seconds, runs per hour, and that over K = 1's."""
    out = []
    for model, by_k in seconds.items():
        base = plan.runs / median(by_k[plan.ks[0]]) * 3600
        for k, values in by_k.items():
            per_hour = plan.runs / median(values) * 3600
            out.append({"model": model, "k": k, "runs": plan.runs, "seconds": round(median(values), 2),
                        "spread": spread(values), "runs_per_hour": round(per_hour, 1),
                        "vs_first_k": round(per_hour / base, 3)})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="simple_cnn only, tiny runs, one repeat (the test suite's)")
    ap.add_argument("--models", default="simple_cnn,flexible_cnn,resnet18")
    ap.add_argument("--k", default="1,2", help="runs at once to compare, the first is the reference (default 1,2)")
    ap.add_argument("--runs", type=int, default=None, help="runs per measurement (default: the largest K)")
    ap.add_argument("--train", type=int, default=2000, help="training images per run (default 2000)")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)
    try:
        ks = tuple(int(k) for k in args.k.split(","))
    except ValueError:
        ap.error(f"--k: comma-separated whole numbers, got {args.k!r}")
    if not ks or min(ks) < 1:
        ap.error(f"--k: whole numbers of at least 1, got {args.k!r}")
    models = tuple(m for m in args.models.split(",") if m)
    unknown = [m for m in models if m not in MODEL_OPTIONS]
    if unknown:
        ap.error(f"--models: {', '.join(unknown)} unknown; allowed: {', '.join(MODEL_OPTIONS)}")
    if args.quick:
        plan = Plan(("simple_cnn",), ks, max(ks), 200, 1)
    else:
        plan = Plan(models, ks, args.runs or max(ks), args.train, args.repeats)
    console.print(machine_text())
    seconds = measure(plan)
    t = table(f"runs per hour, {plan.runs} runs of {plan.n_train} training images, 1 epoch, K at once "
              f"({pack.cpus_here()} CPUs split between them)", ["model", "K", "seconds", "spread", "runs/hour",
                                                                f"vs K={ks[0]}"])
    result = rows(plan, seconds)
    for r in result:
        t.add_row(r["model"], str(r["k"]), f"{r['seconds']:.1f}", r["spread"], f"{r['runs_per_hour']:.0f}",
                  f"{r['vs_first_k']:.2f}x")
    console.print(t)
    console.print(load_text())
    print("ratio " + ", ".join(f"{r['model']} k={r['k']} {r['vs_first_k']:.2f}x" for r in result if r["k"] != ks[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
