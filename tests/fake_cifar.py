"""Tiny CIFAR-10 / CIFAR-100 folders in exactly the official python-pickle format, for tests.

``from fake_cifar import write_fake_cifar``. Images are random uint8 rows (N, 3072) holding the R,
G and B planes one after the other; labels cover every class when there are enough images.
Class names are ``fake_<dataset>_<k>`` so a test can tell they were read from the meta file.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

_FORMATS = {
    # name: (folder, number of classes, number of coarse classes or None)
    "cifar10": ("cifar-10-batches-py", 10, None),
    "cifar100": ("cifar-100-python", 100, 20),
}


def _dump(path: Path, content: dict) -> None:
    with open(path, "wb") as fh:
        pickle.dump(content, fh, protocol=2)  # the official files are Python 2 pickles


def _labels(n: int, num_classes: int, rng: np.random.Generator) -> list[int]:
    """``n`` labels in random order covering every class when ``n >= num_classes``."""
    return [int(v) for v in rng.permutation(np.arange(n) % num_classes)]


def _images(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)


def _filenames(prefix: str, n: int) -> list[bytes]:
    return [f"{prefix}_{i:05d}.png".encode() for i in range(n)]


def write_fake_cifar(root: str | Path, name: str, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Write a fake ``name`` ("cifar10" | "cifar100") under ``root``; returns the dataset folder."""
    if name not in _FORMATS:
        raise ValueError(f"unknown fake dataset {name!r}; valid: {', '.join(_FORMATS)}")
    folder_name, num_classes, num_coarse = _FORMATS[name]
    folder = Path(root) / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = [f"fake_{name}_{k}".encode() for k in range(num_classes)]
    train_x, train_y = _images(n_train, rng), _labels(n_train, num_classes, rng)
    test_x, test_y = _images(n_test, rng), _labels(n_test, num_classes, rng)

    if name == "cifar10":
        bounds = np.linspace(0, n_train, 6).round().astype(int)
        for b in range(5):
            lo, hi = bounds[b], bounds[b + 1]
            _dump(
                folder / f"data_batch_{b + 1}",
                {
                    b"batch_label": f"training batch {b + 1} of 5".encode(),
                    b"labels": train_y[lo:hi],
                    b"data": train_x[lo:hi].copy(),
                    b"filenames": _filenames(f"train{b + 1}", hi - lo),
                },
            )
        _dump(
            folder / "test_batch",
            {
                b"batch_label": b"testing batch 1 of 1",
                b"labels": test_y,
                b"data": test_x,
                b"filenames": _filenames("test", n_test),
            },
        )
        _dump(folder / "batches.meta", {b"num_cases_per_batch": max(1, n_train // 5), b"label_names": names, b"num_vis": 3072})
        return folder

    coarse_of = [k * num_coarse // num_classes for k in range(num_classes)]
    for part, x, y, label in (("train", train_x, train_y, b"training batch 1 of 1"), ("test", test_x, test_y, b"testing batch 1 of 1")):
        _dump(
            folder / part,
            {
                b"filenames": _filenames(part, len(y)),
                b"batch_label": label,
                b"fine_labels": y,
                b"coarse_labels": [coarse_of[k] for k in y],
                b"data": x,
            },
        )
    _dump(
        folder / "meta",
        {b"fine_label_names": names, b"coarse_label_names": [f"fake_coarse_{k}".encode() for k in range(num_coarse)]},
    )
    return folder
