"""cnnstress.analysis.verdicts: exact cases, brute-force sums, table values and simulations."""

from __future__ import annotations

import math
import re
from itertools import combinations

import numpy as np
import pytest

from cnnstress.analysis import compare, verdicts as V


def _contains_zero(ci):
    return ci[0] <= 0.0 <= ci[1]


# ---------------------------------------------------------------------------------------------
# compare_metric
# ---------------------------------------------------------------------------------------------

def test_verdict_strings_are_the_documented_constants():
    assert V.VERDICT_CHANGED == "changed"
    assert V.VERDICT_NOT_DISTINGUISHABLE == "not distinguishable from reseeding"
    assert V.VERDICT_NO_FLOOR == "no noise floor (one baseline seed)"
    assert set(V.VERDICTS) == {V.VERDICT_CHANGED, V.VERDICT_NOT_DISTINGUISHABLE, V.VERDICT_NO_FLOOR}


@pytest.mark.parametrize("per_image", [False, True])
def test_identical_base_and_var_is_not_a_change(per_image):
    rng = np.random.default_rng(0)
    base = list(rng.random((4, 300)) < 0.8) if per_image else list(rng.normal(0.05, 0.01, 4))
    r = V.compare_metric("m", base, [np.copy(x) for x in base], higher_is_better=False)
    assert r["delta"] == 0.0
    assert _contains_zero(r["ci95"])
    assert r["verdict"] == V.VERDICT_NOT_DISTINGUISHABLE
    assert r["direction"] is None and r["effect"] == 0.0
    assert r["per_image"] is per_image and r["paired"] is True
    assert set(r) >= {"name", "delta", "ci95", "noise_floor", "verdict", "n_base", "n_var", "per_image",
                      "effect", "direction"}


def test_constant_shift_with_tiny_noise_is_a_change():
    rng = np.random.default_rng(1)
    base = rng.normal(0.5, 0.05, 5)  # seeds differ a lot ...
    var = base + 0.2 + rng.normal(0.0, 1e-3, 5)  # ... but every pair moves by +0.2
    r = V.compare_metric("acc", base, var, higher_is_better=True)
    assert r["ci95"][0] > 0.0
    assert 0.19 < r["ci95"][0] <= r["delta"] <= r["ci95"][1] < 0.21
    assert r["delta"] > r["noise_floor"]
    assert r["verdict"] == V.VERDICT_CHANGED
    assert r["direction"] == V.DIRECTION_BETTER
    assert V.compare_metric("ece", base, var, higher_is_better=False)["direction"] == V.DIRECTION_WORSE
    assert V.compare_metric("x", base, var, higher_is_better=None)["direction"] is None
    # The same shift as per-image 0/1 values: 2000 images, variant right on 20% more of them.
    b = [np.arange(2000) < 1000 + 10 * i for i in range(4)]
    v = [np.arange(2000) < 1400 + 10 * i for i in range(4)]
    r = V.compare_metric("acc", b, v, higher_is_better=True)
    assert r["delta"] == pytest.approx(0.2)
    assert r["ci95"][0] > 0.15 and r["verdict"] == V.VERDICT_CHANGED


def test_interval_excluding_zero_but_within_noise_floor_is_not_a_change():
    # Every pair moves by +0.01 (interval excludes 0), but two baseline seeds differ by ~0.1.
    base = np.array([0.3, 0.4, 0.5, 0.6])
    var = base + np.array([0.0100, 0.0101, 0.0099, 0.0100])
    r = V.compare_metric("m", base, var, higher_is_better=True)
    assert r["ci95"][0] > 0.0
    assert r["noise_floor"] > abs(r["delta"])
    assert r["verdict"] == V.VERDICT_NOT_DISTINGUISHABLE


def test_delta_is_the_mean_difference_exactly():
    rng = np.random.default_rng(2)
    base, var = rng.random(5), rng.random(5)
    r = V.compare_metric("m", list(base), list(var), higher_is_better=True)
    assert r["delta"] == float(np.mean(var)) - float(np.mean(base))
    assert r["base_mean"] == float(np.mean(base)) and r["var_mean"] == float(np.mean(var))
    # Unpaired (different seed counts): still mean(var) - mean(base).
    r = V.compare_metric("m", list(base), list(var[:3]), higher_is_better=True)
    assert r["paired"] is False and (r["n_base"], r["n_var"]) == (5, 3)
    assert r["delta"] == float(np.mean(var[:3])) - float(np.mean(base))
    assert r["ci95"][0] <= r["delta"] <= r["ci95"][1]


def test_per_image_values_give_the_same_delta_and_floor_as_their_means():
    rng = np.random.default_rng(3)
    b = rng.random((3, 400)) < 0.7
    v = rng.random((3, 400)) < 0.75
    r_img = V.compare_metric("acc", list(b), list(v), higher_is_better=True)
    r_run = V.compare_metric("acc", [x.mean() for x in b], [x.mean() for x in v], higher_is_better=True)
    assert r_img["per_image"] is True and r_run["per_image"] is False
    assert r_img["delta"] == r_run["delta"]
    assert r_img["noise_floor"] == r_run["noise_floor"]
    # The per-image interval also resamples the images: a different interval from the same data.
    assert r_img["ci95"] != r_run["ci95"]
    # A (S, N) array is a sequence of seeds too.
    assert V.compare_metric("acc", b, v, higher_is_better=True) == r_img


def test_noise_floor_is_the_mean_pairwise_absolute_difference():
    rng = np.random.default_rng(4)
    base = rng.normal(0.9, 0.02, 6)
    brute = sum(abs(a - b) for a, b in combinations(base, 2)) / math.comb(6, 2)
    r = V.compare_metric("m", base, base + 0.001, higher_is_better=True)
    assert r["noise_floor"] == pytest.approx(brute, rel=1e-12)
    assert r["effect"] == pytest.approx(abs(r["delta"]) / brute, rel=1e-12)
    # Per-image: the floor is about the per-seed metric (the mean over images).
    imgs = [rng.random(50) for _ in range(4)]
    means = [x.mean() for x in imgs]
    brute = sum(abs(a - b) for a, b in combinations(means, 2)) / 6
    r = V.compare_metric("m", imgs, imgs, higher_is_better=None)
    assert r["noise_floor"] == pytest.approx(brute, rel=1e-12)


def test_one_baseline_seed_has_no_floor_whatever_the_interval():
    r = V.compare_metric("m", [0.5], [0.9], higher_is_better=True)
    assert r["noise_floor"] is None and r["effect"] is None
    assert r["verdict"] == V.VERDICT_NO_FLOOR
    b = [np.zeros(200)]
    v = [np.ones(200)]
    r = V.compare_metric("acc", b, v, higher_is_better=True)
    assert r["ci95"] == (1.0, 1.0) and r["verdict"] == V.VERDICT_NO_FLOOR


def test_zero_floor_gives_no_effect_but_can_still_change():
    r = V.compare_metric("m", [0.5, 0.5, 0.5], [0.6, 0.6, 0.6], higher_is_better=True)
    assert r["noise_floor"] == 0.0 and r["effect"] is None
    assert r["verdict"] == V.VERDICT_CHANGED


def test_bool_per_image_paired_matches_compare_paired_bootstrap():
    # Two implementations of the same two-level bootstrap (0/1 values in compare, any float here).
    rng = np.random.default_rng(5)
    b = rng.random((3, 700)) < 0.8
    v = rng.random((3, 700)) < 0.82
    ref = compare.paired_bootstrap_delta(b, v, n_boot=500, seed=11)
    r = V.compare_metric("acc", b, v, higher_is_better=True, n_boot=500, seed=11)
    assert r["ci95"] == pytest.approx(ref["ci95"], abs=1e-12)
    assert r["delta"] == pytest.approx(ref["delta_mean"], abs=1e-12)


def test_deterministic_for_a_seed():
    rng = np.random.default_rng(6)
    b, v = list(rng.random((3, 100))), list(rng.random((3, 100)))
    r1 = V.compare_metric("m", b, v, higher_is_better=True, seed=3)
    r2 = V.compare_metric("m", b, v, higher_is_better=True, seed=3)
    r3 = V.compare_metric("m", b, v, higher_is_better=True, seed=4)
    assert r1 == r2
    assert r1["ci95"] != r3["ci95"]


def test_pairing_narrows_the_interval_when_seeds_move_together():
    rng = np.random.default_rng(7)
    seed_effect = rng.normal(0.0, 0.05, 6)
    base = 0.7 + seed_effect + rng.normal(0, 0.002, 6)
    var = 0.71 + seed_effect + rng.normal(0, 0.002, 6)
    paired = V.compare_metric("m", base, var, higher_is_better=True)
    unpaired = V.compare_metric("m", base, var, higher_is_better=True, seeds_paired=False)
    assert paired["paired"] is True and unpaired["paired"] is False
    assert paired["delta"] == unpaired["delta"]
    w_p = paired["ci95"][1] - paired["ci95"][0]
    w_u = unpaired["ci95"][1] - unpaired["ci95"][0]
    assert w_u > 5 * w_p
    assert paired["ci95"][0] > 0.0 and _contains_zero(unpaired["ci95"])


def test_per_image_interval_resamples_images():
    # One seed per side: the interval is the image bootstrap of the mean per-image difference,
    # whose half-width is about 1.96 * sd(d) / sqrt(N).
    rng = np.random.default_rng(8)
    n = 4000
    b = rng.random(n)
    v = b + rng.normal(0.01, 0.2, n)
    r = V.compare_metric("nll", [b], [v], higher_is_better=False, n_boot=2000)
    d = v - b
    half = 1.959964 * d.std(ddof=1) / math.sqrt(n)
    assert (r["ci95"][1] - r["ci95"][0]) / 2 == pytest.approx(half, rel=0.1)
    assert r["ci95"][0] == pytest.approx(d.mean() - half, abs=0.25 * half)


def test_unpaired_per_image_interval_covers_both_sides_spread():
    rng = np.random.default_rng(9)
    b = list(rng.random((2, 300)) < 0.6)
    v = list(rng.random((3, 300)) < 0.6)
    r = V.compare_metric("acc", b, v, higher_is_better=True, seeds_paired=True)
    assert r["paired"] is False and r["per_image"] is True
    assert r["ci95"][0] < r["delta"] < r["ci95"][1]


@pytest.mark.parametrize("base, var, match", [
    ([], [0.1], "base"),
    ([0.1], [], "var"),
    ([0.1, np.zeros(3)], [0.1, 0.2], "base"),
    ([np.zeros(3), np.zeros(4)], [np.zeros(3)] * 2, "same length"),
    ([np.zeros(3)], [0.5], "both"),
    ([np.zeros(3)], [np.zeros(4)], "same images"),
    ([0.1, float("nan")], [0.1, 0.2], "NaN"),
    ([np.zeros((2, 2))], [np.zeros((2, 2))], "ndim"),
])
def test_bad_inputs_raise(base, var, match):
    with pytest.raises(ValueError, match=match):
        V.compare_metric("m", base, var, higher_is_better=True)


def test_bad_n_boot_raises():
    with pytest.raises(ValueError, match="n_boot"):
        V.compare_metric("m", [0.1, 0.2], [0.1, 0.2], higher_is_better=True, n_boot=0)


def test_coverage_of_zero_with_five_seeds():
    """True delta 0, 5 paired seeds: how often does the 95% interval contain 0?

    The percentile bootstrap of a mean of n values behaves like mean +- 1.96 * sd * sqrt((n-1)/n)
    / sqrt(n), so its coverage is about P(|t_{n-1}| < 1.96 sqrt((n-1)/n)) = 0.846 for n = 5 --
    under the nominal 95%. Measured (300 sweeps, this fixed seed): 0.847.
    """
    rng = np.random.default_rng(123)
    n, reps, hits = 5, 300, 0
    for k in range(reps):
        seed_effect = rng.normal(0.0, 0.01, n)  # shared by the pair: pairing must be used
        base = 0.8 + seed_effect + rng.normal(0.0, 0.01, n)
        var = 0.8 + seed_effect + rng.normal(0.0, 0.01, n)
        hits += _contains_zero(V.compare_metric("m", base, var, higher_is_better=True,
                                                n_boot=1000, seed=k)["ci95"])
    coverage = hits / reps
    expected = 1.0 - 2.0 * V._t_upper_tail(1.959964 * math.sqrt((n - 1) / n), n - 1)
    assert expected == pytest.approx(0.846, abs=0.005)
    assert abs(coverage - expected) < 0.06  # 300 sweeps: standard error about 0.02
    assert 0.78 <= coverage <= 0.92  # ignoring the pairing would give about 0.97


def test_coverage_of_zero_per_image_five_seeds():
    """Per-image 0/1 values, 5 paired seeds, true delta 0: the two-level bootstrap resamples
    images on top of seeds whose differences already carry image noise, so it covers more
    than 95% here. Measured (100 sweeps of 200 images): 0.99."""
    rng = np.random.default_rng(321)
    n, reps, hits = 5, 100, 0
    for k in range(reps):
        difficulty = rng.random(200)
        seed_effect = rng.normal(0.0, 0.02, n)
        p = np.clip(difficulty[None, :] + seed_effect[:, None], 0.0, 1.0)
        base = rng.random((n, 200)) < p
        var = rng.random((n, 200)) < p
        hits += _contains_zero(V.compare_metric("acc", base, var, higher_is_better=True,
                                                n_boot=500, seed=k)["ci95"])
    assert hits / reps >= 0.9


def test_rank_changes_order():
    rows = [
        {"name": "a", "verdict": V.VERDICT_NOT_DISTINGUISHABLE, "effect": 9.0, "delta": 0.1},
        {"name": "b", "verdict": V.VERDICT_CHANGED, "effect": 2.0, "delta": 0.02},
        {"name": "c", "verdict": V.VERDICT_NO_FLOOR, "effect": None, "delta": 0.5},
        {"name": "d", "verdict": V.VERDICT_CHANGED, "effect": 5.0, "delta": -0.01},
        {"name": "e", "verdict": V.VERDICT_CHANGED, "effect": None, "delta": 0.3},
        {"name": "f", "verdict": V.VERDICT_NOT_DISTINGUISHABLE, "effect": 0.5, "delta": 0.0},
        {"name": "g", "verdict": V.VERDICT_CHANGED, "effect": None, "delta": -0.4},
    ]
    original = [dict(r) for r in rows]
    out = V.rank_changes(rows)
    assert [r["name"] for r in out] == ["d", "b", "g", "e", "a", "f", "c"]
    assert rows == original  # a new list; the input is untouched
    # With real results.
    rng = np.random.default_rng(10)
    base = rng.normal(0.5, 0.01, 4)
    results = [V.compare_metric("same", base, base, higher_is_better=True),
               V.compare_metric("small", base, base + 0.03, higher_is_better=True),
               V.compare_metric("big", base, base - 0.3, higher_is_better=True)]
    assert [r["name"] for r in V.rank_changes(results)] == ["big", "small", "same"]


# ---------------------------------------------------------------------------------------------
# t quantile
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, df, table", [
    (0.975, 1, 12.7062), (0.975, 2, 4.3027), (0.975, 5, 2.5706), (0.975, 30, 2.0423),
    (0.8, 1, 1.3764), (0.8, 4, 0.9410), (0.8, 30, 0.8538),
])
def test_t_quantile_table_values(p, df, table):
    assert abs(V.t_quantile(p, df) - table) < 1e-4
    assert V.t_quantile(1.0 - p, df) == pytest.approx(-V.t_quantile(p, df), abs=1e-12)


def test_t_quantile_against_nine_digit_table_and_closed_forms():
    # compare._T975 holds 9-decimal t_{0.975} for df 1..30; its Cornish-Fisher expansion beyond
    # is good to about 1e-5 (measured max error of t_quantile against the table: 4.8e-10, the
    # table's rounding).
    for df in range(1, 31):
        assert abs(V.t_quantile(0.975, df) - compare._T975[df - 1]) < 1e-9
    for df in range(31, 300, 7):
        assert abs(V.t_quantile(0.975, df) - compare.t_quantile_975(df)) < 1e-5
    for p in np.linspace(0.001, 0.999, 51):
        assert V.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9, abs=1e-12)
        assert V.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9, abs=1e-12)
    assert V.t_quantile(0.5, 3) == 0.0
    assert V.t_quantile(0.975, 1e6) == pytest.approx(1.959964, abs=1e-5)
    for bad in [(0.0, 3), (1.0, 3), (0.5, 0), (0.9, float("inf")), (0.9, -1)]:
        with pytest.raises(ValueError):
            V.t_quantile(*bad)


# ---------------------------------------------------------------------------------------------
# Power, seeds needed
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [5, 10])
def test_detectable_difference_has_power_080_by_simulation(n):
    sd = 0.013
    delta = V.detectable_difference(sd, n)
    crit = V.t_quantile(0.975, n - 1)
    rng = np.random.default_rng(n)
    d = rng.normal(delta, sd, size=(4000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    power = float(np.mean(np.abs(t) > crit))  # measured: 0.79 (n=5), 0.80 (n=10)
    assert abs(power - 0.8) < 0.06
    # And at half that difference the test clearly lacks power.
    d = rng.normal(delta / 2, sd, size=(4000, n))
    t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
    assert float(np.mean(np.abs(t) > crit)) < 0.45


def test_detectable_difference_formula_and_edges():
    expected = (V.t_quantile(0.975, 2) + V.t_quantile(0.8, 2)) * 0.02 / math.sqrt(3)
    assert V.detectable_difference(0.02, 3) == pytest.approx(expected, rel=1e-14)
    assert V.detectable_difference(0.04, 3) == pytest.approx(2 * expected, rel=1e-14)
    assert V.detectable_difference(0.0, 3) == 0.0
    for bad in [(0.01, 1), (0.01, 2.5), (-0.1, 3), (float("nan"), 3)]:
        with pytest.raises(ValueError):
            V.detectable_difference(*bad)


def test_seeds_needed_consistent_and_monotone():
    sd = 0.01
    previous = None
    for target in [0.002, 0.003, 0.005, 0.01, 0.02, 0.05]:  # increasing targets
        n = V.seeds_needed(sd, target)
        assert n is not None and n >= 2
        assert V.detectable_difference(sd, n) <= target
        if n > 2:
            assert V.detectable_difference(sd, n - 1) > target
        if previous is not None:
            assert n <= previous
        previous = n
    assert V.seeds_needed(sd, 1e-5) is None
    assert V.seeds_needed(sd, 1e-5, max_seeds=10**7) is not None
    assert V.seeds_needed(0.0, 0.001) == 2
    assert V.seeds_needed(1.0, 1000.0) == 2
    with pytest.raises(ValueError):
        V.seeds_needed(sd, 0.0)


def test_sd_of_paired_difference():
    base = [0.90, 0.92, 0.91, 0.93]
    var = [0.91, 0.94, 0.91, 0.95]
    assert V.sd_of_paired_difference(base, var) == pytest.approx(np.std(np.subtract(var, base), ddof=1), rel=1e-12)
    unpaired = math.sqrt(2) * np.std(base, ddof=1)
    assert V.sd_of_paired_difference(base, None) == pytest.approx(unpaired, rel=1e-12)
    assert V.sd_of_paired_difference(base, var[:3]) == pytest.approx(unpaired, rel=1e-12)
    assert V.sd_of_paired_difference([0.9], [0.91]) is None
    assert V.sd_of_paired_difference([0.9], None) is None


def test_power_sentence():
    sd = 0.0075
    det = V.detectable_difference(sd, 3)
    need = V.seeds_needed(sd, 0.0034)
    s = V.power_sentence("accuracy", 3, sd, 0.0034)
    assert s == (f"with 3 seeds this sweep detects accuracy changes of ≥ {100 * det:.1f} points; "
                 f"a 0.34-point change would need {need} seeds.")
    assert re.fullmatch(r"with 3 seeds this sweep detects accuracy changes of ≥ \d+\.\d points; "
                        r"a 0\.34-point change would need \d+ seeds\.", s)
    assert V.power_sentence("accuracy", 3, 0.05, 0.0001).endswith("would need more than 1000 seeds.")
    s = V.power_sentence("AUROC", 5, 0.004, 0.01, unit="", scale=1)
    assert "AUROC changes of ≥ 0.0" in s and "a 0.010 change would need" in s
    assert V.power_sentence("accuracy", 3, 0.01, None).endswith("points.")
    s0 = V.power_sentence("accuracy", 3, 0.0, 0.0034)
    assert "does not vary between seeds" in s0 and "2 seeds" in s0 and "nan" not in s0
    s1 = V.power_sentence("accuracy", 1, None, 0.0034)
    assert s1.startswith("with 1 seed ") and "cannot estimate" in s1
