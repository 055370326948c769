"""Datasets as uint8 NCHW numpy arrays: the embedded synthetic ``shapes`` set, CIFAR-10 and CIFAR-100.

Torch-free on purpose: the gather job fetches test images by index through :func:`load_test` on a
node that may have no torch. Only :func:`download` imports torchvision, lazily.

Every dataset has an *official* train split and test split. :func:`load_splits` carves a validation
split out of the official train split, stratified per class and fixed by ``split_seed`` so that all
runs of a sweep validate on the same images. ``Split.index`` always holds positions in the official
split the images came from.

``shapes``: procedural 32x32 images of 10 shapes on a textured background whose hue is one of 10
class hues. For a fraction ``shortcut`` of the training images the background hue is the class's
own hue (a planted shortcut); for the other training images and for every test image the background
class is uniform random, independent of the label. The arrays are cached under
``<root>/shapes/shapes-<hash>.npz``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import shlex
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from cnnstress import catalog

DATASETS: tuple[str, ...] = tuple(catalog.DATASETS)

# Bump whenever generate_shapes changes its output: it is part of the cache file name.
GENERATOR_VERSION = 1

IMAGE_SIZE = catalog.REFERENCE_IMAGE_SIZE  # the built-in datasets' side; your own may have another


class DataError(ValueError):
    """A dataset's files are missing or unreadable; the message says which file and what to run."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a report need to know about a dataset."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    mean: tuple[float, float, float]  # per-channel mean of the train images, pixel values in [0, 1]
    std: tuple[float, float, float]  # per-channel population std of the same


@dataclass
class Split:
    """Images and labels of one split; ``index`` holds positions in the official split."""

    x: np.ndarray  # uint8 (N, 3, S, S): S = 32 for the built-in datasets, 16..128 for your own
    y: np.ndarray  # int64 (N,)
    index: np.ndarray  # int64 (N,)
    mask: np.ndarray | None = None  # bool (N, S, S) object pixels (shapes, and arrays' mask_test)
    bg_class: np.ndarray | None = None  # int64 (N,) class whose hue the background has (shapes only)
    note: str = ""  # how the files were verified (CIFAR): for the run's log and gather's output

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, positions: np.ndarray) -> Split:
        """The images at ``positions`` (positions in this split, not official indices)."""
        return Split(
            x=self.x[positions],
            y=self.y[positions],
            index=self.index[positions],
            mask=None if self.mask is None else self.mask[positions],
            bg_class=None if self.bg_class is None else self.bg_class[positions],
        )


@dataclass
class Splits:
    """The three splits of one dataset plus its description (mean/std from ``train``)."""

    info: DatasetInfo
    train: Split
    val: Split
    test: Split
    note: str = ""  # how the files were verified (CIFAR): for the run's log


# --------------------------------------------------------------------------------------- options


def _check_dataset(dataset: str) -> str:
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; valid datasets: {', '.join(DATASETS)}")
    return dataset


def resolve_options(dataset: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The dataset's options with catalogue defaults filled in, checked against the catalogue."""
    _check_dataset(dataset)
    params = catalog.DATASETS[dataset][1]
    given = dict(options or {})
    unknown = sorted(set(given) - set(params))
    if unknown:
        valid = ", ".join(params) if params else "(none)"
        raise ValueError(f"unknown option {unknown[0]!r} for dataset {dataset!r}; valid options: {valid}")
    resolved: dict[str, Any] = {}
    for key, param in params.items():
        value = given.get(key, param.default)
        resolved[key] = param.check(value, f"option {dataset}.{key}")
    return resolved


# ------------------------------------------------------------------------------------ public API


def load_splits(
    dataset: str,
    root: str | os.PathLike,
    *,
    val_fraction: float,
    split_seed: int,
    options: Mapping[str, Any] | None = None,
) -> Splits:
    """Train/val/test splits; val is a stratified, ``split_seed``-fixed part of the official train."""
    _check_val_fraction(val_fraction)
    _check_split_seed(split_seed)
    official_train, test, class_names = _load_official(dataset, root, options)
    train_pos, val_pos = stratified_split(official_train.y, val_fraction, split_seed)
    train = official_train.subset(train_pos)
    val = official_train.subset(val_pos)
    info = _make_info(dataset, class_names, train.x)
    return Splits(info=info, train=train, val=val, test=test, note=test.note)


def load_test(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None = None) -> Split:
    """The official test split, ``index`` = 0..N-1."""
    return _load_official(dataset, root, options)[1]


def dataset_info(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None = None) -> DatasetInfo:
    """Name, classes and mean/std; mean/std here are over the whole official train split.

    (``load_splits(...).info`` computes them over the train part left after the validation split.)
    """
    official_train, _, class_names = _load_official(dataset, root, options)
    return _make_info(dataset, class_names, official_train.x)


def download(dataset: str, root: str | os.PathLike) -> Path:
    """Fetch a dataset into ``root`` with torchvision's downloader and return its folder.

    ``shapes`` needs no download (it is generated on first use); its cache folder is returned.
    """
    _check_dataset(dataset)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if dataset == "shapes":
        folder = root / "shapes"
        folder.mkdir(exist_ok=True)
        return folder
    import torchvision  # lazy: the rest of this module must work without torch

    source = _CIFAR[dataset]
    builder = getattr(torchvision.datasets, source.torchvision_class)
    for train in (True, False):
        builder(root=str(root), train=train, download=True)
    _load_cifar(dataset, root)  # check that what arrived is readable
    return root / source.folder


# ------------------------------------------------------------------------------ split and stats


def _check_val_fraction(val_fraction: float) -> None:
    ok = isinstance(val_fraction, (int, float)) and not isinstance(val_fraction, bool)
    if not ok or not (0.0 < float(val_fraction) <= 0.5):
        raise ValueError(f"val_fraction = {val_fraction!r} is invalid; allowed: a number in (0, 0.5]")


def _check_split_seed(split_seed: int) -> None:
    if isinstance(split_seed, bool) or not isinstance(split_seed, (int, np.integer)) or split_seed < 0:
        raise ValueError(f"split_seed = {split_seed!r} is invalid; allowed: an integer >= 0")


def stratified_split(y: np.ndarray, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions (sorted, int64) of the train part and the validation part of labels ``y``.

    Each class contributes ``round(val_fraction * count)`` images to validation, at least one, and
    keeps at least one for training (a class with a single image stays in train). Classes are
    visited in ascending order with one generator, so the result depends only on ``y``,
    ``val_fraction`` and ``split_seed``.
    """
    _check_val_fraction(val_fraction)
    _check_split_seed(split_seed)
    y = np.asarray(y)
    rng = np.random.default_rng(split_seed)
    val_parts = []
    for cls in np.unique(y):
        members = np.flatnonzero(y == cls)
        count = members.size
        n_val = min(max(1, round(val_fraction * count)), count - 1) if count >= 2 else 0
        val_parts.append(rng.permutation(members)[:n_val])
    val_pos = np.sort(np.concatenate(val_parts)).astype(np.int64) if val_parts else np.zeros(0, np.int64)
    is_val = np.zeros(y.shape[0], dtype=bool)
    is_val[val_pos] = True
    train_pos = np.flatnonzero(~is_val).astype(np.int64)
    return train_pos, val_pos


def channel_stats(x: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 NCHW images, as values in [0, 1], in float64.

    Counts each byte value per channel (exact integers) instead of converting the whole array to
    float64, which for CIFAR's train split would need more than a gigabyte.
    """
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"channel_stats needs uint8 (N, 3, H, W) images, got {x.dtype} {x.shape}")
    values = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for c in range(3):
        counts = np.bincount(x[:, c].reshape(-1), minlength=256).astype(np.float64)
        total = counts.sum()
        if total == 0:
            raise ValueError("channel_stats needs at least one image")
        mean = float((counts * values).sum() / total)
        var = float((counts * (values - mean) ** 2).sum() / total)
        means.append(mean)
        stds.append(math.sqrt(var))
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def _make_info(dataset: str, class_names: tuple[str, ...], train_x: np.ndarray) -> DatasetInfo:
    mean, std = channel_stats(train_x)
    return DatasetInfo(name=dataset, num_classes=len(class_names), class_names=class_names, mean=mean, std=std)


# ------------------------------------------------------------------------------------- registry

# name -> loader(root, resolved options) -> (official train, official test, class names)
_Loader = Callable[[Path, dict], "tuple[Split, Split, tuple[str, ...]]"]


def _load_official(
    dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None
) -> tuple[Split, Split, tuple[str, ...]]:
    opts = resolve_options(dataset, options)
    return _LOADERS[dataset](Path(root), opts)


# ----------------------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarSource:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    torchvision_class: str


_CIFAR: dict[str, _CifarSource] = {
    "cifar10": _CifarSource(
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key=b"labels",
        names_key=b"label_names",
        num_classes=10,
        torchvision_class="CIFAR10",
    ),
    "cifar100": _CifarSource(
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key=b"fine_labels",
        names_key=b"fine_label_names",
        num_classes=100,
        torchvision_class="CIFAR100",
    ),
}


def _download_hint(dataset: str, root: Path) -> str:
    return f"download it with: python launch.py --download {dataset} --data-root {shlex.quote(str(root))}"


# The md5 of every file of the official python-version archives (cifar-10-python.tar.gz and
# cifar-100-python.tar.gz, https://www.cs.toronto.edu/~kriz/cifar.html), copied from torchvision's
# torchvision/datasets/cifar.py (CIFAR10 and CIFAR100: train_list, test_list, meta; torchvision
# 0.29.1), which checks them before it unpickles a batch.
OFFICIAL_MD5: dict[str, dict[str, str]] = {
    "cifar10": {
        "data_batch_1": "c99cafc152244af753f735de768cd75f",
        "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
        "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
        "data_batch_4": "634d18415352ddfa80567beed471001a",
        "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
        "test_batch": "40351d587109b95175f43aff81a1287e",
        "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
    },
    "cifar100": {
        "train": "16019d7e3df5f24257cddd939b257f8d",
        "test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
        "meta": "7973b15100ade9c7d40fb424638fde48",
    },
}

OFFICIAL_SAID = "checksum verified (official file)"
RESTRICTED_SAID = "not the official file: read with a restricted unpickler"


def _numpy_global(module: str, name: str) -> Any:
    """numpy's own object for a name that numpy 1 (``numpy.core``) or 2 (``numpy._core``) pickles."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    return getattr(multiarray if module.endswith("multiarray") else numeric, name)


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles of bytes use it (str -> latin-1), and nothing else."""
    if not isinstance(text, str) or encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode of {type(text).__name__} to {encoding!r}")
    return text.encode("latin-1")


def _globals_allowed() -> dict[tuple[str, str], Any]:
    # The official batches are Python 2 pickles of a dict of bytes keys, lists of ints and bytes, and
    # one numpy array (numpy.core.multiarray._reconstruct, numpy.ndarray, numpy.dtype: the same set
    # Intel's datumaro admits for them). Python 3 writes bytes through _codecs.encode under protocol
    # 2 (tests/fake_cifar.py) and numpy >= 2 names numpy._core; protocol 5 arrays use _frombuffer.
    allowed: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                                           ("_codecs", "encode"): _latin1_encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _numpy_global("multiarray", "_reconstruct")
        allowed[(f"{core}.numeric", "_frombuffer")] = _numpy_global("numeric", "_frombuffer")
    return allowed


class _RefusedGlobal(Exception):
    """Raised by the restricted unpickler for a global the CIFAR format never uses."""


class _BatchUnpickler(pickle.Unpickler):
    """Admits only the globals a CIFAR batch needs (dicts, lists, bytes and ints need none), so no
    file can make unpickling call anything else (os.system in a ``__reduce__``, ...)."""

    _allowed = _globals_allowed()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._allowed:
            return self._allowed[(module, name)]
        raise _RefusedGlobal(f"{module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal("a persistent id")


def _read_pickle(path: Path, dataset: str, root: Path) -> tuple[dict, bool]:
    """One CIFAR pickle (a dict with bytes keys) and whether its md5 is the official one's; or
    DataError naming the file.

    Every file goes through the restricted unpickler, the official ones too: the checksum only says
    which file it is (and for the log), it is not what keeps code from running, so no reliance on
    md5 resisting a forged file is needed. The bytes are read once, so the file that was hashed is the
    file that is unpickled."""
    if not path.is_file():
        raise DataError(f"{dataset}: missing file {path}; {_download_hint(dataset, root)}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{dataset}: file {path} cannot be read ({exc})") from exc
    official = hashlib.md5(raw, usedforsecurity=False).hexdigest() == OFFICIAL_MD5[dataset].get(path.name)
    try:
        content = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _RefusedGlobal as exc:
        raise DataError(
            f"{dataset}: file {path} asks to call {exc}, which no CIFAR batch needs; refused, nothing run "
            f"(allowed: dicts, lists, bytes, numbers and numpy arrays); replace it with the official file: "
            f"{_download_hint(dataset, root)}"
        ) from None
    except Exception as exc:  # truncated/corrupt pickles raise many different types
        raise DataError(
            f"{dataset}: file {path} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            f"delete it and {_download_hint(dataset, root)}"
        ) from exc
    if not isinstance(content, dict):
        raise DataError(f"{dataset}: file {path} does not hold a dict as the official format does")
    return content, official


def _verification_note(dataset: str, folder: Path, verdicts: dict[str, bool]) -> str:
    """One line for the log: which files matched the official checksums, which did not."""
    parts = []
    for official, said in ((True, OFFICIAL_SAID), (False, RESTRICTED_SAID)):
        names = [name for name, ok in verdicts.items() if ok is official]
        if names:
            parts.append(f"{', '.join(names)}: {said}")
    return f"{dataset} in {folder}: {'; '.join(parts)}"


def _cifar_batch(path: Path, source: _CifarSource, dataset: str, root: Path,
                 verdicts: dict[str, bool]) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) uint8 and labels (N,) int64 of one batch file, validated; records in
    ``verdicts`` whether the file is the official one."""
    content, verdicts[path.name] = _read_pickle(path, dataset, root)
    for key in (b"data", source.label_key):
        if key not in content:
            raise DataError(f"{dataset}: file {path} lacks the key {key!r} of the official format")
    data = content[b"data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        shape = getattr(data, "shape", None)
        raise DataError(f"{dataset}: file {path} has data {getattr(data, 'dtype', type(data))} {shape}, expected uint8 (N, 3072)")
    try:
        labels = np.asarray(content[source.label_key], dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{dataset}: file {path} has labels that are not integers") from exc
    if labels.shape[0] != data.shape[0]:
        raise DataError(f"{dataset}: file {path} has {data.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= source.num_classes):
        raise DataError(f"{dataset}: file {path} has labels outside 0..{source.num_classes - 1}")
    # Each row holds the R, G and B planes one after the other, each plane row-major.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
    return images, labels


def _load_cifar(dataset: str, root: Path) -> tuple[Split, Split, tuple[str, ...]]:
    source = _CIFAR[dataset]
    root = Path(root)
    folder = root / source.folder
    if not folder.is_dir():
        raise DataError(f"{dataset}: folder {folder} is missing; {_download_hint(dataset, root)}")
    verdicts: dict[str, bool] = {}
    meta, verdicts[source.meta_file] = _read_pickle(folder / source.meta_file, dataset, root)
    names = meta.get(source.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != source.num_classes:
        raise DataError(f"{dataset}: file {folder / source.meta_file} lacks {source.num_classes} {source.names_key!r}")
    class_names = tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names)

    train_parts = [_cifar_batch(folder / name, source, dataset, root, verdicts) for name in source.train_files]
    train_x = np.concatenate([p[0] for p in train_parts])
    train_y = np.concatenate([p[1] for p in train_parts])
    test_x, test_y = _cifar_batch(folder / source.test_file, source, dataset, root, verdicts)
    note = _verification_note(dataset, folder, verdicts)
    train = Split(x=train_x, y=train_y, index=np.arange(train_y.shape[0], dtype=np.int64), note=note)
    test = Split(x=test_x, y=test_y, index=np.arange(test_y.shape[0], dtype=np.int64), note=note)
    return train, test, class_names


def absent_or_empty(folder: Path, names: Sequence[str]) -> list[str]:
    """``name (why)`` for each of ``names`` in ``folder`` that is missing, unreadable or empty: what
    a launch can check of a dataset's files without reading them."""
    bad = []
    for name in names:
        try:
            with open(folder / name, "rb") as fh:
                empty = not fh.read(1)
        except OSError as exc:
            bad.append(f"{name} ({'missing' if isinstance(exc, FileNotFoundError) else exc.strerror or 'unreadable'})")
            continue
        if empty:
            bad.append(f"{name} (empty)")
    return bad


def cifar_missing(dataset: str, root: str | os.PathLike) -> str:
    """What of a CIFAR dataset's files is missing, unreadable or empty under ``root``, with the
    command that fetches them ("" when all are there). No file is unpickled: the launch checks
    this before anything is submitted; the workers read and check the files in full."""
    source, root = _CIFAR[dataset], Path(root)
    folder = root / source.folder
    if not folder.is_dir():
        return f"{dataset} is not under {root} (no folder {source.folder}/); {_download_hint(dataset, root)}"
    bad = absent_or_empty(folder, (source.meta_file, *source.train_files, source.test_file))
    if bad:
        return f"{dataset} in {folder}: {', '.join(bad)}; {_download_hint(dataset, root)}"
    return ""


def load_cifar_test_file(dataset: str, root: str | os.PathLike) -> Split:
    """A CIFAR dataset's official test split read from its test file alone (no train files).

    For out-of-distribution sets (:mod:`cnnstress.oodsets`), which need the other CIFAR's test
    images but not its 50 000 training images. Same validation and DataError messages (the missing
    or corrupt file by name, with the ``--download`` hint) as :func:`load_test`.
    """
    path = cifar_test_file(dataset, root)
    verdicts: dict[str, bool] = {}
    x, y = _cifar_batch(path, _CIFAR[dataset], dataset, Path(root), verdicts)
    return Split(x=x, y=y, index=np.arange(y.shape[0], dtype=np.int64),
                 note=_verification_note(dataset, path.parent, verdicts))


def cifar_test_file(dataset: str, root: str | os.PathLike) -> Path:
    """Where :func:`load_cifar_test_file` reads ``dataset``'s test split from."""
    if dataset not in _CIFAR:
        raise ValueError(f"not a CIFAR dataset: {dataset!r}; valid: {', '.join(_CIFAR)}")
    source = _CIFAR[dataset]
    return Path(root) / source.folder / source.test_file


# ---------------------------------------------------------------------------------------- shapes
#
# Every shape is an inside-test on coordinates (u, v) of the shape's own frame: the image pixel
# grid shifted to the shape's centre, rotated by its angle and divided by its scale in pixels, so
# each shape fits roughly in the unit disk. The 10 shapes are chosen to stay different under any
# rotation (no square vs. diamond, no plus vs. x).


def _circle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 0.80**2


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(u), np.abs(v)) <= 0.64


def _regular_polygon(u: np.ndarray, v: np.ndarray, sides: int, circumradius: float) -> np.ndarray:
    inside = np.ones(u.shape, dtype=bool)
    apothem = circumradius * math.cos(math.pi / sides)
    for i in range(sides):
        angle = math.pi / 2 + math.pi / sides + 2 * math.pi * i / sides  # edge normals
        inside &= u * math.cos(angle) + v * math.sin(angle) <= apothem
    return inside


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return _regular_polygon(u, v - 0.12, 3, 1.0)  # shifted so its bounding box is centred


def _plus(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    return ((au <= 0.24) & (av <= 0.9)) | ((av <= 0.24) & (au <= 0.9))


def _ring(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    r2 = u * u + v * v
    return (r2 >= 0.50**2) & (r2 <= 0.92**2)


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Five-pointed star: fold the angle onto one half-spike and test against its outer edge."""
    points, outer, inner = 5, 1.0, 0.42
    sector = 2 * math.pi / points
    angle = np.arctan2(v, u) + math.pi / 2  # a spike points "up"
    folded = np.abs((angle + sector / 2) % sector - sector / 2)  # 0 at a tip, sector/2 between tips
    r = np.sqrt(u * u + v * v)
    px, py = r * np.cos(folded), r * np.sin(folded)
    tip = (outer, 0.0)
    notch = (inner * math.cos(sector / 2), inner * math.sin(sector / 2))
    ex, ey = notch[0] - tip[0], notch[1] - tip[1]
    # Origin side of the tip->notch edge: the cross product has the same sign as for (0, 0).
    return ex * (py - tip[1]) - ey * (px - tip[0]) >= 0


def _crescent(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (u * u + v * v <= 0.85**2) & ((u - 0.42) ** 2 + v * v >= 0.68**2)


def _heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The classic implicit heart (x^2 + y^2 - 1)^3 - x^2 y^3 <= 0, scaled into the unit disk."""
    x = u * 1.25
    y = -v * 1.25 + 0.12  # image rows grow downwards; the heart's lobes are at +y
    return (x * x + y * y - 1.0) ** 3 - x * x * y**3 <= 0.0


def _arrow(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    shaft = (np.abs(v) <= 0.17) & (u >= -0.95) & (u <= 0.15)
    head = (u >= 0.05) & (u <= 0.95) & (np.abs(v) <= 0.66 * (0.95 - u) / 0.90)
    return shaft | head


def _bar(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return (np.abs(u) <= 0.95) & (np.abs(v) <= 0.28)


#: A table of shapes: (name, inside-test on shape-frame coordinates (u, v)).
ShapeTable = tuple[tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]], ...]

SHAPES: ShapeTable = (
    ("circle", _circle),
    ("square", _square),
    ("triangle", _triangle),
    ("plus", _plus),
    ("ring", _ring),
    ("star", _star),
    ("crescent", _crescent),
    ("heart", _heart),
    ("arrow", _arrow),
    ("bar", _bar),
)
SHAPE_NAMES: tuple[str, ...] = tuple(name for name, _ in SHAPES)
NUM_SHAPES = len(SHAPES)

_SUPERSAMPLE = 2  # 2x2 samples per pixel: anti-aliased edges
_CHUNK = 1024  # images per vectorised block; part of the output (noise is drawn per block)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV (all in [0, 1], broadcastable) to RGB, stacked on a new axis 1."""
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = (n + h * 6.0) % 6.0
        channels.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(np.broadcast_arrays(*channels), axis=1)


def _shape_params(
    n: int, rng: np.random.Generator, shortcut: float, num_shapes: int = NUM_SHAPES,
    scale: tuple[float, float] = (7.0, 12.0), hue_offset: float = 0.0,
) -> dict[str, np.ndarray]:
    """Per-image random parameters, drawn in a fixed order (part of the output's definition).

    ``y`` indexes a table of ``num_shapes`` shapes (balanced); the background hue classes are
    always the ``NUM_SHAPES`` class hues, whatever the table (see :func:`generate_shapes`).
    ``scale`` and ``hue_offset`` move the draws without changing how many numbers are drawn, so the
    defaults give the dataset's images bit for bit (a shifted split, SHIFTED_SHAPES, changes them).
    """
    y = rng.permutation(np.arange(n) % num_shapes).astype(np.int64)  # balanced classes
    bg_class = rng.integers(0, NUM_SHAPES, size=n).astype(np.int64)  # independent of y ...
    planted = rng.permutation(n)[: int(round(shortcut * n))]
    bg_class[planted] = y[planted]  # ... except for the planted shortcut images
    scale = rng.uniform(scale[0], scale[1], n)  # pixels per shape unit
    margin = 0.95 * scale
    p = dict(
        y=y,
        bg_class=bg_class,
        scale=scale,
        angle=rng.uniform(0.0, 2 * math.pi, n),
        cx=margin + rng.random(n) * (IMAGE_SIZE - 2 * margin),
        cy=margin + rng.random(n) * (IMAGE_SIZE - 2 * margin),
        dark_bg=rng.random(n) < 0.5,
        bg_hue=(bg_class / NUM_SHAPES + hue_offset + rng.uniform(-0.02, 0.02, n)) % 1.0,
        bg_sat=rng.uniform(0.55, 0.95, n),
        stripe_freq=rng.uniform(0.08, 0.25, n),  # cycles per pixel
        stripe_angle=rng.uniform(0.0, math.pi, n),
        stripe_phase=rng.uniform(0.0, 2 * math.pi, n),
        stripe_amp=rng.uniform(0.03, 0.10, n),
        grad_angle=rng.uniform(0.0, 2 * math.pi, n),
        grad_amp=rng.uniform(0.0, 0.08, n),
        fg_hue=rng.random(n),
        fg_sat=rng.uniform(0.0, 0.7, n),
        light=rng.random(n),  # brightness within the allowed band, see _render
    )
    # Contrast: a dark background gets a bright shape and vice versa, so the shape always shows.
    p["bg_val"] = np.where(p["dark_bg"], 0.25 + 0.20 * p["light"], 0.70 + 0.15 * p["light"])
    p["fg_val"] = np.where(p["dark_bg"], 0.85 + 0.15 * rng.random(n), 0.20 * rng.random(n))
    return p


def _shape_alpha(p: dict[str, np.ndarray], sl: slice, shapes: ShapeTable = SHAPES) -> np.ndarray:
    """Fraction (n, 32, 32) of each pixel's 2x2 sub-samples inside the image's shape (``shapes[y]``)."""
    size = IMAGE_SIZE * _SUPERSAMPLE
    coords = (np.arange(size, dtype=np.float32) + 0.5) / _SUPERSAMPLE
    gy, gx = np.meshgrid(coords, coords, indexing="ij")
    cos = np.cos(p["angle"][sl]).astype(np.float32)[:, None, None]
    sin = np.sin(p["angle"][sl]).astype(np.float32)[:, None, None]
    inv = (1.0 / p["scale"][sl]).astype(np.float32)[:, None, None]
    dx = gx[None] - p["cx"][sl].astype(np.float32)[:, None, None]
    dy = gy[None] - p["cy"][sl].astype(np.float32)[:, None, None]
    u = (dx * cos + dy * sin) * inv
    v = (dy * cos - dx * sin) * inv
    labels = p["y"][sl]
    inside = np.zeros(u.shape, dtype=bool)
    for cls, (_, fn) in enumerate(shapes):
        members = np.flatnonzero(labels == cls)
        if members.size:
            inside[members] = fn(u[members], v[members])
    hits = np.zeros((inside.shape[0], IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    for dy in range(_SUPERSAMPLE):
        for dx in range(_SUPERSAMPLE):
            hits += inside[:, dy::_SUPERSAMPLE, dx::_SUPERSAMPLE]
    return hits.astype(np.float32) / np.float32(_SUPERSAMPLE * _SUPERSAMPLE)


def _background(p: dict[str, np.ndarray], sl: slice) -> np.ndarray:
    """Textured background (n, 3, 32, 32) in [0, 1]: class hue, stripes and a brightness gradient."""
    coords = np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5
    gy, gx = np.meshgrid(coords, coords, indexing="ij")

    def per_image(key: str) -> np.ndarray:
        return p[key][sl].astype(np.float32)[:, None, None]

    along = gx[None] * np.cos(per_image("stripe_angle")) + gy[None] * np.sin(per_image("stripe_angle"))
    stripes = per_image("stripe_amp") * np.sin(2 * np.pi * per_image("stripe_freq") * along + per_image("stripe_phase"))
    ramp = (gx[None] - 16) * np.cos(per_image("grad_angle")) + (gy[None] - 16) * np.sin(per_image("grad_angle"))
    value = np.clip(per_image("bg_val") + stripes + per_image("grad_amp") * ramp / 16, 0.0, 1.0)
    return _hsv_to_rgb(per_image("bg_hue"), per_image("bg_sat"), value)


def generate_shapes(
    n: int, *, seed: int, shortcut: float, shapes: ShapeTable = SHAPES,
    scale: tuple[float, float] = (7.0, 12.0), hue_offset: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` shape images from ``seed``: x uint8 (n,3,32,32), y int64, mask bool (n,32,32), bg_class int64.

    Classes are balanced (``n // 10`` or one more each). Exactly ``round(shortcut * n)`` images get
    the background hue of their own class; the others a uniform random one, so the measured rate
    ``mean(bg_class == y)`` is about ``shortcut + (1 - shortcut) / 10``.

    ``shapes`` swaps the table of drawn shapes (1 to ``NUM_SHAPES`` entries; ``y`` then indexes it,
    balanced over its entries) while every other parameter (position, scale, angle, colours,
    background, noise) is drawn exactly as for the class shapes: the out-of-distribution set
    ``shapes_novel`` (:mod:`cnnstress.oodsets`) differs from the test images only in the shapes.
    The default table gives the dataset's images, unchanged.

    ``scale`` (pixels per shape unit, drawn uniformly; the dataset's 7 to 12) and ``hue_offset``
    (added to every background hue, a fraction of the colour circle) make a shifted split
    (:data:`SHIFTED_SHAPES`); their defaults leave the images unchanged.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n = {n!r} is invalid; allowed: an integer >= 1")
    if not (isinstance(shortcut, (int, float)) and 0.0 <= float(shortcut) <= 1.0):
        raise ValueError(f"shortcut = {shortcut!r} is invalid; allowed: a number in [0, 1]")
    if not (1 <= len(shapes) <= NUM_SHAPES):
        raise ValueError(f"shapes has {len(shapes)} entries; allowed: 1 to {NUM_SHAPES}")
    rng = np.random.default_rng(seed)
    if not (0.5 <= float(scale[0]) <= float(scale[1]) <= 14.0):
        raise ValueError(f"scale = {scale!r} is invalid; allowed: (lo, hi) with 0.5 <= lo <= hi <= 14")
    p = _shape_params(int(n), rng, float(shortcut), len(shapes), (float(scale[0]), float(scale[1])), float(hue_offset))
    x = np.empty((n, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    mask = np.empty((n, IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        alpha = _shape_alpha(p, sl, shapes)[:, None]
        fg = _hsv_to_rgb(p["fg_hue"][sl], p["fg_sat"][sl], p["fg_val"][sl]).astype(np.float32)[:, :, None, None]
        image = alpha * fg + (1.0 - alpha) * _background(p, sl)
        noise = rng.standard_normal(size=image.shape, dtype=np.float32)  # sensor-like noise
        image = image * np.float32(255.0) + noise * np.float32(0.03 * 255.0)
        x[sl] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        mask[sl] = alpha[:, 0] >= 0.5
    return x, p["y"], mask, p["bg_class"]


#: The shifted split of ``shapes`` ([stress].shift_sets = ["shapes_shifted"]): the same ten shapes,
#: drawn smaller than any training image (4.5 to 6.5 pixels per shape unit; the dataset's are 7 to
#: 12) on background hues half-way between the ten class hues (hues no image of the dataset has).
SHIFTED_SHAPES: dict[str, Any] = {"scale": (4.5, 6.5), "hue_offset": 0.5 / NUM_SHAPES}


def _test_seed(data_seed: int) -> int:
    """The seed of the test images: derived from ``data_seed`` so that train and test differ."""
    return int(np.random.SeedSequence([int(data_seed), 0x7E57]).generate_state(1, dtype=np.uint64)[0])


def shapes_cache_path(root: str | os.PathLike, options: Mapping[str, Any] | None = None) -> Path:
    """Where the generated arrays for these shapes options are cached."""
    opts = resolve_options("shapes", options)
    key = json.dumps(
        [opts["n_train"], opts["n_test"], float(opts["shortcut"]), opts["data_seed"], GENERATOR_VERSION]
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return Path(root) / "shapes" / f"shapes-{digest}.npz"


_SHAPES_KEYS = ("x", "y", "mask", "bg_class")


def _read_shapes_cache(path: Path, n_train: int, n_test: int) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None (with a warning) when the file is unreadable or does not fit."""
    expected = {"x": (np.uint8, (3, 32, 32)), "y": (np.int64, ()), "mask": (np.bool_, (32, 32)), "bg_class": (np.int64, ())}
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        for part, count in (("train", n_train), ("test", n_test)):
            for key, (dtype, tail) in expected.items():
                arr = arrays[f"{part}_{key}"]
                if arr.dtype != dtype or arr.shape != (count, *tail):
                    raise ValueError(f"{part}_{key} has {arr.dtype} {arr.shape}")
        return arrays
    except Exception as exc:  # a cache: anything wrong with it means "generate again"
        warnings.warn(f"shapes cache {path} is unreadable ({exc}); generating it again", stacklevel=3)
        return None


def _write_atomic_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` to ``path`` through a temp file in the same folder and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _load_shapes(root: Path, opts: dict) -> tuple[Split, Split, tuple[str, ...]]:
    path = shapes_cache_path(root, opts)
    arrays = _read_shapes_cache(path, opts["n_train"], opts["n_test"]) if path.is_file() else None
    if arrays is None:
        # Looked up through the module so that tests can check the cache is really used.
        train = generate_shapes(opts["n_train"], seed=opts["data_seed"], shortcut=opts["shortcut"])
        test = generate_shapes(opts["n_test"], seed=_test_seed(opts["data_seed"]), shortcut=0.0)
        arrays = {f"train_{k}": a for k, a in zip(_SHAPES_KEYS, train)}
        arrays.update({f"test_{k}": a for k, a in zip(_SHAPES_KEYS, test)})
        try:
            _write_atomic_npz(path, arrays)
        except OSError as exc:  # a read-only data root still works, just without a cache
            warnings.warn(f"could not cache shapes at {path}: {exc}", stacklevel=3)

    def split(part: str) -> Split:
        y = arrays[f"{part}_y"]
        return Split(
            x=arrays[f"{part}_x"],
            y=y,
            index=np.arange(y.shape[0], dtype=np.int64),
            mask=arrays[f"{part}_mask"],
            bg_class=arrays[f"{part}_bg_class"],
        )

    return split("train"), split("test"), SHAPE_NAMES


# ------------------------------------------------------------------------------ your own images
#
# ``imagefolder``: torchvision's ImageFolder convention, ``<root>/<split>/<class>/**/<image>``.
# Classes are the split folder's sub-folders in sorted order (names starting with "." skipped); the
# images of a class are walked as torchvision walks them (sorted os.walk, sorted names), which makes
# the test index. Every image is decoded once, resized (shorter side) and centre-cropped, into
# ``<root>/.cnnstress-cache/<split>-<size>-<hash>.npz``; the hash covers each file's relative path,
# size and mtime, so a changed, added or removed file rebuilds the cache.
#
# ``arrays``: one ``.npz`` holding x_train, y_train, x_test, y_test (uint8 NHWC, integer labels) and
# optionally class_names (strings) and mask_test (bool (N, H, W) object pixels).

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: PIL modes an image may have; all images of one dataset must share one of them.
IMAGE_MODES = ("RGB", "L")
CACHE_DIR = ".cnnstress-cache"
# Bump whenever _decode changes its output: it is part of the cache's hash.
DECODER_VERSION = 1
#: image sides every part of the pipeline (models, augmentations, corruptions, OOD sets, figures) handles
SUPPORTED_IMAGE_SIZES = range(catalog.MIN_IMAGE_SIZE, catalog.MAX_IMAGE_SIZE + 1)
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _own_path(opts: Mapping[str, Any], key: str, root: Path) -> Path:
    """An option naming a file or folder: as given when absolute (the grid resolves relative ones
    against its own folder), else under the data root."""
    value = str(opts[key])
    if not value:
        raise DataError(f"dataset_options.{key} is empty; allowed: a path to your data")
    path = Path(value)
    return path if path.is_absolute() else root / path


def _classes(split_dir: Path) -> tuple[str, ...]:
    try:
        entries = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    except FileNotFoundError:
        raise DataError(f"{split_dir}: no such folder; allowed: <root>/<split>/<class>/<images>") from None
    except NotADirectoryError:
        raise DataError(f"{split_dir}: not a folder; allowed: <root>/<split>/<class>/<images>") from None
    except OSError as e:
        raise DataError(f"{split_dir}: cannot be listed ({e.strerror or e})") from None
    if len(entries) < 2:
        raise DataError(f"{split_dir}: {len(entries)} class folder(s); allowed: at least 2 (one folder per class)")
    return tuple(entries)


def image_files(folder: Path, *, skip_hidden_folders: bool = False) -> list[Path]:
    """The images under ``folder`` in torchvision ImageFolder's order: sorted walk, sorted names
    (names starting with "." skipped; with ``skip_hidden_folders`` their folders too, such as the
    cache folder inside a folder of images that is not split into classes)."""
    files = []
    for here, dirs, names in sorted(os.walk(folder, followlinks=True)):
        if skip_hidden_folders:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            if any(part.startswith(".") for part in Path(here).relative_to(folder).parts):
                continue
        for name in sorted(names):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                files.append(Path(here) / name)
    return files


def _class_files(class_dir: Path) -> list[Path]:
    """The images of one class in torchvision ImageFolder's order: sorted walk, sorted names."""
    files = image_files(class_dir)
    if not files:
        raise DataError(f"{class_dir}: empty class folder (no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} "
                        "images); allowed: at least one image per class")
    return files


def imagefolder_listing(root: Path, split: str) -> tuple[tuple[str, ...], list[Path], np.ndarray]:
    """Class names, image files (test index order) and labels of one split; no image is opened."""
    split_dir = root / split
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (dataset_options.root); allowed: <root>/<split>/<class>/<images>")
    classes = _classes(split_dir)
    files: list[Path] = []
    labels: list[int] = []
    for label, name in enumerate(classes):
        found = _class_files(split_dir / name)
        files += found
        labels += [label] * len(found)
    return classes, files, np.asarray(labels, dtype=np.int64)


def imagefolder_classes(root: Path, opts: Mapping[str, Any]) -> tuple[str, ...]:
    """The class names of the train split, checked to be the test split's too (folders only)."""
    classes = _classes(root / opts["train"])
    test = _classes(root / opts["test"])
    if test != classes:
        extra = sorted(set(test) ^ set(classes))
        raise DataError(f"{root / opts['test']}: its class folders differ from {root / opts['train']}'s "
                        f"(e.g. {extra[0] if extra else 'their order'!r}); allowed: the same class folders in both splits")
    return classes


def _n_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))  # the CPUs of this task (Slurm's cgroup), not the node's
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def _parallel(fn: Callable[[Path], Any], files: list[Path], workers: int | None = None) -> list[Any]:
    """``fn`` over ``files`` in order, on threads (PIL releases the GIL while it decodes)."""
    from concurrent.futures import ThreadPoolExecutor

    workers = min(workers or _n_workers(), max(1, len(files)))
    if workers == 1:
        return [fn(f) for f in files]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, files))


#: how decode_images spreads images over the CPUs of the task (bench/decode.py measures each).
#: "auto": processes for PARALLEL_MIN images or more, else one loop here. A process pool, not
#: threads: opening a PNG (PIL's chunk parser, the mode conversion, the crop) is Python holding the
#: GIL for much of a 32-pixel image's decode, so threads can gain only the rest (0.54x-1.26x of the
#: plain loop on a shared 2-core VM, docs/performance.md), while processes hold one GIL each.
DECODE_POOLS = ("auto", "process", "thread", "serial")
#: below this many images a pool's start (a fresh interpreter per worker that imports numpy and
#: PIL: 0.4-1.0 s measured) costs more than the decode it shares out
PARALLEL_MIN = 4000
def _decode_slice(paths: list[str], size: int) -> bytes:
    """What one process of the pool does: the images decoded in order, as raw uint8 bytes."""
    return b"".join(_decode(Path(p), size).tobytes() for p in paths)


def _decode_processes(files: list[Path], size: int, n: int) -> np.ndarray:
    """``files`` cut into ``n`` runs of neighbours, each decoded by ``python -m cnnstress.data
    --decode`` (paths in as JSON, pixels out as raw bytes). Fresh interpreters, not a
    multiprocessing pool: fork would copy a training process's threads mid-lock, and spawn or
    forkserver run the calling script's top level again in every child (a script without an
    ``if __name__ == "__main__"`` guard starts itself over). The first failing slice, in file order,
    names its first bad file."""
    import subprocess
    import sys

    bounds = np.linspace(0, len(files), n + 1).round().astype(int)
    slices = [files[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    errs = [tempfile.TemporaryFile() for _ in slices]  # a file, not a pipe: a chatty child never blocks
    procs = [subprocess.Popen([sys.executable, "-m", "cnnstress.data", "--decode", str(size)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                              cwd=str(Path(__file__).resolve().parents[1]))  # where the package is
             for err in errs]
    # every child has its paths before any is read from: they decode at once; the transfers follow
    try:
        for proc, part in zip(procs, slices):
            proc.stdin.write(json.dumps([str(f) for f in part]).encode())
            proc.stdin.close()
        outputs = []
        for proc, err in zip(procs, errs):
            out = proc.stdout.read()
            proc.wait()
            err.seek(0)
            outputs.append((out, err.read()))
    finally:
        for proc, err in zip(procs, errs):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()
            err.close()
    per_image = 3 * size * size
    arrays = []
    for proc, part, (out, err) in zip(procs, slices, outputs):
        if proc.returncode != 0 or len(out) != per_image * len(part):
            last = err.decode(errors="replace").strip().splitlines()
            raise DataError(last[-1] if proc.returncode == 2 and last else
                            f"{part[0].parent}: decoding images failed (exit status {proc.returncode}: "
                            f"{last[-1] if last else 'no message'})")
        arrays.append(np.frombuffer(out, np.uint8).reshape(len(part), 3, size, size))
    return np.concatenate(arrays)


def decode_images(files: list[Path], size: int, *, pool: str = "auto", workers: int | None = None) -> np.ndarray:
    """uint8 ``(N, 3, size, size)``: every file decoded by :func:`_decode`, in order, on ``workers``
    threads or processes (default: the CPUs of this task, ``os.sched_getaffinity``). Each image is
    decoded alone by the same code whichever pool runs it, so the result is the serial one, byte for
    byte. A bad file is a DataError naming it (the first one in file order)."""
    if pool not in DECODE_POOLS:
        raise ValueError(f"pool = {pool!r}; allowed: {', '.join(DECODE_POOLS)}")
    if not files:
        return np.zeros((0, 3, size, size), np.uint8)
    n = min(workers or _n_workers(), len(files))
    if pool == "auto":
        pool = "process" if len(files) >= PARALLEL_MIN else "serial"
    if pool == "serial" or n == 1:
        return np.stack([_decode(f, size) for f in files])
    if pool == "thread":
        return np.stack(_parallel(lambda f: _decode(f, size), files, n))
    return _decode_processes(files, size, n)


def _header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, size) of an image, its file checked whole (PIL's verify), as a DataError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e}); allowed: "
                        f"{'/'.join(e[1:].upper() for e in IMAGE_EXTENSIONS)} files") from None
    return mode, size


def check_imagefolder(root: Path, opts: Mapping[str, Any]) -> tuple[str, ...]:
    """Every image of both splits opened and verified (no pixel decoded): one DataError naming the
    first bad file. Returns the class names. Skipped per split when its cache is valid."""
    classes = imagefolder_classes(root, opts)
    first: tuple[Path, str] | None = None
    for split in (opts["train"], opts["test"]):
        _, files, _ = imagefolder_listing(root, split)
        if _read_image_cache(_cache_path(root, split, opts["image_size"], files), len(files),
                             opts["image_size"], quiet=True) is not None:
            continue  # decoded before: every file of this listing was readable
        for path, (mode, _) in zip(files, _parallel(_header, files)):
            if mode not in IMAGE_MODES:
                raise DataError(f"{path}: image mode {mode}; allowed: {' or '.join(IMAGE_MODES)} (convert the images first)")
            if first is None:
                first = (path, mode)
            elif mode != first[1]:
                raise DataError(f"{path}: image mode {mode}, but {first[0]} is {first[1]}; allowed: one mode for "
                                f"all images of a dataset ({' or '.join(IMAGE_MODES)})")
    return classes


def _cache_path(root: Path, split: str, size: int, files: list[Path]) -> Path:
    h = hashlib.sha256(json.dumps([DECODER_VERSION, size]).encode())
    for path in files:
        st = path.stat()
        h.update(json.dumps([str(path.relative_to(root)), st.st_size, st.st_mtime_ns]).encode())
    safe_split = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in split)
    return root / CACHE_DIR / f"{safe_split}-{size}-{h.hexdigest()[:16]}.npz"


def _read_image_cache(path: Path, n: int, size: int, quiet: bool = False) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            x = npz["x"]
        if x.dtype != np.uint8 or x.shape != (n, 3, size, size):
            raise ValueError(f"x has {x.dtype} {x.shape}, expected uint8 {(n, 3, size, size)}")
        return x
    except Exception as exc:  # a cache: anything wrong with it means "decode again"
        if not quiet:
            warnings.warn(f"image cache {path} is unreadable ({exc}); decoding the images again", stacklevel=3)
        return None


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 (3, size, size): RGB, shorter side resized to ``size``, centre-cropped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode not in IMAGE_MODES:
                raise DataError(f"{path}: image mode {im.mode}; allowed: {' or '.join(IMAGE_MODES)}")
            im = im.convert("RGB")
            w, h = im.size
            # torchvision's Resize(size) and CenterCrop(size) arithmetic, so the crop is the one it takes
            nw, nh = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
            if (nw, nh) != (w, h):
                im = im.resize((nw, nh), Image.BILINEAR)
            left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        if isinstance(e, DataError):
            raise
        raise DataError(f"{path}: not a readable image ({type(e).__name__}: {e})") from None


@contextlib.contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on ``<cache>.lock`` while one process decodes: the runs of a sweep that
    start together wait for the first one's cache instead of each decoding every image again. The
    cache itself is written to a temp file and renamed, so a reader never sees half a file, lock
    or not; where the lock cannot be taken (a read-only folder, a file system without locks) the
    decode goes on without it."""
    import fcntl

    from . import atomic

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = atomic.open_in_place(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT)
    except OSError:  # LinkRefused too: a link named like the lock file is not followed
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # closing releases the lock


def decode_cached(root: Path, name: str, size: int, files: list[Path]) -> np.ndarray:
    """The images ``files`` (all under ``root``) decoded at ``size``, read from the cache
    ``<root>/.cnnstress-cache/<name>-<size>-<hash>.npz`` when it is valid; else decoded in parallel
    (one process at a time per cache, see :func:`_cache_lock`) and cached."""
    path = _cache_path(root, name, size, files)
    x = _read_image_cache(path, len(files), size)
    if x is not None:
        return x
    with _cache_lock(path):
        x = _read_image_cache(path, len(files), size, quiet=True)  # written while this process waited
        if x is None:
            x = decode_images(files, size)
            try:
                _write_atomic_npz(path, {"x": x})
            except OSError as exc:  # a read-only data folder still works, just without a cache
                warnings.warn(f"could not cache decoded images at {path}: {exc}", stacklevel=3)
    return x


def _imagefolder_split(root: Path, split: str, size: int) -> tuple[Split, tuple[str, ...]]:
    classes, files, y = imagefolder_listing(root, split)
    x = decode_cached(root, split, size, files)
    return Split(x=x, y=y, index=np.arange(y.shape[0], dtype=np.int64)), classes


def _load_imagefolder(root: Path, opts: dict) -> tuple[Split, Split, tuple[str, ...]]:
    folder = _own_path(opts, "root", root)
    classes = imagefolder_classes(folder, opts)
    train, _ = _imagefolder_split(folder, opts["train"], opts["image_size"])
    test, _ = _imagefolder_split(folder, opts["test"], opts["image_size"])
    return train, test, classes


def _npz_headers(path: Path) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """dtype and shape of every array in an .npz, from the headers only (no array is read)."""
    import zipfile

    out = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    shape, _, dtype = read(fh)
                out[name[:-4]] = (dtype, shape)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (dataset_options.path); allowed: an .npz with {', '.join(ARRAY_KEYS)}") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from None
    return out


def check_arrays(path: Path) -> tuple[str, ...]:
    """The class names of an ``arrays`` .npz after checking keys, dtypes, shapes and labels; one
    DataError naming the file and key. Reads the labels and class names, not the images."""
    heads = _npz_headers(path)
    for key in ARRAY_KEYS:
        if key not in heads:
            raise DataError(f"{path}: no array {key!r}; allowed: an .npz with {', '.join(ARRAY_KEYS)} "
                            "(optional class_names, mask_test)")
    sizes = {}
    for part in ("train", "test"):
        dtype, shape = heads[f"x_{part}"]
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] < 1:
            raise DataError(f"{path}: x_{part} is {dtype} {shape}; allowed: uint8 (N, H, W, 3), N >= 1")
        ydtype, yshape = heads[f"y_{part}"]
        if ydtype.kind not in "iu" or yshape != (shape[0],):
            raise DataError(f"{path}: y_{part} is {ydtype} {yshape}; allowed: integers of shape ({shape[0]},)")
        sizes[part] = shape[0]
    side = arrays_image_size(path, heads)
    if "mask_test" in heads:
        dtype, shape = heads["mask_test"]
        if dtype != np.bool_ or shape != (sizes["test"], side, side):
            raise DataError(f"{path}: mask_test is {dtype} {shape}; allowed: bool {(sizes['test'], side, side)}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            ys = {part: np.asarray(npz[f"y_{part}"]) for part in ("train", "test")}
            names = tuple(str(n) for n in npz["class_names"]) if "class_names" in heads else None
    except Exception as e:  # noqa: BLE001 - object arrays, truncated members: one line naming the file
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None
    if names is not None:
        if len(names) < 2 or len(set(names)) != len(names):
            raise DataError(f"{path}: class_names has {len(names)} names ({len(set(names))} distinct); allowed: "
                            "at least 2 distinct names")
    n_classes = len(names) if names is not None else int(max(ys["train"].max(), ys["test"].max())) + 1
    for part, y in ys.items():
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= n_classes or (names is None and n_classes < 2):
            raise DataError(f"{path}: y_{part} holds labels in [{lo}, {hi}]; allowed: integers in [0, {n_classes}) "
                            f"{'(one per class_names entry)' if names is not None else 'with at least 2 classes'}")
    return names if names is not None else tuple(str(i) for i in range(n_classes))


def arrays_image_size(path: Path, heads: dict[str, tuple[np.dtype, tuple[int, ...]]] | None = None) -> int:
    """The side of an ``arrays`` .npz's square images, from the array headers (no image read): both
    x arrays uint8 (N, S, S, 3) with one S in SUPPORTED_IMAGE_SIZES, else one DataError naming the file."""
    heads = _npz_headers(path) if heads is None else heads
    lo, hi = SUPPORTED_IMAGE_SIZES[0], SUPPORTED_IMAGE_SIZES[-1]
    sides = {}
    for part in ("train", "test"):
        if f"x_{part}" not in heads:
            raise DataError(f"{path}: no array 'x_{part}'; allowed: an .npz with {', '.join(ARRAY_KEYS)}")
        dtype, shape = heads[f"x_{part}"]
        if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or shape[0] < 1:
            raise DataError(f"{path}: x_{part} is {dtype} {shape}; allowed: uint8 (N, H, W, 3), N >= 1")
        if shape[1] != shape[2] or shape[1] not in SUPPORTED_IMAGE_SIZES:
            raise DataError(f"{path}: x_{part} images are {shape[1]}x{shape[2]}; allowed: square, S x S with S in "
                            f"{lo}..{hi} (resize them first)")
        sides[part] = shape[1]
    if sides["train"] != sides["test"]:
        raise DataError(f"{path}: x_train images are {sides['train']}x{sides['train']} but x_test's are "
                        f"{sides['test']}x{sides['test']}; allowed: one size for both")
    return sides["train"]


def image_size(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None = None) -> int:
    """The side of a dataset's square images without decoding any: 32 for the built-in sets,
    ``image_size`` for imagefolder, the arrays' for arrays (their headers read)."""
    opts = resolve_options(dataset, options)
    if dataset == "imagefolder":
        return int(opts["image_size"])
    if dataset == "arrays":
        return arrays_image_size(_own_path(opts, "path", Path(root)))
    return IMAGE_SIZE


def _load_arrays(root: Path, opts: dict) -> tuple[Split, Split, tuple[str, ...]]:
    path = _own_path(opts, "path", root)
    names = check_arrays(path)
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files if k in (*ARRAY_KEYS, "mask_test")}

    def split(part: str) -> Split:
        y = arrays[f"y_{part}"].astype(np.int64)
        x = np.ascontiguousarray(arrays[f"x_{part}"].transpose(0, 3, 1, 2))
        mask = arrays.get("mask_test") if part == "test" else None
        return Split(x=x, y=y, index=np.arange(y.shape[0], dtype=np.int64), mask=mask)

    return split("train"), split("test"), names


#: images in the official train and test splits of the datasets whose size no option sets
_OFFICIAL_COUNTS = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000)}


def images_held(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None) -> tuple[int, int]:
    """(images, bytes) of the images a run holds: the official train split (train + validation) and
    the test split as uint8 3 x H x W, counted without decoding any (folders listed, .npz headers
    read). What the launch compares with the memory a run will have (launcher.memory_problem)."""
    opts = resolve_options(dataset, options)
    if dataset in _OFFICIAL_COUNTS:
        n, side = sum(_OFFICIAL_COUNTS[dataset]), IMAGE_SIZE
        return n, n * 3 * side * side
    if dataset == "shapes":
        n = opts["n_train"] + opts["n_test"]
        return n, n * (3 + 1) * IMAGE_SIZE * IMAGE_SIZE  # and the object masks, one byte a pixel
    if dataset == "imagefolder":
        folder, side = _own_path(opts, "root", Path(root)), int(opts["image_size"])
        n = sum(len(imagefolder_listing(folder, opts[split])[1]) for split in ("train", "test"))
        return n, n * 3 * side * side
    heads = _npz_headers(_own_path(opts, "path", Path(root)))
    total = n = 0
    for part in ("train", "test"):
        _, shape = heads.get(f"x_{part}", (None, (0,)))
        n += int(shape[0])
        total += int(np.prod(shape, dtype=np.int64))
    return n, total


def own_data_check(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The class names of an ``imagefolder`` or ``arrays`` dataset, every file checked (one
    DataError naming the first bad one); what launch and --dry-run run before anything is submitted."""
    opts = resolve_options(dataset, options)
    if dataset == "imagefolder":
        return check_imagefolder(_own_path(opts, "root", Path(root)), opts)
    if dataset == "arrays":
        return check_arrays(_own_path(opts, "path", Path(root)))
    raise ValueError(f"not a dataset of your own: {dataset!r}; valid: imagefolder, arrays")


def own_classes(dataset: str, root: str | os.PathLike, options: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The class names without opening any image (folders listed, or the .npz's labels read)."""
    opts = resolve_options(dataset, options)
    if dataset == "imagefolder":
        folder = _own_path(opts, "root", Path(root))
        if not folder.is_dir():
            raise DataError(f"{folder}: no such folder (dataset_options.root); allowed: <root>/<split>/<class>/<images>")
        return imagefolder_classes(folder, opts)
    return check_arrays(_own_path(opts, "path", Path(root)))


_LOADERS: dict[str, _Loader] = {
    "imagefolder": _load_imagefolder,
    "arrays": _load_arrays,
    "shapes": _load_shapes,
    "cifar10": lambda root, opts: _load_cifar("cifar10", root),
    "cifar100": lambda root, opts: _load_cifar("cifar100", root),
}


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["--decode"]:  # one process of decode_images' pool: paths (JSON) in, pixels out
        try:
            sys.stdout.buffer.write(_decode_slice(json.load(sys.stdin), int(sys.argv[2])))
        except DataError as exc:
            print(exc, file=sys.stderr)
            sys.exit(2)
        sys.exit(0)
    sys.exit("usage: python -m cnnstress.data --decode SIZE < paths.json")
