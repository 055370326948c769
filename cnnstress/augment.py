"""Batched training-time augmentations on tensors, on the training device (no PIL, no per-image loop).

One call of :class:`BatchAugment` turns a uint8 batch ``(B, 3, H, W)`` and int64 labels into a
normalised float32 batch (channels_last) and float32 soft targets ``(B, num_classes)``. The
augmentations named are applied in :data:`CANONICAL_ORDER`, whatever order they are listed in::

    crop, flip                 one gather with per-sample index arithmetic, on the uint8 images
    rotation, color_jitter     on floats in [0, 1]
    -> normalize               (x - mean) / std
    cutout, random_erasing     set a box to 0 (= the dataset mean after normalisation)
    cutmix, mixup              mix images AND targets with a random partner (a batch permutation)

Every random number comes from the ``generator`` passed to the call (which must live on the batch's
device), in a fixed order that depends only on the configuration and the batch shape, so the same
generator state gives bitwise-identical output. Every sample gets its own draws (crop offset, flip,
angle, jitter factors, boxes, cutmix/mixup partner and lambda).

Parameter names and defaults come from :data:`cnnstress.catalog.AUGMENTS`. Validation images are
only normalised (:func:`normalize`); the engine applies ``BatchAugment`` to training batches only.

The two parameters given in pixels, crop ``padding`` and cutout ``size``, are stated for 32x32
images (CIFAR's, where the usual 4 and 16 come from) and scale with the side S of the batch's
images: :func:`scaled_pixels` gives ``round(v * S / 32)`` (halves up, at least 1 for v >= 1), so
at 32 px they are the values given and a 64 px batch gets padding 8 and 32 px holes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnstress import catalog

AUGMENTS: tuple[str, ...] = tuple(catalog.AUGMENTS)

#: The order augmentations are applied in, regardless of the order they are named in: the catalog's.
CANONICAL_ORDER: tuple[str, ...] = AUGMENTS

# Rejection rounds drawn at once for the Gamma sampler; each round accepts with probability > 0.95,
# so a sample is left without an accepted candidate with probability < 0.05**12 ~ 2e-16.
_GAMMA_ROUNDS = 12
# Attempts at fitting a random-erasing box, as in torchvision's RandomErasing.
_ERASING_ATTEMPTS = 10
_ERASING_LOG_RATIO = (math.log(0.3), math.log(3.3))
# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.2989, 0.587, 0.114)


@dataclass(frozen=True)
class AugmentConfig:
    """What the engine passes: augmentation names and per-name overrides of catalogue defaults."""

    names: tuple[str, ...]
    params: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------------


def resolve_params(
    names: Sequence[str], params: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, float | int]]:
    """Per selected augmentation, its catalogue defaults updated by ``params``, validated.

    ``params`` may hold entries for known augmentations that are not selected (they are ignored, so
    a variant can drop an augmentation without also dropping its parameters). Raises ValueError for
    unknown or repeated names, unknown parameters and out-of-range values, listing what is allowed.
    """
    if isinstance(names, str):
        raise ValueError(f"augment names must be a list of names, got the string {names!r}")
    unknown = [n for n in names if n not in catalog.AUGMENTS]
    if unknown:
        raise ValueError(f"unknown augment(s) {', '.join(map(repr, unknown))}; valid: {', '.join(AUGMENTS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"augment(s) {', '.join(map(repr, repeated))} named more than once")
    params = params or {}
    bad = [k for k in params if k not in catalog.AUGMENTS]
    if bad:
        raise ValueError(
            f"parameters given for unknown augment(s) {', '.join(map(repr, bad))}; valid: {', '.join(AUGMENTS)}"
        )
    resolved: dict[str, dict[str, float | int]] = {}
    for name in names:
        spec = catalog.AUGMENTS[name]
        given = dict(params.get(name, {}))
        extra = sorted(set(given) - set(spec))
        if extra:
            valid = ", ".join(f"{k} ({p.describe()}, default {p.default!r})" for k, p in spec.items())
            raise ValueError(
                f"unknown parameter(s) {', '.join(map(repr, extra))} for augment {name!r}; valid: {valid}"
            )
        values = {k: p.default for k, p in spec.items()}
        values.update({k: spec[k].check(v, f"augment {name!r} parameter {k!r}") for k, v in given.items()})
        resolved[name] = values
        problem = catalog.augment_problem(name, values)
        if problem is not None:
            raise ValueError(f"augment {name!r} parameter {problem[0]!r}: {problem[1]}")
    return resolved


def _check_mean_std(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean_t, std_t = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean_t) != 3 or len(std_t) != 3:
        raise ValueError(f"mean and std need 3 values (RGB), got mean={mean_t}, std={std_t}")
    if any(s <= 0 for s in std_t):
        raise ValueError(f"std values must be > 0, got {std_t}")
    return mean_t, std_t


def scaled_pixels(value: int, side: int) -> int:
    """A length of ``value`` pixels at 32 px for images of side ``side``: ``round(value * side / 32)``
    with halves rounded up (Python's round would send 0.5 to 0 and 2.5 to 2), and never below 1 when
    ``value`` is at least 1 (a 1-pixel cutout must not vanish at 16 px). ``value`` itself at 32 px."""
    ref = catalog.REFERENCE_IMAGE_SIZE
    if side == ref:
        return int(value)
    scaled = (2 * int(value) * int(side) + ref) // (2 * ref)  # floor(v * side / ref + 1/2), exact in integers
    return max(scaled, 1) if value >= 1 else 0


# --------------------------------------------------------------------------------------------------
# targets and normalisation
# --------------------------------------------------------------------------------------------------


def soft_targets(y: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """float32 ``(B, num_classes)``: ``(1 - eps) * onehot(y) + eps / num_classes``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
    onehot = F.one_hot(y.long(), num_classes).to(torch.float32)
    if label_smoothing == 0.0:
        return onehot
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


@lru_cache(maxsize=32)
def _mean_std_tensors(mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> tuple[Tensor, Tensor]:
    # cached so the training loop does not copy two tiny tensors to the device every batch
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    return m, s


def _normalize_float(x01: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    m, s = _mean_std_tensors(mean, std, x01.device)
    return (x01 - m) / s


def normalize(x_uint8: Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """float32 ``(x / 255 - mean) / std``, contiguous in channels_last (val/test, no augmentation)."""
    mean_t, std_t = _check_mean_std(mean, std)
    _check_images(x_uint8)
    x = _normalize_float(x_uint8.to(torch.float32) / 255.0, mean_t, std_t)
    return x.contiguous(memory_format=torch.channels_last)


def _check_images(x: Tensor) -> None:
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected a uint8 batch (B, 3, H, W), got {x.dtype} {tuple(x.shape)}")


# --------------------------------------------------------------------------------------------------
# random numbers (all from the passed generator)
# --------------------------------------------------------------------------------------------------


def _uniform(shape: tuple[int, ...], lo: float, hi: float, g: torch.Generator, device: torch.device) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g, device=device)


def _log_gamma(k: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    """log of ``n`` Gamma(k, 1) variates (Marsaglia-Tsang, rounds drawn at once; boost for k < 1).

    Log space keeps tiny shapes (k = 0.01 gives variates like 1e-100) from underflowing to 0.
    """
    k_eff = k + 1.0 if k < 1.0 else k
    d = k_eff - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    z = torch.randn((_GAMMA_ROUNDS, n), generator=g, device=device)
    u = torch.rand((_GAMMA_ROUNDS, n), generator=g, device=device)
    v = (1.0 + c * z) ** 3
    log_v = torch.log(v.clamp_min(1e-30))
    accept = (v > 0) & (torch.log(u) < 0.5 * z * z + d - d * v + d * log_v)
    first = accept.to(torch.int32).argmax(dim=0, keepdim=True)  # first accepted round per sample
    # fallback (probability < 2e-16): v = 1, the mode
    log_v = torch.where(accept.any(dim=0), log_v.gather(0, first).squeeze(0), torch.zeros(n, device=device))
    out = math.log(d) + log_v
    if k < 1.0:
        # Gamma(k) = Gamma(k + 1) * U**(1/k); U in (0, 1] so the log is finite
        u_boost = 1.0 - torch.rand(n, generator=g, device=device)
        out = out + torch.log(u_boost) / k
    return out


def sample_beta(alpha: float, n: int, g: torch.Generator, device: torch.device) -> Tensor:
    """``n`` float32 Beta(alpha, alpha) variates, as G1 / (G1 + G2) of Gamma(alpha) variates."""
    log_g1 = _log_gamma(alpha, n, g, device)
    log_g2 = _log_gamma(alpha, n, g, device)
    return torch.sigmoid(log_g1 - log_g2)  # = g1 / (g1 + g2), stable in log space


# --------------------------------------------------------------------------------------------------
# the augmentations as pure functions of their per-sample draws
# --------------------------------------------------------------------------------------------------


def crop_flip(x: Tensor, padding: int, top: Tensor, left: Tensor, flip: Tensor) -> Tensor:
    """Per sample: zero-pad by ``padding``, take the HxW window at (top, left), mirror if ``flip``.

    ``top``/``left`` are int64 ``(B,)`` offsets into the padded image (0..2*padding), ``flip`` bool
    ``(B,)``. One advanced-indexing gather; the result is channels_last (same dtype as ``x``).
    """
    b, _, h, w = x.shape
    if padding:
        x = F.pad(x, (padding, padding, padding, padding))
    device = x.device
    rows = top[:, None] + torch.arange(h, device=device)  # (B, H)
    cols = torch.arange(w, device=device).expand(b, w)
    cols = torch.where(flip[:, None], (w - 1) - cols, cols) + left[:, None]  # (B, W)
    batch = torch.arange(b, device=device)[:, None, None]
    # advanced indices separated by a slice put the indexed dims first: (B, H, W, C)
    out = x[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2)  # a channels_last view of (B, C, H, W)


def rotate(x: Tensor, degrees: Tensor) -> Tensor:
    """Rotate each image counter-clockwise by ``degrees[i]`` about its centre (bilinear, zero fill)."""
    b, c, h, w = x.shape
    rad = degrees.to(torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    theta = torch.zeros(b, 2, 3, device=x.device, dtype=torch.float32)
    # affine_grid works in [-1, 1] coordinates per axis; the H/W factors keep non-square images rigid
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * (h / w)
    theta[:, 1, 0] = sin * (w / h)
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [b, c, h, w], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _grayscale(x: Tensor) -> Tensor:
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: Tensor, other: Tensor, ratio: Tensor) -> Tensor:
    return (ratio.view(-1, 1, 1, 1) * x + (1.0 - ratio.view(-1, 1, 1, 1)) * other).clamp_(0.0, 1.0)


def _rgb_to_hsv(x: Tensor) -> Tensor:
    # the same arithmetic as torchvision's tensor _rgb2hsv
    r, g, b = x.unbind(dim=1)
    maxc = x.amax(dim=1)
    minc = x.amin(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), dim=1)


def _hsv_to_rgb(hsv: Tensor) -> Tensor:
    # branch-free form: channel n in (5, 3, 1) is v - v*s*clamp(min(k, 4 - k), 0, 1), k = (n + 6h) mod 6
    h, s, v = hsv.unbind(dim=1)
    # n = (5, 3, 1) made on the device (exact in every float dtype): torch.tensor([...], device=cuda)
    # would be a synchronous host-to-device copy on every batch
    n = (5.0 - 2.0 * torch.arange(3, device=hsv.device, dtype=hsv.dtype)).view(1, 3, 1, 1)
    k = torch.remainder(n + 6.0 * h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp(0.0, 1.0)
    return (v.unsqueeze(1) * (1.0 - s.unsqueeze(1) * ramp)).clamp(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate each image's hue by ``shift[i]`` (fraction of the colour circle, in [-0.5, 0.5])."""
    hsv = _rgb_to_hsv(x)
    hue = torch.remainder(hsv[:, 0] + shift.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(torch.stack((hue, hsv[:, 1], hsv[:, 2]), dim=1))


def color_jitter(
    x: Tensor,
    brightness: Tensor | None,
    contrast: Tensor | None,
    saturation: Tensor | None,
    hue: Tensor | None,
) -> Tensor:
    """Per-sample colour jitter of ``x`` in [0, 1], in the fixed order brightness, contrast,
    saturation, hue (torchvision's functional formulas; ``None`` skips that step).

    Factors are ``(B,)`` tensors: brightness/contrast/saturation multiplicative (1 = unchanged),
    hue an additive shift. The result stays in [0, 1].
    """
    if brightness is not None:
        x = (x * brightness.view(-1, 1, 1, 1)).clamp(0.0, 1.0)
    if contrast is not None:
        x = _blend(x, _grayscale(x).mean(dim=(1, 2, 3), keepdim=True), contrast)
    if saturation is not None:
        x = _blend(x, _grayscale(x), saturation)
    if hue is not None:
        x = adjust_hue(x, hue)
    return x


def box_mask(top: Tensor, left: Tensor, bottom: Tensor, right: Tensor, h: int, w: int) -> Tensor:
    """bool ``(..., H, W)``: rows in [top, bottom) and columns in [left, right), per leading index."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[..., None]) & (rows < bottom[..., None])  # (..., H)
    in_cols = (cols >= left[..., None]) & (cols < right[..., None])  # (..., W)
    return in_rows[..., :, None] & in_cols[..., None, :]


def _centred_box(cy: Tensor, cx: Tensor, side_h: Tensor | int, side_w: Tensor | int, h: int, w: int) -> Tensor:
    """Mask of a side_h x side_w box centred at (cy, cx), clipped to the image."""
    # an int side stays a Python int (torch.as_tensor(int, device=cuda) is a synchronous host-to-device
    # copy per batch); floor division of ints and of int64 tensors gives the same values
    top = cy - (side_h // 2 if isinstance(side_h, int) else torch.div(side_h, 2, rounding_mode="floor"))
    left = cx - (side_w // 2 if isinstance(side_w, int) else torch.div(side_w, 2, rounding_mode="floor"))
    return box_mask(top.clamp(0, h), left.clamp(0, w), (top + side_h).clamp(0, h), (left + side_w).clamp(0, w), h, w)


def _mix_targets(t: Tensor, perm: Tensor, lam: Tensor) -> Tensor:
    lam = lam.view(-1, 1)
    return lam * t + (1.0 - lam) * t[perm]


# --------------------------------------------------------------------------------------------------
# the batch transform
# --------------------------------------------------------------------------------------------------


# What a step works on. A step of a later stage runs after every step of an earlier one (the batch
# moves on between them), so the catalogue must list the steps by stage: checked below.
_UINT8, _UNIT, _NORMALIZED = 0, 1, 2


@dataclass
class _Batch:
    """One batch on its way through :class:`BatchAugment`: the images at their ``stage`` (uint8,
    floats in [0, 1], normalised), the soft targets, and the crop and flip drawn but not yet applied
    (both are one gather when the batch leaves the uint8 stage)."""

    x: Tensor
    t: Tensor
    stage: int = _UINT8
    padding: int = 0
    top: Tensor | None = None
    left: Tensor | None = None
    flip: Tensor | None = None

    def advance(self, stage: int, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        """Move the images on to ``stage``: the pending crop/flip and /255, then normalisation."""
        if self.stage < _UNIT <= stage:
            if self.top is not None or self.flip is not None:
                b, device = self.x.shape[0], self.x.device
                zero = torch.zeros(b, dtype=torch.int64, device=device)
                no_flip = torch.zeros(b, dtype=torch.bool, device=device) if self.flip is None else self.flip
                self.x = crop_flip(self.x, self.padding, zero if self.top is None else self.top,
                                   zero if self.left is None else self.left, no_flip)
            self.x = self.x.to(torch.float32) / 255.0
        if self.stage < _NORMALIZED <= stage:
            self.x = _normalize_float(self.x, mean, std)
        self.stage = max(self.stage, stage)


class BatchAugment:
    """Augment, normalise and soft-label one training batch; see the module docstring."""

    def __init__(
        self,
        names: Sequence[str],
        params: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        label_smoothing: float = 0.0,
        channels_last: bool = True,
    ) -> None:
        resolved = resolve_params(names, params)
        self.names: tuple[str, ...] = tuple(n for n in CANONICAL_ORDER if n in resolved)
        self.params: dict[str, dict[str, float | int]] = {n: resolved[n] for n in self.names}
        self.mean, self.std = _check_mean_std(mean, std)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    @classmethod
    def from_config(
        cls,
        config: AugmentConfig,
        *,
        mean: Sequence[float],
        std: Sequence[float],
        num_classes: int,
        label_smoothing: float = 0.0,
    ) -> BatchAugment:
        """Build from an :class:`AugmentConfig`."""
        return cls(
            config.names, config.params, mean=mean, std=std, num_classes=num_classes, label_smoothing=label_smoothing
        )

    def __repr__(self) -> str:
        return (
            f"BatchAugment({list(self.names)}, {self.params}, num_classes={self.num_classes}, "
            f"label_smoothing={self.label_smoothing})"
        )

    def __call__(self, x_uint8: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(x, targets)``: float32 normalised ``(B, 3, H, W)`` (channels_last unless built with
        ``channels_last=False``), float32 ``(B, C)``."""
        _check_images(x_uint8)
        if y.shape != (x_uint8.shape[0],) or y.dtype != torch.int64:
            raise ValueError(f"expected int64 labels of shape ({x_uint8.shape[0]},), got {y.dtype} {tuple(y.shape)}")
        _check_generator(generator, x_uint8.device)
        batch = _Batch(x_uint8, soft_targets(y, self.num_classes, self.label_smoothing))
        for name in self.names:  # the catalogue's order
            stage, step = _STEPS[name]
            batch.advance(stage, self.mean, self.std)
            step(self, batch, generator)
        batch.advance(_NORMALIZED, self.mean, self.std)
        return batch.x.contiguous(memory_format=self.memory_format), batch.t

    # each step draws its randomness from g in a fixed order, then applies a pure function

    def _crop(self, batch: _Batch, g: torch.Generator) -> None:
        b, device = batch.x.shape[0], batch.x.device
        padding = scaled_pixels(int(self.params["crop"]["padding"]), min(batch.x.shape[-2:]))
        batch.padding = padding
        batch.top = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=device)
        left = torch.randint(0, 2 * padding + 1, (b,), generator=g, device=device)
        # after a flip: the window at `left` of the mirrored image is the mirrored window at 2p - left
        batch.left = left if batch.flip is None else torch.where(batch.flip, 2 * padding - left, left)

    def _flip(self, batch: _Batch, g: torch.Generator) -> None:
        b, device = batch.x.shape[0], batch.x.device
        batch.flip = torch.rand(b, generator=g, device=device) < self.params["flip"]["p"]

    def _rotation(self, batch: _Batch, g: torch.Generator) -> None:
        x, deg = batch.x, float(self.params["rotation"]["degrees"])
        batch.x = rotate(x, _uniform((x.shape[0],), -deg, deg, g, x.device))

    def _color_jitter(self, batch: _Batch, g: torch.Generator) -> None:
        x = batch.x
        p, b, device = self.params["color_jitter"], x.shape[0], x.device

        def factor(amount: float) -> Tensor | None:
            # torchvision's ColorJitter range [max(0, 1 - a), 1 + a]; a = 0 switches the step off
            return _uniform((b,), max(0.0, 1.0 - amount), 1.0 + amount, g, device) if amount > 0 else None

        brightness, contrast, saturation = factor(p["brightness"]), factor(p["contrast"]), factor(p["saturation"])
        hue = _uniform((b,), -p["hue"], p["hue"], g, device) if p["hue"] > 0 else None
        batch.x = color_jitter(x, brightness, contrast, saturation, hue)

    def _cutout(self, batch: _Batch, g: torch.Generator) -> None:
        batch.x = batch.x.masked_fill(self._cutout_mask(batch.x, g).unsqueeze(1), 0.0)

    def _random_erasing(self, batch: _Batch, g: torch.Generator) -> None:
        batch.x = batch.x.masked_fill(self._erasing_mask(batch.x, g).unsqueeze(1), 0.0)

    def _cutout_mask(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        holes = int(self.params["cutout"]["holes"])
        size = scaled_pixels(int(self.params["cutout"]["size"]), min(h, w))
        cy = torch.randint(0, h, (b, holes), generator=g, device=x.device)
        cx = torch.randint(0, w, (b, holes), generator=g, device=x.device)
        # DeVries & Taylor: centre anywhere, the square clipped at the border
        return _centred_box(cy, cx, size, size, h, w).any(dim=1)

    def _erasing_mask(self, x: Tensor, g: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        device, p = x.device, self.params["random_erasing"]
        shape = (b, _ERASING_ATTEMPTS)
        area = (h * w) * _uniform(shape, p["scale_min"], p["scale_max"], g, device)
        ratio = torch.exp(_uniform(shape, *_ERASING_LOG_RATIO, g, device))
        bh = torch.round(torch.sqrt(area * ratio)).long()
        bw = torch.round(torch.sqrt(area / ratio)).long()
        fits = (bh < h) & (bw < w)
        # torchvision tries up to 10 boxes and takes the first that fits; here all at once
        first = fits.to(torch.int32).argmax(dim=1, keepdim=True)
        bh, bw = bh.gather(1, first).squeeze(1), bw.gather(1, first).squeeze(1)
        top = (torch.rand(b, generator=g, device=device) * (h - bh + 1)).long()
        left = (torch.rand(b, generator=g, device=device) * (w - bw + 1)).long()
        apply = (torch.rand(b, generator=g, device=device) < p["p"]) & fits.any(dim=1)
        return box_mask(top, left, top + bh, left + bw, h, w) & apply[:, None, None]

    def _cutmix(self, batch: _Batch, g: torch.Generator) -> None:
        x, t = batch.x, batch.t
        b, _, h, w = x.shape
        device, p = x.device, self.params["cutmix"]
        perm = torch.randperm(b, generator=g, device=device)
        lam = sample_beta(float(p["alpha"]), b, g, device)
        apply = torch.rand(b, generator=g, device=device) < p["p"]
        cut = torch.sqrt(1.0 - lam)
        cut_h, cut_w = (h * cut).long(), (w * cut).long()
        cy = torch.randint(0, h, (b,), generator=g, device=device)
        cx = torch.randint(0, w, (b,), generator=g, device=device)
        mask = _centred_box(cy, cx, cut_h, cut_w, h, w) & apply[:, None, None]
        # lambda from the box actually pasted (after clipping at the border)
        lam_eff = 1.0 - mask.sum(dim=(1, 2)).to(torch.float32) / (h * w)
        batch.x = torch.where(mask.unsqueeze(1), x[perm], x)
        batch.t = _mix_targets(t, perm, lam_eff)

    def _mixup(self, batch: _Batch, g: torch.Generator) -> None:
        x, t = batch.x, batch.t
        b, device, p = x.shape[0], x.device, self.params["mixup"]
        perm = torch.randperm(b, generator=g, device=device)
        lam = sample_beta(float(p["alpha"]), b, g, device)
        apply = torch.rand(b, generator=g, device=device) < p["p"]
        lam = torch.where(apply, lam, torch.ones_like(lam))
        lam_x = lam.view(-1, 1, 1, 1)
        batch.x = lam_x * x + (1.0 - lam_x) * x[perm]
        batch.t = _mix_targets(t, perm, lam)


# name -> (stage, step); __call__ runs the selected steps in the catalogue's order
_STEPS: dict[str, tuple[int, Callable[[BatchAugment, _Batch, torch.Generator], None]]] = {
    "crop": (_UINT8, BatchAugment._crop),
    "flip": (_UINT8, BatchAugment._flip),
    "rotation": (_UNIT, BatchAugment._rotation),
    "color_jitter": (_UNIT, BatchAugment._color_jitter),
    "cutout": (_NORMALIZED, BatchAugment._cutout),
    "random_erasing": (_NORMALIZED, BatchAugment._random_erasing),
    "cutmix": (_NORMALIZED, BatchAugment._cutmix),
    "mixup": (_NORMALIZED, BatchAugment._mixup),
}
assert set(_STEPS) == set(AUGMENTS), "augment.py _STEPS and catalog.AUGMENTS must name the same augmentations"
_stages = [_STEPS[n][0] for n in CANONICAL_ORDER]
assert _stages == sorted(_stages), (
    f"catalog.AUGMENTS must list uint8 steps, then [0, 1] float steps, then normalised ones; got {list(CANONICAL_ORDER)}"
)


def _check_generator(g: torch.Generator, device: torch.device) -> None:
    gd = g.device
    same = gd.type == device.type and (gd.index is None or device.index is None or gd.index == device.index)
    if not same:
        raise ValueError(f"generator is on {gd} but the batch is on {device}; pass a generator on {device}")
