"""One verdict per metric, and how many seeds a claim needs (pure numpy).

Every number the report shows for a variant against its baseline -- clean accuracy, corruption
accuracy, ECE/NLL/Brier, adversarial accuracy, OOD AUROC, AURC, deletion/insertion AUCs, mask
energy, pointing game, background-following rate -- goes through :func:`compare_metric`: the
report's tables, its Findings, summary.json and the terminal all read the number and its interval
from that one call. docs/statistics.md gives the methods, their references and the coverage
measured by simulation.

Runs are paired by seed value (:func:`pair_by_seed`): a variant run and a baseline run of the same
group (every other grid value shared) with the same seed. Unmatched runs still count in the
unpaired estimates (each side's mean over all its runs, the baseline's noise floor) and are listed.

Intervals (95%):

* a metric measured once per run (ECE, NLL, AUROC, AURC, ...): a paired Student t-interval over the
  seed pairs (Welch's unpaired t-interval when fewer than 2 seeds pair up and each side has 2);
  none from a single run per side;
* a metric that is a mean over test images (accuracy, deletion AUC, mask energy, ...): the
  image-level t-interval of the mean over images of the per-image difference, averaged over the
  seed pairs -- the analytic form of resampling test images within the seed pairs (the same images
  in every pair). It covers the difference of these trained networks on the image population, not
  reseeding; reseeding is what the noise floor is for.

Verdicts (``verdict``; ``verdict_text`` says the same in a sentence's words):

``VERDICT_CHANGED`` = ``"changed"``
    the test rejects (after false-discovery control over a table, :func:`control_fdr`) AND |delta|
    exceeds the noise floor: the baseline's mean |difference| between two of its seeds, which needs
    at least ``MIN_FLOOR_SEEDS`` = 3 baseline seeds. For a per-image metric the test is both the
    image-level one and the paired t-test over the seed pairs of the per-run means (>= 2 pairs).
``VERDICT_NOT_DISTINGUISHABLE`` = ``"not distinguishable from reseeding"``
    the interval includes 0, or |delta| is within the noise floor.
``VERDICT_TOO_FEW`` = ``"too few seeds to judge"``
    a per-run metric with fewer than 3 baseline seeds: no floor, no verdict.
``VERDICT_NO_SPREAD`` = ``"cannot estimate the spread"``
    a per-run metric whose baseline seeds (or paired differences) do not vary at all.
``VERDICT_CHANGED_IMAGES`` = ``"changed over test images"`` and
``VERDICT_SAME_IMAGES`` = ``"not distinguishable over test images"``
    a per-image metric without a usable noise floor (fewer than 3 baseline seeds, a floor of 0, or
    fewer than 2 seed pairs): judged from its image-level interval alone, which the words say. It
    says these trained networks differ on images like the test images, not that the configuration
    does beyond reseeding.

:func:`rank_changes` orders a list of such results for the table "What the modification changed".

Power (paired design, two-sided alpha = 0.05, power 0.8): :func:`detectable_difference`,
:func:`seeds_needed`, :func:`sd_of_paired_difference` and :func:`power_sentence`. They rest on
:func:`t_quantile`, a general Student t quantile computed here in plain Python (the regularized
incomplete beta by its continued fraction, inverted by safeguarded Newton steps; agrees with
9-decimal tables to their rounding, < 1e-9).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

VERDICT_CHANGED = "changed"
VERDICT_NOT_DISTINGUISHABLE = "not distinguishable from reseeding"
VERDICT_TOO_FEW = "too few seeds to judge"
VERDICT_NO_SPREAD = "cannot estimate the spread"
VERDICT_CHANGED_IMAGES = "changed over test images"
VERDICT_SAME_IMAGES = "not distinguishable over test images"
VERDICTS = (VERDICT_CHANGED, VERDICT_NOT_DISTINGUISHABLE, VERDICT_TOO_FEW, VERDICT_NO_SPREAD,
            VERDICT_CHANGED_IMAGES, VERDICT_SAME_IMAGES)
#: The verdicts that call a difference real (a table's "changed" rows).
CHANGED_VERDICTS = (VERDICT_CHANGED, VERDICT_CHANGED_IMAGES)

DIRECTION_BETTER = "better"
DIRECTION_WORSE = "worse"

ALPHA = 0.05  # two-sided significance level (intervals, tests, power, false discovery rate)
POWER = 0.8   # probability of detecting a true difference of the detectable size
MIN_FLOOR_SEEDS = 3  # a noise floor from 2 seeds is one |difference|: no estimate of a spread

METHOD_PAIRED_T = "paired t over seeds"
METHOD_WELCH_T = "Welch t over runs (unpaired)"
METHOD_IMAGE_T = "t over test images"


# ----------------------------------------------------------------------------------------------
# Pairing
# ----------------------------------------------------------------------------------------------

def pair_by_seed(base_seeds: Sequence, var_seeds: Sequence) -> dict:
    """Pairs of (baseline index, variant index) with the same seed value, in baseline order.

    Returns dict(pairs: [(i, j)], seeds: the paired seed values, unmatched_base / unmatched_var:
    seed values of runs with no partner). A seed listed twice on one side is an error (two runs
    of one configuration and seed cannot both be in a sweep).
    """
    for name, seeds in (("base_seeds", base_seeds), ("var_seeds", var_seeds)):
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"{name} lists a seed more than once: {list(seeds)}")
    where = {s: j for j, s in enumerate(var_seeds)}
    pairs = [(i, where[s]) for i, s in enumerate(base_seeds) if s in where]
    return {"pairs": pairs, "seeds": [base_seeds[i] for i, _ in pairs],
            "unmatched_base": [s for s in base_seeds if s not in where],
            "unmatched_var": [s for s in var_seeds if s not in set(base_seeds)]}


# ----------------------------------------------------------------------------------------------
# Intervals and tests (vectorised: the simulations in the tests call these on whole batches)
# ----------------------------------------------------------------------------------------------

def t_two_sided_p(t, df: int) -> np.ndarray:
    """Two-sided p-value P(|T| >= |t|) of Student's t with integer ``df`` >= 1, elementwise.

    Closed form for integer degrees of freedom (Abramowitz & Stegun 26.7.3-4): with
    theta = atan(|t| / sqrt(df)), P(|T| < |t|) is a finite series in cos(theta). Up to df 400 the
    series is summed (agrees with the incomplete-beta tail of :func:`t_quantile` to 1e-12, see the
    tests); beyond, the incomplete-beta tail itself is evaluated element by element, so that
    p < 0.05 exactly when the 95% t-interval excludes 0 for any df.
    """
    if int(df) != df or df < 1:
        raise ValueError(f"df must be a positive integer, got {df!r}")
    df = int(df)
    a = np.abs(np.asarray(t, dtype=np.float64))
    if df > 400:
        return np.vectorize(lambda x: min(1.0, 2.0 * _t_upper_tail(float(x), df)), otypes=[np.float64])(a)
    theta = np.arctan(a / math.sqrt(df))
    c2 = np.cos(theta) ** 2
    if df % 2 == 1:
        if df == 1:
            inside = 2.0 * theta / math.pi
        else:
            term = np.ones_like(a)
            total = np.ones_like(a)
            for k in range(1, (df - 3) // 2 + 1):
                term = term * c2 * (2 * k) / (2 * k + 1)
                total = total + term
            inside = 2.0 / math.pi * (theta + np.sin(theta) * np.cos(theta) * total)
    else:
        term = np.ones_like(a)
        total = np.ones_like(a)
        for k in range(1, (df - 2) // 2 + 1):
            term = term * c2 * (2 * k - 1) / (2 * k)
            total = total + term
        inside = np.sin(theta) * total
    return np.clip(1.0 - inside, 0.0, 1.0)


def t_interval(x: np.ndarray, alpha: float = ALPHA) -> dict:
    """Mean, (1 - alpha) Student t-interval and two-sided p-value (mean 0) over the last axis.

    ``x`` (..., n) with n >= 2. Returns dict(mean, lo, hi, p, se) of arrays of shape (...). A
    zero standard deviation gives lo == hi == mean and p 0 (mean != 0) or 1 (mean == 0): there
    is no spread to judge by, which callers say in words.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[-1]
    if n < 2:
        raise ValueError(f"a t-interval needs at least 2 values, got {n}")
    mean = x.mean(axis=-1)
    se = x.std(axis=-1, ddof=1) / math.sqrt(n)
    half = t_quantile(1.0 - alpha / 2.0, n - 1) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        stat = np.where(se > 0, mean / np.where(se > 0, se, 1.0), np.where(mean == 0, 0.0, np.inf))
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "p": t_two_sided_p(stat, n - 1), "se": se}


def welch_interval(a: np.ndarray, b: np.ndarray, alpha: float = ALPHA) -> dict:
    """mean(b) - mean(a) with Welch's t-interval and p-value, for 1-D samples of >= 2 values each.

    Degrees of freedom by Welch-Satterthwaite, rounded down to an integer (conservative)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    mean = float(b.mean() - a.mean())
    if se == 0.0:
        return {"mean": mean, "lo": mean, "hi": mean, "p": 0.0 if mean else 1.0, "se": 0.0}
    df = max(1, int((va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))))
    half = t_quantile(1.0 - alpha / 2.0, df) * se
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "p": float(t_two_sided_p(mean / se, df)),
            "se": se}


def bh_reject(p_values: Sequence[float], alpha: float = ALPHA) -> np.ndarray:
    """Benjamini-Hochberg (1995) step-up at false discovery rate ``alpha``: which p-values to reject.

    ``p_values`` (..., m); returns bool (..., m). Rejects the k smallest, k the largest rank with
    p_(k) <= k alpha / m.
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.shape[-1]
    if m == 0:
        return np.zeros(p.shape, dtype=bool)
    order = np.argsort(p, axis=-1)
    ranked = np.take_along_axis(p, order, axis=-1)
    below = ranked <= alpha * np.arange(1, m + 1) / m
    k = np.where(below.any(axis=-1), m - np.argmax(below[..., ::-1], axis=-1), 0)  # largest passing rank
    reject_sorted = np.arange(1, m + 1) <= k[..., None]
    out = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(out, order, reject_sorted, axis=-1)
    return out


# ----------------------------------------------------------------------------------------------
# Comparing one metric
# ----------------------------------------------------------------------------------------------

def _as_runs(values: Sequence, name: str) -> tuple[np.ndarray, bool]:
    """(S, N) float64 per-image values (per_image True) or (S, 1) per-run values (False)."""
    items = [np.asarray(v, dtype=np.float64) for v in values]
    if not items:
        raise ValueError(f"{name} needs at least one seed, got none")
    ndims = {a.ndim for a in items}
    if ndims == {0}:
        arr = np.array([float(a) for a in items], dtype=np.float64)[:, None]
        per_image = False
    elif ndims == {1}:
        lengths = {a.shape[0] for a in items}
        if len(lengths) != 1:
            raise ValueError(f"{name}: per-image arrays must have the same length in every seed, "
                             f"got lengths {sorted(lengths)}")
        if 0 in lengths:
            raise ValueError(f"{name}: per-image arrays must hold at least one image")
        arr = np.stack(items)
        per_image = True
    else:
        raise ValueError(f"{name} must hold one float or one (N,) per-image array per seed "
                         f"(all the same kind), got values with ndim {sorted(ndims)}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr, per_image


def _noise_floor(metric: np.ndarray) -> float | None:
    """Mean |m_i - m_j| over all pairs i < j of per-seed metric values; None with fewer than
    MIN_FLOOR_SEEDS seeds (two seeds give a single |difference|, not a spread)."""
    s = metric.shape[0]
    if s < MIN_FLOOR_SEEDS:
        return None
    iu = np.triu_indices(s, k=1)
    return float(np.abs(metric[:, None] - metric[None, :])[iu].mean())


def _direction(delta: float, higher_is_better: bool | None) -> str | None:
    if higher_is_better is None or delta == 0.0:
        return None
    return DIRECTION_BETTER if (delta > 0.0) == bool(higher_is_better) else DIRECTION_WORSE


def _interval(b: np.ndarray, v: np.ndarray, per_image: bool, pairs: list[tuple[int, int]]) -> dict:
    """The one interval of a comparison: its method, delta, (lo, hi), p, and the runs it used."""
    if per_image:
        if pairs:
            bi, vi = [i for i, _ in pairs], [j for _, j in pairs]
            d = (v[vi] - b[bi]).mean(axis=0)  # per image, averaged over the seed pairs
        else:  # no seed pairs: each side's mean over its runs, image by image
            bi, vi = list(range(b.shape[0])), list(range(v.shape[0]))
            d = v.mean(axis=0) - b.mean(axis=0)
        if d.size < 2:
            return {"method": None, "delta": float(d.mean()), "ci95": None, "p_value": None, "b": bi, "v": vi}
        r = t_interval(d)
        return {"method": METHOD_IMAGE_T, "delta": float(r["mean"]), "ci95": (float(r["lo"]), float(r["hi"])),
                "p_value": float(r["p"]), "zero_spread": bool(r["se"] == 0), "b": bi, "v": vi}
    bm, vm = b[:, 0], v[:, 0]
    if len(pairs) >= 2:
        bi, vi = [i for i, _ in pairs], [j for _, j in pairs]
        r = t_interval(vm[vi] - bm[bi])
        return {"method": METHOD_PAIRED_T, "delta": float(r["mean"]), "ci95": (float(r["lo"]), float(r["hi"])),
                "p_value": float(r["p"]), "zero_spread": bool(r["se"] == 0), "b": bi, "v": vi}
    bi, vi = list(range(bm.size)), list(range(vm.size))
    if bm.size >= 2 and vm.size >= 2:
        r = welch_interval(bm, vm)
        return {"method": METHOD_WELCH_T, "delta": r["mean"], "ci95": (r["lo"], r["hi"]), "p_value": r["p"],
                "zero_spread": r["se"] == 0.0, "b": bi, "v": vi}
    return {"method": None, "delta": float(vm.mean() - bm.mean()), "ci95": None, "p_value": None, "b": bi, "v": vi}


def compare_metric(name: str, base: Sequence[float | np.ndarray], var: Sequence[float | np.ndarray], *,
                   higher_is_better: bool | None, base_seeds: Sequence | None = None,
                   var_seeds: Sequence | None = None) -> dict:
    """Variant against baseline on one metric, judged against reseeding.

    ``base[i]`` / ``var[i]`` is the metric of one run: either a float (a per-run metric: ECE,
    AUROC, AURC) or a (N,) array of per-image values whose mean is the metric (0/1 correctness for
    an accuracy; the same N images, in the same order, in every run). Both sides must be the same
    kind. ``base_seeds`` / ``var_seeds`` name each run's seed (default: 0, 1, ...); runs pair by
    seed value (:func:`pair_by_seed`).

    Returns a dict:
      name; delta: the compared difference (variant - baseline; over the seed pairs when there are
        pairs, see the module docstring); base_mean, var_mean: each side's mean over the runs that
        delta uses (delta == var_mean - base_mean); base_mean_all, var_mean_all: over all runs;
      ci95: (lo, hi) 95% interval of delta, or None (one run per side of a per-run metric);
      p_value: two-sided p-value the verdict uses (None without an interval): the interval's own
        test, except for a per-image metric with a noise floor and >= 2 seed pairs, where it is the
        larger of that and p_seeds (beyond test-image noise AND beyond reseeding);
      p_interval: the p-value of the interval's own test; p_seeds: a per-image metric's paired
        t-test over the seed pairs of the per-run means (None with fewer than 2 pairs);
      method: how the interval was computed (METHOD_*), or None;
      noise_floor: mean |difference| of the metric between two baseline seeds over all pairs of
        its runs (all baseline runs, paired or not); None with fewer than 3 baseline seeds;
      verdict, verdict_text: see the module docstring (before false-discovery control over a
        table; :func:`control_fdr` may turn "changed" into "not distinguishable");
      direction: "better", "worse" or None, from the sign of delta and ``higher_is_better``;
      effect: |delta| / noise_floor, None without a floor or with a floor of 0;
      n_base, n_var: runs per side; n_pairs; pairs: [(base seed, variant seed)];
      unmatched_base, unmatched_var: seeds without a partner; paired: n_pairs >= 1 and the
        interval uses them; per_image.
    """
    b, b_per_image = _as_runs(base, "base")
    v, v_per_image = _as_runs(var, "var")
    if b_per_image != v_per_image:
        raise ValueError("base and var must both be per-run floats or both per-image arrays")
    if b.shape[1] != v.shape[1]:
        raise ValueError(f"base and var per-image arrays must cover the same images, got N={b.shape[1]} "
                         f"and N={v.shape[1]}")
    base_seeds = list(range(b.shape[0])) if base_seeds is None else list(base_seeds)
    var_seeds = list(range(v.shape[0])) if var_seeds is None else list(var_seeds)
    if len(base_seeds) != b.shape[0] or len(var_seeds) != v.shape[0]:
        raise ValueError(f"base_seeds / var_seeds must name one seed per run: got {len(base_seeds)} for "
                         f"{b.shape[0]} baseline runs and {len(var_seeds)} for {v.shape[0]} variant runs")
    per_image = b_per_image
    match = pair_by_seed(base_seeds, var_seeds)
    pairs = match["pairs"]

    b_metric, v_metric = b.mean(axis=1), v.mean(axis=1)
    iv = _interval(b, v, per_image, pairs)
    base_mean, var_mean = float(b_metric[iv["b"]].mean()), float(v_metric[iv["v"]].mean())
    delta = iv["delta"]
    floor = _noise_floor(b_metric)
    # A per-image interval covers another draw of test images for these networks, not reseeding: a
    # "changed" beyond reseeding also needs the paired t-test over the seed pairs of the per-run
    # means (an intersection-union test: the row's p-value is the larger of the two).
    p_seeds = None
    if per_image and len(pairs) >= 2:
        bi, vi = [i for i, _ in pairs], [j for _, j in pairs]
        p_seeds = float(t_interval(v_metric[vi] - b_metric[bi])["p"])
    over_seeds = per_image and p_seeds is not None and floor is not None and floor > 0.0 and iv["p_value"] is not None
    out = {
        "name": name, "delta": delta, "base_mean": base_mean, "var_mean": var_mean,
        "base_mean_all": float(b_metric.mean()), "var_mean_all": float(v_metric.mean()),
        "ci95": iv["ci95"], "p_value": max(iv["p_value"], p_seeds) if over_seeds else iv["p_value"],
        "p_interval": iv["p_value"], "p_seeds": p_seeds, "method": iv["method"], "noise_floor": floor,
        "direction": _direction(delta, higher_is_better),
        "effect": None if floor is None or floor == 0.0 else abs(delta) / floor,
        "n_base": int(b.shape[0]), "n_var": int(v.shape[0]), "n_pairs": len(pairs),
        "pairs": [(base_seeds[i], var_seeds[j]) for i, j in pairs],
        "unmatched_base": match["unmatched_base"], "unmatched_var": match["unmatched_var"],
        "paired": bool(pairs) and iv["method"] in (METHOD_PAIRED_T, METHOD_IMAGE_T),
        "per_image": per_image, "zero_spread": bool(iv.get("zero_spread", False)),
    }
    _judge(out, significant=iv["p_value"] is not None and iv["p_value"] < ALPHA)
    return out


def _judge(r: dict, significant: bool) -> None:
    """Set r's verdict and verdict_text from its kind, seeds, floor and whether its test rejects."""
    n, floor = r["n_base"], r["noise_floor"]
    if r["ci95"] is None:
        r["verdict"] = VERDICT_TOO_FEW
        r["verdict_text"] = f"too few seeds to judge (n = {n} baseline, {r['n_var']} variant; one run per side gives no interval)"
        return
    if not r["per_image"]:
        if floor is None:
            r["verdict"] = VERDICT_TOO_FEW
            r["verdict_text"] = f"too few seeds to judge (n = {n}; this needs ≥ {MIN_FLOOR_SEEDS})"
        elif floor > 0.0 and r["zero_spread"] and r["delta"] == 0.0:  # every pair identical
            r["verdict"], r["verdict_text"] = VERDICT_NOT_DISTINGUISHABLE, VERDICT_NOT_DISTINGUISHABLE
        elif floor == 0.0 or r["zero_spread"]:
            r["verdict"] = VERDICT_NO_SPREAD
            r["verdict_text"] = ("cannot estimate the spread (the baseline's seeds do not vary)" if floor == 0.0
                                 else "cannot estimate the spread (the paired differences do not vary)")
        elif significant and abs(r["delta"]) > floor:
            r["verdict"], r["verdict_text"] = VERDICT_CHANGED, VERDICT_CHANGED
        else:
            r["verdict"], r["verdict_text"] = VERDICT_NOT_DISTINGUISHABLE, VERDICT_NOT_DISTINGUISHABLE
        return
    if floor is None or floor == 0.0 or r["p_seeds"] is None:
        if floor is None:
            why = f"reseeding noise not estimated: n = {n} baseline seeds, the noise floor needs ≥ {MIN_FLOOR_SEEDS}"
        elif floor == 0.0:
            why = "the baseline's seeds do not vary: cannot estimate the spread"
        else:
            why = f"reseeding noise not estimated: {r['n_pairs']} seed pair{'s' if r['n_pairs'] != 1 else ''}, this needs ≥ 2"
        r["verdict"] = VERDICT_CHANGED_IMAGES if significant else VERDICT_SAME_IMAGES
        r["verdict_text"] = f"{r['verdict']} ({why})"
    elif significant and abs(r["delta"]) > floor:
        r["verdict"], r["verdict_text"] = VERDICT_CHANGED, VERDICT_CHANGED
    else:
        r["verdict"], r["verdict_text"] = VERDICT_NOT_DISTINGUISHABLE, VERDICT_NOT_DISTINGUISHABLE
        if r["p_interval"] < ALPHA <= r["p_seeds"]:  # beyond test-image noise, not beyond reseeding
            r["verdict_text"] += (f" (the interval over test images excludes 0, the paired t-test over the "
                                  f"{r['n_pairs']} seed pairs does not: p = {r['p_seeds']:.2g})")


def control_fdr(results: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Benjamini-Hochberg over a table of ``compare_metric`` results, in place (and returned).

    The family is every row that can be judged (a p-value and a verdict other than "too few
    seeds" / "cannot estimate the spread"). Each such row gets ``fdr_rejected`` (bool) and is
    judged again with "its test rejects" meaning "BH rejects it at ``alpha``"; other rows get
    ``fdr_rejected`` None. With every variant identical to its baseline the chance that any row
    reads "changed" is then at most ``alpha`` (for independent or positively dependent tests),
    and among the "changed" rows at most ``alpha`` are expected to be false.
    """
    family = [r for r in results if r.get("p_value") is not None
              and r["verdict"] not in (VERDICT_TOO_FEW, VERDICT_NO_SPREAD)]
    for r in results:
        r["fdr_rejected"] = None
    if family:
        rejected = bh_reject([r["p_value"] for r in family], alpha)
        for r, rej in zip(family, rejected):
            r["fdr_rejected"] = bool(rej)
            _judge(r, significant=bool(rej))
            alone = r["p_value"] < alpha and (r["noise_floor"] is None or abs(r["delta"]) > r["noise_floor"])
            if not rej and alone:  # say why a row whose own test rejects is not called a change
                r["verdict_text"] = (f"{r['verdict']} once the table's {len(family)} tests are controlled for "
                                     f"false discoveries (5%)")
    return results


def rank_changes(results: list[dict]) -> list[dict]:
    """``compare_metric`` results sorted for the table "What the modification changed".

    Changed ones ("changed", "changed over test images") first, then the rest; within each group by
    effect (|delta| / noise floor) descending, results without an effect (no floor, or a floor of
    0) after those with one and among themselves by |delta| descending. Ties keep their input
    order. Returns a new list.
    """
    def key(r: dict):
        effect = r.get("effect")
        return (r.get("verdict") not in CHANGED_VERDICTS, effect is None,
                -(effect if effect is not None else abs(r.get("delta", 0.0))))
    return sorted(results, key=key)


# ----------------------------------------------------------------------------------------------
# Student t quantile
# ----------------------------------------------------------------------------------------------

_CF_MAXIT = 100_000
_CF_EPS = 1e-16
_TINY = 1e-300


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta (modified Lentz; Numerical Recipes 6.4)."""
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > _TINY else _TINY)
    h = d
    for m in range(1, _CF_MAXIT + 1):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + aa / c
        c = c if abs(c) > _TINY else _TINY
        step = d * c
        h *= step
        if abs(step - 1.0) < _CF_EPS:
            return h
    raise ArithmeticError(f"incomplete beta continued fraction did not converge (a={a}, b={b}, x={x})")


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) for a, b > 0 and x in [0, 1]."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def _t_upper_tail(t: float, df: float) -> float:
    """P(T > t) for t >= 0, T ~ Student t with ``df`` degrees of freedom."""
    return 0.5 * _betainc(0.5 * df, 0.5, df / (df + t * t))


def _t_log_pdf_const(df: float) -> float:
    return math.lgamma(0.5 * (df + 1.0)) - math.lgamma(0.5 * df) - 0.5 * math.log(df * math.pi)


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t distribution with ``df`` > 0 degrees of freedom.

    Method: the upper tail P(T > t) = I_{df/(df+t^2)}(df/2, 1/2) / 2 through the regularized
    incomplete beta (continued fraction, modified Lentz), solved for t by Newton steps on the
    tail with the t density as derivative, kept inside a bisection bracket. Working with the tail
    1 - p instead of p keeps precision for p near 1. Measured: within 5e-11 of the exact closed
    forms for df = 1 and 2 (p in [0.0005, 0.9995]) and within 4.8e-10 of 9-decimal t_{0.975}
    tables for df 1..30 (the tables' rounding).
    """
    p, df = float(p), float(df)
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p!r}")
    if not (df > 0.0 and math.isfinite(df)):
        raise ValueError(f"df must be a positive finite number, got {df!r}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    q = 1.0 - p  # target upper tail, in (0, 0.5)
    # Bracket: tail(lo) > q >= tail(hi).
    lo, hi = 0.0, 1.0
    while _t_upper_tail(hi, df) > q:
        lo, hi = hi, 2.0 * hi
        if hi > 1e300:
            raise ArithmeticError(f"t quantile out of range (p={p}, df={df})")
    log_c = _t_log_pdf_const(df)
    t = 0.5 * (lo + hi)
    for _ in range(200):
        g = _t_upper_tail(t, df) - q  # decreasing in t
        if g > 0.0:
            lo = t
        elif g < 0.0:
            hi = t
        else:
            return t
        pdf = math.exp(log_c - 0.5 * (df + 1.0) * math.log1p(t * t / df))
        new = t + g / pdf if pdf > 0.0 else 0.5 * (lo + hi)
        if not lo < new < hi:
            new = 0.5 * (lo + hi)
        if abs(new - t) <= 1e-15 * max(1.0, abs(t)) or hi - lo <= 1e-15 * max(1.0, hi):
            return new
        t = new
    return t


# ----------------------------------------------------------------------------------------------
# Power and seeds needed
# ----------------------------------------------------------------------------------------------

def _check_sd(sd_diff: float) -> float:
    sd = float(sd_diff)
    if not (sd >= 0.0 and math.isfinite(sd)):
        raise ValueError(f"sd_diff must be a finite number >= 0, got {sd_diff!r}")
    return sd


def detectable_difference(sd_diff: float, n: int, *, alpha: float = ALPHA, power: float = POWER) -> float:
    """Smallest true mean difference a paired comparison of ``n`` seeds detects.

    (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_diff / sqrt(n): with this true difference a
    two-sided paired t-test at level ``alpha`` rejects with probability about ``power`` (a
    simulation in the tests gives 0.8 within 0.06 for n = 5 and 10). ``sd_diff`` is the standard
    deviation of the per-seed difference (variant - baseline), see sd_of_paired_difference.
    Needs n >= 2 (a t-test has n - 1 degrees of freedom).
    """
    sd = _check_sd(sd_diff)
    if int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    n = int(n)
    if sd == 0.0:
        return 0.0
    df = n - 1
    return (t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * sd / math.sqrt(n)


def seeds_needed(sd_diff: float, target: float, max_seeds: int = 1000) -> int | None:
    """Smallest n >= 2 with detectable_difference(sd_diff, n) <= target; None if above max_seeds.

    detectable_difference falls strictly with n (for sd_diff > 0), so this is a bisection. With
    sd_diff 0 every n detects any change and the answer is 2, the least a paired t-test can use.
    """
    sd = _check_sd(sd_diff)
    target = float(target)
    if not (target > 0.0 and math.isfinite(target)):
        raise ValueError(f"target must be a finite number > 0, got {target!r}")
    if int(max_seeds) != max_seeds or max_seeds < 2:
        raise ValueError(f"max_seeds must be an integer >= 2, got {max_seeds!r}")
    max_seeds = int(max_seeds)
    if detectable_difference(sd, 2) <= target:
        return 2
    if detectable_difference(sd, max_seeds) > target:
        return None
    lo, hi = 2, max_seeds  # detectable(lo) > target >= detectable(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if detectable_difference(sd, mid) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def sd_of_paired_difference(base: Sequence[float], var: Sequence[float] | None) -> float | None:
    """Standard deviation (ddof=1) of the per-seed difference variant - baseline of a metric.

    ``base`` and ``var`` hold one metric value per seed. With ``var`` given and as many seeds as
    ``base`` (at least 2): the sd of the differences var[i] - base[i], which keeps what pairing
    by seed shares. Otherwise (no variant yet, or different seed counts, so no pairs): an unpaired
    estimate from the baseline's spread alone, sqrt(2) * sd(base) -- the sd of the difference of
    two independent seeds with the baseline's variance; it ignores any correlation pairing would
    bring, so it is conservative when paired seeds move together. None with fewer than 2
    baseline seeds (and no 2 pairs).
    """
    b = np.asarray(base, dtype=np.float64)
    if b.ndim != 1:
        raise ValueError(f"base must hold one float per seed, got shape {b.shape}")
    if var is not None:
        v = np.asarray(var, dtype=np.float64)
        if v.ndim != 1:
            raise ValueError(f"var must hold one float per seed, got shape {v.shape}")
        if v.shape == b.shape and b.size >= 2:
            d = v - b
            if not np.all(np.isfinite(d)):
                raise ValueError("base or var contains NaN or infinite values")
            return _sd(d, np.concatenate([b, v]))
    if b.size < 2:
        return None
    if not np.all(np.isfinite(b)):
        raise ValueError("base contains NaN or infinite values")
    return float(math.sqrt(2.0) * _sd(b, b))


def _sd(x: np.ndarray, values: np.ndarray) -> float:
    """sd (ddof=1) of ``x``, 0 where it is only rounding error of float arithmetic on ``values``
    (a mean of equal accuracies computed in another order differs in the last bits): such a
    spread is no spread, and a power sentence from it reads '>= 0.000000000000078 points'."""
    sd = float(x.std(ddof=1))
    return 0.0 if sd <= 1e-9 * max(1.0, float(np.max(np.abs(values)))) else sd


def _fmt(x: float) -> str:
    """Two significant digits, at least one decimal: 1.8, 0.34, 12.3, 0.012."""
    if x == 0.0:
        return "0"
    decimals = max(1, 1 - math.floor(math.log10(abs(x))))
    return f"{x:.{decimals}f}"


def _seeds(n: int) -> str:
    return f"{n} seed" if n == 1 else f"{n} seeds"


def power_sentence(metric_label: str, n_seeds: int, sd_diff: float | None, target: float | None,
                   unit: str = "points", scale: float = 100, max_seeds: int = 1000) -> str:
    """One sentence on what this sweep can detect for a metric, and what a target change needs.

    E.g. "with 3 seeds this sweep detects accuracy changes of ≥ 1.8 points; a 0.34-point change
    would need 57 seeds." Differences are multiplied by ``scale`` for display (100: fractions as
    points); ``unit`` is a plural noun ("" for none) and its compound form drops a final "s"
    ("a 0.34-point change"). ``target`` None leaves the second half out. More than ``max_seeds``
    seeds reads "more than 1000 seeds". An sd of 0 (the seeds do not vary) says the spread cannot
    be estimated (a handful of identical values is no estimate of it); an sd of None, or fewer
    than 2 seeds, says the spread is unknown.
    """
    plural = f" {unit}" if unit else ""
    singular = f"-{unit[:-1] if unit.endswith('s') else unit}" if unit else ""
    target_txt = None if target is None else f"a {_fmt(float(target) * scale)}{singular} change"
    if sd_diff is None or n_seeds < 2:
        text = (f"with {_seeds(n_seeds)} this sweep cannot estimate the seed-to-seed spread of "
                f"{metric_label}, so neither the smallest detectable change")
        text += (f" nor the seeds needed for {target_txt} can be said." if target_txt else " can be said.")
        return text
    sd = _check_sd(sd_diff)
    if sd == 0.0:
        # a spread of 0 from a handful of seeds is no estimate of the spread: say nothing about power
        return (f"with {_seeds(n_seeds)} {metric_label} does not vary between seeds, so this sweep cannot "
                "estimate the spread, nor the smallest change it detects.")
    det = detectable_difference(sd, n_seeds)
    text = f"with {_seeds(n_seeds)} this sweep detects {metric_label} changes of ≥ {_fmt(det * scale)}{plural}"
    if target_txt:
        need = seeds_needed(sd, float(target), max_seeds=max_seeds)
        need_txt = f"more than {max_seeds} seeds" if need is None else _seeds(need)
        text += f"; {target_txt} would need {need_txt}"
    return text + "."
