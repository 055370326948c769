"""Cascading model-parameter randomisation: the sanity check of Adebayo et al., "Sanity Checks for
Saliency Maps" (NeurIPS 2018).

A saliency method that explains the *model* must change its maps when the model's learned weights
are destroyed. Starting from the output, the model's blocks are re-initialised one after another,
cumulatively (after step k, blocks 0..k are random and the blocks below them keep their trained
weights), and Grad-CAM is recomputed after every step for the same images and the same classes
(the trained model's predictions). Maps that stay similar to the trained ones (rank correlation,
SSIM: :mod:`cnnstress.analysis.sanity`) reveal a method that shows image structure, not the
model. Randomising a block *below* the Grad-CAM layer changes the maps too: the layer's
activations then change.

Choices (the paper re-initialises a layer's weights from its initialiser; what follows makes that
precise for these models):

* Blocks (:func:`randomization_blocks`): the model's top-level children that own parameters, in
  the order a forward pass calls them, reversed, with the head (``model.head``) first:
  ``simple_cnn``: head, block3, block2, block1; ``flexible_cnn``: head, stage3, stage2, stage1,
  stem; ``resnet18``: fc, layer4, layer3, layer2, layer1, bn1, conv1. A block's step name is its
  module path. Children that own no parameters (pooling, ReLU) are no step.
* Conv weights: kaiming-normal (fan_out, relu), as :func:`cnnstress.models._init_module`; conv
  biases (none in the registry's models) uniform +-1/sqrt(fan_in); Linear: PyTorch's default
  (kaiming-uniform a=sqrt(5), bias uniform +-1/sqrt(fan_in)), as ``_init_module``.
* BatchNorm (and GroupNorm): ``_init_module``'s weight 1 / bias 0 would be a fixed value, not a
  random one, so weight is drawn uniform in [0.5, 1.5] and bias uniform in [-0.5, 0.5] (a random
  per-channel gain and offset of the order of the normalised activations, which keeps the signal
  alive through many random blocks and moves each channel's ReLU threshold). The running
  statistics are reset to mean 0, variance 1 (``num_batches_tracked`` 0), so a randomised block
  keeps no statistic of training either; in eval mode its BatchNorm is then exactly that random
  affine map.
* All values are drawn on the CPU from ``generator`` (a CPU ``torch.Generator``), block by block
  from the output down and within a block in module definition order, then copied to the model's
  device: the randomised weights are the same on every device and bitwise reproducible from the
  generator's seed. A parameter of a module type not listed above raises ``TypeError`` rather than
  keep its trained value.
* The trained model is never touched: everything runs on a deep copy.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from cnnstress.engine import Predictor
from cnnstress.models import head_module, probe_calls, resolve_layer

#: Step name of the unmodified model, the first step of every cascade.
TRAINED = "trained"

#: BatchNorm/GroupNorm re-initialisation: weight ~ U(BN_WEIGHT), bias ~ U(BN_BIAS).
BN_WEIGHT = (0.5, 1.5)
BN_BIAS = (-0.5, 0.5)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "_orig_mod", model)  # torch.compile's wrapper


def _owns_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def _call_order(model: nn.Module, children: list[tuple[str, nn.Module]]) -> list[str]:
    """Names of ``children`` in the order one eval-mode probe forward pass first calls them."""
    order: list[str] = []
    for name, _output in probe_calls(model, children):
        if name not in order:
            order.append(name)
    return order


def randomization_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(module path, module)`` of the blocks a cascade re-initialises, from the output down.

    The head (``model.head``) first, then the model's other top-level children that own
    parameters, in the reverse of the order a forward pass calls them (found by one probe pass in
    eval mode on a zero input; training flags restored). A child the forward pass never calls
    cannot change a map and is left out. Raises ValueError when the head is not a top-level child
    called last.
    """
    net = _unwrap(model)
    head = head_module(net)
    children = [(name, module) for name, module in net.named_children() if _owns_parameters(module)]
    # a model by reference may nest its head (e.g. "classifier.1"): the top-level child holding it goes first
    head_names = [name for name, module in children if any(m is head for m in module.modules())]
    if not head_names:
        raise ValueError(f"{type(net).__name__} has no top-level module holding its head to randomise first")
    order = _call_order(net, children)
    if not order or order[-1] != head_names[0]:
        raise ValueError(f"{type(net).__name__}: the head {head_names[0]!r} is not the last block a forward pass calls")
    modules = dict(children)
    return [(name, modules[name]) for name in reversed(order)]


# ------------------------------------------------------------------------------------ re-initialise


def _cpu_draw(like: Tensor, fill) -> Tensor:
    """A float32 CPU tensor shaped like ``like``, filled by ``fill(tensor)`` (drawing on the CPU)."""
    out = torch.empty(like.shape, dtype=torch.float32)
    fill(out)
    return out


def _fan_in(weight: Tensor) -> int:
    return int(weight.shape[1] * math.prod(weight.shape[2:]))


def _uniform(low: float, high: float, generator: torch.Generator):
    return lambda t: nn.init.uniform_(t, low, high, generator=generator)


@torch.no_grad()
def _randomize_module(module: nn.Module, generator: torch.Generator) -> None:
    """Re-draw ``module``'s own parameters (not its children's) and reset norm statistics."""
    own = dict(module.named_parameters(recurse=False))
    if not own:
        return
    draws: dict[str, Tensor] = {}
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        draws["weight"] = _cpu_draw(
            module.weight,
            lambda t: nn.init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=generator),
        )
        if module.bias is not None:
            bound = 1.0 / math.sqrt(_fan_in(module.weight))
            draws["bias"] = _cpu_draw(module.bias, _uniform(-bound, bound, generator))
    elif isinstance(module, nn.Linear):
        draws["weight"] = _cpu_draw(
            module.weight, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=generator)
        )
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.in_features)
            draws["bias"] = _cpu_draw(module.bias, _uniform(-bound, bound, generator))
    elif isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
        if module.weight is not None:
            draws["weight"] = _cpu_draw(module.weight, _uniform(*BN_WEIGHT, generator))
        if module.bias is not None:
            draws["bias"] = _cpu_draw(module.bias, _uniform(*BN_BIAS, generator))
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
            module.reset_running_stats()  # mean 0, var 1, num_batches_tracked 0
    else:
        raise TypeError(
            f"cannot randomise the parameters {', '.join(own)} of a {type(module).__name__}; "
            "known: Conv, Linear, BatchNorm, GroupNorm"
        )
    for name, param in own.items():
        param.copy_(draws[name])


def randomize_block(block: nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter of ``block`` in place (module definition order), as described
    in the module docstring."""
    _check_generator(generator)
    for module in block.modules():
        _randomize_module(module, generator)


def _check_generator(generator: Any) -> None:
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError(f"generator must be a CPU torch.Generator, got {generator!r}")


def cascading_models(model: nn.Module, generator: torch.Generator) -> Iterator[tuple[str, nn.Module]]:
    """Yield ``("trained", m)``, then ``(block path, m)`` after re-initialising each block of
    :func:`randomization_blocks` in turn, cumulatively.

    ``m`` is one deep copy of ``model``, modified in place between yields (snapshot it if you keep
    a step); ``model`` itself is never modified.
    """
    _check_generator(generator)
    work = copy.deepcopy(_unwrap(model))
    work.zero_grad(set_to_none=True)
    blocks = randomization_blocks(work)
    yield TRAINED, work
    for name, block in blocks:
        randomize_block(block, generator)
        yield name, work


def cascading_randomization(
    pred: Predictor,
    layer_path: str,
    x_uint8: Tensor,
    classes: Tensor,
    *,
    generator: torch.Generator,
    batch_size: int,
) -> list[tuple[str, np.ndarray]]:
    """Grad-CAM maps at ``layer_path`` after each step of the cascade, output block first.

    ``x_uint8`` (M, 3, H, W) uint8 images and ``classes`` (M,) int64 target classes (the trained
    model's predictions) on the model's device; ``pred`` the trained model with its normalisation
    and memory format (Grad-CAM is float32: its precision is not used). Returns ``[("trained", maps), (block path, maps), ...]`` in
    cascade order (:func:`randomization_blocks`), each ``maps`` a float32 numpy array (M, h, w),
    ReLU'd and scaled to max 1 as engine.gradcam makes them. The step order is part of the result:
    a writer must keep it (HDF5 groups list alphabetically). Bitwise reproducible from the
    generator's state on one device; ``model`` is left bitwise unchanged (a deep copy is
    randomised). Raises ValueError for a ``layer_path`` that is no Grad-CAM layer.
    """
    _check_generator(generator)
    steps: list[tuple[str, np.ndarray]] = []
    layer: nn.Module | None = None
    for name, work in cascading_models(pred.model, generator):
        if layer is None:
            layer = resolve_layer(work, layer_path)  # the copy's own module at that path
        (maps,) = pred.with_model(work).gradcam(layer, x_uint8, [classes], batch_size)
        steps.append((name, maps.detach().float().cpu().numpy()))
    return steps
