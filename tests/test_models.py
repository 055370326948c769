"""Tests for cnnstress.models: shapes, the embed/head contract, parameter counts from the
architecture formulas, residual on/off, Grad-CAM layer paths, option errors, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch
import torchvision
from torch import nn

from cnnstress import catalog, models
from cnnstress.models import MODELS, build_model, gradcam_layers, resolve_layer

# small widths keep the CPU tests fast; resnet18 has no width option
SMALL = {"simple_cnn": {"width": 8}, "flexible_cnn": {"width": 8, "depth": 2}, "resnet18": {}}


# -- independent parameter arithmetic ----------------------------------------------------------


def conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * c_out * k * k  # every conv here is bias-free


def bn(c: int) -> int:
    return 2 * c


def linear(d_in: int, d_out: int) -> int:
    return d_in * d_out + d_out


def basic_block(c_in: int, c_out: int, stride: int, skip_params: bool) -> int:
    n = conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)
    if skip_params and (stride != 1 or c_in != c_out):
        n += conv(c_in, c_out, 1) + bn(c_out)
    return n


def simple_cnn_params(w: int, classes: int) -> int:
    def block(c_in: int, c_out: int) -> int:
        return conv(c_in, c_out, 3) + bn(c_out) + conv(c_out, c_out, 3) + bn(c_out)

    return block(3, w) + block(w, 2 * w) + block(2 * w, 4 * w) + linear(4 * w, classes)


def flexible_cnn_params(w: int, depth: int, residual: bool, classes: int) -> int:
    n = conv(3, w, 3) + bn(w)
    for c_in, c_out, stride in ((w, w, 1), (w, 2 * w, 2), (2 * w, 4 * w, 2)):
        n += basic_block(c_in, c_out, stride, residual)
        n += (depth - 1) * basic_block(c_out, c_out, 1, residual)
    return n + linear(4 * w, classes)


def resnet18_cifar_params(classes: int) -> int:
    n = conv(3, 64, 3) + bn(64)
    c_in = 64
    for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        n += basic_block(c_in, c_out, stride, True) + basic_block(c_out, c_out, 1, True)
        c_in = c_out
    return n + linear(512, classes)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """One resnet18 (10 classes, eval mode) for the read-only tests: building it is the slow part."""
    torch.manual_seed(0)
    return build_model("resnet18", 10).eval()


def small_model(name: str, classes: int, resnet: nn.Module) -> nn.Module:
    if name == "resnet18" and classes == 10:
        return resnet
    return build_model(name, classes, **SMALL[name]).eval()


# -- tests --------------------------------------------------------------------------------------


def test_registry_matches_catalog() -> None:
    assert MODELS == tuple(catalog.MODELS)
    assert set(catalog.GRADCAM_DEFAULT) == set(MODELS)


@pytest.mark.parametrize("classes", [10, 100])
def test_parameter_counts_match_formulas(classes: int) -> None:
    torch.manual_seed(0)
    assert n_params(build_model("simple_cnn", classes, width=8)) == simple_cnn_params(8, classes)
    assert n_params(build_model("simple_cnn", classes)) == simple_cnn_params(32, classes)  # default width
    for depth in (1, 3):
        for residual in (True, False):
            model = build_model("flexible_cnn", classes, width=8, depth=depth, residual=residual)
            assert n_params(model) == flexible_cnn_params(8, depth, residual, classes)
    assert n_params(build_model("resnet18", classes)) == resnet18_cifar_params(classes)


def test_resnet18_cifar_count_is_the_known_number() -> None:
    assert resnet18_cifar_params(10) == 11_173_962


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("classes", [10, 100])
def test_shapes_and_embed_head_contract(name: str, classes: int, resnet: nn.Module) -> None:
    torch.manual_seed(1)
    model = small_model(name, classes, resnet)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
    expected_dim = {"simple_cnn": 32, "flexible_cnn": 32, "resnet18": 512}[name]  # 4*width, 512
    assert logits.shape == (3, classes) and logits.dtype == torch.float32
    assert emb.shape == (3, expected_dim)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (expected_dim, classes)
    with torch.no_grad():
        assert torch.equal(logits, model.head(emb))


@pytest.mark.parametrize("name", MODELS)
def test_channels_last_input_gives_same_output(name: str) -> None:
    torch.manual_seed(2)
    model = build_model(name, 10, **SMALL[name]).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out_cl = model(x.contiguous(memory_format=torch.channels_last))
        model_cl = model.to(memory_format=torch.channels_last)
        out_both = model_cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_cl, ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out_both, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_build_is_deterministic_given_seed(name: str) -> None:
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return build_model(name, 10, **SMALL[name]).state_dict()

    a, b, c = state(5), state(5), state(6)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].numel() > 64)


def test_residual_on_off_differ_only_by_projection_shortcuts() -> None:
    torch.manual_seed(3)
    res = dict(build_model("flexible_cnn", 10, width=8, depth=2, residual=True).named_parameters())
    torch.manual_seed(3)
    plain = dict(build_model("flexible_cnn", 10, width=8, depth=2, residual=False).named_parameters())
    extra = set(res) - set(plain)
    assert set(plain) <= set(res)
    # exactly the 1x1 conv + BN projections where the stage changes shape (first block of stage2/3)
    assert extra == {f"stage{s}.0.shortcut.{p}" for s in (2, 3) for p in ("0.weight", "1.weight", "1.bias")}
    assert res["stage2.0.shortcut.0.weight"].shape == (16, 8, 1, 1)
    assert res["stage3.0.shortcut.0.weight"].shape == (32, 16, 1, 1)
    for key in plain:
        assert res[key].shape == plain[key].shape, key
        # same seed -> the shared parameters start from the same values
        assert torch.equal(res[key], plain[key]), key
    extra_count = sum(res[k].numel() for k in extra)
    assert extra_count == (conv(8, 16, 1) + bn(16)) + (conv(16, 32, 1) + bn(32))


def test_residual_flag_changes_the_function() -> None:
    torch.manual_seed(4)
    res = build_model("flexible_cnn", 10, width=8, depth=1, residual=True).eval()
    torch.manual_seed(4)
    plain = build_model("flexible_cnn", 10, width=8, depth=1, residual=False).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x))


def test_resnet18_keeps_torchvision_paths_with_cifar_stem(resnet: nn.Module) -> None:
    ours = resnet.state_dict()
    ref = torchvision.models.resnet18(num_classes=10).state_dict()
    assert list(ours) == list(ref)
    for key in ref:
        if key == "conv1.weight":
            assert ours[key].shape == (64, 3, 3, 3) and ref[key].shape == (64, 3, 7, 7)
        else:
            assert ours[key].shape == ref[key].shape, key
    model = resnet
    assert isinstance(model.maxpool, nn.Identity)
    assert (model.conv1.stride, model.conv1.padding, model.conv1.bias) == ((1, 1), (1, 1), None)
    assert model.head is model.fc


def test_resnet18_kaiming_init_reaches_conv1() -> None:
    torch.manual_seed(0)
    kaiming = build_model("resnet18", 10, init="kaiming")
    torch.manual_seed(0)
    tv = build_model("resnet18", 10, init="torchvision")
    fan_out = 64 * 3 * 3
    expected_std = (2.0 / fan_out) ** 0.5  # kaiming_normal_(fan_out, relu)
    assert abs(kaiming.conv1.weight.std().item() - expected_std) < 0.1 * expected_std
    # PyTorch's default conv init (kaiming_uniform a=sqrt(5)): std = 1/sqrt(3*fan_in)
    default_std = (1.0 / (3 * 27)) ** 0.5
    assert abs(tv.conv1.weight.std().item() - default_std) < 0.1 * default_std
    for model in (kaiming, tv):
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
        w = model.layer3[0].conv1.weight  # torchvision's own convs are kaiming fan_out in both
        std = (2.0 / (w.shape[0] * 9)) ** 0.5
        assert abs(w.std().item() - std) < 0.1 * std


def _output_hw(model: nn.Module, path: str) -> tuple[int, int]:
    seen: list[torch.Size] = []
    handle = resolve_layer(model, path).register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    handle.remove()
    assert len(seen) == 1 and len(seen[0]) == 4
    return tuple(seen[0][2:])


@pytest.mark.parametrize(
    ("name", "path", "hw"),
    [
        ("resnet18", "layer3", (8, 8)),
        ("resnet18", "layer4", (4, 4)),
        ("resnet18", "layer1", (32, 32)),
        ("resnet18", "layer2.1", (16, 16)),
        ("simple_cnn", "block3", (8, 8)),
        ("simple_cnn", "block1", (16, 16)),
        ("flexible_cnn", "stage3", (8, 8)),
        ("flexible_cnn", "stage1", (32, 32)),
    ],
)
def test_resolve_layer_spatial_sizes(name: str, path: str, hw: tuple[int, int], resnet: nn.Module) -> None:
    torch.manual_seed(0)
    model = small_model(name, 10, resnet)
    assert _output_hw(model, path) == hw


@pytest.mark.parametrize("name", MODELS)
def test_gradcam_default_layer_is_valid(name: str, resnet: nn.Module) -> None:
    model = small_model(name, 10, resnet)
    assert catalog.GRADCAM_DEFAULT[name] in gradcam_layers(model)


def test_wrong_layer_path_lists_valid_ones(resnet: nn.Module) -> None:
    model = resnet
    for bad in ("layer5", "fc", "layer3.0.conv1"):
        with pytest.raises(ValueError) as err:
            resolve_layer(model, bad)
        msg = str(err.value)
        assert repr(bad) in msg
        for valid in ("layer1", "layer2", "layer3", "layer4", "layer3.1"):
            assert valid in msg
    layers = gradcam_layers(model)
    assert "fc" not in layers and "avgpool" not in layers and "layer3.0.conv1" not in layers
    assert {"layer1", "layer4", "layer4.1", "conv1"} <= set(layers)
    with pytest.raises(ValueError, match="block1"):
        resolve_layer(build_model("simple_cnn", 10, width=8), "features.2")


def test_gradcam_probe_leaves_model_state_alone() -> None:
    model = build_model("simple_cnn", 10, width=8).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    resolve_layer(model, "block2")
    assert model.training and all(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN running stats untouched


def test_unknown_model_and_options() -> None:
    with pytest.raises(ValueError) as err:
        build_model("vgg16", 10)
    assert "'vgg16'" in str(err.value) and all(n in str(err.value) for n in MODELS)
    with pytest.raises(ValueError) as err:
        build_model("flexible_cnn", 10, widht=16)
    msg = str(err.value)
    assert "'widht'" in msg and "width" in msg and "depth" in msg and "residual" in msg
    with pytest.raises(ValueError, match="init"):
        build_model("resnet18", 10, init="xavier")
    with pytest.raises(ValueError, match="width"):
        build_model("simple_cnn", 10, width=2)  # below the catalogue's minimum
    with pytest.raises(ValueError, match="residual"):
        build_model("flexible_cnn", 10, residual="yes")
    with pytest.raises(ValueError, match="depth"):
        build_model("flexible_cnn", 10, depth=1.5)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("simple_cnn", 0)


def test_missing_options_take_catalog_defaults() -> None:
    torch.manual_seed(0)
    model = build_model("flexible_cnn", 10)
    w = catalog.MODELS["flexible_cnn"]["width"].default
    depth = catalog.MODELS["flexible_cnn"]["depth"].default
    assert n_params(model) == flexible_cnn_params(w, depth, True, 10)
    assert len(model.stage2) == depth


@pytest.mark.parametrize("name, options", [
    ("simple_cnn", {"width": 8}), ("flexible_cnn", {"width": 8, "depth": 1}),
    ("flexible_cnn", {"width": 8, "depth": 3, "residual": False}), ("resnet18", None),
])
def test_catalogue_layer_paths_match_the_probe(name: str, options: dict | None, resnet: nn.Module) -> None:
    # the grid refuses a path with the torch-free catalogue list; the worker resolves it by probing
    model = resnet if options is None else build_model(name, 10, **options)
    resolved = catalog.MODELS[name]
    full = {k: p.default for k, p in resolved.items()} | (options or {})
    assert list(catalog.gradcam_layer_paths(name, full)) == gradcam_layers(model)


def test_catalogue_layer_table_is_what_the_models_give() -> None:
    """The torch-free table the grid checks [report].gradcam_layer against is regenerated from the
    models (built on the meta device) and must equal the checked-in copy."""
    shaping, table = models.gradcam_layer_table()
    assert (catalog.GRADCAM_LAYER_OPTIONS, catalog.GRADCAM_LAYER_PATHS) == (shaping, table), (
        "cnnstress/catalog.py GRADCAM_LAYER_PATHS differs from the models; paste `python -m cnnstress.models` over it")


@pytest.mark.parametrize("name", MODELS)
def test_catalogue_layer_paths_hold_for_every_option_combination(name: str) -> None:
    # every value of each small option and the bounds of the others, all combinations: an option the
    # table leaves out (flexible_cnn's width and residual, resnet18's init) must not change the paths
    spec = catalog.MODELS[name]
    for values in itertools.product(*(models.option_samples(p) for p in spec.values())):
        options = dict(zip(spec, values))
        got = models.gradcam_layers(models.meta_model(name, **options))
        assert list(catalog.gradcam_layer_paths(name, options)) == got, f"{name} {options}"
    paths = catalog.gradcam_layer_paths(name, models.resolve_options(name, {}))
    assert set(catalog.GRADCAM_LAYERS[name]) <= set(paths) and catalog.GRADCAM_DEFAULT[name] in paths


def test_meta_model_is_the_real_module_tree_without_weights_or_draws() -> None:
    torch.manual_seed(0)
    before = torch.get_rng_state()
    meta = models.meta_model("flexible_cnn", width=8, depth=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.is_meta for p in meta.parameters())
    real = build_model("flexible_cnn", 10, width=8, depth=3)
    assert [n for n, _ in meta.named_modules()] == [n for n, _ in real.named_modules()]
    assert models.gradcam_layers(meta) == gradcam_layers(real)


# -- image sizes other than 32 -------------------------------------------------------------------

# the side of the default Grad-CAM layer's map at input side S: simple_cnn and flexible_cnn halve
# twice (2x2 max-pools / stride-2 stages), resnet18's layer3 twice (layer2, layer3 stride 2); each
# halving of an odd side rounds up for the stride-2 convs (kernel 3, padding 1) and down for max-pool
def _halve(side: int, how: str) -> int:
    return (side + 1) // 2 if how == "conv" else side // 2


DEFAULT_MAP = {"simple_cnn": ("pool", "pool"), "flexible_cnn": ("conv", "conv"), "resnet18": ("conv", "conv")}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("side", [16, 24, 64, 128])
def test_built_in_models_map_any_side_to_logits(name: str, side: int, resnet: nn.Module) -> None:
    torch.manual_seed(2)
    model = small_model(name, 10, resnet)
    x = torch.randn(2, 3, side, side)
    with torch.no_grad():
        logits, emb = model(x), model.embed(x)
        assert logits.shape == (2, 10) and torch.isfinite(logits).all()
        assert torch.equal(logits, model.head(emb))  # one head whatever the side: no weight depends on it
    expected = side
    for how in DEFAULT_MAP[name]:
        expected = _halve(expected, how)
    layer = catalog.GRADCAM_DEFAULT[name]
    assert _output_hw_at(model, layer, side) == (expected, expected)
    assert layer in gradcam_layers(model, side)


def _output_hw_at(model: nn.Module, path: str, side: int) -> tuple[int, int]:
    seen = []
    handle = resolve_layer(model, path).register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-2:]))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, side, side))
    finally:
        handle.remove()
    return tuple(seen[0])


class FixedSideNet(nn.Module):
    """A model by reference that accepts one input side only (a Linear over the flattened map)."""

    def __init__(self, side: int, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(2 * side * side, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flat(torch.relu(self.conv(x))))


def test_probe_passes_use_the_side_recorded_on_the_model() -> None:
    net = FixedSideNet(64)
    with pytest.raises(RuntimeError):  # probed at 32 px, the Linear cannot take the map
        models.gradcam_layers(net)
    setattr(net, models.INPUT_SIZE_ATTR, 64)  # what the worker records: its dataset's side
    assert models.input_size(net) == 64 and models.gradcam_layers(net) == ["conv"]
    assert models.head_path(net) == "fc" and models.default_gradcam_layer(net) == "conv"
    assert models.input_size(net, 24) == 24  # an explicit side wins
    assert not any(models.INPUT_SIZE_ATTR in k for k in net.state_dict())  # not a weight


def test_check_reference_runs_the_model_at_the_dataset_side() -> None:
    request = {"model": "tests_fixed_side:build", "num_classes": 3, "options": {},
               "model_source": {}, "image_size": 64}
    import sys
    import types

    module = types.ModuleType("tests_fixed_side")
    module.build = lambda num_classes: FixedSideNet(64, num_classes)
    sys.modules["tests_fixed_side"] = module
    try:
        assert models.check_reference(request) == ""
        problem = models.check_reference({**request, "image_size": 32})
        assert "(2, 3, 32, 32)" in problem and "\n" not in problem
    finally:
        del sys.modules["tests_fixed_side"]
