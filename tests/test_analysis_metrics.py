"""cnnstress.analysis.metrics against straightforward loop implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnstress.analysis import metrics


def _random_case(seed: int, n: int = 300, c: int = 7, scale: float = 3.0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, c)) * scale
    labels = rng.integers(0, c, size=n)
    return logits, labels


def _loop_softmax_row(row) -> list[float]:
    m = max(row)
    exps = [math.exp(v - m) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def _loop_conf_pred(logits):
    conf, pred = [], []
    for row in logits:
        p = _loop_softmax_row([float(v) for v in row])
        best = max(range(len(p)), key=lambda j: (p[j], -j))  # first maximum
        conf.append(p[best])
        pred.append(best)
    return conf, pred


def test_softmax_matches_explicit_formula_and_sums_to_one():
    logits, _ = _random_case(0, n=50)
    out = metrics.softmax(logits)
    assert out.shape == logits.shape and out.dtype == np.float64
    expected = np.array([_loop_softmax_row(list(r)) for r in logits])
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-12)


def test_softmax_is_stable_for_huge_logits_and_accepts_float16():
    big = np.array([[1000.0, 999.0, -1000.0], [-5000.0, -5000.0, -5000.0]])
    out = metrics.softmax(big)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0, :2], [1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1))])
    np.testing.assert_allclose(out[1], [1 / 3] * 3)
    half = np.random.default_rng(1).normal(size=(20, 5)).astype(np.float16)
    out16 = metrics.softmax(half)
    assert out16.dtype == np.float64
    np.testing.assert_allclose(out16, metrics.softmax(half.astype(np.float64)), rtol=1e-12)


def test_predictions_and_accuracy_match_loops():
    logits, labels = _random_case(2)
    preds = metrics.predictions(logits)
    assert preds.dtype == np.int64 and preds.shape == (logits.shape[0],)
    _, loop_pred = _loop_conf_pred(logits)
    assert preds.tolist() == loop_pred
    expected = sum(int(p == y) for p, y in zip(loop_pred, labels)) / len(labels)
    assert metrics.accuracy(labels.astype(np.int16), preds) == pytest.approx(expected, abs=1e-15)
    assert math.isnan(metrics.accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_confusion_matrix_matches_double_loop():
    c = 6
    rng = np.random.default_rng(3)
    labels = rng.integers(0, c, size=400)
    preds = rng.integers(0, c, size=400)
    cm = metrics.confusion_matrix(labels.astype(np.int16), preds, c)
    assert cm.dtype == np.int64 and cm.shape == (c, c)
    for t in range(c):
        for p in range(c):
            assert cm[t, p] == sum(1 for y, q in zip(labels, preds) if y == t and q == p)
    assert cm.sum() == labels.size


def test_confusion_matrix_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="num_classes"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="preds"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([0, 1, 2]), 3)


def test_row_normalize_and_per_class_accuracy_with_absent_class():
    c = 5
    rng = np.random.default_rng(4)
    labels = rng.choice([0, 1, 3, 4], size=200)  # class 2 absent
    preds = rng.integers(0, c, size=200)
    cm = metrics.confusion_matrix(labels, preds, c)
    norm = metrics.row_normalize(cm)
    assert norm.dtype == np.float64
    for t in range(c):
        total = sum(cm[t])
        for p in range(c):
            assert norm[t, p] == pytest.approx(cm[t, p] / total if total else 0.0)
    assert np.all(norm[2] == 0.0)
    pca = metrics.per_class_accuracy(labels, preds, c)
    for t in range(c):
        idx = [i for i in range(len(labels)) if labels[i] == t]
        if not idx:
            assert math.isnan(pca[t])
        else:
            assert pca[t] == pytest.approx(sum(preds[i] == t for i in idx) / len(idx))


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.6, 0.9])
def test_high_confidence_failures_match_loop(threshold):
    logits, labels = _random_case(5)
    out = metrics.high_confidence_failures(logits, labels, threshold)
    conf, pred = _loop_conf_pred(logits)
    cand = [(-conf[i], i) for i in range(len(labels)) if pred[i] != labels[i] and conf[i] > threshold]
    assert out.dtype == np.int64
    assert out.tolist() == [i for _, i in sorted(cand)]


def test_high_confidence_failures_ties_broken_by_index():
    row = np.array([0.0, 5.0, 0.0])
    logits = np.stack([row, row, np.array([5.0, 0.0, 0.0]), row])
    labels = np.array([0, 2, 0, 0])  # rows 0, 1, 3 wrong with identical confidence
    assert metrics.high_confidence_failures(logits, labels, 0.5).tolist() == [0, 1, 3]


def test_threshold_counts_match_loop_and_are_monotone():
    logits, labels = _random_case(6, n=500)
    counts = metrics.threshold_counts(logits, labels)
    thresholds = metrics.DEFAULT_THRESHOLDS
    assert thresholds.shape == (50,) and thresholds[0] == 0.5 and thresholds[-1] == 0.99
    assert counts.dtype == np.int64 and counts.shape == (50,)
    conf, pred = _loop_conf_pred(logits)
    for t, got in zip(thresholds, counts):
        assert got == sum(1 for i in range(len(labels)) if pred[i] != labels[i] and conf[i] > t)
    assert np.all(np.diff(counts) <= 0)
    custom = metrics.threshold_counts(logits, labels, thresholds=np.array([0.0, 1.0]))
    assert custom.tolist() == [sum(p != y for p, y in zip(pred, labels)), 0]


def test_confidence_histograms_match_loop():
    logits, labels = _random_case(7, n=400)
    bins = 10
    h = metrics.confidence_histograms(logits, labels, bins=bins)
    conf, pred = _loop_conf_pred(logits)
    np.testing.assert_allclose(h["edges"], [b / bins for b in range(bins + 1)])
    right = [0] * bins
    wrong = [0] * bins
    for cf, p, y in zip(conf, pred, labels):
        b = min(int(cf * bins), bins - 1)  # [lo, hi), last bin closed
        (right if p == y else wrong)[b] += 1
    assert h["right_counts"].tolist() == right
    assert h["wrong_counts"].tolist() == wrong
    assert h["right_counts"].sum() + h["wrong_counts"].sum() == len(labels)


def test_per_class_delta_orders_gains_first_nan_last():
    base = np.array([0.5, 0.8, np.nan, 0.6, 0.9, 0.7])
    var = np.array([0.7, 0.7, np.nan, 0.8, 0.9, 0.6])
    order, deltas = metrics.per_class_delta(base, var)
    np.testing.assert_allclose(deltas[[0, 1, 3, 4, 5]], var[[0, 1, 3, 4, 5]] - base[[0, 1, 3, 4, 5]])
    assert math.isnan(deltas[2])
    # Gains first, then losses, NaN last; compared with a sort done by hand on the same deltas.
    finite = [i for i in range(6) if not math.isnan(deltas[i])]
    expected = sorted(finite, key=lambda i: (-deltas[i], i)) + [2]
    assert order.tolist() == expected
    asc, _ = metrics.per_class_delta(base, var, descending=False)
    assert asc.tolist() == sorted(finite, key=lambda i: (deltas[i], i)) + [2]
    tie_order, _ = metrics.per_class_delta(np.zeros(4), np.array([0.1, 0.2, 0.1, 0.2]))
    assert tie_order.tolist() == [1, 3, 0, 2]
