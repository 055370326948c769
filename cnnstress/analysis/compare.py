"""Baseline vs variant over several seeds, with honest statistics.

Inputs are per-image correctness arrays: (S, N) bool for S seeds and N test images (a (N,) array is
read as one seed). compare_variant pairs rows by seed value; the lower-level functions here take
rows already paired (row i of the baseline with row i of the variant).
"""

from __future__ import annotations

import math

import numpy as np

from cnnstress.analysis._checks import as_bool_matrix, as_bool_vector

EXACT_BELOW = 25  # McNemar: exact binomial test when b + c < 25, chi-square otherwise

# Student t 0.975 quantiles (two-sided 95%) for df = 1..30.
_T975 = (
    12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.100922040, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.068657610, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)
_Z975 = 1.959963984540054


def disagreement(base_correct: np.ndarray, var_correct: np.ndarray) -> dict:
    """Counts over N images of (N,) bool correctness: corrected, worsened, both_wrong, both_right.

    corrected = variant right where baseline wrong; worsened = the reverse. The four ints sum to N.
    """
    b = as_bool_vector(base_correct, "base_correct")
    v = as_bool_vector(var_correct, "var_correct", n=b.shape[0])
    return {"corrected": int(np.count_nonzero(~b & v)), "worsened": int(np.count_nonzero(b & ~v)),
            "both_wrong": int(np.count_nonzero(~b & ~v)), "both_right": int(np.count_nonzero(b & v))}


def _binom_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), summing pmfs computed through log-gamma."""
    log_half_n = n * math.log(2.0)
    total = 0.0
    for i in range(k + 1):
        total += math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - log_half_n)
    return total


def mcnemar(b: int, c: int) -> dict:
    """McNemar test on the discordant counts b (baseline right only) and c (variant right only).

    b + c < 25: exact two-sided binomial test, statistic = min(b, c), method "exact".
    Otherwise: chi-square with continuity correction, statistic = max(|b - c| - 1, 0)^2 / (b + c),
    p = chi2(1) survival = erfc(sqrt(statistic / 2)), method "chi2".
    Returns dict(statistic, p_value, method).
    """
    for name, val in (("b", b), ("c", c)):
        if int(val) != val or val < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {val!r}")
    b, c = int(b), int(c)
    n = b + c
    if n < EXACT_BELOW:
        k = min(b, c)
        p = 1.0 if n == 0 else min(1.0, 2.0 * _binom_half_cdf(k, n))
        return {"statistic": float(k), "p_value": p, "method": "exact"}
    stat = max(abs(b - c) - 1, 0) ** 2 / n
    return {"statistic": float(stat), "p_value": float(math.erfc(math.sqrt(stat / 2.0))), "method": "chi2"}


def t_quantile_975(df: int) -> float:
    """Student t 0.975 quantile: table for df 1..30, Cornish-Fisher expansion beyond (error < 1e-5)."""
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    df = int(df)
    if df <= len(_T975):
        return _T975[df - 1]
    # Asymptotic expansion of the t quantile in powers of 1/df (Abramowitz & Stegun 26.7.5).
    z = _Z975
    g1 = (z**3 + z) / 4.0
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96.0
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384.0
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160.0
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


ACCURACY = (0.0, 1.0)  # the bounds of a fraction, for mean_std_ci


def mean_std_ci(values: np.ndarray, bounds: tuple[float, float] | None = None) -> dict:
    """Mean, sample std (ddof=1) and 95% Student-t interval of (S,) values.

    Returns dict(mean, std, ci95 (lo, hi), n). With S == 1: std 0 and ci95 (mean, mean) -- one
    seed says nothing about seed-to-seed spread. ``bounds`` clips the interval to the values the
    quantity can take ((0, 1) for an accuracy). S == 0 raises ValueError.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("mean_std_ci needs at least one value, got none")
    mean = float(x.mean())
    if x.size == 1:
        return {"mean": mean, "std": 0.0, "ci95": (mean, mean), "n": 1}
    std = float(x.std(ddof=1))
    half = t_quantile_975(x.size - 1) * std / math.sqrt(x.size)
    lo, hi = mean - half, mean + half
    if bounds is not None:
        # An accuracy cannot leave [0, 1]; with two seeds t(1) = 12.7 makes the raw interval that wide.
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return {"mean": mean, "std": std, "ci95": (lo, hi), "n": int(x.size)}


def paired_bootstrap_delta(base_correct: np.ndarray, var_correct: np.ndarray,
                           n_boot: int = 2000, seed: int = 0, return_replicates: bool = False) -> dict:
    """Accuracy difference (variant - baseline) with a paired two-level bootstrap interval.

    ``base_correct`` and ``var_correct`` are (S, N) bool, seed pairs by row. Each replicate draws S
    seed pairs with replacement and N test images with replacement (the same images for every pair
    in that replicate) and takes the mean over drawn pairs of (variant acc - baseline acc) on the
    drawn images. Returns dict(delta_mean (on the data as given), ci95 (2.5th, 97.5th percentile),
    n_boot), plus replicates (n_boot,) float64 when ``return_replicates``. Deterministic for a
    given ``seed``.
    """
    base = as_bool_matrix(base_correct, "base_correct")
    var = as_bool_matrix(var_correct, "var_correct")
    if base.shape != var.shape:
        raise ValueError(f"base_correct and var_correct must have the same shape, got {base.shape} and {var.shape}")
    if int(n_boot) != n_boot or n_boot < 1:
        raise ValueError(f"n_boot must be a positive integer, got {n_boot!r}")
    s, n = base.shape
    if n == 0:
        raise ValueError("paired_bootstrap_delta needs at least one image, got N=0")
    n_boot = int(n_boot)
    # Per-image difference of correctness, one row per seed pair: values in {-1, 0, 1}.
    diff = var.astype(np.float64) - base.astype(np.float64)
    delta_mean = float(diff.mean())
    rng = np.random.default_rng(seed)
    pair_idx = rng.integers(0, s, size=(n_boot, s))
    # How often each seed pair is drawn in each replicate: (n_boot, S).
    pair_counts = _row_bincount(pair_idx, s).astype(np.float64)
    rows = [np.ascontiguousarray(diff[i]) for i in range(s)]
    deltas = np.empty(n_boot)
    # Chunks of replicates bound memory (chunk * N indices); the chunk size depends only on N, so
    # a given (seed, S, N, n_boot) always draws the same numbers. A gather per seed pair beats building
    # per-replicate image counts for the handful of seeds we expect (timed: 3 seeds x 10k images
    # x 2000 replicates in about 0.3 s). Sums of {-1, 0, 1} in float64 are exact, hence bitwise
    # deterministic.
    chunk = max(1, min(n_boot, 4_000_000 // n))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        img_idx = rng.integers(0, n, size=(stop - start, n))
        per_pair = np.stack([np.take(row, img_idx).sum(axis=1) for row in rows], axis=1)  # (chunk, S)
        deltas[start:stop] = np.einsum("bs,bs->b", per_pair, pair_counts[start:stop]) / (s * n)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    out = {"delta_mean": delta_mean, "ci95": (float(lo), float(hi)), "n_boot": n_boot}
    if return_replicates:
        out["replicates"] = deltas
    return out


def _row_bincount(idx: np.ndarray, size: int) -> np.ndarray:
    """Counts of each value in [0, size) per row of a (R, K) int array -> (R, size) int64."""
    rows = idx.shape[0]
    offset = idx + (np.arange(rows, dtype=np.int64) * size)[:, None]
    return np.bincount(offset.ravel(), minlength=rows * size).reshape(rows, size)


def seed_noise_floor(correct: np.ndarray) -> dict:
    """How much two seeds of the same configuration disagree, from (S, N) bool correctness.

    Returns dict(mean_disagreement: mean over all seed pairs of the fraction of images on which the
    two seeds differ in correctness (NaN when S < 2), pairs: number of seed pairs).
    """
    m = as_bool_matrix(correct, "correct")
    s, n = m.shape
    pairs = s * (s - 1) // 2
    if s < 2 or n == 0:
        return {"mean_disagreement": float("nan"), "pairs": pairs}
    k = m.sum(axis=0).astype(np.float64)
    # An image right in k of S seeds is disagreed on by exactly k (S - k) of the seed pairs.
    return {"mean_disagreement": float(np.sum(k * (s - k)) / (pairs * n)), "pairs": pairs}


def persistent_failures(correct: np.ndarray) -> dict:
    """Split images by how often (S, N) seeds get them wrong.

    Returns dict(persistent: int64 indices wrong in every seed, seed_dependent: int64 indices wrong
    in some seeds but not all, always_right_count: int).
    """
    m = as_bool_matrix(correct, "correct")
    wrong = (~m).sum(axis=0)
    s = m.shape[0]
    return {"persistent": np.flatnonzero(wrong == s).astype(np.int64),
            "seed_dependent": np.flatnonzero((wrong > 0) & (wrong < s)).astype(np.int64),
            "always_right_count": int(np.count_nonzero(wrong == 0))}


def _points(x: float) -> str:
    return f"{100.0 * x:+.1f}"


def compare_variant(base_correct: np.ndarray, var_correct: np.ndarray, *, base_seeds=None, var_seeds=None,
                    accuracy: dict | None = None) -> dict:
    """Everything the report says about one variant against the baseline.

    ``base_correct`` (S, N) and ``var_correct`` (S', N) bool; ``base_seeds`` / ``var_seeds`` name
    each row's seed (default 0, 1, ...). Rows pair by seed value (``verdicts.pair_by_seed``).
    ``accuracy`` is the ``verdicts.compare_metric`` result of test accuracy for these runs (the
    report passes the row of "What the modification changed", so that both say the same number
    from the same computation); None computes it here.
    Returns a dict with:
      n_pairs, n_base_seeds, n_var_seeds; unmatched_base_seeds, unmatched_var_seeds;
      base_accuracy, var_accuracy: mean_std_ci over all seeds of each side;
      accuracy_delta_mean, ci95, accuracy_method: delta, interval and method of ``accuracy``;
      accuracy: that result itself;
      pairs: per seed pair {pair, base_seed, var_seed, corrected, worsened, both_wrong, both_right,
        mcnemar};
      corrected, worsened, both_wrong, both_right: summed over pairs;
      baseline_noise_floor: seed_noise_floor of the baseline (NaN with one seed);
      variant_disagreement: mean over pairs of the fraction of images where variant and baseline
        differ in correctness (compare with the noise floor; NaN without pairs);
      disagreement_exceeds_floor: variant_disagreement > baseline_noise_floor (None without both);
      persistent_failures: counts of persistent / seed-dependent baseline failures and how many
        of the persistent ones the variant gets right in every paired seed;
      variant_persistent_failures: the same split of the variant's own seeds;
      exceeds_noise: bool, the accuracy verdict calls the change real and McNemar's test has
        p < 0.05 in every seed pair; verdict: plain words on both.
    """
    from cnnstress.analysis import verdicts  # verdicts imports this module

    base = as_bool_matrix(base_correct, "base_correct")
    var = as_bool_matrix(var_correct, "var_correct")
    if base.shape[1] != var.shape[1]:
        raise ValueError(f"base_correct and var_correct must cover the same N images, got {base.shape[1]} and {var.shape[1]}")
    if base.shape[0] == 0 or var.shape[0] == 0:
        raise ValueError("compare_variant needs at least one seed on each side")
    base_seeds = list(range(base.shape[0])) if base_seeds is None else list(base_seeds)
    var_seeds = list(range(var.shape[0])) if var_seeds is None else list(var_seeds)
    match = verdicts.pair_by_seed(base_seeds, var_seeds)
    if accuracy is None:
        accuracy = verdicts.compare_metric("test_accuracy", list(base.astype(np.float64)),
                                           list(var.astype(np.float64)), higher_is_better=True,
                                           base_seeds=base_seeds, var_seeds=var_seeds)
    bi = [i for i, _ in match["pairs"]]
    vi = [j for _, j in match["pairs"]]
    pb, pv = base[bi], var[vi]
    n_pairs = len(bi)

    pairs = []
    for k in range(n_pairs):
        d = disagreement(pb[k], pv[k])
        pairs.append({"pair": k, "base_seed": base_seeds[bi[k]], "var_seed": var_seeds[vi[k]], **d,
                      "mcnemar": mcnemar(d["worsened"], d["corrected"])})
    summed = {key: int(sum(p[key] for p in pairs)) for key in ("corrected", "worsened", "both_wrong", "both_right")}
    n_images = base.shape[1]
    var_dis = (float(np.mean([(p["corrected"] + p["worsened"]) / n_images for p in pairs]))
               if n_images and pairs else float("nan"))

    persist = persistent_failures(base)
    fixed = (int(np.count_nonzero(pv[:, persist["persistent"]].all(axis=0)))
             if persist["persistent"].size and n_pairs else 0)
    var_persist = persistent_failures(var)
    floor = seed_noise_floor(base)["mean_disagreement"]
    above_floor = None if math.isnan(floor) or math.isnan(var_dis) else bool(var_dis > floor)

    n_significant = sum(p["mcnemar"]["p_value"] < 0.05 for p in pairs)
    exceeds = bool(accuracy["verdict"] in verdicts.CHANGED_VERDICTS and n_pairs and n_significant == n_pairs)
    verdict = _verdict(accuracy, n_significant, n_pairs, match, var_dis, floor)
    return {
        "n_pairs": n_pairs, "n_base_seeds": int(base.shape[0]), "n_var_seeds": int(var.shape[0]),
        "unmatched_base_seeds": match["unmatched_base"], "unmatched_var_seeds": match["unmatched_var"],
        "base_accuracy": mean_std_ci(base.mean(axis=1), ACCURACY),
        "var_accuracy": mean_std_ci(var.mean(axis=1), ACCURACY),
        "accuracy_delta_mean": accuracy["delta"], "ci95": accuracy["ci95"],
        "accuracy_method": accuracy["method"], "accuracy": accuracy,
        "pairs": pairs, **summed,
        "baseline_noise_floor": floor,
        "variant_disagreement": var_dis,
        "disagreement_exceeds_floor": above_floor,
        "persistent_failures": {"persistent": int(persist["persistent"].size),
                                "seed_dependent": int(persist["seed_dependent"].size),
                                "persistent_fixed_by_variant": fixed},
        "variant_persistent_failures": {"persistent": int(var_persist["persistent"].size),
                                        "seed_dependent": int(var_persist["seed_dependent"].size)},
        "exceeds_noise": exceeds, "verdict": verdict,
    }


def unmatched_text(unmatched_base, unmatched_var, variant: str = "variant", baseline: str = "baseline") -> str:
    """"seed 1 has no cutout run; seed 4 has no baseline run." ('' when every run has a partner)."""
    parts = [f"seed {s} has no {variant} run" for s in unmatched_base]
    parts += [f"seed {s} has no {baseline} run" for s in unmatched_var]
    return "; ".join(parts) + ("." if parts else "")


def _verdict(acc: dict, n_significant: int, n_pairs: int, match: dict, var_dis: float, floor: float) -> str:
    # Two questions, answered apart, in plain sentences: is the accuracy difference beyond noise
    # (the accuracy row's own verdict, McNemar per seed pair beside it), and does the variant
    # change *which* images are right more than reseeding the baseline does?
    delta, ci = acc["delta"], acc["ci95"]
    moved = "rose" if delta > 0 else "fell" if delta < 0 else "did not move"
    size = f" by {abs(100.0 * delta):.1f} points" if delta else ""
    if ci is None:
        text = f"Test accuracy {moved}{size} ({_points(delta)} points; no interval)."
    else:
        what = "95% CI over test images" if acc["method"] == "t over test images" else "95% CI"
        text = f"Test accuracy {moved}{size} ({_points(delta)} points, {what} {_points(ci[0])} to {_points(ci[1])})"
        words = {"changed": "beyond seed and test-set noise"}.get(acc["verdict"], acc["verdict_text"])
        text += f": {words.rstrip('.')}."  # a verdict text that ends in a full stop: still one
    if n_pairs:
        text += f" McNemar's test has p < 0.05 in {n_significant} of {n_pairs} seed pairs."
    unmatched = unmatched_text(match["unmatched_base"], match["unmatched_var"])
    if unmatched:
        text += f" Paired by seed: {n_pairs} pair{'s' if n_pairs != 1 else ''}; {unmatched}"
    if not n_pairs:
        return text
    share = f"{100 * var_dis:.1f}% of test images"
    if math.isnan(floor):
        text += (f" It changes the outcome on {share}; with one baseline seed there is no noise floor to "
                 "compare that with.")
    elif var_dis > floor:
        text += (f" It changes the outcome on {share}, more than reseeding the baseline does "
                 f"({100 * floor:.1f}%): its errors are different ones.")
    else:
        text += (f" It changes the outcome on {share}, no more than reseeding the baseline does "
                 f"({100 * floor:.1f}%): which images it gets right is within reseeding noise.")
    return text
