"""cnnstress.analysis.adversarial against an explicit per-image loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cnnstress.analysis import adversarial


def loop_accuracy(logits, labels):
    right = 0
    for row, y in zip(logits, labels):
        best = max(range(len(row)), key=lambda c: (row[c], -c))  # first maximum
        right += best == y
    return right / len(labels)


def test_accuracy_curve_sorts_eps_and_matches_loop():
    rng = np.random.default_rng(0)
    m, c = 60, 4
    labels = rng.integers(0, c, size=m)
    by_eps = {}
    for eps in (8 / 255, 0.0, 2 / 255, 16 / 255, 4 / 255):  # deliberately unsorted
        x = rng.normal(size=(m, c))
        x[np.arange(m), labels] += 3.0 - 100 * eps
        by_eps[eps] = x.astype(np.float16)
    by_eps[2 / 255][:5] = 0.0                               # all-tied rows: argmax is class 0
    curve = adversarial.accuracy_curve(by_eps, labels.astype(np.int16))
    assert set(curve) == {"eps", "accuracy", "n"} and curve["n"] == m
    assert curve["eps"].tolist() == sorted(by_eps)
    assert curve["eps"].dtype == np.float64 and curve["accuracy"].dtype == np.float64
    for e, acc in zip(curve["eps"], curve["accuracy"]):
        assert acc == pytest.approx(loop_accuracy(by_eps[e].astype(float).tolist(), labels.tolist()), abs=1e-15)
    assert curve["accuracy"][0] > curve["accuracy"][-1]


def test_curve_is_reported_as_stored_even_when_not_monotone():
    labels = np.array([0, 0])
    right, wrong = np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 1.0], [1.0, 0.0]])
    curve = adversarial.accuracy_curve({0.1: wrong, 0.2: right}, labels)
    assert curve["accuracy"].tolist() == [0.5, 1.0]


def test_robust_accuracy_at():
    labels = np.array([0, 1, 1, 0])
    x0 = np.array([[1, 0], [0, 1], [0, 1], [1, 0]], dtype=float)
    x8 = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    curve = adversarial.accuracy_curve({0: x0, 8 / 255: x8}, labels)
    assert adversarial.robust_accuracy_at(curve, 0.0) == 1.0
    assert adversarial.robust_accuracy_at(curve, 8 / 255) == 0.5
    assert adversarial.robust_accuracy_at(curve, float(np.float32(8 / 255))) == 0.5  # float32-written key
    with pytest.raises(ValueError, match="not attacked"):
        adversarial.robust_accuracy_at(curve, 4 / 255)
    with pytest.raises(ValueError, match="matching"):
        adversarial.robust_accuracy_at({"eps": [0.0, 1.0], "accuracy": [1.0]}, 0.0)


def test_accuracy_curve_validation():
    x = np.zeros((3, 2))
    y = np.array([0, 1, 0])
    with pytest.raises(ValueError, match="non-empty"):
        adversarial.accuracy_curve({}, y)
    with pytest.raises(ValueError, match="epsilon"):
        adversarial.accuracy_curve({-0.1: x}, y)
    with pytest.raises(ValueError, match="epsilon"):
        adversarial.accuracy_curve({float("nan"): x}, y)
    with pytest.raises(ValueError, match="two keys"):
        adversarial.accuracy_curve({8 / 255: x, float(np.float32(8 / 255)): x}, y)
    with pytest.raises(ValueError, match="same images"):
        adversarial.accuracy_curve({0.0: x, 0.1: np.zeros((4, 2))}, y)
    with pytest.raises(ValueError, match=r"logits_by_eps\[0.1\]"):
        adversarial.accuracy_curve({0.1: np.zeros(3)}, y)
    with pytest.raises(ValueError, match="labels"):
        adversarial.accuracy_curve({0.0: x}, np.array([0, 1]))
    empty = adversarial.accuracy_curve({0.0: np.zeros((0, 2)), 0.1: np.zeros((0, 2))}, np.zeros(0, dtype=int))
    assert empty["n"] == 0 and all(math.isnan(v) for v in empty["accuracy"])
