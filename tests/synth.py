"""A synthetic sweep on disk, written with the real store: for gather and report tests.

``make_sweep(root, ...)`` writes ``root/<name>/grid.toml`` and one run folder per expected run
(``results.h5`` through ``store.publish_results`` + ``DONE.json`` through ``store.write_done``), with
planted accuracies, so that tests can recompute every number from the arrays kept in the returned
``Synth``. No torch and no training: logits are built so that exactly ``round(acc * N)`` test
images are right, and confidences spread over (1/C, 1).

Runs can be left out (no folder), failed (FAILED.json with a given reason) or corrupted (results.h5
overwritten with garbage after DONE.json was written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress import data, store
from cnnstress.config import RunSpec
from cnnstress.grid import Grid, load_grid

# Augmentation lists given to the variants after the baseline, in order (each must differ).
VARIANT_AUGMENTS: tuple[list[str], ...] = (["crop", "flip"], ["flip"], ["crop"], ["rotation"], ["cutout"])
EMBED_DIM = 16
MAP_SIZE = 8
N_TRAIN = 100  # shapes training images (the minimum the catalogue allows)
FAITH_STEPS = 17


@dataclass
class SynthRun:
    """One run as written: the spec and every array exactly as stored (store dtypes)."""

    spec: RunSpec
    run_dir: Path
    status: str  # "done" | "missing" | "failed" | "broken"
    reason: str = ""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def run_id(self) -> str:
        return self.spec.run_id


@dataclass
class Synth:
    sweep_dir: Path
    grid: Grid
    runs: list[SynthRun]
    labels: np.ndarray  # (N,) int64, the test labels every run shares
    bg_class: np.ndarray | None  # (N,) int64 for shapes
    mask: np.ndarray | None = None  # (N, 32, 32) bool object pixels for shapes

    def run(self, variant: str, seed: int) -> SynthRun:
        for r in self.runs:
            if r.spec.variant == variant and r.spec.seed == seed:
                return r
        raise KeyError(f"no run {variant} seed {seed}")


def grid_text(name: str, dataset: str, variants: tuple[str, ...], seeds: tuple[int, ...], n_test: int,
              corruptions: tuple[str, ...], severities: tuple[int, ...], threshold: float, top_failures: int,
              canonical: int, epochs: int, extra_grid: str = "") -> str:
    """The grid file of the synthetic sweep."""
    opts = f"dataset_options = {{ n_train = {N_TRAIN}, n_test = {n_test}, shortcut = 0.8 }}" if dataset == "shapes" else ""
    lines = [
        f'name = "{name}"',
        "[base]",
        f'dataset = "{dataset}"',
        opts,
        'model = "simple_cnn"',
        "model_options = { width = 4 }",
        f"epochs = {epochs}",
        'optimizer = { name = "adam", lr = 0.003 }',
        "augment = []",
    ]
    for i, v in enumerate(variants):
        lines.append(f"[variants.{v}]")
        if i:
            aug = VARIANT_AUGMENTS[(i - 1) % len(VARIANT_AUGMENTS)]
            lines.append("augment = [" + ", ".join(f'"{a}"' for a in aug) + "]")
    lines += ["[grid]", f"seed = [{', '.join(str(s) for s in seeds)}]", extra_grid,
              "[compare]", f'baseline = "{variants[0]}"',
              "[stress]", "corruptions = [" + ", ".join(f'"{c}"' for c in corruptions) + "]"]
    if severities:
        lines.append(f"severities = [{', '.join(str(s) for s in severities)}]")
    lines += ["[report]", f"confidence_threshold = {threshold}", f"top_failures = {top_failures}",
              f"canonical_cases = {canonical}"]
    return "\n".join(lines) + "\n"


def default_accuracy(variant_index: int, seed_index: int) -> float:
    """Planted accuracy: the baseline around 0.60, each later variant a few points better."""
    return 0.60 + 0.06 * variant_index + 0.01 * seed_index


def make_sweep(
    root: Path,
    *,
    name: str = "synth",
    dataset: str = "shapes",
    variants: tuple[str, ...] = ("baseline", "cropflip"),
    seeds: tuple[int, ...] = (1, 2),
    n_test: int = 200,
    accuracies: dict[tuple[str, int], float] | None = None,
    corruptions: tuple[str, ...] = ("gaussian_noise", "contrast"),
    severities: tuple[int, ...] = (1, 3),
    val: bool = True,
    train_subset: bool = True,
    faithfulness: bool = True,
    road: bool = False,
    threshold: float = 0.7,
    top_failures: int = 8,
    canonical: int = 4,
    epochs: int = 4,
    extra_grid: str = "",
    missing: frozenset[tuple[str, int]] | set = frozenset(),
    failed: dict[tuple[str, int], str] | None = None,
    corrupt: frozenset[tuple[str, int]] | set = frozenset(),
) -> Synth:
    """Write a synthetic sweep under ``root`` and return what was written (see module doc)."""
    root = Path(root)
    sweep_dir = root / name
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / "runs").mkdir(exist_ok=True)
    text = grid_text(name, dataset, variants, seeds, n_test, corruptions, severities if corruptions else (),
                     threshold, top_failures, canonical, epochs, extra_grid)
    (sweep_dir / "grid.toml").write_text(text, encoding="utf-8")
    grid = load_grid(sweep_dir / "grid.toml", out_root=root)
    spec0 = grid.runs[0]
    num_classes = spec0.num_classes

    rng = np.random.default_rng(12345)
    mask = bg_class = None
    if dataset == "shapes":
        test = data.load_test("shapes", spec0.paths.data_root, spec0.dataset.params)
        labels = test.y.astype(np.int64)
        mask, bg_class = test.mask, test.bg_class
        splits = data.load_splits("shapes", spec0.paths.data_root, val_fraction=spec0.train.val_fraction,
                                  split_seed=spec0.train.split_seed, options=spec0.dataset.params)
        pick = np.sort(rng.choice(len(splits.train), size=min(60, len(splits.train)), replace=False))
        train_index, train_label = splits.train.index[pick], splits.train.y[pick]
    else:
        labels = rng.permutation(np.arange(n_test) % num_classes).astype(np.int64)
        train_index = np.sort(rng.choice(1000, size=60, replace=False))
        train_label = rng.integers(0, num_classes, size=60)
    difficulty = rng.random(n_test)  # shared across runs, so runs agree on what is hard
    centroids = rng.normal(0.0, 1.0, (num_classes, EMBED_DIM))

    accuracies = dict(accuracies or {})
    failed = dict(failed or {})
    variant_index = {v: i for i, v in enumerate(variants)}
    seed_index = {s: i for i, s in enumerate(sorted(seeds))}
    runs: list[SynthRun] = []
    for spec in grid.runs:
        key = (spec.variant, spec.seed)
        run_dir = sweep_dir / "runs" / spec.run_id
        if key in missing:
            runs.append(SynthRun(spec, run_dir, "missing"))
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        store.atomic_write_json(run_dir / "spec.json", spec.to_dict())
        if key in failed:
            store.write_failed(run_dir, failed[key], "Traceback: synthetic")
            runs.append(SynthRun(spec, run_dir, "failed", failed[key]))
            continue
        vi, si = variant_index[spec.variant], seed_index[spec.seed]
        acc = accuracies.get(key, default_accuracy(vi, si))
        run_rng = np.random.default_rng(int(spec.spec_hash, 16))  # differs per run, fixed per spec
        arrays = _run_arrays(run_rng, spec, acc, labels, difficulty, centroids, bg_class, mask,
                             shortcut=(vi == 0), corruptions=corruptions, severities=severities, val=val,
                             train_subset=train_subset, train_index=train_index, train_label=train_label,
                             faithfulness=faithfulness, road=road)
        attrs = {"run_id": spec.run_id, "spec": spec.to_dict(), "variant": spec.variant, "seed": spec.seed,
                 "versions": {"synthetic": True}, "device": "none", "git_sha": "synthetic", "timings": {}}
        sha = store.publish_results(run_dir, arrays, attrs)
        stored = {k: store._cast(k, v, store.field_for(k)) for k, v in arrays.items()}
        test_acc = float(np.mean(np.argmax(stored["test/logits"], axis=1) == labels))
        store.write_done(run_dir, {"test_accuracy": test_acc}, sha)
        status = "done"
        if key in corrupt:
            path = run_dir / store.RESULTS_NAME
            size = path.stat().st_size
            path.write_bytes(b"\x00garbage" * (size // 8 + 1))
            status = "broken"
        runs.append(SynthRun(spec, run_dir, status, arrays=stored))
    return Synth(sweep_dir=sweep_dir, grid=grid, runs=runs, labels=labels, bg_class=bg_class, mask=mask)


def _logits_for(rng: np.random.Generator, labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, C) float32 logits whose argmax is ``preds``, with top margins spread over (0.05, 7)."""
    n = labels.shape[0]
    logits = rng.normal(0.0, 0.5, (n, num_classes))
    others = logits.copy()
    others[np.arange(n), preds] = -np.inf
    margin = 0.05 + 7.0 * rng.random(n) ** 1.5
    logits[np.arange(n), preds] = others.max(axis=1) + margin
    return logits.astype(np.float32)


def _predictions(rng: np.random.Generator, labels: np.ndarray, correct: np.ndarray, num_classes: int,
                 bg_class: np.ndarray | None, shortcut: bool) -> np.ndarray:
    """Right where ``correct``; otherwise another class (the background's, often, for a shortcut model)."""
    n = labels.shape[0]
    wrong = (labels + rng.integers(1, num_classes, size=n)) % num_classes
    if bg_class is not None:
        follows = (bg_class != labels) & (rng.random(n) < (0.7 if shortcut else 0.2))
        wrong = np.where(follows, bg_class, wrong)
    return np.where(correct, labels, wrong).astype(np.int64)


def _run_arrays(rng: np.random.Generator, spec: RunSpec, acc: float, labels: np.ndarray, difficulty: np.ndarray,
                centroids: np.ndarray, bg_class: np.ndarray | None, mask: np.ndarray | None, *, shortcut: bool,
                corruptions: tuple[str, ...], severities: tuple[int, ...], val: bool, train_subset: bool,
                train_index: np.ndarray, train_label: np.ndarray, faithfulness: bool,
                road: bool = False) -> dict[str, Any]:
    n, c, e = labels.shape[0], spec.num_classes, spec.train.epochs
    k = int(round(acc * n))
    score = difficulty + 0.6 * rng.random(n)
    correct = np.zeros(n, dtype=bool)
    correct[np.argsort(-score, kind="stable")[:k]] = True
    preds = _predictions(rng, labels, correct, c, bg_class, shortcut)
    out: dict[str, Any] = {
        "test/index": np.arange(n),
        "test/label": labels,
        "test/logits": _logits_for(rng, labels, preds, c),
        "test/embedding": (centroids[preds] + rng.normal(0, 0.7, (n, EMBED_DIM))).astype(np.float16),
    }
    epochs = np.arange(1, e + 1)
    out.update({
        "history/epoch": epochs, "history/lr": np.full(e, 0.003),
        "history/train_loss": 2.0 / epochs + 0.1 * rng.random(e), "history/train_acc": acc * (1 - 0.5 / epochs),
        "history/val_loss": 2.2 / epochs + 0.1 * rng.random(e), "history/val_acc": acc * (1 - 0.6 / epochs),
        "history/epoch_seconds": 1.0 + rng.random(e),
    })
    # Grad-CAM maps: on the object (from the mask, 4x4 pooled) plus noise; wrong predictions drift away.
    if mask is not None:
        pooled = mask.reshape(n, MAP_SIZE, 32 // MAP_SIZE, MAP_SIZE, 32 // MAP_SIZE).mean(axis=(2, 4))
    else:
        pooled = rng.random((n, MAP_SIZE, MAP_SIZE))
    noise = rng.random((n, MAP_SIZE, MAP_SIZE))
    weight = np.where(correct, 0.8, 0.3)[:, None, None]
    cams = []
    for w in (weight, np.full_like(weight, 0.6)):
        m = np.maximum(w * pooled + (1 - w) * noise, 0.0)
        cams.append((m / m.max(axis=(1, 2), keepdims=True)).astype(np.float16))
    out["test/gradcam/pred"], out["test/gradcam/true"] = cams
    if val:
        vn = 100
        vlab = rng.integers(0, c, size=vn)
        vcorrect = rng.random(vn) < acc
        vpred = np.where(vcorrect, vlab, (vlab + 1) % c)
        out["val/index"] = np.arange(vn)
        out["val/label"] = vlab
        out["val/logits"] = _logits_for(rng, vlab, vpred, c)
    if train_subset:
        t = train_index.shape[0]
        out["train_subset/index"] = train_index
        out["train_subset/label"] = train_label
        out["train_subset/embedding"] = (centroids[train_label] + rng.normal(0, 0.7, (t, EMBED_DIM))).astype(np.float16)
    for corruption in corruptions:
        for sev in severities:
            # a corruption flips a growing share of the right answers
            keep = correct & (rng.random(n) > 0.12 * sev)
            spred = _predictions(rng, labels, keep, c, bg_class, shortcut)
            out[f"stress/{corruption}/{sev}/logits"] = _logits_for(rng, labels, spred, c).astype(np.float16)
    if faithfulness:
        m = min(20, n)
        pos = np.sort(rng.choice(n, size=m, replace=False))
        x = np.linspace(0.0, 1.0, FAITH_STEPS)
        start = rng.uniform(0.6, 0.9, (m, 1))
        out["faithfulness/deletion_gradcam"] = (start * np.exp(-4 * x)).astype(np.float32)
        out["faithfulness/deletion_random"] = (start * np.exp(-1.5 * x)).astype(np.float32)
        out["faithfulness/insertion_gradcam"] = (start * (1 - np.exp(-4 * x))).astype(np.float32)
        out["faithfulness/insertion_random"] = (start * (1 - np.exp(-1.5 * x))).astype(np.float32)
        out["faithfulness/positions"] = pos.astype(np.float32)
        if road:  # ROAD's imputation: slower falls and rises than mean fill's
            out["faithfulness/deletion_gradcam_road"] = (start * np.exp(-2.5 * x)).astype(np.float32)
            out["faithfulness/deletion_random_road"] = (start * np.exp(-1.2 * x)).astype(np.float32)
            out["faithfulness/insertion_gradcam_road"] = (start * (1 - np.exp(-2.5 * x))).astype(np.float32)
            out["faithfulness/insertion_random_road"] = (start * (1 - np.exp(-1.2 * x))).astype(np.float32)
    return out
