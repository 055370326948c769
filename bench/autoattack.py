"""What AutoAttack adds to a run: seconds per attacked image, AutoAttack vs the PGD probe, same run.

    .venv/bin/python bench/autoattack.py [--quick] [--device cpu|cuda] [--images 32] [--width 8] [--train-steps 40]
                                         [--threads N]

A simple_cnn (``--width``) trained briefly on shapes (engine.train_one_epoch, as bench/gradcam.py)
is attacked on ``--images`` shapes test images at two L-inf radii: 8/255 (RobustBench's; a
standard model is broken by APGD-CE on nearly every image, so the later attacks have little left)
and 1/255 (more images survive APGD-CE, so APGD-T, FAB-T and Square run too: the costly case).
Columns: PGD as the adversarial probe runs it (cnnstress.attacks.sweep, 10 steps, the radius
alone), AutoAttack standard with the reference's settings (cnnstress.autoattack.run: 100
iterations, 9 target classes, 5000 Square queries), their robust accuracies and the seconds of
each attack. Batch 256 (the worker's). The last line is ``ratio autoattack/pgd <8/255>x <1/255>x``
(seconds per image).
"""

from __future__ import annotations

import argparse
import time

from _common import console, machine_text, set_threads, table

import torch  # noqa: E402

from cnnstress import attacks, autoattack  # noqa: E402
from cnnstress.data import channel_stats, generate_shapes  # noqa: E402
from cnnstress.engine import Precision, Predictor  # noqa: E402
from cnnstress.models import build_model  # noqa: E402

from gradcam import brief_training  # noqa: E402

BATCH = 256


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 images, 10 iterations, 200 queries: a smoke run")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--train-steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    set_threads(args.threads if args.threads is not None or not args.quick else 1)
    device = torch.device(args.device)
    n = args.images or (8 if args.quick else 32)
    args.train_steps = min(args.train_steps, 8) if args.quick else args.train_steps
    steps, queries = (10, 200) if args.quick else (100, 5000)

    x_train, y_train, _, _ = generate_shapes(max(1, args.train_steps) * 64, seed=1, shortcut=0.8)
    x_test, y_test, _, _ = generate_shapes(n, seed=2, shortcut=0.8)
    mean, std = channel_stats(x_train)
    mean_t, std_t = torch.as_tensor(mean, device=device), torch.as_tensor(std, device=device)
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, width=args.width).to(device)
    brief_training(model, x_train, y_train, mean, std, device, args.train_steps, 64)
    model.eval()
    pred = Predictor(model, mean_t, std_t, Precision(device.type, torch.float32, False), False)
    x = torch.as_tensor(x_test, device=device)
    y = torch.as_tensor(y_test, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None

    console.print(f"[bold]AutoAttack benchmark[/bold]: simple_cnn width {args.width} on {n} shapes test images, "
                  f"{device}, float32; AutoAttack {steps} iterations, {queries} Square queries")
    console.print(machine_text(args.device))
    t = table("seconds per attacked image", ["L-inf radius", "PGD-10 s/img", "AutoAttack s/img", "ratio",
                                             "PGD acc", "AutoAttack acc", "APGD-CE s", "APGD-T s", "FAB-T s",
                                             "Square s"])
    ratios = []
    for grid_eps in (8, 1):
        if sync:
            sync()
        t0 = time.perf_counter()
        pgd = attacks.sweep(pred, x, y, norms={"linf": [grid_eps]}, seed=0, steps=10, batch_size=BATCH)[("linf", grid_eps)]
        if sync:
            sync()
        t_pgd = time.perf_counter() - t0
        per: dict[str, float] = {}
        t0 = time.perf_counter()
        logits, _, _ = autoattack.run(pred, x, y, norm="Linf", eps=grid_eps / 255, version="standard", seed=0,
                                      batch_size=BATCH, steps=steps, queries=queries,
                                      on_attack=lambda name, k, s: per.__setitem__(name, s))
        if sync:
            sync()
        t_aa = time.perf_counter() - t0
        ratio = t_aa / t_pgd
        ratios.append(ratio)
        acc = lambda lg: f"{float((lg.argmax(1) == y).float().mean()):.3f}"  # noqa: E731
        t.add_row(f"{grid_eps}/255", f"{t_pgd / n:.4f}", f"{t_aa / n:.4f}", f"{ratio:.1f}x", acc(pgd), acc(logits),
                  *(f"{per[k]:.2f}" if k in per else "-" for k in ("apgd-ce", "apgd-t", "fab-t", "square")))
    console.print(t)
    print(f"ratio autoattack/pgd {ratios[0]:.1f}x {ratios[1]:.1f}x")


if __name__ == "__main__":
    main()
