"""Training and evaluation stages. One loop for every variant: a modification is configuration.

Stage functions take tensors that already live on the training device (the whole uint8 dataset
sits there; batches are cut with a seeded permutation and augmented as whole batches), so no
DataLoader workers and no PIL are involved.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Callable, Iterator, MutableMapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import Component
from .faults import maybe_fail
from .models import head_module

# ------------------------------------------------------------------------------------------------
# determinism and precision
# ------------------------------------------------------------------------------------------------


#: The values of CUBLAS_WORKSPACE_CONFIG that make cuBLAS GEMMs deterministic; PyTorch accepts exactly
#: these two strings (``Context::checkCuBLASConfigDeterministic`` in ATen's Context.cpp) and raises on
#: a deterministic GEMM otherwise. The first is the default here (more workspace, faster).
CUBLAS_WORKSPACE_VAR = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC_CONFIGS = (":4096:8", ":16:8")


def configure_cublas_workspace(deterministic: bool, environ: MutableMapping[str, str] | None = None) -> str:
    """Set CUBLAS_WORKSPACE_CONFIG before anything can touch CUDA, or refuse a conflicting value.

    cuBLAS reads the variable once per process, when its first handle is created (the first GEMM):
    a later change has no effect. So it is set whenever it is unset, deterministic run or not: under
    ``--cluster debug`` several runs share one process, and a non-deterministic run that left it
    unset would make every GEMM of a later deterministic run raise. A value the user set that is not
    one of the deterministic ones is kept for a non-deterministic run and is an error for a
    deterministic one. Returns the value in force."""
    env = os.environ if environ is None else environ
    value = env.get(CUBLAS_WORKSPACE_VAR)
    if value is None or value == "":
        env[CUBLAS_WORKSPACE_VAR] = value = CUBLAS_DETERMINISTIC_CONFIGS[0]
    elif deterministic and value not in CUBLAS_DETERMINISTIC_CONFIGS:
        raise ValueError(
            f"{CUBLAS_WORKSPACE_VAR}={value!r} makes cuBLAS non-deterministic, but the run asks for "
            f"deterministic = true; allowed: {' or '.join(CUBLAS_DETERMINISTIC_CONFIGS)} (or unset it: "
            f"cnnstress then sets {CUBLAS_DETERMINISTIC_CONFIGS[0]}), or set deterministic = false")
    return value


def set_determinism(seed: int, deterministic: bool) -> dict[str, str]:
    """Seed every RNG, pin cuDNN/cuBLAS to deterministic kernels and make float32 mean IEEE float32.
    Called once at worker start, before the first CUDA call. Returns the precision settings in
    force, for the results' root attributes.

    torch 2.14 runs float32 cuDNN convolutions as TF32 by default
    (``torch.backends.cudnn.conv.fp32_precision == "tf32"``): a float32 Grad-CAM, deletion/insertion
    pass or blur corruption would carry a 10-bit mantissa on an Ampere or newer GPU. Only the new
    ``fp32_precision`` API is used: mixing it with the legacy ``allow_tf32`` flags raises."""
    workspace = configure_cublas_workspace(deterministic)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=False)
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    return precision_settings(workspace)


def precision_settings(workspace: str | None = None) -> dict[str, str]:
    """The float32 and determinism settings in force, as strings (root attributes of results.h5)."""
    return {"cudnn_conv_fp32_precision": str(torch.backends.cudnn.conv.fp32_precision),
            "cuda_matmul_fp32_precision": str(torch.backends.cuda.matmul.fp32_precision),
            "deterministic_algorithms": str(torch.are_deterministic_algorithms_enabled()),
            "cudnn_deterministic": str(torch.backends.cudnn.deterministic),
            CUBLAS_WORKSPACE_VAR: str(workspace if workspace is not None else os.environ.get(CUBLAS_WORKSPACE_VAR, ""))}


def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def use_channels_last(device: torch.device, wanted: bool) -> bool:
    """Whether to train and predict in channels_last on ``device``: as the grid asks on a GPU, never
    on the CPU. On the CPU torch 2.14.1's oneDNN backward of a 1x1 stride-2 channels_last Conv2d
    from 4 or 6 input channels (flexible_cnn's projection shortcut at widths 4 and 6) corrupts
    memory: measured here, a flexible_cnn width-4 float32 step aborted with "double free or
    corruption" with one thread and hung with two; 8 and 16 channels and NCHW were fine. Rather than
    guess which shapes are safe, the CPU trains NCHW, where channels_last buys little anyway."""
    return wanted and device.type != "cpu"


def select_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@dataclass(frozen=True)
class Precision:
    """One AMP path for every variant: autocast(enabled=...) + GradScaler(enabled=...)."""

    device_type: str
    dtype: torch.dtype
    enabled: bool

    @classmethod
    def for_device(cls, device: torch.device, amp: bool, amp_dtype: str, cpu_bf16: bool | None = None) -> Precision:
        """The CPU autocasts to bfloat16 only, and only where it has bf16 units (AMX or
        AVX512-BF16): without them oneDNN emulates bf16 and a training step of simple_cnn was
        measured 10-20x slower than float32 on this project's 2-core CI machine. ``cpu_bf16``
        forces the choice (tests use it to exercise the CPU AMP path). On CUDA the grid chooses."""
        if device.type == "cpu":
            use = cpu_has_bf16() if cpu_bf16 is None else cpu_bf16
            return cls("cpu", torch.bfloat16, amp and use)
        return cls(device.type, getattr(torch, amp_dtype), amp)

    @property
    def needs_scaler(self) -> bool:
        return self.enabled and self.dtype == torch.float16

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)

    def scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device_type, enabled=self.needs_scaler)


# ------------------------------------------------------------------------------------------------
# optimizer and schedule
# ------------------------------------------------------------------------------------------------


def build_optimizer(model: nn.Module, comp: Component) -> torch.optim.Optimizer:
    p = comp.params
    params = model.parameters()
    if comp.name == "sgd":
        return torch.optim.SGD(params, lr=p["lr"], momentum=p["momentum"], nesterov=p["nesterov"] and p["momentum"] > 0,
                               weight_decay=p["weight_decay"])
    if comp.name == "adam":
        return torch.optim.Adam(params, lr=p["lr"], weight_decay=p["weight_decay"])
    if comp.name == "adamw":
        return torch.optim.AdamW(params, lr=p["lr"], weight_decay=p["weight_decay"])
    raise ValueError(f"unknown optimizer {comp.name!r}; valid: sgd, adam, adamw")


def lr_factor(comp: Component, step: int, epochs: int, steps_per_epoch: int) -> float:
    """Multiplier of the base lr after ``step`` optimizer steps (schedules advance per step)."""
    p = comp.params
    total = max(1, epochs * steps_per_epoch)
    epoch_f = step / steps_per_epoch
    if comp.name == "constant":
        return 1.0
    if comp.name == "multistep":
        return p["gamma"] ** sum(1 for m in p["milestones"] if epoch_f >= m)
    if comp.name == "cosine":
        warm = p["warmup_epochs"] * steps_per_epoch
        if step < warm:
            return (step + 1) / warm
        t = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
    if comp.name == "onecycle":
        up = max(1, int(p["pct_start"] * total))
        lo = 1.0 / p["div_factor"]
        if step < up:
            return lo + (1.0 - lo) * step / up
        t = min(1.0, (step - up) / max(1, total - up))
        end = lo / 1e4
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"unknown schedule {comp.name!r}; valid: constant, multistep, cosine, onecycle")


def build_scheduler(optimizer: torch.optim.Optimizer, comp: Component, epochs: int,
                    steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(comp, step, epochs, steps_per_epoch))


# ------------------------------------------------------------------------------------------------
# stages
# ------------------------------------------------------------------------------------------------


@dataclass
class DeviceData:
    """One split as tensors on the training device."""

    x: Tensor  # uint8 (N,3,H,W)
    y: Tensor  # int64 (N,)

    @classmethod
    def from_numpy(cls, x: np.ndarray, y: np.ndarray, device: torch.device) -> DeviceData:
        return cls(torch.from_numpy(np.ascontiguousarray(x)).to(device), torch.from_numpy(y.astype(np.int64)).to(device))

    def __len__(self) -> int:
        return int(self.y.shape[0])


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.sum(-targets * F.log_softmax(logits.float(), dim=1), dim=1).mean()


def train_steps(n: int, batch_size: int) -> int:
    """Batches per training epoch: a final batch of one is dropped (BatchNorm cannot normalise a
    single sample)."""
    return n // batch_size + (1 if n % batch_size >= 2 else 0)


def batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Shuffled index batches for one training epoch (``train_steps`` of them)."""
    order = torch.randperm(n, generator=generator, device=generator.device)
    for i in range(train_steps(n, batch_size)):
        yield order[i * batch_size:(i + 1) * batch_size]


def train_one_epoch(model: nn.Module, data: DeviceData, augment: Callable, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler, precision: Precision, generator: torch.Generator,
                    batch_size: int, on_batch: Callable[[int, int], None] | None = None) -> dict[str, float]:
    maybe_fail("epoch")  # tests: an injected MemoryError / crash inside training
    model.train()
    total_loss = torch.zeros((), device=data.y.device, dtype=torch.float64)
    correct = torch.zeros((), device=data.y.device, dtype=torch.int64)
    seen = 0
    n_batches = train_steps(len(data), batch_size)
    for i, idx in enumerate(batches(len(data), batch_size, generator)):
        x, targets = augment(data.x[idx], data.y[idx], generator)
        with precision.autocast():
            logits = model(x)
        loss = soft_cross_entropy(logits, targets)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        total_loss += loss.detach().double() * idx.numel()
        correct += (logits.argmax(1) == data.y[idx]).sum()
        seen += idx.numel()
        if on_batch is not None:
            on_batch(i + 1, n_batches)
    if not math.isfinite(float(total_loss)):
        raise FloatingPointError("training loss is not finite (diverged); lower the learning rate")
    return {"loss": float(total_loss) / max(1, seen), "acc": float(correct) / max(1, seen)}


def to_input(x_float01: Tensor, mean: Tensor, std: Tensor, channels_last: bool) -> Tensor:
    """[0,1] float images -> normalised network input."""
    x = (x_float01 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def float32_head(model: nn.Module, x: Tensor, precision: Precision) -> tuple[Tensor, Tensor]:
    """(logits, embedding), both float32: the trunk (``model.features``) runs under autocast, the
    global pooling and the head in float32 on the float32 feature map.

    Under bfloat16 autocast a logit carries 8 significant bits (a step of 0.0625 near 10): stored
    that way it moves NLL and ECE, makes argmax ties, and makes a run on a CPU with bf16 units differ
    from one without. Pooling a float32 copy of the map and a float32 Linear give what is stored its
    full precision.

    A model without ``features``/``pooled`` (a model by reference) runs whole under autocast, and a
    forward hook on its head (models.head_module: the last ``nn.Linear`` its forward pass runs)
    recomputes the head's output in float32 from a float32 copy of its input, which is the
    embedding."""
    net = getattr(model, "_orig_mod", model)
    if not (hasattr(net, "features") and hasattr(net, "pooled")):
        return _hooked_float32_head(model, x, precision)
    with precision.autocast():
        fmap = model.features(x)
    with torch.autocast(precision.device_type, enabled=False):
        emb = model.pooled(fmap.float())
        return model.head(emb), emb


def _hooked_float32_head(model: nn.Module, x: Tensor, precision: Precision) -> tuple[Tensor, Tensor]:
    head = head_module(model)
    captured: list[Tensor] = []

    def float32(module: nn.Linear, inputs: tuple[Tensor, ...], _output: Tensor) -> Tensor:
        with torch.autocast(precision.device_type, enabled=False):
            emb = inputs[0].float()
            captured.append(emb)
            return F.linear(emb, module.weight.float(), None if module.bias is None else module.bias.float())

    handle = head.register_forward_hook(float32)
    try:
        with precision.autocast():
            logits = model(x)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"the head ran {len(captured)} times in one forward pass; it must run once")
    return logits.float(), captured[0].flatten(1)


# ------------------------------------------------------------------------------------------------
# Grad-CAM
# ------------------------------------------------------------------------------------------------


class LayerActivations:
    """Context manager that records a layer's output on each forward pass and removes its hook on
    exit (the pattern of pytorch-grad-cam's ActivationsAndGradients; gradients are taken with
    torch.autograd.grad with respect to the recorded output, so no gradient hook is needed).

    With ``copies`` > 1 the layer's output is replaced by that many copies stacked along the batch,
    so the rest of the network runs on copies*B rows: one backward pass then gives the gradient for
    a different target class in each copy."""

    def __init__(self, layer: nn.Module, copies: int = 1):
        self.layer = layer
        self.copies = copies
        self.output: Tensor | None = None
        self._handle = None

    def _hook(self, module, inputs, output: Tensor) -> Tensor:
        acts = torch.cat([output] * self.copies) if self.copies > 1 else output
        self.output = acts
        # The network goes on with a copy: a next module that works in place (a BatchNorm followed
        # by ReLU(inplace=True), as in simple_cnn, flexible_cnn's stem and resnet18's bn1) would
        # otherwise overwrite the recorded activation and rebase its autograd history, so the map
        # would be the ReLU's, labelled as the BatchNorm's. The gradient with respect to ``acts``
        # flows back through the clone unchanged.
        return acts.clone()

    def __enter__(self) -> LayerActivations:
        self._handle = self.layer.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()
        self.output = None


# ------------------------------------------------------------------------------------------------
# a trained model as one value: prediction, Grad-CAM, deletion/insertion
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Predictor:
    """Everything a measurement needs of a trained model, in one value: the model, the dataset's
    normalisation, the AMP precision of its trunk and its memory format. Logits and embeddings
    always come from a float32 head (:func:`float32_head`); Grad-CAM is float32 throughout (its
    precision is not used)."""

    model: nn.Module
    mean: Tensor
    std: Tensor
    precision: Precision
    channels_last: bool

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def with_model(self, model: nn.Module) -> Predictor:
        """The same normalisation, precision and memory format for another model (a re-initialised copy)."""
        return Predictor(model, self.mean, self.std, self.precision, self.channels_last)

    def input(self, x01: Tensor) -> Tensor:
        """[0,1] float images -> the model's input (normalised, in its memory format)."""
        return to_input(x01, self.mean, self.std, self.channels_last)

    @torch.no_grad()
    def logits(self, x01: Tensor) -> Tensor:
        """Float32-head logits of one batch of [0,1] images (what :meth:`predict` stores for them)."""
        return float32_head(self.model, self.input(x01), self.precision)[0]

    @torch.inference_mode()
    def predict(self, x_uint8: Tensor, batch_size: int, *, with_embedding: bool = False,
                transform: Callable[[Tensor, int], Tensor] | None = None,
                index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (float32, from a float32 head) and optionally penultimate embeddings (float32) for
        every image, in order, or for the images at ``index`` (gathered batch by batch, so a subset
        of a split is never copied whole on the device).

        ``transform(x01, batch_index)`` may alter each [0,1] batch first (corruptions)."""
        self.model.eval()
        logits, embeds = [], []
        n = x_uint8.shape[0] if index is None else index.shape[0]
        for b, start in enumerate(range(0, n, batch_size)):
            rows = x_uint8[start:start + batch_size] if index is None else x_uint8[index[start:start + batch_size]]
            x01 = rows.float().div_(255)
            if transform is not None:
                x01 = transform(x01, b)
            out, emb = float32_head(self.model, self.input(x01), self.precision)
            logits.append(out)
            if with_embedding:
                embeds.append(emb)
        return torch.cat(logits), (torch.cat(embeds) if with_embedding else None)

    def evaluate(self, data: DeviceData, batch_size: int) -> dict[str, float]:
        logits, _ = self.predict(data.x, batch_size)
        loss = F.cross_entropy(logits, data.y).item()
        acc = (logits.argmax(1) == data.y).float().mean().item()
        return {"loss": loss, "acc": acc}

    def gradcam(self, layer: nn.Module, x_uint8: Tensor, targets: list[Tensor], batch_size: int) -> list[Tensor]:
        """Grad-CAM maps (N,h,w) at ``layer`` for each target-class vector in ``targets``.

        Batched: per batch, one forward and one backward pass for every image and every target. The
        layer's output is stacked once per target vector (``LayerActivations(copies=k)``), so the
        rest of the network sees k*B rows; copy j's rows are scored on target vector j, and the
        gradient of the summed scores is taken with respect to the stacked output only
        (torch.autograd.grad): no parameter gradients, nothing before ``layer`` back-propagated. In
        eval mode rows are independent, so gradient row j*B+i is image i's own gradient for target
        j. Computed in float32 (no autocast) so maps do not depend on AMP rounding. Each map is
        ReLU'd and scaled to max 1 (all-zero maps stay zero)."""
        self.model.eval()
        k = len(targets)
        out: list[list[Tensor]] = [[] for _ in range(k)]
        with LayerActivations(layer, copies=k) as rec:
            for start in range(0, x_uint8.shape[0], batch_size):
                xb = self.input(x_uint8[start:start + batch_size].float().div_(255))
                b = xb.shape[0]
                with torch.enable_grad():
                    logits = self.model(xb)
                    acts = rec.output
                    chosen = torch.cat([t[start:start + b] for t in targets]).view(-1, 1)
                    (grads,) = torch.autograd.grad(logits.gather(1, chosen).sum(), acts)
                    weights = grads.mean(dim=(2, 3), keepdim=True)
                    cam = F.relu((weights * acts.detach()).sum(dim=1))
                    peak = cam.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1)
                    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam)).float()
                    for j in range(k):
                        out[j].append(cam[j * b:(j + 1) * b])
        return [torch.cat(o) for o in out]

    @torch.inference_mode()
    def deletion_insertion(self, x_uint8: Tensor, saliency: Tensor, classes: Tensor, steps: int = 16,
                           batch_size: int = 256, removal: str = "mean",
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Deletion and insertion curves (M, steps+1): probability of ``classes`` as the most salient
        pixels (by ``saliency`` upsampled to the image) are removed from the image (deletion) or
        revealed on an image with every pixel removed (insertion). A faithful map makes deletion
        fall fast and insertion rise fast.

        ``removal``: "mean" (removed pixels take the dataset mean, i.e. 0 after normalisation) or
        "road" (ROAD's noisy linear imputation, :func:`noisy_linear_impute`, so the removed region
        looks like its surroundings instead of a flat patch; its noise is drawn from ``generator``).

        ``batch_size`` images at a time: the (up to 10 000) sampled images never sit on the device
        as one batch of masked copies. Probabilities come from a float32 head (:func:`float32_head`)."""
        if removal not in REMOVAL_MODES:
            raise ValueError(f"removal must be one of {REMOVAL_MODES}, got {removal!r}")
        self.model.eval()
        dele, ins = [], []
        for start in range(0, x_uint8.shape[0], batch_size):
            sl = slice(start, start + batch_size)
            d, i = self._deletion_insertion_batch(x_uint8[sl], saliency[sl], classes[sl], steps, removal, generator)
            dele.append(d)
            ins.append(i)
        return torch.cat(dele), torch.cat(ins)

    def _deletion_insertion_batch(self, x_uint8: Tensor, saliency: Tensor, classes: Tensor,
                                  steps: int, removal: str = "mean",
                                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        m, _, h, w = x_uint8.shape
        sal = F.interpolate(saliency.float().unsqueeze(1), size=(h, w), mode="bilinear", align_corners=False).view(m, -1)
        # rank of each pixel in the saliency order (0 = most salient); ties broken by position
        order = torch.argsort(-sal, dim=1, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(h * w, device=order.device).expand(m, -1))
        x = to_input(x_uint8.float().div(255), self.mean, self.std, channels_last=False)
        dele, ins = [], []
        for s in range(steps + 1):
            k = round(s * h * w / steps)
            keep_top = (rank < k).view(m, 1, h, w)  # the k most salient pixels
            if removal == "road":
                filled = (noisy_linear_impute(x, keep_top, generator=generator),
                          noisy_linear_impute(x, ~keep_top, generator=generator))
            else:
                filled = (torch.where(keep_top, torch.zeros_like(x), x), torch.where(keep_top, x, torch.zeros_like(x)))
            for curve, img in zip((dele, ins), filled):
                inp = img.contiguous(memory_format=torch.channels_last) if self.channels_last else img
                logits, _ = float32_head(self.model, inp, self.precision)
                curve.append(torch.softmax(logits, 1).gather(1, classes.view(-1, 1)).squeeze(1))
        return torch.stack(dele, 1), torch.stack(ins, 1)


# ------------------------------------------------------------------------------------------------
# ROAD's noisy linear imputation (Rong et al., "A consistent and efficient evaluation strategy for
# attribution methods", ICML 2022)
# ------------------------------------------------------------------------------------------------

REMOVAL_MODES = ("mean", "road")
ROAD_NOISE = 0.01  # standard deviation of the noise added to imputed values (the paper's), input units
# conjugate gradients stop when every image's root-mean-square residual is below this (input units): far
# below the noise, so the solve's error is not what the curves show
ROAD_TOL = 1e-5
# the 8 neighbours' weights: 1/6 for the four sharing an edge, 1/12 for the four diagonal ones
_ROAD_EDGE, _ROAD_DIAGONAL = 1 / 6, 1 / 12


def _coarse_fill(x: Tensor, known: Tensor) -> Tensor:
    """Removed pixels filled coarse to fine with the mean of the kept pixels in 2x2, 4x4, ...
    blocks around them (0 where no block holds a kept pixel): a starting guess for the solve."""
    levels = [(x * known, known)]
    while min(levels[-1][0].shape[-2:]) >= 2:
        v, k = levels[-1]
        levels.append((F.avg_pool2d(v, 2, ceil_mode=True), F.avg_pool2d(k, 2, ceil_mode=True)))
    guess = torch.zeros_like(levels[-1][0])
    for v, k in reversed(levels):
        up = F.interpolate(guess, size=v.shape[-2:], mode="nearest")
        own = v / k.clamp_min(1e-12)
        guess = torch.where(k > 0, own, up)
    return guess


def _neighbour_sum(u: Tensor) -> Tensor:
    """sum over the in-image neighbours n of pixel p of weight(n - p) * u[n], for (B, 1, H, W) ``u``
    (shifted slices of a zero-padded copy: a 3x3 convolution without conv2d's per-call cost on a CPU)."""
    h, w = u.shape[-2:]
    q = F.pad(u, (1, 1, 1, 1))
    edge = q[..., :h, 1:w + 1] + q[..., 2:, 1:w + 1] + q[..., 1:h + 1, :w] + q[..., 1:h + 1, 2:]
    diagonal = q[..., :h, :w] + q[..., :h, 2:] + q[..., 2:, :w] + q[..., 2:, 2:]
    return _ROAD_EDGE * edge + _ROAD_DIAGONAL * diagonal


def noisy_linear_impute(x: Tensor, removed: Tensor, noise: float = ROAD_NOISE,
                        generator: torch.Generator | None = None, max_iter: int | None = None,
                        tol: float = ROAD_TOL) -> Tensor:
    """ROAD's noisy linear imputation of the ``removed`` pixels of (M, 3, H, W) images ``x``.

    Every removed pixel becomes the weighted mean of its (up to 8, inside the image) neighbours,
    removed or not, with weights 1/6 (edge) and 1/12 (diagonal); the kept pixels stay as they are.
    That is one sparse linear system per image and channel; it is symmetric positive definite on
    every removed region that touches a kept pixel, and is solved here by Jacobi-preconditioned
    conjugate gradients, batched on the device (no scipy). A removed region with no kept pixel
    in reach (e.g. every pixel removed) has nothing to interpolate from and keeps 0, i.e. the
    dataset mean after normalisation. Then Gaussian noise of standard deviation ``noise`` is added to
    the imputed values only (drawn from ``generator``), so a model cannot read the removal
    pattern off perfectly smooth patches. ``removed``: (M, 1, H, W) or (M, H, W) bool; ``tol``: the
    root-mean-square residual the solve stops at; ``max_iter``: at most this many iterations.
    """
    m, c, h, w = x.shape
    mask = removed.view(m, 1, h, w).to(x.dtype).expand(m, c, h, w).reshape(m * c, 1, h, w)
    xs = x.float().reshape(m * c, 1, h, w)
    known = 1.0 - mask
    diag = _neighbour_sum(torch.ones_like(xs[:1]))  # sum of the weights of the in-image neighbours

    def apply(u: Tensor) -> Tensor:  # the system's matrix on the removed pixels (u is 0 elsewhere)
        return mask * (diag * u - _neighbour_sum(u))

    b = mask * _neighbour_sum(xs * known)
    u = mask * _coarse_fill(xs, known)  # a starting point right at low frequencies, where CG is slowest
    r = b - apply(u)
    z = r / diag
    p = z.clone()
    rz = (r * z).sum(dim=(1, 2, 3))
    steps = max_iter if max_iter is not None else 4 * (h + w) + 50
    for _ in range(steps):
        if float((r * r).mean(dim=(1, 2, 3)).max()) < tol ** 2:
            break
        ap = apply(p)
        denom = (p * ap).sum(dim=(1, 2, 3))
        alpha = torch.where(denom > 0, rz / denom.clamp_min(1e-30), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        u = u + alpha * p
        r = r - alpha * ap
        z = r / diag
        rz_new = (r * z).sum(dim=(1, 2, 3))
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(1e-30), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        p = z + beta * p
        rz = rz_new
    if noise > 0:
        u = u + mask * noise * torch.randn(u.shape, generator=generator, device=u.device, dtype=u.dtype)
    return torch.where(mask.bool(), u, xs).view(m, c, h, w).to(x.dtype)


# The same measurements as functions of their parts (tests and bench/ call them this way).


def predict(model: nn.Module, x_uint8: Tensor, mean: Tensor, std: Tensor, precision: Precision,
            batch_size: int, channels_last: bool = True, with_embedding: bool = False,
            transform: Callable[[Tensor, int], Tensor] | None = None,
            index: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """:meth:`Predictor.predict`."""
    return Predictor(model, mean, std, precision, channels_last).predict(
        x_uint8, batch_size, with_embedding=with_embedding, transform=transform, index=index)


def evaluate(model: nn.Module, data: DeviceData, mean: Tensor, std: Tensor, precision: Precision,
             batch_size: int, channels_last: bool = True) -> dict[str, float]:
    """:meth:`Predictor.evaluate`."""
    return Predictor(model, mean, std, precision, channels_last).evaluate(data, batch_size)


def gradcam(model: nn.Module, layer: nn.Module, x_uint8: Tensor, targets: list[Tensor], mean: Tensor,
            std: Tensor, batch_size: int, channels_last: bool = True) -> list[Tensor]:
    """:meth:`Predictor.gradcam` (float32: no precision needed)."""
    fp32 = Precision(x_uint8.device.type, torch.float32, False)
    return Predictor(model, mean, std, fp32, channels_last).gradcam(layer, x_uint8, targets, batch_size)


def deletion_insertion(model: nn.Module, x_uint8: Tensor, saliency: Tensor, classes: Tensor, mean: Tensor,
                       std: Tensor, precision: Precision, steps: int = 16,
                       channels_last: bool = True, batch_size: int = 256, removal: str = "mean",
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """:meth:`Predictor.deletion_insertion`."""
    return Predictor(model, mean, std, precision, channels_last).deletion_insertion(
        x_uint8, saliency, classes, steps, batch_size, removal, generator)


def fixed_positions(n: int, count: int, seed: int) -> np.ndarray:
    """``min(count, n)`` sorted int64 positions of ``range(n)``, drawn without replacement by a numpy
    generator seeded with ``seed``: the same for every run of a sweep (the seed is a sweep-level
    one, the split seed or [stress].seed), so that runs compare image by image. The one sampler of
    fixed test (and training) positions."""
    return np.sort(np.random.default_rng(seed).permutation(n)[:min(count, n)])


# ------------------------------------------------------------------------------------------------
# RNG state for checkpoints (plain tensors, so they load with torch.load(weights_only=True))
# ------------------------------------------------------------------------------------------------


def rng_state(generator: torch.Generator) -> dict[str, object]:
    """Every RNG a run may draw from, in a form ``torch.load(weights_only=True)`` accepts (tensors,
    ints, tuples). Only torch RNGs drive training today (data order and augmentation use
    ``generator``), but Python's and numpy's are saved too, so that a future draw from them cannot
    break resume silently."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"generator": generator.get_state(), "torch": torch.get_rng_state(),
             "python": (version, torch.tensor(mt, dtype=torch.int64), gauss),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(generator: torch.Generator, state: dict[str, object]) -> None:
    """Restore what ``rng_state`` saved. Any failure raises: resuming with a different random
    stream would silently break bitwise reproducibility."""
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(int(x) for x in mt.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if torch.cuda.is_available() and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])
