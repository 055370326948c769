"""Training images/s: cnnstress's loop vs the usual torchvision DataLoader loop.

    .venv/bin/python bench/train_input.py [--quick] [--device cpu|cuda] [--models simple_cnn,resnet18]

ours       engine.train_one_epoch: the whole uint8 training set as one tensor on the device, index
           batches from a seeded permutation, BatchAugment crop+flip on the whole batch, channels_last
           model, soft-target cross-entropy; determinism switched on as the worker does.
usual      torchvision.datasets.CIFAR10's own object holding the shapes images (its __getitem__:
           Image.fromarray over HWC uint8), transforms.Compose([RandomCrop(32, padding=4), RandomHorizontalFlip(), ToTensor(),
           Normalize(mean, std)]), DataLoader(batch_size, shuffle=True, num_workers=2), .to(device)
           per batch, F.cross_entropy, loss.item() per step; torch's default flags.

Both: the same model (same initial weights), torch.optim.SGD(lr=0.05, momentum=0.9, nesterov,
weight_decay=5e-4), the same batch size and number of steps, the same precision (autocast as
engine.Precision decides: float32 on a CPU without bf16 units). Data: cnnstress.data.generate_shapes
at 32x32 (CIFAR is not downloadable here). Each repeat is one "epoch" of ``steps`` batches; the
DataLoader's worker start-up (time to its first batch) is excluded from its rate and shown apart,
which favours the usual loop. Warm-up steps are run first and not timed; ours and usual alternate
repeat by repeat so that load changes hit both. A third arm, "model alone", runs ours with the input
replaced by one batch made in advance: its rate over the usual loop's is the ceiling of the ratio,
what a free input pipeline would reach on this device. The last line is ``ratio <model> <ours/usual>x ...``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass

from _common import console, machine_text, median, set_threads, spread, table

import numpy as np  # noqa: E402  (after _common, which fixes the import path)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision import datasets, transforms  # noqa: E402
from torchvision.datasets.vision import VisionDataset  # noqa: E402

from cnnstress.augment import BatchAugment  # noqa: E402
from cnnstress.data import channel_stats, generate_shapes  # noqa: E402
from cnnstress.engine import DeviceData, Precision, batches, set_determinism, train_one_epoch  # noqa: E402
from cnnstress.models import build_model  # noqa: E402

NUM_CLASSES = 10
SGD = dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)


@dataclass(frozen=True)
class Plan:
    """How much of each model to run (steps per repeat, repeats, untimed warm-up steps)."""

    name: str
    options: dict
    steps: int
    repeats: int
    warmup: int


# ------------------------------------------------------------------------------------------------
# the usual way
# ------------------------------------------------------------------------------------------------


class ShapesAsCIFAR10(datasets.CIFAR10):
    """torchvision's own CIFAR10 dataset object, holding the shapes images instead of files read
    from disk (CIFAR cannot be downloaded here): ``__getitem__`` and ``__len__`` are torchvision's,
    so each item is ``Image.fromarray`` of an HWC uint8 row and the transform, exactly as in the
    reference projects."""

    def __init__(self, x_nchw: np.ndarray, y: np.ndarray, transform) -> None:
        VisionDataset.__init__(self, root="", transform=transform)  # not CIFAR10.__init__: no files
        self.train = True
        self.data = np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1))  # HWC, as CIFAR10 keeps it
        self.targets = [int(t) for t in y]


def usual_loader(x: np.ndarray, y: np.ndarray, mean, std, batch_size: int, workers: int) -> DataLoader:
    tf = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    return DataLoader(ShapesAsCIFAR10(x, y, tf), batch_size=batch_size, shuffle=True, num_workers=workers)


def usual_mode() -> None:
    """torch's default flags, as a course notebook leaves them."""
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = False
    torch.backends.cudnn.benchmark = False


def usual_epoch(model, loader: DataLoader, optimizer, precision: Precision, device: torch.device,
                sync, max_steps: int | None = None) -> tuple[float, float, int]:
    """One pass over ``loader``: (seconds from the first batch on, seconds to the first batch, images)."""
    model.train()
    scaler = precision.scaler()
    running_loss, correct, seen = 0.0, 0, 0
    t_iter = time.perf_counter()
    t0 = startup = None
    for i, (xb, yb) in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()
            startup = t0 - t_iter
        if max_steps is not None and i >= max_steps:
            break
        xb, yb = xb.to(device), yb.to(device)
        with precision.autocast():
            out = model(xb)
            loss = F.cross_entropy(out, yb)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        running_loss += loss.item()
        correct += (out.argmax(1) == yb).sum().item()
        seen += yb.shape[0]
    sync()
    return time.perf_counter() - t0, startup, seen


def usual_pipeline(loader: DataLoader, device: torch.device, sync) -> tuple[float, float, int]:
    """The loader alone: (seconds from the first batch on, seconds to the first batch, batches)."""
    t_iter = time.perf_counter()
    t0 = startup = None
    n = 0
    for i, (xb, yb) in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()
            startup = t0 - t_iter
        xb, yb = xb.to(device), yb.to(device)
        n += 1
    sync()
    return time.perf_counter() - t0, startup, n


# ------------------------------------------------------------------------------------------------
# ours
# ------------------------------------------------------------------------------------------------


def ours_mode() -> None:
    set_determinism(0, True)  # what the worker does (grid default deterministic = true)


def ours_epoch(model, data: DeviceData, augment: BatchAugment, optimizer, precision: Precision,
               generator: torch.Generator, batch_size: int, sync) -> tuple[float, int]:
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = precision.scaler()
    t0 = time.perf_counter()
    train_one_epoch(model, data, augment, optimizer, scheduler, scaler, precision, generator, batch_size)
    sync()
    return time.perf_counter() - t0, len(data)


def ours_pipeline(data: DeviceData, augment: BatchAugment, generator: torch.Generator, batch_size: int,
                  sync) -> tuple[float, int]:
    """The input side of train_one_epoch alone (permutation, slicing, BatchAugment)."""
    t0 = time.perf_counter()
    n = 0
    for idx in batches(len(data), batch_size, generator):
        augment(data.x[idx], data.y[idx], generator)
        n += 1
    sync()
    return time.perf_counter() - t0, n


def fixed_batch_augment(augment: BatchAugment, data: DeviceData, generator: torch.Generator, batch_size: int):
    """An augment that returns one batch made in advance: train_one_epoch with it costs the model's
    step alone, the ceiling that any input pipeline can reach on this device."""
    batch = augment(data.x[:batch_size], data.y[:batch_size], generator)
    return lambda x, y, g: batch


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------


def make_models(plan: Plan, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    ours = build_model(plan.name, NUM_CLASSES, **plan.options).to(device).to(memory_format=torch.channels_last)
    torch.manual_seed(0)
    usual = build_model(plan.name, NUM_CLASSES, **plan.options).to(device)
    return ours, usual


def bench_training(plan: Plan, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device,
                   precision: Precision, batch_size: int, workers: int, sync) -> dict:
    n = plan.steps * batch_size
    ours_model, usual_model = make_models(plan, device)
    ours_opt = torch.optim.SGD(ours_model.parameters(), **SGD)
    usual_opt = torch.optim.SGD(usual_model.parameters(), **SGD)
    augment = BatchAugment(["crop", "flip"], mean=mean, std=std, num_classes=NUM_CLASSES)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    data = DeviceData.from_numpy(x[:n], y[:n], device)
    warm = DeviceData.from_numpy(x[:plan.warmup * batch_size], y[:plan.warmup * batch_size], device)
    loader = usual_loader(x[:n], y[:n], mean, std, batch_size, workers)

    # warm-up (untimed): allocator, oneDNN/cuDNN primitives, autocast caches
    ours_mode()
    ours_epoch(ours_model, warm, augment, ours_opt, precision, gen, batch_size, sync)
    usual_mode()
    usual_epoch(usual_model, loader, usual_opt, precision, device, sync, max_steps=plan.warmup)

    # the model alone: ours, with the input replaced by one batch made in advance
    alone_model, _ = make_models(plan, device)
    alone_opt = torch.optim.SGD(alone_model.parameters(), **SGD)
    ours_mode()
    fixed = fixed_batch_augment(augment, data, gen, batch_size)
    ours_epoch(alone_model, warm, fixed, alone_opt, precision, gen, batch_size, sync)

    ours_rates, usual_rates, alone_rates, startups = [], [], [], []
    for _ in range(plan.repeats):
        usual_mode()
        seconds, startup, seen = usual_epoch(usual_model, loader, usual_opt, precision, device, sync)
        usual_rates.append(seen / seconds)
        startups.append(startup)
        ours_mode()
        seconds, seen = ours_epoch(ours_model, data, augment, ours_opt, precision, gen, batch_size, sync)
        ours_rates.append(seen / seconds)
        seconds, seen = ours_epoch(alone_model, data, fixed, alone_opt, precision, gen, batch_size, sync)
        alone_rates.append(seen / seconds)
    return {"ours": ours_rates, "usual": usual_rates, "alone": alone_rates, "startup": startups}


def bench_pipeline(x: np.ndarray, y: np.ndarray, mean, std, device: torch.device, batch_size: int,
                   workers: int, n_batches: int, repeats: int, sync) -> dict:
    n = n_batches * batch_size
    data = DeviceData.from_numpy(x[:n], y[:n], device)
    augment = BatchAugment(["crop", "flip"], mean=mean, std=std, num_classes=NUM_CLASSES)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    loader = usual_loader(x[:n], y[:n], mean, std, batch_size, workers)
    ours_mode()
    ours_pipeline(data, augment, gen, batch_size, sync)  # warm-up
    ours_rates, usual_rates, startups = [], [], []
    for _ in range(repeats):
        usual_mode()
        seconds, startup, nb = usual_pipeline(loader, device, sync)
        # the first batch is excluded from the usual rate (worker start-up); count the rest
        usual_rates.append((nb - 1) / seconds)
        startups.append(startup)
        ours_mode()
        seconds, nb = ours_pipeline(data, augment, gen, batch_size, sync)
        ours_rates.append(nb / seconds)
    return {"ours": ours_rates, "usual": usual_rates, "startup": startups}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny smoke run (< 20 s): simple_cnn width 8 only, batch 64, 1 thread")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", default="simple_cnn,resnet18", help="comma-separated: simple_cnn,resnet18")
    ap.add_argument("--batch-size", type=int, default=None, help="default 128 (--quick: 64)")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers of the usual loop")
    ap.add_argument("--steps", type=int, default=None, help="steps per repeat for simple_cnn")
    ap.add_argument("--resnet-steps", type=int, default=None, help="steps per repeat for resnet18")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--no-amp", action="store_true", help="float32 everywhere (CPU without bf16: always)")
    ap.add_argument("--amp-dtype", default="bfloat16", choices=("bfloat16", "float16"))
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    return ap.parse_args()


def plans(args: argparse.Namespace, cuda: bool) -> list[Plan]:
    if args.quick:
        return [Plan("simple_cnn", {"width": 8}, args.steps or 2, args.repeats or 2, 1)]
    repeats = args.repeats or 3
    # CPU: resnet18 takes ~10-20 s per batch of 128 on this 2-core machine, hence one step per repeat
    simple = Plan("simple_cnn", {"width": 32}, args.steps or (300 if cuda else 6), repeats, 20 if cuda else 1)
    resnet = Plan("resnet18", {}, args.resnet_steps or (300 if cuda else 1),
                  args.repeats or (3 if cuda else 2), 20 if cuda else 1)
    chosen = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in ("simple_cnn", "resnet18")]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; valid: simple_cnn, resnet18")
    return [p for p in (simple, resnet) if p.name in chosen]


def main() -> None:
    args = parse_args()
    # --quick is a smoke run: one thread avoids OpenMP threads waiting on a busy machine
    set_threads(args.threads if args.threads is not None or not args.quick else 1)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if cuda:
        # cuBLAS reads this when its handle is created: before the first CUDA matmul (engine.set_determinism)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    precision = Precision.for_device(device, amp=not args.no_amp, amp_dtype=args.amp_dtype)
    bs = args.batch_size or (64 if args.quick else 128)
    todo = plans(args, cuda)
    pipe_batches = 4 if args.quick else (400 if cuda else 30)
    n_needed = max([p.steps for p in todo] + [p.warmup for p in todo] + [pipe_batches]) * bs

    t_gen = time.perf_counter()
    x, y, _, _ = generate_shapes(n_needed, seed=0, shortcut=0.8)
    mean, std = channel_stats(x)
    gen_s = time.perf_counter() - t_gen
    prec = str(precision.dtype).replace("torch.", "") + " autocast" if precision.enabled else "float32"
    console.print(f"[bold]training input benchmark[/bold] on {device} ({prec}), batch {bs}, "
                  f"usual loop with {args.workers} DataLoader workers; {len(x)} shapes images generated in {gen_s:.1f}s")
    console.print(machine_text(args.device))

    t = table("training: images/s (median of repeats; min-max in brackets)",
              ["model", "steps x repeats", "usual DataLoader loop", "cnnstress loop", "ratio",
               "model alone (no input work)", "ceiling ratio", "usual: loader start-up s/epoch"])
    ratios: list[tuple[str, float]] = []
    for plan in todo:
        r = bench_training(plan, x, y, mean, std, device, precision, bs, args.workers, sync)
        ratio = median(r["ours"]) / median(r["usual"])
        ratios.append((plan.name, ratio))
        label = plan.name + (f" (width {plan.options['width']})" if "width" in plan.options else "")
        t.add_row(label, f"{plan.steps} x {plan.repeats}",
                  f"{median(r['usual']):.1f} [{spread(r['usual'])}]", f"{median(r['ours']):.1f} [{spread(r['ours'])}]",
                  f"{ratio:.2f}x", f"{median(r['alone']):.1f} [{spread(r['alone'])}]",
                  f"{median(r['alone']) / median(r['usual']):.2f}x", f"{median(r['startup']):.2f}")
        console.print(f"  done {plan.name} ({machine_text(args.device).split('; ')[-1]})")
    console.print(t)
    console.print("ceiling ratio: the model's step alone (one batch made in advance, no input work) over the "
                  "usual loop; no input pipeline can beat it on this device")

    p = bench_pipeline(x, y, mean, std, device, bs, args.workers, pipe_batches, 2 if args.quick else 3, sync)
    pipe_ratio = median(p["ours"]) / median(p["usual"])
    t2 = table("input pipeline alone (no model): batches/s", ["pipeline", "batches x repeats", "batches/s",
                                                                   "images/s"])
    t2.add_row(f"usual: DataLoader, {args.workers} workers, PIL transforms", f"{pipe_batches} x {len(p['usual'])}",
               f"{median(p['usual']):.1f} [{spread(p['usual'])}]", f"{median(p['usual']) * bs:.0f}")
    t2.add_row("cnnstress: tensor slicing + BatchAugment", f"{pipe_batches} x {len(p['ours'])}",
               f"{median(p['ours']):.1f} [{spread(p['ours'])}]", f"{median(p['ours']) * bs:.0f}")
    console.print(t2)
    console.print(f"input pipeline alone: cnnstress {pipe_ratio:.1f}x the usual loader's batches/s; "
                  f"usual loader start-up {median(p['startup']):.2f}s per epoch (excluded above)")
    console.print(f"after: {machine_text(args.device)}")
    print("ratio " + " ".join(f"{name} {ratio:.2f}x" for name, ratio in ratios) + f" pipeline {pipe_ratio:.1f}x")


if __name__ == "__main__":
    main()
