"""Prediction metrics over stored logits: accuracy, confusion, per-class and confidence views.

Shapes: N test images, C classes, T thresholds. Logits may be float16 (stress logits are stored
that way); everything is computed in float64. Labels may be any integer dtype (int16 on disk).
"""

from __future__ import annotations

import numpy as np

from cnnstress.analysis._checks import as_labels, as_logits, check_threshold

DEFAULT_THRESHOLDS = np.round(np.arange(0.50, 1.00, 0.01), 2)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits -> (N, C) float64 probabilities summing to 1."""
    x = as_logits(logits)
    # Subtracting the row maximum keeps exp() from overflowing; the result is unchanged.
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax of (N, C) logits -> (N, C) float64, stable for large logits."""
    x = as_logits(logits)
    shifted = x - x.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def predictions(logits: np.ndarray) -> np.ndarray:
    """Predicted class per row of (N, C) logits -> (N,) int64 (first maximum on ties)."""
    return np.argmax(as_logits(logits), axis=1).astype(np.int64)


def confidences(logits: np.ndarray) -> np.ndarray:
    """Top softmax probability per row of (N, C) logits -> (N,) float64."""
    return softmax(logits).max(axis=1)


def accuracy(labels: np.ndarray, preds: np.ndarray) -> float:
    """Fraction of (N,) ``preds`` equal to (N,) ``labels``; NaN when N == 0."""
    y = as_labels(labels)
    p = as_labels(preds, n=y.shape[0], name="preds")
    if y.size == 0:
        return float("nan")
    return float(np.mean(y == p))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class."""
    c = _check_num_classes(num_classes)
    y = as_labels(labels, num_classes=c)
    p = as_labels(preds, n=y.shape[0], num_classes=c, name="preds")
    flat = np.bincount(y * c + p, minlength=c * c)
    return flat.reshape(c, c).astype(np.int64)


def row_normalize(cm: np.ndarray) -> np.ndarray:
    """Divide each row of a (C, C) matrix by its sum -> float64; rows summing to 0 stay 0."""
    m = np.asarray(cm, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"cm must be a 2-D matrix, got shape {m.shape}")
    sums = m.sum(axis=1, keepdims=True)
    out = np.zeros_like(m)
    np.divide(m, sums, out=out, where=sums != 0)
    return out


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(C,) float64 accuracy of each true class; NaN for classes absent from ``labels``."""
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1).astype(np.float64)
    out = np.full(cm.shape[0], np.nan)
    np.divide(np.diag(cm).astype(np.float64), support, out=out, where=support > 0)
    return out


def high_confidence_failures(logits: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """Positions of wrong predictions whose top probability exceeds ``threshold``.

    Returns an int64 array of indices into the N rows, sorted by confidence descending, ties by
    position ascending (so the order is reproducible).
    """
    t = check_threshold(threshold)
    probs = softmax(logits)
    y = as_labels(labels, n=probs.shape[0])
    conf = probs.max(axis=1)
    wrong = np.argmax(probs, axis=1) != y
    idx = np.flatnonzero(wrong & (conf > t))
    # lexsort sorts by the last key first: confidence descending, then index ascending.
    order = np.lexsort((idx, -conf[idx]))
    return idx[order].astype(np.int64)


def threshold_counts(logits: np.ndarray, labels: np.ndarray,
                     thresholds: np.ndarray = DEFAULT_THRESHOLDS) -> np.ndarray:
    """(T,) int64: for each threshold t, the number of wrong predictions with confidence > t."""
    probs = softmax(logits)
    y = as_labels(labels, n=probs.shape[0])
    ts = np.asarray(thresholds, dtype=np.float64)
    if ts.ndim != 1:
        raise ValueError(f"thresholds must be 1-D, got shape {ts.shape}")
    wrong_conf = np.sort(probs.max(axis=1)[np.argmax(probs, axis=1) != y])
    # Number of sorted values <= t is searchsorted(side="right"); the rest are > t.
    return (wrong_conf.size - np.searchsorted(wrong_conf, ts, side="right")).astype(np.int64)


def confidence_histograms(logits: np.ndarray, labels: np.ndarray, bins: int = 20) -> dict:
    """Histograms of top-probability for right and wrong predictions on equal bins over [0, 1].

    Returns dict(edges (bins+1,) float64, right_counts (bins,) int64, wrong_counts (bins,) int64).
    Bins are [lo, hi) except the last, which is [lo, 1] (numpy.histogram convention).
    """
    if int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    probs = softmax(logits)
    y = as_labels(labels, n=probs.shape[0])
    conf = probs.max(axis=1)
    right = np.argmax(probs, axis=1) == y
    edges = np.linspace(0.0, 1.0, int(bins) + 1)
    right_counts, _ = np.histogram(conf[right], bins=edges)
    wrong_counts, _ = np.histogram(conf[~right], bins=edges)
    return {"edges": edges, "right_counts": right_counts.astype(np.int64),
            "wrong_counts": wrong_counts.astype(np.int64)}


def per_class_delta(base_acc: np.ndarray, var_acc: np.ndarray,
                    descending: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Per-class accuracy change for a waterfall plot.

    Takes (C,) baseline and variant per-class accuracies. Returns ``(order, deltas)`` where
    ``deltas`` (C,) float64 is ``var_acc - base_acc`` in class order and ``order`` (C,) int64 lists
    class indices from the largest gain to the largest loss (``descending=False`` reverses that),
    ties by class index, NaN deltas (absent classes) last.
    """
    b = np.asarray(base_acc, dtype=np.float64)
    v = np.asarray(var_acc, dtype=np.float64)
    if b.ndim != 1 or b.shape != v.shape:
        raise ValueError(f"base_acc and var_acc must both have shape (C,), got {b.shape} and {v.shape}")
    deltas = v - b
    key = -deltas if descending else deltas
    nan = np.isnan(deltas)
    # lexsort: primary key NaN-ness (False first), then the delta key, then class index.
    order = np.lexsort((np.arange(deltas.size), np.where(nan, 0.0, key), nan))
    return order.astype(np.int64), deltas


def _check_num_classes(num_classes: int) -> int:
    if int(num_classes) != num_classes or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)
