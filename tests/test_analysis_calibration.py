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


# --- adaptive, classwise and smooth ECE ------------------------------------------------------------


def _tied_case(seed: int, n: int = 300, c: int = 5):
    """Logits rounded to integers: many images share a confidence (ties across bin edges)."""
    logits, labels = _case(seed, n=n, c=c, scale=1.5)
    return 2.0 * np.round(logits / 2.0), labels


def _loop_adaptive_ece(probs, labels, n_bins):
    n = len(labels)
    conf = [max(row) for row in probs.tolist()]
    pred = [row.index(max(row)) for row in probs.tolist()]
    bins = {}
    for i in range(n):
        below = sum(1 for j in range(n) if conf[j] < conf[i])
        bins.setdefault(n_bins * below // n, []).append(i)
    total = 0.0
    for members in bins.values():
        acc = sum(pred[i] == labels[i] for i in members) / len(members)
        mean_conf = sum(conf[i] for i in members) / len(members)
        total += len(members) / n * abs(acc - mean_conf)
    return total


def _loop_classwise_ece(probs, labels, n_bins):
    n, c = probs.shape
    per_class = []
    for k in range(c):
        total = 0.0
        for b in range(n_bins):
            lo, hi = b / n_bins, (b + 1) / n_bins
            members = [i for i in range(n) if (lo < probs[i, k] <= hi) or (b == 0 and probs[i, k] == 0.0)]
            if members:
                freq = sum(labels[i] == k for i in members) / len(members)
                mean_p = sum(probs[i, k] for i in members) / len(members)
                total += len(members) / n * abs(freq - mean_p)
        per_class.append(total)
    return sum(per_class) / c


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n_bins", [1, 7, 15])
def test_adaptive_ece_matches_a_loop_with_ties(seed, n_bins):
    logits, labels = _tied_case(seed)
    probs = metrics.softmax(logits)
    assert len(np.unique(probs.max(axis=1))) < len(labels) // 2  # the case really has ties
    assert calibration.adaptive_ece(probs, labels, n_bins) == pytest.approx(
        _loop_adaptive_ece(probs, labels.tolist(), n_bins), abs=1e-12)


def test_adaptive_ece_is_order_free_and_equal_mass_without_ties():
    logits, labels = _case(5, n=300)
    probs = metrics.softmax(logits)
    perm = np.random.default_rng(0).permutation(len(labels))
    a = calibration.adaptive_ece(probs, labels, 10)
    assert calibration.adaptive_ece(probs[perm], labels[perm], 10) == pytest.approx(a, abs=1e-15)
    # without ties the bins are the sorted confidences cut into 10 blocks of 30
    order = np.argsort(probs.max(axis=1))
    conf, right = probs.max(axis=1)[order], (probs.argmax(axis=1) == labels)[order]
    blocks = [abs(conf[i:i + 30].mean() - right[i:i + 30].mean()) * 30 / 300 for i in range(0, 300, 30)]
    assert a == pytest.approx(sum(blocks), abs=1e-12)
    logits_t, labels_t = _tied_case(5)
    probs_t = metrics.softmax(logits_t)
    assert calibration.adaptive_ece(probs_t[perm], labels_t[perm], 10) == pytest.approx(
        calibration.adaptive_ece(probs_t, labels_t, 10), abs=1e-15)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("n_bins", [1, 15])
def test_classwise_ece_matches_a_loop_with_ties(seed, n_bins):
    logits, labels = _tied_case(seed, n=200, c=4)
    probs = metrics.softmax(logits)
    assert calibration.classwise_ece(probs, labels, n_bins) == pytest.approx(
        _loop_classwise_ece(probs, labels.tolist(), n_bins), abs=1e-12)


def test_new_eces_are_nan_without_samples():
    empty = np.zeros((0, 3))
    labels = np.zeros(0, dtype=np.int64)
    assert math.isnan(calibration.adaptive_ece(empty, labels))
    assert math.isnan(calibration.classwise_ece(empty, labels))
    assert all(math.isnan(v) for v in calibration.smooth_ece(empty, labels))


def test_perfectly_calibrated_scores_have_small_smooth_ece():
    # confidences drawn uniformly, correctness drawn with that probability: calibrated by construction
    rng = np.random.default_rng(4)
    n = 20000
    conf = rng.uniform(0.5, 1.0, size=n)
    right = rng.random(n) < conf
    probs = np.stack([conf, 1 - conf], axis=1)
    labels = np.where(right, 0, 1)
    value, sigma = calibration.smooth_ece(probs, labels)
    assert value < 0.02 and 0 < sigma <= 1
    # and a model that is always 95% sure but right half the time is about 0.45 off
    probs_bad = np.tile([0.95, 0.05], (n, 1))
    labels_bad = (rng.random(n) < 0.5).astype(np.int64)
    assert calibration.smooth_ece(probs_bad, labels_bad)[0] == pytest.approx(0.45, abs=0.02)


@pytest.mark.parametrize("seed,n,tied", [(0, 60, True), (1, 500, True), (2, 3000, False), (3, 400, False)])
def test_smooth_ece_and_diagram_match_relplot(seed, n, tied):
    relplot = pytest.importorskip("relplot")
    logits, labels = (_tied_case(seed, n=n, c=10) if tied else _case(seed, n=n))
    probs = metrics.softmax(logits)
    f, y = relplot.multiclass_logits_to_confidences(logits, labels)
    ref, ref_sigma = relplot.smECE(f, y, return_width=True)
    value, sigma = calibration.smooth_ece(probs, labels)
    assert value == pytest.approx(ref, abs=1e-6)
    assert sigma == pytest.approx(ref_sigma, abs=1e-12)
    assert calibration.smooth_ece(probs, labels, sigma=0.05)[0] == pytest.approx(relplot.smECE_sigma(f, y, 0.05),
                                                                                 abs=1e-6)
    diagram = relplot.prepare_rel_diagram(f, y, plot_confidence_band=False)
    ours = calibration.smooth_reliability(probs, labels)
    np.testing.assert_allclose(ours["mesh"], diagram["mesh"], atol=1e-12)
    np.testing.assert_allclose(ours["accuracy"], diagram["mu"], atol=1e-6)
    np.testing.assert_allclose(ours["density"], diagram["density"], atol=1e-6)
    assert ours["smece"] == pytest.approx(ref, abs=1e-6)


def test_scores_carry_the_new_eces_and_smooth_curves_pool():
    logits, labels = _tied_case(8, n=250, c=6)
    probs = metrics.softmax(logits)
    want = {"ace": calibration.adaptive_ece(probs, labels), "classwise_ece": calibration.classwise_ece(probs, labels),
            "smece": calibration.smooth_ece(probs, labels)[0]}
    for got in (calibration.calibration_summary(logits, labels),
                calibration.scores_at_temperature(logits, labels, 2.0)):
        for k, v in want.items():
            assert got[k] == pytest.approx(v, abs=1e-12), k
    one = calibration.smooth_reliability(probs, labels)
    top = calibration.smooth_reliability_top(probs.max(axis=1), probs.argmax(axis=1) == labels)
    np.testing.assert_allclose(top["accuracy"], one["accuracy"], atol=1e-15)
    # pooling a curve with itself gives it back; pooling weights each run by its density
    same = calibration.pool_smooth([one, one])
    np.testing.assert_allclose(same["accuracy"], one["accuracy"], atol=1e-12)
    other_logits, other_labels = _case(9, n=250, c=6)
    other = calibration.smooth_reliability(metrics.softmax(other_logits), other_labels)
    mixed = calibration.pool_smooth([one, other])
    i = 120
    w = one["density"][i] + other["density"][i]
    assert mixed["accuracy"][i] == pytest.approx(
        (one["density"][i] * one["accuracy"][i] + other["density"][i] * other["accuracy"][i]) / w, rel=1e-12)
    assert calibration.pool_smooth([]) is None
