"""cnnstress.analysis.sanity against naive O(P^2) ranks, Pearson by hand and Python sets."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnstress.analysis import sanity


# ----------------------------------------------------------------------------- naive references

def naive_ranks(v):
    """1 + number smaller + half the number of other equal values: the average rank."""
    return [1 + sum(1 for u in v if u < x) + (sum(1 for u in v if u == x) - 1) / 2 for x in v]


def naive_pearson(a, b):
    n = len(a)
    ma, mb = sum(a) / n, sum(b) / n
    sab = sum((x - ma) * (y - mb) for x, y in zip(a, b))
    saa = sum((x - ma) ** 2 for x in a)
    sbb = sum((y - mb) ** 2 for y in b)
    if saa == 0 or sbb == 0:
        return float("nan")
    return sab / math.sqrt(saa * sbb)


def naive_spearman(a, b):
    return naive_pearson(naive_ranks(list(a.ravel())), naive_ranks(list(b.ravel())))


def naive_topk(a, b, k):
    def top(m):
        flat = list(m.ravel())
        return set(sorted(range(len(flat)), key=lambda i: (-flat[i], i))[:k])
    return len(top(a) & top(b)) / k


def tied_maps(rng, m, h, w, hi=4):
    return rng.integers(0, hi, size=(m, h, w)).astype(float)


def nanmean(values):
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else float("nan")


# ----------------------------------------------------------------------------- ranks, Spearman

def test_average_ranks_match_naive_ranks():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 5, size=(6, 17)).astype(float)
    r = sanity.average_ranks(x)
    for row, got in zip(x, r):
        assert got.tolist() == naive_ranks(list(row))
    assert sanity.average_ranks(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]
    assert sanity.average_ranks(np.full((2, 3), 7.0)).tolist() == [[2.0] * 3] * 2


def test_spearman_matches_naive_on_tied_maps():
    rng = np.random.default_rng(1)
    for hi in (2, 3, 6, 1000):
        a, b = tied_maps(rng, 8, 5, 4, hi), tied_maps(rng, 8, 5, 4, hi)
        b[:3] = a[:3] + rng.integers(0, 2, size=(3, 5, 4))   # some correlated pairs
        got = sanity.spearman_per_map(a, b)
        assert got.shape == (8,) and got.dtype == np.float64
        for i in range(8):
            assert got[i] == pytest.approx(naive_spearman(a[i], b[i]), abs=1e-12), (hi, i)


def test_spearman_special_cases():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(3, 6, 6))
    assert sanity.spearman_per_map(a, np.exp(a) * 5 + 1) == pytest.approx([1.0] * 3)  # monotone
    assert sanity.spearman_per_map(a, -a) == pytest.approx([-1.0] * 3)
    const = a.copy()
    const[1] = 0.25
    rho = sanity.spearman_per_map(a, const)
    assert not math.isnan(rho[0]) and math.isnan(rho[1]) and not math.isnan(rho[2])
    assert math.isnan(sanity.spearman_per_map(const, a)[1])
    assert math.isnan(sanity.spearman_per_map(np.ones((1, 1, 1)), np.ones((1, 1, 1)))[0])
    # The same pixel permutation on both maps changes nothing; float16 maps (as stored) work.
    p = rng.permutation(36)
    b = rng.normal(size=(3, 6, 6))
    perm = lambda m: m.reshape(3, -1)[:, p].reshape(3, 6, 6)
    np.testing.assert_allclose(sanity.spearman_per_map(perm(a), perm(b)), sanity.spearman_per_map(a, b), atol=1e-14)
    h = a.astype(np.float16)
    want = [naive_spearman(h[i].astype(float), b[i]) for i in range(3)]
    np.testing.assert_allclose(sanity.spearman_per_map(h, b), want, atol=1e-12)
    # unrelated maps correlate near 0
    big = sanity.spearman_per_map(rng.normal(size=(40, 16, 16)), rng.normal(size=(40, 16, 16)))
    assert abs(big.mean()) < 0.05


# ----------------------------------------------------------------------------- top-k overlap

@pytest.mark.parametrize("k_fraction", [0.1, 0.25, 0.5, 1.0, 0.01])
def test_topk_overlap_matches_sets(k_fraction):
    rng = np.random.default_rng(int(k_fraction * 100))
    for hi in (2, 4, 10_000):
        a, b = tied_maps(rng, 7, 6, 5, hi), tied_maps(rng, 7, 6, 5, hi)
        b[:2] = a[:2]
        k = max(1, math.ceil(k_fraction * 30 - 1e-9))
        got = sanity.topk_overlap(a, b, k_fraction)
        assert got.tolist() == [naive_topk(a[i], b[i], k) for i in range(7)]
        assert got[0] == got[1] == 1.0


def test_topk_overlap_hand_example_and_ties():
    a = np.array([[[9.0, 8.0, 0.0, 0.0], [0.0, 0.0, 0.0, 7.0]]])  # 8 pixels, top-3 = {0, 1, 7}
    b = np.array([[[9.0, 0.0, 0.0, 0.0], [0.0, 0.0, 8.0, 7.0]]])  # top-3 = {0, 6, 7}
    assert sanity.topk_overlap(a, b, 0.375).tolist() == [2 / 3]      # k = 3
    assert sanity.topk_overlap(a, b, 0.3).tolist() == [2 / 3]        # ceil(2.4) = 3
    assert sanity.topk_overlap(a, b, 0.125).tolist() == [1.0]        # k = 1: pixel 0 in both
    # A constant map selects its first k pixels (row-major), so against itself it overlaps fully
    # and against a map peaked on the last pixels not at all.
    const = np.zeros((1, 2, 4))
    late = np.zeros((1, 2, 4))
    late[0, 1, 2:] = 1.0
    assert sanity.topk_overlap(const, const, 0.25).tolist() == [1.0]
    assert sanity.topk_overlap(const, late, 0.25).tolist() == [0.0]
    for bad in (0.0, 1.5, -1.0):
        with pytest.raises(ValueError, match="k_fraction"):
            sanity.topk_overlap(a, b, bad)


def test_maps_are_validated():
    good = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match="a must have shape"):
        sanity.spearman_per_map(np.zeros((3, 3)), good)
    with pytest.raises(ValueError, match="b has shape"):
        sanity.topk_overlap(good, np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        bad = good.copy()
        bad[0, 0, 0] = np.nan
        sanity.spearman_per_map(good, bad)


# ----------------------------------------------------------------------------- cascade

def test_randomization_curve_matches_per_step_naive_means():
    rng = np.random.default_rng(3)
    ref = tied_maps(rng, 5, 4, 4, 6)
    steps = {"fc": ref + 0.1 * rng.normal(size=ref.shape),
             "layer4": tied_maps(rng, 5, 4, 4, 6),
             "conv1": np.zeros_like(ref)}              # every map constant: no defined rho
    steps["layer4"][0] = 3.0                           # one constant map among five
    curve = sanity.randomization_curve(ref, steps, k_fraction=0.25)
    assert curve["steps"] == ["fc", "layer4", "conv1"]  # step order, not sorted
    assert set(curve) == {"steps", "spearman", "abs_spearman", "topk_overlap", "n_valid"}
    for j, (name, maps) in enumerate(steps.items()):
        rhos = [naive_spearman(ref[i], maps[i]) for i in range(5)]
        want, want_abs = nanmean(rhos), nanmean([abs(r) for r in rhos])
        if math.isnan(want):
            assert math.isnan(curve["spearman"][j]) and math.isnan(curve["abs_spearman"][j])
        else:
            assert curve["spearman"][j] == pytest.approx(want, abs=1e-12)
            assert curve["abs_spearman"][j] == pytest.approx(want_abs, abs=1e-12)
        assert curve["topk_overlap"][j] == pytest.approx(sum(naive_topk(ref[i], maps[i], 4) for i in range(5)) / 5)
        assert curve["n_valid"][j] == sum(1 for r in rhos if not math.isnan(r))
    assert curve["n_valid"].tolist() == [5, 4, 0]
    assert curve["spearman"][0] > 0.9


def test_randomization_curve_rejects_mismatched_steps():
    ref = np.zeros((2, 3, 3))
    with pytest.raises(ValueError, match=r"steps\['fc'\] has shape"):
        sanity.randomization_curve(ref, {"fc": np.zeros((3, 3, 3))})
    with pytest.raises(ValueError, match="mapping"):
        sanity.randomization_curve(ref, [np.zeros((2, 3, 3))])
    with pytest.raises(ValueError, match="reference"):
        sanity.randomization_curve(np.zeros(3), {})


def test_stays_similar():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(6, 8, 8))
    drifting = {"fc": ref + 0.01 * rng.normal(size=ref.shape), "all": rng.normal(size=ref.shape)}
    edge_like = {"fc": ref * 2, "all": ref + 0.05 * rng.normal(size=ref.shape)}  # ignores weights
    assert not sanity.stays_similar(sanity.randomization_curve(ref, drifting))
    assert sanity.stays_similar(sanity.randomization_curve(ref, edge_like))
    assert not sanity.stays_similar(sanity.randomization_curve(ref, edge_like), threshold=1.0)
    inverted = {"all": -ref}
    assert not sanity.stays_similar(sanity.randomization_curve(ref, inverted))
    assert sanity.stays_similar(sanity.randomization_curve(ref, inverted), absolute=True)
    # The last step decides; a NaN last step (constant maps) is not "similar".
    assert not sanity.stays_similar(sanity.randomization_curve(ref, {"a": ref, "b": np.zeros_like(ref)}))
    assert not sanity.stays_similar({"spearman": np.array([0.9, 0.5])}, threshold=0.5)  # strictly above
    with pytest.raises(ValueError, match="at least one"):
        sanity.stays_similar(sanity.randomization_curve(ref, {}))
