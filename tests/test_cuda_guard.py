"""The CUDA path, guarded on the CPU.

CI has no GPU, so these tests record what each path would run on one (tests/cuda_guard.py):
every aten op a training step, evaluation, Grad-CAM, deletion/insertion and every corruption run
must have a deterministic CUDA kernel (``set_determinism`` turns on
``torch.use_deterministic_algorithms``, under which the others raise on a GPU); a bfloat16 training
epoch must not sync the host once per batch; and each path, run on fake CUDA tensors, must not mix a
CPU tensor into CUDA work.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensor, FakeTensorMode

import cuda_guard as cg
from cnnstress import augment as augment_module
from cnnstress import catalog
from cnnstress.augment import BatchAugment
from cnnstress.config import Component
from cnnstress.corrupt import CORRUPTIONS, corrupt
from cnnstress.engine import (DeviceData, Precision, build_optimizer, build_scheduler, deletion_insertion, evaluate,
                              gradcam, predict, train_one_epoch, train_steps)
from cnnstress.models import build_model, gradcam_layers, resolve_layer, resolve_options

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
NUM_CLASSES = 10

pytestmark = [
    # one float16 step from a fresh GradScaler may be skipped (inf found while the scale settles):
    # torch then warns that the scheduler stepped first; expected here, not a defect of the path
    pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"),
    # fake CUDA without a driver: autocast("cuda") switches itself off (the AMP op sets are covered
    # by the CPU recordings)
    pytest.mark.filterwarnings("ignore:CUDA is not available or torch_xla is imported. Disabling autocast"),
]

# Small widths and depth 1 where the model has the option: the op set does not depend on width, and
# the file has to run in about a minute on 2 CPU cores (resnet18 has no width option).
MODELS = {
    "simple_cnn": ("simple_cnn", {"width": 4}),
    "flexible_cnn-residual": ("flexible_cnn", {"width": 4, "depth": 1, "residual": True}),
    "flexible_cnn-plain": ("flexible_cnn", {"width": 4, "depth": 1, "residual": False}),
    "resnet18": ("resnet18", {}),
}

# the three AMP paths; on the CPU float16 autocast exists and Precision.scaler() enables the scaler
PRECISIONS = {
    "float32": Precision("cpu", torch.float32, False),
    "bfloat16": Precision("cpu", torch.bfloat16, True),
    "float16": Precision("cpu", torch.float16, True),
}

ALL_AUGMENTS = list(catalog.AUGMENTS)


def _data(n: int, seed: int = 0) -> DeviceData:
    g = torch.Generator().manual_seed(seed)
    return DeviceData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, NUM_CLASSES, (n,), generator=g))


def _model(key: str) -> nn.Module:
    name, options = MODELS[key]
    torch.manual_seed(0)
    return build_model(name, NUM_CLASSES, **options)


# torch 2.14.1 on this CPU: the backward of a 1x1 stride-2 convolution on channels_last input (the
# projection shortcuts of flexible_cnn and resnet18) corrupts the heap ("double free or corruption")
# or hangs, depending on the thread count; contiguous input is fine. The op set is the same in both
# layouts (convolution / convolution_backward), so the CPU recordings use contiguous input.
class _Contiguous(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.contiguous())


def _augment(which: str) -> BatchAugment:
    if which == "none":
        return BatchAugment([], None, mean=MEAN, std=STD, num_classes=NUM_CLASSES)
    return BatchAugment(ALL_AUGMENTS, None, mean=MEAN, std=STD, num_classes=NUM_CLASSES, label_smoothing=0.1)


def _optimizer(model: nn.Module, name: str) -> torch.optim.Optimizer:
    if name == "sgd":
        return build_optimizer(model, Component("sgd", {"lr": 0.01, "momentum": 0.9, "nesterov": True,
                                                        "weight_decay": 5e-4}))
    return build_optimizer(model, Component(name, {"lr": 1e-3, "weight_decay": 1e-2}))


def _epoch(model: nn.Module, precision: Precision, aug: BatchAugment, data: DeviceData, batch_size: int,
           optimizer: str = "sgd", generator: torch.Generator | None = None, on_batch=None):
    opt = _optimizer(model, optimizer)
    sched = build_scheduler(opt, Component("cosine", {"warmup_epochs": 0}), 1, train_steps(len(data), batch_size))
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    stats = train_one_epoch(model, data, aug, opt, sched, precision.scaler(), precision, gen, batch_size,
                            on_batch=on_batch)
    return opt, stats


# ------------------------------------------------------------------------------------------------
# the list and its self-tests
# ------------------------------------------------------------------------------------------------


def test_guard_list_matches_installed_torch_version():
    # The list was read off this torch's docstring and ATen sources; another torch may add or drop
    # non-deterministic kernels. On an upgrade: re-derive ENTRIES (see cuda_guard.DERIVED_FROM),
    # then bump TORCH_VERSION.
    assert cg.installed_torch_version() == cg.TORCH_VERSION, (
        f"tests/cuda_guard.py was derived from torch {cg.TORCH_VERSION}, torch {torch.__version__} is installed: "
        "re-check its use_deterministic_algorithms docstring and alertNotDeterministic call sites")


def test_guard_list_covers_the_installed_docstring():
    # every "will throw a RuntimeError" bullet of the installed torch is mapped to entries (or the
    # mapping names entries that do not exist): a changed bullet fails here even without a version bump
    installed = cg.installed_docstring_throw_items()
    assert len(installed) >= 20  # the parser found the list, not an empty section
    assert set(installed) == set(cg.DOCSTRING_THROW_ITEMS), set(installed) ^ set(cg.DOCSTRING_THROW_ITEMS)
    keys = {e.key for e in cg.ENTRIES}
    for bullet, covered in cg.DOCSTRING_THROW_ITEMS.items():
        assert isinstance(covered, tuple) and covered and set(covered) <= keys, bullet
    assert len(keys) == len(cg.ENTRIES)  # keys are unique
    assert "2.14.1" in cg.DERIVED_FROM and cg.TORCH_VERSION == "2.14.1"


@pytest.fixture
def nondeterministic_allowed():
    """The examples run the ops themselves on the CPU, where a few (max_unpool, quantized resize)
    raise under use_deterministic_algorithms(True); an earlier test that trained a run in this
    process (set_determinism) leaves it on."""
    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    yield
    torch.use_deterministic_algorithms(before)


@pytest.mark.parametrize("entry", cg.ENTRIES, ids=[e.key for e in cg.ENTRIES])
def test_guard_catches_each_listed_op(entry, nondeterministic_allowed):
    with cg.OpRecorder() as rec:
        entry.example()
    assert entry.key in rec.offending_keys, f"{entry.key}: recorded {sorted(rec.ops)}"
    with pytest.raises(AssertionError, match="without a deterministic CUDA kernel"):
        rec.assert_deterministic()


def _adaptive_pool_backward(output_size: int) -> cg.OpRecorder:
    x = torch.rand(2, 3, 6, 6, requires_grad=True)
    with cg.OpRecorder() as rec:
        nn.AdaptiveAvgPool2d(output_size)(x).sum().backward()
    assert x.grad is not None  # the backward really ran inside the recorder
    return rec


def test_adaptive_avg_pool_1x1_passes_and_2x2_is_caught():
    # every model here ends in AdaptiveAvgPool2d(1): ATen computes it as a mean, whose backward is
    # deterministic; any other output size runs _adaptive_avg_pool2d_backward (atomicAdd on CUDA)
    ones = _adaptive_pool_backward(1)
    ones.assert_deterministic()
    assert not any("adaptive_avg_pool2d" in op for op in ones.ops)
    twos = _adaptive_pool_backward(2)
    assert twos.offending_keys == {"adaptive_avg_pool2d_backward"}


@pytest.mark.parametrize("case", ["nll_loss2d-none", "nll_loss-1d", "median-no-dim", "bincount-no-weights",
                                  "scatter_reduce-sum", "interpolate-nearest", "pad-constant", "max_pool2d"])
def test_guard_passes_the_deterministic_neighbours(case):
    # the conditions matter: these are the same ops (or their usual alternatives) in the forms that do
    # have deterministic CUDA kernels
    x = torch.rand(2, 3, 4, 4, requires_grad=True)
    with cg.OpRecorder() as rec:
        if case == "nll_loss2d-none":
            F.nll_loss(torch.log_softmax(x, 1), torch.zeros(2, 4, 4, dtype=torch.long), reduction="none")
        elif case == "nll_loss-1d":  # engine.evaluate's F.cross_entropy on (N, C) logits
            F.cross_entropy(x.flatten(1), torch.zeros(2, dtype=torch.long)).backward()
        elif case == "median-no-dim":
            torch.median(x.detach())
        elif case == "bincount-no-weights":
            torch.bincount(torch.tensor([0, 1, 1]))
        elif case == "scatter_reduce-sum":
            torch.zeros(3).scatter_reduce(0, torch.tensor([0, 0, 1]), torch.rand(3), reduce="sum")
        elif case == "interpolate-nearest":
            F.interpolate(x, scale_factor=2.0, mode="nearest").sum().backward()
        elif case == "pad-constant":
            F.pad(x, (1, 1, 1, 1)).sum().backward()
        else:
            F.max_pool2d(x, 2).sum().backward()
    assert rec.ops, "nothing was recorded"
    rec.assert_deterministic()


# ------------------------------------------------------------------------------------------------
# cnnstress code paths
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("aug", ["none", "all"])
@pytest.mark.parametrize("precision", list(PRECISIONS))
@pytest.mark.parametrize("model_key", list(MODELS))
def test_training_step_uses_only_deterministic_cuda_kernels(model_key, precision, aug):
    model, prec = _Contiguous(_model(model_key)), PRECISIONS[precision]
    assert prec.scaler().is_enabled() == (precision == "float16")  # float16 really runs the scaler path
    with cg.OpRecorder() as rec:
        _, stats = _epoch(model, prec, _augment(aug), _data(2), batch_size=2)  # one step
    assert math.isfinite(stats["loss"])
    assert any("convolution_backward" in op for op in rec.ops)  # the backward pass was recorded
    if aug == "all":
        assert any("grid_sampler_2d" in op for op in rec.ops)  # rotation ran (forward only: no backward)
    if precision == "float16":
        assert any("_amp_foreach_non_finite_check_and_unscale_" in op for op in rec.ops)
    rec.assert_deterministic()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_adaptive_optimizers_use_only_deterministic_cuda_kernels(optimizer):
    with cg.OpRecorder() as rec:
        _epoch(_Contiguous(_model("simple_cnn")), PRECISIONS["bfloat16"], _augment("all"), _data(2), 2,
               optimizer=optimizer)
    rec.assert_deterministic()


@pytest.mark.parametrize("model_key", list(MODELS))
def test_evaluation_gradcam_and_faithfulness_use_only_deterministic_cuda_kernels(model_key):
    name, options = MODELS[model_key]
    model, data = _model(model_key), _data(2)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    paths = catalog.gradcam_layer_paths(name, resolve_options(name, options))
    # every path the grid accepts must be a layer Grad-CAM can hook (else this test proves nothing)
    assert set(paths) <= set(gradcam_layers(model))
    layers = {p: resolve_layer(model, p) for p in paths}
    with cg.OpRecorder() as rec:
        for prec in (PRECISIONS["bfloat16"], PRECISIONS["float32"]):
            logits, _ = predict(model, x_uint8=data.x, mean=mean, std=std, precision=prec, batch_size=2,
                                channels_last=False, with_embedding=True)
            evaluate(model, data, mean, std, prec, 2, False)
        preds = logits.argmax(1)
        for path, layer in layers.items():
            cams = gradcam(model, layer, data.x, [preds, data.y], mean, std, batch_size=2, channels_last=False)
        deletion_insertion(model, x_uint8=data.x, saliency=cams[0], classes=preds, mean=mean, std=std,
                           precision=PRECISIONS["bfloat16"], steps=2, channels_last=False)
    assert sum(n for op, n in rec.ops.items() if "convolution_backward" in op) >= len(paths)  # Grad-CAM ran
    assert any("upsample_bilinear2d" in op for op in rec.ops)  # deletion/insertion upsampled the maps
    rec.assert_deterministic()


def test_every_corruption_uses_only_deterministic_cuda_kernels_and_no_host_sync():
    x = _data(2).x.float() / 255
    with cg.OpRecorder() as rec:
        for name in CORRUPTIONS:
            for severity in (1, 2, 3, 4, 5):
                out = corrupt(x, name, severity, torch.Generator().manual_seed(0))
                assert out.shape == x.shape
    assert len(CORRUPTIONS) == 12
    rec.assert_deterministic()
    # corrupt runs per test batch inside predict(): a host read there would stall every batch
    assert not rec.syncs, rec.report()


# ------------------------------------------------------------------------------------------------
# host syncs in a training epoch
# ------------------------------------------------------------------------------------------------


def _epoch_syncs(n_batches: int, optimizer: str) -> list[cg.Hit]:
    """Host syncs of one bfloat16 epoch of ``n_batches`` batches of 4, with every augmentation and
    label smoothing; reads of the optimizer's step counters are left out (torch.optim keeps them on
    the CPU unless capturable/fused, so reading them is no device sync)."""
    model = _Contiguous(_model("simple_cnn"))
    with cg.OpRecorder() as rec:
        opt, stats = _epoch(model, PRECISIONS["bfloat16"], _augment("all"), _data(4 * n_batches), 4,
                            optimizer=optimizer)
    assert math.isfinite(stats["loss"])
    steps = [s["step"] for s in opt.state.values() if "step" in s]
    assert all(t.device.type == "cpu" for t in steps)
    return [h for h in rec.syncs if not any(h.tensor is t for t in steps)]


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_bf16_training_epoch_has_no_per_batch_host_sync(optimizer):
    short, long = _epoch_syncs(2, optimizer), _epoch_syncs(6, optimizer)
    # the same syncs whatever the number of batches: none per batch, only the epoch-end reads of the
    # loss and accuracy (engine.train_one_epoch's float(total_loss), float(correct))
    assert [h.where for h in long] == [h.where for h in short], "\n".join(h.where for h in long)
    assert 1 <= len(long) <= 4
    assert all("engine.py" in h.where for h in long), [h.where for h in long]


def test_the_sync_counter_sees_item_float_and_bool():
    # the recorder must see each way a tensor is read on the host, or the test above proves nothing
    t = torch.ones(3)
    with cg.OpRecorder() as rec:
        t.sum().item()
        float(t.sum())
        bool(t.sum() > 0)
        torch.nonzero(t)  # (on the CPU, x[mask] reaches nonzero below the dispatcher: unseen)
        F.one_hot(torch.tensor([0, 2]), 3)  # CPU-only min/max checks: kept apart
    assert [h.op.split(".")[0] for h in rec.syncs] == ["aten::_local_scalar_dense"] * 3 + ["aten::nonzero"]
    assert len(rec.cpu_only_syncs) == 2
    assert F.one_hot is torch._C._nn.one_hot  # restored on exit


# ------------------------------------------------------------------------------------------------
# fake CUDA tensors: a CPU tensor mixed into CUDA work
# ------------------------------------------------------------------------------------------------
#
# With a CUDA build and no GPU, FakeTensorMode patches the CUDA device guard, so tensors created
# under it with device="cuda" are FakeTensors on cuda:0 that carry only shape, dtype and device: a
# forward pass propagates devices and raises where a CPU tensor (other than a 0-dim one, which CUDA
# kernels accept as a scalar) meets a CUDA one. Limits: backward cannot run (the autograd engine
# needs a real CUDA context), so the tests stub the gradient computation; and a torch.Generator
# cannot be created for "cuda" without a driver, so a CPU generator that reports device "cuda"
# stands in (fake kernels ignore the generator; BatchAugment and corrupt check its .device). Also,
# without a driver torch.autocast("cuda") and GradScaler("cuda") disable themselves (with a
# warning): the fake runs check devices in float32 arithmetic; the AMP op sets are checked by the
# CPU recordings above, and GradScaler's per-step host read of found_inf (float16 path only) is a
# known property of torch.amp, not checked here.


class _CudaLookingGenerator(torch.Generator):
    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda")


def _fake_cuda(mode: FakeTensorMode, t: torch.Tensor) -> torch.Tensor:
    f = mode.from_tensor(t.detach())
    with mode:
        return f.to("cuda")


def _fake_cuda_model(mode: FakeTensorMode, model: nn.Module) -> nn.Module:
    """``model`` with every parameter and buffer a fake CUDA tensor (the real model is untouched)."""
    import copy

    fake = copy.deepcopy(model)
    for module in fake.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = nn.Parameter(_fake_cuda(mode, p), requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = _fake_cuda(mode, b)
    return fake


@pytest.fixture
def fake_mode():
    # augment caches mean/std tensors per device; fakes must not outlive their mode in that cache
    augment_module._mean_std_tensors.cache_clear()
    yield FakeTensorMode(allow_non_fake_inputs=False)
    augment_module._mean_std_tensors.cache_clear()


class _AddsCpuTensor(nn.Module):
    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.ones(self.shape)  # created on the CPU: a bug on a GPU


def test_fake_cuda_catches_a_cpu_tensor_mixed_in(fake_mode):
    x = _fake_cuda(fake_mode, torch.zeros(2, 3))
    with fake_mode:
        assert isinstance(x, FakeTensor) and x.device.type == "cuda"
        with pytest.raises(RuntimeError, match="cuda.*cpu|cpu.*cuda"):
            _AddsCpuTensor((1,))(x)
        with pytest.raises(RuntimeError, match="cuda.*cpu|cpu.*cuda"):
            _AddsCpuTensor((2, 3))(x)
        # a 0-dim CPU tensor is legal in a CUDA op (read as a scalar), on a GPU and here alike
        assert _AddsCpuTensor(())(x).device.type == "cuda"


def test_fake_cuda_refuses_a_real_tensor(fake_mode):
    # a real (CPU) tensor held by the code, e.g. a cached constant, is caught too
    x = _fake_cuda(fake_mode, torch.zeros(2, 3))
    real = torch.ones(2, 3)
    with fake_mode, pytest.raises(AssertionError, match="FakeTensor"):
        x + real


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
@pytest.mark.parametrize("model_key", list(MODELS))
def test_fake_cuda_training_epoch_runs_every_batch_on_the_device(model_key, precision, fake_mode, monkeypatch):
    model = _fake_cuda_model(fake_mode, _model(model_key))
    data = DeviceData(_fake_cuda(fake_mode, _data(6).x), _fake_cuda(fake_mode, _data(6).y))
    prec = Precision("cuda", PRECISIONS[precision].dtype, PRECISIONS[precision].enabled)

    def fake_backward(loss, *args, **kwargs):
        # backward needs a real CUDA context; give every parameter a fake CUDA gradient instead, so
        # the optimizer step runs on the device too
        assert loss.device.type == "cuda"
        for p in model.parameters():
            p.grad = torch.zeros_like(p)

    monkeypatch.setattr(torch.Tensor, "backward", fake_backward)
    done = []
    with fake_mode:
        # the whole loop of train_one_epoch runs on fake CUDA tensors; the first value it reads on the
        # host is the epoch-end float(total_loss), which a fake tensor cannot give: so the epoch must
        # stop there, after every batch, and not before
        with pytest.raises(DataDependentOutputException):
            _epoch(model, prec, _augment("all"), data, 2, generator=_CudaLookingGenerator().manual_seed(0),
                   on_batch=lambda i, n: done.append((i, n)))
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert all(p.device.type == "cuda" for p in model.parameters())


def _fake_epoch_copies(fake_mode: FakeTensorMode, monkeypatch, n_batches: int) -> list[cg.Hit]:
    model = _fake_cuda_model(fake_mode, _model("simple_cnn"))
    data = _data(2 * n_batches)
    data = DeviceData(_fake_cuda(fake_mode, data.x), _fake_cuda(fake_mode, data.y))
    monkeypatch.setattr(torch.Tensor, "backward", lambda loss, *a, **k: [
        setattr(p, "grad", torch.zeros_like(p)) for p in model.parameters()])
    with fake_mode, cg.OpRecorder() as rec, pytest.raises(DataDependentOutputException):
        _epoch(model, Precision("cuda", torch.bfloat16, True), _augment("all"), data, 2,
               generator=_CudaLookingGenerator().manual_seed(0))
    return rec.copies


def test_fake_cuda_bf16_epoch_copies_nothing_between_host_and_device_per_batch(fake_mode, monkeypatch):
    # torch.tensor(python data, device=cuda) or a CPU constant .to(cuda) inside the loop is a
    # synchronous host-to-device copy on every batch; .cpu() a device-to-host one
    short = _fake_epoch_copies(fake_mode, monkeypatch, 2)
    augment_module._mean_std_tensors.cache_clear()
    long = _fake_epoch_copies(fake_mode, monkeypatch, 6)
    assert len(long) == len(short), "\n".join(f"{h.key} at {h.where}" for h in long)


def test_the_copy_recorder_sees_host_device_copies(fake_mode):
    x = _fake_cuda(fake_mode, torch.zeros(3))
    with fake_mode, cg.OpRecorder() as rec:
        torch.tensor([1.0, 2.0, 3.0], device="cuda")
        x.cpu()
        x + torch.tensor(2.0)  # a 0-dim CPU scalar: no copy
    assert [h.key for h in rec.copies] == ["h2d", "d2h"]


@pytest.mark.parametrize("model_key", list(MODELS))
def test_fake_cuda_evaluation_gradcam_and_faithfulness_stay_on_the_device(model_key, fake_mode, monkeypatch):
    name, options = MODELS[model_key]
    real = _model(model_key)
    paths = catalog.gradcam_layer_paths(name, resolve_options(name, options))
    model = _fake_cuda_model(fake_mode, real)
    x = _fake_cuda(fake_mode, _data(2).x)
    y = _fake_cuda(fake_mode, _data(2).y)
    mean, std = _fake_cuda(fake_mode, torch.tensor(MEAN)), _fake_cuda(fake_mode, torch.tensor(STD))
    bf16, fp32 = Precision("cuda", torch.bfloat16, True), Precision("cuda", torch.float32, False)

    def fake_grad(outputs, inputs, *args, **kwargs):
        # the forward pass, the hook and the map arithmetic run for real; only the gradient is stubbed
        assert outputs.device.type == "cuda"
        inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
        return tuple(torch.ones_like(i) for i in inputs)

    monkeypatch.setattr(torch.autograd, "grad", fake_grad)
    with fake_mode:
        logits, emb = predict(model, x_uint8=x, mean=mean, std=std, precision=bf16, batch_size=2,
                              channels_last=True, with_embedding=True)
        assert logits.device.type == "cuda" and emb.device.type == "cuda"
        transform = (lambda x01, b: corrupt(x01, "jpeg", 3, _CudaLookingGenerator().manual_seed(b)))
        clog, _ = predict(model, x_uint8=x, mean=mean, std=std, precision=fp32, batch_size=1, transform=transform)
        assert clog.device.type == "cuda"
        preds = logits.argmax(1)
        for path in paths:
            layer = model.get_submodule(path)  # the path is valid: checked on the real model below
            cams = gradcam(model, layer, x, [preds, y], mean, std, batch_size=2)
            assert all(c.device.type == "cuda" for c in cams)
        dele, ins = deletion_insertion(model, x_uint8=x, saliency=cams[0], classes=preds, mean=mean, std=std,
                                       precision=bf16, steps=2, channels_last=True)
        assert dele.device.type == "cuda" and ins.device.type == "cuda"
        # evaluate ends in .item(): the fake tensor cannot give a value, and nothing before failed
        with pytest.raises(DataDependentOutputException):
            evaluate(model, DeviceData(x, y), mean, std, bf16, 2)
    assert set(paths) <= set(gradcam_layers(real))


def test_fake_cuda_every_corruption_stays_on_the_device(fake_mode):
    x = _fake_cuda(fake_mode, _data(2).x.float() / 255)
    with fake_mode:
        for name in CORRUPTIONS:
            for severity in (1, 5):
                out = corrupt(x, name, severity, _CudaLookingGenerator().manual_seed(0))
                assert out.device.type == "cuda" and out.shape == x.shape, name


def test_fake_cuda_augment_refuses_a_cpu_generator(fake_mode):
    # the generator cannot be faked, so its device is checked by BatchAugment itself
    x = _fake_cuda(fake_mode, _data(2).x)
    y = _fake_cuda(fake_mode, _data(2).y)
    with fake_mode, pytest.raises(ValueError, match="generator is on cpu"):
        _augment("all")(x, y, torch.Generator())
