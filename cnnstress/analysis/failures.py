"""High-confidence failures: canonical cases across baseline seeds and ``failures.json`` records.

Shapes: S seeds, N test images, C classes. A high-confidence failure is a wrong prediction whose
top softmax probability exceeds the threshold (``report.confidence_threshold``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cnnstress.analysis._checks import as_labels, as_logits, check_threshold
from cnnstress.analysis.metrics import high_confidence_failures, softmax


def canonical_failures(base_logits: np.ndarray, labels: np.ndarray, threshold: float,
                       k: int = 6, min_fraction: float = 0.5, strict: bool = True) -> np.ndarray:
    """Positions of images that are high-confidence failures in most baseline seeds.

    ``base_logits`` (S, N, C) (or (N, C) for one seed), ``labels`` (N,). An image qualifies when it
    is wrong with confidence > ``threshold`` in more than ``min_fraction`` of the seeds (``strict``,
    the default), or in at least that share (``strict=False``). The default is a strict majority:
    "most seeds" means 2 of 2, 2 of 3, 3 of 4; 1 of 2 seeds is a coin flip, not a canonical case.
    Qualifying images are ranked by that fraction, then by the mean confidence over the seeds
    where it fails, both descending, then by position; the top ``k`` come back as an int64 array.
    """
    t = check_threshold(threshold)
    lo_ok = 0.0 <= float(min_fraction) < 1.0 if strict else 0.0 < float(min_fraction) <= 1.0
    if not lo_ok:
        raise ValueError(f"min_fraction must be in {'[0, 1)' if strict else '(0, 1]'} with strict={strict}, "
                         f"got {min_fraction!r}")
    if int(k) != k or k < 0:
        raise ValueError(f"k must be a non-negative integer, got {k!r}")
    stack = np.asarray(base_logits)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"base_logits must have shape (S, N, C) or (N, C), got shape {stack.shape}")
    s, n, _ = stack.shape
    y = as_labels(labels, n=n)
    fails = np.zeros((s, n), dtype=bool)
    conf = np.zeros((s, n))
    for i in range(s):  # one seed at a time keeps memory at N x C
        p = softmax(as_logits(stack[i], name=f"base_logits[{i}]"))
        conf[i] = p.max(axis=1)
        fails[i] = (np.argmax(p, axis=1) != y) & (conf[i] > t)
    n_fail = fails.sum(axis=0)
    fraction = n_fail / s
    mean_conf = np.divide((conf * fails).sum(axis=0), n_fail, out=np.zeros(n), where=n_fail > 0)
    # A small tolerance either way, so that exactly 0.5 * S seeds never exceeds min_fraction = 0.5
    # (strict) and always reaches it (not strict), whatever the rounding of n_fail / S.
    passes = fraction > float(min_fraction) + 1e-12 if strict else fraction >= float(min_fraction) - 1e-12
    cand = np.flatnonzero((n_fail > 0) & passes)
    order = np.lexsort((cand, -mean_conf[cand], -fraction[cand]))
    return cand[order][: int(k)].astype(np.int64)


@dataclass(frozen=True)
class FailureColumns:
    """One run's high-confidence failures as numpy columns, sorted by confidence descending.

    A dict per failure costs ~0.5 KiB of Python objects; these columns cost 40 bytes per failure,
    so a sweep's gather keeps every run's failures as columns and makes dicts only when writing
    (``record``/``records``). ``confidence`` stays float64: failures.json prints it in full.
    """

    test_index: np.ndarray  # (k,) int64, position in the dataset's official test split
    position: np.ndarray  # (k,) int64, row of the stored test set
    true: np.ndarray  # (k,) int64
    pred: np.ndarray  # (k,) int64
    confidence: np.ndarray  # (k,) float64 top softmax probability
    names: tuple[str, ...]  # class names, shared by every record

    def __len__(self) -> int:
        return int(self.position.shape[0])

    def record(self, i: int) -> dict:
        """The failures.json entry of failure ``i`` (plain Python types)."""
        true, pred = int(self.true[i]), int(self.pred[i])
        return {"test_index": int(self.test_index[i]), "position": int(self.position[i]),
                "true": true, "true_name": self.names[true], "pred": pred, "pred_name": self.names[pred],
                "confidence": float(self.confidence[i])}

    def records(self, stop: int | None = None) -> list[dict]:
        """The entries of the first ``stop`` failures (all when None)."""
        n = len(self) if stop is None else min(len(self), max(0, stop))
        return [self.record(i) for i in range(n)]


def failure_columns(logits: np.ndarray, labels: np.ndarray, index: np.ndarray, threshold: float,
                    class_names: Sequence[str], probs: np.ndarray | None = None) -> FailureColumns:
    """One run's high-confidence failures as columns, sorted by confidence descending.

    ``logits`` (N, C), ``labels`` (N,), ``index`` (N,) positions in the dataset's official test
    split, ``class_names`` C names. ``probs`` is ``softmax(logits)`` when the caller already has it
    (it is computed here otherwise).
    """
    x = np.asarray(logits)
    if x.ndim != 2:
        x = as_logits(x)  # raises with the shape
    n, c = x.shape
    y = as_labels(labels, n=n, num_classes=c)
    idx = as_labels(index, n=n, name="index")
    names = tuple(str(v) for v in class_names)
    if len(names) != c:
        raise ValueError(f"class_names has {len(names)} names, logits have {c} classes")
    p = softmax(x) if probs is None else probs
    pos = high_confidence_failures(x, y, threshold)
    pred = p[pos].argmax(axis=1).astype(np.int64)
    return FailureColumns(test_index=idx[pos], position=pos, true=y[pos], pred=pred,
                          confidence=np.asarray(p[pos, pred], dtype=np.float64), names=names)
