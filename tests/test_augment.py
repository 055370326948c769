"""Tests for cnnstress.augment: every augmentation's shape/range/determinism/per-sample behaviour,
and its semantics checked against an independent computation (loops, torch.flip, torchvision)."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms.functional as TF

from cnnstress import catalog
from cnnstress.augment import (
    AUGMENTS,
    CANONICAL_ORDER,
    AugmentConfig,
    BatchAugment,
    color_jitter,
    normalize,
    rotate,
    sample_beta,
    scaled_pixels,
    soft_targets,
)

MEAN = (0.5, 0.45, 0.35)  # no k/255 equals a mean, so no normalised pixel is exactly 0
STD = (0.2, 0.25, 0.3)
C = 10
B = 16

# p = 1 where an augmentation has a probability, so every sample is touched
ALWAYS = {
    "flip": {"p": 1.0},
    "random_erasing": {"p": 1.0},
    "cutmix": {"p": 1.0},
    "mixup": {"p": 1.0},
}


def make(names: list[str], params: dict | None = None, eps: float = 0.0) -> BatchAugment:
    return BatchAugment(names, params, mean=MEAN, std=STD, num_classes=C, label_smoothing=eps)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = B, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=gen(seed), dtype=torch.uint8)


def labels(n: int = B) -> torch.Tensor:
    return torch.arange(n) % C


def unnormalize(x: torch.Tensor) -> torch.Tensor:
    """Independent inverse of the normalisation: back to [0, 1] floats."""
    out = torch.empty_like(x)
    for c in range(3):
        out[:, c] = x[:, c] * STD[c] + MEAN[c]
    return out


def normalized_reference(x_uint8: torch.Tensor) -> torch.Tensor:
    out = torch.empty(x_uint8.shape, dtype=torch.float32)
    for c in range(3):
        out[:, c] = (x_uint8[:, c].float() / 255.0 - MEAN[c]) / STD[c]
    return out


# -- registry and configuration -------------------------------------------------------------------


def test_registry_and_canonical_order() -> None:
    assert AUGMENTS == tuple(catalog.AUGMENTS)
    assert sorted(CANONICAL_ORDER) == sorted(AUGMENTS) and len(set(CANONICAL_ORDER)) == len(AUGMENTS)
    pos = CANONICAL_ORDER.index
    # geometric/colour on [0,1] -> erasing after normalisation -> mixing last
    assert pos("crop") < pos("flip") < pos("rotation") < pos("color_jitter") < pos("cutout")
    assert pos("cutout") < pos("random_erasing") < pos("cutmix") < pos("mixup")


def test_names_are_applied_in_canonical_order() -> None:
    names = list(AUGMENTS)
    a = make(names)
    b = make(list(reversed(names)))
    assert a.names == b.names == CANONICAL_ORDER
    x, y = images(), labels()
    xa, ta = a(x, y, gen(3))
    xb, tb = b(x, y, gen(3))
    assert torch.equal(xa, xb) and torch.equal(ta, tb)


def test_unknown_names_params_and_values_are_errors() -> None:
    with pytest.raises(ValueError) as err:
        make(["crop", "shear"])
    assert "'shear'" in str(err.value) and all(n in str(err.value) for n in AUGMENTS)
    with pytest.raises(ValueError) as err:
        make(["crop"], {"crop": {"pad": 4}})
    assert "'pad'" in str(err.value) and "padding" in str(err.value)
    with pytest.raises(ValueError, match="padding"):
        make(["crop"], {"crop": {"padding": 17}})
    with pytest.raises(ValueError, match="padding"):
        make(["crop"], {"crop": {"padding": 2.5}})
    with pytest.raises(ValueError, match="'p'"):
        make(["flip"], {"flip": {"p": 1.5}})
    with pytest.raises(ValueError, match="shear"):
        make(["crop"], {"shear": {"x": 1}})
    with pytest.raises(ValueError, match="more than once"):
        make(["flip", "flip"])
    with pytest.raises(ValueError, match="scale_min"):
        make(["random_erasing"], {"random_erasing": {"scale_min": 0.5, "scale_max": 0.1}})
    with pytest.raises(ValueError, match="label_smoothing"):
        make(["flip"], eps=1.0)
    # parameters for a known augmentation that is not selected are ignored
    assert make(["flip"], {"cutout": {"size": 8}}).names == ("flip",)


def test_params_override_defaults_and_config() -> None:
    aug = BatchAugment.from_config(
        AugmentConfig(names=("cutout", "crop"), params={"cutout": {"size": 8}}), mean=MEAN, std=STD, num_classes=C
    )
    assert aug.names == ("crop", "cutout")
    assert aug.params["cutout"] == {"holes": 1, "size": 8}
    assert aug.params["crop"] == {"padding": catalog.AUGMENTS["crop"]["padding"].default}


def test_bad_inputs_are_errors() -> None:
    aug = make(["flip"])
    with pytest.raises(ValueError, match="uint8"):
        aug(images().float(), labels(), gen(0))
    with pytest.raises(ValueError, match="int64"):
        aug(images(), labels().int(), gen(0))


# -- properties every augmentation has -------------------------------------------------------------


@pytest.mark.parametrize("name", AUGMENTS)
def test_output_contract(name: str) -> None:
    aug = make([name], ALWAYS)
    x, y = images(), labels()
    out, t = aug(x, y, gen(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert t.shape == (B, C) and t.dtype == torch.float32
    assert torch.isfinite(out).all()
    raw = unnormalize(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # pre-normalisation range [0, 1]
    torch.testing.assert_close(t.sum(dim=1), torch.ones(B))
    # the input is not modified in place
    assert torch.equal(x, images())


@pytest.mark.parametrize("name", AUGMENTS)
def test_deterministic_given_generator_state(name: str) -> None:
    aug = make([name])
    x, y = images(), labels()
    a = aug(x, y, gen(7))
    b = aug(x, y, gen(7))
    c = aug(x, y, gen(8))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not (torch.equal(a[0], c[0]) and torch.equal(a[1], c[1]))
    # consecutive calls advance the generator: two batches get different draws
    g = gen(7)
    first, second = aug(x, y, g), aug(x, y, g)
    assert not (torch.equal(first[0], second[0]) and torch.equal(first[1], second[1]))


@pytest.mark.parametrize("name", ["crop", "flip", "rotation", "color_jitter", "cutout", "random_erasing"])
def test_per_sample_randomness_on_identical_images(name: str) -> None:
    x = images(1).expand(B, -1, -1, -1).contiguous()
    out, _ = make([name], {**ALWAYS, "flip": {"p": 0.5}})(x, labels(), gen(2))
    distinct = {out[i].numpy().tobytes() for i in range(B)}
    assert len(distinct) > 1


@pytest.mark.parametrize("name", ["cutmix", "mixup"])
def test_per_sample_lambda_for_mixing(name: str) -> None:
    _, t = make([name], ALWAYS)(images(), labels(), gen(2))
    own = t[torch.arange(B), labels()]
    assert len(set(own.tolist())) > 1  # each sample its own lambda


# -- semantics of each augmentation -------------------------------------------------------------


def _find_offset(out_raw: torch.Tensor, padded: torch.Tensor, flipped: bool) -> list[tuple[int, int]]:
    """All (top, left) of the 81 (pad 4) whose window of ``padded`` equals ``out_raw`` (uint8, CHW)."""
    hits = []
    size = out_raw.shape[-1]
    for top in range(padded.shape[-2] - size + 1):
        for left in range(padded.shape[-1] - size + 1):
            window = padded[:, top : top + size, left : left + size]
            if flipped:
                window = torch.flip(window, dims=[-1])
            if torch.equal(window, out_raw):
                hits.append((top, left))
    return hits


def _to_uint8(out: torch.Tensor) -> torch.Tensor:
    return torch.round(unnormalize(out) * 255).to(torch.uint8)


def test_crop_equals_padded_slice_at_some_offset() -> None:
    x = images(8)
    out, _ = make(["crop"])(x, labels(8), gen(4))
    raw = _to_uint8(out)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(8):
        hits = _find_offset(raw[i], padded[i], flipped=False)
        assert len(hits) == 1, f"sample {i}: {hits}"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1
    assert all(0 <= t <= 8 and 0 <= left <= 8 for t, left in offsets)


def test_crop_with_zero_padding_is_identity() -> None:
    x = images()
    out, _ = make(["crop"], {"crop": {"padding": 0}})(x, labels(), gen(4))
    torch.testing.assert_close(out, normalized_reference(x), rtol=0, atol=1e-6)


def test_flip_is_torch_flip_or_identity() -> None:
    x = images(32)
    out, _ = make(["flip"])(x, labels(32), gen(5))
    raw = _to_uint8(out)
    flipped = 0
    for i in range(32):
        if torch.equal(raw[i], torch.flip(x[i], dims=[-1])):
            flipped += 1
        else:
            assert torch.equal(raw[i], x[i])
    assert 0 < flipped < 32


def test_crop_and_flip_together() -> None:
    x = images(8)
    out, _ = make(["flip", "crop"], {"flip": {"p": 1.0}})(x, labels(8), gen(6))
    raw = _to_uint8(out)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(8):
        assert len(_find_offset(raw[i], padded[i], flipped=True)) == 1


def test_rotation_by_zero_is_identity() -> None:
    x = images()
    out, _ = make(["rotation"], {"rotation": {"degrees": 0.0}})(x, labels(), gen(0))
    torch.testing.assert_close(out, normalized_reference(x), rtol=0, atol=1e-4)
    xf = x.float() / 255
    torch.testing.assert_close(rotate(xf, torch.zeros(B)), xf, rtol=0, atol=1e-5)


def test_rotation_by_90_is_rot90_and_angles_are_per_sample() -> None:
    xf = images(4).float() / 255
    rotated = rotate(xf, torch.tensor([90.0, -90.0, 180.0, 0.0]))
    for i, k in enumerate([1, -1, 2, 0]):
        torch.testing.assert_close(rotated[i], torch.rot90(xf[i], k, dims=(-2, -1)), rtol=0, atol=1e-4)


def test_rotation_draws_within_range() -> None:
    # a small single bright pixel off-centre: its position after rotation gives the angle
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 15, 28] = 255  # at (dx, dy) = (12.5, -0.5) from the centre (15.5, 15.5)
    out, _ = make(["rotation"], {"rotation": {"degrees": 30.0}})(x, labels(64), gen(9))
    raw = unnormalize(out)[:, 0]
    angles = []
    for i in range(64):
        w = raw[i]
        ys, xs = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
        cy, cx = (w * ys).sum() / w.sum(), (w * xs).sum() / w.sum()
        angles.append(math.degrees(math.atan2(-(cy - 15.5), cx - 15.5)) - math.degrees(math.atan2(0.5, 12.5)))
    assert max(abs(a) for a in angles) <= 31.0
    assert max(angles) > 15 and min(angles) < -15


def test_color_jitter_matches_torchvision_per_sample() -> None:
    xf = images(6).float() / 255
    gb = gen(11)
    bright, contrast, sat = (0.6 + 0.8 * torch.rand(6, generator=gb) for _ in range(3))
    hue = -0.5 + torch.rand(6, generator=gb)
    out = color_jitter(xf, bright, contrast, sat, hue)
    for i in range(6):
        ref = TF.adjust_brightness(xf[i], bright[i].item())
        ref = TF.adjust_contrast(ref, contrast[i].item())
        ref = TF.adjust_saturation(ref, sat[i].item())
        ref = TF.adjust_hue(ref, hue[i].item())
        torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-4)


def test_color_jitter_keeps_range_and_zero_strength_is_identity() -> None:
    x = images()
    strong = {"color_jitter": {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.5}}
    out, _ = make(["color_jitter"], strong)(x, labels(), gen(1))
    raw = unnormalize(out)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
    off = {"color_jitter": {"brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}}
    out, _ = make(["color_jitter"], off)(x, labels(), gen(1))
    torch.testing.assert_close(out, normalized_reference(x), rtol=0, atol=1e-6)


def _zero_box(out: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """bool (B, H, W): where the output differs from the reference (checks channels agree)."""
    changed = (out - ref).abs() > 1e-6
    assert torch.equal(changed.any(dim=1), changed.all(dim=1))
    return changed.any(dim=1)


def _is_rectangle(mask: torch.Tensor) -> tuple[bool, int, int]:
    rows = mask.any(dim=1).nonzero().flatten()
    cols = mask.any(dim=0).nonzero().flatten()
    if len(rows) == 0:
        return True, 0, 0
    h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
    return bool(mask.sum() == h * w), h, w


@pytest.mark.parametrize("size", [16, 7])
def test_cutout_zeroes_one_clipped_square(size: int) -> None:
    x = images(32)
    out, _ = make(["cutout"], {"cutout": {"size": size}})(x, labels(32), gen(12))
    ref = normalized_reference(x)
    box = _zero_box(out, ref)
    areas = []
    for i in range(32):
        assert torch.all(out[i][:, box[i]] == 0)  # erased to 0 after normalisation = the mean
        rect, h, w = _is_rectangle(box[i])
        assert rect and 1 <= h <= size and 1 <= w <= size
        areas.append(h * w)
    assert max(areas) == size * size and min(areas) < size * size  # some boxes are clipped


def test_cutout_two_holes_area_bound() -> None:
    x = images(16)
    out, _ = make(["cutout"], {"cutout": {"holes": 2, "size": 8}})(x, labels(16), gen(13))
    box = _zero_box(out, normalized_reference(x))
    assert torch.all(box.sum(dim=(1, 2)) <= 2 * 64) and torch.all(box.sum(dim=(1, 2)) > 0)


def test_random_erasing_boxes() -> None:
    x = images(64)
    smin, smax = 0.05, 0.2
    params = {"random_erasing": {"p": 1.0, "scale_min": smin, "scale_max": smax}}
    out, _ = make(["random_erasing"], params)(x, labels(64), gen(14))
    box = _zero_box(out, normalized_reference(x))
    erased = 0
    for i in range(64):
        rect, h, w = _is_rectangle(box[i])
        assert rect
        if h:
            erased += 1
            # h, w are rounded from sqrt(area*ratio), sqrt(area/ratio): area within rounding slack
            assert smin * 1024 - 0.5 * (h + w) - 0.25 <= h * w <= smax * 1024 + 0.5 * (h + w) + 0.25
            assert 0.3 / 2 <= h / w <= 3.3 * 2
    assert erased >= 60  # p = 1: only boxes that never fit in 10 tries are skipped
    out, _ = make(["random_erasing"], {"random_erasing": {"p": 0.0}})(x, labels(64), gen(14))
    torch.testing.assert_close(out, normalized_reference(x), rtol=0, atol=1e-6)


def test_cutmix_target_mass_equals_pasted_area() -> None:
    n = C  # one image per class, labels 0..C-1
    x = images(n, seed=21)
    xn = normalized_reference(x)
    out, t = make(["cutmix"], {"cutmix": {"p": 1.0, "alpha": 1.0}}, eps=0.0)(x, torch.arange(n), gen(15))
    pasted_any = False
    for i in range(n):
        changed = (out[i] - xn[i]).abs().amax(dim=0) > 1e-6  # random images: partners differ everywhere
        frac = changed.float().mean().item()
        others = [j for j in range(n) if j != i and t[i, j] > 0]
        assert len(others) <= 1
        if not others:  # partner was itself, or an empty box
            assert frac == 0 and t[i, i] == 1
            continue
        j = others[0]
        assert abs(t[i, j].item() - frac) < 1e-6 and abs(t[i, i].item() - (1 - frac)) < 1e-6
        assert _is_rectangle(changed)[0]
        assert torch.equal(out[i][:, changed], xn[j][:, changed])
        assert torch.equal(out[i][:, ~changed], xn[i][:, ~changed])
        pasted_any = True
    assert pasted_any
    _, t0 = make(["cutmix"], {"cutmix": {"p": 0.0}})(x, torch.arange(n), gen(15))
    assert torch.equal(t0, torch.eye(n))


def test_mixup_is_convex_combination_of_images_and_targets() -> None:
    n = C
    x = images(n, seed=22)
    xn = normalized_reference(x)
    out, t = make(["mixup"], {"mixup": {"alpha": 1.0}}, eps=0.0)(x, torch.arange(n), gen(16))
    mixed = 0
    for i in range(n):
        lam = t[i, i].item()
        others = [j for j in range(n) if j != i and t[i, j] > 0]
        j = others[0] if others else i
        assert len(others) <= 1
        assert abs(t[i, j].item() + lam - 1) < 1e-6 if j != i else lam == 1
        torch.testing.assert_close(out[i], lam * xn[i] + (1 - lam) * xn[j], rtol=0, atol=1e-5)
        mixed += j != i
    assert mixed > 0


def test_label_smoothing() -> None:
    eps = 0.1
    y = torch.tensor([3, 0, 9])
    t = soft_targets(y, C, eps)
    torch.testing.assert_close(t.sum(dim=1), torch.ones(3))
    for i, label in enumerate(y.tolist()):
        for c in range(C):
            want = 1 - eps + eps / C if c == label else eps / C
            assert abs(t[i, c].item() - want) < 1e-7
    assert torch.equal(soft_targets(y, C, 0.0), torch.eye(C)[y])
    # through the batch transform, also after cutmix + mixup: still distributions
    _, tb = make(["cutmix", "mixup"], ALWAYS, eps=eps)(images(), labels(), gen(17))
    torch.testing.assert_close(tb.sum(dim=1), torch.ones(B))
    assert tb.min() >= eps / C - 1e-7


def test_no_augmentation_is_normalize() -> None:
    x = images()
    out, t = make([])(x, labels(), gen(0))
    ref = normalized_reference(x)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    val = normalize(x, MEAN, STD)
    assert val.dtype == torch.float32 and val.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(val, ref, rtol=0, atol=1e-6)
    assert torch.equal(t, torch.eye(C)[labels()])


@pytest.mark.parametrize("alpha", [0.2, 1.0, 5.0])
def test_beta_sampler_moments(alpha: float) -> None:
    lam = sample_beta(alpha, 20_000, gen(18), torch.device("cpu"))
    assert lam.min() >= 0 and lam.max() <= 1 and torch.isfinite(lam).all()
    var = 1 / (4 * (2 * alpha + 1))  # Beta(a, a): mean 1/2, variance 1/(4(2a+1))
    assert abs(lam.mean().item() - 0.5) < 4 * math.sqrt(var / 20_000)
    assert abs(lam.var().item() - var) < 0.05 * var


@pytest.mark.parametrize(
    ("alpha", "cdf"),
    [
        (0.5, lambda v: 2 / math.pi * math.asin(math.sqrt(v))),  # arcsine distribution
        (2.0, lambda v: 3 * v**2 - 2 * v**3),
    ],
)
def test_beta_sampler_distribution(alpha: float, cdf) -> None:
    lam = sample_beta(alpha, 20_000, gen(19), torch.device("cpu"))
    for v in (0.05, 0.2, 0.5, 0.7, 0.95):
        assert abs((lam <= v).float().mean().item() - cdf(v)) < 0.015


def test_beta_sampler_tiny_alpha_has_no_nan() -> None:
    lam = sample_beta(0.01, 10_000, gen(20), torch.device("cpu"))
    assert torch.isfinite(lam).all()
    assert ((lam < 0.01) | (lam > 0.99)).float().mean() > 0.9  # mass at the ends


# -- the order: the catalogue's, step by step ---------------------------------------------------------
#
# An independent composition: each augmentation's draws written out again from its definition, applied
# one at a time (crop and flip as two steps, boxes by slicing), on the stage it works on: uint8 images,
# floats in [0, 1], normalised. Its draws come in the order the steps are composed in.


def _ref_crop(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b, _, h, w, pad = *x.shape, int(p["padding"])
    top = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    left = torch.randint(0, 2 * pad + 1, (b,), generator=g)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    return torch.stack([padded[i, :, top[i]:top[i] + h, left[i]:left[i] + w] for i in range(b)]), t


def _ref_flip(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    flip = torch.rand(x.shape[0], generator=g) < p["p"]
    return torch.where(flip[:, None, None, None], torch.flip(x, dims=[-1]), x), t


def _ref_uniform(n, lo, hi, g):
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _ref_rotation(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    return rotate(x, _ref_uniform(x.shape[0], -p["degrees"], p["degrees"], g)), t


def _ref_color_jitter(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b = x.shape[0]
    f = [_ref_uniform(b, max(0.0, 1.0 - p[k]), 1.0 + p[k], g) if p[k] > 0 else None
         for k in ("brightness", "contrast", "saturation")]
    hue = _ref_uniform(b, -p["hue"], p["hue"], g) if p["hue"] > 0 else None
    return color_jitter(x, *f, hue), t


def _zero_boxes(x: torch.Tensor, boxes: list[list[tuple[int, int, int, int]]]) -> torch.Tensor:
    x = x.clone()
    for i, sample in enumerate(boxes):
        for top, left, bottom, right in sample:
            x[i, :, max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] = 0.0
    return x


def _ref_cutout(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b, _, h, w = x.shape
    holes, s = int(p["holes"]), int(p["size"])
    cy = torch.randint(0, h, (b, holes), generator=g)
    cx = torch.randint(0, w, (b, holes), generator=g)
    return _zero_boxes(x, [[(int(cy[i, k]) - s // 2, int(cx[i, k]) - s // 2, int(cy[i, k]) - s // 2 + s,
                             int(cx[i, k]) - s // 2 + s) for k in range(holes)] for i in range(b)]), t


def _ref_random_erasing(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b, _, h, w = x.shape
    area = (h * w) * (p["scale_min"] + (p["scale_max"] - p["scale_min"]) * torch.rand((b, 10), generator=g))
    lo, hi = math.log(0.3), math.log(3.3)
    ratio = torch.exp(lo + (hi - lo) * torch.rand((b, 10), generator=g))
    bh, bw = torch.round(torch.sqrt(area * ratio)).long(), torch.round(torch.sqrt(area / ratio)).long()
    # the first of the 10 attempts that fits (attempt 0's size, unused, when none does)
    first = [next((k for k in range(10) if bh[i, k] < h and bw[i, k] < w), None) for i in range(b)]
    bh = torch.tensor([int(bh[i, k or 0]) for i, k in enumerate(first)])
    bw = torch.tensor([int(bw[i, k or 0]) for i, k in enumerate(first)])
    top = (torch.rand(b, generator=g) * (h - bh + 1)).long()
    left = (torch.rand(b, generator=g) * (w - bw + 1)).long()
    apply = torch.rand(b, generator=g) < p["p"]
    return _zero_boxes(x, [[(int(top[i]), int(left[i]), int(top[i] + bh[i]), int(left[i] + bw[i]))]
                           if apply[i] and first[i] is not None else [] for i in range(b)]), t


def _ref_mix(x, t, perm, lam_x, lam_t):
    return x * lam_x + x[perm] * (1.0 - lam_x), lam_t.view(-1, 1) * t + (1.0 - lam_t.view(-1, 1)) * t[perm]


def _ref_cutmix(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b, _, h, w = x.shape
    perm = torch.randperm(b, generator=g)
    lam = sample_beta(float(p["alpha"]), b, g, torch.device("cpu"))
    apply = torch.rand(b, generator=g) < p["p"]
    cut_h, cut_w = (h * torch.sqrt(1.0 - lam)).long(), (w * torch.sqrt(1.0 - lam)).long()
    cy, cx = torch.randint(0, h, (b,), generator=g), torch.randint(0, w, (b,), generator=g)
    out, area = x.clone(), torch.zeros(b)
    for i in range(b):
        top, left = max(int(cy[i] - cut_h[i] // 2), 0), max(int(cx[i] - cut_w[i] // 2), 0)
        bottom, right = min(int(cy[i] - cut_h[i] // 2 + cut_h[i]), h), min(int(cx[i] - cut_w[i] // 2 + cut_w[i]), w)
        if apply[i] and bottom > top and right > left:
            out[i, :, top:bottom, left:right] = x[perm[i], :, top:bottom, left:right]
            area[i] = (bottom - top) * (right - left)
    lam_t = 1.0 - area / (h * w)
    return out, lam_t.view(-1, 1) * t + (1.0 - lam_t.view(-1, 1)) * t[perm]


def _ref_mixup(p: dict, x: torch.Tensor, t: torch.Tensor, g: torch.Generator):
    b = x.shape[0]
    perm = torch.randperm(b, generator=g)
    lam = sample_beta(float(p["alpha"]), b, g, torch.device("cpu"))
    lam = torch.where(torch.rand(b, generator=g) < p["p"], lam, torch.ones_like(lam))
    return _ref_mix(x, t, perm, lam.view(-1, 1, 1, 1), lam)


# name -> (stage: 0 uint8, 1 floats in [0, 1], 2 normalised; step)
REF_STEPS = {
    "crop": (0, _ref_crop), "flip": (0, _ref_flip), "rotation": (1, _ref_rotation),
    "color_jitter": (1, _ref_color_jitter), "cutout": (2, _ref_cutout), "random_erasing": (2, _ref_random_erasing),
    "cutmix": (2, _ref_cutmix), "mixup": (2, _ref_mixup),
}
# The order the transform applied them in when it listed them by hand, before it followed the catalogue.
HAND_ORDER = ("crop", "flip", "rotation", "color_jitter", "cutout", "random_erasing", "cutmix", "mixup")
# probabilities below 1 so that skipped samples are compared too
SOME = {"flip": {"p": 0.5}, "random_erasing": {"p": 0.7}, "cutmix": {"p": 0.8}, "mixup": {"p": 0.9}}


def composed(order, params: dict, x: torch.Tensor, y: torch.Tensor, g: torch.Generator, eps: float = 0.1):
    """The steps of ``order`` one after another, moving the batch on between stages."""
    t, stage = soft_targets(y, C, eps), 0
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)

    def move_to(target: int) -> None:
        nonlocal x, stage
        if stage < 1 <= target:
            x = x.to(torch.float32) / 255.0
        if stage < 2 <= target:
            x = (x - mean) / std
        stage = max(stage, target)

    for name in order:
        move_to(REF_STEPS[name][0])
        x, t = REF_STEPS[name][1](params[name], x, t, g)
    move_to(2)
    return x, t


def _resolved(names, given: dict) -> dict:
    return {n: {k: p.default for k, p in catalog.AUGMENTS[n].items()} | given.get(n, {}) for n in names}


def test_every_combination_gives_what_the_hand_ordered_transform_gave() -> None:
    """Every subset of the augmentations, bitwise: the same draws in the same order as before."""
    import itertools

    x, y = images(), labels()
    for r in range(len(AUGMENTS) + 1):
        for combo in itertools.combinations(AUGMENTS, r):
            g_new, g_ref = gen(7), gen(7)
            out, t = BatchAugment(list(combo), SOME, mean=MEAN, std=STD, num_classes=C, label_smoothing=0.1)(x, y, g_new)
            want_x, want_t = composed([n for n in HAND_ORDER if n in combo], _resolved(combo, SOME), x, y, g_ref)
            assert torch.equal(out, want_x) and torch.equal(t, want_t), f"{combo}: output differs"
            assert torch.equal(g_new.get_state(), g_ref.get_state()), f"{combo}: a different number of draws"


@pytest.mark.parametrize("pair", [("crop", "flip"), ("rotation", "color_jitter"), ("cutout", "random_erasing"),
                                  ("cutmix", "mixup")])
def test_a_pair_runs_in_catalogue_order_and_the_order_shows(pair: tuple[str, str]) -> None:
    """Two augmentations of one stage: the output is the catalogue-order composition, and the reverse
    composition gives another output, so a transform that ran them the other way round would fail."""
    x, y, params = images(), labels(), _resolved(pair, {**ALWAYS, "flip": {"p": 0.5}})
    order = [n for n in CANONICAL_ORDER if n in pair]
    out, t = BatchAugment(list(reversed(pair)), params, mean=MEAN, std=STD, num_classes=C, label_smoothing=0.1)(x, y, gen(3))
    want_x, want_t = composed(order, params, x, y, gen(3))
    assert torch.equal(out, want_x) and torch.equal(t, want_t)
    other_x, other_t = composed(order[::-1], params, x, y, gen(3))
    assert not (torch.equal(out, other_x) and torch.equal(t, other_t))


def test_the_catalogue_order_is_the_one_applied(monkeypatch) -> None:
    """Swap neighbours of each stage in the order the transform reads: it follows, step by step."""
    import cnnstress.augment as augment

    swapped = ("flip", "crop", "color_jitter", "rotation", "random_erasing", "cutout", "mixup", "cutmix")
    monkeypatch.setattr(augment, "CANONICAL_ORDER", swapped)
    x, y, params = images(), labels(), _resolved(AUGMENTS, {**ALWAYS, "flip": {"p": 0.5}})
    for names in (list(AUGMENTS), ["crop", "flip"], ["rotation", "color_jitter"], ["cutmix", "mixup", "cutout"]):
        aug = make(names, params, eps=0.1)
        assert aug.names == tuple(n for n in swapped if n in names)
        out, t = aug(x, y, gen(11))
        want_x, want_t = composed(aug.names, params, x, y, gen(11))
        assert torch.equal(out, want_x) and torch.equal(t, want_t), f"{names}: not applied in the order {aug.names}"


# -- image sides other than 32: crop padding and cutout size scale with the side -----------------


@pytest.mark.parametrize("value", [0, 1, 3, 4, 5, 8, 16, 32])
@pytest.mark.parametrize("side", [16, 24, 32, 48, 64, 100, 128])
def test_scaled_pixels_is_round_half_up_of_value_times_side_over_32(value: int, side: int) -> None:
    from fractions import Fraction

    exact = Fraction(value * side, 32)
    expected = math.floor(exact + Fraction(1, 2))
    if value >= 1:
        expected = max(expected, 1)
    assert scaled_pixels(value, side) == expected
    if side == 32:
        assert scaled_pixels(value, side) == value


def coordinate_images(n: int, side: int) -> torch.Tensor:
    """uint8 (n, 3, side, side): channel 0 holds row + 1, channel 1 column + 1 (0 = padding)."""
    rows = torch.arange(1, side + 1, dtype=torch.uint8)
    x = torch.zeros(n, 3, side, side, dtype=torch.uint8)
    x[:, 0] = rows[:, None]
    x[:, 1] = rows[None, :]
    return x


@pytest.mark.parametrize("side, padding", [(16, 2), (32, 4), (64, 8), (128, 16)])
def test_crop_shift_reaches_the_scaled_padding_and_no_further(side: int, padding: int) -> None:
    n = 256  # P(no sample at an extreme offset) = (2p / (2p + 1))^256 per side: < 1e-6 at p = 16
    x = coordinate_images(n, side)
    aug = BatchAugment(["crop"], mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), num_classes=C)
    out, _ = aug(x, torch.arange(n) % C, gen(21))
    raw = torch.round(out * 255).to(torch.int64)
    assert raw.shape == (n, 3, side, side)
    shifts = []
    for i in range(n):
        inside = raw[i, 0] > 0
        # the window shows source pixel (row - 1 at value row) at output (r, c): shift = source - output
        r, c = inside.nonzero()[0].tolist()
        dy, dx = int(raw[i, 0, r, c]) - 1 - r, int(raw[i, 1, r, c]) - 1 - c
        expect = torch.zeros(side + 2 * padding, side + 2 * padding, dtype=torch.int64)
        expect[padding:padding + side, padding:padding + side] = torch.arange(1, side + 1)[:, None]
        assert torch.equal(raw[i, 0], expect[padding + dy:padding + dy + side, padding + dx:padding + dx + side])
        shifts.append((dy, dx))
    dys, dxs = [s[0] for s in shifts], [s[1] for s in shifts]
    assert max(map(abs, dys + dxs)) == padding  # padding 4 at 32 px, round(4 * side / 32) elsewhere
    assert min(dys) == -padding and max(dys) == padding and min(dxs) == -padding and max(dxs) == padding


@pytest.mark.parametrize("side, hole", [(16, 8), (64, 32), (128, 64)])
def test_cutout_hole_is_the_scaled_size(side: int, hole: int) -> None:
    x = torch.randint(0, 256, (48, 3, side, side), generator=gen(22), dtype=torch.uint8)
    out, _ = make(["cutout"])(x, labels(48), gen(23))  # size 16 at 32 px
    box = _zero_box(out, normalized_reference(x))
    areas = []
    for i in range(48):
        rect, h, w = _is_rectangle(box[i])
        assert rect and 1 <= h <= hole and 1 <= w <= hole
        areas.append(h * w)
    assert max(areas) == hole * hole and min(areas) < hole * hole  # whole holes, and clipped ones
