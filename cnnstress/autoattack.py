"""AutoAttack (Croce & Hein, ICML 2020, "Reliable evaluation of adversarial robustness with an
ensemble of diverse parameter-free attacks"), the attack RobustBench ranks models by, for the
worker's ``/autoattack`` arrays. The attacks are torchattacks' (the optional ``autoattack`` extra:
``pip install -e '.[autoattack]'``); this module runs them the way the reference implementation
(fra31/auto-attack) does and records which one broke each image.

* ``standard``: APGD-CE, APGD-T and FAB-T (each targeting the 9 classes with the highest logits
  after the true one), Square (5000 queries), each on the images still classified correctly after the ones before it, 100
  iterations each, one restart: the reference's settings. (torchattacks' own ``AutoAttack``
  class runs 10 iterations per attack, targets every other class and does not say which attack
  broke an image, so the attacks are built and chained here.) ``rand`` (randomised defences): APGD-CE and APGD-DLR with
  20 samples of expectation over transformation per step.
* What is attacked is the classifier as the worker evaluates it, with the normalisation inside:
  the attacks see [0,1] images and the budget is in [0,1] pixel units, whatever the dataset's
  mean and std. Gradients are float32 (autocast off); whether an image is broken is decided by the
  run's own logits (``Predictor.logits``, float32 head under the run's precision), the accuracy's
  own test, so the stored logits and the codes always agree.
* Seeded: each attack reseeds torch's global RNG with a seed derived from the sweep seed and its
  name; the caller's global RNG state is restored afterwards (``torch.random.fork_rng``).
  Parameters' ``requires_grad`` are turned off while it runs (FAB calls ``backward``), so no
  parameter ``.grad`` is written.
* A DLR loss reads the third largest logit, its targeted form the fourth: APGD-T needs at least 4
  classes and APGD-DLR 3; with fewer, that attack is skipped (and logged).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from . import attacks
from .engine import Predictor
from .probes.autoattack import CLEAN_WRONG, CODE_OF, CODES, NOT_BROKEN  # noqa: F401 - defined once, torch-free

#: the attacks of each version, in the order they run
VERSIONS: dict[str, tuple[str, ...]] = {
    "standard": ("apgd-ce", "apgd-t", "fab-t", "square"),
    "rand": ("apgd-ce", "apgd-dlr"),
}
NORMS: tuple[str, ...] = ("Linf", "L2")
#: target classes of APGD-T and FAB-T (the reference's n_target_classes)
TARGET_CLASSES = 9
#: the fewest classes an attack works with (DLR losses read the 3rd/4th largest logit)
MIN_CLASSES: dict[str, int] = {"apgd-t": 4, "apgd-dlr": 3}

ProgressFn = Callable[[int, int], None]


def attack_seed(seed: int, name: str) -> int:
    """Seed in [0, 2^63) of one attack, stable across processes (sha256, not Python's salted hash)."""
    text = f"cnnstress.autoattack|{int(seed)}|{name}"
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") & (2**63 - 1)


class Attacked(nn.Module):
    """The model the attacks see: [0,1] images in, float32 logits out, the normalisation inside and
    autocast off (float32 gradients)."""

    def __init__(self, pred: Predictor):
        super().__init__()
        self.net = pred.model
        self.pred = pred
        # torchattacks puts the model back into the mode it found this wrapper in after every call:
        # a new Module is in train mode, which would leave BatchNorm on batch statistics (images of a
        # batch would interact, and the next forward pass would move the running statistics)
        self.eval()

    def forward(self, x01: Tensor) -> Tensor:
        with torch.autocast(x01.device.type, enabled=False):
            return self.net(self.pred.input(x01.float())).float()


@contextmanager
def _frozen(model: nn.Module):
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


def build(name: str, net: nn.Module, *, norm: str, eps: float, classes: int, seed: int, steps: int = 100,
          queries: int = 5000, eot_iter: int = 1):
    """One torchattacks attack of AutoAttack with the reference's settings (``eot_iter`` 20 for the
    ``rand`` version's APGD attacks, 1 otherwise)."""
    import torchattacks as ta

    if name == "apgd-ce":
        return ta.APGD(net, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="ce", eot_iter=eot_iter)
    if name == "apgd-dlr":
        return ta.APGD(net, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, loss="dlr", eot_iter=eot_iter)
    if name in ("apgd-t", "fab-t"):
        if name == "apgd-t":
            atk = ta.APGDT(net, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, n_classes=classes)
        else:
            atk = ta.FAB(net, norm=norm, eps=eps, steps=steps, n_restarts=1, seed=seed, multi_targeted=True,
                         n_classes=classes)
        # the reference targets the 9 classes with the highest logits after the true one (torchattacks
        # targets all C - 1 others: 99 runs per image for CIFAR-100 where the reference makes 9)
        atk.n_target_classes = min(TARGET_CLASSES, classes - 1)
        return atk
    if name == "square":
        return ta.Square(net, norm=norm, eps=eps, n_queries=queries, n_restarts=1, seed=seed)
    raise ValueError(f"unknown AutoAttack attack {name!r}; valid: {', '.join(CODE_OF)}")


def run(pred: Predictor, x_uint8: Tensor, labels: Tensor, *, norm: str, eps: float, version: str, seed: int,
        batch_size: int = 256, steps: int = 100, queries: int = 5000, only: tuple[str, ...] | None = None,
        on_attack: Callable[[str, int, float], None] | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """AutoAttack on uint8 images (M,3,H,W): (logits (M,C) float32, codes (M,) int8, skipped attacks).

    Each image's logits are those of the adversarial image of the attack that broke it, or its
    clean logits when none did (or it was wrong without attack); its code says which (``CODES``).
    ``steps``/``queries`` (default: the reference's) and ``only`` (a subset of the version's
    attacks, in its order) are for tests and the benchmark. ``on_attack(name, images attacked,
    seconds)`` after each attack."""
    import time

    if norm not in NORMS:
        raise ValueError(f"autoattack norm must be one of {', '.join(NORMS)}, got {norm!r}")
    if version not in VERSIONS:
        raise ValueError(f"autoattack version must be one of {', '.join(VERSIONS)}, got {version!r}")
    if not (0 < eps <= (1 if norm == "Linf" else 64)):
        raise ValueError(f"autoattack eps must be in (0, 1] for Linf and (0, 64] for L2 (in [0,1] pixel units), "
                         f"got {eps!r}")
    if x_uint8.dtype != torch.uint8 or x_uint8.dim() != 4 or labels.shape != (x_uint8.shape[0],):
        raise ValueError(f"autoattack needs uint8 images (M,3,H,W) and (M,) labels, got {x_uint8.dtype} "
                         f"{tuple(x_uint8.shape)} and {tuple(labels.shape)}")
    names = VERSIONS[version] if only is None else tuple(n for n in VERSIONS[version] if n in only)
    device = x_uint8.device
    pred.model.eval()
    labels = labels.to(device=device, dtype=torch.int64)
    clean, _ = pred.predict(x_uint8, batch_size)
    classes = clean.shape[1]
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    skipped: list[str] = []
    with _frozen(pred.model), torch.random.fork_rng(devices=devices), torch.inference_mode(False), torch.enable_grad():
        logits = clean.clone()  # (out of inference mode: written in place below)
        codes = torch.full((x_uint8.shape[0],), NOT_BROKEN, dtype=torch.int8, device=device)
        codes[logits.argmax(1) != labels] = CLEAN_WRONG
        net = Attacked(pred)
        for name in names:
            todo = torch.nonzero(codes == NOT_BROKEN).flatten()
            if classes < MIN_CLASSES.get(name, 2):
                skipped.append(name)
                continue
            if todo.numel() == 0:
                break
            t0 = time.time()
            atk = build(name, net, norm=norm, eps=float(eps), classes=classes, seed=attack_seed(seed, name),
                        steps=steps, queries=queries, eot_iter=20 if version == "rand" else 1)
            for lo in range(0, todo.numel(), batch_size):
                idx = todo[lo:lo + batch_size]
                x0 = x_uint8[idx].float().div_(255)
                adv = atk(x0, labels[idx]).detach()
                # the threat model holds whatever the library returns (a no-op for a point in the ball)
                adv = attacks.project(adv, x0, norm.lower(), float(eps))
                lg = pred.logits(adv)
                wrong = lg.argmax(1) != labels[idx]
                logits[idx[wrong]] = lg[wrong].float()
                codes[idx[wrong]] = CODE_OF[name]
            if on_attack is not None:
                on_attack(name, int(todo.numel()), time.time() - t0)
            if pred.model.training:
                raise RuntimeError(f"AutoAttack {name} left the model in train mode")
    return logits, codes, skipped
