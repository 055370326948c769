"""The official CIFAR-10-C and CIFAR-100-C files (Hendrycks & Dietterich, ICLR 2019): their names,
where they come from, their layout, and a reader.

Numpy only: the grid checks the files on a login node and gather may need the names; only
:func:`download` imports torchvision (its download helpers), lazily.

Layout under ``<data root>/CIFAR-10-C/`` (``CIFAR-100-C/`` for CIFAR-100), as published:

- ``<corruption>.npy`` for each of the 19 corruptions: uint8 ``(5 N, 32, 32, 3)`` (HWC), the N
  test images (N = 10 000) corrupted at severity 1, then at 2, ... 5, each block of N in the order
  of the official test split;
- ``labels.npy``: ``(5 N,)`` integers, each block of N equal to the test labels.

:func:`load_corruption` returns one severity's block in the layout of ``data.Split.x``: uint8
``(N, 3, 32, 32)``, row ``i`` the corrupted official test image ``i``. Every problem with the files
(missing, truncated, another shape or dtype, labels that are not the test labels) is a
``data.DataError`` naming the file and, where fetching again helps, ``python launch.py --download
cifar10-c`` (or ``cifar100-c``).
"""

from __future__ import annotations

import functools
import math
import os
import shlex
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from cnnstress import data
from cnnstress.data import DataError

# The 15 corruptions of the benchmark (mCE, RobustBench), in the order of make_cifar_c.py
# (github.com/hendrycks/robustness, ImageNet-C/create_c/make_cifar_c.py), which names each file
# after its function.
BENCHMARK_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise", "shot_noise", "impulse_noise",
    "defocus_blur", "glass_blur", "motion_blur", "zoom_blur",
    "snow", "frost", "fog",
    "brightness", "contrast", "elastic_transform", "pixelate", "jpeg_compression",
)
# The 4 extra corruptions published alongside (held out of the benchmark for validation).
EXTRA_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
CORRUPTIONS: tuple[str, ...] = BENCHMARK_CORRUPTIONS + EXTRA_CORRUPTIONS
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
LABELS_FILE = "labels.npy"
IMAGE_SHAPE = (32, 32, 3)


@dataclass(frozen=True)
class OfficialSet:
    """One published archive: what ``--download <name>`` fetches and where it unpacks."""

    name: str  # the --download choice
    dataset: str  # the clean dataset whose test split it corrupts
    folder: str  # the folder the archive unpacks into, under the data root
    url: str
    filename: str
    md5: str  # of the archive, checked by torchvision's download helper


# Zenodo records 2535967 (CIFAR-10-C) and 3555552 (CIFAR-100-C): the record ids and archive names
# are RobustBench's (robustbench/data.py, ZENODO_CORRUPTIONS_LINKS, which asks the Zenodo API for the
# checksum); the archive md5s are the ones Zenodo lists, as hard-coded for torchvision's
# download_and_extract_archive in mit-ll-responsible-ai/responsible-ai-toolbox
# (src/rai_toolbox/datasets/cifar_corruptions.py, tar_md5) and in other public loaders.
SETS: dict[str, OfficialSet] = {
    "cifar10-c": OfficialSet("cifar10-c", "cifar10", "CIFAR-10-C",
                             "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar", "CIFAR-10-C.tar",
                             "56bf5dcef84df0e2308c6dcbcbbd8499"),
    "cifar100-c": OfficialSet("cifar100-c", "cifar100", "CIFAR-100-C",
                              "https://zenodo.org/record/3555552/files/CIFAR-100-C.tar", "CIFAR-100-C.tar",
                              "11f0ed0f1191edbf9fa23466ae6021d3"),
}
DATASETS: tuple[str, ...] = tuple(s.dataset for s in SETS.values())

# A published reference on CIFAR-10-C: RobustBench's "Standard" model (a WideResNet-28-10 trained
# without any robustness method, clean accuracy 94.78%), accuracy on the 15 benchmark corruptions
# averaged over them, per severity 1..5. Computed from RobustBench's
# model_info/cifar10/corruptions/unaggregated_results.csv (row "Standard", 75 values; commit
# 78fcc9e of RobustBench/robustbench); their mean, 73.46%, is the "corruptions_acc" of
# model_info/cifar10/corruptions/Standard.json.
REFERENCE_CIFAR10C: dict[str, object] = {
    "label": "RobustBench 'Standard' WRN-28-10 (15 CIFAR-10-C corruptions)",
    "source": "RobustBench model_info/cifar10/corruptions (Standard)",
    "severities": [1, 2, 3, 4, 5],
    "accuracy": [0.8690, 0.8134, 0.7492, 0.6764, 0.5649],
    "mean_accuracy": 0.7346,
    "clean_accuracy": 0.9478,
}


# ------------------------------------------------------------------------------------------ names


def official_set(dataset: str) -> OfficialSet:
    """The published corrupted set of ``dataset`` (cifar10 or cifar100); ValueError otherwise."""
    for s in SETS.values():
        if s.dataset == dataset:
            return s
    raise ValueError(f"no official corruption files for dataset {dataset!r}; they exist for {', '.join(DATASETS)}")


def folder(dataset: str, root: str | os.PathLike) -> Path:
    """``<root>/CIFAR-10-C`` or ``<root>/CIFAR-100-C``."""
    return Path(root) / official_set(dataset).folder


def corruption_file(dataset: str, root: str | os.PathLike, name: str) -> Path:
    _check_name(name)
    return folder(dataset, root) / f"{name}.npy"


def labels_file(dataset: str, root: str | os.PathLike) -> Path:
    return folder(dataset, root) / LABELS_FILE


def download_command(dataset: str, root: str | os.PathLike | None = None) -> str:
    """``python launch.py --download cifar10-c [--data-root ROOT]`` for ``dataset``."""
    cmd = f"python launch.py --download {official_set(dataset).name}"
    return cmd if root is None else f"{cmd} --data-root {shlex.quote(str(root))}"


def missing_files(dataset: str, root: str | os.PathLike, names: list[str] | tuple[str, ...]) -> list[Path]:
    """The files that ``names`` need (their .npy and labels.npy) that are not there (not read)."""
    needed = [labels_file(dataset, root)] + [corruption_file(dataset, root, n) for n in names]
    return [p for p in needed if not p.is_file()]


def _check_name(name: str) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown official corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ValueError(f"severity {severity!r} is invalid; valid: {SEVERITIES}")


# ----------------------------------------------------------------------------------------- reading


def _refetch(dataset: str, root: str | os.PathLike) -> str:
    return f"fetch them again with: {download_command(dataset, root)}"


def _one_line(exc: BaseException) -> str:
    """An exception as one short line (numpy quotes the damaged header, which may hold anything)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:160]}{'...' if len(text) > 160 else ''}"


def _header(path: Path, dataset: str, root: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a .npy header, after checking that the file holds exactly the bytes the
    header announces. Reads the header only (a few hundred bytes), never the array."""
    if not path.is_file():
        raise DataError(f"{dataset}: official corruption file {path} is missing; "
                        f"fetch the files with: {download_command(dataset, root)}")
    try:
        with open(path, "rb") as fh, warnings.catch_warnings():
            # a damaged header can read as a Python 2 one: numpy's warning about that would add lines
            # to the one-line error (or to a launch that passes)
            warnings.simplefilter("ignore")
            version = npy_format.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy_format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = npy_format.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format version {version} (the published files are 1.0)")
            offset = fh.tell()
        if any(int(s) < 0 for s in shape):
            raise ValueError(f"negative shape {shape}")
    except Exception as exc:  # a damaged header: ValueError, EOFError, OSError, but also tokenize.TokenError,
        # SyntaxError, UnicodeDecodeError, ... from numpy's parsing of the header's dict literal
        raise DataError(f"{dataset}: {path} is not a readable .npy file ({_one_line(exc)}); "
                        f"{_refetch(dataset, root)}") from exc
    if dtype.hasobject:
        raise DataError(f"{dataset}: {path} holds Python objects, not numbers; {_refetch(dataset, root)}")
    shape = tuple(int(s) for s in shape)
    expected = offset + math.prod(shape) * dtype.itemsize  # Python ints: a forged shape cannot overflow
    size = path.stat().st_size
    if size < expected:
        raise DataError(f"{dataset}: {path} is truncated: {size} bytes, its header says {shape} {dtype} "
                        f"({expected} bytes); {_refetch(dataset, root)}")
    if size > expected:
        raise DataError(f"{dataset}: {path} has {size} bytes, {size - expected} more than its header's {shape} "
                        f"{dtype} ({expected} bytes): the header does not describe the file; {_refetch(dataset, root)}")
    return shape, dtype


def _open(path: Path, dataset: str, root: str | os.PathLike) -> np.ndarray:
    """The array of a checked .npy file, memory-mapped (only what is sliced is read)."""
    _header(path, dataset, root)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # see _header
            return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{dataset}: {path} cannot be read ({exc}); {_refetch(dataset, root)}") from exc


@functools.lru_cache(maxsize=4)
def _test_labels_cached(dataset: str, root: str, path: str, mtime_ns: int, size: int) -> np.ndarray:
    labels = data.load_cifar_test_file(dataset, root).y.astype(np.int64)
    labels.setflags(write=False)
    return labels


def official_test_labels(dataset: str, root: str | os.PathLike) -> np.ndarray:
    """Labels (N,) int64 of ``dataset``'s official test split, read once per process and file
    version (the worker checks every corrupted set against them)."""
    path = data.cifar_test_file(dataset, root)
    try:
        st = path.stat()
    except OSError:
        data.load_cifar_test_file(dataset, root)  # raises the DataError that names the file and command
        raise
    return _test_labels_cached(dataset, str(root), str(path), st.st_mtime_ns, st.st_size)


def read_labels(dataset: str, root: str | os.PathLike, test_labels: np.ndarray | None = None) -> np.ndarray:
    """``labels.npy`` (5 N,) as int64, checked: five blocks, each equal to ``test_labels`` (N,) when
    given, else to each other."""
    path = labels_file(dataset, root)
    shape, dtype = _header(path, dataset, root)
    if len(shape) != 1 or dtype.kind not in "iu":
        raise DataError(f"{dataset}: {path} holds {dtype} {shape}, expected integer labels (5 N,); "
                        f"{_refetch(dataset, root)}")
    labels = np.asarray(_open(path, dataset, root)).astype(np.int64)
    n = labels.shape[0] // len(SEVERITIES)
    if labels.shape[0] != n * len(SEVERITIES) or n == 0:
        raise DataError(f"{dataset}: {path} holds {labels.shape[0]} labels, not five blocks (one per severity); "
                        f"{_refetch(dataset, root)}")
    reference = labels[:n] if test_labels is None else np.asarray(test_labels).astype(np.int64).reshape(-1)
    if test_labels is not None and labels.shape[0] != len(SEVERITIES) * reference.shape[0]:
        raise DataError(f"{dataset}: {path} holds {labels.shape[0]} labels but the test split has "
                        f"{reference.shape[0]} images (expected 5 x {reference.shape[0]}): the files are not "
                        f"for this test set; {_refetch(dataset, root)}")
    for s in SEVERITIES:
        block = labels[(s - 1) * n:s * n]
        if not np.array_equal(block, reference):
            first = int(np.flatnonzero(block != reference)[0])
            what = "the test labels" if test_labels is not None else "the severity-1 block"
            raise DataError(f"{dataset}: {path}: the labels of severity {s} differ from {what} (first at test "
                            f"image {first}: {int(block[first])} vs {int(reference[first])}); the files are not in "
                            f"test-set order for this test split; {_refetch(dataset, root)}")
    return labels


def _check_images(path: Path, shape: tuple[int, ...], dtype: np.dtype, n: int, dataset: str,
                  root: str | os.PathLike) -> None:
    want = (len(SEVERITIES) * n,) + IMAGE_SHAPE
    if shape != want or dtype != np.uint8:
        raise DataError(f"{dataset}: {path} holds {dtype} {shape}, expected uint8 {want} (5 severities x {n} test "
                        f"images, 32 x 32 x 3); {_refetch(dataset, root)}")


def load_corruption(dataset: str, root: str | os.PathLike, name: str, severity: int,
                    test_labels: np.ndarray | None = None) -> np.ndarray:
    """The official test images of ``dataset`` corrupted by ``name`` at ``severity``: uint8
    ``(N, 3, 32, 32)`` in official test-split order (``data.Split.x``'s layout).

    ``test_labels`` (N,) are the official test labels; by default they are read from the clean
    dataset's test file under ``root``. labels.npy must hold them five times, and the image file
    five blocks of N. Raises ValueError for an unknown name or a severity outside 1..5, DataError for
    missing or damaged files (naming the file and the ``--download`` command).
    """
    _check_name(name)
    _check_severity(severity)
    if test_labels is None:
        test_labels = official_test_labels(dataset, root)
    n = int(np.asarray(test_labels).shape[0])
    read_labels(dataset, root, test_labels)
    path = corruption_file(dataset, root, name)
    shape, dtype = _header(path, dataset, root)
    _check_images(path, shape, dtype, n, dataset, root)
    images = _open(path, dataset, root)
    block = images[(severity - 1) * n:severity * n]
    return np.ascontiguousarray(block.transpose(0, 3, 1, 2))


def check_files(dataset: str, root: str | os.PathLike, names: tuple[str, ...] | list[str] = CORRUPTIONS,
                test_labels: np.ndarray | None = None) -> str:
    """Check the layout of ``names``' files and labels.npy without reading the images (headers and
    sizes); returns a sentence saying what was checked. The labels are compared with ``test_labels``
    when given, else with the clean test file's when it is under ``root``, else only with each other."""
    compared = True
    if test_labels is None:
        if data.cifar_test_file(dataset, root).is_file():
            test_labels = official_test_labels(dataset, root)
        else:
            compared = False
    labels = read_labels(dataset, root, test_labels)
    n = labels.shape[0] // len(SEVERITIES)
    for name in names:
        path = corruption_file(dataset, root, name)
        shape, dtype = _header(path, dataset, root)
        _check_images(path, shape, dtype, n, dataset, root)
    where = folder(dataset, root)
    said = (f"labels match {dataset}'s test split" if compared else
            f"labels not compared with the test split ({dataset} is not under {root}: python launch.py "
            f"--download {dataset})")
    return f"{where}: {len(names)} corruptions x {len(SEVERITIES)} severities of {n} images; {said}"


# ---------------------------------------------------------------------------------------- download


def download(name: str, root: str | os.PathLike) -> tuple[Path, str]:
    """Fetch and unpack the archive ``name`` ("cifar10-c" | "cifar100-c") into ``root`` with
    torchvision's ``download_and_extract_archive`` (which checks its md5), then check every file
    (:func:`check_files`). Files already there and in order are kept. Returns the folder and
    check_files' sentence."""
    if name not in SETS:
        raise ValueError(f"unknown official corruption set {name!r}; valid: {', '.join(SETS)}")
    s = SETS[name]
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if not missing_files(s.dataset, root, CORRUPTIONS):
        try:
            return folder(s.dataset, root), check_files(s.dataset, root)
        except DataError:
            pass  # damaged: fetch again
    from torchvision.datasets.utils import download_and_extract_archive  # lazy: the rest is numpy only

    download_and_extract_archive(s.url, download_root=str(root), filename=s.filename, md5=s.md5,
                                 remove_finished=True)
    _test_labels_cached.cache_clear()
    return folder(s.dataset, root), check_files(s.dataset, root)
