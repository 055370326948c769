"""cnnstress.analysis failures, gradcam, robustness and shortcut modules against hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cnnstress.analysis import failures, gradcam, metrics, robustness, shortcut


# ----------------------------------------------------------------------------- failures

def _logits_for(pred: int, conf: float, c: int) -> np.ndarray:
    """A logit row whose softmax puts ``conf`` on ``pred`` and the rest evenly elsewhere."""
    rest = (1.0 - conf) / (c - 1)
    row = np.full(c, math.log(rest))
    row[pred] = math.log(conf)
    return row


def test_canonical_failures_planted_case():
    s, n, c = 3, 20, 4
    labels = np.arange(n) % c
    logits = np.stack([np.stack([_logits_for(int(y), 0.9, c) for y in labels]) for _ in range(s)])

    def plant(img, seeds, conf):
        wrong = (labels[img] + 1) % c
        for i in seeds:
            logits[i, img] = _logits_for(int(wrong), conf, c)

    plant(3, [0, 1, 2], 0.90)   # every seed, confident
    plant(7, [0, 1, 2], 0.95)   # every seed, more confident: ranks first
    plant(11, [0, 2], 0.99)     # 2 of 3 seeds: after the unanimous ones despite higher confidence
    plant(15, [1], 0.99)        # 1 of 3 seeds: not a majority
    plant(5, [0, 1, 2], 0.40)   # wrong everywhere but not confident: not a high-confidence failure
    out = failures.canonical_failures(logits, labels, threshold=0.7, k=6, min_fraction=0.5)
    assert out.dtype == np.int64
    assert out.tolist() == [7, 3, 11]
    assert failures.canonical_failures(logits, labels, 0.7, k=2).tolist() == [7, 3]
    assert failures.canonical_failures(logits, labels, 0.7, min_fraction=1.0, strict=False).tolist() == [7, 3]
    assert failures.canonical_failures(logits, labels, 0.7, min_fraction=2 / 3).tolist() == [7, 3]
    assert failures.canonical_failures(logits, labels, 0.7, min_fraction=0.3).tolist() == [7, 3, 11, 15]
    with pytest.raises(ValueError, match="min_fraction"):
        failures.canonical_failures(logits, labels, 0.7, min_fraction=1.0)  # nothing can exceed every seed
    # A single seed given as (N, C).
    assert failures.canonical_failures(logits[1], labels, 0.7).tolist() == [15, 7, 3]


def test_canonical_failures_need_a_strict_majority_of_seeds():
    """'Most baseline seeds': 1 of 2 seeds does not qualify by default, 2 of 2 does; 2 of 4 neither."""
    n, c = 8, 4
    labels = np.arange(n) % c
    for s, fails_in, expected in ((2, [0], []), (2, [0, 1], [2]), (4, [0, 1], []), (4, [0, 1, 3], [2])):
        logits = np.stack([np.stack([_logits_for(int(y), 0.9, c) for y in labels]) for _ in range(s)])
        for i in fails_in:
            logits[i, 2] = _logits_for(int((labels[2] + 1) % c), 0.95, c)
        assert failures.canonical_failures(logits, labels, 0.7).tolist() == expected, (s, fails_in)
        # half of the seeds still counts when asked for "at least"
        at_least = failures.canonical_failures(logits, labels, 0.7, min_fraction=0.5, strict=False).tolist()
        assert at_least == ([2] if 2 * len(fails_in) >= s else [])


def test_canonical_failures_match_loop_on_random_logits():
    rng = np.random.default_rng(0)
    s, n, c = 4, 120, 5
    logits = rng.normal(size=(s, n, c)) * 3
    labels = rng.integers(0, c, size=n)
    out = failures.canonical_failures(logits, labels, threshold=0.6, k=10, min_fraction=0.5)
    keyed = []
    for img in range(n):
        confs = []
        for i in range(s):
            p = metrics.softmax(logits[i, img][None])[0]
            if int(np.argmax(p)) != labels[img] and p.max() > 0.6:
                confs.append(p.max())
        if confs and 2 * len(confs) > s:  # a strict majority of the seeds
            keyed.append((-len(confs) / s, -sum(confs) / len(confs), img))
    assert out.tolist() == [img for *_, img in sorted(keyed)][:10]


def test_failure_records_match_loop_and_are_json_ready():
    rng = np.random.default_rng(1)
    n, c = 80, 3
    logits = rng.normal(size=(n, c)) * 3
    labels = rng.integers(0, c, size=n).astype(np.int16)
    index = rng.permutation(10_000)[:n].astype(np.int32)
    names = ["cat", "dog", "ship"]
    recs = failures.failure_columns(logits, labels, index, 0.6, names).records()
    expected = []
    for pos in range(n):
        p = metrics.softmax(logits[pos][None])[0]
        pred = int(np.argmax(p))
        if pred != labels[pos] and p[pred] > 0.6:
            expected.append({"test_index": int(index[pos]), "position": pos, "true": int(labels[pos]),
                             "true_name": names[labels[pos]], "pred": pred, "pred_name": names[pred],
                             "confidence": float(p[pred])})
    expected.sort(key=lambda r: (-r["confidence"], r["position"]))
    assert len(recs) == len(expected) > 0
    for got, want in zip(recs, expected):
        assert got.keys() == want.keys()
        assert got["confidence"] == pytest.approx(want["confidence"], rel=1e-12)
        assert {k: v for k, v in got.items() if k != "confidence"} == {k: v for k, v in want.items() if k != "confidence"}
    assert json.loads(json.dumps(recs)) == recs
    with pytest.raises(ValueError, match="class_names"):
        failures.failure_columns(logits, labels, index, 0.6, names[:2])


# ----------------------------------------------------------------------------- gradcam

def _loop_upsample(m: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Per-pixel bilinear sampling with the align_corners=False source coordinates."""
    h, w = m.shape

    def src(j, n_in, n_out):
        x = max((j + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = min(int(math.floor(x)), n_in - 1)
        return i0, min(i0 + 1, n_in - 1), x - i0

    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        y0, y1, fy = src(i, h, out_h)
        for j in range(out_w):
            x0, x1, fx = src(j, w, out_w)
            out[i, j] = ((1 - fy) * ((1 - fx) * m[y0, x0] + fx * m[y0, x1])
                         + fy * ((1 - fx) * m[y1, x0] + fx * m[y1, x1]))
    return out


def test_upsample_bilinear_hand_computed_2x2_to_4x4():
    m = np.array([[[0.0, 4.0], [8.0, 12.0]]], dtype=np.float16)
    expected = np.array([[0, 1, 3, 4], [2, 3, 5, 6], [6, 7, 9, 10], [8, 9, 11, 12]], dtype=np.float32)
    out = gradcam.upsample_bilinear(m, size=4)
    assert out.dtype == np.float32 and out.shape == (1, 4, 4)
    np.testing.assert_array_equal(out[0], expected)


def test_upsample_bilinear_matches_per_pixel_loop_and_invariants():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(2, 8, 6)).astype(np.float16)
    out = gradcam.upsample_bilinear(maps, size=(32, 20))
    assert out.shape == (2, 32, 20)
    for k in range(2):
        np.testing.assert_allclose(out[k], _loop_upsample(maps[k].astype(np.float64), 32, 20), rtol=1e-6, atol=1e-6)
    const = np.full((3, 8, 8), 2.5, dtype=np.float16)
    np.testing.assert_array_equal(gradcam.upsample_bilinear(const), np.full((3, 32, 32), 2.5, dtype=np.float32))
    same = rng.normal(size=(1, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(gradcam.upsample_bilinear(same, 32), same, rtol=0, atol=1e-6)
    down = gradcam.upsample_bilinear(maps[:, :, :6], size=(4, 3))
    np.testing.assert_allclose(down[0], _loop_upsample(maps[0].astype(np.float64), 4, 3), atol=1e-6)
    with pytest.raises(ValueError, match="maps"):
        gradcam.upsample_bilinear(np.zeros((8, 8)))


def test_normalize_maps_range_and_zero_maps():
    rng = np.random.default_rng(3)
    maps = np.concatenate([rng.normal(size=(3, 8, 8)), np.zeros((1, 8, 8)), np.full((1, 8, 8), 7.0)])
    out = gradcam.normalize_maps(maps.astype(np.float16))
    assert out.dtype == np.float32 and out.shape == maps.shape
    for k in range(3):
        m = maps[k].astype(np.float16).astype(np.float64)
        np.testing.assert_allclose(out[k], (m - m.min()) / (m.max() - m.min()), rtol=1e-6, atol=1e-7)
        assert out[k].min() == 0.0 and out[k].max() == 1.0
    assert np.all(out[3] == 0) and np.all(out[4] == 0)


def test_energy_in_mask():
    rng = np.random.default_rng(4)
    masks = rng.random((3, 32, 32)) < 0.3
    # A map equal to its mask keeps all its mass inside, also when negatives surround it.
    assert gradcam.energy_in_mask(masks.astype(np.float16), masks) == pytest.approx([1.0, 1.0, 1.0])
    signed = np.where(masks, 1.0, -5.0)
    np.testing.assert_allclose(gradcam.energy_in_mask(signed, masks), 1.0)
    # Low-resolution maps: compare with an explicit upsample, clip and sum.
    maps = rng.normal(size=(3, 8, 8))
    got = gradcam.energy_in_mask(maps, masks)
    for k in range(3):
        up = np.clip(_loop_upsample(maps[k], 32, 32), 0, None)
        assert got[k] == pytest.approx(up[masks[k]].sum() / up.sum(), rel=1e-5)
    zero = gradcam.energy_in_mask(np.zeros((1, 8, 8)), masks[:1])
    assert math.isnan(zero[0])


def test_pointing_game_against_a_loop():
    rng = np.random.default_rng(6)
    masks = rng.random((6, 32, 32)) < 0.4
    maps = rng.normal(size=(6, 8, 8))
    maps[4] = 0.0  # no positive mass: nothing to point with
    maps[5] = -1.0
    got = gradcam.pointing_game(maps, masks)
    for k in range(6):
        up = _loop_upsample(maps[k], 32, 32)
        if up.max() <= 0:
            assert math.isnan(got[k])
            continue
        peaks = [(i, j) for i in range(32) for j in range(32) if up[i, j] >= up.max() - 1e-6]
        assert got[k] == float(any(masks[k][i, j] for i, j in peaks))
    # a map whose peak sits in the mask hits; moved out, it misses
    one = np.zeros((1, 32, 32))
    one[0, 5, 5] = 1.0
    mask = np.zeros((1, 32, 32), bool)
    mask[0, 4:7, 4:7] = True
    assert gradcam.pointing_game(one, mask)[0] == 1.0
    assert gradcam.pointing_game(np.roll(one, 10, axis=2), mask)[0] == 0.0
    with pytest.raises(ValueError, match="masks must have shape"):
        gradcam.pointing_game(maps, masks[0])


def test_auc_trapezoid():
    assert gradcam.auc(np.linspace(0.0, 1.0, 11)) == pytest.approx(0.5)
    assert gradcam.auc(np.full(7, 0.3)) == pytest.approx(0.3)
    rng = np.random.default_rng(5)
    curves = rng.random((4, 2, 9))
    got = gradcam.auc(curves)
    assert got.shape == (4, 2)
    for idx in np.ndindex(4, 2):
        y = curves[idx]
        explicit = sum((y[i] + y[i + 1]) / 2 * (1 / 8) for i in range(8))
        assert got[idx] == pytest.approx(explicit, rel=1e-12)
    with pytest.raises(ValueError, match="K >= 2"):
        gradcam.auc(np.array([1.0]))


# ----------------------------------------------------------------------------- robustness

def test_corruption_table():
    acc = {("contrast", 5): 0.3, ("gaussian_noise", 3): 0.5, ("contrast", 1): 0.8,
           ("gaussian_noise", 1): 0.7, ("contrast", 3): 0.6, ("gaussian_noise", 5): 0.2}
    t = robustness.corruption_table(0.9, acc)
    assert t["per_corruption"] == {"contrast": [0.8, 0.6, 0.3], "gaussian_noise": [0.7, 0.5, 0.2]}
    assert t["severities"] == {"contrast": [1, 3, 5], "gaussian_noise": [1, 3, 5]}
    assert t["mean_corruption_accuracy"] == pytest.approx(3.1 / 6)
    assert t["relative"] == pytest.approx(3.1 / 6 / 0.9)
    assert math.isnan(robustness.corruption_table(0.0, acc)["relative"])
    with pytest.raises(ValueError):
        robustness.corruption_table(0.9, {})


def test_classes_breaking_first_planted():
    c = 5
    labels = np.repeat(np.arange(4), 10)  # class 4 absent
    clean = labels.copy()
    sev1 = labels.copy()
    sev3 = labels.copy()
    sev5 = labels.copy()
    sev1[labels == 2] = 0            # class 2 loses everything at severity 1
    sev1[np.flatnonzero(labels == 0)[:3]] = 1  # classes 0 and 1 both lose 3 at severity 1 ...
    sev1[np.flatnonzero(labels == 1)[:3]] = 0
    sev3[np.flatnonzero(labels == 1)[:6]] = 0  # ... and class 1 loses more at severity 3
    sev3[np.flatnonzero(labels == 0)[:4]] = 1
    sev5[:] = 0
    order = robustness.classes_breaking_first(labels, clean, {5: sev5, 1: sev1, 3: sev3}, c)
    assert order == [2, 1, 0, 3, 4]


# ----------------------------------------------------------------------------- shortcut

def test_shortcut_accuracy_matches_loop():
    rng = np.random.default_rng(6)
    n, c = 300, 10
    labels = rng.integers(0, c, size=n)
    bg = np.where(rng.random(n) < 0.6, labels, rng.integers(0, c, size=n))
    preds = np.where(rng.random(n) < 0.5, labels, bg)
    r = shortcut.shortcut_accuracy(labels, preds, bg)
    conf = [i for i in range(n) if bg[i] != labels[i]]
    alig = [i for i in range(n) if bg[i] == labels[i]]
    assert r["n_conflicting"] == len(conf) and r["n_aligned"] == len(alig)
    assert r["acc_conflicting"] == pytest.approx(sum(preds[i] == labels[i] for i in conf) / len(conf))
    assert r["acc_aligned"] == pytest.approx(sum(preds[i] == labels[i] for i in alig) / len(alig))
    assert r["follows_background"] == pytest.approx(sum(preds[i] == bg[i] for i in conf) / len(conf))
    empty = shortcut.shortcut_accuracy(labels, preds, labels)
    assert empty["n_conflicting"] == 0 and math.isnan(empty["acc_conflicting"])
    assert math.isnan(empty["follows_background"])


# ----------------------------------------------------------------------------- imports

def test_analysis_modules_import_only_numpy():
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\n"
            "import cnnstress.analysis.metrics, cnnstress.analysis.calibration, cnnstress.analysis.compare\n"
            "import cnnstress.analysis.failures, cnnstress.analysis.gradcam, cnnstress.analysis.robustness\n"
            "import cnnstress.analysis.shortcut\n"
            "print(sorted(m for m in ('torch', 'scipy', 'h5py', 'matplotlib') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- one implementation each


def test_failure_columns_records_and_given_probabilities():
    """The report's failures.json columns: their records, a prefix of them, and given probabilities."""
    rng = np.random.default_rng(11)
    n, c = 400, 7
    logits = (rng.normal(size=(n, c)) * 3).astype(np.float32)
    labels = rng.integers(0, c, size=n)
    index = rng.permutation(10 * n)[:n]
    names = [f"k{i}" for i in range(c)]
    cols = failures.failure_columns(logits, labels, index, 0.6, names)
    assert len(cols) == len(metrics.high_confidence_failures(logits, labels, 0.6))
    assert cols.records(3) == cols.records()[:3]
    same = failures.failure_columns(logits, labels, index, 0.6, names, probs=metrics.softmax(logits))
    assert same.records() == cols.records()
    with pytest.raises(ValueError):
        failures.failure_columns(logits, labels, index, 0.6, names[:-1])


def test_breaking_from_counts_is_classes_breaking_first():
    """Pooled per-class counts (what gather keeps per run) rank classes as classes_breaking_first does
    on the concatenated predictions."""
    rng = np.random.default_rng(12)
    c, n = 6, 300
    labels = np.concatenate([rng.integers(0, c - 1, size=n)])  # class c-1 absent
    clean = np.where(rng.random(n) < 0.8, labels, rng.integers(0, c, size=n))
    by_sev = {s: np.where(rng.random(n) < 0.8 - 0.1 * s, labels, rng.integers(0, c, size=n)) for s in (1, 3, 5)}
    want = robustness.classes_breaking_first(labels, clean, by_sev, c)
    # the same images split into two "seeds", counts summed
    halves = (slice(0, n // 2), slice(n // 2, n))
    support = sum(robustness.class_counts(labels[h], clean[h], c)[0] for h in halves)
    right = sum(robustness.class_counts(labels[h], clean[h], c)[1] for h in halves)
    pooled = {s: sum(robustness.class_counts(labels[h], p[h], c)[1] for h in halves) for s, p in by_sev.items()}
    order, drop, present = robustness.breaking_from_counts(support, right, pooled)
    assert [int(i) for i in order] == want
    assert not present[c - 1] and np.isnan(drop[c - 1])
    acc = metrics.per_class_accuracy(labels, clean, c) - metrics.per_class_accuracy(labels, by_sev[1], c)
    np.testing.assert_array_equal(drop[present], acc[present])


# ------------------------------------------------------------------- corruption error (CE, mCE)


def test_corruption_error_against_a_loop():
    rng = np.random.default_rng(4)
    names = ["fog", "snow", "contrast", "jpeg_compression"]
    baseline_runs = [{(c, s): float(rng.uniform(0.3, 0.9)) for c in names for s in (1, 2, 3, 4, 5)} for _ in range(3)]
    del baseline_runs[2][("fog", 4)]  # a partial run: the mean is over the runs that have the key
    run = {(c, s): float(rng.uniform(0.3, 0.9)) for c in names[:3] for s in (1, 3, 5)}
    run[("spatter", 1)] = 0.5  # the baseline lacks it: no CE
    base = robustness.mean_accuracy(baseline_runs)
    assert base[("fog", 4)] == pytest.approx((baseline_runs[0][("fog", 4)] + baseline_runs[1][("fog", 4)]) / 2)
    out = robustness.corruption_error(run, base)
    want = {}
    for c in names[:3]:
        num = den = 0.0
        for s in (1, 3, 5):
            num += 1 - run[(c, s)]
            den += 1 - sum(r[(c, s)] for r in baseline_runs if (c, s) in r) / sum((c, s) in r for r in baseline_runs)
        want[c] = num / den
    assert out["corruption_error"] == pytest.approx(want, rel=1e-12)
    assert out["mce"] == pytest.approx(sum(want.values()) / 3, rel=1e-12)
    assert out["severities"] == {c: [1, 3, 5] for c in names[:3]}
    # the baseline against itself: CE 1 everywhere
    same = robustness.corruption_error(base, base)
    assert all(v == pytest.approx(1.0) for v in same["corruption_error"].values()) and same["mce"] == pytest.approx(1.0)


def test_corruption_error_edge_cases():
    perfect = {("fog", 1): 1.0, ("fog", 2): 1.0}
    out = robustness.corruption_error({("fog", 1): 0.5, ("fog", 2): 1.0}, perfect)
    assert out["corruption_error"]["fog"] == math.inf and math.isnan(out["mce"])
    out = robustness.corruption_error(dict(perfect), {**perfect, ("snow", 1): 0.5})
    assert math.isnan(out["corruption_error"]["fog"]) and list(out["corruption_error"]) == ["fog"]
    out = robustness.corruption_error({("snow", 1): 0.9, ("fog", 1): 0.9}, {("snow", 1): 0.8, ("fog", 1): 1.0})
    assert out["corruption_error"]["snow"] == pytest.approx(0.5) and out["mce"] == pytest.approx(0.5)
    assert robustness.corruption_error({}, perfect)["corruption_error"] == {}
    assert math.isnan(robustness.corruption_error({}, perfect)["mce"])
    with pytest.raises(ValueError, match="pairs"):
        robustness.corruption_error({"fog": 0.5}, perfect)


# Student t 0.975 quantiles from printed tables (df 1 to 4): an interval computed here independently
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}


def _drop_interval(drops: list[float]) -> tuple[float, float]:
    n = len(drops)
    mean = sum(drops) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in drops) / (n - 1))
    half = T975[n - 1] * sd / math.sqrt(n)
    return mean - half, mean + half


def test_drop_beyond_seeds_both_ways():
    """Class 0 drops by 10 to 12 points in every seed (beyond the spread); class 1 drops by +5, -5,
    +2 points (a seed-to-seed wobble); class 2 is unchanged; class 3 has no image in seed 2."""
    support = np.array([[50, 40, 30, 10], [50, 40, 30, 0], [50, 40, 30, 10]])
    clean = np.array([[40, 30, 20, 8], [40, 30, 20, 0], [41, 30, 20, 8]])
    low = np.array([[35, 28, 20, 2], [34, 32, 20, 0], [35, 29, 20, 2]])
    got = robustness.drop_beyond_seeds(support, clean, low)
    assert got["n_seeds"] == 3
    drops = (clean - low) / np.where(support > 0, support, 1)
    for c in range(3):
        lo, hi = _drop_interval(list(drops[:, c]))
        assert got["lo"][c] == pytest.approx(lo, abs=2e-4) and got["hi"][c] == pytest.approx(hi, abs=2e-4)
        assert got["mean"][c] == pytest.approx(float(drops[:, c].mean()), abs=1e-12)
    assert got["beyond"].tolist() == [True, False, False, False]
    assert math.isnan(got["lo"][3]), "a class missing from a seed is not judged"


def test_drop_beyond_seeds_needs_two_seeds_and_identical_drops_count():
    one = robustness.drop_beyond_seeds(np.array([[10, 10]]), np.array([[9, 9]]), np.array([[1, 9]]))
    assert one["n_seeds"] == 1 and not one["beyond"].any() and np.isnan(one["lo"]).all()
    # the same drop of 2 of 10 images in both seeds: no spread, an interval of that drop, above 0
    same = robustness.drop_beyond_seeds(np.array([[10, 10], [10, 10]]), np.array([[9, 9], [9, 9]]),
                                        np.array([[7, 9], [7, 9]]))
    assert same["beyond"].tolist() == [True, False]
    assert same["lo"][0] == pytest.approx(0.2) and same["hi"][0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="share one"):
        robustness.drop_beyond_seeds(np.ones((2, 3)), np.ones((2, 3)), np.ones((2, 2)))


def _top_share_over_orders(up: np.ndarray, mask: np.ndarray, share: float) -> float:
    """Mean over every order of the pixels of: sort by value (stable), take the first k, count inside."""
    import itertools

    vals, ins = up.ravel().tolist(), mask.ravel().tolist()
    k = math.ceil(share * len(vals) - 1e-9)
    total, count = 0.0, 0
    for perm in itertools.permutations(range(len(vals))):
        order = sorted(perm, key=lambda i: -vals[i])  # stable: ties in the permutation's order
        total += sum(ins[i] for i in order[:k]) / k
        count += 1
    return total / count


def test_top_share_in_mask_is_the_mean_over_tie_orders():
    rng = np.random.default_rng(0)
    for trial in range(6):
        # maps at the mask resolution (upsampling is the identity), few distinct values: many ties
        maps = rng.integers(0, 3, size=(1, 2, 3)).astype(np.float64)
        maps[0, 0, 0] = 2.0  # some positive mass
        masks = rng.random((1, 2, 3)) < 0.5
        for share in (0.2, 0.5, 1.0):
            got = gradcam.top_share_in_mask(maps, masks, share)[0]
            assert got == pytest.approx(_top_share_over_orders(maps[0], masks[0], share), abs=1e-12), (trial, share)


def test_top_share_in_mask_without_ties_and_edge_cases():
    rng = np.random.default_rng(1)
    maps = rng.random((3, 8, 8))
    masks = rng.random((3, 32, 32)) < 0.3
    up = gradcam.upsample_bilinear(maps, size=(32, 32)).astype(np.float64).reshape(3, -1)
    k = math.ceil(0.2 * 32 * 32)
    want = [masks[i].ravel()[np.argsort(-up[i])[:k]].mean() for i in range(3)]
    np.testing.assert_allclose(gradcam.top_share_in_mask(maps, masks), want, atol=1e-12)
    assert np.isnan(gradcam.top_share_in_mask(np.zeros((1, 4, 4)), np.ones((1, 4, 4), bool))[0])
    with pytest.raises(ValueError, match="share"):
        gradcam.top_share_in_mask(maps, masks, 0.0)
