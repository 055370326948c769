"""Calibration of stored predictions: ECE and reliability bins, NLL, Brier, temperature scaling.

Shapes: N test images, C classes, B bins. ``probs`` are (N, C) probabilities (e.g. from
``metrics.softmax``); ``logits`` are (N, C) raw scores; ``labels`` are (N,) integer classes.
"""

from __future__ import annotations

import math

import numpy as np

from cnnstress.analysis._checks import as_labels, as_logits
from cnnstress.analysis.metrics import log_softmax, softmax

T_MIN, T_MAX = 0.05, 20.0
T_TOL = 1e-4  # on log T, i.e. a relative tolerance on T


def _as_probs(probs: np.ndarray) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 1:
        raise ValueError(f"probs must have shape (N, C), got shape {p.shape}")
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0):
        raise ValueError("probs must be finite and non-negative")
    return p


def _bin_index(conf: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin of each confidence on equal-width bins: (lo, hi], the first bin closed: [0, 1/B]."""
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    # k / B exactly (correctly rounded), so a confidence equal to an edge lands where (lo, hi] says.
    edges = np.arange(int(n_bins) + 1, dtype=np.float64) / int(n_bins)
    # searchsorted(side="left") gives the first edge >= conf, so conf in (e[k], e[k+1]] -> k + 1.
    # Clipping puts 0 into the first bin and any rounding above 1 into the last.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, int(n_bins) - 1)
    return idx, edges


def reliability(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Reliability-diagram bins on the top probability.

    Returns dict(bin_edges (B+1,) float64, accuracy (B,) float64, confidence (B,) float64,
    count (B,) int64); accuracy and confidence are NaN in empty bins.
    """
    p = _as_probs(probs)
    y = as_labels(labels, n=p.shape[0])
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    idx, edges = _bin_index(conf, n_bins)
    count = np.bincount(idx, minlength=edges.size - 1)
    acc_sum = np.bincount(idx, weights=correct, minlength=edges.size - 1)
    conf_sum = np.bincount(idx, weights=conf, minlength=edges.size - 1)
    acc = np.full(count.shape, np.nan)
    mean_conf = np.full(count.shape, np.nan)
    np.divide(acc_sum, count, out=acc, where=count > 0)
    np.divide(conf_sum, count, out=mean_conf, where=count > 0)
    return {"bin_edges": edges, "accuracy": acc, "confidence": mean_conf,
            "count": count.astype(np.int64)}


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error: sum over bins of (bin share) * |accuracy - mean confidence|.

    NaN when there are no samples.
    """
    rel = reliability(probs, labels, n_bins)
    n = rel["count"].sum()
    if n == 0:
        return float("nan")
    filled = rel["count"] > 0
    gaps = np.abs(rel["accuracy"][filled] - rel["confidence"][filled])
    return float(np.sum(rel["count"][filled] / n * gaps))


def nll(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class, via a stable log-softmax."""
    lp = log_softmax(logits)
    y = as_labels(labels, n=lp.shape[0], num_classes=lp.shape[1])
    if y.size == 0:
        return float("nan")
    return float(-np.mean(lp[np.arange(y.size), y]))


def brier(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean over samples of sum over classes of (p - onehot)^2 (range [0, 2])."""
    p = _as_probs(probs)
    y = as_labels(labels, n=p.shape[0], num_classes=p.shape[1])
    if y.size == 0:
        return float("nan")
    sq = np.square(p).sum(axis=1)
    # sum_c (p_c - 1[c=y])^2 = sum_c p_c^2 - 2 p_y + 1, without building the one-hot matrix.
    return float(np.mean(sq - 2.0 * p[np.arange(y.size), y] + 1.0))


def _nll_at(x: np.ndarray, y: np.ndarray, temperature: float) -> float:
    z = x / temperature
    z = z - z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(lse - z[np.arange(y.size), y]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature T in [0.05, 20] minimising NLL of ``logits / T`` (deterministic).

    Golden-section search on log T, to a tolerance of 1e-4 on log T. NLL is convex in 1/T (a
    log-sum-exp of linear functions), hence unimodal in log T, so the search finds the minimum.
    """
    x = as_logits(logits)
    y = as_labels(labels, n=x.shape[0], num_classes=x.shape[1])
    if y.size == 0:
        raise ValueError("fit_temperature needs at least one sample, got N=0")
    invphi = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = math.log(T_MIN), math.log(T_MAX)
    c, d = b - invphi * (b - a), a + invphi * (b - a)
    fc, fd = _nll_at(x, y, math.exp(c)), _nll_at(x, y, math.exp(d))
    while b - a > T_TOL:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - invphi * (b - a)
            fc = _nll_at(x, y, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + invphi * (b - a)
            fd = _nll_at(x, y, math.exp(d))
    best = (a + b) / 2.0
    # The minimum may sit on a boundary of [T_MIN, T_MAX]; compare against the ends explicitly.
    candidates = [best, math.log(T_MIN), math.log(T_MAX)]
    values = [_nll_at(x, y, math.exp(t)) for t in candidates]
    return float(math.exp(candidates[int(np.argmin(values))]))


def _scores_from_log_probs(lp: np.ndarray, y: np.ndarray) -> tuple[float, float, float, dict]:
    """ECE, NLL, Brier and the reliability bins from (N, C) log-probabilities: one exp, no softmax
    recomputed per score (gather calls this for every corrupted test set of every run)."""
    probs = np.exp(lp)
    rel = reliability(probs, y)
    n = rel["count"].sum()
    if n == 0:
        return float("nan"), float("nan"), float("nan"), rel
    filled = rel["count"] > 0
    ece_value = float(np.sum(rel["count"][filled] / n * np.abs(rel["accuracy"][filled] - rel["confidence"][filled])))
    rows = np.arange(y.size)
    nll_value = float(-np.mean(lp[rows, y]))
    brier_value = float(np.mean(np.square(probs).sum(axis=1) - 2.0 * probs[rows, y] + 1.0))
    return ece_value, nll_value, brier_value, rel


def scores_at_temperature(logits: np.ndarray, labels: np.ndarray, temperature: float | None = None) -> dict:
    """ECE, NLL and Brier of ``logits``, and with a temperature the same of ``logits / T``.

    Returns dict(ece, nll, brier, ece_after, nll_after, brier_after, reliability, ace,
    classwise_ece, smece) (the last three: ``extended_scores`` before scaling); the ``*_after``
    values are None without a temperature; ``reliability`` is the 15-bin reliability of the
    unscaled probabilities. For a temperature fitted elsewhere (on clean validation logits) and
    applied to other logits, e.g. a corrupted test set: refitting on those would flatter them.
    """
    x = as_logits(logits)
    y = as_labels(labels, n=x.shape[0], num_classes=x.shape[1])
    if temperature is not None:
        t = float(temperature)
        if not (math.isfinite(t) and t > 0.0):
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    lp = log_softmax(x)
    ece_v, nll_v, brier_v, rel = _scores_from_log_probs(lp, y)
    out = {"ece": ece_v, "nll": nll_v, "brier": brier_v, "reliability": rel,
           "ece_after": None, "nll_after": None, "brier_after": None, **extended_scores(np.exp(lp), y)}
    if temperature is not None:
        ece_t, nll_t, brier_t, _ = _scores_from_log_probs(log_softmax(x / t), y)
        out.update(ece_after=ece_t, nll_after=nll_t, brier_after=brier_t)
    return out


def calibration_summary(logits: np.ndarray, labels: np.ndarray,
                        val_logits: np.ndarray | None = None,
                        val_labels: np.ndarray | None = None) -> dict:
    """ECE, NLL and Brier on the test logits, plus temperature scaling fitted on validation.

    Returns dict(ece, nll, brier, temperature, ece_after, nll_after, ace, classwise_ece, smece)
    (the last three: ``extended_scores``). temperature, ece_after and nll_after are None
    unless both ``val_logits`` and ``val_labels`` are given (fitting T on the test set itself would
    flatter the result).
    """
    if (val_logits is None) != (val_labels is None):
        raise ValueError("val_logits and val_labels must be given together (or neither)")
    x = as_logits(logits)
    y = as_labels(labels, n=x.shape[0], num_classes=x.shape[1])
    probs = softmax(x)
    out = {"ece": ece(probs, y), "nll": nll(x, y), "brier": brier(probs, y),
           "temperature": None, "ece_after": None, "nll_after": None, **extended_scores(probs, y)}
    if val_logits is not None:
        vx = as_logits(val_logits, name="val_logits")
        if vx.shape[1] != x.shape[1]:
            raise ValueError(f"val_logits has {vx.shape[1]} classes, logits has {x.shape[1]}")
        vy = as_labels(val_labels, n=vx.shape[0], num_classes=vx.shape[1], name="val_labels")
        t = fit_temperature(vx, vy)
        out["temperature"] = t
        out["ece_after"] = ece(softmax(x / t), y)
        out["nll_after"] = nll(x / t, y)
    return out


# ------------------------------------------------------------------------------------------------
# Calibration beyond equal-width binning: adaptive (equal-mass) ECE, classwise ECE, smooth ECE
# ------------------------------------------------------------------------------------------------


def adaptive_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Adaptive (equal-mass) ECE on the top probability (Nixon et al., "Measuring calibration in
    deep learning", 2019): bins hold equal numbers of images instead of equal confidence widths.

    An image whose confidence has r images strictly below it goes to bin floor(B * r / N): without
    ties every bin holds N / B images (up to rounding); tied confidences always share a bin, so the
    value does not depend on the order of the input. NaN when there are no samples.
    """
    if int(n_bins) != n_bins or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    p = _as_probs(probs)
    y = as_labels(labels, n=p.shape[0])
    n = y.size
    if n == 0:
        return float("nan")
    conf = p.max(axis=1)
    correct = (np.argmax(p, axis=1) == y).astype(np.float64)
    below = np.searchsorted(np.sort(conf), conf, side="left")  # images with a strictly lower confidence
    idx = (int(n_bins) * below) // n
    count = np.bincount(idx, minlength=int(n_bins)).astype(np.float64)
    gap = np.bincount(idx, weights=conf - correct, minlength=int(n_bins))
    # sum over bins of (n_b / N) * |mean conf - accuracy| = sum |sum_b (conf - correct)| / N
    return float(np.sum(np.abs(gap[count > 0])) / n)


def classwise_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al., "Beyond temperature scaling", NeurIPS 2019): for every class c,
    the equal-width-binned ECE of p_c against whether the label is c, over all images; the mean
    over classes. Bins as in ``reliability`` ((lo, hi], the first closed). NaN when there are no
    samples."""
    p = _as_probs(probs)
    y = as_labels(labels, n=p.shape[0], num_classes=p.shape[1])
    n, c = p.shape
    if n == 0:
        return float("nan")
    idx, _ = _bin_index(p, n_bins)                       # (N, C) bin of each class probability
    onehot = np.zeros_like(p)
    onehot[np.arange(n), y] = 1.0
    flat = idx + int(n_bins) * np.arange(c)[None, :]     # one set of bins per class
    gap = np.bincount(flat.ravel(), weights=(p - onehot).ravel(), minlength=int(n_bins) * c)
    return float(np.sum(np.abs(gap)) / n / c)


# Smooth ECE (Błasiok & Nakkiran, "Smooth ECE: principled reliability diagrams via kernel
# smoothing", ICLR 2024), computed as the ``relplot`` package defines it (version 1.0): the residual
# confidence - correctness is smoothed with a Gaussian kernel reflected at 0 and 1, on a grid, and
# the bandwidth is the fixed point sigma = smECE_sigma, found by bisection.
SMECE_MESH = 200      # evaluation points of the smoothed residual (relplot's smECE_mesh_pts)
SMECE_EPS = 1e-3      # smallest bandwidth the search stops at
SMECE_REFINE = 10     # bisection steps
_DENSITY_EPS = 1e-4   # added to the kernel density before dividing (relplot's)


def _kernel_apply(f: np.ndarray, v: np.ndarray, t: np.ndarray, sigma: float) -> np.ndarray:
    """sum_i v_i K_sigma(t - f_i) at the points ``t``, with K a Gaussian reflected at 0 and 1: the
    values are put onto a grid of G points by linear interpolation, convolved, and read back at
    ``t`` by linear interpolation."""
    g = max(2000, round(20 / sigma)) // 2 + 1
    pos = f * (g - 1)
    lo = np.clip(pos.astype(np.int64), 0, g - 2)
    frac = pos - lo
    grid = np.bincount(lo, weights=(1 - frac) * v, minlength=g) + np.bincount(lo + 1, weights=frac * v, minlength=g)
    s = np.linspace(0.0, 1.0, g)
    ker = np.exp(-(s - 0.5) ** 2 / (2 * sigma ** 2)) / (math.sqrt(2 * math.pi) * sigma)
    # the grid mirrored at both ends, so that mass near 0 or 1 is not lost off the interval
    ext = np.concatenate([grid[::-1][:-1], grid, grid[::-1][1:]])
    smoothed = np.convolve(ext, ker, "valid")[g // 2: g // 2 + g]
    k = np.clip((t * (g - 1)).astype(np.int64), 0, g - 2)
    w = (t - k / (g - 1)) * (g - 1)
    return smoothed[k] * (1 - w) + smoothed[k + 1] * w


def _smooth_ece_at(f: np.ndarray, r: np.ndarray, sigma: float) -> float:
    t = np.linspace(0.0, 1.0, max(round(10 / sigma), SMECE_MESH))
    dens = _kernel_apply(f, np.ones_like(r), t, sigma) + _DENSITY_EPS
    smoothed = _kernel_apply(f, r, t, sigma) / dens
    return float(np.sum(np.abs(smoothed) * dens) / np.sum(dens))


def _top_label(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_probs(probs)
    y = as_labels(labels, n=p.shape[0])
    return p.max(axis=1), (np.argmax(p, axis=1) == y).astype(np.float64)


def smooth_ece(probs: np.ndarray, labels: np.ndarray, sigma: float | None = None) -> tuple[float, float]:
    """Smooth ECE of the top probability and the bandwidth it used -> (smece, sigma).

    Without ``sigma`` the bandwidth is chosen as the paper does: the largest sigma (to a bisection
    of 10 steps from 1) with sigma <= smECE(sigma), so no bin count or bandwidth is a free choice.
    Equals ``relplot.smECE(confidence, correct)`` (tests check 1e-6). (NaN, NaN) without samples.
    """
    return _smooth_ece_top(*_top_label(probs, labels), sigma)


def _smooth_ece_top(conf: np.ndarray, correct: np.ndarray, sigma: float | None = None) -> tuple[float, float]:
    if conf.size == 0:
        return float("nan"), float("nan")
    f = np.clip(conf, 0.0, 1.0)
    r = f - correct
    if sigma is not None:
        s = float(sigma)
        if not (math.isfinite(s) and s > 0):
            raise ValueError(f"sigma must be a positive finite number, got {sigma!r}")
        return _smooth_ece_at(f, r, s), s

    def fits(alpha: float) -> bool:
        return alpha < SMECE_EPS or alpha < _smooth_ece_at(f, r, alpha)

    width = 1.0
    if not fits(width):
        hi, lo = 1.0, 0.0
        for _ in range(SMECE_REFINE):
            mid = (hi + lo) / 2
            if fits(mid):
                lo = mid
            else:
                hi = mid
        width = hi
    return _smooth_ece_at(f, r, width), width


def smooth_reliability(probs: np.ndarray, labels: np.ndarray, points: int = SMECE_MESH) -> dict:
    """The smooth reliability diagram: accuracy as a kernel-smoothed function of confidence, at
    the smooth ECE's own bandwidth, and the density of the confidences.

    Returns dict(mesh (P,), accuracy (P,), density (P,) float64, smece, sigma); what relplot's
    ``prepare_rel_diagram`` draws as its line (without the bootstrap band). NaN without samples.
    """
    return smooth_reliability_top(*_top_label(probs, labels), points=points)


def smooth_reliability_top(conf: np.ndarray, correct: np.ndarray, points: int = SMECE_MESH) -> dict:
    """``smooth_reliability`` from (N,) top probabilities and (N,) correctness (e.g. several test
    sets pooled)."""
    f = np.clip(np.asarray(conf, dtype=np.float64).ravel(), 0.0, 1.0)
    y = np.asarray(correct, dtype=np.float64).ravel()
    if f.shape != y.shape or not np.all(np.isfinite(f)):
        raise ValueError(f"conf and correct must be finite (N,) arrays of one length, got {f.shape} and {y.shape}")
    mesh = np.linspace(0.0, 1.0, int(points))
    if f.size == 0:
        nan = np.full(mesh.shape, np.nan)
        return {"mesh": mesh, "accuracy": nan, "density": nan.copy(), "smece": float("nan"), "sigma": float("nan")}
    value, sigma = _smooth_ece_top(f, y)
    dens = _kernel_apply(f, np.ones_like(f), mesh, sigma)
    acc = _kernel_apply(f, y, mesh, sigma) / (dens + _DENSITY_EPS)
    return {"mesh": mesh, "accuracy": acc, "density": dens / f.size, "smece": value, "sigma": sigma}


def pool_smooth(curves: list[dict]) -> dict | None:
    """Smooth reliability curves of several runs as one: the accuracy weighted by each run's
    confidence density at every mesh point, the densities averaged, smece averaged (None: none)."""
    curves = [c for c in curves if c is not None and np.all(np.isfinite(c["accuracy"]))]
    if not curves:
        return None
    dens = np.array([c["density"] for c in curves])
    acc = np.array([c["accuracy"] for c in curves])
    total = dens.sum(axis=0)
    pooled = np.divide((dens * acc).sum(axis=0), total, out=acc.mean(axis=0), where=total > 0)
    return {"mesh": curves[0]["mesh"], "accuracy": pooled, "density": dens.mean(axis=0),
            "smece": float(np.mean([c["smece"] for c in curves])),
            "sigma": float(np.mean([c["sigma"] for c in curves]))}


def extended_scores(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> dict:
    """Adaptive ECE, classwise ECE and smooth ECE of ``probs`` -> dict(ace, classwise_ece, smece)."""
    return {"ace": adaptive_ece(probs, labels, n_bins), "classwise_ece": classwise_ece(probs, labels, n_bins),
            "smece": smooth_ece(probs, labels)[0]}
