"""Common corruptions in the spirit of CIFAR-10-C, applied to whole batches on the batch's device.

``corrupt(x, name, severity, generator)`` takes a float batch ``(B, 3, H, W)`` in [0, 1] and returns a
float32 batch of the same shape on the same device, clamped to [0, 1]. Every corruption is written in
torch over the whole batch (no PIL, no numpy, no Python loop over images), and every random draw
comes from the ``torch.Generator`` handed in, so a generator seeded with ``corrupt_seed(...)`` gives
the same corrupted test set in every run of a sweep (on the same kind of device: CPU and CUDA random
streams differ).

Parameters (``PARAMS``) are the CIFAR-scale ones of Hendrycks & Dietterich (2019),
``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness (the script that made the
published CIFAR-10-C files, read at commit ca36008), not ImageNet-C's. Every parameter was checked
against that script; every difference that remains is in this table, the rest are equal:

| name           | per severity 1..5 (here = make_cifar_c.py unless said) | how this implementation differs                  |
|----------------|--------------------------------------------------------|--------------------------------------------------|
| gaussian_noise | sigma 0.04 0.06 0.08 0.09 0.10                         | (u)                                              |
| shot_noise     | photons per unit intensity 500 250 100 75 50           | (u)                                              |
| impulse_noise  | fraction of values hit 0.01 0.02 0.03 0.05 0.07        | (u)                                              |
| gaussian_blur  | sigma 0.4 0.6 0.7 0.8 1.0 (truncated at 4 sigma)       | (u); pads by reflection, skimage repeats the edge|
| defocus_blur   | (disk radius, 3x3 antialias sigma) (0.3,0.4) (0.4,0.5) | (u)                                              |
|                | (0.5,0.6) (1,0.2) (1.5,0.1)                            |                                                  |
| motion_blur    | (radius, sigma) (6,1) (6,1.5) (6,2) (8,2.25) (9,2.5);  | (u); (a); taps spread bilinearly, not rounded to |
|                | make_cifar_c.py: severity 4 is (8, 2)                  | a pixel; ImageMagick on a PNG round trip         |
| contrast       | factor around the per-image channel mean 0.75 0.5 0.4  | (u)                                              |
|                | 0.3 0.15                                               |                                                  |
| brightness     | added to HSV value 0.05 0.1 0.15 0.2 0.3               | (u); (h)                                         |
| saturate       | HSV S -> clip(S * a + b): (0.3,0) (0.1,0) (1.5,0)      | (u); (h); (s)                                    |
|                | (2,0.1) (2.5,0.2)                                      |                                                  |
| pixelate       | kept fraction of the side 0.95 0.9 0.85 0.75 0.65      | (u); (p)                                         |
| jpeg           | quality 80 65 58 50 40                                 | named jpeg_compression in the files; (j)         |
| fog            | (strength, wibble decay) (0.2,3) (0.5,3) (0.75,2.5)    | (u); one 32x32 diamond-square map per image,     |
|                | (1,2) (1.5,1.75)                                       | drawn from the torch generator, not np.random    |

Image sizes. The parameters above are CIFAR-10-C's, for 32x32 images. On images whose shorter side
S is not 32 (your own images, 16..128 px) every length in pixels is scaled by S / 32, so a corruption
does to an S-pixel image what it does to the same picture at 32 px (:func:`scaled_param`; at 32 px
the parameters are exactly the table's, and so is the output):

- gaussian_blur: sigma x S/32 (the kernel radius follows, int(4 sigma + 0.5));
- defocus_blur: the disk radius x S/32; the 3x3 antialiasing Gaussian is per pixel and stays;
- motion_blur: radius and sigma x S/32 (radius rounded, halves up, at least 1);
- pixelate: the blocks grow with the image: as many blocks across the side as at 32 px,
  ``int(32 * c)``, so block sides are S / int(32 * c) (never more than S - 1 blocks: at 16 px the
  lighter severities come out alike, a 16 px image being coarser than their blocks);
- fog: the diamond-square map covers the image whatever its size (generated at the next power of
  two, resized to the image when that is larger), as the 32x32 map covers a 32 px image;
- not scaled: the noises, contrast, brightness and saturate (per pixel) and jpeg (JPEG's 8x8 blocks
  are the format's, not the picture's).

CIFAR-10-C also has glass_blur, zoom_blur, snow, frost, elastic_transform, speckle_noise and
spatter, which are not generated here: ``[stress].source = "official"`` reads all 19 from the
published files (``cifar_c.py``), which exist for CIFAR's 32 px images only.

(u) The published files are uint8: make_cifar_c.py stores ``np.uint8(corruption(img))``, which
truncates to an integer in 0..255 (it does not round). Here the output stays float32 in [0, 1]; the
input is the same uint8 test image divided by 255.

(a) make_cifar_c.py's severities 3 and 4 are (6, 2) and (8, 2): the radius only sets how many taps
the one-sided Gaussian has (2 * radius + 1), radius 6 already reaches tap 12, and the extra taps of
radius 8 weigh less than e^-21 of the first one, so the two are the same blur. Severity 4 uses sigma
2.25 so that the severities are strictly ordered. The blur angle is U(-45, 45) degrees per image, as
there; edges repeat, ImageMagick's default virtual pixels.

(h) brightness and saturate go through a torch RGB<->HSV with skimage's conventions (rgb2hsv,
hsv2rgb), computed in float32 rather than float64.

(s) saturate is the published definition (an earlier version here desaturated at every severity,
0.5 .. 0.0, so results of sweeps that used saturate changed): severities 1-2 desaturate (x0.3,
x0.1), 3-5 oversaturate (x1.5, x2 + 0.1, x2.5 + 0.2), so its severities are not ordered by how far
the image moves (severity 2 moves it further than 3). ImageNet-C's saturate
(make_imagenet_c.py: (2, 0), (5, 0.1), (20, 0.2) at 3-5) is a different, stronger corruption.

(p) pixelate averages non-overlapping integer blocks (``int(32 * c)`` of them across, as there) and repeats
each mean over its block; make_cifar_c.py resizes down and back up with PIL's BOX filter, whose
blocks overlap at non-integer factors, so pixels at block borders mix two blocks.

(j) jpeg is a JPEG-like round trip in torch (JFIF YCbCr, 4:2:0 with 2x2 means, 8x8 DCT, the IJG
quality-scaled standard tables, libjpeg's "fancy" chroma upsampling) with samples kept in float,
where make_cifar_c.py saves and reopens a PIL JPEG (libjpeg, 8-bit samples, its own integer DCT).

Everything stays batched on the device: no PIL, OpenCV, ImageMagick or skimage.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from cnnstress import catalog

CORRUPTIONS: tuple[str, ...] = catalog.CORRUPTIONS

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

PARAMS: dict[str, tuple[Any, ...]] = {
    # standard deviation of additive Gaussian noise (CIFAR-10-C)
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # Poisson rate per unit intensity: x -> Poisson(x * c) / c (CIFAR-10-C)
    "shot_noise": (500.0, 250.0, 100.0, 75.0, 50.0),
    # fraction of pixel-channel values set to 0 or 1 with equal odds (CIFAR-10-C, skimage 's&p')
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # Gaussian sigma in pixels, truncated at 4 sigma like skimage (CIFAR-10-C)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    # (disk radius, sigma of the 3x3 Gaussian that antialiases the disk) (CIFAR-10-C)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1)),
    # (ImageMagick radius, sigma) of a one-sided Gaussian line kernel at an angle in [-45, 45) degrees
    # (CIFAR-10-C; severity 4's sigma 2 -> 2.25, see the module docstring)
    "motion_blur": ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.25), (9, 2.5)),
    # factor around each image's per-channel mean (CIFAR-10-C)
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # amount added to the HSV value channel (CIFAR-10-C)
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # (scale, offset) of the HSV saturation channel: S -> clip(S * scale + offset); desaturates at 1-2,
    # oversaturates at 3-5, as CIFAR-10-C (see the module docstring, (s))
    "saturate": ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2)),
    # side of the pixelated image as a fraction of the original side, truncated like int(32 * c)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality (IJG scaling of the standard tables) (CIFAR-10-C)
    "jpeg": (80, 65, 58, 50, 40),
    # (fog strength, wibble decay of the diamond-square fractal) (CIFAR-10-C)
    "fog": ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75)),
}

#: Corruptions with lengths in pixels: their parameters (stated at 32 px) scale with the image side.
SPATIAL_CORRUPTIONS: frozenset[str] = frozenset({"gaussian_blur", "defocus_blur", "motion_blur", "pixelate", "fog"})

# JPEG standard tables, ITU-T T.81 Annex K (K.1 luminance, K.2 chrominance).
_JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


# ----------------------------------------------------------------------------------------- checks


def _check_name_severity(name: str, severity: int) -> None:
    """Raise ValueError naming the bad corruption name or severity and listing the valid ones."""
    if name not in PARAMS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    # bool is an int subclass; True must not pass as severity 1
    if isinstance(severity, bool) or not isinstance(severity, int) or severity not in SEVERITIES:
        raise ValueError(f"corruption severity {severity!r} for {name!r} is invalid; valid: {SEVERITIES}")


def _check_batch(x: Tensor) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"corrupt: x must be a torch.Tensor (B, 3, H, W), got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"corrupt: x must have shape (B, 3, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"corrupt: x must be a floating tensor with values in [0, 1], got {x.dtype}")


def _check_generator(generator: torch.Generator, device: torch.device) -> None:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"corrupt: generator must be a torch.Generator, got {type(generator).__name__}")
    # random draws happen on the batch's device, which needs a generator of that device type
    if generator.device.type != device.type:
        raise ValueError(
            f"corrupt: generator is on {generator.device.type!r} but the batch is on {device.type!r}; "
            f"create it with torch.Generator(device={device.type!r})"
        )


# ---------------------------------------------------------------------------------------- helpers


def _pad(x: Tensor, pad: int, mode: str = "reflect") -> Tensor:
    """Pad H and W by ``pad``; reflect needs pad < side, so tiny images fall back to replicate."""
    if pad == 0:
        return x
    if mode == "reflect" and pad >= min(x.shape[-2], x.shape[-1]):
        mode = "replicate"
    return F.pad(x, (pad, pad, pad, pad), mode=mode)


def _gaussian_1d(sigma: float, radius: int) -> Tensor:
    """Normalised samples of exp(-t^2 / 2 sigma^2) at t = -radius..radius (float64, CPU)."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-(t**2) / (2.0 * sigma**2))
    return w / w.sum()


def _depthwise(x: Tensor, kernel: Tensor) -> Tensor:
    """Correlate every channel of every image with one 2-D kernel (kh, kw), same-size output."""
    kh, kw = kernel.shape
    pad = max(kh, kw) // 2
    xp = _pad(x, pad, "reflect")
    # crop the padding the kernel does not need (kernel may be non-square: a separable 1-D pass)
    dh, dw = pad - kh // 2, pad - kw // 2
    xp = xp[..., dh : xp.shape[-2] - dh, dw : xp.shape[-1] - dw]
    weight = kernel.to(device=x.device, dtype=x.dtype).expand(x.shape[1], 1, kh, kw).contiguous()
    return F.conv2d(xp, weight, groups=x.shape[1])


def rgb_to_hsv(x: Tensor) -> Tensor:
    """RGB (B, 3, H, W) in [0, 1] -> HSV with hue in [0, 1), as skimage.color.rgb2hsv."""
    r, g, b = x.unbind(1)
    v = x.amax(1)
    delta = v - x.amin(1)
    s = torch.where(v > 0, delta / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v))
    safe = torch.where(delta > 0, delta, torch.ones_like(delta))
    # later assignments win on ties, as in skimage; tied branches give the same hue anyway
    h = (g - b) / safe
    h = torch.where(g == v, 2.0 + (b - r) / safe, h)
    h = torch.where(b == v, 4.0 + (r - g) / safe, h)
    h = torch.where(delta > 0, torch.remainder(h / 6.0, 1.0), torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """HSV (B, 3, H, W), hue in [0, 1) -> RGB, as skimage.color.hsv2rgb (closed form per channel)."""
    h, s, v = hsv.unbind(1)
    channels = []
    for n in (5.0, 3.0, 1.0):  # R, G, B: three fixed channels, not a loop over images
        k = torch.remainder(n + 6.0 * h, 6.0)
        channels.append(v - v * s * torch.clamp(torch.minimum(k, 4.0 - k), 0.0, 1.0))
    return torch.stack(channels, 1)


def dct_matrix(n: int = 8, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """Orthonormal DCT-II basis D (n, n): coefficients of a block B are D @ B @ D.T."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = math.sqrt(2.0 / n) * torch.cos(math.pi * (2.0 * i + 1.0) * k / (2.0 * n))
    d[0] /= math.sqrt(2.0)
    return d.to(device=device, dtype=dtype)


def jpeg_quant_tables(quality: int) -> tuple[Tensor, Tensor]:
    """(luminance, chrominance) quantisation tables (8, 8) float32 for an IJG quality in 1..100."""
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise ValueError(f"jpeg quality {quality!r} is invalid; valid: integers 1..100")
    # libjpeg's jpeg_quality_scaling, with force_baseline (entries clamped to 1..255) as PIL uses
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    tables = []
    for base in (_JPEG_LUMA, _JPEG_CHROMA):
        t = (torch.tensor(base, dtype=torch.int64) * scale + 50) // 100
        tables.append(t.clamp(1, 255).to(torch.float32))
    return tables[0], tables[1]


def _rgb_to_ycbcr(rgb255: Tensor) -> Tensor:
    """JFIF full-range RGB -> YCbCr, both on the 0..255 scale."""
    r, g, b = rgb255.unbind(1)
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    return torch.stack((y, cb, cr), 1)


def _ycbcr_to_rgb(ycc: Tensor) -> Tensor:
    y, cb, cr = ycc.unbind(1)
    r = y + 1.402 * (cr - 128.0)
    g = y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0)
    b = y + 1.772 * (cb - 128.0)
    return torch.stack((r, g, b), 1)


def _block_dct_quantise(z: Tensor, table: Tensor, d: Tensor) -> Tensor:
    """Quantise the 8x8 block DCT of z (B, C, H, W), H and W multiples of 8, and transform back."""
    bsz, c, h, w = z.shape
    blocks = z.reshape(bsz, c, h // 8, 8, w // 8, 8).transpose(3, 4)  # (B, C, h/8, w/8, 8, 8)
    coef = d @ blocks @ d.T
    coef = torch.round(coef / table) * table
    rec = d.T @ coef @ d
    return rec.transpose(3, 4).reshape(bsz, c, h, w)


def jpeg_compress(x: Tensor, quality: int) -> Tensor:
    """JPEG-like round trip of RGB (B, 3, H, W) in [0, 1], as PIL's default encoder does it.

    RGB -> YCbCr (JFIF), 4:2:0 chroma subsampling (2x2 means), level shift, 8x8 block DCT, rounding
    to multiples of the quality-scaled standard tables, inverse DCT, chroma upsampling with libjpeg's
    "fancy" triangle filter (= bilinear at scale 2), back to RGB. Sides are padded to multiples of 16
    by repeating the edge, like libjpeg, and cropped back. Samples are not rounded to 8 bits.
    """
    luma_t, chroma_t = (t.to(x.device) for t in jpeg_quant_tables(quality))
    d = dct_matrix(8, device=x.device)
    _, _, h, w = x.shape
    ph, pw = (-h) % 16, (-w) % 16
    xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
    ycc = _rgb_to_ycbcr(xp * 255.0)
    luma = _block_dct_quantise(ycc[:, :1] - 128.0, luma_t, d) + 128.0
    chroma = F.avg_pool2d(ycc[:, 1:], 2)
    chroma = _block_dct_quantise(chroma - 128.0, chroma_t, d) + 128.0
    chroma = F.interpolate(chroma, scale_factor=2.0, mode="bilinear", align_corners=False)
    rgb = _ycbcr_to_rgb(torch.cat((luma, chroma), 1)) / 255.0
    return rgb[..., :h, :w]


def pixel_block_projection(n: int, size: int, device: torch.device | str | None = None) -> Tensor:
    """(n, n) matrix P: P @ v replaces every entry of v by the mean of its block.

    Entry i belongs to block (i * size) // n, the source pixel ``F.interpolate(mode="nearest")``
    picks when it upsamples ``size`` to ``n``, so the blocks are exactly what nearest upsampling
    repeats, and the means are exact areas (no overlap between blocks).
    """
    bins = torch.arange(n, device=device) * size // n
    onehot = F.one_hot(bins, size).to(torch.float32)  # (n, size)
    mean = onehot.T / onehot.sum(0)[:, None]  # (size, n): area averaging into each block
    return onehot @ mean


def plasma_fractal(
    batch: int, mapsize: int, wibbledecay: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """(batch, mapsize, mapsize) diamond-square height maps in [0, 1], as CIFAR-10-C's plasma_fractal.

    ``mapsize`` must be a power of two. The loop runs over the log2(mapsize) scales, each a batched
    slice update; the maps wrap around (np.roll in the original, torch.roll here).
    """
    if mapsize < 2 or mapsize & (mapsize - 1):
        raise ValueError(f"plasma_fractal: mapsize {mapsize} must be a power of two >= 2")
    m = torch.zeros(batch, mapsize, mapsize, device=device)
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: Tensor) -> Tensor:
        # the original scales a uniform(-wibble, wibble) draw by wibble again: amplitude wibble^2
        u = torch.rand(total.shape, generator=generator, device=device) * 2.0 - 1.0
        return total / 4.0 + wibble * wibble * u

    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its four corners + noise
        corners = m[:, 0::step, 0::step]
        acc = corners + torch.roll(corners, -1, 1)
        acc = acc + torch.roll(acc, -1, 2)
        m[:, half::step, half::step] = wibbled_mean(acc)
        # diamonds: edge midpoints = mean of the two adjacent corners and two adjacent centres
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        lt = centres + torch.roll(centres, 1, 1) + corners + torch.roll(corners, -1, 2)
        m[:, 0::step, half::step] = wibbled_mean(lt)
        tt = centres + torch.roll(centres, 1, 2) + corners + torch.roll(corners, -1, 1)
        m[:, half::step, 0::step] = wibbled_mean(tt)
        step //= 2
        wibble /= wibbledecay
    flat = m.reshape(batch, -1)
    flat = flat - flat.amin(1, keepdim=True)
    flat = flat / flat.amax(1, keepdim=True).clamp_min(1e-12)
    return flat.reshape(batch, mapsize, mapsize)


def motion_kernels(angles_deg: Tensor, radius: int, sigma: float) -> Tensor:
    """(B, k, k) motion-blur kernels, one per angle, as ImageMagick's -motion-blur radius x sigma.

    Tap i = 0, 1, ... weighs exp(-i^2 / 2 sigma^2) (one-sided: the blur trails behind the pixel) and
    sits at offset (i sin a, i cos a) (rows, cols). ImageMagick rounds the offsets; here each tap is
    spread bilinearly over the four cells around it, which keeps the kernel smooth in the angle. Taps
    stop at 2 * radius + 1 (ImageMagick's width) or where their weight falls below ~4e-6.
    """
    taps = min(2 * radius + 1, math.ceil(5.0 * sigma) + 1)
    i = torch.arange(taps, dtype=torch.float32, device=angles_deg.device)
    w = torch.exp(-(i**2) / (2.0 * sigma**2))
    w = w / w.sum()
    half = taps  # largest offset is taps - 1; one more cell for the bilinear spread
    grid = torch.arange(-half, half + 1, dtype=torch.float32, device=angles_deg.device)
    theta = torch.deg2rad(angles_deg.to(torch.float32))
    dy = i[None, :] * torch.sin(theta)[:, None]  # (B, taps)
    dx = i[None, :] * torch.cos(theta)[:, None]
    # bilinear "tent" weights of every tap on every row/column; a sum, not a scatter, so it is
    # deterministic on CUDA too
    ty = torch.relu(1.0 - (dy[..., None] - grid).abs())  # (B, taps, k)
    tx = torch.relu(1.0 - (dx[..., None] - grid).abs())
    kernels = torch.einsum("t,bti,btj->bij", w, ty, tx)
    return kernels / kernels.sum((1, 2), keepdim=True)


# ------------------------------------------------------------------------------------ corruptions


def _gaussian_noise(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    return x + sigma * torch.randn(x.shape, generator=g, device=x.device, dtype=x.dtype)


def _shot_noise(x: Tensor, rate: float, g: torch.Generator) -> Tensor:
    return torch.poisson(x.clamp(0.0, 1.0) * rate, generator=g) / rate


def _impulse_noise(x: Tensor, amount: float, g: torch.Generator) -> Tensor:
    # skimage 's&p': each value is hit with probability `amount`, then salt or pepper with odds 1:1.
    # Two draws keep the hit sets nested across severities for one seed.
    hit = torch.rand(x.shape, generator=g, device=x.device) < amount
    salt = torch.rand(x.shape, generator=g, device=x.device) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def _gaussian_blur(x: Tensor, sigma: float, g: torch.Generator) -> Tensor:
    radius = int(4.0 * sigma + 0.5)  # scipy.ndimage's truncate=4.0
    k = _gaussian_1d(sigma, radius)
    x = _depthwise(x, k[None, :])
    return _depthwise(x, k[:, None])


def defocus_kernel(radius: float, alias_blur: float) -> Tensor:
    """CIFAR-10-C's disk(): a normalised aliased disk, antialiased by a 3x3 Gaussian (float64)."""
    r = int(math.floor(radius)) + 1  # one cell of zeros around the disk for the 3x3 blur to spread into
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    g1 = _gaussian_1d(alias_blur, 1)  # cv2.getGaussianKernel(3, sigma)
    smooth = F.conv2d(disk[None, None], torch.outer(g1, g1)[None, None], padding=1)[0, 0]
    return smooth / smooth.sum()


def _defocus_blur(x: Tensor, param: tuple[float, float], g: torch.Generator) -> Tensor:
    # cv2.filter2D's default border is BORDER_REFLECT_101 = torch's "reflect"
    return _depthwise(x, defocus_kernel(*param))


def _motion_blur(x: Tensor, param: tuple[int, float], g: torch.Generator) -> Tensor:
    radius, sigma = param
    bsz, c, h, w = x.shape
    angles = torch.rand(bsz, generator=g, device=x.device) * 90.0 - 45.0  # CIFAR-10-C: U(-45, 45)
    kernels = motion_kernels(angles, radius, sigma).to(x.dtype)
    k = kernels.shape[-1]
    # edge replication, ImageMagick's default virtual-pixel method
    xp = _pad(x, k // 2, "replicate").reshape(1, bsz * c, h + 2 * (k // 2), w + 2 * (k // 2))
    weight = kernels.repeat_interleave(c, 0)[:, None]  # (B * 3, 1, k, k): each image its own kernel
    return F.conv2d(xp, weight, groups=bsz * c).reshape(bsz, c, h, w)


def _contrast(x: Tensor, factor: float, g: torch.Generator) -> Tensor:
    means = x.mean((2, 3), keepdim=True)  # per image and channel, as np.mean(x, axis=(0, 1))
    return (x - means) * factor + means


def _brightness(x: Tensor, shift: float, g: torch.Generator) -> Tensor:
    hsv = rgb_to_hsv(x.clamp(0.0, 1.0))
    h, s, v = hsv.unbind(1)
    return hsv_to_rgb(torch.stack((h, s, (v + shift).clamp(0.0, 1.0)), 1))


def _saturate(x: Tensor, param: tuple[float, float], g: torch.Generator) -> Tensor:
    scale, offset = param
    hsv = rgb_to_hsv(x.clamp(0.0, 1.0))
    h, s, v = hsv.unbind(1)
    return hsv_to_rgb(torch.stack((h, (s * scale + offset).clamp(0.0, 1.0), v), 1))


def pixelate_size(side: int, fraction: float) -> int:
    """Side of the pixelated image: int(side * fraction) as CIFAR-10-C, kept in 1..side-1."""
    return max(1, min(side - 1, int(side * fraction + 1e-9)))


def _pixelate(x: Tensor, blocks: tuple[int, int], g: torch.Generator) -> Tensor:
    # area-average into blocks (``blocks`` = how many down and across: scaled_param), then repeat each
    # mean over its block (nearest upsampling), as two matrix products: out = P_h @ x @ P_w^T
    h, w = x.shape[-2:]
    ph = pixel_block_projection(h, blocks[0], x.device).to(x.dtype)
    pw = pixel_block_projection(w, blocks[1], x.device).to(x.dtype)
    return ph @ x @ pw.T


def _jpeg(x: Tensor, quality: int, g: torch.Generator) -> Tensor:
    return jpeg_compress(x.clamp(0.0, 1.0), quality)


def _fog(x: Tensor, param: tuple[float, float], g: torch.Generator) -> Tensor:
    strength, decay = param
    bsz, _, h, w = x.shape
    side = max(h, w)
    mapsize = max(2, 1 << (side - 1).bit_length())
    fog = plasma_fractal(bsz, mapsize, decay, g, x.device)[:, None]
    if mapsize != side and side > 1:
        # the map covers the image at every size (as 32x32 covers CIFAR's): resized, not cropped
        fog = F.interpolate(fog, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    fog = fog[..., :h, :w].to(x.dtype)
    max_val = x.amax((1, 2, 3), keepdim=True)  # per image, as x.max() in CIFAR-10-C
    # add the fog, then scale back so the brightest clean value keeps its level
    return (x + strength * fog) * max_val / (max_val + strength)


_REGISTRY: dict[str, Callable[[Tensor, Any, torch.Generator], Tensor]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "gaussian_blur": _gaussian_blur,
    "defocus_blur": _defocus_blur,
    "motion_blur": _motion_blur,
    "contrast": _contrast,
    "brightness": _brightness,
    "saturate": _saturate,
    "pixelate": _pixelate,
    "jpeg": _jpeg,
    "fog": _fog,
}

# corruptions that draw from the generator; the others are deterministic functions of the batch
RANDOM_CORRUPTIONS: frozenset[str] = frozenset({"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "fog"})


# ------------------------------------------------------------------------------------------ API


def _scaled_length(value: float, side: int) -> float:
    return value * side / catalog.REFERENCE_IMAGE_SIZE


def scaled_param(name: str, severity: int, h: int, w: int | None = None) -> Any:
    """The parameter corruption ``name`` uses at ``severity`` on ``h`` x ``w`` images (``w``
    defaults to ``h``): PARAMS' (CIFAR-10-C's, at 32 px) with every length in pixels scaled by
    S / 32, S the shorter side (the module docstring lists which). At 32 px: PARAMS' own value, the
    same object. pixelate's is the number of blocks (down, across)."""
    _check_name_severity(name, severity)
    w = h if w is None else w
    param = PARAMS[name][severity - 1]
    side, ref = min(h, w), catalog.REFERENCE_IMAGE_SIZE
    if name == "pixelate":
        # int(32 * c) blocks across a 32 px side; the same number across S (blocks of S / int(32 c) px)
        across = pixelate_size(ref, param)
        return tuple(max(1, min(n - 1, round(across * n / side))) for n in (h, w))
    if name not in SPATIAL_CORRUPTIONS or side == ref:
        return param
    if name == "gaussian_blur":
        return _scaled_length(param, side)
    if name == "defocus_blur":
        return (_scaled_length(param[0], side), param[1])
    if name == "motion_blur":
        return (max(1, math.floor(_scaled_length(param[0], side) + 0.5)), _scaled_length(param[1], side))
    return param  # fog: the map's size follows the image in _fog


@torch.no_grad()
def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """Corrupt a batch (B, 3, H, W) in [0, 1] with corruption ``name`` at ``severity`` (1..5).

    Returns a new float32 tensor of the same shape on the same device, clamped to [0, 1]. Random
    draws come only from ``generator``, which must be on the batch's device type; the result is a
    function of (x, name, severity, generator state). Raises ValueError for an unknown name, a
    severity outside 1..5, a batch that is not (B, 3, H, W) floating, or a generator on another
    device type.
    """
    _check_name_severity(name, severity)
    _check_batch(x)
    _check_generator(generator, x.device)
    x = x.detach().to(torch.float32)
    if x.shape[0] == 0:
        return x.clone()
    param = scaled_param(name, severity, x.shape[-2], x.shape[-1])
    # corruptions are defined in float32 even when called inside an AMP region
    with torch.autocast(device_type=x.device.type, enabled=False):
        out = _REGISTRY[name](x, param, generator)
    return out.clamp_(0.0, 1.0).contiguous()


def corrupt_seed(base_seed: int, name: str, severity: int, batch_index: int) -> int:
    """Seed in [0, 2^63) for the generator of one corrupted batch, stable across processes.

    sha256 of ``"cnnstress.corrupt|{base_seed}|{name}|{severity}|{batch_index}"``, first 8 bytes
    big-endian, top bit cleared. Python's hash() is salted per process and would not do. The
    corrupted test set is the same across runs only when they also use the same batch size.
    """
    _check_name_severity(name, severity)
    for key, value in (("base_seed", base_seed), ("batch_index", batch_index)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"corrupt_seed: {key} must be a non-negative int, got {value!r}")
    text = f"cnnstress.corrupt|{base_seed}|{name}|{severity}|{batch_index}"
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
