"""cnnstress.analysis.ood against straightforward re-implementations (pairwise counts, explicit
precision at each positive, a scan over every threshold) on scores with many ties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import loaded_by

from cnnstress.analysis import ood


# ----------------------------------------------------------------------------- naive references

def naive_auroc(s_in, s_out) -> float:
    """P(in > out) + 0.5 P(in == out) over every pair, by explicit loops."""
    total = 0.0
    for a in s_in:
        for b in s_out:
            total += 1.0 if a > b else (0.5 if a == b else 0.0)
    return total / (len(s_in) * len(s_out))


def naive_ap(pos, neg) -> float:
    """Mean over positives of the precision at the threshold equal to that positive's score."""
    allv = list(pos) + list(neg)
    precisions = []
    for s in pos:
        taken = sum(1 for v in allv if v >= s)
        hits = sum(1 for v in pos if v >= s)
        precisions.append(hits / taken)
    return sum(precisions) / len(pos)


def naive_fpr(s_in, s_out, tpr) -> float:
    """Scan every pooled score as a threshold; keep the largest keeping >= tpr of the in-samples."""
    best = None
    for t in sorted(set(list(s_in) + list(s_out))):
        if np.mean(np.asarray(s_in) >= t) >= tpr:
            best = t
    assert best is not None
    return float(np.mean(np.asarray(s_out) >= best))


def tied_scores(rng, n_in, n_out, hi=8, shift=2):
    """Small-range integers: plenty of ties within and across the two sets."""
    return (rng.integers(0, hi, size=n_in).astype(float) + rng.integers(0, shift + 1),
            rng.integers(0, hi, size=n_out).astype(float))


# ----------------------------------------------------------------------------- scores

def test_ood_score_matches_explicit_formulas():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 7)) * 3
    for i, row in enumerate(x):
        exps = [math.exp(v) for v in row]
        assert ood.ood_score(x, "msp")[i] == pytest.approx(max(exps) / sum(exps), rel=1e-12)
        assert ood.ood_score(x, "max_logit")[i] == max(row)
        assert ood.ood_score(x, "energy")[i] == pytest.approx(math.log(sum(exps)), rel=1e-12)
    for name in ood.SCORES:
        s = ood.ood_score(x, name)
        assert s.shape == (30,) and s.dtype == np.float64


def test_ood_score_shift_and_stability():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 10)) * 4
    c = 123.25
    np.testing.assert_allclose(ood.ood_score(x + c, "msp"), ood.ood_score(x, "msp"), rtol=1e-12)
    np.testing.assert_allclose(ood.ood_score(x + c, "max_logit"), ood.ood_score(x, "max_logit") + c, rtol=1e-12)
    np.testing.assert_allclose(ood.ood_score(x + c, "energy"), ood.ood_score(x, "energy") + c, rtol=1e-12)
    # Huge logits: no overflow; one dominant class gives msp 1 and energy = its logit.
    big = np.array([[1000.0, 0.0, -1000.0], [800.0, 800.0, 0.0]])
    assert ood.ood_score(big, "msp").tolist() == pytest.approx([1.0, 0.5])
    assert ood.ood_score(big, "energy").tolist() == pytest.approx([1000.0, 800.0 + math.log(2.0)])
    # float16 logits (as stored) are read in float64.
    h = x.astype(np.float16)
    np.testing.assert_allclose(ood.ood_score(h, "energy"), ood.ood_score(h.astype(np.float64), "energy"))
    # msp lies in [1/C, 1]; energy >= max_logit.
    s = ood.ood_score(x, "msp")
    assert np.all(s >= 1 / 10 - 1e-12) and np.all(s <= 1.0)
    assert np.all(ood.ood_score(x, "energy") >= ood.ood_score(x, "max_logit"))
    assert ood.ood_score(np.zeros((0, 3)), "msp").shape == (0,)


def test_ood_score_rejects_bad_input():
    with pytest.raises(ValueError, match="name"):
        ood.ood_score(np.zeros((2, 3)), "entropy")
    with pytest.raises(ValueError, match="logits"):
        ood.ood_score(np.zeros(3), "msp")
    with pytest.raises(ValueError, match="NaN"):
        ood.ood_score(np.array([[0.0, np.nan]]), "energy")


# ----------------------------------------------------------------------------- AUROC

def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(2)
    for trial in range(40):
        n_in, n_out = rng.integers(1, 40, size=2)
        s_in, s_out = tied_scores(rng, n_in, n_out, hi=int(rng.integers(1, 6)), shift=int(rng.integers(0, 3)))
        assert ood.auroc(s_in, s_out) == pytest.approx(naive_auroc(s_in, s_out), abs=1e-12), trial


def test_auroc_hand_example_and_properties():
    # scikit-learn's documented example: y = [0, 0, 1, 1], scores [0.1, 0.4, 0.35, 0.8] -> 0.75.
    assert ood.auroc([0.35, 0.8], [0.1, 0.4]) == pytest.approx(0.75)
    rng = np.random.default_rng(3)
    a = rng.integers(0, 5, size=200).astype(float)
    assert ood.auroc(a, a) == 0.5                                  # identical samples
    assert ood.auroc(a, rng.permutation(a)) == 0.5
    same = ood.auroc(rng.normal(size=4000), rng.normal(size=4000))  # same distribution
    assert abs(same - 0.5) < 0.03
    assert ood.auroc([5.0, 6.0, 7.0], [1.0, 2.0, 4.9]) == 1.0      # perfect separation
    assert ood.auroc([1.0, 2.0], [3.0, 4.0, 5.0]) == 0.0
    assert ood.auroc([2.0], [2.0]) == 0.5                          # one tie = one half
    s_in, s_out = tied_scores(rng, 57, 31)
    v = ood.auroc(s_in, s_out)
    assert ood.auroc(s_out, s_in) == pytest.approx(1.0 - v, abs=1e-12)      # swap
    assert ood.auroc(rng.permutation(s_in), rng.permutation(s_out)) == v    # order-free
    assert ood.auroc(np.exp(s_in), np.exp(s_out)) == pytest.approx(v, abs=1e-12)  # rank-only
    assert ood.auroc(s_in.astype(np.float16), s_out.astype(np.int16)) == v


def test_auroc_is_fast_on_large_inputs():
    rng = np.random.default_rng(4)
    s_in = rng.integers(0, 50, size=200_000).astype(float)
    s_out = rng.integers(0, 50, size=200_000).astype(float) - 3
    v = ood.auroc(s_in, s_out)  # O(n^2) would be 4e10 pairs
    # check on a counting formula per distinct value: sum_v n_in(v) * (n_out(<v) + n_out(=v)/2)
    vals = np.arange(-3, 50)
    cin = np.array([(s_in == u).sum() for u in vals])
    cout = np.array([(s_out == u).sum() for u in vals])
    below = np.r_[0, np.cumsum(cout)[:-1]]
    assert v == pytest.approx(np.sum(cin * (below + cout / 2)) / (s_in.size * s_out.size), abs=1e-12)


# ----------------------------------------------------------------------------- AUPR

def test_aupr_matches_precision_at_each_positive_with_ties():
    rng = np.random.default_rng(5)
    for trial in range(40):
        n_in, n_out = rng.integers(1, 40, size=2)
        s_in, s_out = tied_scores(rng, n_in, n_out, hi=int(rng.integers(1, 6)))
        assert ood.aupr(s_in, s_out) == pytest.approx(naive_ap(s_in, s_out), abs=1e-12), trial
        assert ood.aupr(s_in, s_out, positive="out") == pytest.approx(
            naive_ap([-v for v in s_out], [-v for v in s_in]), abs=1e-12), trial


def test_aupr_hand_examples_and_properties():
    # scikit-learn's average_precision_score example: 0.8333...
    assert ood.aupr([0.35, 0.8], [0.1, 0.4]) == pytest.approx(5 / 6)
    # AUPR-Out on it: positives 0.1, 0.4 ranked by -score: order 0.1(+), 0.35(-), 0.4(+), 0.8(-)
    assert ood.aupr([0.35, 0.8], [0.1, 0.4], positive="out") == pytest.approx((1 + 2 / 3) / 2)
    # All tied: precision is the positive share at the single threshold.
    assert ood.aupr([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(2 / 5)
    assert ood.aupr([3.0, 4.0], [1.0, 2.0]) == 1.0
    rng = np.random.default_rng(6)
    s_in, s_out = tied_scores(rng, 80, 45)
    v = ood.aupr(s_in, s_out)
    assert ood.aupr(rng.permutation(s_in), rng.permutation(s_out)) == pytest.approx(v, abs=1e-15)
    assert ood.aupr(s_in, s_out, positive="out") == pytest.approx(ood.aupr(-s_out, -s_in), abs=1e-15)
    with pytest.raises(ValueError, match="positive"):
        ood.aupr(s_in, s_out, positive="neg")


# ----------------------------------------------------------------------------- FPR at TPR

@pytest.mark.parametrize("tpr", [0.95, 0.9, 0.5, 0.8, 1.0, 0.01])
def test_fpr_at_tpr_matches_threshold_scan(tpr):
    rng = np.random.default_rng(int(tpr * 1000))
    for trial in range(30):
        n_in, n_out = rng.integers(1, 60, size=2)
        s_in, s_out = tied_scores(rng, n_in, n_out, hi=int(rng.integers(1, 8)))
        assert ood.fpr_at_tpr(s_in, s_out, tpr) == naive_fpr(s_in, s_out, tpr), (trial, tpr)


def test_fpr_at_tpr_hand_examples():
    s_in = np.arange(1.0, 21.0)              # 20 in-samples 1..20; 95% keeps 19 -> threshold 2
    s_out = np.array([0.0, 1.0, 1.5, 2.0, 2.5, 30.0])
    assert ood.fpr_at_tpr(s_in, s_out) == pytest.approx(3 / 6)  # 2.0 (tied: accepted), 2.5, 30
    # 0.55 * 100 is 55.00000000000001 in floats, so ceil() alone would keep 56 of 100; 55 it is.
    hundred = np.arange(100.0)
    assert ood.fpr_at_tpr(hundred, hundred, 0.55) == pytest.approx(0.55)
    assert ood.fpr_at_tpr(hundred, hundred, 0.07) == pytest.approx(0.07)
    assert ood.fpr_at_tpr(s_in, s_out, 1.0) == pytest.approx(5 / 6)   # threshold 1
    assert ood.fpr_at_tpr([5.0, 6.0], [1.0, 2.0]) == 0.0
    assert ood.fpr_at_tpr([1.0, 2.0], [5.0, 6.0]) == 1.0
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="tpr"):
            ood.fpr_at_tpr(s_in, s_out, bad)


def test_metrics_reject_bad_scores():
    for args, name in ((([[1.0]], [1.0]), "score_in"), (([1.0], []), "score_out"),
                       (([], [1.0]), "score_in"), (([np.inf], [1.0]), "score_in")):
        for fn in (ood.auroc, ood.aupr, ood.fpr_at_tpr):
            with pytest.raises(ValueError, match=name):
                fn(*args)


# ----------------------------------------------------------------------------- ood_metrics

def test_ood_metrics_combines_the_scores():
    rng = np.random.default_rng(7)
    logits_in = rng.normal(size=(120, 5)) * 2
    logits_in[np.arange(120), rng.integers(0, 5, 120)] += 8    # confident
    logits_out = rng.normal(size=(90, 5)) * 2
    out = ood.ood_metrics(logits_in, logits_out.astype(np.float16))
    assert list(out) == list(ood.SCORES)
    for name, m in out.items():
        assert set(m) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
        s_in = ood.ood_score(logits_in, name)
        s_out = ood.ood_score(logits_out.astype(np.float16), name)
        assert m["auroc"] == pytest.approx(naive_auroc(s_in, s_out), abs=1e-12)
        assert m["aupr_in"] == pytest.approx(naive_ap(s_in, s_out), abs=1e-12)
        assert m["aupr_out"] == pytest.approx(naive_ap(-s_out, -s_in), abs=1e-12)
        assert m["fpr95"] == naive_fpr(s_in, s_out, 0.95)
        assert m["auroc"] > 0.9  # the planted separation is found
        assert all(isinstance(v, float) for v in m.values())
    with pytest.raises(ValueError, match="classes"):
        ood.ood_metrics(logits_in, logits_out[:, :4])
    with pytest.raises(ValueError, match="N_out=0"):
        ood.ood_metrics(logits_in, logits_out[:0])


# ----------------------------------------------------------------------------- histogram

def test_score_histogram_shared_edges_match_loop():
    rng = np.random.default_rng(8)
    s_in, s_out = rng.normal(2, 1, size=300), rng.normal(0, 1, size=200)
    h = ood.score_histogram(s_in, s_out, bins=12)
    e = h["edges"]
    assert e.shape == (13,) and e[0] == min(s_in.min(), s_out.min()) and e[-1] == max(s_in.max(), s_out.max())
    assert h["in_counts"].dtype == np.int64 and h["out_counts"].shape == (12,)
    for scores, counts in ((s_in, h["in_counts"]), (s_out, h["out_counts"])):
        expect = [0] * 12
        for v in scores:
            b = next(i for i in range(12) if e[i] <= v < e[i + 1] or (i == 11 and v == e[12]))
            expect[b] += 1
        assert counts.tolist() == expect
    const = ood.score_histogram([1.0, 1.0], [1.0], bins=4)
    assert const["edges"][0] == 0.5 and const["edges"][-1] == 1.5
    assert const["in_counts"].sum() == 2 and const["out_counts"].sum() == 1
    assert ood.score_histogram([], [3.0], bins=2)["in_counts"].tolist() == [0, 0]
    with pytest.raises(ValueError, match="bins"):
        ood.score_histogram(s_in, s_out, bins=0)
    with pytest.raises(ValueError, match="at least one"):
        ood.score_histogram([], [])


# ----------------------------------------------------------------------------- imports

def test_new_analysis_modules_import_only_numpy():
    mods = ("cnnstress.analysis.ood, cnnstress.analysis.selective, cnnstress.analysis.sanity, "
            "cnnstress.analysis.adversarial")
    assert loaded_by(mods, ("torch", "scipy", "h5py", "matplotlib", "sklearn")) == []
