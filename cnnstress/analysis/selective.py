"""Selective prediction from stored logits: abstain on the least confident images.

Shapes: N test images, C classes, G distinct confidence values. The model predicts the argmax
class (first maximum on ties) and answers only its most confident images; *coverage* is the share
answered and *risk* the error rate among them (Geifman & El-Yaniv 2017). A good confidence score
puts the errors last, so risk falls as coverage shrinks. The confidence is one of
``ood.SCORES`` (msp by default), higher = more confident.

Ties in confidence (common with float16 logits and saturated softmax) are handled so that the
result never depends on the order of the input:

- ``risk_coverage`` evaluates the curve only at the ends of tied groups: a threshold either takes
  every image of a tied group or none of them, so coverages inside a group are not reachable.
- ``aurc`` and ``accuracy_at_coverage`` need the coverages inside a group too; there they use the
  expected value over a uniformly random order of the tied images: taking j of a group of n with
  e errors adds j * e / n expected errors. Without ties this is the usual definition, and the
  result equals the mean over every possible tie-breaking order (so a model whose confidence is
  constant gets its plain error rate at every coverage, not a lucky or unlucky order).
"""

from __future__ import annotations

import numpy as np

from cnnstress.analysis._checks import as_bool_vector, as_labels, as_logits
from cnnstress.analysis.ood import SCORES, _min_count, ood_score


def _check_coverage(coverage: float) -> float:
    c = float(coverage)
    if not 0.0 < c <= 1.0:
        raise ValueError(f"coverage must be in (0, 1], got {coverage!r}")
    return c


def _sorted_groups(logits: np.ndarray, labels: np.ndarray, score: str):
    """Confidence sorted descending, correctness in that order, and tied-group ends (exclusive).

    Returns (conf_sorted (N,), wrong_sorted (N,) float64, ends (G,) int64).
    """
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    x = as_logits(logits)
    y = as_labels(labels, n=x.shape[0], num_classes=x.shape[1])
    conf = ood_score(x, score)
    wrong = (np.argmax(x, axis=1) != y).astype(np.float64)
    order = np.argsort(-conf, kind="mergesort")
    conf_sorted, wrong_sorted = conf[order], wrong[order]
    if conf_sorted.size == 0:
        return conf_sorted, wrong_sorted, np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(np.r_[conf_sorted[1:] != conf_sorted[:-1], True]) + 1
    return conf_sorted, wrong_sorted, ends.astype(np.int64)


def _expected_errors(wrong_sorted: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """(N,) expected number of errors among the k most confident, k = 1..N, ties in random order."""
    n = wrong_sorted.size
    starts = np.r_[0, ends[:-1]]
    sizes = ends - starts
    cum = np.r_[0.0, np.cumsum(wrong_sorted)]
    before = cum[starts]                   # errors in strictly more confident groups
    rate = (cum[ends] - before) / sizes    # error share inside each group
    k = np.arange(1, n + 1, dtype=np.float64)
    g_start = np.repeat(starts, sizes)
    return np.repeat(before, sizes) + (k - g_start) * np.repeat(rate, sizes)


def risk_coverage(logits: np.ndarray, labels: np.ndarray, score: str = "msp") -> dict:
    """Risk-coverage curve at every reachable confidence threshold.

    Returns dict(coverage (G,) float64 increasing to 1, risk (G,) float64, threshold (G,) float64):
    answering every image with confidence >= threshold[i] covers coverage[i] of the test set with
    error rate risk[i]. One point per distinct confidence (see the module note on ties), so the
    curve is the same for any order of the input. Empty arrays when N == 0.
    """
    conf_sorted, wrong_sorted, ends = _sorted_groups(logits, labels, score)
    n = conf_sorted.size
    if n == 0:
        empty = np.zeros(0, dtype=np.float64)
        return {"coverage": empty, "risk": empty.copy(), "threshold": empty.copy()}
    errors = np.cumsum(wrong_sorted)[ends - 1]
    return {"coverage": ends / n, "risk": errors / ends, "threshold": conf_sorted[ends - 1]}


def aurc(logits: np.ndarray, labels: np.ndarray, score: str = "msp") -> float:
    """Area under the risk-coverage curve: the mean over k = 1..N of the risk at coverage k / N.

    Lower is better; the error rate at full coverage is what a useless confidence gets. Inside a
    tied group the risk is the expected risk over a random order of the tied images (module note),
    so this is the mean AURC over every tie-breaking order. NaN when N == 0.
    """
    _, wrong_sorted, ends = _sorted_groups(logits, labels, score)
    n = wrong_sorted.size
    if n == 0:
        return float("nan")
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(np.mean(_expected_errors(wrong_sorted, ends) / k))


def generalized_risk_coverage(logits: np.ndarray, labels: np.ndarray, score: str = "msp") -> dict:
    """Generalised risk-coverage curve (Traub et al., "Overcoming common flaws in the evaluation of
    selective classification systems", NeurIPS 2024): at each reachable threshold, the share of
    *all* test images that are answered and wrong, instead of the error rate among the answered.

    Returns dict(coverage (G,), generalized_risk (G,), threshold (G,)) at the ends of tied groups,
    like ``risk_coverage``, whose risk times coverage it is. Empty arrays when N == 0.
    """
    rc = risk_coverage(logits, labels, score)
    return {"coverage": rc["coverage"], "generalized_risk": rc["risk"] * rc["coverage"], "threshold": rc["threshold"]}


def augrc(logits: np.ndarray, labels: np.ndarray, score: str = "msp") -> float:
    """Area under the generalised risk-coverage curve (AUGRC, Traub et al. 2024); lower is better.

    The trapezoid area from (coverage 0, risk 0) through the expected generalised risk at every
    coverage k / N (ties in a random order, module note). It equals the closed form
    (1 - AUROC) * acc * (1 - acc) + (1 - acc)^2 / 2, with AUROC the chance that a right prediction
    is more confident than a wrong one (ties count one half) and acc the accuracy: the average risk
    of silently failing over all coverages. Unlike AURC it does not let the few most confident
    images dominate. NaN when N == 0.
    """
    _, wrong_sorted, ends = _sorted_groups(logits, labels, score)
    n = wrong_sorted.size
    if n == 0:
        return float("nan")
    return _augrc_from_errors(_expected_errors(wrong_sorted, ends), n)


def _augrc_from_errors(errors: np.ndarray, n: int) -> float:
    # trapezoids of width 1 / N over the generalised risk E_k / N, E_0 = 0
    return float((np.sum(errors) - errors[-1] / 2.0) / (n * n))


def optimal_aurc(correct: np.ndarray) -> float:
    """AURC of an oracle that answers every correct prediction first (the floor for this model).

    ``correct`` is the (N,) boolean correctness of the predictions. With m errors among N
    the oracle's risk at k is max(0, k - (N - m)) / k; this is the exact discrete mean, not the
    continuous approximation r + (1 - r) ln(1 - r) of Geifman et al. NaN when N == 0.
    """
    correct = as_bool_vector(correct, "correct")
    n = correct.size
    if n == 0:
        return float("nan")
    n_right = int(correct.sum())
    k = np.arange(1, n + 1, dtype=np.float64)
    return float(np.mean(np.maximum(0.0, k - n_right) / k))


def accuracy_at_coverage(logits: np.ndarray, labels: np.ndarray, coverage: float,
                         score: str = "msp") -> float:
    """Accuracy on the m most confident images, m = ceil(coverage * N) (at least the coverage).

    When the m-th image sits inside a tied group, the images taken from that group count with the
    group's accuracy (the expectation over a random order of the tied images, module note), so
    the value does not depend on input order. ``coverage`` is in (0, 1]; NaN when N == 0.
    """
    c = _check_coverage(coverage)
    _, wrong_sorted, ends = _sorted_groups(logits, labels, score)
    n = wrong_sorted.size
    if n == 0:
        return float("nan")
    m = _min_count(c, n)
    return float((m - _expected_errors(wrong_sorted, ends)[m - 1]) / m)


def selective_summary(logits: np.ndarray, labels: np.ndarray, score: str = "msp") -> dict:
    """The numbers a report row needs about abstaining on low confidence.

    Returns dict(accuracy (full coverage), acc_at_90, acc_at_80, aurc, optimal_aurc, e_aurc,
    augrc, n).
    ``e_aurc = aurc - optimal_aurc`` (Geifman et al. 2019) removes the part of AURC that only
    reflects the model's error rate, so models of different accuracy compare on how well their
    confidence orders their errors. Floats are NaN when N == 0.
    """
    _, wrong_sorted, ends = _sorted_groups(logits, labels, score)
    n = int(wrong_sorted.size)
    if n == 0:
        nan = float("nan")
        return {"accuracy": nan, "acc_at_90": nan, "acc_at_80": nan, "aurc": nan,
                "optimal_aurc": nan, "e_aurc": nan, "augrc": nan, "n": 0}
    # One sort for every number: the same expected-error curve aurc and accuracy_at_coverage use.
    errors = _expected_errors(wrong_sorted, ends)
    k = np.arange(1, n + 1, dtype=np.float64)
    a = float(np.mean(errors / k))
    opt = optimal_aurc(wrong_sorted == 0)

    def acc_at(c: float) -> float:
        m = _min_count(c, n)
        return float((m - errors[m - 1]) / m)

    return {"accuracy": acc_at(1.0), "acc_at_90": acc_at(0.9), "acc_at_80": acc_at(0.8),
            "aurc": a, "optimal_aurc": opt, "e_aurc": a - opt, "augrc": _augrc_from_errors(errors, n), "n": n}
