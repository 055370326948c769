"""Simulations of the comparison statistics (analysis.verdicts): interval coverage and the false
discovery rate of "What the modification changed". Used by tests/test_analysis_verdicts.py and, run
as a script, prints the tables of docs/statistics.md. Vectorised numpy, seeded.

Per-run metric: run i of the baseline is mu + s_i + e_bi, of the variant mu + delta + s_i + e_vi,
with a seed effect s_i (what pairing removes) and noise e of the same distribution on both sides
(normal, or skewed: a centred gamma of shape 2, or a centred exponential). The interval is ``verdicts.t_interval`` over the
paired differences, as ``compare_metric`` computes it.

Per-image accuracy: N images with difficulty u_j ~ U(0.2, 0.8); in seed pair i the baseline is right
on image j with probability u_j + s_i, the variant with u_j + s_i + delta (independent draws). The
quantity the interval is about is the mean over the pairs of the variant's minus the baseline's
accuracy on the image population, delta exactly (no clipping happens). The interval is
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


def _accuracy_runs(rng, reps: int, n: int, delta: float):
    u = rng.uniform(0.2, 0.8, (reps, 1, N_IMAGES))
    s = np.clip(rng.normal(0.0, SEED_SD, (reps, n, 1)), -0.05, 0.05)
    base = rng.random((reps, n, N_IMAGES)) < u + s
    var = rng.random((reps, n, N_IMAGES)) < u + s + delta
    return base, var


def per_image_floor(rng) -> float:
    base, _ = _accuracy_runs(rng, 4000, 2, 0.0)
    acc = base.mean(axis=2)
    return float(np.abs(acc[:, 0] - acc[:, 1]).mean())


def per_image_coverage(n: int, floors: float, reps: int = 2000, seed: int = 0) -> float:
    rng = np.random.default_rng(seed)
    delta = floors * per_image_floor(rng)
    hits = 0
    for start in range(0, reps, 500):  # chunks bound memory (500 x n x N booleans per side)
        base, var = _accuracy_runs(rng, min(500, reps - start), n, delta)
        d = (var.astype(np.float64) - base).mean(axis=1)  # (reps, N): per image, over the pairs
        r = V.t_interval(d)
        hits += int(np.sum((r["lo"] <= delta) & (delta <= r["hi"])))
    return hits / reps


def table_rows(m: int, n: int, n_real: int, real_floors: float, reps: int = 2000, seed: int = 0):
    """Simulated tables of ``m`` per-run metrics (independent, normal noise), ``n`` seed pairs,
    the first ``n_real`` shifted by ``real_floors`` noise floors, judged as "What the modification
    changed" judges them (verdicts.t_interval p-value, verdicts.bh_reject over the table, |delta|
    > the baseline's noise floor). Returns (changed (reps, m) bool, is_real (m,) bool)."""
    rng = np.random.default_rng(seed)
    delta = np.zeros(m)
    delta[:n_real] = real_floors * per_run_floor("normal", rng)
    s = rng.normal(0.0, SEED_SD, (reps, m, n))
    base = 0.5 + s + _noise(rng, "normal", (reps, m, n))
    var = 0.5 + delta[None, :, None] + s + _noise(rng, "normal", (reps, m, n))
    r = V.t_interval(var - base)
    iu = np.triu_indices(n, k=1)
    floor = np.abs(base[..., :, None] - base[..., None, :])[..., iu[0], iu[1]].mean(axis=-1)
    changed = V.bh_reject(r["p"]) & (np.abs(r["mean"]) > floor)
    return changed, np.arange(m) < n_real


def any_changed_rate(m: int = 30, n: int = 5, reps: int = 2000, seed: int = 0) -> float:
    changed, _ = table_rows(m, n, 0, 0.0, reps, seed)
    return float(changed.any(axis=1).mean())


def false_discovery_rate(m: int = 30, n: int = 5, n_real: int = 10, real_floors: float = 3.0,
                         reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """(mean over tables of false changed rows / changed rows (0 when none), mean share of real
    changes found)."""
    changed, real = table_rows(m, n, n_real, real_floors, reps, seed)
    false = (changed & ~real).sum(axis=1)
    total = changed.sum(axis=1)
    fdp = np.where(total > 0, false / np.maximum(total, 1), 0.0)
    return float(fdp.mean()), float((changed & real).sum(axis=1).mean() / max(n_real, 1))


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
    print("any changed row, identical variants (30 metrics):", [any_changed_rate(n=n) for n in (3, 5, 10)])
    print("FDR, 10 real changes of 3 floors among 30:", [false_discovery_rate(n=n) for n in (3, 5, 10)])
