"""cnnstress.analysis.compare against brute-force sums, explicit formulas and loops."""

from __future__ import annotations

import math
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest

from cnnstress.analysis import compare, verdicts


def _loop_disagreement(base, var):
    out = {"corrected": 0, "worsened": 0, "both_wrong": 0, "both_right": 0}
    for b, v in zip(base, var):
        if not b and v:
            out["corrected"] += 1
        elif b and not v:
            out["worsened"] += 1
        elif not b and not v:
            out["both_wrong"] += 1
        else:
            out["both_right"] += 1
    return out


def test_disagreement_matches_loop_and_sums_to_n():
    rng = np.random.default_rng(0)
    base = rng.random(500) < 0.8
    var = rng.random(500) < 0.85
    d = compare.disagreement(base, var)
    assert d == _loop_disagreement(base, var)
    assert sum(d.values()) == 500
    assert all(type(v) is int for v in d.values())
    assert compare.disagreement(base.astype(np.uint8), var.astype(int)) == d
    with pytest.raises(ValueError, match="var_correct"):
        compare.disagreement(base, var[:10])


def _brute_exact_p(b: int, c: int) -> float:
    n = b + c
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), 2 * tail))


def test_mcnemar_exact_matches_brute_force_binomial_sum():
    for b in range(0, 25):
        for c in range(0, 25 - b):
            r = compare.mcnemar(b, c)
            assert r["method"] == "exact"
            assert r["p_value"] == pytest.approx(_brute_exact_p(b, c), rel=1e-12, abs=1e-300)
            assert r == compare.mcnemar(c, b)
    assert compare.mcnemar(0, 0)["p_value"] == 1.0
    assert compare.mcnemar(0, 10)["p_value"] == pytest.approx(2 / 1024)


def _chi2_sf_1df(x: float) -> float:
    # Survival of chi-square(1) = P(|Z| > sqrt(x)) = 2 (1 - Phi(sqrt(x))), Phi via erf.
    z = math.sqrt(x)
    return 2.0 * (1.0 - 0.5 * (1.0 + math.erf(z / math.sqrt(2.0))))


@pytest.mark.parametrize("b,c", [(10, 15), (30, 10), (100, 140), (500, 480), (20, 20), (0, 25)])
def test_mcnemar_chi2_branch_matches_closed_form(b, c):
    r = compare.mcnemar(b, c)
    assert r["method"] == "chi2"
    stat = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    assert r["statistic"] == pytest.approx(stat, rel=1e-12)
    assert r["p_value"] == pytest.approx(_chi2_sf_1df(stat), rel=1e-9, abs=1e-15)


def test_mcnemar_chi2_p_at_known_critical_value():
    # (|b - c| - 1)^2 / (b + c) = 3.8415 is the chi2(1) 95% critical value: p = 0.05.
    b, c = 0, 0
    for total in range(25, 400):
        for b in range(total + 1):
            c = total - b
            if abs(max(abs(b - c) - 1, 0) ** 2 / total - 3.841459) < 5e-3:
                assert compare.mcnemar(b, c)["p_value"] == pytest.approx(0.05, abs=1e-3)
                return
    pytest.fail("no (b, c) near the critical value found")


def test_mcnemar_rejects_negative_counts():
    with pytest.raises(ValueError, match="b must"):
        compare.mcnemar(-1, 3)


@pytest.mark.parametrize("df,value", [(1, 12.706), (2, 4.303), (4, 2.776), (10, 2.228), (30, 2.042)])
def test_t_quantiles_match_the_table(df, value):
    assert compare.t_quantile_975(df) == pytest.approx(value, abs=6e-4)


def _t_cdf_by_simpson(q: float, df: int, steps: int = 4000) -> float:
    const = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    pdf = lambda x: const * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    h = q / steps
    s = pdf(0) + pdf(q) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, steps))
    return 0.5 + s * h / 3


@pytest.mark.parametrize("df", [3, 17, 31, 45, 100, 1000])
def test_t_quantiles_invert_the_t_cdf(df):
    assert _t_cdf_by_simpson(compare.t_quantile_975(df), df) == pytest.approx(0.975, abs=1e-7)


def test_mean_std_ci_matches_explicit_formulas():
    values = np.array([0.91, 0.915, 0.905, 0.92])
    r = compare.mean_std_ci(values)
    mean = sum(values) / 4
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    half = 3.182446305 * std / math.sqrt(4)
    assert r["n"] == 4
    assert r["mean"] == pytest.approx(mean) and r["std"] == pytest.approx(std)
    assert r["ci95"][0] == pytest.approx(mean - half) and r["ci95"][1] == pytest.approx(mean + half)
    one = compare.mean_std_ci(np.array([0.8]))
    assert one == {"mean": 0.8, "std": 0.0, "ci95": (0.8, 0.8), "n": 1}
    with pytest.raises(ValueError):
        compare.mean_std_ci(np.array([]))


def _seeds(seed: int, s: int = 3, n: int = 2000, p: float = 0.8):
    return np.random.default_rng(seed).random((s, n)) < p


def test_bootstrap_identical_arrays_give_exact_zero():
    base = _seeds(1)
    r = compare.paired_bootstrap_delta(base, base.copy(), n_boot=500, seed=3)
    assert r["delta_mean"] == 0.0 and r["ci95"] == (0.0, 0.0) and r["n_boot"] == 500


def test_bootstrap_superset_gives_positive_interval_containing_estimate():
    base = _seeds(2)
    extra = np.random.default_rng(3).random(base.shape) < 0.05
    var = base | extra
    r = compare.paired_bootstrap_delta(base, var, n_boot=1000, seed=0)
    assert r["delta_mean"] == pytest.approx((var.sum() - base.sum()) / base.size)
    assert 0.0 < r["ci95"][0] <= r["delta_mean"] <= r["ci95"][1]


def test_bootstrap_interval_contains_estimate_and_is_deterministic():
    base, var = _seeds(4), _seeds(5, p=0.82)
    a = compare.paired_bootstrap_delta(base, var, n_boot=800, seed=7)
    b = compare.paired_bootstrap_delta(base, var, n_boot=800, seed=7)
    c = compare.paired_bootstrap_delta(base, var, n_boot=800, seed=8)
    assert a == b
    assert a["ci95"] != c["ci95"]
    assert a["ci95"][0] <= a["delta_mean"] <= a["ci95"][1]


def test_bootstrap_resamples_seed_pairs():
    # One image; pair 0 gains it, pair 1 does not: replicates are 0, 1/2 or 1 with probability
    # 1/4, 1/2, 1/4, so the percentile interval is exactly (0, 1).
    base = np.array([[False], [False]])
    var = np.array([[True], [False]])
    r = compare.paired_bootstrap_delta(base, var, n_boot=2000, seed=0, return_replicates=True)
    assert r["delta_mean"] == 0.5 and r["ci95"] == (0.0, 1.0)
    share = np.mean(r["replicates"] == 0.5)
    assert 0.45 < share < 0.55


def _naive_bootstrap(base, var, n_boot, rng):
    s, n = base.shape
    out = []
    for _ in range(n_boot):
        pairs = rng.integers(0, s, size=s)
        imgs = rng.integers(0, n, size=n)
        out.append(np.mean([var[p, imgs].mean() - base[p, imgs].mean() for p in pairs]))
    return np.array(out)


def test_bootstrap_replicates_match_a_naive_loop_in_distribution():
    base, var = _seeds(6, n=400), _seeds(7, n=400, p=0.83)
    fast = compare.paired_bootstrap_delta(base, var, n_boot=1500, seed=1, return_replicates=True)["replicates"]
    slow = _naive_bootstrap(base, var, 1500, np.random.default_rng(99))
    assert fast.shape == (1500,)
    assert fast.mean() == pytest.approx(slow.mean(), abs=0.25 * slow.std())
    assert fast.std() == pytest.approx(slow.std(), rel=0.12)


def test_bootstrap_at_full_size_narrows_with_more_images():
    # (its speed at this size is a benchmark matter, not asserted here)
    base, var = _seeds(8, n=10_000), _seeds(9, n=10_000, p=0.81)
    full = compare.paired_bootstrap_delta(base, var, n_boot=2000, seed=0)
    small = compare.paired_bootstrap_delta(base[:, :400], var[:, :400], n_boot=2000, seed=0)
    lo, hi = full["ci95"]
    assert lo <= full["delta_mean"] <= hi
    # the image-level spread shrinks like 1/sqrt(N): 25x the images, about a fifth of the width
    ratio = (hi - lo) / (small["ci95"][1] - small["ci95"][0])
    assert 0.1 < ratio < 0.35, ratio


def test_seed_noise_floor_matches_pair_loop():
    m = _seeds(10, s=4, n=300)
    r = compare.seed_noise_floor(m)
    fracs = [np.mean([m[i, k] != m[j, k] for k in range(m.shape[1])]) for i, j in combinations(range(4), 2)]
    assert r["pairs"] == 6
    assert r["mean_disagreement"] == pytest.approx(sum(fracs) / len(fracs), rel=1e-12)
    one = compare.seed_noise_floor(m[:1])
    assert math.isnan(one["mean_disagreement"]) and one["pairs"] == 0


def test_persistent_failures_match_loop():
    m = _seeds(11, s=3, n=200, p=0.6)
    r = compare.persistent_failures(m)
    persistent = [k for k in range(200) if not any(m[:, k])]
    dependent = [k for k in range(200) if any(~m[:, k]) and any(m[:, k])]
    assert r["persistent"].tolist() == persistent
    assert r["seed_dependent"].tolist() == dependent
    assert r["always_right_count"] == sum(1 for k in range(200) if all(m[:, k]))


def test_compare_variant_planted_improvement_exceeds_noise():
    rng = np.random.default_rng(12)
    base = rng.random((3, 3000)) < 0.8
    var = base | (rng.random((3, 3000)) < 0.3)
    r = compare.compare_variant(base, var)
    assert r["n_pairs"] == 3 and r["exceeds_noise"] is True
    assert r["accuracy"]["verdict"] == verdicts.VERDICT_CHANGED and ": beyond seed and test-set noise." in r["verdict"]
    assert (r["accuracy_delta_mean"], r["ci95"]) == (r["accuracy"]["delta"], r["accuracy"]["ci95"])
    assert r["verdict"].startswith("Test accuracy rose by ")
    loops = [_loop_disagreement(base[i], var[i]) for i in range(3)]
    for key in ("corrected", "worsened", "both_wrong", "both_right"):
        assert r[key] == sum(d[key] for d in loops)
        assert [p[key] for p in r["pairs"]] == [d[key] for d in loops]
    for p in r["pairs"]:
        assert p["mcnemar"] == compare.mcnemar(p["worsened"], p["corrected"])
    delta = (var.mean() - base.mean()) * 100
    assert f"{delta:+.1f} points" in r["verdict"]
    assert r["variant_disagreement"] == pytest.approx(np.mean([(d["corrected"] + d["worsened"]) / 3000 for d in loops]))
    assert r["baseline_noise_floor"] == compare.seed_noise_floor(base)["mean_disagreement"]
    assert r["base_accuracy"] == compare.mean_std_ci(base.mean(axis=1))
    # the variant's disagreement read against the floor, computed here by brute force over seed pairs
    floor = np.mean([np.mean(base[i] != base[j]) for i in range(3) for j in range(i + 1, 3)])
    assert r["baseline_noise_floor"] == pytest.approx(floor)
    assert r["disagreement_exceeds_floor"] is bool(r["variant_disagreement"] > floor)
    words = "more than reseeding the baseline does" if r["disagreement_exceeds_floor"] else "no more than reseeding"
    assert words in r["verdict"] and f"({100 * floor:.1f}%)" in r["verdict"]
    assert r["variant_persistent_failures"] == {"persistent": int((~var).all(axis=0).sum()),
                                                "seed_dependent": int(((~var).any(axis=0) & var.any(axis=0)).sum())}


def test_compare_variant_disagreement_against_the_floor_both_ways():
    rng = np.random.default_rng(21)
    base = np.stack([rng.random(4000) < 0.7 for _ in range(3)])  # independent seeds: floor ~0.42
    same_images = base.copy()
    same_images[:, :200] = False  # worse on 200 fixed images only: small disagreement, real drop
    r = compare.compare_variant(base, same_images)
    assert r["variant_disagreement"] < r["baseline_noise_floor"] and r["disagreement_exceeds_floor"] is False
    assert "within reseeding noise" in r["verdict"]
    shuffled = np.stack([rng.random(4000) < 0.7 for _ in range(3)])
    shuffled[:, ::2] = ~base[:, ::2]  # disagrees with its paired baseline seed on half the images and more
    r = compare.compare_variant(base, shuffled)
    assert r["variant_disagreement"] > r["baseline_noise_floor"] and r["disagreement_exceeds_floor"] is True
    one = compare.compare_variant(base[:1], shuffled[:1])
    assert one["disagreement_exceeds_floor"] is None and "no noise floor" in one["verdict"]
    assert "reseeding noise not estimated" in one["verdict"]


def test_compare_variant_pairs_by_seed_and_lists_the_unmatched():
    rng = np.random.default_rng(31)
    base = rng.random((3, 500)) < 0.7  # seeds 1, 2, 3
    var = rng.random((2, 500)) < 0.72  # seeds 3 and 2: seed 1 has no variant run
    r = compare.compare_variant(base, var, base_seeds=[1, 2, 3], var_seeds=[3, 2])
    assert [(p["base_seed"], p["var_seed"]) for p in r["pairs"]] == [(2, 2), (3, 3)]
    assert r["unmatched_base_seeds"] == [1] and r["unmatched_var_seeds"] == []
    assert "seed 1 has no variant run" in r["verdict"]
    d2, d3 = _loop_disagreement(base[1], var[1]), _loop_disagreement(base[2], var[0])
    assert [p["corrected"] for p in r["pairs"]] == [d2["corrected"], d3["corrected"]]
    want = ((var[1].mean() - base[1].mean()) + (var[0].mean() - base[2].mean())) / 2
    assert r["accuracy_delta_mean"] == pytest.approx(want, abs=1e-12)
    # the row handed in is the one reported
    acc = verdicts.compare_metric("test_accuracy", list(base.astype(float)), list(var.astype(float)),
                                  higher_is_better=True, base_seeds=[1, 2, 3], var_seeds=[3, 2])
    assert compare.compare_variant(base, var, base_seeds=[1, 2, 3], var_seeds=[3, 2], accuracy=acc)["accuracy"] is acc
    assert r["ci95"] == pytest.approx(acc["ci95"], abs=1e-15)


def test_accuracy_interval_stays_in_0_1_when_bounded():
    half = 12.706204736174707 * np.std([0.35, 0.42], ddof=1) / np.sqrt(2)  # t(1) = 12.706
    raw = compare.mean_std_ci(np.array([0.35, 0.42]))
    assert raw["ci95"] == (pytest.approx(0.385 - half), pytest.approx(0.385 + half)) and raw["ci95"][0] < 0
    r = compare.mean_std_ci(np.array([0.35, 0.42]), compare.ACCURACY)
    assert r["ci95"] == (0.0, pytest.approx(0.385 + half)) and r["std"] == raw["std"]
    r = compare.mean_std_ci(np.array([0.97, 0.99]), compare.ACCURACY)
    assert r["ci95"] == (pytest.approx(0.98 - half * 0.02 / 0.07), 1.0)
    base = np.zeros((2, 100), dtype=bool)
    base[0, :35], base[1, :42] = True, True
    assert compare.compare_variant(base, base)["base_accuracy"]["ci95"][0] == 0.0
