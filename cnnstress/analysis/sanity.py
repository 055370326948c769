"""Sanity checks for explanation maps: do they change when the weights are randomised?

Adebayo et al. 2018 ("Sanity checks for saliency maps"), cascading randomisation: re-initialise
the model's layers one at a time from the top and recompute the maps. A map that explains the
model must drift away from the trained model's map as more layers are randomised; a map that
stays similar depends on the input (edges, the object) but not on what the model learnt.

Shapes: M maps of h x w pixels, P = h * w, S randomisation steps. Maps are compared pixel-wise in
pairs: ``a[i]`` with ``b[i]`` (the same image under two models). Maps may be float16 (as stored);
everything is computed in float64.

Two similarity measures, both independent of any monotone rescaling of a map:

- Spearman rank correlation, signed, with average ranks for tied pixels. A constant map has no
  ranking, so its correlation with anything is NaN (not 0: "no ranking" is not "unrelated
  ranking"); aggregates skip NaN and report how many maps counted. Adebayo et al. also plot
  |rho| (gradient signs can flip); ``randomization_curve`` reports both.
- Top-k overlap: the share of a's k highest pixels that are also among b's k highest,
  k = ceil(k_fraction * P). Tied pixels at the cut are taken in row-major order (the lower flat
  index first), so the result is deterministic; a constant map thus selects its first k pixels.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from cnnstress.analysis.ood import _min_count


def _as_maps(maps: np.ndarray, name: str) -> np.ndarray:
    """Return ``maps`` as a finite float64 (M, h, w) array, or raise ValueError naming ``name``."""
    arr = np.asarray(maps, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise ValueError(f"{name} must have shape (M, h, w) with h, w >= 1, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _pair(a: np.ndarray, b: np.ndarray, name_a: str = "a", name_b: str = "b") -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_maps(a, name_a), _as_maps(b, name_b)
    if x.shape != y.shape:
        raise ValueError(f"{name_b} has shape {y.shape}, {name_a} has shape {x.shape}; they must match")
    return x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1)


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Row-wise 1-based ranks of an (M, P) array, tied values sharing their mean rank.

    One sort for all rows (O(M P log P)); a 1-D input is ranked as one row.
    """
    x = np.asarray(values, dtype=np.float64)
    one_d = x.ndim == 1
    x = np.atleast_2d(x)
    if x.ndim != 2:
        raise ValueError(f"values must have shape (M, P) or (P,), got shape {np.shape(values)}")
    m, p = x.shape
    if x.size == 0:
        return x.copy()[0] if one_d else x.copy()
    order = np.argsort(x, axis=1, kind="stable")
    xs = np.take_along_axis(x, order, axis=1)
    new = np.ones((m, p), dtype=bool)          # a run of equal values starts here; every row
    new[:, 1:] = xs[:, 1:] != xs[:, :-1]       # starts a run, so runs never cross rows
    starts = np.flatnonzero(new.ravel())
    lengths = np.diff(np.r_[starts, m * p])
    mean_rank = starts % p + (lengths + 1) / 2.0  # ranks start%p+1 .. start%p+length
    ranks = np.empty((m, p), dtype=np.float64)
    np.put_along_axis(ranks, order, np.repeat(mean_rank, lengths).reshape(m, p), axis=1)
    return ranks[0] if one_d else ranks


def spearman_per_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(M,) float64 signed Spearman correlation of each map pair ``a[i]``, ``b[i]`` (M, h, w).

    Pearson correlation of the average ranks (the tie-corrected Spearman). NaN where either map is
    constant (no ranking to correlate), so aggregate with a NaN-skipping mean.
    """
    x, y = _pair(a, b)
    rx, ry = average_ranks(x), average_ranks(y)
    dx = rx - rx.mean(axis=1, keepdims=True)
    dy = ry - ry.mean(axis=1, keepdims=True)
    den = np.sqrt((dx * dx).sum(axis=1) * (dy * dy).sum(axis=1))
    rho = np.full(x.shape[0], np.nan)
    # Ranks of a constant row are all (P + 1) / 2 exactly, so its deviations are exactly 0.
    np.divide((dx * dy).sum(axis=1), den, out=rho, where=den > 0)
    return np.clip(rho, -1.0, 1.0)


def _topk_mask(x: np.ndarray, k: int) -> np.ndarray:
    """(M, P) bool: the k largest of each row, ties taken in increasing flat index."""
    # A stable sort of -x keeps equal values in index order, so the tie-break is by position.
    top = np.argsort(-x, axis=1, kind="stable")[:, :k]
    mask = np.zeros(x.shape, dtype=bool)
    np.put_along_axis(mask, top, True, axis=1)
    return mask


def topk_overlap(a: np.ndarray, b: np.ndarray, k_fraction: float = 0.1) -> np.ndarray:
    """(M,) float64 share of each map's top-k pixels in ``a`` that are also top-k in ``b``.

    k = ceil(k_fraction * h * w), at least 1; ``k_fraction`` is in (0, 1]. Ties at the cut are
    broken by position (module note). Chance level for unrelated maps is about k / P.
    """
    f = float(k_fraction)
    if not 0.0 < f <= 1.0:
        raise ValueError(f"k_fraction must be in (0, 1], got {k_fraction!r}")
    x, y = _pair(a, b)
    k = max(1, _min_count(f, x.shape[1]))
    both = _topk_mask(x, k) & _topk_mask(y, k)
    return both.sum(axis=1) / float(k)


def _nanmean(values: np.ndarray) -> tuple[float, int]:
    ok = ~np.isnan(values)
    n = int(ok.sum())
    return (float(values[ok].mean()) if n else float("nan")), n


def randomization_curve(reference: np.ndarray, steps: Mapping[str, np.ndarray],
                        k_fraction: float = 0.1) -> dict:
    """Similarity to the trained model's maps after each randomisation step, in step order.

    ``reference`` is (M, h, w) maps of the trained model; ``steps`` maps a step name (e.g. the last
    layer randomised so far) to the (M, h, w) maps of the same images after that step, in the
    order the steps were applied (insertion order).

    Returns dict(steps list[str], spearman (S,) float64 NaN-skipping mean of signed rho,
    abs_spearman (S,) the same of |rho|, topk_overlap (S,) float64 mean overlap,
    n_valid (S,) int64 maps with a defined rho). A step where every map is constant gets NaN.
    """
    if not isinstance(steps, Mapping):
        raise ValueError(f"steps must be a mapping of step name to maps, got {type(steps).__name__}")
    ref = _as_maps(reference, "reference")
    names, rho_mean, abs_mean, overlap, valid = [], [], [], [], []
    for name, maps in steps.items():
        label = f"steps[{name!r}]"
        cur = _as_maps(maps, label)
        if cur.shape != ref.shape:
            raise ValueError(f"{label} has shape {cur.shape}, reference has shape {ref.shape}")
        rho = spearman_per_map(ref, cur)
        mean, n = _nanmean(rho)
        names.append(str(name))
        rho_mean.append(mean)
        abs_mean.append(_nanmean(np.abs(rho))[0])
        ov = topk_overlap(ref, cur, k_fraction)
        overlap.append(float(ov.mean()) if ov.size else float("nan"))
        valid.append(n)
    return {"steps": names, "spearman": np.asarray(rho_mean, dtype=np.float64),
            "abs_spearman": np.asarray(abs_mean, dtype=np.float64),
            "topk_overlap": np.asarray(overlap, dtype=np.float64),
            "n_valid": np.asarray(valid, dtype=np.int64)}


def stays_similar(curve: dict, threshold: float = 0.5, absolute: bool = False) -> bool:
    """True when the maps after the last randomisation step still correlate with the trained
    model's above ``threshold`` (mean rank correlation strictly greater): the maps then do not
    depend on the learnt weights, which is the failure the sanity check looks for.

    ``curve`` is what ``randomization_curve`` returns; ``absolute`` uses mean |rho| instead of the
    signed mean. False when the last step's correlation is NaN (no map had a ranking).
    """
    key = "abs_spearman" if absolute else "spearman"
    values = np.asarray(curve[key], dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"curve must hold at least one randomisation step, got {key} of shape {values.shape}")
    t = float(threshold)
    if not np.isfinite(t):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    last = float(values[-1])
    return bool(np.isfinite(last) and last > t)
