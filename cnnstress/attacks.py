"""PGD adversarial attacks (Madry et al. 2018, "Towards deep learning models resistant to adversarial
attacks"), for the worker's ``/adversarial/<norm>/<eps>/logits`` arrays.

What is attacked is the whole classifier as the worker evaluates it: ``model(to_input(x01))`` with
the normalisation inside, so the threat model is stated in [0,1] pixel units (an L-inf budget of
8/255 means eight grey levels), whatever the dataset's mean and std.

Conventions, and why:

* Gradients are of the summed cross-entropy, in float32 with autocast off, with respect to the
  input only (``torch.autograd.grad``): AMP-rounded gradients would make the attack weaker on a GPU
  with bf16 units than without, and no parameter ``.grad`` is ever written.
* The logits returned are those ``engine.predict`` would store for the adversarial images: the
  trunk under ``precision``'s autocast, pooling and head in float32 (``engine.float32_head``), the
  same ``channels_last``. So eps = 0 gives the clean logits bitwise (for the same batch size).
* Every iterate counts, the clean image included: per image the attack returns the iterate that is
  misclassified, preferring among several (or, if none is, among all) the one with the lowest
  margin (true logit minus the largest other logit). A success at any step is never undone by a
  later step, and the adversarial accuracy is never above the clean accuracy.
* The random start is drawn on the CPU, for all images of the call at once, from a CPU
  ``torch.Generator``, then moved to the device: the start of image i does not depend on the batch
  size, on the device or on which other images are attacked. Every later step is per image, so the
  whole attack is as independent of the batch size as the model's own kernels are: bitwise for a
  model whose kernels are, not for a Conv2d or nn.Linear on the CPU (oneDNN and BLAS block the
  batch: simple_cnn's clean logits already differ by ~1e-7 between batch sizes 7 and 64). A run
  uses one batch size throughout, so it is reproducible bitwise all the same.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .engine import Precision, Predictor, fixed_positions
from .models import head_module

#: The norms an attack can be bounded in.
NORMS: tuple[str, ...] = ("linf", "l2")

#: Grid eps units: L-inf budgets are written in /255 grey levels, L2 budgets in [0,1] pixel units
#: (a grid eps divided by this is in [0,1] pixel units).
GRID_EPS_UNIT: dict[str, float] = {"linf": 255.0, "l2": 1.0}

ProgressFn = Callable[[int, int], None]


# ------------------------------------------------------------------------------------------------
# sample and seeds
# ------------------------------------------------------------------------------------------------


def attack_positions(n_test: int, count: int, seed: int) -> np.ndarray:
    """The test positions to attack, sorted int64: ``count`` of ``range(n_test)`` drawn without
    replacement by a numpy generator seeded with the sweep-level ``seed`` (all of them when
    ``count >= n_test``). Attacks are the costly stress test, so a sweep attacks a fixed sample, and
    every run of the sweep the same one, so that runs compare image by image."""
    for key, value in (("n_test", n_test), ("count", count), ("seed", seed)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"attack_positions: {key} must be a non-negative int, got {value!r}")
    return fixed_positions(int(n_test), int(count), int(seed)).astype(np.int64)


def attack_seed(seed: int, norm: str, eps: float) -> int:
    """Seed in [0, 2^63) of the random start of one (norm, grid eps) attack, stable across processes.

    sha256 of ``"cnnstress.attack|{seed}|{norm}|{float(eps)!r}"``, first 8 bytes big-endian, top bit
    cleared (Python's hash() is salted per process). Derived from the triple, not drawn in sequence,
    so an eps's start is the same whichever other eps values or norms a grid lists; ``8`` and ``8.0``
    share a seed."""
    _check_norm(norm)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"attack_seed: seed must be a non-negative int, got {seed!r}")
    text = f"cnnstress.attack|{int(seed)}|{norm}|{float(eps)!r}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & (2**63 - 1)


def pixel_eps(norm: str, eps: float) -> float:
    """A grid eps (L-inf in /255 units, L2 in [0,1] pixel units) in [0,1] pixel units."""
    _check_norm(norm)
    return float(eps) / GRID_EPS_UNIT[norm]


def random_start(shape: tuple[int, ...], norm: str, eps: float, generator: torch.Generator) -> Tensor:
    """Random perturbations (float32, on the CPU) of the attack's start, one per image (dim 0).

    L-inf: uniform in the cube [-eps, eps)^d. L2: uniform in the ball of radius eps: a direction
    uniform on the sphere (a standard normal vector, normalised) times a radius ``eps * u**(1/d)``,
    u uniform in [0,1) (the volume of the ball within radius r grows as r^d). Drawn for every image
    in one call on a CPU generator, so image i's start depends only on the generator's state and
    the shape, not on the batch size or the device it is later moved to."""
    _check_norm(norm)
    if generator.device.type != "cpu":
        raise ValueError(f"random_start needs a CPU torch.Generator (got one on {generator.device}): "
                         "the start is drawn on the CPU so it is the same on every device")
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=torch.float32)
        return (u * 2 - 1) * eps
    m, d = shape[0], math.prod(shape[1:])
    direction = torch.randn((m, d), generator=generator, dtype=torch.float32)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    radius = eps * torch.rand((m,), generator=generator, dtype=torch.float64).pow(1.0 / d)
    return (direction * radius.float().view(m, 1)).view(shape)


# ------------------------------------------------------------------------------------------------
# one PGD step
# ------------------------------------------------------------------------------------------------


def project(x: Tensor, x0: Tensor, norm: str, eps: float) -> Tensor:
    """``x`` moved into the eps-ball around ``x0``, then clipped to the [0,1] image box.

    Clipping after the ball projection keeps the point in the ball: ``x0`` lies in the box, so
    clipping only moves a coordinate towards ``x0``'s. (Up to float32 rounding of the bound.)"""
    if norm == "linf":
        x = torch.maximum(torch.minimum(x, x0 + eps), x0 - eps)
    else:
        delta = x - x0
        length = delta.flatten(1).norm(dim=1)
        scale = (eps / length.clamp_min(1e-12)).clamp(max=1.0)
        x = x0 + delta * scale.view(-1, *([1] * (x.dim() - 1)))
    return x.clamp(0.0, 1.0)


def unit_l2(g: Tensor) -> Tensor:
    """``g`` per image scaled to L2 length 1 (zero stays zero). Divided by its largest magnitude
    first: the square of a tiny float32 gradient underflows, and its length would read 0."""
    peak = g.flatten(1).abs().amax(dim=1).view(-1, *([1] * (g.dim() - 1)))
    g = torch.where(peak > 0, g / peak.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
    length = g.flatten(1).norm(dim=1).view_as(peak)
    return torch.where(length > 0, g / length.clamp_min(1e-30), torch.zeros_like(g))


def ascend(x: Tensor, grad: Tensor, norm: str, step_size: float) -> Tensor:
    """One steepest-ascent step of the given norm: ``step_size * sign(grad)`` for L-inf, a step of
    L2 length ``step_size`` along the gradient for L2."""
    if norm == "linf":
        return x + step_size * grad.sign()
    return x + step_size * unit_l2(grad)


def loss_gradient(pred: Predictor, x01: Tensor, labels: Tensor) -> Tensor:
    """Gradient of the summed cross-entropy with respect to the [0,1] images, float32 throughout
    (autocast off). Only the input is asked for, so autograd computes no parameter gradient and
    writes no ``.grad``; summed rather than averaged, so an image's gradient does not depend on the
    batch size. Works inside a caller's ``torch.inference_mode()`` too (the images are cloned out of
    it)."""
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(x01.device.type, enabled=False):
        x = x01.detach().clone().requires_grad_(True)
        logits = pred.model(pred.input(x))
        loss = F.cross_entropy(logits.float(), labels, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def margin(logits: Tensor, labels: Tensor) -> Tensor:
    """True-class logit minus the largest other logit (negative: misclassified)."""
    true = logits.gather(1, labels.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, labels.view(-1, 1), float("-inf")).amax(dim=1)
    return true - others


class WorstCase:
    """Per image, the most adversarial iterate seen so far: a misclassified one over a correctly
    classified one, then the lower margin (the earlier on a tie). "Misclassified" is argmax !=
    label, the accuracy's own test, so an argmax tie never counts one way here and the other way in
    the report."""

    def __init__(self, x01: Tensor, logits: Tensor, labels: Tensor, keep_images: bool):
        self.labels = labels
        self.logits = logits.clone()
        self.wrong = logits.argmax(1) != labels
        self.margin = margin(logits, labels)
        self.images = x01.clone() if keep_images else None

    def offer(self, x01: Tensor, logits: Tensor) -> None:
        wrong = logits.argmax(1) != self.labels
        m = margin(logits, self.labels)
        better = (wrong & ~self.wrong) | ((wrong == self.wrong) & (m < self.margin))
        self.logits = torch.where(better.view(-1, 1), logits, self.logits)
        self.wrong = self.wrong | wrong
        self.margin = torch.where(better, m, self.margin)
        if self.images is not None:
            self.images = torch.where(better.view(-1, *([1] * (x01.dim() - 1))), x01, self.images)


# ------------------------------------------------------------------------------------------------
# the attack
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttackConfig:
    """One attack's settings: the norm, the radius and step size in [0,1] pixel units (step_size
    None: Madry et al.'s ``2.5 * eps / steps``), the number of steps, the images per batch."""

    norm: str
    eps: float
    steps: int
    step_size: float | None
    batch_size: int

    @property
    def step(self) -> float:
        return float(self.step_size) if self.step_size is not None else 2.5 * self.eps / self.steps


def pgd_batch(pred: Predictor, x0: Tensor, labels: Tensor, start: Tensor | None, cfg: AttackConfig, *,
              keep_images: bool) -> WorstCase:
    """PGD on one batch of [0,1] images ``x0`` from ``x0 + start`` (``start`` on x0's device; None
    or eps = 0: no attack, the clean logits). The clean image, the projected start and every step's
    iterate are offered to a :class:`WorstCase`; the model must be in eval mode, so that images of
    a batch do not interact. Logits come from ``pred``'s float32 head under its precision (what
    ``engine.predict`` stores); gradients are float32."""
    worst = WorstCase(x0, pred.logits(x0), labels, keep_images)
    if cfg.eps == 0 or start is None:
        return worst
    x = project(x0 + start, x0, cfg.norm, cfg.eps)
    worst.offer(x, pred.logits(x))
    for _ in range(cfg.steps):
        grad = loss_gradient(pred, x, labels)
        x = project(ascend(x, grad, cfg.norm, cfg.step), x0, cfg.norm, cfg.eps)
        worst.offer(x, pred.logits(x))
    return worst


def _attack(pred: Predictor, x_uint8: Tensor, labels: Tensor, start: Tensor | None, cfg: AttackConfig, *,
            keep_images: bool, on_batch: ProgressFn | None,
            progress: tuple[int, int] | None = None) -> tuple[Tensor | None, Tensor]:
    """Run :func:`pgd_batch` over ``x_uint8`` in batches; ``start`` is the CPU random start of every
    image (None for eps = 0). ``progress`` = (images done before this call, total) for a caller
    that reports one bar over several calls."""
    _check_args(x_uint8, labels, cfg)
    pred.model.eval()
    device = x_uint8.device
    labels = labels.to(device=device, dtype=torch.int64)
    m = x_uint8.shape[0]
    done0, total = progress if progress is not None else (0, m)
    logits, images = [], []
    for lo in range(0, m, cfg.batch_size):
        hi = min(lo + cfg.batch_size, m)
        x0 = x_uint8[lo:hi].float().div_(255)
        s = start[lo:hi].to(device) if start is not None else None
        worst = pgd_batch(pred, x0, labels[lo:hi], s, cfg, keep_images=keep_images)
        logits.append(worst.logits)
        if keep_images:
            images.append(worst.images)
        if on_batch is not None:
            on_batch(done0 + hi, total)
    if m == 0:
        classes = head_module(pred.model).out_features
        empty = torch.empty((0, classes), dtype=torch.float32, device=device)
        return (x_uint8.float() if keep_images else None), empty
    return (torch.cat(images) if keep_images else None), torch.cat(logits)


def _predictor(model: nn.Module, mean: Tensor, std: Tensor, precision: Precision | None, channels_last: bool,
               device: torch.device) -> Predictor:
    """The public functions' arguments as one Predictor (precision None: float32)."""
    return Predictor(model, mean, std, precision if precision is not None else Precision(device.type, torch.float32, False),
                     channels_last)


def pgd_images(model: nn.Module, x_uint8: Tensor, labels: Tensor, mean: Tensor, std: Tensor, *, norm: str, eps: float,
               steps: int = 10, step_size: float | None = None, generator: torch.Generator | None,
               batch_size: int = 256, channels_last: bool = False, precision: Precision | None = None,
               on_batch: ProgressFn | None = None) -> tuple[Tensor, Tensor]:
    """(adversarial images in [0,1], float32 (M,3,H,W); their logits (M,C)): :func:`pgd` that also
    returns the worst-case iterate it chose for each image (for tests and for drawing them)."""
    start = _start_for(x_uint8, norm, eps, generator)
    pred = _predictor(model, mean, std, precision, channels_last, x_uint8.device)
    images, logits = _attack(pred, x_uint8, labels, start, AttackConfig(norm, eps, steps, step_size, batch_size),
                             keep_images=True, on_batch=on_batch)
    return images, logits


def pgd(model: nn.Module, x_uint8: Tensor, labels: Tensor, mean: Tensor, std: Tensor, *, norm: str, eps: float,
        steps: int = 10, step_size: float | None = None, generator: torch.Generator | None, batch_size: int = 256,
        channels_last: bool = False, precision: Precision | None = None,
        on_batch: ProgressFn | None = None) -> Tensor:
    """Logits (M,C) float32 of the worst-case PGD iterate for each image of ``x_uint8`` (M,3,H,W).

    ``eps`` (and ``step_size``, default ``2.5 * eps / steps``, Madry et al.'s rule) in [0,1] pixel
    units: the L-inf or L2 radius of the perturbation of ``x_uint8 / 255``. Starts at a random
    point of the ball (:func:`random_start`, drawn from the CPU ``generator``), then ``steps``
    times: gradient of the summed float32 cross-entropy, a sign step (L-inf) or a normalised step
    (L2), projection onto the ball and onto [0,1]. Each image keeps its most adversarial iterate
    (:class:`WorstCase`, the clean image included). eps = 0: the clean logits, exactly those of
    ``engine.predict`` with the same precision, batch size and ``channels_last``; no noise is drawn.

    ``precision`` (default: float32) is what the returned logits are computed under, as
    ``engine.predict`` does; the gradients are float32 regardless. The model is put in eval mode and
    left there; parameters' ``requires_grad`` and ``.grad`` are not touched. ``on_batch(done,
    total)`` is called after each batch, in images."""
    pred = _predictor(model, mean, std, precision, channels_last, x_uint8.device)
    return _attack(pred, x_uint8, labels, _start_for(x_uint8, norm, eps, generator),
                   AttackConfig(norm, eps, steps, step_size, batch_size), keep_images=False, on_batch=on_batch)[1]


def attack_sweep(model: nn.Module, x_uint8: Tensor, labels: Tensor, mean: Tensor, std: Tensor,
                 precision: Precision | None, *, norms: Mapping[str, Sequence[float]], seed: int, steps: int = 10,
                 batch_size: int = 256, channels_last: bool = False,
                 on_batch: ProgressFn | None = None) -> dict[tuple[str, float], Tensor]:
    """PGD logits for every (norm, eps) of a grid: ``{(norm, eps as written): (M,C) float32}``.

    ``norms`` maps "linf"/"l2" to grid eps values (L-inf in /255 units, L2 in [0,1] pixel units;
    :func:`pixel_eps`). Per norm the eps values run in increasing order, and accuracy is monotone
    by construction: an image misclassified clean or at a smaller eps is not attacked again and
    keeps that example's logits at every larger eps, since the example lies in the larger ball too.
    So at each eps an image is counted as broken when the attack broke it at that eps or below,
    the curve a stronger attack at each eps would give. Only the images still correct are attacked.

    Each (norm, eps)'s random start comes from its own CPU generator seeded with
    :func:`attack_seed` ``(seed, norm, eps)``, drawn for all M images (then the ones still correct
    are picked), so it does not depend on which other eps values or norms are listed. Result order:
    norms as given, eps ascending. ``on_batch(done, total)`` counts images over all (norm, eps),
    carried ones included."""
    return sweep(_predictor(model, mean, std, precision, channels_last, x_uint8.device), x_uint8, labels,
                 norms=norms, seed=seed, steps=steps, batch_size=batch_size, on_batch=on_batch)


def sweep(pred: Predictor, x_uint8: Tensor, labels: Tensor, *, norms: Mapping[str, Sequence[float]], seed: int,
          steps: int = 10, batch_size: int = 256, on_batch: ProgressFn | None = None) -> dict[tuple[str, float], Tensor]:
    """:func:`attack_sweep` of a :class:`Predictor` (the worker's form)."""
    for norm, values in norms.items():
        _check_norm(norm)
        floats = [float(e) for e in values]
        if any(not math.isfinite(e) or e < 0 for e in floats):
            raise ValueError(f"attack eps for {norm!r} must be finite and >= 0, got {list(values)!r}")
        if len(set(floats)) != len(floats):
            raise ValueError(f"attack eps for {norm!r} lists a value twice: {list(values)!r}")
    m = x_uint8.shape[0]
    total = m * sum(len(v) for v in norms.values())
    done = 0
    # eps = 0, no start: the clean logits, as engine.predict computes them; the chain starts there
    clean = _attack(pred, x_uint8, labels, None, AttackConfig("linf", 0.0, 1, None, batch_size), keep_images=False,
                    on_batch=None)[1]
    labels = labels.to(device=x_uint8.device, dtype=torch.int64)
    out: dict[tuple[str, float], Tensor] = {}
    for norm, values in norms.items():
        current = clean
        for eps in sorted(values, key=float):
            eps_px = pixel_eps(norm, eps)
            correct = current.argmax(1) == labels
            todo = torch.nonzero(correct).flatten()  # one host sync per eps
            n_todo = int(todo.shape[0])
            done += m - n_todo
            attacked = eps_px > 0 and n_todo > 0
            if attacked:
                g = torch.Generator().manual_seed(attack_seed(seed, norm, eps))
                start = random_start(tuple(x_uint8.shape), norm, eps_px, g)[todo.cpu()]
                _, adv = _attack(pred, x_uint8[todo], labels[todo], start, AttackConfig(norm, eps_px, steps, None, batch_size),
                                 keep_images=False, on_batch=on_batch, progress=(done, total))
                current = current.index_copy(0, todo, adv)
            done += n_todo
            if on_batch is not None and not attacked:
                on_batch(done, total)
            out[(norm, eps)] = current
    return out


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown attack norm {norm!r}; valid: {', '.join(NORMS)}")


def _start_for(x_uint8: Tensor, norm: str, eps: float, generator: torch.Generator | None) -> Tensor | None:
    """The random start of every image, or None when eps = 0 (no noise, the generator untouched)."""
    _check_norm(norm)
    if eps == 0:
        return None
    if generator is None:
        raise ValueError("pgd with eps > 0 needs a CPU torch.Generator for its random start")
    return random_start(tuple(x_uint8.shape), norm, float(eps), generator)


def _check_args(x_uint8: Tensor, labels: Tensor, cfg: AttackConfig) -> None:
    norm, eps, steps, step_size, batch_size = cfg.norm, cfg.eps, cfg.steps, cfg.step_size, cfg.batch_size
    _check_norm(norm)
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or x_uint8.shape[1] != 3:
        raise ValueError(f"pgd needs uint8 images (M,3,H,W), got {x_uint8.dtype} {tuple(x_uint8.shape)}")
    if labels.shape != (x_uint8.shape[0],):
        raise ValueError(f"pgd: labels {tuple(labels.shape)} do not match {x_uint8.shape[0]} images")
    if not math.isfinite(eps) or eps < 0 or (norm == "linf" and eps > 1):
        raise ValueError(f"pgd: eps must be finite, >= 0 (and <= 1 for linf) in [0,1] pixel units, got {eps!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"pgd: steps must be an int >= 1, got {steps!r}")
    if step_size is not None and not (math.isfinite(step_size) and step_size > 0):
        raise ValueError(f"pgd: step_size must be finite and > 0, got {step_size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"pgd: batch_size must be an int >= 1, got {batch_size!r}")
