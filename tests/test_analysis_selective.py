"""cnnstress.analysis.selective against explicit loops, and its tie convention against the mean over
every order of the tied images (enumerated by brute force on small inputs)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from cnnstress.analysis import ood, selective


# ----------------------------------------------------------------------------- naive references

def wrong_of(logits, labels):
    return [int(np.argmax(row)) != int(y) for row, y in zip(logits, labels)]


def naive_risk_coverage(conf, wrong):
    """One point per distinct confidence t, from the highest: everything with conf >= t answered."""
    n = len(conf)
    cov, risk, thr = [], [], []
    for t in sorted(set(conf), reverse=True):
        taken = [w for c, w in zip(conf, wrong) if c >= t]
        cov.append(len(taken) / n)
        risk.append(sum(taken) / len(taken))
        thr.append(t)
    return cov, risk, thr


def plain_aurc_in_order(conf, wrong):
    """AURC for one order: sort by confidence with ties in the given order (stable), mean risk."""
    idx = sorted(range(len(conf)), key=lambda i: -conf[i])  # sorted() is stable
    errs, total = 0, 0.0
    for k, i in enumerate(idx, start=1):
        errs += wrong[i]
        total += errs / k
    return total / len(conf)


def plain_acc_in_order(conf, wrong, coverage):
    idx = sorted(range(len(conf)), key=lambda i: -conf[i])
    m = math.ceil(coverage * len(conf) - 1e-9)
    return sum(1 - wrong[i] for i in idx[:m]) / m


def mean_over_tie_orders(fn, conf, wrong):
    """The mean of ``fn`` over every order of the input (so over every order of tied items)."""
    vals = [fn([conf[i] for i in p], [wrong[i] for i in p])
            for p in itertools.permutations(range(len(conf)))]
    return sum(vals) / len(vals)


def expected_errors_loop(conf, wrong):
    """Expected errors among the k most confident, ties in random order, by explicit counting."""
    n = len(conf)
    idx = sorted(range(n), key=lambda i: -conf[i])
    out = []
    for k in range(1, n + 1):
        t = conf[idx[k - 1]]
        above = [i for i in range(n) if conf[i] > t]
        tied = [i for i in range(n) if conf[i] == t]
        e = sum(wrong[i] for i in above) + (k - len(above)) * sum(wrong[i] for i in tied) / len(tied)
        out.append(e)
    return out


def tied_logits(rng, n, c=3, hi=3):
    """Integer logits from a small range: many rows share their msp exactly."""
    return rng.integers(0, hi, size=(n, c)).astype(float), rng.integers(0, c, size=n)


# ----------------------------------------------------------------------------- risk-coverage

@pytest.mark.parametrize("score", ood.SCORES)
def test_risk_coverage_matches_threshold_loop(score):
    rng = np.random.default_rng(0)
    for trial in range(15):
        x, y = tied_logits(rng, int(rng.integers(1, 60)))
        conf = ood.ood_score(x, score).tolist()
        cov, risk, thr = naive_risk_coverage(conf, wrong_of(x, y))
        out = selective.risk_coverage(x, y, score=score)
        assert set(out) == {"coverage", "risk", "threshold"}
        np.testing.assert_allclose(out["coverage"], cov, rtol=0, atol=1e-15)
        np.testing.assert_allclose(out["risk"], risk, rtol=0, atol=1e-15)
        assert out["threshold"].tolist() == thr
        assert out["coverage"][-1] == 1.0


def test_risk_coverage_without_ties_has_every_coverage():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 4)), rng.integers(0, 4, size=40)
    out = selective.risk_coverage(x, y)
    np.testing.assert_allclose(out["coverage"], np.arange(1, 41) / 40)
    conf, wrong = ood.ood_score(x, "msp").tolist(), wrong_of(x, y)
    idx = sorted(range(40), key=lambda i: -conf[i])
    for k in range(1, 41):
        assert out["risk"][k - 1] == pytest.approx(sum(wrong[i] for i in idx[:k]) / k, abs=1e-15)


def test_risk_coverage_is_independent_of_input_order():
    rng = np.random.default_rng(2)
    x, y = tied_logits(rng, 200)
    ref = selective.risk_coverage(x, y)
    for _ in range(5):
        p = rng.permutation(200)
        out = selective.risk_coverage(x[p], y[p])
        for key in ref:
            assert out[key].tolist() == ref[key].tolist()
        assert selective.aurc(x[p], y[p]) == pytest.approx(selective.aurc(x, y), abs=1e-14)
        assert selective.accuracy_at_coverage(x[p], y[p], 0.37) == pytest.approx(
            selective.accuracy_at_coverage(x, y, 0.37), abs=1e-14)


# ----------------------------------------------------------------------------- AURC

def test_aurc_without_ties_is_the_plain_mean_risk():
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = int(rng.integers(1, 80))
        x, y = rng.normal(size=(n, 5)) * 2, rng.integers(0, 5, size=n)
        for score in ood.SCORES:
            conf = ood.ood_score(x, score).tolist()
            assert selective.aurc(x, y, score) == pytest.approx(
                plain_aurc_in_order(conf, wrong_of(x, y)), abs=1e-14)


def test_aurc_with_ties_is_the_mean_over_every_tie_order():
    rng = np.random.default_rng(4)
    for trial in range(12):
        n = int(rng.integers(1, 7))
        x, y = tied_logits(rng, n, c=2, hi=2)
        conf, wrong = ood.ood_score(x, "msp").tolist(), wrong_of(x, y)
        want = mean_over_tie_orders(plain_aurc_in_order, conf, wrong)
        assert selective.aurc(x, y) == pytest.approx(want, abs=1e-12), trial
        for c in (0.2, 0.5, 0.8, 1.0):
            want = mean_over_tie_orders(lambda cf, w: plain_acc_in_order(cf, w, c), conf, wrong)
            assert selective.accuracy_at_coverage(x, y, c) == pytest.approx(want, abs=1e-12), (trial, c)


def test_aurc_and_accuracy_with_many_ties_match_expected_error_loop():
    rng = np.random.default_rng(5)
    x, y = tied_logits(rng, 150, c=4, hi=3)
    conf, wrong = ood.ood_score(x, "msp").tolist(), wrong_of(x, y)
    errs = expected_errors_loop(conf, wrong)
    assert selective.aurc(x, y) == pytest.approx(sum(e / k for k, e in enumerate(errs, 1)) / 150, abs=1e-13)
    for c in (0.1, 0.33, 0.8, 0.9, 1.0):
        m = math.ceil(c * 150 - 1e-9)
        assert selective.accuracy_at_coverage(x, y, c) == pytest.approx((m - errs[m - 1]) / m, abs=1e-13)


def test_constant_confidence_gives_the_error_rate_everywhere():
    y = np.array([0, 1, 1, 0, 2, 0, 0])            # the prediction is class 0 everywhere
    x = np.zeros((7, 3))
    err = 3 / 7
    assert selective.aurc(x, y) == pytest.approx(err)
    assert selective.accuracy_at_coverage(x, y, 0.3) == pytest.approx(1 - err)
    rc = selective.risk_coverage(x, y)
    assert rc["coverage"].tolist() == [1.0] and rc["risk"].tolist() == pytest.approx([err])


def test_accuracy_at_coverage_takes_ceil_without_ties():
    # msp strictly decreasing along the rows; correctness pattern R R W R W
    x = np.array([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 0, 1, 0, 1])
    assert selective.accuracy_at_coverage(x, y, 0.4) == 1.0          # 2 of 5
    assert selective.accuracy_at_coverage(x, y, 0.41) == pytest.approx(2 / 3)   # ceil -> 3
    assert selective.accuracy_at_coverage(x, y, 0.8) == pytest.approx(3 / 4)
    assert selective.accuracy_at_coverage(x, y, 1.0) == pytest.approx(3 / 5)
    assert selective.accuracy_at_coverage(x, y, 1e-9) == 1.0
    # 0.55 * 100 is 55.00000000000001 in floats: still the 55 most confident, not 56.
    xs = np.c_[np.arange(100.0, 0.0, -1.0), np.zeros(100)]
    ys = np.r_[np.zeros(55, dtype=int), np.ones(45, dtype=int)]
    assert selective.accuracy_at_coverage(xs, ys, 0.55, score="max_logit") == 1.0
    rc = selective.risk_coverage(x, y)
    assert rc["risk"].tolist() == pytest.approx([0, 0, 1 / 3, 1 / 4, 2 / 5])
    assert selective.aurc(x, y) == pytest.approx((0 + 0 + 1 / 3 + 1 / 4 + 2 / 5) / 5)


def test_optimal_aurc_is_the_oracle_order():
    rng = np.random.default_rng(6)
    for _ in range(10):
        n = int(rng.integers(1, 60))
        x, y = rng.normal(size=(n, 3)), rng.integers(0, 3, size=n)
        wrong = wrong_of(x, y)
        oracle_conf = [0.0 if w else 1.0 + i for i, w in enumerate(wrong)]  # rights first, no ties
        opt = selective.optimal_aurc(~np.array(wrong, dtype=bool))
        assert opt == pytest.approx(plain_aurc_in_order(oracle_conf, wrong), abs=1e-14)
        assert selective.aurc(x, y) >= opt - 1e-12
    # A confidence that orders every error last reaches it: e-AURC 0.
    x = np.array([[9.0, 0.0], [8.0, 0.0], [0.0, 1.0], [0.0, 0.5]])
    y = np.array([0, 0, 0, 0])
    s = selective.selective_summary(x, y)
    assert s["e_aurc"] == pytest.approx(0.0, abs=1e-15)
    assert s["optimal_aurc"] == pytest.approx((0 + 0 + 1 / 3 + 2 / 4) / 4)
    assert selective.optimal_aurc([1, 1, 1]) == 0.0
    assert selective.optimal_aurc([0, 0]) == 1.0
    assert math.isnan(selective.optimal_aurc(np.zeros(0, dtype=bool)))
    with pytest.raises(ValueError, match="correct"):
        selective.optimal_aurc([0, 2])


def test_selective_summary_matches_the_functions():
    rng = np.random.default_rng(7)
    x, y = tied_logits(rng, 333, c=5, hi=4)
    for score in ood.SCORES:
        s = selective.selective_summary(x, y, score)
        assert set(s) == {"accuracy", "acc_at_90", "acc_at_80", "aurc", "optimal_aurc", "e_aurc", "augrc", "n"}
        assert s["augrc"] == pytest.approx(selective.augrc(x, y, score), abs=1e-14)
        assert s["n"] == 333
        assert s["accuracy"] == pytest.approx(np.mean(np.argmax(x, 1) == y), abs=1e-14)
        assert s["acc_at_90"] == pytest.approx(selective.accuracy_at_coverage(x, y, 0.9, score), abs=1e-14)
        assert s["acc_at_80"] == pytest.approx(selective.accuracy_at_coverage(x, y, 0.8, score), abs=1e-14)
        assert s["aurc"] == pytest.approx(selective.aurc(x, y, score), abs=1e-14)
        assert s["optimal_aurc"] == pytest.approx(selective.optimal_aurc(np.argmax(x, 1) == y), abs=1e-14)
        assert s["e_aurc"] == pytest.approx(s["aurc"] - s["optimal_aurc"], abs=1e-14)
        assert s["e_aurc"] >= -1e-12
        assert all(isinstance(v, float) for k, v in s.items() if k != "n")


def test_empty_and_invalid_inputs():
    x0, y0 = np.zeros((0, 3)), np.zeros(0, dtype=int)
    assert math.isnan(selective.aurc(x0, y0))
    assert math.isnan(selective.accuracy_at_coverage(x0, y0, 0.5))
    assert selective.risk_coverage(x0, y0)["coverage"].shape == (0,)
    s = selective.selective_summary(x0, y0)
    assert s["n"] == 0 and math.isnan(s["aurc"]) and math.isnan(s["accuracy"]) and math.isnan(s["augrc"])
    assert math.isnan(selective.augrc(x0, y0))
    assert selective.generalized_risk_coverage(x0, y0)["coverage"].shape == (0,)
    x, y = np.zeros((3, 2)), np.array([0, 1, 0])
    for bad in (0.0, -0.5, 1.01):
        with pytest.raises(ValueError, match="coverage"):
            selective.accuracy_at_coverage(x, y, bad)
    with pytest.raises(ValueError, match="score"):
        selective.aurc(x, y, score="entropy")
    with pytest.raises(ValueError, match="labels"):
        selective.risk_coverage(x, np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        selective.aurc(x, np.array([0, 2, 0]))      # class 2 of 2
    with pytest.raises(ValueError, match="logits"):
        selective.selective_summary(np.zeros(3), y)


# ----------------------------------------------------------------------------- AUGRC


def plain_augrc_in_order(conf, wrong):
    """AUGRC for one order: trapezoids over coverage k / N of (errors among the first k) / N, from 0."""
    n = len(conf)
    idx = sorted(range(n), key=lambda i: -conf[i])
    area, prev, errs = 0.0, 0.0, 0
    for i in idx:
        errs += wrong[i]
        area += (prev + errs / n) / 2 / n
        prev = errs / n
    return area


def augrc_closed_form(conf, wrong):
    """Traub et al.'s (1 - AUROC) acc (1 - acc) + (1 - acc)^2 / 2, AUROC by counting pairs (ties 1/2)."""
    right = [c for c, w in zip(conf, wrong) if not w]
    bad = [c for c, w in zip(conf, wrong) if w]
    n = len(conf)
    acc = len(right) / n
    if not right or not bad:
        return (1 - acc) ** 2 / 2
    wins = sum(1.0 if r > b else 0.5 if r == b else 0.0 for r in right for b in bad)
    auroc = wins / (len(right) * len(bad))
    return (1 - auroc) * acc * (1 - acc) + (1 - acc) ** 2 / 2


def test_augrc_with_ties_is_the_mean_over_every_tie_order():
    rng = np.random.default_rng(11)
    for trial in range(12):
        n = int(rng.integers(1, 7))
        x, y = tied_logits(rng, n, c=2, hi=2)
        conf, wrong = ood.ood_score(x, "msp").tolist(), wrong_of(x, y)
        want = mean_over_tie_orders(plain_augrc_in_order, conf, wrong)
        assert selective.augrc(x, y) == pytest.approx(want, abs=1e-12), trial


@pytest.mark.parametrize("score", ood.SCORES)
def test_augrc_equals_the_auroc_closed_form_with_many_ties(score):
    rng = np.random.default_rng(12)
    x, y = tied_logits(rng, 200, c=4, hi=3)
    conf = ood.ood_score(x, score).tolist()
    assert len(set(conf)) < 50
    assert selective.augrc(x, y, score) == pytest.approx(augrc_closed_form(conf, wrong_of(x, y)), abs=1e-12)


def test_generalized_risk_coverage_matches_threshold_loop():
    rng = np.random.default_rng(13)
    x, y = tied_logits(rng, 80, c=3, hi=3)
    conf, wrong = ood.ood_score(x, "msp").tolist(), wrong_of(x, y)
    g = selective.generalized_risk_coverage(x, y)
    cov, thr, grisk = [], [], []
    for t in sorted(set(conf), reverse=True):
        taken = [w for c, w in zip(conf, wrong) if c >= t]
        cov.append(len(taken) / len(conf))
        grisk.append(sum(taken) / len(conf))
        thr.append(t)
    np.testing.assert_allclose(g["coverage"], cov, atol=1e-15)
    np.testing.assert_allclose(g["generalized_risk"], grisk, atol=1e-15)
    np.testing.assert_allclose(g["threshold"], thr, atol=1e-15)
    # the generalised risk is the selective risk times the coverage
    rc = selective.risk_coverage(x, y)
    np.testing.assert_allclose(g["generalized_risk"], rc["risk"] * rc["coverage"], atol=1e-15)


def test_augrc_of_a_perfect_ranking_and_of_constant_confidence():
    # right predictions all more confident than wrong ones: AUROC 1, AUGRC = (1 - acc)^2 / 2
    x = np.array([[5.0, 0.0], [4.0, 0.0], [3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    y = np.array([0, 0, 0, 1, 1])
    assert selective.augrc(x, y) == pytest.approx(0.4 ** 2 / 2, abs=1e-15)
    # constant confidence: AUROC 1/2
    xc = np.zeros((4, 2))
    yc = np.array([0, 1, 1, 0])
    assert selective.augrc(xc, yc) == pytest.approx(0.5 * 0.25 + 0.125, abs=1e-15)
