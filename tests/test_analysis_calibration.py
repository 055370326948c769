"""cnnstress.analysis.calibration against explicit formulas and loops."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnstress.analysis import calibration, metrics


def _explicit_softmax(row) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _case(seed: int, n: int = 400, c: int = 10, scale: float = 2.5):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * scale
    labels = rng.integers(0, c, size=n)
    # Make the model better than chance so that bins hold a mix of right and wrong.
    logits[np.arange(n), labels] += rng.uniform(0, 4, size=n)
    return logits, labels


def _loop_reliability(probs, labels, n_bins):
    bins = [[] for _ in range(n_bins)]
    for row, y in zip(probs, labels):
        conf = max(row)
        pred = list(row).index(conf)
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            if (lo < conf <= hi) or (b == 0 and conf == 0.0):
                bins[b].append((conf, pred == y))
                break
    return bins


def _loop_ece(probs, labels, n_bins):
    bins = _loop_reliability(probs, labels, n_bins)
    n = len(labels)
    total = 0.0
    for members in bins:
        if members:
            acc = sum(ok for _, ok in members) / len(members)
            conf = sum(c for c, _ in members) / len(members)
            total += len(members) / n * abs(acc - conf)
    return total


@pytest.mark.parametrize("n_bins", [15, 10, 4])
def test_ece_and_reliability_match_loop_over_bins(n_bins):
    logits, labels = _case(0)
    probs = metrics.softmax(logits)
    assert calibration.ece(probs, labels, n_bins=n_bins) == pytest.approx(_loop_ece(probs, labels, n_bins), abs=1e-12)
    rel = calibration.reliability(probs, labels, n_bins=n_bins)
    bins = _loop_reliability(probs, labels, n_bins)
    assert rel["count"].dtype == np.int64
    assert rel["count"].tolist() == [len(b) for b in bins]
    assert rel["bin_edges"].shape == (n_bins + 1,)
    for b, members in enumerate(bins):
        if members:
            assert rel["accuracy"][b] == pytest.approx(sum(ok for _, ok in members) / len(members))
            assert rel["confidence"][b] == pytest.approx(sum(c for c, _ in members) / len(members))
        else:
            assert math.isnan(rel["accuracy"][b]) and math.isnan(rel["confidence"][b])


def test_reliability_bin_edges_are_right_closed():
    # Uniform over 5 classes: confidence exactly 0.2 = 3/15, which belongs to bin (2/15, 3/15].
    probs = np.full((4, 5), 0.2)
    labels = np.array([0, 1, 2, 3])
    rel = calibration.reliability(probs, labels, n_bins=15)
    assert rel["count"][2] == 4 and rel["count"].sum() == 4
    # Confidence 1.0 lands in the last bin, and a perfect classifier has ECE 0.
    onehot = np.eye(3)
    rel1 = calibration.reliability(onehot, np.arange(3), n_bins=15)
    assert rel1["count"][-1] == 3
    assert calibration.ece(onehot, np.arange(3)) == 0.0


def test_nll_matches_log_of_explicit_softmax_and_is_stable():
    logits, labels = _case(1, n=200)
    expected = -sum(math.log(_explicit_softmax(list(r))[y]) for r, y in zip(logits, labels)) / len(labels)
    assert calibration.nll(logits, labels) == pytest.approx(expected, rel=1e-12)
    big = np.array([[1000.0, 0.0], [0.0, 1000.0]])
    assert calibration.nll(big, np.array([1, 1])) == pytest.approx(500.0, rel=1e-12)
    assert calibration.nll(big.astype(np.float16) / 100, np.array([0, 1])) == pytest.approx(
        math.log(1 + math.exp(-10.0)), rel=1e-6)


def test_brier_matches_explicit_onehot_sum():
    logits, labels = _case(2, n=150, c=4)
    probs = metrics.softmax(logits)
    expected = 0.0
    for row, y in zip(probs, labels):
        expected += sum((row[k] - (1.0 if k == y else 0.0)) ** 2 for k in range(len(row)))
    expected /= len(labels)
    assert calibration.brier(probs, labels) == pytest.approx(expected, rel=1e-12)
    assert calibration.brier(np.eye(3), np.arange(3)) == pytest.approx(0.0, abs=1e-15)
    assert calibration.brier(np.eye(3), np.array([1, 2, 0])) == pytest.approx(2.0)


def _nll_at(logits, labels, t):
    return calibration.nll(logits / t, labels)


def test_fit_temperature_is_a_local_minimum_and_deterministic():
    logits, labels = _case(3, n=600)
    t = calibration.fit_temperature(logits, labels)
    assert 0.05 <= t <= 20.0
    best = _nll_at(logits, labels, t)
    for other in (t * 0.9, t * 1.1, t * 0.99, t * 1.01, 1.0):
        assert best <= _nll_at(logits, labels, other) + 1e-12
    assert calibration.fit_temperature(logits, labels) == t


def test_fit_temperature_recovers_planted_temperature():
    rng = np.random.default_rng(4)
    n, c = 5000, 10
    true_logits = rng.normal(size=(n, c)) * 2.0
    probs = metrics.softmax(true_logits)
    # Labels drawn from the true distribution: then T = 1 is right for true_logits, T = 3 for 3x.
    cum = probs.cumsum(axis=1)
    labels = (rng.random(n)[:, None] > cum).sum(axis=1).clip(0, c - 1)
    t = calibration.fit_temperature(true_logits * 3.0, labels)
    assert t == pytest.approx(3.0, rel=0.10)
    assert calibration.fit_temperature(true_logits / 2.0, labels) == pytest.approx(0.5, rel=0.10)


def test_fit_temperature_hits_lower_bound_when_separable():
    logits = np.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
    labels = np.array([0, 1, 0])  # all correct: NLL falls as T -> 0
    assert calibration.fit_temperature(logits, labels) == pytest.approx(0.05, rel=1e-3)


def test_calibration_summary_with_and_without_validation():
    logits, labels = _case(5, n=300)
    val_logits, val_labels = _case(6, n=300)
    plain = calibration.calibration_summary(logits, labels)
    probs = metrics.softmax(logits)
    assert plain["ece"] == pytest.approx(_loop_ece(probs, labels, 15), abs=1e-12)
    assert plain["nll"] == calibration.nll(logits, labels)
    assert plain["brier"] == calibration.brier(probs, labels)
    assert plain["temperature"] is None and plain["ece_after"] is None and plain["nll_after"] is None
    full = calibration.calibration_summary(logits, labels, val_logits, val_labels)
    t = calibration.fit_temperature(val_logits, val_labels)
    assert full["temperature"] == t
    assert full["nll_after"] == pytest.approx(_nll_at(logits, labels, t), rel=1e-12)
    assert full["ece_after"] == pytest.approx(_loop_ece(metrics.softmax(logits / t), labels, 15), abs=1e-12)
    with pytest.raises(ValueError, match="val_labels"):
        calibration.calibration_summary(logits, labels, val_logits=val_logits)


def test_scores_at_temperature_match_explicit_loops():
    logits, labels = _case(7, n=250, c=6)
    t = 1.7
    plain = calibration.scores_at_temperature(logits, labels)
    assert plain["ece_after"] is None and plain["nll_after"] is None and plain["brier_after"] is None
    got = calibration.scores_at_temperature(logits, labels, t)
    for key, x in (("", logits), ("_after", logits / t)):
        probs = [_explicit_softmax(list(r)) for r in x]
        nll = -sum(math.log(p[y]) for p, y in zip(probs, labels)) / len(labels)
        brier = sum(sum((p[k] - (k == y)) ** 2 for k in range(len(p))) for p, y in zip(probs, labels)) / len(labels)
        assert got["ece" + key] == pytest.approx(_loop_ece(np.array(probs), labels, 15), abs=1e-12)
        assert got["nll" + key] == pytest.approx(nll, rel=1e-12)
        assert got["brier" + key] == pytest.approx(brier, rel=1e-12)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            calibration.scores_at_temperature(logits, labels, bad)
