"""Simulations of the comparison statistics (analysis.verdicts): interval coverage and the false
discovery rate of "What the modification changed". Used by tests/test_analysis_verdicts.py and, run
as a script, prints the tables of docs/statistics.md. Vectorised numpy, seeded.

Per-run metric: run i of the baseline is mu + s_i + e_bi, of the variant mu + delta + s_i + e_vi,
with a seed effect s_i (what pairing removes) and noise e of the same distribution on both sides
(normal, or skewed: a centred gamma of shape 2, or a centred exponential). The interval is ``verdicts.t_interval`` over the
paired differences, as ``compare_metric`` computes it.

Per-image accuracy: N images with difficulty u_j ~ U(0.2, 0.8); run r of seed i is right on image j
with probability u_j + s_i + t_r (+ delta for the variant): s_i shared by the pair, t_r the run's own
seed noise, not shared (independent draws per image). The image-level interval is about the networks
at hand: its target is the mean over the pairs of the variant's minus the baseline's accuracy on the
image population, delta + mean_i (t_vi - t_bi) (exact: no clipping happens). The interval is
``verdicts.t_interval`` over the per-image differences averaged over the pairs.

A "noise floor" of true difference is the expected noise floor of the baseline: E|m_i - m_k| between
two baseline seeds, computed here by simulation.
"""

from __future__ import annotations

import numpy as np

from cnnstress.analysis import verdicts as V

SEED_SD = 0.01   # seed-to-seed spread shared by a pair
NOISE_SD = 0.01  # per-run noise of each side
N_IMAGES = 400
TABLE_IMAGES = 200  # images of a per-image metric in the simulated tables (fewer: they are many)


#: Noise kinds: normal, skewed (centred gamma, shape 2: skewness 1.4) and exponential (skewness 2).
KINDS = ("normal", "skewed", "exponential")


def _noise(rng, kind: str, shape) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, NOISE_SD, shape)
    if kind == "skewed":
        return NOISE_SD * (rng.gamma(2.0, 1.0, shape) - 2.0) / np.sqrt(2.0)  # mean 0, sd NOISE_SD
    return NOISE_SD * (rng.exponential(1.0, shape) - 1.0)


def per_run_floor(kind: str, rng) -> float:
    """E|m_i - m_k| of two baseline seeds (seed effect + noise)."""
    a = rng.normal(0, SEED_SD, 200_000) + _noise(rng, kind, 200_000)
    b = rng.normal(0, SEED_SD, 200_000) + _noise(rng, kind, 200_000)
    return float(np.abs(a - b).mean())


def per_run_coverage(n: int, kind: str, floors: float, reps: int = 10_000, seed: int = 0) -> float:
    """Share of ``reps`` sweeps of ``n`` seed pairs whose 95% interval covers the true difference."""
    rng = np.random.default_rng(seed)
    delta = floors * per_run_floor(kind, rng)
    s = rng.normal(0.0, SEED_SD, (reps, n))
    base = 0.5 + s + _noise(rng, kind, (reps, n))
    var = 0.5 + delta + s + _noise(rng, kind, (reps, n))
    r = V.t_interval(var - base)
    return float(np.mean((r["lo"] <= delta) & (delta <= r["hi"])))


def _accuracy_runs(rng, reps: int, n: int, delta: float, m: int = 1, n_images: int = N_IMAGES):
    """(reps, m, n, N) bool right-or-wrong of the baseline and the variant runs, and the target
    (reps, m) of the image-level interval (see the module docstring)."""
    u = rng.uniform(0.2, 0.8, (reps, m, 1, n_images))
    s = np.clip(rng.normal(0.0, SEED_SD, (reps, m, n, 1)), -0.05, 0.05)
    tb = np.clip(rng.normal(0.0, SEED_SD, (reps, m, n, 1)), -0.05, 0.05)
    tv = np.clip(rng.normal(0.0, SEED_SD, (reps, m, n, 1)), -0.05, 0.05)
    base = rng.random((reps, m, n, n_images)) < u + s + tb
    var = rng.random((reps, m, n, n_images)) < u + s + tv + delta
    return base, var, delta + (tv - tb)[..., 0].mean(axis=-1)


def per_image_floor(rng, n_images: int = N_IMAGES) -> float:
    """E|a_i - a_k| of the accuracies of two baseline seeds."""
    base, _, _ = _accuracy_runs(rng, 4000, 2, 0.0, n_images=n_images)
    acc = base[:, 0].mean(axis=2)
    return float(np.abs(acc[:, 0] - acc[:, 1]).mean())


def per_image_coverage(n: int, floors: float, reps: int = 2000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    delta = floors * per_image_floor(rng)
    hits = 0
    for start in range(0, reps, 500):  # chunks bound memory (500 x n x N booleans per side)
        base, var, target = _accuracy_runs(rng, min(500, reps - start), n, delta)
        d = (var[:, 0].astype(np.float64) - base[:, 0]).mean(axis=1)  # (reps, N): per image, over the pairs
        r = V.t_interval(d)
        hits += int(np.sum((r["lo"] <= target[:, 0]) & (target[:, 0] <= r["hi"])))
    return hits / reps


def _floor(metric: np.ndarray) -> np.ndarray:
    """Mean |m_i - m_k| over the last axis's pairs (the noise floor, vectorised)."""
    n = metric.shape[-1]
    iu = np.triu_indices(n, k=1)
    return np.abs(metric[..., :, None] - metric[..., None, :])[..., iu[0], iu[1]].mean(axis=-1)


def table_rows(m: int, n: int, n_real: int, real_floors: float, reps: int = 2000, seed: int = 0,
               m_img: int = 0, n_real_img: int = 0):
    """Simulated tables of "What the modification changed": ``m`` per-run metrics (normal noise)
    and ``m_img`` per-image accuracies, ``n`` seed pairs, all independent; the first ``n_real`` (and
    ``n_real_img``) shifted by ``real_floors`` noise floors. Judged as the report judges them: the
    p-value (per run: the paired t-test; per image: the larger of the test over images and the paired
    t-test over the seeds' accuracies), Benjamini-Hochberg over the whole table, |delta| > the
    baseline's noise floor. Returns (changed (reps, m + m_img) bool, is_real (m + m_img,) bool)."""
    rng = np.random.default_rng(seed)
    delta = np.zeros(m)
    delta[:n_real] = real_floors * per_run_floor("normal", rng)
    s = rng.normal(0.0, SEED_SD, (reps, m, n))
    base = 0.5 + s + _noise(rng, "normal", (reps, m, n))
    var = 0.5 + delta[None, :, None] + s + _noise(rng, "normal", (reps, m, n))
    r = V.t_interval(var - base)
    p, deltas, floors = [r["p"]], [r["mean"]], [_floor(base)]
    if m_img:
        img_delta = real_floors * per_image_floor(rng, TABLE_IMAGES)
        p_img = np.empty((reps, m_img))
        d_img = np.empty((reps, m_img))
        f_img = np.empty((reps, m_img))
        for start in range(0, reps, 100):
            stop = min(reps, start + 100)
            for j in range(m_img):
                b, v, _ = _accuracy_runs(rng, stop - start, n, img_delta if j < n_real_img else 0.0,
                                         n_images=TABLE_IMAGES)
                b, v = b[:, 0].astype(np.float64), v[:, 0].astype(np.float64)
                images = V.t_interval((v - b).mean(axis=1))
                seeds = V.t_interval(v.mean(axis=2) - b.mean(axis=2))
                p_img[start:stop, j] = np.maximum(images["p"], seeds["p"])
                d_img[start:stop, j] = images["mean"]
                f_img[start:stop, j] = _floor(b.mean(axis=2))
        p.append(p_img)
        deltas.append(d_img)
        floors.append(f_img)
    p, deltas, floors = (np.concatenate(x, axis=1) for x in (p, deltas, floors))
    changed = V.bh_reject(p) & (np.abs(deltas) > floors)
    real = np.concatenate([np.arange(m) < n_real, np.arange(m_img) < n_real_img])
    return changed, real


def any_changed_rate(m: int = 25, n: int = 5, reps: int = 2000, seed: int = 0, m_img: int = 5) -> float:
    changed, _ = table_rows(m, n, 0, 0.0, reps, seed, m_img=m_img)
    return float(changed.any(axis=1).mean())


def false_discovery_rate(m: int = 25, n: int = 5, n_real: int = 8, real_floors: float = 3.0,
                         reps: int = 2000, seed: int = 0, m_img: int = 5, n_real_img: int = 2) -> tuple[float, float]:
    """(mean over tables of false changed rows / changed rows (0 when none), mean share of real
    changes found)."""
    changed, real = table_rows(m, n, n_real, real_floors, reps, seed, m_img=m_img, n_real_img=n_real_img)
    false = (changed & ~real).sum(axis=1)
    total = changed.sum(axis=1)
    fdp = np.where(total > 0, false / np.maximum(total, 1), 0.0)
    return float(fdp.mean()), float((changed & real).sum(axis=1).mean() / max(real.sum(), 1))


SEEDS = (2, 3, 5, 10)

if __name__ == "__main__":
    print("| metric | noise | true difference | " + " | ".join(f"{n} seeds" for n in SEEDS) + " |")
    print("|---|---|---|" + "---|" * len(SEEDS))
    for kind in KINDS:
        for k, floors in enumerate((0.0, 1.0)):
            cov = [per_run_coverage(n, kind, floors, seed=10 * k + n) for n in SEEDS]
            print(f"| per run | {kind} | {floors:g} noise floor | " + " | ".join(f"{c:.3f}" for c in cov) + " |")
    for k, floors in enumerate((0.0, 1.0)):
        cov = [per_image_coverage(n, floors, seed=10 * k + n) for n in SEEDS]
        print(f"| per-image accuracy | Bernoulli | {floors:g} noise floor | " + " | ".join(f"{c:.3f}" for c in cov) + " |")
    for n in (3, 5, 10):
        fdr, found = false_discovery_rate(n=n, seed=n)
        print(f"| {n} | {any_changed_rate(n=n, seed=n):.3f} | {fdr:.3f} | {100 * found:.0f}% |")
