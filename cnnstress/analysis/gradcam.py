"""Grad-CAM map utilities: upsampling, normalisation, energy inside a mask, deletion/insertion AUC.

Maps are stored (N, h, w) float16 at the feature resolution of ``report.gradcam_layer`` (e.g. 8x8);
images are S x S (32x32 for the built-in datasets, 16..128 for your own).
"""

from __future__ import annotations

import math

import numpy as np


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float64 weights of 1-D linear resampling with align_corners=False.

    Same convention as torch.nn.functional.interpolate(mode="bilinear", align_corners=False):
    output pixel j samples input coordinate (j + 0.5) * n_in / n_out - 0.5, clamped at 0 below,
    and the neighbour past the last input pixel is the last pixel itself.
    """
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.maximum(src, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    w = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(w, (rows, i0), 1.0 - frac)
    np.add.at(w, (rows, i1), frac)
    return w


def upsample_bilinear(maps: np.ndarray, size: int | tuple[int, int] = 32) -> np.ndarray:
    """Bilinear resize of (N, h, w) maps to (N, H, W) float32 (``size`` int -> H = W = size)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim != 3 or m.shape[1] < 1 or m.shape[2] < 1:
        raise ValueError(f"maps must have shape (N, h, w), got shape {m.shape}")
    out_h, out_w = (size, size) if np.isscalar(size) else tuple(size)
    if int(out_h) != out_h or int(out_w) != out_w or out_h < 1 or out_w < 1:
        raise ValueError(f"size must be a positive int or a pair of them, got {size!r}")
    ah = _interp_matrix(m.shape[1], int(out_h))
    aw = _interp_matrix(m.shape[2], int(out_w))
    # Separable: rows then columns, one matrix product each.
    return np.einsum("ih,nhw,jw->nij", ah, m, aw, optimize=True).astype(np.float32)


def normalize_maps(maps: np.ndarray) -> np.ndarray:
    """Rescale each map of (N, ...) to [0, 1] by (x - min) / (max - min) -> float32.

    Constant maps (including all-zero ones) become all zeros.
    """
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim < 2:
        raise ValueError(f"maps must have shape (N, ...) with at least one map axis, got shape {m.shape}")
    out = np.zeros_like(m)
    if m.size == 0:
        return out.astype(np.float32)
    axes = tuple(range(1, m.ndim))
    lo = m.min(axis=axes, keepdims=True)
    span = m.max(axis=axes, keepdims=True) - lo
    np.divide(m - lo, span, out=out, where=np.broadcast_to(span > 0, m.shape))
    return out.astype(np.float32)


def _maps_and_masks(maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, h, w) maps and (N, H, W) masks as arrays, or a ValueError saying which shape is wrong."""
    mk = np.asarray(masks)
    if mk.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got shape {mk.shape}")
    m = np.asarray(maps)
    if m.ndim != 3 or m.shape[0] != mk.shape[0]:
        raise ValueError(f"maps must have shape (N, h, w) with N = {mk.shape[0]}, got shape {m.shape}")
    return m, mk


def energy_in_mask(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Fraction of each map's mass that falls inside its mask -> (N,) float64 in [0, 1].

    ``maps`` (N, h, w) are upsampled bilinearly to the (N, H, W) bool ``masks`` resolution and
    negative values clipped to 0 (Grad-CAM is a ReLU map; negatives carry no evidence). NaN for a
    map with no positive mass.
    """
    m, mk = _maps_and_masks(maps, masks)
    up = np.clip(upsample_bilinear(m, size=(mk.shape[1], mk.shape[2])).astype(np.float64), 0.0, None)
    total = up.sum(axis=(1, 2))
    inside = (up * mk.astype(bool)).sum(axis=(1, 2))
    out = np.full(total.shape, np.nan)
    np.divide(inside, total, out=out, where=total > 0)
    return out


def auc(curve: np.ndarray) -> np.ndarray | float:
    """Trapezoid area under (..., K) curves sampled at K evenly spaced x in [0, 1].

    For deletion/insertion curves. Returns (...,) float64 (a float for a 1-D curve); K >= 2.
    """
    y = np.asarray(curve, dtype=np.float64)
    if y.ndim < 1 or y.shape[-1] < 2:
        raise ValueError(f"curve must have shape (..., K) with K >= 2, got shape {y.shape}")
    dx = 1.0 / (y.shape[-1] - 1)
    area = dx * (y.sum(axis=-1) - 0.5 * (y[..., 0] + y[..., -1]))
    return float(area) if np.ndim(area) == 0 else area


def pointing_game(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Whether each map's peak falls inside its mask (Zhang et al., "Top-down neural attention by
    excitation backprop", 2016) -> (N,) float64: 1.0 hit, 0.0 miss, NaN for a map with no positive
    mass (nothing to point with). Maps are upsampled bilinearly to the mask resolution first; a
    peak shared by several pixels is a hit when any of them is inside."""
    m, mk = _maps_and_masks(maps, masks)
    up = upsample_bilinear(m, size=(mk.shape[1], mk.shape[2])).astype(np.float64)
    peak = up.max(axis=(1, 2), keepdims=True)
    top = (up >= peak) & (peak > 0)
    hit = (top & mk.astype(bool)).any(axis=(1, 2)).astype(np.float64)
    return np.where(peak[:, 0, 0] > 0, hit, np.nan)


def top_share_in_mask(maps: np.ndarray, masks: np.ndarray, share: float = 0.2) -> np.ndarray:
    """Of each map's top ``share`` of pixels (the k = ceil(share * H * W) highest values at the
    mask resolution), the fraction inside its mask -> (N,) float64 in [0, 1].

    Maps are upsampled bilinearly to the (N, H, W) bool ``masks`` first. Pixels tied at the k-th
    value share the slots left: each counts (slots left) / (tied pixels), i.e. the expectation over
    a random order of the tied pixels, so the value does not depend on pixel order (a ReLU map
    whose positive area is smaller than k fills its slots with tied zeros this way). NaN for a map
    with no positive mass.
    """
    s = float(share)
    if not 0.0 < s <= 1.0:
        raise ValueError(f"share must be in (0, 1], got {share!r}")
    m, mk = _maps_and_masks(maps, masks)
    up = upsample_bilinear(m, size=(mk.shape[1], mk.shape[2])).astype(np.float64).reshape(m.shape[0], -1)
    inside = mk.reshape(mk.shape[0], -1).astype(bool)
    k = max(1, math.ceil(s * up.shape[1] - 1e-9))
    kth = -np.partition(-up, k - 1, axis=1)[:, k - 1:k]          # the k-th largest value of each map
    above, tied = up > kth, up == kth
    n_above = above.sum(axis=1)
    slots = (k - n_above) / tied.sum(axis=1)                     # the share of each tied pixel taken
    got = (above & inside).sum(axis=1) + slots * (tied & inside).sum(axis=1)
    return np.where(up.max(axis=1) > 0, got / k, np.nan)
