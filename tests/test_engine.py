"""Engine stages: the one AMP path, schedules, batched Grad-CAM against a per-image computation."""

from __future__ import annotations

import math
import random as pyrandom

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnstress import engine
from cnnstress.augment import BatchAugment
from cnnstress.config import Component
from cnnstress.engine import (DeviceData, Precision, build_optimizer, build_scheduler, deletion_insertion, gradcam,
                              batches, lr_factor, predict, set_determinism, train_one_epoch, train_steps)
from cnnstress.models import build_model, resolve_layer

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return DeviceData(torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (n,), generator=g))


def _epoch(precision: Precision, seed=0):
    set_determinism(seed, True)
    model = build_model("simple_cnn", 10, width=4).to(memory_format=torch.channels_last)
    opt = build_optimizer(model, Component("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}))
    sched = build_scheduler(opt, Component("cosine", {"warmup_epochs": 0}), 1, 3)
    scaler = precision.scaler()
    aug = BatchAugment(["crop", "flip"], None, mean=MEAN, std=STD, num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    stats = train_one_epoch(model, _data(), aug, opt, sched, scaler, precision, gen, 32)
    return model, stats


def test_cpu_bf16_autocast_runs_through_the_same_loop():
    amp = Precision.for_device(torch.device("cpu"), True, "bfloat16", cpu_bf16=True)
    assert amp.enabled and amp.dtype == torch.bfloat16 and not amp.needs_scaler
    with amp.autocast():
        out = build_model("simple_cnn", 10, width=4)(torch.randn(2, 3, 32, 32))
    assert out.dtype == torch.bfloat16  # autocast really is on
    m1, s1 = _epoch(amp)
    m2, s2 = _epoch(amp)
    assert math.isfinite(s1["loss"]) and s1 == s2
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    fp32 = Precision.for_device(torch.device("cpu"), False, "bfloat16")
    m3, _ = _epoch(fp32)
    assert not torch.equal(m1.head.weight, m3.head.weight)  # bf16 compute differs from fp32


def test_float16_on_cuda_uses_the_grad_scaler():
    p = Precision("cuda", torch.float16, True)
    assert p.needs_scaler and not Precision("cuda", torch.float16, False).needs_scaler


@pytest.mark.parametrize("comp, expect", [
    (Component("constant", {}), lambda s: 1.0),
    (Component("multistep", {"milestones": [2, 4], "gamma": 0.1}), lambda s: 0.1 ** ((s / 10 >= 2) + (s / 10 >= 4))),
    (Component("cosine", {"warmup_epochs": 0}), lambda s: 0.5 * (1 + math.cos(math.pi * s / 50))),
])
def test_schedules_match_their_formulas(comp, expect):
    for step in range(0, 50, 3):
        assert lr_factor(comp, step, 5, 10) == pytest.approx(expect(step))


def test_onecycle_rises_then_falls_to_near_zero():
    comp = Component("onecycle", {"pct_start": 0.25, "div_factor": 25.0})
    f = [lr_factor(comp, s, 4, 25) for s in range(100)]
    peak = max(range(100), key=f.__getitem__)
    assert 20 <= peak <= 30 and f[0] == pytest.approx(1 / 25) and f[-1] < 0.01


def _cam_one(model, layer, x, cls):
    """Grad-CAM for one image and class, written out plainly."""
    acts = {}
    h = layer.register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    out = model(x)
    a = acts["a"]
    (g,) = torch.autograd.grad(out[0, cls], a)
    h.remove()
    cam = F.relu((g.mean((2, 3), keepdim=True) * a).sum(1))[0]
    return cam / cam.max() if cam.max() > 0 else cam


def test_batched_gradcam_equals_one_image_at_a_time():
    set_determinism(0, True)
    model = build_model("simple_cnn", 10, width=4).eval()
    layer = resolve_layer(model, "block3")
    data = _data(12)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    preds, _ = predict(model, data.x, mean, std, Precision("cpu", torch.bfloat16, False), 5, False)
    cam_p, cam_t = gradcam(model, layer, data.x, [preds.argmax(1), data.y], mean, std, 5, channels_last=False)
    assert cam_p.shape == (12, 8, 8)
    for i in range(12):
        x = ((data.x[i:i + 1].float() / 255) - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
        torch.testing.assert_close(cam_p[i], _cam_one(model, layer, x, int(preds[i].argmax())), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(cam_t[i], _cam_one(model, layer, x, int(data.y[i])), atol=1e-5, rtol=1e-4)
    assert not layer._forward_hooks, "the hook context manager released its hooks"


def test_deletion_of_the_relevant_pixels_beats_a_random_map():
    """A model that only looks at the top-left quadrant: a map of exactly that quadrant deletes the
    evidence fastest and reveals it fastest."""

    class Quadrant(torch.nn.Module):
        def forward(self, x):
            s = x[:, :, :16, :16].mean((1, 2, 3))
            return torch.stack([s * 4, -s * 4], 1)

    x = torch.full((6, 3, 32, 32), 255, dtype=torch.uint8)
    relevant = torch.zeros(6, 8, 8)
    relevant[:, :4, :4] = 1
    rand = torch.rand(6, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.zeros(3), torch.ones(3)
    p = Precision("cpu", torch.bfloat16, False)
    cls = torch.zeros(6, dtype=torch.long)
    d_rel, i_rel = deletion_insertion(Quadrant(), x, relevant, cls, mean, std, p, 16, False)
    d_rnd, i_rnd = deletion_insertion(Quadrant(), x, rand, cls, mean, std, p, 16, False)
    assert d_rel.shape == (6, 17)
    assert d_rel.mean(0).sum() < d_rnd.mean(0).sum()  # deletion AUC lower
    assert i_rel.mean(0).sum() > i_rnd.mean(0).sum()  # insertion AUC higher


@pytest.mark.parametrize("n, bs", [(96, 32), (97, 32), (98, 32), (5, 8), (1, 8)])
def test_batches_cover_the_data_once_dropping_only_a_final_single_sample(n, bs):
    got = list(batches(n, bs, torch.Generator().manual_seed(0)))
    seen = torch.cat(got) if got else torch.zeros(0, dtype=torch.long)
    expect = n - (1 if n % bs == 1 else 0)
    assert len(got) == train_steps(n, bs)
    assert seen.numel() == expect and seen.unique().numel() == expect
    assert all(b.numel() >= 2 for b in got)


def test_rng_state_round_trips_every_rng_through_a_weights_only_load(tmp_path):

    gen = torch.Generator().manual_seed(5)
    pyrandom.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    torch.save({"rng": engine.rng_state(gen)}, tmp_path / "ck.pt")
    expected = (torch.rand(4, generator=gen), torch.rand(4), pyrandom.random(), np.random.random(),
                np.random.standard_normal())
    gen.manual_seed(0), pyrandom.seed(0), np.random.seed(0), torch.manual_seed(0)  # move every stream on
    engine.restore_rng_state(gen, torch.load(tmp_path / "ck.pt", weights_only=True)["rng"])
    got = (torch.rand(4, generator=gen), torch.rand(4), pyrandom.random(), np.random.random(),
           np.random.standard_normal())
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert got[2:] == expected[2:]
