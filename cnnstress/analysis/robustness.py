"""Corruption robustness: accuracy tables over (corruption, severity), corruption error relative to a
baseline (CE, mCE) and classes that break first."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from cnnstress.analysis._checks import as_labels


def corruption_table(clean_acc: float, acc: Mapping[tuple[str, int], float]) -> dict:
    """Summarise accuracies keyed by (corruption, severity).

    Returns dict(clean_accuracy, per_corruption {corruption: [acc, ... by ascending severity]},
    severities {corruption: [severity, ...]}, mean_corruption_accuracy (mean over all entries,
    mCA), relative (mCA / clean accuracy; NaN when clean accuracy is 0)).
    """
    if not acc:
        raise ValueError("acc must hold at least one (corruption, severity) entry")
    by_corruption: dict[str, list[tuple[int, float]]] = {}
    for key, value in acc.items():
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"acc keys must be (corruption, severity) pairs, got {key!r}")
        by_corruption.setdefault(str(key[0]), []).append((int(key[1]), float(value)))
    per_corruption = {c: [a for _, a in sorted(v)] for c, v in sorted(by_corruption.items())}
    severities = {c: [s for s, _ in sorted(v)] for c, v in sorted(by_corruption.items())}
    mca = float(np.mean([float(v) for v in acc.values()]))
    clean = float(clean_acc)
    return {"clean_accuracy": clean, "per_corruption": per_corruption, "severities": severities,
            "mean_corruption_accuracy": mca, "relative": mca / clean if clean > 0 else float("nan")}


def mean_accuracy(runs: Sequence[Mapping[tuple[str, int], float]]) -> dict[tuple[str, int], float]:
    """Accuracy per (corruption, severity), the mean over the runs that have that key (seeds)."""
    keys = sorted({k for r in runs for k in r})
    return {k: float(np.mean([float(r[k]) for r in runs if k in r])) for k in keys}


def corruption_error(acc: Mapping[tuple[str, int], float],
                     baseline_acc: Mapping[tuple[str, int], float]) -> dict:
    """Hendrycks & Dietterich's corruption error (CE), normalised by a baseline instead of AlexNet.

    ``acc`` and ``baseline_acc`` are accuracies keyed by (corruption, severity); errors are 1 -
    accuracy. For each corruption c that both have, over the severities both have:
    ``CE_c = sum_s E_{s,c} / sum_s E^baseline_{s,c}``. The mean corruption error ``mCE`` is the mean
    of CE_c over the corruptions whose CE is finite (the baseline made some error on them); NaN when
    there is none. A model as robust as the baseline has CE = 1; lower is more robust.

    Returns dict(corruption_error {corruption: CE}, mce, severities {corruption: [severity, ...]}).
    """
    shared: dict[str, list[int]] = {}
    for key in acc:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"acc keys must be (corruption, severity) pairs, got {key!r}")
        if key in baseline_acc:
            shared.setdefault(str(key[0]), []).append(int(key[1]))
    ce: dict[str, float] = {}
    for corruption, sevs in sorted(shared.items()):
        keys = [(corruption, s) for s in sorted(sevs)]
        err = float(np.sum([1.0 - float(acc[k]) for k in keys]))
        base = float(np.sum([1.0 - float(baseline_acc[k]) for k in keys]))
        ce[corruption] = err / base if base > 0 else (float("nan") if err == 0 else float("inf"))
    finite = [v for v in ce.values() if math.isfinite(v)]
    return {"corruption_error": ce, "mce": float(np.mean(finite)) if finite else float("nan"),
            "severities": {c: sorted(s) for c, s in sorted(shared.items())}}


def rank_breaking(clean_acc: np.ndarray, acc_by_severity: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Class indices ordered by accuracy drop at the lowest severity, and those drops (C,).

    ``clean_acc`` and each ``acc_by_severity[s]`` are per-class accuracies (C,), NaN for absent
    classes. Largest drop first; ties broken by the drop at the middle severity (the median of the
    sorted severities), then by class index. Absent classes come last.
    """
    if not acc_by_severity:
        raise ValueError("acc_by_severity must hold at least one severity")
    sevs = sorted(int(s) for s in acc_by_severity)
    low, mid = sevs[0], sevs[len(sevs) // 2]
    drop_low = clean_acc - acc_by_severity[low]
    drop_mid = clean_acc - acc_by_severity[mid]
    absent = np.isnan(drop_low)
    order = np.lexsort((np.arange(len(clean_acc)), -np.nan_to_num(drop_mid), -np.nan_to_num(drop_low), absent))
    return order, drop_low


def breaking_from_counts(support: np.ndarray, clean_right: np.ndarray,
                         right_by_severity: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``rank_breaking`` from per-class counts: (order, drop at the lowest severity, present).

    ``support`` (C,) test images per class, ``clean_right`` (C,) right clean predictions per class
    and ``right_by_severity[s]`` (C,) right predictions per class on the corrupted set at severity
    ``s``; counts may be summed over seeds (pooled). Per-class accuracy is right / support, NaN
    where the support is 0 (``present`` is False there). Gather keeps these (C,) counts per run
    instead of (N,) predictions.
    """
    if not right_by_severity:
        raise ValueError("right_by_severity must hold at least one severity")
    support = np.asarray(support, dtype=np.float64)
    present = support > 0

    def per_class(right: np.ndarray) -> np.ndarray:
        out = np.full(support.shape, np.nan)
        np.divide(np.asarray(right, dtype=np.float64), support, out=out, where=present)
        return out

    order, drop_low = rank_breaking(per_class(clean_right), {int(s): per_class(c) for s, c in right_by_severity.items()})
    return order, drop_low, present


def class_counts(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(support, right): test images and right predictions per true class, (C,) int64 each."""
    y = as_labels(labels, num_classes=num_classes)
    p = np.asarray(preds)
    return (np.bincount(y, minlength=num_classes).astype(np.int64),
            np.bincount(y[p == y], minlength=num_classes).astype(np.int64))


def classes_breaking_first(labels: np.ndarray, clean_preds: np.ndarray,
                           corrupted_preds_by_severity: Mapping[int, np.ndarray],
                           num_classes: int) -> list[int]:
    """Class indices ordered by how much their accuracy drops at the lowest severity (see
    ``rank_breaking``), from per-image predictions: ``breaking_from_counts`` over ``class_counts``."""
    if not corrupted_preds_by_severity:
        raise ValueError("corrupted_preds_by_severity must hold at least one severity")
    support, clean = class_counts(labels, clean_preds, num_classes)
    by_sev = {int(s): class_counts(labels, p, num_classes)[1] for s, p in corrupted_preds_by_severity.items()}
    order, _, _ = breaking_from_counts(support, clean, by_sev)
    return [int(i) for i in order]


def drop_beyond_seeds(support: np.ndarray, clean_right: np.ndarray, right_low: np.ndarray,
                      alpha: float = 0.05) -> dict:
    """Whether each class's accuracy drop under a corruption is beyond the spread over seeds.

    ``support``, ``clean_right`` and ``right_low`` are (S, C) per-seed counts: test images, right
    clean predictions and right predictions on the corrupted set (its lowest severity) per class.
    Each seed's drop is clean accuracy - corrupted accuracy of the class; ``beyond`` is True where
    the (1 - alpha) Student t-interval over the S seeds lies above 0 (a drop that reseeding does not
    explain; with identical drops in every seed the interval is that drop). With fewer than 2
    seeds, or a class some seed has no test image of, nothing is beyond (no spread to judge by).

    Returns dict(mean, lo, hi (C,) float, NaN where not estimable; beyond (C,) bool; n_seeds).
    """
    from cnnstress.analysis.verdicts import t_interval

    sup = np.atleast_2d(np.asarray(support, dtype=np.float64))
    clean = np.atleast_2d(np.asarray(clean_right, dtype=np.float64))
    low = np.atleast_2d(np.asarray(right_low, dtype=np.float64))
    if not (sup.shape == clean.shape == low.shape) or sup.ndim != 2:
        raise ValueError(f"support, clean_right and right_low must share one (seeds, classes) shape, got "
                         f"{sup.shape}, {clean.shape}, {low.shape}")
    s, c = sup.shape
    nan = np.full(c, np.nan)
    out = {"mean": nan.copy(), "lo": nan.copy(), "hi": nan.copy(), "beyond": np.zeros(c, dtype=bool), "n_seeds": s}
    present = np.all(sup > 0, axis=0)
    if s < 2 or not present.any():
        return out
    drop = (clean[:, present] - low[:, present]) / sup[:, present]  # (S, C present)
    ti = t_interval(drop.T, alpha)
    for key in ("mean", "lo", "hi"):
        out[key][present] = ti[key]
    out["beyond"][present] = ti["lo"] > 0
    return out
