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

Your own sets (``[stress].ood_sets = ["folder:<path>", "npz:<path>"]``, :func:`load_own_set`): a
folder of images decoded like an ``imagefolder`` dataset, or an .npz of uint8 ``(K, H, W, 3)``
images, at the in-distribution dataset's image size; see the section at the end of this module.

Generated sets are deterministic from ``seed`` (each set mixes its own name into the seed, so two
sets with the same seed do not share random draws). Torch-free, like :mod:`cnnstress.data`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
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


# ------------------------------------------------------------------------------------ your own sets
#
# [stress].ood_sets = ["folder:path", "npz:path"] beside the names above: a folder of images (flat,
# or with sub-folders: every image under it, in sorted order) decoded like an ``imagefolder``
# dataset (shorter side resized to the dataset's image size, centre-cropped) and cached in
# <folder>/.cnnstress-cache/, or an .npz whose ``x`` is uint8 (K, H, W, 3) at the dataset's size.
# The grid reads the path against its own folder and records the content's sha256 (of the .npz;
# for a folder, of every image's relative path and bytes): the content is part of the run's
# identity, where it lies is not (config._STRESS_FILE_LOCATION).

OWN_KINDS = ("folder", "npz")
_SLUG = re.compile(r"[^a-z0-9]+")


def own_kind(entry: str) -> str | None:
    """``"folder"`` or ``"npz"`` for an entry of [stress].ood_sets naming your own set, else None."""
    kind, sep, _ = entry.partition(":")
    return kind if sep and kind in OWN_KINDS else None


def resolve_own_sets(v: Any, entries: list[str], key: str) -> list[dict[str, Any]]:
    """Your own sets of a [stress] list (``key``: "ood_sets", "shift_sets"), in grid order: each
    path read against the grid file's folder (``v.grid_dir``), named for results.h5 and the report,
    and identified by its content's sha256 (hashed here, once per grid read; where it lies is not
    the identity, config._STRESS_FILE_LOCATION). The images themselves are checked at launch
    (launcher.missing_files). Refusals are ``v.fail`` naming ``[stress].<key>``."""
    from .data import DataError

    where = f"[stress].{key}"
    own: list[dict[str, Any]] = []
    taken: set[str] = set()
    for entry in entries:
        kind, _, given = entry.partition(":")
        full = os.path.normpath(os.path.join(v.grid_dir, os.path.expanduser(given.strip())))
        if any(e["path"] == full and e["kind"] == kind for e in own):
            raise v.fail(where, f"{entry!r} names {full} a second time")
        try:
            digest = own_set_digest(kind, full)
        except DataError as e:
            raise v.fail(where, f"{entry!r}: {e}") from None
        name = own_set_name(kind, full, taken)
        taken.add(name)
        own.append({"set": name, "kind": kind, "path": full, "sha256": digest})
    return own


def own_set_name(kind: str, path: str, taken: set[str]) -> str:
    """The set's name in results.h5 and the report: ``folder_<folder name>`` or ``npz_<file stem>``
    in lower-case letters, digits and '_' (a second set of that name gets _2, ...)."""
    stem = Path(path).name if kind == "folder" else Path(path).stem
    base = f"{kind}_{_SLUG.sub('_', stem.lower()).strip('_')[:40] or 'set'}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _own_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; allowed: a folder of "
                        f"{'/'.join(e[1:] for e in data.IMAGE_EXTENSIONS)} images")
    files = data.image_files(folder, skip_hidden_folders=True)
    if not files:
        raise DataError(f"{folder}: no images in it (nor in its sub-folders); allowed: "
                        f"{'/'.join(e[1:] for e in data.IMAGE_EXTENSIONS)} files")
    return files


def own_set_digest(kind: str, path: str | os.PathLike) -> str:
    """The sha256 that identifies a set's content: of the .npz file, or of a folder's images
    (relative path and the sha256 of each file's bytes, in sorted order). DataError when the file or
    folder is missing or holds no image."""
    from .ownmodel import sha256_file  # hashes a file once while it is unchanged (grids of many runs)

    path = Path(path)
    try:
        if kind == "npz":
            if not path.is_file():
                raise DataError(f"{path}: no such file; allowed: an .npz with x = uint8 (K, H, W, 3) images")
            return sha256_file(path)
        h = hashlib.sha256()
        for f in _own_files(path):
            h.update(json.dumps([f.relative_to(path).as_posix(), sha256_file(f)]).encode())
        return h.hexdigest()
    except OSError as e:
        raise DataError(f"{getattr(e, 'filename', None) or path}: cannot be read ({e.strerror or e})") from None


def _npz_x(path: Path, size: int) -> tuple[np.dtype, tuple[int, ...]]:
    heads = data._npz_headers(path)
    if "x" not in heads:
        raise DataError(f"{path}: no array 'x'; allowed: an .npz with x = uint8 (K, H, W, 3) images")
    dtype, shape = heads["x"]
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] < 1:
        raise DataError(f"{path}: x is {dtype} {shape}; allowed: uint8 (K, H, W, 3), K >= 1")
    if shape[1:3] != (size, size):
        raise DataError(f"{path}: x images are {shape[1]}x{shape[2]}; allowed: {size}x{size}, the dataset's "
                        "image size (resize them first)")
    return dtype, shape


def check_own_set(entry: dict[str, Any], size: int) -> None:
    """The launch check of your own set (``entry`` as the grid resolved it: kind, path): every image
    of a folder opened and verified (skipped when its cache is valid), an .npz's ``x`` header checked
    against the dataset's ``size``. One DataError naming the first bad file."""
    path = Path(entry["path"])
    if entry["kind"] == "npz":
        _npz_x(path, size)
        return
    files = _own_files(path)
    cache = data._cache_path(path, OWN_CACHE_NAME, size, files)
    if data._read_image_cache(cache, len(files), size, quiet=True) is not None:
        return
    for f, (mode, _) in zip(files, data._parallel(data._header, files)):
        if mode not in data.IMAGE_MODES:
            raise DataError(f"{f}: image mode {mode}; allowed: {' or '.join(data.IMAGE_MODES)} (convert the images first)")


#: the cache name of a folder used as an out-of-distribution set: <folder>/.cnnstress-cache/ood-<size>-<hash>.npz
OWN_CACHE_NAME = "ood"


def load_own_set(entry: dict[str, Any], dataset: str, size: int, n: int) -> tuple[np.ndarray, dict[str, Any]]:
    """uint8 ``(K, 3, size, size)`` of your own set (the first ``n`` images, sorted order) and its
    attributes. DataError when its content is no longer the one the grid recorded (its sha256)."""
    kind, path = entry["kind"], Path(entry["path"])
    if own_set_digest(kind, path) != entry["sha256"]:
        raise DataError(f"{path}: changed since the grid was read (its sha256 differs); launch the grid again, "
                        "which makes the changed set a new run")
    if kind == "npz":
        _npz_x(path, size)
        try:
            with np.load(path, allow_pickle=False) as npz:
                x = np.ascontiguousarray(npz["x"][:n].transpose(0, 3, 1, 2))
                total = int(npz["x"].shape[0])
        except Exception as e:  # noqa: BLE001 - truncated members and the like: one line naming the file
            raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
        what = f"your .npz {path.name!r}"
    else:
        files = _own_files(path)
        total = len(files)
        x = data.decode_cached(path, OWN_CACHE_NAME, size, files)[:n]
        what = f"your folder {path.name!r} (resized and centre-cropped to {size} px)"
    return x, {"name": entry["set"], "kind": "own", "description": f"{what}, images 0..{x.shape[0] - 1} of {total}",
               "dataset": dataset, "count": int(x.shape[0]), "source_count": total, "sha256": entry["sha256"]}
