"""Accuracy under natural distribution shift against clean test accuracy (pure numpy).

The drop is clean test accuracy minus accuracy on a shift set (positive: worse under the shift).
The two are measured on different images, so nothing pairs image by image within a run; the
interval resamples images the way verdicts' per-image intervals do (docs/statistics.md), on two
independent samples: each image's correctness averaged over the seeds, then Welch's t-interval of
the difference of the two means (the clean test images against the shift set's images). It covers
another draw of test and shift images for these trained networks, not reseeding; the seeds' own
spread of the per-run drop is reported beside it (a t-interval over seeds, from 2 seeds on).
"""

from __future__ import annotations

import numpy as np

from . import compare, verdicts


def drop(clean_right: np.ndarray, shift_right: np.ndarray) -> dict:
    """``clean_right`` (S, N) and ``shift_right`` (S, K) 0/1 correctness of S runs (the same N test
    images and the same K shift images in every run, seeds in the same order).

    Returns clean, shift: mean accuracies over runs and images; drop = clean - shift; ci95: Welch's
    interval over images of the drop (None with fewer than 2 images on a side); p_value: its
    two-sided p-value; per_run: (S,) drops; seeds: compare.mean_std_ci of the per-run drops."""
    c = np.atleast_2d(np.asarray(clean_right, dtype=np.float64))
    s = np.atleast_2d(np.asarray(shift_right, dtype=np.float64))
    if c.shape[0] != s.shape[0] or c.shape[0] < 1:
        raise ValueError(f"clean and shift correctness need the same runs (>= 1), got {c.shape[0]} and {s.shape[0]}")
    per_run = c.mean(axis=1) - s.mean(axis=1)
    out = {"clean": float(c.mean()), "shift": float(s.mean()), "drop": float(c.mean() - s.mean()),
           "ci95": None, "p_value": None, "per_run": per_run, "seeds": compare.mean_std_ci(per_run),
           "n_runs": int(c.shape[0]), "n_clean": int(c.shape[1]), "n_shift": int(s.shape[1])}
    if c.shape[1] >= 2 and s.shape[1] >= 2:
        w = verdicts.welch_interval(s.mean(axis=0), c.mean(axis=0))  # mean(clean) - mean(shift)
        out.update(ci95=(float(w["lo"]), float(w["hi"])), p_value=float(w["p"]))
    return out
