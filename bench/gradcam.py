"""Grad-CAM maps/s: engine.gradcam (batched) vs one image at a time.

    .venv/bin/python bench/gradcam.py [--quick] [--device cpu|cuda] [--images 2000] [--resnet-images 100]

batched    what the worker does: engine.predict (logits -> predicted class) and engine.gradcam with
           targets [pred, true] at the grid's layer, batch 256, channels_last; both maps of a batch
           come from one forward and one backward pass.
one-by-one written here independently, the way a notebook (or pytorch-grad-cam with one call per
           image) does it: a forward hook on the layer keeps its output and a tensor hook its
           gradient; per image: one forward, argmax = predicted class, backward of that logit
           (retain_graph), map, zero the grads, backward of the true-class logit, map. (One forward
           serves both classes, which favours this loop over calling a Grad-CAM object twice.)

Maps/s counts both maps of an image (2 per image). The maps of the two ways are compared
(np.allclose, atol 1e-3 on maps scaled to max 1: float32 rounding differs between a batch of
512 in channels_last and one image in NCHW, up to ~4e-4 for resnet18; the largest absolute
difference is printed); the predicted classes
too. Models: simple_cnn (width 32, trained briefly so that maps are not trivial) at block3 on
``--images`` shapes test images; resnet18 (briefly trained as well) at layer3 on ``--resnet-images``
(default 0: skipped). The batched column includes engine.predict (the loop gets its predictions
from its own forward pass); "gradcam() alone" is engine.gradcam without it. The last line is ``ratio simple_cnn <batched/one-by-one>x resnet18 <...>x``.
"""

from __future__ import annotations

import argparse
import copy
import time

from _common import console, machine_text, median, set_threads, spread, table

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from cnnstress.augment import BatchAugment  # noqa: E402
from cnnstress.data import channel_stats, generate_shapes  # noqa: E402
from cnnstress.engine import DeviceData, Precision, gradcam, predict, set_determinism, train_one_epoch  # noqa: E402
from cnnstress.models import build_model, resolve_layer  # noqa: E402

NUM_CLASSES = 10
GRADCAM_BATCH = 256  # the worker's: min(eval_batch_size, 256)
PREDICT_BATCH = 1000  # the grid's default eval_batch_size


def brief_training(model, x: np.ndarray, y: np.ndarray, mean, std, device: torch.device, steps: int,
                   batch_size: int) -> None:
    """A few SGD steps with engine.train_one_epoch, so the maps are those of a model that learnt a bit."""
    if steps <= 0:
        return
    n = steps * batch_size
    data = DeviceData.from_numpy(x[:n], y[:n], device)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    prec = Precision.for_device(device, amp=False, amp_dtype="bfloat16")
    gen = torch.Generator(device=device)
    gen.manual_seed(0)
    aug = BatchAugment(["crop", "flip"], mean=mean, std=std, num_classes=NUM_CLASSES)
    train_one_epoch(model, data, aug, opt, sched, prec.scaler(), prec, gen, batch_size)


def batched(model, layer, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
            precision: Precision, sync=lambda: None) -> tuple[tuple[torch.Tensor, torch.Tensor, torch.Tensor], float]:
    """((pred, cam_pred, cam_true), seconds in engine.gradcam alone), the worker's way."""
    logits, _ = predict(model, x, mean, std, precision, PREDICT_BATCH, channels_last=True)
    pred = logits.argmax(1)
    sync()
    t0 = time.perf_counter()
    cam_pred, cam_true = gradcam(model, layer, x, [pred, y], mean, std, GRADCAM_BATCH, channels_last=True)
    sync()
    return (pred, cam_pred, cam_true), time.perf_counter() - t0


def one_by_one(model, layer, x: torch.Tensor, y: torch.Tensor, mean: torch.Tensor,
               std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pred, cam_pred, cam_true), one image at a time with hooks (an independent implementation)."""
    model.eval()
    kept: dict[str, torch.Tensor] = {}

    def forward_hook(_module, _inputs, output):
        kept["act"] = output
        output.register_hook(lambda grad: kept.__setitem__("grad", grad))

    def cam_from(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        weights = grad.mean(dim=(2, 3), keepdim=True)  # alpha_k: global-average-pooled gradients
        cam = F.relu((weights * act).sum(dim=1))[0]
        peak = cam.max()
        return cam / peak if peak > 1e-12 else torch.zeros_like(cam)

    handle = layer.register_forward_hook(forward_hook)
    preds, cams_pred, cams_true = [], [], []
    try:
        for i in range(x.shape[0]):
            img = ((x[i:i + 1].float() / 255.0) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
            logits = model(img)
            p = int(logits[0].argmax())
            maps = []
            for c, retain in ((p, True), (int(y[i]), False)):
                model.zero_grad(set_to_none=True)
                logits[0, c].backward(retain_graph=retain)
                maps.append(cam_from(kept["act"].detach(), kept["grad"].detach()))
            preds.append(p)
            cams_pred.append(maps[0])
            cams_true.append(maps[1])
    finally:
        handle.remove()
        model.zero_grad(set_to_none=True)
    return torch.tensor(preds), torch.stack(cams_pred), torch.stack(cams_true)


def bench_model(name: str, options: dict, layer_name: str, n_images: int, train_steps: int,
                repeats: int, loop_repeats: int, device: torch.device, sync, data) -> dict:
    x_train, y_train, x_test, y_test, mean_t, std_t = data
    torch.manual_seed(0)
    model = build_model(name, NUM_CLASSES, **options).to(device).to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    brief_training(model, x_train, y_train, mean_t, std_t, device, train_steps, 64)
    train_s = time.perf_counter() - t0
    model.eval()
    layer = resolve_layer(model, layer_name)
    precision = Precision.for_device(device, amp=False, amp_dtype="bfloat16")
    mean = torch.tensor(mean_t, device=device)
    std = torch.tensor(std_t, device=device)
    x = torch.from_numpy(x_test[:n_images]).to(device)
    y = torch.from_numpy(y_test[:n_images].astype(np.int64)).to(device)

    # warm-up (untimed) on a slice
    batched(model, layer, x[:GRADCAM_BATCH], y[:GRADCAM_BATCH], mean, std, precision)
    one_by_one(model, layer, x[:8], y[:8], mean, std)  # (both formats warmed up)

    # the usual model is in torch's default (contiguous) memory format; same weights
    usual = copy.deepcopy(model).to(memory_format=torch.contiguous_format)
    usual_layer = resolve_layer(usual, layer_name)

    t_batched, t_cam, t_loop = [], [], []
    out_b = out_l = None
    for r in range(max(repeats, loop_repeats)):
        if r < loop_repeats:
            sync()
            t0 = time.perf_counter()
            out_l = one_by_one(usual, usual_layer, x, y, mean, std)
            sync()
            t_loop.append(time.perf_counter() - t0)
        if r < repeats:
            sync()
            t0 = time.perf_counter()
            out_b, cam_s = batched(model, layer, x, y, mean, std, precision, sync)
            sync()
            t_batched.append(time.perf_counter() - t0)
            t_cam.append(cam_s)
    pred_b, cp_b, ct_b = (t.cpu() for t in out_b)
    pred_l, cp_l, ct_l = (t.cpu() for t in out_l)
    diff = max(float((cp_b - cp_l).abs().max()), float((ct_b - ct_l).abs().max()))
    close = bool(np.allclose(cp_b.numpy(), cp_l.numpy(), atol=1e-3) and np.allclose(ct_b.numpy(), ct_l.numpy(), atol=1e-3))
    zero = float(((cp_b.flatten(1).amax(1) == 0).float().mean()))
    return {
        "n": n_images, "shape": tuple(cp_b.shape[1:]), "train_s": train_s,
        "batched": [2 * n_images / t for t in t_batched], "loop": [2 * n_images / t for t in t_loop],
        "cam_only": [2 * n_images / t for t in t_cam],
        "diff": diff, "close": close, "pred_agree": float((pred_b == pred_l).float().mean()),
        "acc": float((pred_b == y.cpu()).float().mean()), "zero_maps": zero,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="a tiny smoke run (< 20 s): simple_cnn width 8, 100 images, 1 thread")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    ap.add_argument("--images", type=int, default=None, help="simple_cnn test images (default 2000)")
    ap.add_argument("--resnet-images", type=int, default=0,
                    help="resnet18 test images (default 0 = skipped: on 2 CPU cores 100 images take minutes)")
    ap.add_argument("--train-steps", type=int, default=None, help="brief training steps of batch 64 (default 8)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats of the batched way (default 2)")
    ap.add_argument("--loop-repeats", type=int, default=None, help="repeats of the one-by-one loop")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    # --quick is a smoke run: one thread avoids OpenMP threads waiting on a busy machine
    set_threads(args.threads if args.threads is not None or not args.quick else 1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    set_determinism(0, True)
    n_simple = args.images or (100 if args.quick else 2000)
    n_resnet = 0 if args.quick else args.resnet_images
    train_steps = args.train_steps if args.train_steps is not None else (2 if args.quick else 8)
    loop_repeats = args.loop_repeats or 1

    t0 = time.perf_counter()
    x_train, y_train, _, _ = generate_shapes(max(1, train_steps) * 64, seed=1, shortcut=0.8)
    x_test, y_test, _, _ = generate_shapes(max(n_simple, n_resnet), seed=2, shortcut=0.8)
    mean_t, std_t = channel_stats(x_train)
    data = (x_train, y_train, x_test, y_test, mean_t, std_t)
    console.print(f"[bold]Grad-CAM benchmark[/bold] on {device}, float32; shapes data generated in "
                  f"{time.perf_counter() - t0:.1f}s; brief training: {train_steps} SGD steps of 64 images")
    console.print(machine_text(args.device))

    todo = [("simple_cnn", {"width": 8 if args.quick else 32}, "block3", n_simple)]
    if n_resnet > 0:
        todo.append(("resnet18", {}, "layer3", n_resnet))
    t = table("Grad-CAM maps/s (pred + true class per image; median of repeats, min-max in brackets)",
              ["model @ layer", "images", "one-by-one maps/s", "batched maps/s", "ratio", "gradcam() alone maps/s", "max |diff|",
               "allclose", "same pred", "acc", "all-zero maps"])
    ratios = []
    for name, opts, layer, n in todo:
        r = bench_model(name, opts, layer, n, train_steps, args.repeats, loop_repeats, device, sync, data)
        ratio = median(r["batched"]) / median(r["loop"])
        ratios.append((name, ratio))
        label = f"{name}{' w' + str(opts['width']) if 'width' in opts else ''} @ {layer} {r['shape'][0]}x{r['shape'][1]}"
        t.add_row(label, str(r["n"]), f"{median(r['loop']):.0f} [{spread(r['loop'])}]",
                  f"{median(r['batched']):.0f} [{spread(r['batched'])}]", f"{ratio:.1f}x",
                  f"{median(r['cam_only']):.0f}", f"{r['diff']:.1e}",
                  "yes" if r["close"] else "NO", f"{r['pred_agree']:.3f}", f"{r['acc']:.2f}",
                  f"{r['zero_maps']:.2f}")
        console.print(f"  done {name} ({machine_text(args.device).split('; ')[-1]})")
    console.print(t)
    console.print(f"after: {machine_text(args.device)}")
    print("ratio " + " ".join(f"{name} {ratio:.1f}x" for name, ratio in ratios))


if __name__ == "__main__":
    main()
