"""Tests for cnnstress.corrupt: contract, determinism, severity ordering, and references."""

from __future__ import annotations

import colorsys
import hashlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnstress import catalog
from cnnstress import corrupt as C

RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog")
DETERMINISTIC = ("gaussian_blur", "defocus_blur", "contrast", "brightness", "saturate", "pixelate", "jpeg")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------------------- images


def smooth_images(n: int, seed: int, side: int = 32) -> np.ndarray:
    """Random smooth colour images: bilinear-upsampled noise at two scales, stretched to [0.05, 0.95]."""
    rng = np.random.default_rng(seed)
    coarse = F.interpolate(torch.from_numpy(rng.random((n, 3, 4, 4))), size=side, mode="bilinear", align_corners=False)
    fine = F.interpolate(torch.from_numpy(rng.random((n, 3, 8, 8))), size=side, mode="bilinear", align_corners=False)
    img = (coarse + 0.5 * fine).numpy()
    lo = img.min(axis=(1, 2, 3), keepdims=True)
    hi = img.max(axis=(1, 2, 3), keepdims=True)
    return 0.05 + 0.9 * (img - lo) / (hi - lo)


def shapes_images(n: int, seed: int, side: int = 32) -> np.ndarray:
    """Shapes-like images: a coloured disc or square on a background of another hue, hard edges."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    out = np.empty((n, 3, side, side))
    for k in range(n):
        bg = np.array(colorsys.hsv_to_rgb(rng.random(), 0.3 + 0.5 * rng.random(), 0.4 + 0.5 * rng.random()))
        fg = np.array(colorsys.hsv_to_rgb(rng.random(), 0.5 + 0.5 * rng.random(), 0.3 + 0.6 * rng.random()))
        cy, cx = rng.integers(8, side - 8, size=2)
        r = rng.integers(4, 8)
        if k % 2 == 0:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            mask = (abs(yy - cy) <= r) & (abs(xx - cx) <= r)
        out[k] = np.where(mask[None], fg[:, None, None], bg[:, None, None])
    return out


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    imgs = np.concatenate([smooth_images(24, seed=1), shapes_images(8, seed=2)])
    return torch.from_numpy(imgs).to(torch.float32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = ((a.double() - b.double()) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
    return 10.0 * torch.log10(1.0 / mse)


def mean_psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(psnr_per_image(a, b).mean())


# --------------------------------------------------------------------------------------- registry


def test_names_and_params_match_catalog() -> None:
    assert C.CORRUPTIONS == catalog.CORRUPTIONS
    assert tuple(C.PARAMS) == catalog.CORRUPTIONS
    assert all(len(v) == 5 for v in C.PARAMS.values())
    assert set(RANDOM) | set(DETERMINISTIC) == set(catalog.CORRUPTIONS)
    assert C.RANDOM_CORRUPTIONS == frozenset(RANDOM)


def test_cifar10c_noise_parameters() -> None:
    # the CIFAR-scale values of make_cifar_c.py, not ImageNet-C's (0.08 .. 0.38)
    assert C.PARAMS["gaussian_noise"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    assert C.PARAMS["jpeg"] == (80, 65, 58, 50, 40)


# Every c = [...] of make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c/, commit ca36008)
# for the corruptions generated here, copied by hand from the script.
MAKE_CIFAR_C = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "shot_noise": (500, 250, 100, 75, 50),
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    "jpeg": (80, 65, 58, 50, 40),  # jpeg_compression there
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
}


def test_parameters_are_make_cifar_c_s_but_the_documented_one() -> None:
    assert set(MAKE_CIFAR_C) == set(C.PARAMS)
    for name, ref in MAKE_CIFAR_C.items():
        ours = C.PARAMS[name]
        if name == "motion_blur":  # severity 4's sigma, see the module docstring (a)
            assert ours[3] == (8, 2.25) and ours[:3] + ours[4:] == ref[:3] + ref[4:]
            assert "(8,2.25)" in C.__doc__ and "severity 4 is (8, 2)" in C.__doc__
        else:
            assert ours == ref, name


# --------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("name", catalog.CORRUPTIONS)
def test_output_contract(batch: torch.Tensor, name: str, severity: int) -> None:
    before = batch.clone()
    out = C.corrupt(batch, name, severity, gen(0))
    assert out.shape == batch.shape
    assert out.dtype == torch.float32
    assert out.device == batch.device
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.isfinite(out).all()
    assert not torch.equal(out, batch), f"{name} severity {severity} left the batch unchanged"
    assert torch.equal(batch, before), "the input batch was modified in place"


def test_float64_input_gives_float32(batch: torch.Tensor) -> None:
    out = C.corrupt(batch[:4].double(), "contrast", 3, gen(0))
    assert out.dtype == torch.float32
    ref = C.corrupt(batch[:4], "contrast", 3, gen(0))
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", catalog.CORRUPTIONS)
def test_odd_shapes(name: str) -> None:
    # non-square, not a multiple of 8 or of a power of two, and tiny images
    for shape in [(3, 3, 20, 27), (2, 3, 5, 7)]:
        x = torch.rand(shape, generator=gen(3))
        out = C.corrupt(x, name, 5, gen(0))
        assert out.shape == x.shape and out.dtype == torch.float32
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_empty_batch() -> None:
    out = C.corrupt(torch.zeros(0, 3, 32, 32), "fog", 2, gen(0))
    assert out.shape == (0, 3, 32, 32)


# ------------------------------------------------------------------------------------ determinism


@pytest.mark.parametrize("name", catalog.CORRUPTIONS)
def test_determinism(batch: torch.Tensor, name: str) -> None:
    a = C.corrupt(batch, name, 3, gen(123))
    b = C.corrupt(batch, name, 3, gen(123))
    assert torch.equal(a, b)
    c = C.corrupt(batch, name, 3, gen(124))
    if name in RANDOM:
        assert not torch.equal(a, c)
    else:
        assert torch.equal(a, c)


def test_random_corruptions_differ_between_images_of_one_batch() -> None:
    # the same image twice in one batch must get independent draws (e.g. motion angle, fog map)
    x = torch.from_numpy(smooth_images(1, seed=5)).float().repeat(2, 1, 1, 1)
    for name in RANDOM:
        out = C.corrupt(x, name, 3, gen(0))
        assert not torch.equal(out[0], out[1]), name


# --------------------------------------------------------------------------------- severity order


# saturate's severities are not ordered by distance (CIFAR-10-C's definition: desaturate at 1-2,
# oversaturate at 3-5); test_saturate_is_cifar10c_saturate pins it instead
ORDERED = tuple(c for c in catalog.CORRUPTIONS if c != "saturate")


@pytest.mark.parametrize("name", ORDERED)
def test_psnr_strictly_decreases_with_severity(batch: torch.Tensor, name: str) -> None:
    per_image = torch.stack([psnr_per_image(C.corrupt(batch, name, s, gen(7)), batch) for s in range(1, 6)])
    for subset in (slice(None), slice(0, 24), slice(24, None)):  # all, smooth only, shapes only
        psnr = per_image[:, subset].mean(1).tolist()
        assert all(a > b for a, b in zip(psnr, psnr[1:])), f"{name}: mean PSNR by severity {psnr}"


# ------------------------------------------------------------------------------ batch consistency


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_batch_equals_halves(batch: torch.Tensor, name: str) -> None:
    for severity in (1, 5):
        whole = C.corrupt(batch, name, severity, gen(0))
        first = C.corrupt(batch[:16], name, severity, gen(0))
        second = C.corrupt(batch[16:], name, severity, gen(0))
        halves = torch.cat([first, second])
        torch.testing.assert_close(whole, halves, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- noises


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_residual_std(severity: int) -> None:
    x = torch.full((32, 3, 32, 32), 0.5)
    sigma = C.PARAMS["gaussian_noise"][severity - 1]
    res = C.corrupt(x, "gaussian_noise", severity, gen(11)) - x
    assert abs(float(res.std()) - sigma) < 0.02 * sigma
    assert abs(float(res.mean())) < 0.02 * sigma


@pytest.mark.parametrize("severity", [1, 5])
def test_shot_noise_variance_is_poisson(severity: int) -> None:
    x = torch.full((32, 3, 32, 32), 0.5)
    rate = C.PARAMS["shot_noise"][severity - 1]
    out = C.corrupt(x, "shot_noise", severity, gen(12))
    # Poisson(x * rate) / rate: mean x, variance x / rate, values on the 1/rate lattice
    assert abs(float(out.mean()) - 0.5) < 0.005
    assert abs(float(out.var()) / (0.5 / rate) - 1.0) < 0.05
    lattice = out * rate
    torch.testing.assert_close(lattice, lattice.round(), atol=1e-3, rtol=0)


@pytest.mark.parametrize("severity", [1, 5])
def test_impulse_noise_fraction(severity: int) -> None:
    x = torch.full((32, 3, 32, 32), 0.5)
    amount = C.PARAMS["impulse_noise"][severity - 1]
    out = C.corrupt(x, "impulse_noise", severity, gen(13))
    hit = out != 0.5
    assert set(out[hit].unique().tolist()) <= {0.0, 1.0}
    n = x.numel()
    frac = float(hit.float().mean())
    assert abs(frac - amount) < 4 * math.sqrt(amount * (1 - amount) / n)
    salt = float((out == 1.0).float().sum() / hit.float().sum())
    assert abs(salt - 0.5) < 4 * math.sqrt(0.25 / float(hit.sum()))


# ------------------------------------------------------------------------------------------ blurs


def numpy_correlate_reflect(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Explicit per-offset correlation of (3, H, W) with (kh, kw), numpy 'reflect' (= torch reflect)."""
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    padded = np.pad(img, ((0, 0), (ph, ph), (pw, pw)), mode="reflect")
    out = np.zeros_like(img)
    h, w = img.shape[1:]
    for dy in range(kh):
        for dx in range(kw):
            out += kernel[dy, dx] * padded[:, dy : dy + h, dx : dx + w]
    return out


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_blur_matches_explicit_convolution(batch: torch.Tensor, severity: int) -> None:
    sigma = C.PARAMS["gaussian_blur"][severity - 1]
    radius = int(4 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    g1 = np.exp(-(t**2) / (2 * sigma**2))
    g1 /= g1.sum()
    img = batch[26].double().numpy()
    ref = numpy_correlate_reflect(img, np.outer(g1, g1))
    out = C.corrupt(batch[26:27], "gaussian_blur", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_blur_preserves_mean(batch: torch.Tensor, severity: int) -> None:
    out = C.corrupt(batch, "gaussian_blur", severity, gen(0))
    np.testing.assert_allclose(out.mean((2, 3)).numpy(), batch.mean((2, 3)).numpy(), atol=2e-3)


def cifar_disk(radius: float, alias_blur: float) -> np.ndarray:
    """CIFAR-10-C's disk(): 17x17 aliased disk, normalised, then a 3x3 Gaussian (zero outside)."""
    L = np.arange(-8, 9)
    X, Y = np.meshgrid(L, L)
    disk = ((X**2 + Y**2) <= radius**2).astype(np.float64)
    disk /= disk.sum()
    g = np.exp(-np.array([1.0, 0.0, 1.0]) / (2 * alias_blur**2))
    g /= g.sum()
    out = np.zeros_like(disk)
    padded = np.pad(disk, 1)
    for dy in range(3):
        for dx in range(3):
            out += g[dy] * g[dx] * padded[dy : dy + 17, dx : dx + 17]
    return out


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_defocus_kernel_and_result_match_reference(batch: torch.Tensor, severity: int) -> None:
    radius, alias = C.PARAMS["defocus_blur"][severity - 1]
    ref_kernel = cifar_disk(radius, alias)
    kernel = C.defocus_kernel(radius, alias).numpy()
    r = kernel.shape[0] // 2
    full = np.zeros((17, 17))
    full[8 - r : 8 + r + 1, 8 - r : 8 + r + 1] = kernel
    np.testing.assert_allclose(full, ref_kernel / ref_kernel.sum(), atol=1e-12)
    img = batch[25].double().numpy()
    out = C.corrupt(batch[25:26], "defocus_blur", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, numpy_correlate_reflect(img, kernel), atol=1e-5)


@pytest.mark.parametrize("name", ["gaussian_blur", "defocus_blur", "motion_blur", "pixelate", "jpeg", "contrast"])
def test_constant_image_survives(name: str) -> None:
    x = torch.full((4, 3, 32, 32), 0.3) + torch.tensor([0.0, 0.2, 0.4])[None, :, None, None]
    out = C.corrupt(x, name, 5, gen(0))
    atol = 0.02 if name == "jpeg" else 1e-5  # JPEG rounds the DC coefficient
    torch.testing.assert_close(out, x, atol=atol, rtol=0)


def test_motion_kernels_follow_the_angle() -> None:
    radius, sigma = 6, 1.5
    taps = min(2 * radius + 1, math.ceil(5 * sigma) + 1)
    w = np.exp(-(np.arange(taps) ** 2) / (2 * sigma**2))
    w /= w.sum()
    angles = torch.tensor([0.0, 30.0, -45.0, 12.5])
    kernels = C.motion_kernels(angles, radius, sigma).double().numpy()
    k = kernels.shape[-1]
    half = k // 2
    np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-6)
    # angle 0: taps lie exactly on the centre row, trailing to the right (one-sided)
    row = np.zeros(k)
    row[half : half + taps] = w
    np.testing.assert_allclose(kernels[0, half], row, atol=1e-6)
    assert np.abs(kernels[0]).sum() - np.abs(kernels[0, half]).sum() < 1e-6
    # bilinear spreading keeps each kernel's centre of mass at sum_i w_i (i sin a, i cos a)
    grid = np.arange(k) - half
    for b, a in enumerate(angles.tolist()):
        mean_i = float((w * np.arange(taps)).sum())
        cy = (kernels[b].sum(axis=1) * grid).sum()
        cx = (kernels[b].sum(axis=0) * grid).sum()
        assert abs(cy - mean_i * math.sin(math.radians(a))) < 1e-4
        assert abs(cx - mean_i * math.cos(math.radians(a))) < 1e-4


# ---------------------------------------------------------------------------------- colour & tone


def test_contrast_matches_formula(batch: torch.Tensor) -> None:
    x = batch.double().numpy()
    for severity in (1, 5):
        c = C.PARAMS["contrast"][severity - 1]
        means = x.mean(axis=(2, 3), keepdims=True)
        ref = np.clip((x - means) * c + means, 0, 1)
        np.testing.assert_allclose(C.corrupt(batch, "contrast", severity, gen(0)).numpy(), ref, atol=1e-6)


def test_hsv_round_trip_and_colorsys(batch: torch.Tensor) -> None:
    x = batch[20:28, :, ::4, ::4]
    hsv = C.rgb_to_hsv(x)
    torch.testing.assert_close(C.hsv_to_rgb(hsv), x, atol=2e-6, rtol=0)
    arr = x.double().numpy()
    for b, i, j in [(0, 0, 0), (3, 2, 5), (7, 7, 7), (5, 1, 3)]:
        ref = colorsys.rgb_to_hsv(*arr[b, :, i, j])
        np.testing.assert_allclose(hsv[b, :, i, j].numpy(), ref, atol=1e-6)


def colorsys_reference(x: np.ndarray, fn) -> np.ndarray:
    out = np.empty_like(x)
    for b in range(x.shape[0]):
        for i in range(x.shape[2]):
            for j in range(x.shape[3]):
                h, s, v = fn(*colorsys.rgb_to_hsv(*x[b, :, i, j]))
                out[b, :, i, j] = colorsys.hsv_to_rgb(h, s, v)
    return out


@pytest.mark.parametrize("severity", [1, 5])
def test_brightness_and_saturate_match_colorsys(batch: torch.Tensor, severity: int) -> None:
    x = batch[22:27, :, ::5, ::5].contiguous()
    arr = x.double().numpy()
    shift = C.PARAMS["brightness"][severity - 1]
    ref = colorsys_reference(arr, lambda h, s, v: (h, s, min(v + shift, 1.0)))
    np.testing.assert_allclose(C.corrupt(x, "brightness", severity, gen(0)).numpy(), ref, atol=1e-5)
    scale, offset = C.PARAMS["saturate"][severity - 1]
    ref = colorsys_reference(arr, lambda h, s, v: (h, min(max(s * scale + offset, 0.0), 1.0), v))
    np.testing.assert_allclose(C.corrupt(x, "saturate", severity, gen(0)).numpy(), ref, atol=1e-5)


# make_cifar_c.py (hendrycks/robustness, ImageNet-C/create_c/), saturate: c = [(0.3, 0), (0.1, 0),
# (1.5, 0), (2, 0.1), (2.5, 0.2)][severity - 1], then skimage rgb2hsv, S = clip(S * c[0] + c[1], 0,
# 1), hsv2rgb. Written out here, independently of corrupt.PARAMS.
CIFAR10C_SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))


def reference_saturate(img: np.ndarray, severity: int) -> np.ndarray:
    """make_cifar_c.py's saturate on one (H, W, 3) float image in [0, 1], pixel by pixel with
    colorsys (the same HSV conventions as skimage: hue in [0, 1), S = (max - min) / max)."""
    a, b = CIFAR10C_SATURATE[severity - 1]
    out = np.empty_like(img)
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            h, s, v = colorsys.rgb_to_hsv(*img[i, j])
            out[i, j] = colorsys.hsv_to_rgb(h, min(max(s * a + b, 0.0), 1.0), v)
    return np.clip(out, 0.0, 1.0)


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_saturate_is_cifar10c_saturate(batch: torch.Tensor, severity: int) -> None:
    x = torch.cat([batch[20:24, :, ::4, ::4], batch[26:30, :, ::4, ::4]]).contiguous()  # smooth and shapes images
    grey = torch.full((1, 3, 8, 8), 0.4)
    x = torch.cat([x, grey])
    out = C.corrupt(x, "saturate", severity, gen(0)).numpy()
    for k in range(x.shape[0]):
        ref = reference_saturate(x[k].double().numpy().transpose(1, 2, 0), severity)
        np.testing.assert_allclose(out[k].transpose(1, 2, 0), ref, atol=1e-5)
    # severities 1-2 take colour away, 3-5 add it (a grey image gets some at 4 and 5: offset 0.1, 0.2)
    sat = C.rgb_to_hsv(torch.from_numpy(out))[:, 1].mean().item()
    before = C.rgb_to_hsv(x)[:, 1].mean().item()
    assert (sat < before) if severity <= 2 else (sat > before)
    assert np.array_equal(out[-1], grey[0].numpy()) == (severity <= 3)


# --------------------------------------------------------------------------------------- pixelate


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_pixelate_identity_on_block_constant_images(severity: int) -> None:
    size = int(32 * C.PARAMS["pixelate"][severity - 1] + 1e-9)
    small = torch.rand(4, 3, size, size, generator=gen(severity))
    blocky = F.interpolate(small, size=(32, 32), mode="nearest")
    out = C.corrupt(blocky, "pixelate", severity, gen(0))
    torch.testing.assert_close(out, blocky, atol=1e-6, rtol=0)


def test_pixelate_is_block_means(batch: torch.Tensor) -> None:
    severity = 5
    size = int(32 * C.PARAMS["pixelate"][severity - 1] + 1e-9)
    # the block of each pixel is the source index nearest upsampling picks
    idx = F.interpolate(torch.arange(size, dtype=torch.float32)[None, None], size=32, mode="nearest")[0, 0]
    block = idx.long().numpy()
    img = batch[27].double().numpy()
    ref = np.empty_like(img)
    for i in range(32):
        for j in range(32):
            rows, cols = block == block[i], block == block[j]
            ref[:, i, j] = img[:, rows][:, :, cols].mean(axis=(1, 2))
    out = C.corrupt(batch[27:28], "pixelate", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)


# ------------------------------------------------------------------------------------------- jpeg


ANNEX_K_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ]
)


def test_dct_matrix_is_orthonormal_dct2() -> None:
    d = C.dct_matrix(8, dtype=torch.float64).numpy()
    np.testing.assert_allclose(d @ d.T, np.eye(8), atol=1e-12)
    for k in range(8):
        for n in range(8):
            alpha = math.sqrt(1 / 8) if k == 0 else math.sqrt(2 / 8)
            assert abs(d[k, n] - alpha * math.cos(math.pi * (2 * n + 1) * k / 16)) < 1e-12


def test_quant_tables_follow_ijg_scaling() -> None:
    for quality, scale in [(80, 40), (50, 100), (40, 125), (10, 500), (100, 0)]:
        luma, _ = C.jpeg_quant_tables(quality)
        ref = np.clip((ANNEX_K_LUMA * scale + 50) // 100, 1, 255)
        np.testing.assert_array_equal(luma.numpy(), ref)
    with pytest.raises(ValueError, match="1..100"):
        C.jpeg_quant_tables(0)


def test_jpeg_grey_image_matches_loop_reference() -> None:
    # a grey image has Cb = Cr = 128, so only the luminance path acts: compare it with textbook loops
    rng = np.random.default_rng(21)
    grey = rng.random((16, 16)) * 0.8 + 0.1
    quality = 50
    table = np.clip((ANNEX_K_LUMA * 100 + 50) // 100, 1, 255)
    shifted = grey * 255 - 128
    ref = np.empty_like(shifted)
    cu = [math.sqrt(0.5)] + [1.0] * 7
    cos = np.array([[math.cos((2 * x + 1) * u * math.pi / 16) for x in range(8)] for u in range(8)])
    for by in range(0, 16, 8):
        for bx in range(0, 16, 8):
            blk = shifted[by : by + 8, bx : bx + 8]
            coef = np.empty((8, 8))
            for u in range(8):
                for v in range(8):
                    coef[u, v] = 0.25 * cu[u] * cu[v] * np.sum(blk * np.outer(cos[u], cos[v]))
            q = np.round(coef / table) * table
            for y in range(8):
                for x in range(8):
                    terms = (cu[u] * cu[v] * q[u, v] * cos[u, y] * cos[v, x] for u in range(8) for v in range(8))
                    ref[by + y, bx + x] = 0.25 * sum(terms)
    ref = np.clip((ref + 128) / 255, 0, 1)
    x = torch.from_numpy(grey).float()[None, None].repeat(1, 3, 1, 1)
    out = C.jpeg_compress(x, quality).clamp(0, 1)[0].double().numpy()
    for c in range(3):
        np.testing.assert_allclose(out[c], ref, atol=2e-4)


def test_jpeg_constant_block_survives() -> None:
    x = torch.tensor([0.2, 0.5, 0.7]).reshape(1, 3, 1, 1).expand(1, 3, 8, 8).contiguous()
    for quality in (80, 40, 10):
        out = C.jpeg_compress(x, quality)
        # only the DC coefficient is non-zero and it is off by at most half a quantisation step
        torch.testing.assert_close(out, x, atol=0.03, rtol=0)
        assert float((out - out.mean((2, 3), keepdim=True)).abs().max()) < 1e-4


def test_jpeg_quality_ordering(batch: torch.Tensor) -> None:
    psnr = [mean_psnr(C.jpeg_compress(batch, q).clamp(0, 1), batch) for q in (95, 80, 50, 20, 5)]
    assert all(a > b for a, b in zip(psnr, psnr[1:])), psnr


# -------------------------------------------------------------------------------------------- fog


def test_fog_bounds_and_fractal() -> None:
    maps = C.plasma_fractal(4, 32, 2.0, gen(0), torch.device("cpu"))
    assert maps.shape == (4, 32, 32)
    np.testing.assert_allclose(maps.amin((1, 2)).numpy(), 0.0, atol=1e-7)
    np.testing.assert_allclose(maps.amax((1, 2)).numpy(), 1.0, atol=1e-6)
    # low frequency: neighbouring values are far closer than in white noise (mean |diff| 1/3)
    assert float((maps[:, :, 1:] - maps[:, :, :-1]).abs().mean()) < 0.1
    x = torch.from_numpy(smooth_images(8, seed=9)).float()
    strength = C.PARAMS["fog"][2][0]
    out = C.corrupt(x, "fog", 3, gen(1))
    m = x.amax((1, 2, 3), keepdim=True)
    lo, hi = x * m / (m + strength), (x + strength) * m / (m + strength)
    assert bool((out >= lo - 1e-6).all()) and bool((out <= hi + 1e-6).all())
    # the fog is one map per image, shared by the three channels
    fog = out * (m + strength) / m - x
    torch.testing.assert_close(fog[:, 0], fog[:, 1], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- errors


def test_unknown_name_and_bad_severity() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown corruption 'snow'") as info:
        C.corrupt(x, "snow", 1, gen(0))
    assert all(n in str(info.value) for n in catalog.CORRUPTIONS)
    for bad in (0, 6, -1, True, 2.0, "3"):
        with pytest.raises(ValueError, match="severity"):
            C.corrupt(x, "fog", bad, gen(0))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="severity"):
        C.corrupt_seed(0, "fog", 7, 0)


def test_bad_batches() -> None:
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        C.corrupt(torch.rand(3, 8, 8), "contrast", 1, gen(0))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        C.corrupt(torch.rand(2, 1, 8, 8), "contrast", 1, gen(0))
    with pytest.raises(ValueError, match="floating"):
        C.corrupt(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "contrast", 1, gen(0))
    with pytest.raises(ValueError, match="Generator"):
        C.corrupt(torch.rand(2, 3, 8, 8), "contrast", 1, 0)  # type: ignore[arg-type]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_device_preserved_and_generator_checked(batch: torch.Tensor) -> None:
    x = batch.cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    for name in catalog.CORRUPTIONS:
        out = C.corrupt(x, name, 3, g)
        assert out.device == x.device and out.dtype == torch.float32
        if name in DETERMINISTIC:
            # not bitwise: cuDNN may use TF32 for the blurs, and a JPEG coefficient may round the other way
            diff = (out.cpu() - C.corrupt(batch, name, 3, gen(0))).abs()
            assert float(diff.mean()) < 1e-3 and float(diff.max()) < 0.05, name
        first = C.corrupt(x, name, 3, torch.Generator(device="cuda").manual_seed(0))
        second = C.corrupt(x, name, 3, torch.Generator(device="cuda").manual_seed(0))
        assert torch.equal(first, second), name
    with pytest.raises(ValueError, match="generator is on 'cpu'"):
        C.corrupt(x, "fog", 1, gen(0))


# ------------------------------------------------------------------------------------------ seeds


def reference_seed(base_seed: int, name: str, severity: int, batch_index: int) -> int:
    text = f"cnnstress.corrupt|{base_seed}|{name}|{severity}|{batch_index}"
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def test_corrupt_seed_matches_hashlib_and_is_distinct() -> None:
    seen = {}
    for base in (0, 42):
        for name in catalog.CORRUPTIONS:
            for severity in range(1, 6):
                for bi in range(8):
                    s = C.corrupt_seed(base, name, severity, bi)
                    assert s == reference_seed(base, name, severity, bi)
                    assert 0 <= s < 2**63
                    seen[s] = (base, name, severity, bi)
    assert len(seen) == 2 * len(catalog.CORRUPTIONS) * 5 * 8
    torch.Generator().manual_seed(max(seen))  # every seed is accepted by torch
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="batch_index"):
            C.corrupt_seed(0, "fog", 1, bad)  # type: ignore[arg-type]


def test_corrupt_seed_is_stable_across_processes() -> None:
    code = "from cnnstress.corrupt import corrupt_seed; print(corrupt_seed(7, 'jpeg', 4, 13))"
    # another process with another string-hash salt than this one (hash() would differ)
    hashseed = "2" if os.environ.get("PYTHONHASHSEED") == "1" else "1"
    env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=REPO)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, check=True)
    assert int(res.stdout.strip()) == C.corrupt_seed(7, "jpeg", 4, 13) == reference_seed(7, "jpeg", 4, 13)


def test_seeded_corruption_is_reproducible_from_seed(batch: torch.Tensor) -> None:
    seed = C.corrupt_seed(42, "motion_blur", 2, 0)
    a = C.corrupt(batch, "motion_blur", 2, torch.Generator().manual_seed(seed))
    b = C.corrupt(batch, "motion_blur", 2, torch.Generator().manual_seed(C.corrupt_seed(42, "motion_blur", 2, 0)))
    other = C.corrupt(batch, "motion_blur", 2, torch.Generator().manual_seed(C.corrupt_seed(42, "motion_blur", 2, 1)))
    assert torch.equal(a, b) and not torch.equal(a, other)


# ---------------------------------------------------------------------------------- image sides
#
# CIFAR-10-C's parameters are for 32 px; at side S every length in pixels scales by S / 32.


def test_parameters_at_32_px_are_the_table_s() -> None:
    for name in C.CORRUPTIONS:
        for sev in C.SEVERITIES:
            got = C.scaled_param(name, sev, 32)
            if name == "pixelate":  # blocks down and across: int(32 c), as make_cifar_c.py
                n = int(32 * C.PARAMS[name][sev - 1] + 1e-9)
                assert got == (n, n)
            else:
                assert got is C.PARAMS[name][sev - 1]


@pytest.mark.parametrize("side", [16, 24, 48, 64, 128])
def test_spatial_parameters_scale_with_the_side(side: int) -> None:
    s = side / 32
    for sev in C.SEVERITIES:
        p = {name: C.PARAMS[name][sev - 1] for name in C.CORRUPTIONS}
        assert C.scaled_param("gaussian_blur", sev, side) == pytest.approx(p["gaussian_blur"] * s, rel=1e-12)
        radius, alias = C.scaled_param("defocus_blur", sev, side)
        assert radius == pytest.approx(p["defocus_blur"][0] * s, rel=1e-12) and alias == p["defocus_blur"][1]
        mr, ms = C.scaled_param("motion_blur", sev, side)
        assert mr == max(1, math.floor(p["motion_blur"][0] * s + 0.5))  # halves up: 9 px at 16 px -> 5
        assert ms == pytest.approx(p["motion_blur"][1] * s, rel=1e-12)
        n = min(side - 1, int(32 * p["pixelate"] + 1e-9))
        assert C.scaled_param("pixelate", sev, side) == (n, n)
        for name in set(C.CORRUPTIONS) - C.SPATIAL_CORRUPTIONS:
            assert C.scaled_param(name, sev, side) is p[name]


@pytest.mark.parametrize("name", catalog.CORRUPTIONS)
@pytest.mark.parametrize("side, severity", [(64, 1), (64, 5), (128, 5), (16, 3)])
def test_every_corruption_at_other_sides(name: str, side: int, severity: int) -> None:
    x = torch.from_numpy(smooth_images(2, seed=side + severity, side=side)).float()
    out = C.corrupt(x, name, severity, gen(0))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert not torch.equal(out, x)


@pytest.mark.parametrize("severity", [1, 5])
def test_gaussian_blur_at_64_px_is_the_explicit_convolution_with_twice_sigma(severity: int) -> None:
    sigma = 2 * C.PARAMS["gaussian_blur"][severity - 1]
    radius = int(4 * sigma + 0.5)
    t = np.arange(-radius, radius + 1)
    g1 = np.exp(-(t**2) / (2 * sigma**2))
    g1 /= g1.sum()
    img = smooth_images(1, seed=31, side=64)
    ref = numpy_correlate_reflect(img[0], np.outer(g1, g1))
    out = C.corrupt(torch.from_numpy(img).float(), "gaussian_blur", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("severity", [1, 4, 5])
def test_defocus_blur_at_64_px_uses_the_disk_of_twice_the_radius(severity: int) -> None:
    radius, alias = C.PARAMS["defocus_blur"][severity - 1]
    ref_kernel = cifar_disk(2 * radius, alias)  # the 3x3 antialiasing stays per pixel
    img = smooth_images(1, seed=32, side=64)
    out = C.corrupt(torch.from_numpy(img).float(), "defocus_blur", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, numpy_correlate_reflect(img[0], ref_kernel / ref_kernel.sum()), atol=1e-5)


@pytest.mark.parametrize("severity", [1, 5])
def test_pixelate_at_64_px_is_block_means_of_the_scaled_block_size(severity: int) -> None:
    from fractions import Fraction

    blocks = int(32 * C.PARAMS["pixelate"][severity - 1] + 1e-9)  # across 32 px, and across 64 px
    block = Fraction(64, blocks)  # the block side at 32 px (32 / blocks) times 64 / 32
    of = np.array([int(Fraction(i) / block) for i in range(64)])
    img = smooth_images(1, seed=33, side=64)[0]
    ref = np.empty_like(img)
    for i in range(64):
        for j in range(64):
            ref[:, i, j] = img[:, of == of[i]][:, :, of == of[j]].mean(axis=(1, 2))
    out = C.corrupt(torch.from_numpy(img[None]).float(), "pixelate", severity, gen(0))[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-6)
    assert len(np.unique(out[0, 10])) <= blocks


def _trail_length(side: int, severity: int, seed: int) -> float:
    """Distance from a single bright pixel to the centre of mass of its motion-blurred image."""
    x = torch.zeros(1, 3, side, side)
    x[:, :, side // 2, side // 2] = 1.0
    out = C.corrupt(x, "motion_blur", severity, gen(seed))[0, 0].double().numpy()
    grid = np.arange(side) - side // 2
    cy, cx = (out.sum(axis=1) * grid).sum() / out.sum(), (out.sum(axis=0) * grid).sum() / out.sum()
    return math.hypot(cy, cx)


@pytest.mark.parametrize("side", [32, 64])
@pytest.mark.parametrize("severity", [1, 3])
def test_motion_blur_trail_scales_with_the_side(side: int, severity: int) -> None:
    radius, sigma = C.PARAMS["motion_blur"][severity - 1]
    radius, sigma = math.floor(radius * side / 32 + 0.5), sigma * side / 32
    taps = min(2 * radius + 1, math.ceil(5 * sigma) + 1)
    w = np.exp(-(np.arange(taps) ** 2) / (2 * sigma**2))
    expected = float((w * np.arange(taps)).sum() / w.sum())  # the one-sided Gaussian's mean tap
    for seed in (0, 1, 2):  # any angle: the trail's length does not depend on it
        assert _trail_length(side, severity, seed) == pytest.approx(expected, abs=1e-3)


def test_fog_map_covers_the_image_at_every_side() -> None:
    strength, decay = C.PARAMS["fog"][2]
    for side in (48, 64):
        x = torch.full((2, 3, side, side), 0.5)
        out = C.corrupt(x, "fog", 3, gen(5))
        fog = (out[:, 0] * (0.5 + strength) / 0.5 - 0.5) / strength  # invert (x + s fog) m / (m + s)
        mapsize = 64
        maps = C.plasma_fractal(2, mapsize, decay, gen(5), torch.device("cpu"))[:, None]
        if side != mapsize:  # resized to the image, not cropped: the whole map is in view
            maps = F.interpolate(maps, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
        torch.testing.assert_close(fog, maps[:, 0], atol=1e-4, rtol=0)
