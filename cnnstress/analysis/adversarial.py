"""Accuracy under adversarial perturbations of growing size epsilon.

Shapes: M attacked test images, C classes, E perturbation budgets. The worker attacks the same M
images at every epsilon and stores the logits of each attacked set; epsilon = 0 (if stored) is
the clean accuracy on those images.

The curve is computed as stored, without forcing it to be non-increasing here: the worker
already makes it monotone per image by keeping a successful adversarial example found at a
smaller epsilon when the attack at a larger one fails (a larger budget contains the smaller one).
A rise in the curve therefore points at the attack or the worker, and the report should show it
rather than hide it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from cnnstress.analysis._checks import as_labels, as_logits

EPS_RTOL = 1e-6  # epsilons like 8/255 are written by different code paths; match them loosely


def accuracy_curve(logits_by_eps: Mapping[float, np.ndarray], labels: np.ndarray) -> dict:
    """Accuracy at every stored epsilon, epsilons ascending.

    ``logits_by_eps`` maps epsilon (>= 0) to the (M, C) logits of the M images attacked at that
    budget; ``labels`` are their (M,) true classes. Predictions are the argmax (first maximum on
    ties). Returns dict(eps (E,) float64 ascending, accuracy (E,) float64, n int = M); accuracy is
    NaN when M == 0.
    """
    if not isinstance(logits_by_eps, Mapping) or len(logits_by_eps) == 0:
        raise ValueError("logits_by_eps must be a non-empty mapping of epsilon to (M, C) logits")
    items = []
    for eps, logits in logits_by_eps.items():
        e = float(eps)
        if not (math.isfinite(e) and e >= 0.0):
            raise ValueError(f"logits_by_eps keys must be finite epsilons >= 0, got {eps!r}")
        items.append((e, as_logits(logits, name=f"logits_by_eps[{eps!r}]")))
    items.sort(key=lambda item: item[0])
    eps_arr = np.array([e for e, _ in items], dtype=np.float64)
    close = np.isclose(eps_arr[1:], eps_arr[:-1], rtol=EPS_RTOL, atol=0.0)
    if np.any(close):
        i = int(np.flatnonzero(close)[0])
        raise ValueError(f"logits_by_eps has two keys for one epsilon: {eps_arr[i]!r} and {eps_arr[i + 1]!r}")
    shape = items[0][1].shape
    for e, x in items:
        if x.shape != shape:
            raise ValueError(f"logits_by_eps[{e!r}] has shape {x.shape}, expected {shape} "
                             "(the same images at every epsilon)")
    y = as_labels(labels, n=shape[0], num_classes=shape[1])
    if y.size == 0:
        acc = np.full(eps_arr.size, np.nan)
    else:
        acc = np.array([np.mean(np.argmax(x, axis=1) == y) for _, x in items], dtype=np.float64)
    return {"eps": eps_arr, "accuracy": acc, "n": int(shape[0])}


def robust_accuracy_at(curve: dict, eps: float) -> float:
    """Accuracy at one stored epsilon of a curve from ``accuracy_curve``.

    The epsilon must be one that was attacked (matched to a relative 1e-6, so 8/255 written as
    0.0313725... matches); there is no interpolation between budgets, because robust accuracy
    between two attacked budgets is not known. Raises ValueError otherwise, listing the stored ones.
    """
    e = float(eps)
    eps_arr = np.asarray(curve["eps"], dtype=np.float64)
    acc = np.asarray(curve["accuracy"], dtype=np.float64)
    if eps_arr.shape != acc.shape or eps_arr.ndim != 1:
        raise ValueError(f"curve eps and accuracy must be matching (E,) arrays, got {eps_arr.shape} "
                         f"and {acc.shape}")
    hit = np.flatnonzero(np.isclose(eps_arr, e, rtol=EPS_RTOL, atol=0.0) | (eps_arr == e))
    if hit.size == 0:
        raise ValueError(f"eps={eps!r} was not attacked; stored epsilons: {eps_arr.tolist()}")
    return float(acc[hit[0]])
