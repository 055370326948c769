"""Model registry: the CNNs a grid file can name, for square RGB input of any side from 16 to 128.

The built-in models end in global average pooling (``nn.AdaptiveAvgPool2d``), so one model maps
``(N, 3, S, S)`` to ``(N, num_classes)`` for every S; their weights do not depend on S. The sizes of
feature maps given in the docstrings below are for CIFAR's 32x32 (at S they scale by S / 32).

Every model built here has the same small interface, which the engine and Grad-CAM rely on:

* ``model.embed(x) -> (B, D)``: penultimate activations (after global average pooling, before the
  classifier);
* ``model.head``: the final ``nn.Linear`` (``D -> num_classes``);
* ``model(x) == model.head(model.embed(x))``.

Names and option defaults come from :data:`cnnstress.catalog.MODELS`.

Initialisation is reproducible and independent of the architecture's construction order:
``build_model`` draws one 63-bit seed from the global torch RNG, constructs the modules inside
``torch.random.fork_rng`` (so construction-time draws do not leak into the global RNG state), then
initialises the weights from a private generator seeded with that draw. Consequences:

* ``torch.manual_seed(s); build_model(...)`` always gives the same weights;
* ``build_model`` consumes exactly one draw from the global RNG whatever the model;
* ``flexible_cnn`` with ``residual=True`` and ``residual=False`` get *identical* initial values for
  every parameter they share, because the projection-shortcut convs are initialised last.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import json
import math
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn

from cnnstress import catalog, ownmodel

MODELS: tuple[str, ...] = tuple(catalog.MODELS)

#: Side of the square input images a probe forward pass uses when the model carries no other
#: (the built-in datasets' size); the worker records its dataset's side on the model (INPUT_SIZE_ATTR).
INPUT_SIZE = 32
#: Plain attribute (not in the state dict) holding the side of the images a model is run on.
INPUT_SIZE_ATTR = "cnnstress_input_size"


def input_size(model: nn.Module, size: int | None = None) -> int:
    """The side of the zero images a probe forward pass feeds ``model``: ``size`` when given, else
    the side the worker recorded on it (its dataset's images), else INPUT_SIZE. A model by reference
    may accept only its own input size, so probing at 32 px would fail it."""
    if size is not None:
        return int(size)
    return int(getattr(getattr(model, "_orig_mod", model), INPUT_SIZE_ATTR, INPUT_SIZE))


# --------------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------------


def resolve_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Return ``options`` checked against the catalogue and completed with its defaults.

    Raises ValueError naming an unknown model or option (listing the valid ones) or a bad value.
    """
    if name not in catalog.MODELS:
        raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    spec = catalog.MODELS[name]
    unknown = sorted(set(options) - set(spec))
    if unknown:
        valid = ", ".join(f"{k} ({p.describe()}, default {p.default!r})" for k, p in spec.items())
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for model {name!r}; "
            f"valid options: {valid or 'none'}"
        )
    resolved = {key: param.default for key, param in spec.items()}
    for key, value in options.items():
        resolved[key] = spec[key].check(value, f"model {name!r} option {key!r}")
    return resolved


# --------------------------------------------------------------------------------------------------
# building blocks
# --------------------------------------------------------------------------------------------------


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    # no bias: every conv here is followed by BatchNorm, whose shift makes a bias redundant
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


class _EmbedHeadMixin:
    """``forward = head(embed(x))`` with ``embed = pooled(features(x))``, for models that define
    ``features`` (the convolutional trunk: a 4-D map), ``pool`` (global average pooling) and ``head``.

    The split lets prediction run the trunk under autocast and the pooling and the head in float32
    (engine.float32_head): what results.h5 stores is never AMP-rounded."""

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, D)``."""
        return self.pooled(self.features(x))  # type: ignore[attr-defined]

    def pooled(self, feature_map: Tensor) -> Tensor:
        """Global average pooling of a ``features`` map, flattened to ``(B, D)``."""
        return torch.flatten(self.pool(feature_map), 1)  # type: ignore[attr-defined]

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.embed(x))  # type: ignore[attr-defined]


class SimpleCNN(_EmbedHeadMixin, nn.Module):
    """Three conv blocks (conv-bn-relu-conv-bn-relu); block1 and block2 end in a 2x2 max-pool.

    Channels ``width, 2*width, 4*width``; block3 does not pool, so for 32x32 input its output is
    8x8. Then global average pooling and ``head = Linear(4*width, num_classes)``.
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.block1 = self._block(3, width, pool=True)
        self.block2 = self._block(width, 2 * width, pool=True)
        self.block3 = self._block(2 * width, 4 * width, pool=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _block(c_in: int, c_out: int, *, pool: bool) -> nn.Sequential:
        layers: list[nn.Module] = [
            _conv3x3(c_in, c_out),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            _conv3x3(c_out, c_out),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        if pool:
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)

    def features(self, x: Tensor) -> Tensor:
        """block3's map ``(B, 4*width, 8, 8)`` for 32x32 input."""
        return self.block3(self.block2(self.block1(x)))


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn, then (+ skip when residual), then relu.

    With ``residual=True`` the skip is the identity, or ``shortcut`` = 1x1 conv (stride, no bias) +
    BatchNorm when the shape changes. With ``residual=False`` there is no skip and no ``shortcut``
    module; all other parameters are the same.
    """

    def __init__(self, c_in: int, c_out: int, stride: int, residual: bool) -> None:
        super().__init__()
        self.residual = residual
        self.conv1 = _conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = _conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or c_in != c_out):
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


class FlexibleCNN(_EmbedHeadMixin, nn.Module):
    """Stem conv-bn-relu, then ``stage1..stage3`` of ``depth`` BasicBlocks each.

    Channels ``width, 2*width, 4*width``; the first block of stage2 and of stage3 has stride 2, so for
    32x32 input stage3 is 8x8. Global average pooling and ``head = Linear(4*width, num_classes)``.

    ``residual=True`` vs ``residual=False``: the only parameters that differ are the projection
    shortcuts ``stage2.0.shortcut.{0.weight,1.weight,1.bias}`` and
    ``stage3.0.shortcut.{0.weight,1.weight,1.bias}`` (plus the BatchNorm buffers
    ``...shortcut.1.{running_mean,running_var,num_batches_tracked}``), present only with
    ``residual=True``. stage1's blocks and every non-first block keep their shape, so their skips are
    identities without parameters.
    """

    def __init__(self, num_classes: int, width: int = 32, depth: int = 2, residual: bool = True) -> None:
        super().__init__()
        self.stem = nn.Sequential(_conv3x3(3, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        self.stage1 = self._stage(width, width, depth, 1, residual)
        self.stage2 = self._stage(width, 2 * width, depth, 2, residual)
        self.stage3 = self._stage(2 * width, 4 * width, depth, 2, residual)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4 * width, num_classes)

    @staticmethod
    def _stage(c_in: int, c_out: int, depth: int, stride: int, residual: bool) -> nn.Sequential:
        blocks = [BasicBlock(c_in, c_out, stride, residual)]
        blocks += [BasicBlock(c_out, c_out, 1, residual) for _ in range(depth - 1)]
        return nn.Sequential(*blocks)

    def features(self, x: Tensor) -> Tensor:
        """stage3's map ``(B, 4*width, 8, 8)`` for 32x32 input."""
        return self.stage3(self.stage2(self.stage1(self.stem(x))))


class CifarResNet18(torchvision.models.ResNet):
    """torchvision's ResNet-18 with the CIFAR stem: 3x3 stride-1 ``conv1`` (no bias), no max-pool.

    Module paths are torchvision's (``conv1``, ``bn1``, ``layer1..layer4``, ``avgpool``, ``fc``);
    ``maxpool`` is ``nn.Identity``. For 32x32 input layer3 is 8x8 and layer4 4x4. ``head`` is ``fc``.
    """

    def __init__(self, num_classes: int) -> None:
        # the same constructor call as torchvision.models.resnet18(num_classes=num_classes)
        super().__init__(torchvision.models.resnet.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()

    @property
    def head(self) -> nn.Linear:
        """The classifier (torchvision's ``fc``); a property so ``state_dict`` keys stay torchvision's."""
        return self.fc

    def features(self, x: Tensor) -> Tensor:
        """layer4's map ``(B, 512, 4, 4)`` for 32x32 input."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pooled(self, feature_map: Tensor) -> Tensor:
        """``avgpool`` then flatten: ``(B, 512)``."""
        return torch.flatten(self.avgpool(feature_map), 1)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(B, 512)``: everything up to the flatten after ``avgpool``."""
        return self.pooled(self.features(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))


# --------------------------------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------------------------------


def _init_module(module: nn.Module, generator: torch.Generator) -> None:
    """Kaiming-normal (fan_out, relu) convs, BatchNorm weight 1 / bias 0, PyTorch-default Linear.

    This is torchvision's ResNet scheme; Linear gets PyTorch's default (kaiming-uniform a=sqrt(5),
    bias uniform +-1/sqrt(fan_in)) redrawn from ``generator``.
    """
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu", generator=generator)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear):
        nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
        if module.bias is not None:
            bound = 1.0 / math.sqrt(module.in_features)
            nn.init.uniform_(module.bias, -bound, bound, generator=generator)


def _init_order(model: nn.Module) -> Iterator[nn.Module]:
    """Modules in definition order, except shortcut projections, which come last.

    Initialising the shortcuts last makes every shared parameter of a residual and a plain
    ``flexible_cnn`` get the same values from the same seed.
    """
    shortcut_ids = {
        id(m) for name, sub in model.named_modules() if name.endswith("shortcut") for m in sub.modules()
    }
    main = [m for m in model.modules() if id(m) not in shortcut_ids]
    late = [m for m in model.modules() if id(m) in shortcut_ids]
    yield from main
    yield from late


@torch.no_grad()
def init_weights(model: nn.Module, generator: torch.Generator) -> None:
    """Apply :func:`_init_module` to every module of ``model`` (shortcut projections last)."""
    for module in _init_order(model):
        _init_module(module, generator)


# --------------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------------


def _build_simple_cnn(num_classes: int, width: int) -> tuple[nn.Module, bool]:
    return SimpleCNN(num_classes, width=width), True


def _build_flexible_cnn(num_classes: int, width: int, depth: int, residual: bool) -> tuple[nn.Module, bool]:
    return FlexibleCNN(num_classes, width=width, depth=depth, residual=residual), True


def _build_resnet18(num_classes: int, init: str) -> tuple[nn.Module, bool]:
    # "torchvision": keep the construction-time init (torchvision's kaiming scheme for its own convs,
    # PyTorch's default for the replaced conv1 and fc). "kaiming": redraw everything with
    # _init_module, so conv1 gets kaiming_normal_(fan_out, relu) like the other convs.
    return CifarResNet18(num_classes), init == "kaiming"


# name -> builder(num_classes, **resolved options) -> (module, whether to apply init_weights)
_BUILDERS: dict[str, Callable[..., tuple[nn.Module, bool]]] = {
    "simple_cnn": _build_simple_cnn,
    "flexible_cnn": _build_flexible_cnn,
    "resnet18": _build_resnet18,
}
assert tuple(_BUILDERS) == MODELS, "models.py registry and catalog.MODELS must name the same models"


def build_model(name: str, num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` for ``num_classes`` classes; missing options take catalogue defaults.

    Deterministic given ``torch.manual_seed``; consumes exactly one draw from the global CPU RNG.
    Raises ValueError for an unknown model or option (listing the valid ones) or a bad value.
    """
    resolved = resolve_options(name, options)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    seed = int(torch.randint(0, 2**62, (1,)).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # construction-time init (kept for resnet18 init="torchvision")
        model, reinit = _BUILDERS[name](num_classes, **resolved)
    if reinit:
        init_weights(model, torch.Generator().manual_seed(seed))
    return model


# --------------------------------------------------------------------------------------------------
# Grad-CAM layers
# --------------------------------------------------------------------------------------------------


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile wraps the model; its module paths live on the original
    return getattr(model, "_orig_mod", model)


def _shallow_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` for the top- and second-level modules, in definition order."""
    return [
        (path, module)
        for path, module in model.named_modules()
        if path and path.count(".") < 2 and not isinstance(module, nn.Identity)
    ]


@torch.no_grad()
def gradcam_layers(model: nn.Module, size: int | None = None) -> list[str]:
    """Module paths (top- and second-level) whose output is a spatial 4-D feature map.

    Found by one probe forward pass in eval mode on a zero ``(1, 3, S, S)`` input (S:
    :func:`input_size`; training flags restored afterwards). Excluded: outputs that are not 4-D,
    1x1 outputs (global pooling), modules called more than once per forward (their activation
    would be ambiguous), and ``nn.Identity``.
    """
    model = _unwrap(model)
    candidates = _shallow_modules(model)
    outputs: dict[str, list[tuple[int, ...] | None]] = {path: [] for path, _ in candidates}
    for path, output in probe_calls(model, candidates, size):
        outputs[path].append(tuple(output.shape) if isinstance(output, Tensor) else None)
    valid = []
    for path, _ in candidates:
        shapes = outputs[path]
        if len(shapes) == 1 and shapes[0] is not None and len(shapes[0]) == 4:
            if shapes[0][2] * shapes[0][3] > 1:
                valid.append(path)
    return valid


def meta_model(name: str, **options: Any) -> nn.Module:
    """Model ``name`` built on the meta device: its modules and their shapes, no memory, no weights
    and no draw from the global RNG. Enough for :func:`gradcam_layers`."""
    resolved = resolve_options(name, options)
    with torch.device("meta"):
        model, _ = _BUILDERS[name](2, **resolved)  # the head is not a Grad-CAM layer: any class count
    return model


def _every_value(param: catalog.Param) -> tuple[Any, ...] | None:
    """All values of a bool, a choice or an integer range of at most 16 values; else None."""
    if isinstance(param.default, bool):
        return (False, True)
    if param.choices is not None:
        return param.choices
    if isinstance(param.default, int) and param.hi - param.lo < 16:
        return tuple(range(int(param.lo), int(param.hi) + 1))
    return None


def option_samples(param: catalog.Param) -> tuple[Any, ...]:
    """Values of a model option worth building: every value where there are few, else the bounds and
    the default."""
    return _every_value(param) or tuple(dict.fromkeys((param.lo, param.default, param.hi)))


def gradcam_layer_table() -> tuple[dict[str, tuple[str, ...]], dict[tuple[Any, ...], tuple[str, ...]]]:
    """What ``catalog.GRADCAM_LAYER_OPTIONS`` and ``catalog.GRADCAM_LAYER_PATHS`` must hold, from the
    models themselves (built on the meta device): per model, the options whose value changes
    :func:`gradcam_layers` (each varied alone over :func:`option_samples`), and the paths for every
    combination of their values. ``python -m cnnstress.models`` prints them as catalog.py source."""
    shaping: dict[str, tuple[str, ...]] = {}
    table: dict[tuple[Any, ...], tuple[str, ...]] = {}
    for name, spec in catalog.MODELS.items():
        default = tuple(gradcam_layers(meta_model(name)))
        shaping[name] = tuple(
            key for key, param in spec.items()
            if any(tuple(gradcam_layers(meta_model(name, **{key: v}))) != default for v in option_samples(param))
        )
        for key in shaping[name]:
            if _every_value(spec[key]) is None:
                raise ValueError(f"model {name!r} option {key!r} changes the layer paths but has too many values to list")
        for values in itertools.product(*(option_samples(spec[key]) for key in shaping[name])):
            model = meta_model(name, **dict(zip(shaping[name], values)))
            table[(name, *values)] = tuple(gradcam_layers(model))
    return shaping, table


def _catalog_source(shaping: dict[str, tuple[str, ...]], table: dict[tuple[Any, ...], tuple[str, ...]]) -> str:
    lines = ["GRADCAM_LAYER_OPTIONS: dict[str, tuple[str, ...]] = {"]
    lines += [f"    {name!r}: ({''.join(f'{k!r}, ' for k in keys).rstrip()}),".replace("'", '"') for name, keys in shaping.items()]
    lines += ["}", "GRADCAM_LAYER_PATHS: dict[tuple[Any, ...], tuple[str, ...]] = {"]
    for key, paths in table.items():
        lines.append(f"    {key!r}: (".replace("'", '"'))
        lines += textwrap.wrap(", ".join(f'"{p}"' for p in paths) + ",", width=104,
                               initial_indent=" " * 8, subsequent_indent=" " * 8, break_on_hyphens=False)
        lines.append("    ),")
    return "\n".join(lines + ["}"])


def resolve_layer(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path`` (e.g. ``"layer3"``, ``"block3"``, ``"stage2.0"``) for Grad-CAM.

    ``""``: :func:`default_gradcam_layer` (a model by reference whose grid names no layer).
    Raises ValueError naming ``path`` and listing the valid paths (:func:`gradcam_layers`).
    """
    if not path:
        path = default_gradcam_layer(model)
    valid = gradcam_layers(model)
    if path not in valid:
        top = [p for p in valid if "." not in p]
        nested = [p for p in valid if "." in p]
        raise ValueError(
            f"unknown Grad-CAM layer {path!r} for {type(_unwrap(model)).__name__}; valid layers "
            f"(modules with a spatial 4-D output): {', '.join(top)}; nested: {', '.join(nested)}"
        )
    return _unwrap(model).get_submodule(path)


# --------------------------------------------------------------------------------------------------
# models by reference ("pkg.mod:fn", "file.py:fn", "torchvision:<name>"): cnnstress/ownmodel.py
# --------------------------------------------------------------------------------------------------


def _reference_callable(ref: str, source: dict[str, Any]) -> Callable[..., nn.Module]:
    """The builder ``ref`` names, imported the way the worker imports it."""
    target, _, attr = ref.rpartition(":")
    if ref.startswith(ownmodel.TORCHVISION):
        names = torchvision.models.list_models(module=torchvision.models)
        if attr not in names:
            raise ValueError(f"{attr!r} is not a classification model of torchvision.models; valid: {', '.join(names)}"[:600])
        return torchvision.models.get_model_builder(attr)
    if ref.startswith(ownmodel.TIMM):
        return _timm_builder(attr)
    if target.endswith(".py"):
        # a stable module name per file, so pickling and a second build find the same module
        name = "cnnstress_own_" + hashlib.sha256(source["file"].encode()).hexdigest()[:12]
        module = sys.modules.get(name)
        if module is None:
            spec = importlib.util.spec_from_file_location(name, source["file"])
            if spec is None or spec.loader is None:
                raise ValueError(f"cannot load {source['file']} as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
    else:
        root = source.get("root")
        if root and (not sys.path or sys.path[0] != root):
            sys.path.insert(0, root)  # the grid file's folder first, as the launch check had it
        module = importlib.import_module(target)
    fn: Any = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"{target} has no attribute {attr!r}")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"{target}:{attr} is not callable")
    return fn


def _timm_builder(name: str) -> Callable[..., nn.Module]:
    try:
        import timm
    except ImportError:
        raise ValueError("timm is not installed: pip install -e '.[timm]'") from None
    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model; see timm.list_models()")

    def create(num_classes: int, **options: Any) -> nn.Module:
        if options.get("pretrained") or options.get("pretrained_cfg_overlay"):
            # create_model would fetch weights from the Hugging Face hub inside a running job
            raise ValueError("pretrained timm weights are refused: nothing is downloaded at run time")
        return timm.create_model(name, num_classes=num_classes, **options)

    return create


def _torchvision_weights(ref: str, options: dict[str, Any]) -> dict[str, Any]:
    """torchvision's ``weights`` option, allowed only where nothing would be downloaded: None, or
    weights whose file is already in torch's cache."""
    weights = options.get("weights")
    if weights is None or not ref.startswith(ownmodel.TORCHVISION):
        return options
    try:
        enum = torchvision.models.get_model_weights(ref.partition(":")[2])
        value = enum[weights] if isinstance(weights, str) and weights in enum.__members__ else enum.verify(weights)
    except Exception:  # noqa: BLE001 - any unknown name: one line below
        raise ValueError(f"weights {weights!r} is not a weights name of {ref}") from None
    cached = Path(torch.hub.get_dir(), "checkpoints", Path(value.url).name)
    if not cached.is_file():
        # torchvision's builder would fetch it from the internet inside a running job (compute nodes
        # often have no internet, and a download mid-sweep is a file no run id accounts for)
        raise ValueError(f"weights {weights!r} are not in torch's hub cache: nothing is downloaded at run time; put "
                         f"{value.url} at {cached} (torch.hub.get_dir()/checkpoints; TORCH_HOME moves it) on every "
                         f"machine that runs the sweep, or save a state dict file and name it in [base].weights")
    return options


def build_reference(ref: str, num_classes: int, options: dict[str, Any], source: dict[str, Any]) -> nn.Module:
    """A model by reference, called with ``num_classes=`` and ``options`` as keyword arguments.

    Like :func:`build_model`: one draw from the global RNG, the builder run inside ``fork_rng``
    seeded with it, so the same seed gives the same weights and the builder's own draws do not
    leak. The model keeps the builder's initialisation."""
    fn = _reference_callable(ref, source)
    options = _torchvision_weights(ref, options)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = fn(num_classes=num_classes, **options)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{ref} returned {type(model).__name__}, not an nn.Module")
    if source.get("head_layer"):
        model.cnnstress_head_layer = source["head_layer"]  # a plain attribute: not in the state_dict
    return model


def build(spec_model_name: str, num_classes: int, params: dict[str, Any], source: dict[str, Any]) -> nn.Module:
    """A RunSpec's model: from the registry, or by reference."""
    if ownmodel.is_reference(spec_model_name):
        return build_reference(spec_model_name, num_classes, params, source)
    return build_model(spec_model_name, num_classes, **params)


def probe_calls(model: nn.Module, modules: list[tuple[str, nn.Module]], size: int | None = None) -> list[tuple[str, Any]]:
    """``(path, output)`` of ``modules`` in the order one probe forward pass (eval mode, zero input
    of side :func:`input_size`, no gradients; training flags restored) calls them."""
    size = input_size(model, size)
    calls: list[tuple[str, Any]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out, path=path: calls.append((path, out))) for path, m in modules]
    flags = [(m, m.training) for m in model.modules()]
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, size, size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
        for module, flag in flags:
            module.training = flag
    return calls


def head_path(model: nn.Module, size: int | None = None) -> str:
    """Module path of the classifier: ``head`` for the built-in models, the module a model by
    reference names (``[report].head_layer``), else the last ``nn.Linear`` its forward pass runs."""
    net = _unwrap(model)
    if isinstance(getattr(net, "head", None), nn.Linear) and hasattr(net, "features"):
        return "head"
    named = getattr(net, "cnnstress_head_layer", "")
    linears = [(p, m) for p, m in net.named_modules() if isinstance(m, nn.Linear)]
    if named:
        if named not in dict(linears):
            raise ValueError(f"[report].head_layer {named!r} is not an nn.Linear of {type(net).__name__}; "
                             f"nn.Linear modules: {', '.join(p for p, _ in linears) or 'none'}")
        return named
    cached = getattr(net, "cnnstress_found_head", None)
    if cached:
        return cached
    calls = probe_calls(net, linears, size)
    if not calls:
        raise ValueError(f"{type(net).__name__}'s forward pass runs no nn.Linear: the head must be one "
                         f"(name it with [report].head_layer)")
    net.cnnstress_found_head = calls[-1][0]
    return calls[-1][0]


def head_module(model: nn.Module) -> nn.Linear:
    """The classifier ``nn.Linear`` (:func:`head_path`)."""
    path = head_path(model)
    return _unwrap(model).head if path == "head" else _unwrap(model).get_submodule(path)


def default_gradcam_layer(model: nn.Module, size: int | None = None) -> str:
    """The last module (top- or second-level) whose output is a spatial 4-D map, in the order the
    forward pass calls them: a model by reference's Grad-CAM layer when the grid names none."""
    valid = set(gradcam_layers(model, size))
    calls = [path for path, _ in probe_calls(_unwrap(model), _shallow_modules(_unwrap(model)), size) if path in valid]
    if not calls:
        raise ValueError(f"{type(_unwrap(model)).__name__} has no module with a spatial 4-D output for Grad-CAM")
    return calls[-1]


def check_reference(request: dict[str, Any]) -> str:
    """The launch check of a model by reference, on the meta device: "" when it constructs with its
    options, maps a batch of the dataset's image size to ``(N, num_classes)``, has a head and its
    Grad-CAM layer exists; else one line naming the grid key."""
    ref, size, classes = request["model"], int(request.get("image_size", INPUT_SIZE)), int(request["num_classes"])
    source = request.get("model_source", {})
    try:
        fn = _reference_callable(ref, source)
    except Exception as e:  # noqa: BLE001 - the user's module: whatever it raises is one line
        return f"[base].model: {ref!r} cannot be imported: {type(e).__name__}: {e}"
    try:
        _torchvision_weights(ref, request.get("options", {}))
    except ValueError as e:
        return f"[base].model_options.weights: {e}"
    if ref.startswith(ownmodel.TIMM) and request.get("options", {}).get("pretrained"):
        return ("[base].model_options.pretrained: pretrained timm weights are refused: nothing is downloaded "
                "at run time; leave pretrained out (false) to train from scratch")
    try:
        with torch.device("meta"):
            model = fn(num_classes=classes, **request.get("options", {}))
    except Exception as e:  # noqa: BLE001
        return (f"[base].model: {ref!r} does not build with num_classes={classes} and model_options "
                f"{request.get('options', {})}: {type(e).__name__}: {e}")
    if not isinstance(model, nn.Module):
        return f"[base].model: {ref!r} returned {type(model).__name__}, not an nn.Module"
    if source.get("head_layer"):
        model.cnnstress_head_layer = source["head_layer"]
    try:
        with torch.device("meta"):
            model.eval()
            out = model(torch.zeros(2, 3, size, size))
    except Exception as e:  # noqa: BLE001
        return f"[base].model: {ref!r} fails on a batch of (2, 3, {size}, {size}) images: {type(e).__name__}: {e}"
    if not isinstance(out, Tensor) or tuple(out.shape) != (2, classes):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        return f"[base].model: {ref!r} maps a batch of (2, 3, {size}, {size}) images to {shape}, not (2, {classes}) logits"
    try:
        head = head_path(model, size)
    except ValueError as e:
        key = "[report].head_layer" if source.get("head_layer") else "[base].model"
        return f"{key}: {e}"
    layers = gradcam_layers(model, size)
    layer = request.get("gradcam_layer", "")
    if layer and layer not in layers:
        return (f"[report].gradcam_layer: {layer!r} is not a feature-map layer of {ref}; valid (modules with a "
                f"spatial 4-D output): {', '.join(layers) or 'none'}")[:600]
    if not layer and not layers:
        return f"[base].model: {ref!r} has no top- or second-level module with a spatial 4-D output for Grad-CAM"
    del head
    return ""


def check_weights(request: dict[str, Any]) -> str:
    """The launch check of [base].weights: "" when the file's state dict fits the model built from
    the request (keys and shapes), else one line naming the key with the missing and unexpected keys."""
    if not request.get("weights"):
        return ""
    from . import weights as own_weights

    try:
        sd = own_weights.read_state_dict(request["weights"])
    except own_weights.WeightsProblem as e:
        return str(e)
    try:
        model = build(request["model"], int(request["num_classes"]), request.get("options", {}),
                      request.get("model_source", {}))
    except Exception as e:  # noqa: BLE001 - check_reference has named a model that does not build
        return f"[base].model: {request['model']!r} does not build: {type(e).__name__}: {e}"
    return own_weights.mismatch(model, sd, request["weights"]["file"])


if __name__ == "__main__":
    if sys.argv[1:2] == ["--check"]:
        # the launch check of a model by reference (launcher.model_problem): one line, exit 2
        req = json.loads(sys.argv[2])
        problem = (check_reference(req) if ownmodel.is_reference(req["model"]) else "") or check_weights(req)
        if problem:
            print(problem)
            sys.exit(2)
        sys.exit(0)
    # the Grad-CAM layer table of catalog.py, regenerated from the models (paste it over the old one)
    print(_catalog_source(*gradcam_layer_table()))
