"""Shared argument checks for the analysis modules (private).

Every public function converts its inputs through these so that arrays read from HDF5 (float16
logits, int16 labels, uint8 masks) behave like their wide counterparts, and so that a wrong shape
fails loudly with the argument's name instead of broadcasting silently.
"""

from __future__ import annotations

import numpy as np


def as_logits(logits: np.ndarray, name: str = "logits") -> np.ndarray:
    """Return ``logits`` as a float64 (N, C) array, or raise ValueError."""
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must have shape (N, C) with C >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def as_labels(labels: np.ndarray, n: int | None = None, num_classes: int | None = None,
              name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int64 (N,) array with values in [0, num_classes), or raise."""
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0, got minimum {arr.min()}")
    if num_classes is not None and arr.size and arr.max() >= num_classes:
        raise ValueError(f"{name} must be < num_classes={num_classes}, got maximum {arr.max()}")
    return arr


def as_bool_matrix(correct: np.ndarray, name: str) -> np.ndarray:
    """Return ``correct`` as a bool (S, N) array; a 1-D (N,) array is read as one seed."""
    arr = np.asarray(correct)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (S, N) or (N,), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    return arr


def as_bool_vector(correct: np.ndarray, name: str, n: int | None = None) -> np.ndarray:
    """Return ``correct`` as a bool (N,) array, or raise ValueError."""
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]}, expected {n}")
    return arr


def check_threshold(threshold: float, name: str = "threshold") -> float:
    """Return ``threshold`` as a float in [0, 1], or raise ValueError."""
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {threshold!r}")
    return t
