"""Background-shortcut check on the ``shapes`` dataset: does the model follow the background hue?"""

from __future__ import annotations

import numpy as np

from cnnstress.analysis._checks import as_labels


def shortcut_accuracy(labels: np.ndarray, preds: np.ndarray, bg_class: np.ndarray) -> dict:
    """Accuracy on images whose background agrees with the label vs images where it conflicts.

    ``labels``, ``preds``, ``bg_class`` are (N,) ints (``bg_class`` = the class the background hue
    names). Returns dict(acc_conflicting, acc_aligned, n_conflicting, n_aligned,
    follows_background = fraction of conflicting images predicted as their background class).
    Fractions are NaN when their group is empty.
    """
    y = as_labels(labels)
    p = as_labels(preds, n=y.shape[0], name="preds")
    bg = as_labels(bg_class, n=y.shape[0], name="bg_class")
    conflicting = bg != y
    aligned = ~conflicting
    return {"acc_conflicting": _mean(p[conflicting] == y[conflicting]),
            "acc_aligned": _mean(p[aligned] == y[aligned]),
            "n_conflicting": int(np.count_nonzero(conflicting)),
            "n_aligned": int(np.count_nonzero(aligned)),
            "follows_background": _mean(p[conflicting] == bg[conflicting])}


def _mean(flags: np.ndarray) -> float:
    return float(np.mean(flags)) if flags.size else float("nan")
