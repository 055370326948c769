"""What [stress].shift_sets adds to a run: generating (or reading) a shift set and scoring it, against
one training epoch of the same model measured in the same process.

    .venv/bin/python bench/shift.py [--quick] [--images 2000] [--repeats 3] [--threads N]

The model and data are the demo's (jobs/demo.toml: simple_cnn width 16, 2 250 training images of
shapes, batch 64, Adam; the shift probe's default 2 000 images of ``shapes_shifted``). Arms, each the
median of ``--repeats`` after one warm-up: ``generate`` (shiftsets.load_set: the generator draws the
shifted split), ``score`` (engine.Predictor.predict on it at the grid's default eval batch of
1 000), and the reference ``epoch`` (engine.train_one_epoch on the training images). CIFAR-10.1 is
read from a .npy instead of generated (2 000 images, 6 MB; timed as ``read`` on a fake pair in the
published layout, in a temporary folder). The last line is
``ratio shift <generate + score>/<epoch>x epochs (<seconds> s) read <read>/<epoch>x``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import console, machine_text, median, set_threads, spread, table, timed

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cnnstress import data, shiftsets  # noqa: E402
from cnnstress.augment import BatchAugment  # noqa: E402
from cnnstress.engine import DeviceData, Precision, Predictor, set_determinism, train_one_epoch  # noqa: E402
from cnnstress.models import build_model  # noqa: E402

PREDICT_BATCH = 1000  # the grid's default eval_batch_size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="200 shift images, 400 training images, 1 repeat")
    ap.add_argument("--images", type=int, default=None, help="shift set images (default 2000, the probe's default)")
    ap.add_argument("--train-images", type=int, default=None, help="training images (default 2250, the demo's)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats of each arm (default 3)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    args = ap.parse_args()
    set_threads(args.threads)
    n = args.images or (200 if args.quick else 2000)
    n_train = args.train_images or (400 if args.quick else 2250)
    repeats = args.repeats or (1 if args.quick else 3)

    set_determinism(0, True)
    device = torch.device("cpu")
    x_train, y_train, _, _ = data.generate_shapes(n_train, seed=0, shortcut=0.8)
    mean_l, std_l = data.channel_stats(x_train)
    mean, std = torch.tensor(mean_l), torch.tensor(std_l)
    model = build_model("simple_cnn", 10, width=16).to(device).to(memory_format=torch.channels_last)
    precision = Precision.for_device(device, amp=True, amp_dtype="bfloat16")
    pred = Predictor(model, mean, std, precision, True)
    train = DeviceData.from_numpy(x_train, y_train, device)
    opt = torch.optim.Adam(model.parameters(), lr=0.003)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    aug = BatchAugment([], mean=mean, std=std, num_classes=10)
    gen = torch.Generator(device=device)
    gen.manual_seed(0)

    def epoch() -> None:
        train_one_epoch(model, train, aug, opt, sched, precision.scaler(), precision, gen, 64)

    held: dict[str, np.ndarray] = {}

    def generate() -> None:
        held["x"], held["y"], _, _ = shiftsets.load_set("shapes_shifted", "shapes", "", n, seed=0)

    def score() -> None:
        pred.predict(torch.from_numpy(held["x"]), PREDICT_BATCH)

    with tempfile.TemporaryDirectory(prefix="shift bench ") as tmp:
        folder = Path(tmp) / shiftsets.CIFAR101_FOLDER
        folder.mkdir()
        rng = np.random.default_rng(0)
        np.save(folder / shiftsets.CIFAR101_DATA, rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
        np.save(folder / shiftsets.CIFAR101_LABELS, (np.arange(n) % 10).astype(np.int64))

        def read() -> None:
            shiftsets.load_cifar101(tmp)

        arms = {"epoch": epoch, "generate": generate, "score": score, "read": read}
        for fn in arms.values():  # warm-up (and `score` needs `generate`'s images)
            fn()
        times: dict[str, list[float]] = {k: [] for k in arms}
        for _ in range(repeats):  # the arms interleaved: a load change hits every arm alike
            for name, fn in arms.items():
                times[name].append(timed(fn))

    med = {k: median(v) for k, v in times.items()}
    t = table(f"shift sets: {n} images vs one training epoch of {n_train} images (simple_cnn w16, batch 64)",
              ["arm", "seconds", "min-max", "images/s", "x epoch"])
    for name, images in (("epoch", n_train), ("generate", n), ("score", n), ("read", n)):
        t.add_row(name, f"{med[name]:.3f}", spread(times[name]), f"{images / med[name]:,.0f}",
                  f"{med[name] / med['epoch']:.3f}")
    console.print(t)
    console.print(machine_text("cpu"))
    added = med["generate"] + med["score"]
    print(f"ratio shift {added / med['epoch']:.3f}x epochs ({added:.2f} s) read {med['read'] / med['epoch']:.3f}x")


if __name__ == "__main__":
    main()
