"""Out-of-distribution image sets: what a classifier says about images of none of its classes.

Each set is uint8 ``(K, 3, S, S)``, the layout of :attr:`cnnstress.data.Split.x`, plus a dict of
attributes describing it (plain str/int values, fit for HDF5 attributes: ``/ood/<set>/logits``). S is
the in-distribution dataset's side: 32 for the built-in datasets; the noise sets (the ones offered for
your own images) are generated at any side from 16 to 128.

Sets (:data:`OOD_SETS`, name -> :class:`OodSet`):

* ``shapes_novel`` (near OOD, for ``shapes``): five shapes that are none of the ten classes
  (:data:`NOVEL_SHAPES`: hourglass, three_dots, letter_h, zigzag, letter_t), drawn by
  :func:`cnnstress.data.generate_shapes` with the novel table and ``shortcut=0``: position, scale,
  angle, colours, background (hue classes uniform, as in the test split), stripes and sensor noise
  are drawn exactly as for the test images, only the shape differs. The five were chosen so that
  none overlaps any class shape by more than 0.56 IoU under any rotation and scale (letter_t vs
  bar; a hexagon would overlap the circle by 0.93, an X the plus by 1.0), less than nine of the ten
  classes overlap their own nearest other class (circle-square 0.84, crescent-ring 0.51).
* ``cifar100`` (near OOD, for ``cifar10``) and ``cifar10`` (for ``cifar100``): the first ``n``
  images of the other CIFAR's official test split (which is in random class order), read from its
  test file under the data root. Offered by :func:`available_sets` only when that file exists.
* ``uniform_noise`` (far OOD, every dataset): i.i.d. uniform pixels 0..255.
* ``smooth_noise`` (far OOD, every dataset): low-frequency noise, a uniform 4x4 grid per image
  and channel upsampled bilinearly to S x S then stretched to the full 0..255 range per image (the
  same 4x4 grid at every size, so its blobs scale with the image).

Generated sets are deterministic from ``seed`` (each set mixes its own name into the seed, so two
sets with the same seed do not share random draws). Torch-free, like :mod:`cnnstress.data`.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cnnstress import data
from cnnstress.data import DataError

DEFAULT_COUNT = 1000

#: Grid side of ``smooth_noise`` before upsampling (8-pixel features at 32x32, S/4 at S x S).
SMOOTH_GRID = 4


# ------------------------------------------------------------------------------------ novel shapes
#
# Inside-tests on the shape-frame coordinates (u, v) of cnnstress.data (the shape fits roughly in
# the unit disk; v grows downwards).


def _hourglass(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Two triangles meeting tip to tip (a bow tie)."""
    au = np.abs(u)
    return (au <= 0.9) & (np.abs(v) <= 0.85 * au + 0.06)


def _three_dots(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Three separate discs at the corners of an equilateral triangle."""
    inside = np.zeros(u.shape, dtype=bool)
    for k in range(3):
        angle = math.pi / 2 + 2 * math.pi * k / 3
        inside |= (u - 0.55 * math.cos(angle)) ** 2 + (v - 0.55 * math.sin(angle)) ** 2 <= 0.33**2
    return inside


def _letter_h(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au >= 0.5) & (au <= 0.85) & (av <= 0.85)) | ((au <= 0.5) & (av <= 0.16))


def _zigzag(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A "Z": top and bottom bars joined by a diagonal."""
    top = (np.abs(u) <= 0.8) & (v >= -0.85) & (v <= -0.52)
    bottom = (np.abs(u) <= 0.8) & (v >= 0.52) & (v <= 0.85)
    diagonal = (np.abs(u * 0.545 + v * 0.838) <= 0.17) & (np.abs(v) <= 0.6)
    return top | bottom | diagonal


def _letter_t(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    bar = (np.abs(u) <= 0.85) & (v >= -0.85) & (v <= -0.45)
    stem = (np.abs(u) <= 0.2) & (v >= -0.85) & (v <= 0.85)
    return bar | stem


NOVEL_SHAPES: data.ShapeTable = (
    ("hourglass", _hourglass),
    ("three_dots", _three_dots),
    ("letter_h", _letter_h),
    ("zigzag", _zigzag),
    ("letter_t", _letter_t),
)
NOVEL_SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in NOVEL_SHAPES)


# ---------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class OodSet:
    """One registry entry: which in-distribution datasets it serves and how to build it."""

    kind: str  # "near" or "far"
    datasets: tuple[str, ...]  # in-distribution datasets this set is offered for
    description: str
    build: Callable[..., tuple[np.ndarray, dict[str, Any]]]  # (dataset, root, n, seed), + size when sized
    needs_file: str | None = None  # CIFAR dataset whose test file must exist under the root
    # generated at any image side: build takes the side as a fifth argument (the others are 32 px,
    # offered only for 32 px datasets)
    sized: bool = False


def _set_rng(name: str, seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]))


def _set_seed(name: str, seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).generate_state(1, dtype=np.uint64)[0])


def _build_shapes_novel(dataset: str, root: Path, n: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    x, y, _mask, _bg = data.generate_shapes(n, seed=_set_seed("shapes_novel", seed), shortcut=0.0, shapes=NOVEL_SHAPES)
    counts = np.bincount(y, minlength=len(NOVEL_SHAPES))
    return x, {
        "shapes": ",".join(NOVEL_SHAPE_NAMES),
        "shape_counts": ",".join(str(int(c)) for c in counts),
        "generator_version": data.GENERATOR_VERSION,
    }


def _build_uniform_noise(dataset: str, root: Path, n: int, seed: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    rng = _set_rng("uniform_noise", seed)
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8), {}


def _bilinear_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of bilinear upsampling, half-pixel centres, edges clamped."""
    src = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0.0, size_in - 1)
    lo = np.floor(src).astype(int)
    hi = np.minimum(lo + 1, size_in - 1)
    frac = src - lo
    weights = np.zeros((size_out, size_in))
    np.add.at(weights, (np.arange(size_out), lo), 1.0 - frac)
    np.add.at(weights, (np.arange(size_out), hi), frac)
    return weights


def _build_smooth_noise(dataset: str, root: Path, n: int, seed: int, size: int) -> tuple[np.ndarray, dict[str, Any]]:
    rng = _set_rng("smooth_noise", seed)
    grid = rng.random((n, 3, SMOOTH_GRID, SMOOTH_GRID))
    w = _bilinear_matrix(SMOOTH_GRID, size)
    up = np.einsum("oi,ncij,pj->ncop", w, grid, w)
    lo = up.min(axis=(1, 2, 3), keepdims=True)
    hi = up.max(axis=(1, 2, 3), keepdims=True)
    scaled = (up - lo) / np.maximum(hi - lo, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), {"grid": SMOOTH_GRID}


def _cifar_builder(other: str) -> Callable[[str, Path, int, int], tuple[np.ndarray, dict[str, Any]]]:
    def build(dataset: str, root: Path, n: int, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
        test = data.load_cifar_test_file(other, root)
        count = min(n, len(test))
        return np.ascontiguousarray(test.x[:count]), {
            "source": f"{other} official test split, images 0..{count - 1}",
            "source_count": len(test),
        }

    return build


OOD_SETS: dict[str, OodSet] = {
    "shapes_novel": OodSet(
        "near", ("shapes",), "shapes that are none of the classes, on the test split's backgrounds", _build_shapes_novel
    ),
    "cifar100": OodSet("near", ("cifar10",), "CIFAR-100 test images", _cifar_builder("cifar100"), "cifar100"),
    "cifar10": OodSet("near", ("cifar100",), "CIFAR-10 test images", _cifar_builder("cifar10"), "cifar10"),
    "uniform_noise": OodSet("far", tuple(data.DATASETS), "i.i.d. uniform pixels", _build_uniform_noise, sized=True),
    "smooth_noise": OodSet(
        "far",
        tuple(data.DATASETS),
        f"uniform {SMOOTH_GRID}x{SMOOTH_GRID} noise upsampled bilinearly",
        _build_smooth_noise,
        sized=True,
    ),
}


# -------------------------------------------------------------------------------------- public API


def sets_for(dataset: str) -> list[str]:
    """Every set offered for ``dataset`` (whether or not its files are present), registry order."""
    data._check_dataset(dataset)
    return [name for name, entry in OOD_SETS.items() if dataset in entry.datasets]


def available_sets(dataset: str, root: str | os.PathLike) -> list[str]:
    """The sets that :func:`load_ood_set` can build for ``dataset`` now: a CIFAR set only when its
    official test file exists under ``root`` (it is not read here)."""
    names = []
    for name in sets_for(dataset):
        needed = OOD_SETS[name].needs_file
        if needed is None or data.cifar_test_file(needed, root).is_file():
            names.append(name)
    return names


def load_ood_set(
    name: str, dataset: str, root: str | os.PathLike, n: int = DEFAULT_COUNT, seed: int = 0,
    size: int = data.IMAGE_SIZE,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Images uint8 ``(K, 3, size, size)`` of OOD set ``name`` for in-distribution ``dataset``, and
    attrs; ``size`` is the dataset's image side (the model sees nothing else).

    ``K = n`` for generated sets, ``min(n, test size)`` for a CIFAR set. Attributes: ``name``,
    ``kind`` (near/far), ``description``, ``dataset``, ``count``, ``seed`` and per-set details.
    Raises DataError for a name that is unknown or not offered for ``dataset`` (listing the valid
    ones) and for a CIFAR set whose file is missing or corrupt (naming the file, with the download
    command); ValueError for a bad ``n`` or ``seed``.
    """
    data._check_dataset(dataset)
    valid = sets_for(dataset)
    if name not in valid:
        if name in OOD_SETS:
            problem = f"OOD set {name!r} is not for dataset {dataset!r}"
        else:
            problem = f"unknown OOD set {name!r}"
        raise DataError(f"{problem}; valid sets for {dataset}: {', '.join(valid)}")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r} is invalid; allowed: an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed = {seed!r} is invalid; allowed: an integer >= 0")
    entry = OOD_SETS[name]
    if entry.sized:
        x, details = entry.build(dataset, Path(root), int(n), int(seed), int(size))
    else:
        x, details = entry.build(dataset, Path(root), int(n), int(seed))
    if x.shape[2:] != (size, size):
        raise DataError(f"OOD set {name!r} has {x.shape[2]}x{x.shape[3]} images but {dataset}'s are {size}x{size}; "
                        f"allowed: sets of the dataset's image size")
    attrs: dict[str, Any] = {
        "name": name,
        "kind": entry.kind,
        "description": entry.description,
        "dataset": dataset,
        "count": int(x.shape[0]),
        "seed": int(seed),
    }
    attrs.update(details)
    if size != data.IMAGE_SIZE:  # (absent: 32, as before other sizes existed)
        attrs["image_size"] = int(size)
    return x, attrs
