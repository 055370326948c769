"""Tests of cnnstress.randomize: cascading model-parameter randomisation (Adebayo et al. 2018)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cnnstress import data, models, randomize
from cnnstress.engine import Precision, Predictor, gradcam

EXPECTED_BLOCKS = {
    "simple_cnn": ["head", "block3", "block2", "block1"],
    "flexible_cnn": ["head", "stage3", "stage2", "stage1", "stem"],
    "resnet18": ["fc", "layer4", "layer3", "layer2", "layer1", "bn1", "conv1"],
}
SMALL = {"simple_cnn": {"width": 4}, "flexible_cnn": {"width": 4, "depth": 1}, "resnet18": {}}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny convolutions: one intra-op thread is fast; two on a shared, busy CPU are up to 50x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _build(name: str, seed: int = 0, **options) -> nn.Module:
    torch.manual_seed(seed)
    return models.build_model(name, 10, **{**SMALL[name], **options})


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties; nan when either side is constant."""

    def rank(v: np.ndarray) -> np.ndarray:
        order = np.argsort(v, kind="stable")
        r = np.empty(v.size)
        r[order] = np.arange(v.size)
        _, inverse = np.unique(v, return_inverse=True)
        return (np.bincount(inverse, r) / np.bincount(inverse))[inverse]

    ra, rb = rank(a.ravel()), rank(b.ravel())
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def test_spearman_helper():
    assert _spearman(np.array([1.0, 2, 3, 4]), np.array([10.0, 20, 30, 45])) == pytest.approx(1.0)
    assert _spearman(np.array([1.0, 2, 3, 4]), np.array([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    assert _spearman(np.array([0.0, 0, 1, 2]), np.array([0.0, 0, 2, 1])) == pytest.approx(7 / 9)  # ties averaged
    assert np.isnan(_spearman(np.zeros(4), np.arange(4.0)))


@pytest.fixture(scope="module")
def trained():
    """A tiny simple_cnn after a few SGD steps on 100 shapes images, with its data and predictions."""
    x, y, _, _ = data.generate_shapes(100, seed=1, shortcut=0.8)
    mean_t, std_t = data.channel_stats(x)
    mean, std = torch.tensor(mean_t, dtype=torch.float32), torch.tensor(std_t, dtype=torch.float32)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = _build("simple_cnn", seed=3, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(4):
        for idx in torch.randperm(100, generator=gen).split(25):
            xb = (xt[idx].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
            loss = nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        preds = model((xt[:24].float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).argmax(1)
    model.train()  # left in train mode: the cascade must not change the flag either
    return model, xt[:24], preds, mean, std


def _pred(model, mean, std) -> Predictor:
    return Predictor(model, mean, std, Precision("cpu", torch.float32, False), channels_last=False)


def _cascade(trained, seed: int = 7, layer: str = "block3"):
    model, x, preds, mean, std = trained
    return randomize.cascading_randomization(
        _pred(model, mean, std), layer, x, preds, generator=torch.Generator().manual_seed(seed), batch_size=10
    )


# ---------------------------------------------------------------------------------------- blocks


@pytest.mark.parametrize("name", list(EXPECTED_BLOCKS))
def test_blocks_from_the_output_down_cover_every_parameter(name):
    model = _build(name)
    blocks = randomize.randomization_blocks(model)
    assert [n for n, _ in blocks] == EXPECTED_BLOCKS[name]
    assert blocks[0][1] is model.head
    for path, module in blocks:
        assert model.get_submodule(path) is module
    covered = [id(p) for _, module in blocks for p in module.parameters()]
    assert len(covered) == len(set(covered)) and set(covered) == {id(p) for p in model.parameters()}


def test_blocks_of_a_plain_flexible_cnn_and_the_probe_leaves_flags():
    model = _build("flexible_cnn", residual=False, depth=2)
    model.train()
    model.stage2.eval()
    before = [m.training for m in model.modules()]
    assert [n for n, _ in randomize.randomization_blocks(model)] == EXPECTED_BLOCKS["flexible_cnn"]
    assert [m.training for m in model.modules()] == before


def test_a_model_without_a_head_is_refused():
    with pytest.raises(ValueError, match="head"):
        randomize.randomization_blocks(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_unknown_parameterised_module_is_refused():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

    with pytest.raises(TypeError, match="gain of a Scale"):
        randomize.randomize_block(nn.Sequential(nn.Linear(2, 2), Scale()), torch.Generator())


def test_generator_must_be_a_cpu_generator():
    with pytest.raises(TypeError, match="CPU torch.Generator"):
        next(randomize.cascading_models(_build("simple_cnn"), 3))


# ----------------------------------------------------------------------------------- the cascade


def _train_a_little(model: nn.Module) -> None:
    """One SGD step in train mode so that weights and BatchNorm statistics are no init values."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))).square().mean()
    loss.backward()
    opt.step()
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", list(EXPECTED_BLOCKS))
def test_steps_are_cumulative_and_the_trained_model_is_untouched(name):
    model = _build(name)
    _train_a_little(model)
    before = _snapshot(model)
    blocks = EXPECTED_BLOCKS[name]
    steps = []
    for step, work in randomize.cascading_models(model, torch.Generator().manual_seed(5)):
        assert work is not model
        state = work.state_dict()
        changed = {key for key, value in before.items() if not torch.equal(state[key], value)}
        steps.append(step)
        k = len(steps) - 1  # blocks[:k] are random now
        randomised = tuple(f"{b}." for b in blocks[:k])
        # every tensor of a randomised block differs (parameters and BatchNorm buffers alike) ...
        assert changed == {key for key in before if key.startswith(randomised)}, (step, sorted(changed)[:5])
        # ... and its BatchNorm statistics are reset
        for key in changed:
            if key.endswith("running_mean"):
                assert not state[key].any() and state[key.replace("mean", "var")].eq(1).all()
    assert steps == ["trained", *blocks]
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_randomised_batchnorm_values(trained):
    model = trained[0]
    work = None
    for step, work in randomize.cascading_models(model, torch.Generator().manual_seed(2)):
        if step == "block3":
            break
    bn = work.block3[1]
    lo, hi = randomize.BN_WEIGHT
    assert bn.weight.min() >= lo and bn.weight.max() <= hi and bn.weight.std() > 0.1
    lo, hi = randomize.BN_BIAS
    assert bn.bias.min() >= lo and bn.bias.max() <= hi and bn.bias.std() > 0.1
    assert int(bn.num_batches_tracked) == 0


def test_cascade_leaves_the_trained_model_bitwise_unchanged(trained):
    model = trained[0]
    before = _snapshot(model)
    flags = [m.training for m in model.modules()]
    grads = [(p.requires_grad, None if p.grad is None else p.grad.clone()) for p in model.parameters()]
    _cascade(trained)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert [m.training for m in model.modules()] == flags
    for p, (requires_grad, grad) in zip(model.parameters(), grads):
        assert p.requires_grad == requires_grad
        assert (p.grad is None) == (grad is None) and (grad is None or torch.equal(p.grad, grad))
    assert not any(m._forward_hooks for m in model.modules())


def test_maps_shapes_trained_step_and_reproducibility(trained):
    model, x, preds, mean, std = trained
    steps = _cascade(trained, seed=7)
    assert [s for s, _ in steps] == ["trained", *EXPECTED_BLOCKS["simple_cnn"]]
    for _, maps in steps:
        assert isinstance(maps, np.ndarray) and maps.dtype == np.float32 and maps.shape == (24, 8, 8)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    # the "trained" step is Grad-CAM of the trained model itself
    layer = models.resolve_layer(model, "block3")
    (reference,) = gradcam(model, layer, x, [preds], mean, std, 10, False)
    model.train()
    assert np.array_equal(steps[0][1], reference.numpy())
    # the same seed gives bitwise the same maps; another seed other maps after the trained step
    again = _cascade(trained, seed=7)
    assert all(a[0] == b[0] and np.array_equal(a[1], b[1]) for a, b in zip(steps, again))
    other = _cascade(trained, seed=8)
    assert np.array_equal(other[0][1], steps[0][1])
    assert all(not np.array_equal(a[1], b[1]) for a, b in zip(steps[1:], other[1:]))


def test_maps_change_once_the_head_is_randomised(trained):
    steps = dict(_cascade(trained))
    base = steps["trained"]

    def mean_rank_correlation(maps: np.ndarray) -> float:
        return float(np.nanmean([_spearman(a, b) for a, b in zip(base, maps)]))

    assert mean_rank_correlation(base) == pytest.approx(1.0)
    head = mean_rank_correlation(steps["head"])
    assert head < 0.99  # Adebayo's criterion: not (nearly) the same ranking; measured: -0.18
    assert head < 0.5
    # below the Grad-CAM layer (block3) the maps still change: the layer's input changes
    assert not np.array_equal(steps["block2"], steps["block3"])
    assert not np.array_equal(steps["block1"], steps["block2"])
    assert mean_rank_correlation(steps["block1"]) < 0.99


def test_a_layer_in_the_middle_of_a_residual_model():
    model = _build("flexible_cnn", width=4, depth=1)
    _train_a_little(model)
    x = torch.from_numpy(data.generate_shapes(6, seed=0, shortcut=0.0)[0])
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    steps = randomize.cascading_randomization(
        _pred(model, mean, std), "stage2", x, torch.arange(6) % 10, generator=torch.Generator().manual_seed(0), batch_size=4
    )
    assert [s for s, _ in steps] == ["trained", *EXPECTED_BLOCKS["flexible_cnn"]]
    assert all(maps.shape == (6, 16, 16) for _, maps in steps)
    assert not np.array_equal(steps[0][1], steps[-1][1])


def test_unknown_layer_is_a_value_error(trained):
    with pytest.raises(ValueError, match="unknown Grad-CAM layer 'block9'"):
        _cascade(trained, layer="block9")
