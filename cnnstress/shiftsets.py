"""Natural distribution shift: labelled test sets of the same classes drawn from elsewhere.

Each set is uint8 ``(K, 3, S, S)`` images (the layout of :attr:`cnnstress.data.Split.x`), int64
``(K,)`` labels of the dataset's classes, and a dict of plain attributes describing it
(``/shift/<set>/...`` of results.h5). Torch-free, like :mod:`cnnstress.data`.

Sets (:data:`SETS`; the name in a grid, then the name in results.h5):

* ``cifar10.1`` -> ``cifar10_1`` (for ``cifar10``): CIFAR-10.1 v6 (Recht, Roelofs, Schmidt &
  Shankar, "Do ImageNet Classifiers Generalize to ImageNet?", ICML 2019; "Do CIFAR-10 Classifiers
  Generalize to CIFAR-10?", arXiv:1806.00451), 2 000 new test images of the ten CIFAR-10 classes
  (200 per class) collected from Tiny Images after the original test set, by the original
  protocol. Read from ``<data root>/cifar10.1/cifar10.1_v6_data.npy`` (uint8 ``(2000, 32, 32, 3)``)
  and ``cifar10.1_v6_labels.npy`` (integers ``(2000,)``), as published; fetched with
  ``python launch.py --download cifar10.1`` (:func:`download`, which checks every byte).
* ``shapes_shifted`` (for ``shapes``): the ten shapes drawn by :func:`cnnstress.data.generate_shapes`
  with :data:`cnnstress.data.SHIFTED_SHAPES` (smaller objects than any training image, on
  background hues no image of the dataset has); the test split's other parameters otherwise.

Your own sets (``[stress].shift_sets = ["folder:<path>", "npz:<path>"]``, :func:`load_own_set`): a
folder with one sub-folder per class, named like the dataset's classes (the ImageFolder layout),
decoded like an ``imagefolder`` dataset; or an .npz with ``x`` uint8 ``(K, H, W, 3)`` at the
dataset's image size and ``y`` integer ``(K,)`` labels. Found, hashed, decoded and cached by the
machinery of :mod:`cnnstress.oodsets` (the same ``sha256`` identity).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import tempfile
import urllib.request
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnnstress import data, oodsets
from cnnstress.data import DataError

DEFAULT_COUNT = 2000

# ----------------------------------------------------------------------------------- CIFAR-10.1

CIFAR101_FOLDER = "cifar10.1"
CIFAR101_DATA = "cifar10.1_v6_data.npy"
CIFAR101_LABELS = "cifar10.1_v6_labels.npy"
CIFAR101_COUNT = 2000
#: Where --download cifar10.1 fetches the files from: the dataset's own repository.
CIFAR101_URL = "https://github.com/modestyachts/CIFAR-10.1/raw/master/datasets/"


@dataclass(frozen=True)
class PublishedFile:
    """One published file and what identifies its bytes."""

    name: str
    # the git blob id of the file in the dataset repository's tree (commit d9982ab, "Update to numpy
    # format version 2.0", the master branch the URL serves): sha1 of b"blob <size>\0" + the bytes,
    # what `git hash-object <file>` prints
    git_blob: str
    md5: str


# The blob ids are read from the repository's tree (modestyachts/CIFAR-10.1, datasets/). The labels
# file's bytes were hashed too (blob id, md5 and sha256 agree with the tree): it is exactly what
# np.save writes for 200 int32 labels of each class in class order, which tests/test_shift.py rebuilds
# and hashes. Its md5 equals the one responsible-ai-toolbox hard-codes (rai_toolbox/datasets,
# CIFAR10P1._labels_md5); the data file's md5 is that loader's _data_md5 (the data file's bytes could
# not be fetched where this was written to hash them again).
CIFAR101_FILES: tuple[PublishedFile, ...] = (
    PublishedFile(CIFAR101_DATA, "24349cc5f3fb59648d75cd8015b5a184b1f5c250", "4fcae82cb1326aec9ed1dc1fc62345b8"),
    PublishedFile(CIFAR101_LABELS, "e713b09cecf2ecd933970001909fcdec7c907ab0", "09a97fb7c430502fcbd69d95093a3f85"),
)
CIFAR101_LABELS_SHA256 = "ae40beda001693674edc94d925ee8268cfe68905f8f9aff800c8dcdfcd6c9448"


def cifar101_folder(root: str | os.PathLike) -> Path:
    return Path(root) / CIFAR101_FOLDER


def download_command(root: str | os.PathLike | None = None) -> str:
    cmd = "python launch.py --download cifar10.1"
    return cmd if root is None else f"{cmd} --data-root {shlex.quote(str(root))}"


def cifar101_missing(root: str | os.PathLike) -> str:
    """What of CIFAR-10.1's two files is missing or empty under ``root``, with the command that
    fetches them ("" when both are there; their content is checked when a run reads them)."""
    bad = data.absent_or_empty(cifar101_folder(root), [f.name for f in CIFAR101_FILES])
    if bad:
        return f"cifar10.1 in {cifar101_folder(root)}: {', '.join(bad)}; fetch it with: {download_command(root)}"
    return ""


def _read_npy(path: Path, what: str, root: str | os.PathLike) -> np.ndarray:
    """A .npy file of numbers (never objects: allow_pickle=False), read whole; one-line DataError."""
    if not path.is_file():
        raise DataError(f"{path}: missing; fetch it with: {download_command(root)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a damaged header's warnings would add lines to the error
            arr = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - ValueError (objects, bad header), EOFError, OSError: one line
        text = " ".join(str(e).split())[:160]
        raise DataError(f"{path}: not a readable .npy file of {what} ({type(e).__name__}: {text}); fetch it again "
                        f"with: {download_command(root)}") from None
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: holds {type(arr).__name__}, not one array of {what}")
    return arr


def check_labels(path: Path, y: np.ndarray, count: int, num_classes: int, hint: str) -> np.ndarray:
    """Integer labels ``(count,)`` in [0, num_classes) as int64; DataError naming ``path`` otherwise."""
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.shape[0] != count:
        raise DataError(f"{path}: labels are {y.dtype} {y.shape}; allowed: integers ({count},){hint}")
    if count and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{path}: labels in [{int(y.min())}, {int(y.max())}]; allowed: 0 to {num_classes - 1} "
                        f"(the dataset's {num_classes} classes){hint}")
    return y.astype(np.int64)


def load_cifar101(root: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10.1 v6: uint8 ``(K, 3, 32, 32)`` images and int64 ``(K,)`` labels in 0..9, as published
    (K = 2 000 for the published files; any K >= 1 with matching labels is read). DataError naming
    the file for anything else: another dtype or shape, labels out of range, a pickled file."""
    folder = cifar101_folder(root)
    hint = f"; fetch the published files with: {download_command(root)}"
    x = _read_npy(folder / CIFAR101_DATA, "uint8 images", root)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.shape[0] < 1:
        raise DataError(f"{folder / CIFAR101_DATA}: holds {x.dtype} {x.shape}; allowed: uint8 (K, 32, 32, 3){hint}")
    y = _read_npy(folder / CIFAR101_LABELS, "integer labels", root)
    y = check_labels(folder / CIFAR101_LABELS, y, x.shape[0], 10, hint)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), y


def git_blob_sha1(path: Path) -> str:
    """What ``git hash-object`` prints for the file: sha1 of b"blob <size>\\0" + its bytes."""
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verified(path: Path, f: PublishedFile) -> str:
    """"" when the file's bytes are the published ones, else why not."""
    blob, md5 = git_blob_sha1(path), _md5(path)
    if blob != f.git_blob:
        return f"git blob id {blob}, published {f.git_blob}"
    if md5 != f.md5:
        return f"md5 {md5}, published {f.md5}"
    return ""


def _fetch(url: str, dest: Path) -> None:
    """``url`` (https, or file:// for a local copy) into ``dest``."""
    with urllib.request.urlopen(url, timeout=120) as response, open(dest, "wb") as out:  # noqa: S310 - fixed URL
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)


def download(root: str | os.PathLike, fetch: Callable[[str, Path], None] | None = None) -> tuple[Path, str]:
    """Fetch CIFAR-10.1 v6 into ``<root>/cifar10.1/``: each file into a temporary file beside its
    place, its git blob id and md5 compared with the published ones, then renamed into place (a
    file already there with the published bytes is kept). Returns the folder and a sentence saying
    what was checked. DataError when a fetched file is not the published one (nothing is left)."""
    folder = cifar101_folder(root)
    folder.mkdir(parents=True, exist_ok=True)
    fetch = fetch or _fetch
    kept = 0
    for f in CIFAR101_FILES:
        dest = folder / f.name
        if dest.is_file() and not _verified(dest, f):
            kept += 1
            continue
        fd, tmp_name = tempfile.mkstemp(prefix=f".{f.name}.", suffix=".part", dir=folder)
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch(CIFAR101_URL + f.name, tmp)
            problem = _verified(tmp, f)
            if problem:
                raise DataError(f"{CIFAR101_URL + f.name}: not the published file ({problem}); nothing was kept")
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)
    x, y = load_cifar101(root)
    return folder, (f"{folder}: {x.shape[0]} images of {len(np.unique(y))} classes; both files match the published "
                    f"git blob ids and md5s ({kept} of 2 already there)")


# --------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class ShiftSet:
    """One built-in set: its name in results.h5, the dataset it serves and what it is."""

    key: str  # the name in results.h5 (lower-case letters, digits, _)
    dataset: str
    description: str
    source: str  # where the images come from, for the report


SETS: dict[str, ShiftSet] = {
    "cifar10.1": ShiftSet("cifar10_1", "cifar10", "CIFAR-10.1 v6: new test images of the ten classes",
                          "Recht et al. 2019, github.com/modestyachts/CIFAR-10.1 (v6)"),
    "shapes_shifted": ShiftSet("shapes_shifted", "shapes",
                               "the ten shapes drawn smaller than in training (4.5 to 6.5 px per unit, training 7 to "
                               "12) on background hues half-way between the class hues",
                               "cnnstress.data.generate_shapes with SHIFTED_SHAPES"),
}


def sets_for(dataset: str) -> list[str]:
    """The built-in shift sets offered for ``dataset`` (grid names)."""
    return [name for name, s in SETS.items() if s.dataset == dataset]


def _shapes_seed(seed: int) -> int:
    return int(np.random.SeedSequence([int(seed), zlib.crc32(b"shapes_shifted")]).generate_state(1, dtype=np.uint64)[0])


def subset(count: int, n: int, key: str, seed: int) -> np.ndarray:
    """Positions (sorted int64) of the images of a set of ``count`` that a run scores: all of them
    when ``n >= count``, else ``n`` drawn without replacement from ``seed`` and the set's name (the
    same in every run of a sweep). Never the first ``n``: CIFAR-10.1 and a folder of class folders
    are sorted by class."""
    if n >= count:
        return np.arange(count, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(key.encode())]))
    return np.sort(rng.choice(count, size=n, replace=False)).astype(np.int64)


def load_set(name: str, dataset: str, root: str | os.PathLike, n: int, seed: int = 0,
             size: int = data.IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Images uint8 ``(K, 3, size, size)``, labels int64 ``(K,)``, their positions in the set and the
    attributes of built-in set ``name``: ``n`` images of CIFAR-10.1 (all when it holds fewer;
    :func:`subset`), or ``n`` generated shifted shapes (from ``seed``)."""
    if name not in SETS or SETS[name].dataset != dataset:
        raise DataError(f"unknown shift set {name!r} for {dataset}; allowed: {', '.join(sets_for(dataset)) or '(none)'}, "
                        "\"folder:<path>\" or \"npz:<path>\"")
    s = SETS[name]
    if name == "cifar10.1":
        x, y = load_cifar101(root)
        total = int(x.shape[0])
        index = subset(total, int(n), s.key, seed)
        x, y = x[index], y[index]
        # whether these are the published bytes (12 MB hashed, ~30 ms): a report on other files says so
        problems = [f"{f.name}: {why}" for f in CIFAR101_FILES if (why := _verified(cifar101_folder(root) / f.name, f))]
        details: dict[str, Any] = {"source_count": total, "seed": int(seed),
                                   "files": f"{CIFAR101_DATA}, {CIFAR101_LABELS}",
                                   "checksum": "; ".join(problems) or "the published files (git blob ids and md5s match)",
                                   "_unpublished": bool(problems)}
    else:
        x, y, _mask, _bg = data.generate_shapes(int(n), seed=_shapes_seed(seed), shortcut=0.0, **data.SHIFTED_SHAPES)
        index = np.arange(int(n), dtype=np.int64)
        details = {"seed": int(seed), "generator_version": data.GENERATOR_VERSION}
    if x.shape[2:] != (size, size):
        raise DataError(f"shift set {name!r} has {x.shape[2]}x{x.shape[3]} images but {dataset}'s are {size}x{size}; "
                        "allowed: sets of the dataset's image size")
    description = s.description if not details.pop("_unpublished", False) else \
        f"{s.description} (NOT the published files: {details['checksum']})"
    return np.ascontiguousarray(x), y, index, {"name": s.key, "kind": "builtin", "description": description,
                                               "source": s.source, "dataset": dataset, "count": int(x.shape[0]),
                                               **details}


# ------------------------------------------------------------------------------------ your own sets
#
# Found, hashed and decoded by oodsets (own_kind, own_set_digest, own_set_name, check_own_set,
# load_own_set): the images of a shift set are read exactly like those of an out-of-distribution
# set; what a shift set adds is its labels.


def _folder_labels(folder: Path, class_names: tuple[str, ...]) -> np.ndarray:
    """The class of each image of a folder (in oodsets' sorted order): its first sub-folder's name."""
    index = {name: i for i, name in enumerate(class_names)}
    labels = []
    for f in oodsets._own_files(folder):
        parts = f.relative_to(folder).parts
        if len(parts) < 2:
            raise DataError(f"{f}: an image outside the class folders; allowed: {folder}/<class>/<image>, <class> one "
                            f"of the dataset's classes ({', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''})")
        if parts[0] not in index:
            raise DataError(f"{folder / parts[0]}: {parts[0]!r} is not a class of the dataset; allowed: "
                            f"{', '.join(class_names[:12])}{', ...' if len(class_names) > 12 else ''}"[:400])
        labels.append(index[parts[0]])
    return np.asarray(labels, dtype=np.int64)


def _npz_labels(path: Path, count: int, num_classes: int) -> np.ndarray:
    heads = data._npz_headers(path)
    if "y" not in heads:
        raise DataError(f"{path}: no array 'y'; allowed: an .npz with x = uint8 (K, H, W, 3) images and y = integer "
                        "(K,) labels")
    try:
        with np.load(path, allow_pickle=False) as npz:
            y = np.asarray(npz["y"])
    except Exception as e:  # noqa: BLE001 - a truncated member and the like: one line naming the file
        raise DataError(f"{path}: cannot be read ({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    return check_labels(path, y, count, num_classes, "")


def check_own_set(entry: dict[str, Any], size: int, class_names: tuple[str, ...] | None) -> None:
    """The launch check of your own shift set: its images as oodsets checks them, and its labels (a
    folder's class folders against ``class_names`` when they are known here, an .npz's ``y``)."""
    oodsets.check_own_set(entry, size)
    path = Path(entry["path"])
    if entry["kind"] == "folder":
        if class_names is not None:
            _folder_labels(path, class_names)
        return
    count = data._npz_headers(path)["x"][1][0]
    _npz_labels(path, count, len(class_names) if class_names is not None else np.iinfo(np.int64).max)


def load_own_set(entry: dict[str, Any], dataset: str, size: int, n: int, class_names: tuple[str, ...],
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """uint8 ``(K, 3, size, size)`` images, int64 labels, their positions in the set (:func:`subset`
    of at most ``n``) and the attributes of your own shift set."""
    x, attrs = oodsets.load_own_set(entry, dataset, size, np.iinfo(np.int64).max)
    path = Path(entry["path"])
    if entry["kind"] == "folder":
        y = _folder_labels(path, class_names)
    else:
        y = _npz_labels(path, int(x.shape[0]), len(class_names))
    index = subset(int(x.shape[0]), int(n), entry["set"], seed)
    kind = "folder" if entry["kind"] == "folder" else ".npz"
    return (np.ascontiguousarray(x[index]), y[index], index,
            {**attrs, "kind": "own", "count": int(index.size), "seed": int(seed),
             "description": f"your {kind} {path.name!r}, {index.size} of its {x.shape[0]} images"})
