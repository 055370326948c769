"""Out-of-distribution detection from stored logits: scores, AUROC, AUPR, FPR at 95% TPR.

Shapes: N_in in-distribution images, N_out out-of-distribution images, C classes, B bins.
A *score* is one float per image where **higher means more in-distribution**; every metric here
takes two (N,) score arrays, ``score_in`` and ``score_out``, so that a detector other than the
three built in (a Mahalanobis distance, a feature norm) can be evaluated the same way by negating
it if needed.

Scores (``SCORES``), all from logits alone, so no extra forward pass is needed:

- ``msp``        maximum softmax probability (Hendrycks & Gimpel 2017), the usual baseline.
- ``max_logit``  the largest raw logit (Hendrycks et al. 2022); not squashed into [1/C, 1], so it
                 keeps separating images the softmax already saturates.
- ``energy``     the negative free energy at T = 1, ``logsumexp(logits)`` (Liu et al. 2020).

Conventions (they matter on float16 logits, where ties are common):

- AUROC counts a tie between an in- and an out-sample as one half (Mann-Whitney U).
- AUPR is average precision as scikit-learn computes it: precision evaluated once per distinct
  score (a tied group enters all at once), weighted by the recall it adds; no interpolation.
- FPR at 95% TPR accepts every sample whose score is ``>=`` the threshold, so an out-sample tied
  with the threshold counts as a false positive (the pessimistic reading for the detector).
"""

from __future__ import annotations

import numpy as np

from cnnstress.analysis._checks import as_logits

SCORES = ("msp", "max_logit", "energy")


def _as_scores(scores: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    """Return ``scores`` as a finite float64 (N,) array, or raise ValueError naming ``name``."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must have shape (N,), got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must hold at least one score, got N=0")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _logsumexp(x: np.ndarray) -> np.ndarray:
    """Row-wise log(sum(exp(x))) of a float64 (N, C) array without overflow."""
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def ood_score(logits: np.ndarray, name: str) -> np.ndarray:
    """Per-image score (N,) float64 from (N, C) logits; higher = more in-distribution.

    ``name`` is one of ``SCORES``. msp is computed as ``exp(max - logsumexp)``, which neither
    overflows on large logits nor loses the top probability to rounding the way a softmax of
    float16 logits would.
    """
    if name not in SCORES:
        raise ValueError(f"name must be one of {SCORES}, got {name!r}")
    x = as_logits(logits)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.float64)
    if name == "max_logit":
        return x.max(axis=1)
    lse = _logsumexp(x)
    if name == "energy":
        return lse
    return np.exp(x.max(axis=1) - lse)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, tied values sharing the mean of their ranks (O(n log n))."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    n = values.size
    # Start of every run of equal values in the sorted order, then each run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_vals[1:] != sorted_vals[:-1]])
    ends = np.r_[starts[1:], n]  # exclusive
    mean_rank = (starts + 1 + ends) / 2.0  # mean of start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auroc(score_in: np.ndarray, score_out: np.ndarray) -> float:
    """Area under the ROC curve with in-distribution as positives.

    Equals the probability that a random in-sample scores higher than a random out-sample, a tie
    counting one half: the Mann-Whitney U of the in-samples divided by N_in * N_out, computed from
    average ranks of the pooled scores in O(n log n). 0.5 = no separation, 1 = perfect.
    """
    s_in = _as_scores(score_in, "score_in")
    s_out = _as_scores(score_out, "score_out")
    n_in, n_out = s_in.size, s_out.size
    ranks = _average_ranks(np.concatenate([s_in, s_out]))
    u = ranks[:n_in].sum() - n_in * (n_in + 1) / 2.0
    return float(u / (n_in * n_out))


def _average_precision(pos: np.ndarray, neg: np.ndarray) -> float:
    """AP of ``pos`` (positives) against ``neg``: sum over distinct thresholds, from the highest,
    of (recall gained) * (precision there); a tied group enters at once (as scikit-learn)."""
    scores = np.concatenate([pos, neg])
    is_pos = np.concatenate([np.ones(pos.size), np.zeros(neg.size)])
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], is_pos[order]
    # Last index of every run of equal scores: the thresholds where the curve is evaluated.
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = np.cumsum(y)[last]
    taken = last + 1.0
    precision = tp / taken
    recall = tp / pos.size
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def aupr(score_in: np.ndarray, score_out: np.ndarray, positive: str = "in") -> float:
    """Area under the precision-recall curve as average precision (step-wise, no interpolation).

    ``positive="in"`` ("AUPR-In") treats in-distribution samples as positives and ranks by the
    score; ``positive="out"`` ("AUPR-Out") treats out-samples as positives and ranks by the
    negated score. Unlike AUROC it depends on the ratio N_in : N_out (its chance level is the
    share of positives), so report that ratio alongside it.
    """
    s_in = _as_scores(score_in, "score_in")
    s_out = _as_scores(score_out, "score_out")
    if positive == "in":
        return _average_precision(s_in, s_out)
    if positive == "out":
        return _average_precision(-s_out, -s_in)
    raise ValueError(f"positive must be 'in' or 'out', got {positive!r}")


def _min_count(fraction: float, n: int) -> int:
    """Smallest integer k with k / n >= fraction, decided in the same float arithmetic as
    ``np.mean(mask) >= fraction`` (ceil(fraction * n) alone can be off by one after rounding)."""
    k = int(np.ceil(fraction * n))
    while k > 0 and (k - 1) / n >= fraction:
        k -= 1
    while k < n and k / n < fraction:
        k += 1
    return k


def fpr_at_tpr(score_in: np.ndarray, score_out: np.ndarray, tpr: float = 0.95) -> float:
    """Fraction of out-samples accepted at the threshold that keeps ``tpr`` of in-samples.

    Convention: a sample is accepted as in-distribution when its score is ``>= t``; the threshold
    is the largest ``t`` with ``mean(score_in >= t) >= tpr``, which is the ceil(tpr * N_in)-th
    largest in-score. Returns ``mean(score_out >= t)``; out-samples tied with ``t`` are counted as
    accepted, so ties never flatter the detector. ``tpr`` is in (0, 1].
    """
    t = float(tpr)
    if not 0.0 < t <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr!r}")
    s_in = _as_scores(score_in, "score_in")
    s_out = _as_scores(score_out, "score_out")
    k = _min_count(t, s_in.size)
    threshold = np.sort(s_in)[::-1][k - 1]
    return float(np.mean(s_out >= threshold))


def ood_metrics(logits_in: np.ndarray, logits_out: np.ndarray) -> dict:
    """Every score in ``SCORES`` evaluated on in- vs out-of-distribution logits.

    Returns ``{score name: {"auroc", "aupr_in", "aupr_out", "fpr95"}}`` (floats), the score names
    in ``SCORES`` order. Both logit arrays must have the same number of classes (the same model).
    """
    x_in = as_logits(logits_in, name="logits_in")
    x_out = as_logits(logits_out, name="logits_out")
    if x_in.shape[1] != x_out.shape[1]:
        raise ValueError(f"logits_out has {x_out.shape[1]} classes, logits_in has {x_in.shape[1]}")
    if x_in.shape[0] == 0 or x_out.shape[0] == 0:
        raise ValueError(f"ood_metrics needs samples on both sides, got N_in={x_in.shape[0]}, "
                         f"N_out={x_out.shape[0]}")
    out = {}
    for name in SCORES:
        s_in, s_out = ood_score(x_in, name), ood_score(x_out, name)
        out[name] = {"auroc": auroc(s_in, s_out),
                     "aupr_in": aupr(s_in, s_out, positive="in"),
                     "aupr_out": aupr(s_in, s_out, positive="out"),
                     "fpr95": fpr_at_tpr(s_in, s_out, 0.95)}
    return out


def score_histogram(score_in: np.ndarray, score_out: np.ndarray, bins: int = 30) -> dict:
    """Histograms of in- and out-scores on shared equal-width edges, for one overlaid figure.

    Returns dict(edges (B+1,) float64, in_counts (B,) int64, out_counts (B,) int64). The edges
    span the pooled minimum to maximum (each bin [lo, hi), the last closed), so both histograms
    are drawn on one axis; when every score is equal the range is widened to +-0.5 around it.
    """
    if isinstance(bins, bool) or int(bins) != bins or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    s_in = _as_scores(score_in, "score_in", allow_empty=True)
    s_out = _as_scores(score_out, "score_out", allow_empty=True)
    pooled = np.concatenate([s_in, s_out])
    if pooled.size == 0:
        raise ValueError("score_histogram needs at least one score, got none")
    lo, hi = float(pooled.min()), float(pooled.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(bins) + 1)
    in_counts, _ = np.histogram(s_in, bins=edges)
    out_counts, _ = np.histogram(s_out, bins=edges)
    return {"edges": edges, "in_counts": in_counts.astype(np.int64),
            "out_counts": out_counts.astype(np.int64)}
