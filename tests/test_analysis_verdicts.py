"""cnnstress.analysis.verdicts: exact cases, brute-force sums, table values and simulations."""

from __future__ import annotations

import math
import sys
from pathlib import Path
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
    assert V.VERDICT_TOO_FEW == "too few seeds to judge"
    assert V.VERDICT_NO_SPREAD == "cannot estimate the spread"
    assert set(V.CHANGED_VERDICTS) == {V.VERDICT_CHANGED, V.VERDICT_CHANGED_IMAGES}
    assert len(set(V.VERDICTS)) == 6


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
                      "effect", "direction", "p_value", "method", "verdict_text", "pairs"}


def test_constant_shift_with_tiny_noise_is_a_change():
    rng = np.random.default_rng(1)
    base = rng.normal(0.5, 0.05, 5)  # seeds differ a lot ...
    var = base + 0.2 + rng.normal(0.0, 1e-3, 5)  # ... but every pair moves by +0.2
    r = V.compare_metric("acc", base, var, higher_is_better=True)
    assert r["method"] == V.METHOD_PAIRED_T
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
    assert r["method"] == V.METHOD_IMAGE_T
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


def test_per_run_interval_is_the_paired_t_interval():
    rng = np.random.default_rng(2)
    base, var = rng.random(5), rng.random(5)
    r = V.compare_metric("m", list(base), list(var), higher_is_better=True)
    d = var - base
    half = 2.776445105 * d.std(ddof=1) / math.sqrt(5)  # t_{0.975, 4} from a 9-decimal table
    assert r["delta"] == pytest.approx(d.mean(), abs=1e-15)
    assert r["ci95"] == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-9)  # the table's rounding
    assert r["base_mean"] == pytest.approx(np.mean(base)) and r["var_mean"] == pytest.approx(np.mean(var))
    tstat = d.mean() / (d.std(ddof=1) / math.sqrt(5))
    assert r["p_value"] == pytest.approx(2 * V._t_upper_tail(abs(tstat), 4), abs=1e-12)
    # the same function the simulations below call
    batch = V.t_interval(d[None, :])
    assert (float(batch["lo"][0]), float(batch["hi"][0])) == r["ci95"]


def test_runs_pair_by_seed_value_not_by_position():
    # baseline seeds 1, 2, 3; the variant has seeds 3 and 2 (seed 1 missing), listed out of order
    base = np.array([0.50, 0.60, 0.70])
    var = np.array([0.72, 0.61])  # seed 3, seed 2
    r = V.compare_metric("m", list(base), list(var), higher_is_better=True, base_seeds=[1, 2, 3], var_seeds=[3, 2])
    assert r["pairs"] == [(2, 2), (3, 3)] and r["n_pairs"] == 2
    assert r["unmatched_base"] == [1] and r["unmatched_var"] == []
    assert r["delta"] == pytest.approx(((0.61 - 0.60) + (0.72 - 0.70)) / 2, abs=1e-15)
    assert r["base_mean"] == pytest.approx(0.65) and r["base_mean_all"] == pytest.approx(0.60)
    # the noise floor uses every baseline run, paired or not
    assert r["noise_floor"] == pytest.approx((0.1 + 0.2 + 0.1) / 3)
    # positions would have paired 0.50 with 0.72: a different delta
    assert r["delta"] != pytest.approx(np.mean(var) - np.mean(base[:2]))
    m = V.pair_by_seed([1, 2, 3], [3, 2, 7])
    assert m == {"pairs": [(1, 1), (2, 0)], "seeds": [2, 3], "unmatched_base": [1], "unmatched_var": [7]}
    with pytest.raises(ValueError, match="base_seeds"):
        V.pair_by_seed([1, 1], [1])


def test_without_pairs_the_interval_is_welch():
    rng = np.random.default_rng(3)
    base, var = rng.normal(0, 1, 4), rng.normal(0.5, 2, 3)
    r = V.compare_metric("m", list(base), list(var), higher_is_better=True, base_seeds=[1, 2, 3, 4],
                         var_seeds=[5, 6, 7])
    assert r["method"] == V.METHOD_WELCH_T and r["paired"] is False and r["n_pairs"] == 0
    va, vb = base.var(ddof=1) / 4, var.var(ddof=1) / 3
    df = int((va + vb) ** 2 / (va ** 2 / 3 + vb ** 2 / 2))
    half = V.t_quantile(0.975, df) * math.sqrt(va + vb)
    assert r["delta"] == pytest.approx(var.mean() - base.mean())
    assert r["ci95"] == pytest.approx((r["delta"] - half, r["delta"] + half), abs=1e-12)


def test_per_image_interval_is_a_t_interval_over_images_within_the_pairs():
    rng = np.random.default_rng(4)
    b = rng.random((3, 400))
    v = b + rng.normal(0.01, 0.2, (3, 400))
    r = V.compare_metric("nll", list(b), list(v), higher_is_better=False, base_seeds=[1, 2, 3], var_seeds=[1, 2, 3])
    d = (v - b).mean(axis=0)  # per image, over the pairs (the same images in every pair)
    half = V.t_quantile(0.975, 399) * d.std(ddof=1) / math.sqrt(400)
    assert r["method"] == V.METHOD_IMAGE_T
    assert r["ci95"] == pytest.approx((d.mean() - half, d.mean() + half), abs=1e-12)
    # the per-run view of the same data has the same delta and floor, another interval
    r_run = V.compare_metric("nll", list(b.mean(1)), list(v.mean(1)), higher_is_better=False)
    assert r_run["delta"] == pytest.approx(r["delta"]) and r_run["noise_floor"] == pytest.approx(r["noise_floor"])
    assert r_run["ci95"] != pytest.approx(r["ci95"])


def test_noise_floor_is_the_mean_pairwise_absolute_difference():
    rng = np.random.default_rng(4)
    base = rng.normal(0.9, 0.02, 6)
    brute = sum(abs(a - b) for a, b in combinations(base, 2)) / math.comb(6, 2)
    r = V.compare_metric("m", base, base + 0.001, higher_is_better=True)
    assert r["noise_floor"] == pytest.approx(brute, rel=1e-12)
    assert r["effect"] == pytest.approx(abs(r["delta"]) / brute, rel=1e-12)
    imgs = [rng.random(50) for _ in range(4)]
    means = [x.mean() for x in imgs]
    brute = sum(abs(a - b) for a, b in combinations(means, 2)) / 6
    assert V.compare_metric("m", imgs, imgs, higher_is_better=None)["noise_floor"] == pytest.approx(brute, rel=1e-12)


def test_two_baseline_seeds_are_too_few_for_a_per_run_verdict():
    r = V.compare_metric("ece", [0.05, 0.051], [0.20, 0.21], higher_is_better=False)
    assert r["noise_floor"] is None and r["effect"] is None
    assert r["verdict"] == V.VERDICT_TOO_FEW
    assert r["verdict_text"] == "too few seeds to judge (n = 2; this needs ≥ 3)"
    # per-image metrics are judged over test images, and say so
    b = [np.arange(1000) < 500, np.arange(1000) < 510]
    v = [np.arange(1000) < 700, np.arange(1000) < 690]
    r = V.compare_metric("acc", b, v, higher_is_better=True)
    assert r["verdict"] == V.VERDICT_CHANGED_IMAGES
    assert "reseeding noise not estimated: n = 2 baseline seeds" in r["verdict_text"]


def test_one_run_per_side_gives_no_interval_for_a_per_run_metric():
    r = V.compare_metric("m", [0.5], [0.9], higher_is_better=True)
    assert r["ci95"] is None and r["p_value"] is None and r["verdict"] == V.VERDICT_TOO_FEW
    # per image: the interval over images still exists
    r = V.compare_metric("acc", [np.arange(200) < 100], [np.arange(200) < 150], higher_is_better=True)
    assert r["ci95"][0] < 0.25 < r["ci95"][1] and r["verdict"] == V.VERDICT_CHANGED_IMAGES


def test_zero_spread_cannot_be_judged():
    r = V.compare_metric("m", [0.5, 0.5, 0.5], [0.6, 0.6, 0.6], higher_is_better=True)
    assert r["noise_floor"] == 0.0 and r["effect"] is None
    assert r["verdict"] == V.VERDICT_NO_SPREAD
    assert V.power_sentence("accuracy", 3, 0.0, 0.01).endswith("cannot estimate the spread, nor the smallest "
                                                               "change it detects.")


def test_pairing_narrows_the_interval_when_seeds_move_together():
    rng = np.random.default_rng(7)
    seed_effect = rng.normal(0.0, 0.05, 6)
    base = 0.7 + seed_effect + rng.normal(0, 0.002, 6)
    var = 0.71 + seed_effect + rng.normal(0, 0.002, 6)
    paired = V.compare_metric("m", base, var, higher_is_better=True)
    unpaired = V.compare_metric("m", base, var, higher_is_better=True, var_seeds=range(10, 16))
    assert paired["paired"] is True and unpaired["paired"] is False
    assert paired["delta"] == pytest.approx(unpaired["delta"])
    assert (unpaired["ci95"][1] - unpaired["ci95"][0]) > 5 * (paired["ci95"][1] - paired["ci95"][0])
    assert paired["ci95"][0] > 0.0 and _contains_zero(unpaired["ci95"])


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


def test_seed_lists_must_match_the_runs():
    with pytest.raises(ValueError, match="base_seeds"):
        V.compare_metric("m", [0.1, 0.2], [0.1, 0.2], higher_is_better=True, base_seeds=[1])


def test_t_two_sided_p_against_the_incomplete_beta():
    ts = np.array([0.0, 0.3, 1.0, 2.0, 4.3, 12.7, 40.0])
    for df in (1, 2, 3, 4, 5, 9, 10, 29, 30, 399, 400):
        got = V.t_two_sided_p(ts, df)
        want = [2 * V._t_upper_tail(t, df) for t in ts]
        assert got == pytest.approx(want, abs=1e-12), df
    for df in (401, 5000, 9999):
        got = V.t_two_sided_p(ts, df)
        assert got == pytest.approx([min(1.0, 2 * V._t_upper_tail(t, df)) for t in ts], abs=1e-12), df
        # the test and the interval agree: p at the interval's edge is 0.05
        assert float(V.t_two_sided_p(V.t_quantile(0.975, df), df)) == pytest.approx(0.05, abs=1e-9)


def test_bh_reject_against_the_step_up_rule():
    rng = np.random.default_rng(11)
    for _ in range(200):
        m = int(rng.integers(1, 12))
        p = np.where(rng.random(m) < 0.5, rng.random(m) * 0.02, rng.random(m))
        k = max([i for i in range(1, m + 1) if sorted(p)[i - 1] <= 0.05 * i / m], default=0)
        cut = sorted(p)[k - 1] if k else -1.0
        assert list(V.bh_reject(p)) == [bool(x <= cut) for x in p]
    assert V.bh_reject(np.array([[0.01, 0.04], [0.03, 0.04]])).tolist() == [[True, True], [True, True]]
    assert V.bh_reject(np.array([0.01, 0.5, 0.5])).tolist() == [True, False, False]


def test_control_fdr_turns_a_lone_marginal_change_into_not_distinguishable():
    rng = np.random.default_rng(12)
    base = np.array([0.40, 0.45, 0.50, 0.55, 0.60])  # noise floor 0.1
    z = np.array([-1.26, -0.63, 0.0, 0.63, 1.26])
    strong = V.compare_metric("strong", base, base + 0.3 + 0.01 * z, higher_is_better=True)
    marginal = V.compare_metric("marginal", base, base + 0.12 + 0.077 * z, higher_is_better=True)
    nulls = [V.compare_metric(f"n{i}", base, base + rng.normal(0, 0.05, 5), higher_is_better=True)
             for i in range(20)]
    assert marginal["verdict"] == V.VERDICT_CHANGED and 0.005 < marginal["p_value"] < 0.05
    rows = V.control_fdr([strong, marginal] + nulls)
    assert strong["verdict"] == V.VERDICT_CHANGED and strong["fdr_rejected"] is True
    assert marginal["fdr_rejected"] is False and marginal["verdict"] == V.VERDICT_NOT_DISTINGUISHABLE
    rejected = V.bh_reject([r["p_value"] for r in rows])
    assert [r["fdr_rejected"] for r in rows] == list(rejected)


def test_rank_changes_order():
    rows = [
        {"name": "a", "verdict": V.VERDICT_NOT_DISTINGUISHABLE, "effect": 9.0, "delta": 0.1},
        {"name": "b", "verdict": V.VERDICT_CHANGED, "effect": 2.0, "delta": 0.02},
        {"name": "c", "verdict": V.VERDICT_TOO_FEW, "effect": None, "delta": 0.5},
        {"name": "d", "verdict": V.VERDICT_CHANGED, "effect": 5.0, "delta": -0.01},
        {"name": "e", "verdict": V.VERDICT_CHANGED_IMAGES, "effect": None, "delta": 0.3},
        {"name": "f", "verdict": V.VERDICT_NOT_DISTINGUISHABLE, "effect": 0.5, "delta": 0.0},
        {"name": "g", "verdict": V.VERDICT_CHANGED, "effect": None, "delta": -0.4},
    ]
    original = [dict(r) for r in rows]
    out = V.rank_changes(rows)
    assert [r["name"] for r in out] == ["d", "b", "g", "e", "a", "f", "c"]
    assert rows == original  # a new list; the input is untouched



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
    assert "does not vary between seeds" in s0 and "cannot estimate the spread" in s0 and "nan" not in s0
    s1 = V.power_sentence("accuracy", 1, None, 0.0034)
    assert s1.startswith("with 1 seed ") and "cannot estimate" in s1


# ---------------------------------------------------------------------------------------------
# Simulations: interval coverage and false discoveries (tests/stats_sim.py; docs/statistics.md)
# ---------------------------------------------------------------------------------------------

sys.path.insert(0, str(Path(__file__).parent))
import stats_sim  # noqa: E402


@pytest.mark.parametrize("n", stats_sim.SEEDS)
@pytest.mark.parametrize("floors", [0.0, 1.0])
@pytest.mark.parametrize("kind", ["normal", "skewed"])
def test_per_run_interval_covers(kind, floors, n):
    # 10 000 sweeps: standard error of a coverage near 0.95 about 0.002
    cov = stats_sim.per_run_coverage(n, kind, floors, seed=10 * int(floors) + n)
    assert 0.93 <= cov <= 0.97, cov


@pytest.mark.parametrize("n", stats_sim.SEEDS)
def test_per_run_interval_with_exponential_noise_is_at_worst_conservative(n):
    cov = stats_sim.per_run_coverage(n, "exponential", 0.0, seed=n)
    assert 0.93 <= cov <= 0.98, cov


@pytest.mark.parametrize("n", stats_sim.SEEDS)
@pytest.mark.parametrize("floors", [0.0, 1.0])
def test_per_image_accuracy_interval_covers(floors, n):
    # 2000 sweeps of 400 images: standard error about 0.005
    cov = stats_sim.per_image_coverage(n, floors, seed=10 * int(floors) + n)
    assert 0.93 <= cov <= 0.97, cov


def test_percentile_bootstrap_of_two_seeds_has_three_distinct_resamples():
    # why the per-run interval is a t-interval: two seed pairs give only 3 distinct bootstrap means
    d = np.array([0.01, 0.03])
    means = {float(d[list(idx)].mean()) for idx in [(0, 0), (0, 1), (1, 0), (1, 1)]}
    assert len(means) == 3


@pytest.mark.parametrize("n", [3, 5, 10])
def test_identical_variants_rarely_show_any_changed_row(n):
    rate = stats_sim.any_changed_rate(n=n, seed=n)  # 25 per-run metrics and 5 per-image accuracies
    assert rate <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / 2000), rate  # at most 5%, with 3 standard errors


@pytest.mark.parametrize("n", [3, 5, 10])
def test_changed_rows_are_at_most_5_percent_false(n):
    fdr, found = stats_sim.false_discovery_rate(n=n, seed=n)  # 10 real changes of 3 noise floors among 30
    assert fdr <= 0.05, fdr
    if n >= 5:
        assert found > 0.9  # and the real changes are found


def test_the_simulated_rule_is_control_fdr():
    # stats_sim judges vectorised; control_fdr on the same numbers gives the same rows
    changed, _ = stats_sim.table_rows(m=8, n=5, n_real=3, real_floors=2.0, reps=20, seed=1)
    rng = np.random.default_rng(1)
    delta = np.zeros(8)
    delta[:3] = 2.0 * stats_sim.per_run_floor("normal", rng)
    s = rng.normal(0.0, stats_sim.SEED_SD, (20, 8, 5))
    base = 0.5 + s + rng.normal(0.0, stats_sim.NOISE_SD, (20, 8, 5))
    var = 0.5 + delta[None, :, None] + s + rng.normal(0.0, stats_sim.NOISE_SD, (20, 8, 5))
    for k in range(20):
        rows = V.control_fdr([V.compare_metric(f"m{j}", list(base[k, j]), list(var[k, j]), higher_is_better=True)
                              for j in range(8)])
        assert [r["verdict"] == V.VERDICT_CHANGED for r in rows] == list(changed[k])


def test_control_fdr_says_why_a_rejected_alone_row_is_not_a_change():
    base = np.array([0.40, 0.45, 0.50, 0.55, 0.60])
    z = np.array([-1.26, -0.63, 0.0, 0.63, 1.26])
    marginal = V.compare_metric("marginal", base, base + 0.12 + 0.077 * z, higher_is_better=True)
    others = [V.compare_metric(f"n{i}", base, base + 0.05 * np.roll(z, i), higher_is_better=True) for i in range(9)]
    V.control_fdr([marginal] + others)
    assert marginal["verdict_text"] == ("not distinguishable from reseeding once the table's 10 tests are controlled "
                                        "for false discoveries (5%)")


def test_the_simulated_per_image_rule_is_compare_metric():
    # a per-image accuracy with a floor and >= 2 pairs: p = max(test over images, paired t over seeds)
    rng = np.random.default_rng(5)
    base, var, _ = stats_sim._accuracy_runs(rng, 6, 4, 0.03, n_images=300)
    for k in range(6):
        b, v = base[k, 0].astype(float), var[k, 0].astype(float)
        r = V.compare_metric("acc", list(b), list(v), higher_is_better=True)
        images = V.t_interval((v - b).mean(axis=0))
        seeds = V.t_interval(v.mean(axis=1) - b.mean(axis=1))
        assert r["p_value"] == pytest.approx(max(float(images["p"]), float(seeds["p"])), abs=1e-15)
        assert r["ci95"] == pytest.approx((float(images["lo"]), float(images["hi"])), abs=1e-15)


def test_a_per_image_change_within_reseeding_is_not_a_change():
    # every image moves the same way in each pair (tight interval over images), but the pairs disagree
    b = [np.arange(1000) < 500 + k for k in (0, 30, 60, 90)]
    v = [np.arange(1000) < 500 + k for k in (40, 10, 130, 60)]  # pair differences +4, -2, +7, -3 points
    r = V.compare_metric("acc", b, v, higher_is_better=True)
    assert r["p_interval"] < 0.05 <= r["p_seeds"] and r["verdict"] == V.VERDICT_NOT_DISTINGUISHABLE
    assert "the paired t-test over the 4 seed pairs does not" in r["verdict_text"]


def test_a_spread_that_is_only_rounding_error_is_no_spread():
    base = [0.1 + 0.2, 0.3, 0.3]  # equal up to the last bit
    assert V.sd_of_paired_difference(base, None) == 0.0
    assert V.sd_of_paired_difference(base, [0.5, 0.5, 0.5]) == 0.0
    assert V.sd_of_paired_difference([0.3, 0.31, 0.3], None) > 0  # a real one stays
    assert "cannot estimate the spread" in V.power_sentence("mean corruption accuracy", 3, 0.0, 0.01)
