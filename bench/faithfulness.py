"""What ROAD's noisy linear imputation adds to the faithfulness probe, against mean fill.

    .venv/bin/python bench/faithfulness.py [--quick] [--device cpu|cuda] [--images 200] [--model simple_cnn]

Both ways are what the worker runs for ``[stress].faithfulness_samples`` images: Predictor's
deletion_insertion with 16 steps (17 points) of the predicted class's probability, for Grad-CAM
maps and for random maps, batch 256; ``removal="mean"`` (removed pixels take the dataset mean) and
``removal="road"`` (engine.noisy_linear_impute on every step's removed and kept pixels, batched
conjugate gradients). Same model, images, maps and classes; repeats alternate the two ways and
the median is shown. The model is briefly trained (a few SGD steps) on generated shapes images;
the Grad-CAM maps come from engine.gradcam at its last block. The last line is
``ratio road/mean <x>x probe with road <y>x``: how much slower one ROAD curve set is than one
mean-fill set, and the faithfulness probe's time with ``faithfulness_road = true`` (both sets)
over its time without (the mean-fill set alone).
"""

from __future__ import annotations

import argparse
import time

from _common import console, machine_text, median, set_threads, spread, table

import torch  # noqa: E402

from cnnstress.data import channel_stats, generate_shapes  # noqa: E402
from cnnstress.engine import Precision, Predictor, gradcam, predict, set_determinism  # noqa: E402
from cnnstress.models import build_model, resolve_layer  # noqa: E402

from gradcam import brief_training  # noqa: E402

STEPS = 16  # faithfulness.FAITHFULNESS_STEPS
BATCH = 256  # the probe's min(eval_batch_size, 256)
LAYERS = {"simple_cnn": "block3", "resnet18": "layer3"}


def curves(pred: Predictor, x, maps, classes, removal: str, sync) -> float:
    """Seconds for the probe's two curve sets (Grad-CAM maps and random maps) with one removal."""
    g = torch.Generator(device=x.device)
    g.manual_seed(0)
    sync()
    t0 = time.perf_counter()
    for m in maps:
        pred.deletion_insertion(x, m, classes, STEPS, BATCH, removal=removal, generator=g)
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run: 16 images, a narrow model, one repeat")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--images", type=int, default=None, help="test images (default 200, the probe's default)")
    ap.add_argument("--model", default="simple_cnn", choices=sorted(LAYERS))
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each way (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    set_threads(args.threads if args.threads is not None or not args.quick else 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    set_determinism(0, True)
    n = args.images or (16 if args.quick else 200)
    repeats = args.repeats or (1 if args.quick else 3)

    x_train, y_train, _, _ = generate_shapes(2 * 64, seed=1, shortcut=0.8)
    x_test, _, _, _ = generate_shapes(n, seed=2, shortcut=0.8)
    mean, std = channel_stats(x_train)
    mean_t, std_t = torch.tensor(mean, device=device), torch.tensor(std, device=device)
    kw = {"width": 8 if args.quick else 32} if args.model == "simple_cnn" else {}
    torch.manual_seed(0)
    model = build_model(args.model, 10, **kw).to(device).to(memory_format=torch.channels_last)
    brief_training(model, x_train, y_train, mean_t, std_t, device, 2, 64)
    precision = Precision.for_device(device, amp=device.type == "cuda", amp_dtype="bfloat16")
    x = torch.from_numpy(x_test).to(device)
    logits, _ = predict(model, x, mean_t, std_t, precision, 1000, channels_last=True)
    classes = logits.argmax(1)
    cam = gradcam(model, resolve_layer(model, LAYERS[args.model]), x, [classes], mean_t, std_t, BATCH)[0]
    rand = torch.rand(cam.shape, generator=torch.Generator(device=device).manual_seed(1), device=device)
    pred = Predictor(model, mean_t, std_t, precision, True)
    console.print(f"[bold]Faithfulness removal benchmark[/bold]: {args.model}, {n} images, {STEPS} steps, "
                  f"Grad-CAM and random maps, on {device}")
    console.print(machine_text(args.device))

    curves(pred, x[:4], [cam[:4], rand[:4]], classes[:4], "road", sync)  # warm-up (not timed)
    times: dict[str, list[float]] = {"mean": [], "road": []}
    for _ in range(repeats):
        for removal in ("mean", "road"):
            times[removal].append(curves(pred, x, [cam, rand], classes, removal, sync))
    t = table("deletion + insertion curves, Grad-CAM and random maps (the probe's work)",
              ["removal", "seconds", "min-max", "images/s"])
    for removal, vals in times.items():
        t.add_row(removal, f"{median(vals):.2f}", spread(vals), f"{n / median(vals):.1f}")
    console.print(t)
    ratio = median(times["road"]) / median(times["mean"])
    console.print(f"after: {machine_text(args.device)}")
    console.print(f"ratio road/mean {ratio:.1f}x probe with road {1 + ratio:.1f}x")


if __name__ == "__main__":
    main()
