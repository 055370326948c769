"""What can be named in a grid file, with each parameter's default and allowed range.

Torch-free on purpose: ``grid.py`` validates against this before anything is submitted, on a login
node that may have no torch. The modules that build the named things (``data.py``, ``models.py``,
``augment.py``, ``corrupt.py``, ``engine.py``) read their defaults from here, and a test checks that
their registries and this catalogue name the same things.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One named parameter: its default (whose type is the parameter's type) and what is allowed."""

    default: Any
    lo: float | None = None  # inclusive bounds for numbers
    hi: float | None = None
    choices: tuple[Any, ...] | None = None  # for strings
    doc: str = ""

    def check(self, value: Any, where: str = "") -> Any:
        """``value`` if it is allowed (ints become floats where the default is a float), else a
        ValueError saying what is allowed, prefixed with ``where``. The one check behind grid
        validation and the model, augmentation and dataset builders."""
        try:
            return self._check(value)
        except ValueError as e:
            raise ValueError(f"{where}: {e}" if where else str(e)) from None

    def _check(self, value: Any) -> Any:
        d = self.default
        if value is None:
            raise ValueError(f"is required ({self.describe()})")
        if self.choices is not None:
            if not isinstance(value, str) or value not in self.choices:
                raise ValueError(f"{value!r} is not allowed{suggest(str(value), self.choices)}; allowed: {self.describe()}"[:400])
            return value
        if isinstance(d, bool):
            if not isinstance(value, bool):
                raise ValueError(f"must be true or false, got {type_name(value)} {value!r}"[:300])
            return value
        if isinstance(d, str):
            if not isinstance(value, str):
                raise ValueError(f"must be a string, got {type_name(value)} {value!r}"[:300])
            return value
        if isinstance(d, dict):
            if not isinstance(value, dict):
                raise ValueError(f"must be a table, got {type_name(value)}")
            return value
        if isinstance(d, list):
            if self.lo is None and self.hi is None:
                return value  # lists of names: the caller knows what they may hold
            if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
                raise ValueError(f"must be a list of integers, got {value!r}"[:300])
            for x in value:
                self._in_range(x)
            return value
        want_int = isinstance(d, int) or (d is None and isinstance(self.lo, int) and isinstance(self.hi, int))
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number ({self.describe()}), got {type_name(value)} {value!r}"[:300])
        if want_int and not isinstance(value, int):
            raise ValueError(f"must be an integer ({self.describe()}), got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number ({self.describe()}), got {value!r}")
        self._in_range(value)
        return float(value) if isinstance(d, float) else value

    def _in_range(self, x: float) -> None:
        if (self.lo is not None and x < self.lo) or (self.hi is not None and x > self.hi):
            raise ValueError(f"{x!r} is out of range; allowed: {self.describe()}")

    def describe(self) -> str:
        if self.choices is not None:
            return " | ".join(repr(c) for c in self.choices)
        kind = type(self.default).__name__ if self.default is not None else "number"
        if isinstance(self.default, list):
            kind = "list of numbers"
        rng = ""
        if self.lo is not None or self.hi is not None:
            rng = f" in [{self.lo if self.lo is not None else '-inf'}, {self.hi if self.hi is not None else 'inf'}]"
        return f"{kind}{rng}"


def suggest(word: str, options) -> str:
    """' (did you mean 'x'?)' for a near miss among ``options``, else ''."""
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def type_name(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a float"}.get(type(value), type(value).__name__)


#: The side of the square images the built-in datasets have, and the one every size-dependent default
#: (crop padding, cutout size, the CIFAR-10-C corruption parameters) is stated at: at another side
#: those scale with it (augment.py, corrupt.py).
REFERENCE_IMAGE_SIZE = 32
#: Sides of the square images your own datasets may have (imagefolder's image_size, arrays' arrays).
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 16, 128

# dataset name -> (number of classes, options)
DATASETS: dict[str, tuple[int, dict[str, Param]]] = {
    "shapes": (
        10,
        {
            "n_train": Param(10_000, 100, 200_000, doc="training images (before the validation split)"),
            "n_test": Param(2_000, 100, 100_000, doc="test images"),
            "shortcut": Param(0.8, 0.0, 1.0, doc="fraction of training images whose background hue names the class"),
            "data_seed": Param(0, 0, 2**31 - 1, doc="seed the images are generated from"),
        },
    ),
    "cifar10": (10, {}),
    "cifar100": (100, {}),
    # your own images: 0 classes here = as many as the data has (grid.py counts them at launch)
    "imagefolder": (
        0,
        {
            "root": Param("", doc="folder holding <train>/<class>/<images> and <test>/<class>/<images>; "
                                  "relative to the grid file's folder"),
            "image_size": Param(REFERENCE_IMAGE_SIZE, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE,
                                doc="shorter side resized to this, then centre-cropped"),
            "train": Param("train", doc="sub-folder of root with the training images"),
            "test": Param("test", doc="sub-folder of root with the test images"),
        },
    ),
    "arrays": (
        0,
        {"path": Param("", doc=".npz with x_train, y_train, x_test, y_test (uint8 NHWC, integer labels), optional "
                               "class_names and mask_test; relative to the grid file's folder")},
    ),
}

MODELS: dict[str, dict[str, Param]] = {
    "simple_cnn": {"width": Param(32, 4, 512, doc="channels of block1; block2 has 2x, block3 4x")},
    "flexible_cnn": {
        "width": Param(32, 4, 512, doc="channels of stage1; stage2 has 2x, stage3 4x"),
        "depth": Param(2, 1, 8, doc="conv blocks per stage"),
        "residual": Param(True, doc="identity/projection skips around each block"),
    },
    "resnet18": {"init": Param("kaiming", choices=("kaiming", "torchvision"), doc="weight init")},
}

# Grad-CAM layer used when [report].gradcam_layer is not given.
GRADCAM_DEFAULT: dict[str, str] = {"simple_cnn": "block3", "flexible_cnn": "stage3", "resnet18": "layer3"}

#: Every augmentation with its parameters, in the order they are applied (augment.CANONICAL_ORDER),
#: whatever order a grid lists them in.
AUGMENTS: dict[str, dict[str, Param]] = {
    "crop": {"padding": Param(4, 0, 16, doc="zero padding before a random crop of the image's size, in pixels at "
                                          "32 px (scaled with the image side)")},
    "flip": {"p": Param(0.5, 0.0, 1.0, doc="probability of a horizontal flip")},
    "rotation": {"degrees": Param(15.0, 0.0, 180.0, doc="uniform rotation in [-degrees, degrees]")},
    "color_jitter": {
        "brightness": Param(0.2, 0.0, 1.0),
        "contrast": Param(0.2, 0.0, 1.0),
        "saturation": Param(0.2, 0.0, 1.0),
        "hue": Param(0.05, 0.0, 0.5),
    },
    "cutout": {"holes": Param(1, 1, 8),
               "size": Param(16, 1, 32, doc="side of each square hole in pixels at 32 px (scaled with the image side)")},
    "random_erasing": {
        "p": Param(0.5, 0.0, 1.0),
        "scale_min": Param(0.02, 0.0, 1.0),
        "scale_max": Param(0.33, 0.0, 1.0),
    },
    "cutmix": {"alpha": Param(1.0, 0.01, 10.0), "p": Param(0.5, 0.0, 1.0)},
    "mixup": {"alpha": Param(0.2, 0.01, 10.0), "p": Param(1.0, 0.0, 1.0)},
}


def augment_problem(name: str, params: dict[str, Any]) -> tuple[str, str] | None:
    """A problem no single parameter's range can express, as (parameter, message), or None. The one
    check behind the grid's validation and BatchAugment's."""
    if name == "random_erasing" and params["scale_min"] > params["scale_max"]:
        return "scale_min", f"must be <= scale_max, got {params['scale_min']} > {params['scale_max']}"
    return None

OPTIMIZERS: dict[str, dict[str, Param]] = {
    "sgd": {
        "lr": Param(0.1, 1e-7, 10.0),
        "momentum": Param(0.9, 0.0, 0.999),
        "nesterov": Param(False),
        "weight_decay": Param(5e-4, 0.0, 1.0),
    },
    "adam": {"lr": Param(1e-3, 1e-7, 10.0), "weight_decay": Param(0.0, 0.0, 1.0)},
    "adamw": {"lr": Param(1e-3, 1e-7, 10.0), "weight_decay": Param(0.01, 0.0, 1.0)},
}

SCHEDULES: dict[str, dict[str, Param]] = {
    "constant": {},
    "multistep": {"milestones": Param([], 1, 100_000, doc="epochs at which lr is multiplied by gamma"), "gamma": Param(0.1, 0.0, 1.0)},
    "cosine": {"warmup_epochs": Param(0, 0, 1000)},
    "onecycle": {"pct_start": Param(0.25, 0.01, 0.99), "div_factor": Param(25.0, 1.0, 1e4)},
}

# Corruptions in the spirit of CIFAR-10-C, severities 1..5 (built by corrupt.py).
CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "gaussian_blur",
    "defocus_blur",
    "motion_blur",
    "contrast",
    "brightness",
    "saturate",
    "pixelate",
    "jpeg",
    "fog",
)

# The main top-level layers that produce a 4-D feature map, per model: what an error names first
# (tests/test_models.py checks each is in GRADCAM_LAYER_PATHS).
GRADCAM_LAYERS: dict[str, tuple[str, ...]] = {
    "simple_cnn": ("block1", "block2", "block3"),
    "flexible_cnn": ("stem", "stage1", "stage2", "stage3"),
    "resnet18": ("conv1", "layer1", "layer2", "layer3", "layer4"),
}


# Every module path Grad-CAM can hook (the top-level layers and their children with a spatial 4-D
# output), per model and per value of the options that change which paths exist. Generated from the
# models themselves, built on the meta device: `python -m cnnstress.models` prints this block, and
# tests/test_models.py fails when it differs from what the models give.
GRADCAM_LAYER_OPTIONS: dict[str, tuple[str, ...]] = {
    "simple_cnn": (),
    "flexible_cnn": ("depth",),
    "resnet18": (),
}
GRADCAM_LAYER_PATHS: dict[tuple[Any, ...], tuple[str, ...]] = {
    ("simple_cnn",): (
        "block1", "block1.0", "block1.1", "block1.2", "block1.3", "block1.4", "block1.5", "block1.6",
        "block2", "block2.0", "block2.1", "block2.2", "block2.3", "block2.4", "block2.5", "block2.6",
        "block3", "block3.0", "block3.1", "block3.2", "block3.3", "block3.4", "block3.5",
    ),
    ("flexible_cnn", 1): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage2", "stage2.0", "stage3",
        "stage3.0",
    ),
    ("flexible_cnn", 2): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage2", "stage2.0",
        "stage2.1", "stage3", "stage3.0", "stage3.1",
    ),
    ("flexible_cnn", 3): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage2",
        "stage2.0", "stage2.1", "stage2.2", "stage3", "stage3.0", "stage3.1", "stage3.2",
    ),
    ("flexible_cnn", 4): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage1.3",
        "stage2", "stage2.0", "stage2.1", "stage2.2", "stage2.3", "stage3", "stage3.0", "stage3.1",
        "stage3.2", "stage3.3",
    ),
    ("flexible_cnn", 5): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage1.3",
        "stage1.4", "stage2", "stage2.0", "stage2.1", "stage2.2", "stage2.3", "stage2.4", "stage3",
        "stage3.0", "stage3.1", "stage3.2", "stage3.3", "stage3.4",
    ),
    ("flexible_cnn", 6): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage1.3",
        "stage1.4", "stage1.5", "stage2", "stage2.0", "stage2.1", "stage2.2", "stage2.3", "stage2.4",
        "stage2.5", "stage3", "stage3.0", "stage3.1", "stage3.2", "stage3.3", "stage3.4", "stage3.5",
    ),
    ("flexible_cnn", 7): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage1.3",
        "stage1.4", "stage1.5", "stage1.6", "stage2", "stage2.0", "stage2.1", "stage2.2", "stage2.3",
        "stage2.4", "stage2.5", "stage2.6", "stage3", "stage3.0", "stage3.1", "stage3.2", "stage3.3",
        "stage3.4", "stage3.5", "stage3.6",
    ),
    ("flexible_cnn", 8): (
        "stem", "stem.0", "stem.1", "stem.2", "stage1", "stage1.0", "stage1.1", "stage1.2", "stage1.3",
        "stage1.4", "stage1.5", "stage1.6", "stage1.7", "stage2", "stage2.0", "stage2.1", "stage2.2",
        "stage2.3", "stage2.4", "stage2.5", "stage2.6", "stage2.7", "stage3", "stage3.0", "stage3.1",
        "stage3.2", "stage3.3", "stage3.4", "stage3.5", "stage3.6", "stage3.7",
    ),
    ("resnet18",): (
        "conv1", "bn1", "relu", "layer1", "layer1.0", "layer1.1", "layer2", "layer2.0", "layer2.1",
        "layer3", "layer3.0", "layer3.1", "layer4", "layer4.0", "layer4.1",
    ),
}


def gradcam_layer_paths(model: str, options: dict[str, Any]) -> tuple[str, ...]:
    """Every module path Grad-CAM can hook for ``model`` built with ``options`` (all of them, as
    resolved): the top-level layers and their children with a spatial 4-D output. Torch-free, so the
    grid can refuse a bad path before anything runs (the table above is generated from the models)."""
    if model not in GRADCAM_LAYER_OPTIONS:
        raise ValueError(f"unknown model {model!r}; valid: {', '.join(MODELS)}")
    return GRADCAM_LAYER_PATHS[(model, *(options[key] for key in GRADCAM_LAYER_OPTIONS[model]))]
