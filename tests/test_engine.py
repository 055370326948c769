"""Engine stages: the one AMP path, schedules, batched Grad-CAM against a per-image computation."""

from __future__ import annotations

import copy
import math
import random as pyrandom

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnstress import catalog, engine
from cnnstress.augment import BatchAugment
from cnnstress.config import Component
from cnnstress.engine import (DeviceData, Precision, build_optimizer, build_scheduler, deletion_insertion, gradcam,
                              batches, lr_factor, predict, set_determinism, train_one_epoch, train_steps)
from cnnstress.models import build_model, gradcam_layers, resolve_layer

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
        # the model interface the engine relies on: features -> pooled -> head
        def features(self, x):
            return x[:, :, :16, :16].mean((1, 2, 3)).view(-1, 1, 1, 1)

        def pooled(self, f):
            return f.flatten(1)

        def head(self, e):
            return torch.cat([e * 4, -e * 4], 1)

        def forward(self, x):
            return self.head(self.pooled(self.features(x)))

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


def test_deletion_insertion_in_batches_equals_one_batch():
    """The sampled images go through in batches (a small GPU must not hold 10 000 masked
    copies at once); the curves do not depend on the batch size."""
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, width=4).eval()
    x = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8)
    sal = torch.rand(7, 8, 8, generator=torch.Generator().manual_seed(1))
    cls = torch.arange(7) % 10
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    p = Precision("cpu", torch.bfloat16, False)
    whole = deletion_insertion(model, x, sal, cls, mean, std, p, 8, False, batch_size=100)
    for bs in (1, 3):
        parts = deletion_insertion(model, x, sal, cls, mean, std, p, 8, False, batch_size=bs)
        for a, b in zip(whole, parts):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_stored_logits_and_embeddings_come_from_a_float32_head_under_bfloat16_autocast():
    """Under bf16 autocast every logit used to be a bf16 number (8 significant bits);
    the head now runs in float32 on the float32 feature map, so logits and embeddings equal an
    independent float32 computation of pooling + Linear over the autocast trunk's output."""
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, width=8).eval()
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    amp = Precision("cpu", torch.bfloat16, True)
    logits, emb = predict(model, x, mean, std, amp, 8, False, with_embedding=True)
    assert logits.dtype == emb.dtype == torch.float32
    xin = (x.float() / 255 - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fmap = model.features(xin)
        assert fmap.dtype == torch.bfloat16  # the trunk did run in bfloat16
        ref_emb = fmap.float().mean((2, 3))
        ref_logits = ref_emb @ model.head.weight.T + model.head.bias
    torch.testing.assert_close(emb, ref_emb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    # not bf16-rounded: most logits are not representable in bfloat16
    assert (logits.to(torch.bfloat16).float() != logits).float().mean() > 0.5


def _without_inplace(model: torch.nn.Module) -> torch.nn.Module:
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return ref


@pytest.mark.parametrize("name, options", [("simple_cnn", {"width": 4}), ("flexible_cnn", {"width": 4, "depth": 1}),
                                           ("flexible_cnn", {"width": 4, "depth": 1, "residual": False}),
                                           ("resnet18", {})])
def test_gradcam_at_every_accepted_layer_equals_a_model_without_inplace_ops(name, options):
    """At a BatchNorm followed by ReLU(inplace=True) the recorded activation was
    overwritten by the ReLU (the map was the ReLU's). Every layer the grid accepts gives the map of
    the same weights in a copy with every in-place op switched off, for both target vectors."""
    torch.manual_seed(0)
    model = build_model(name, 10, **options)
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 32, 32))  # running statistics away from 0/1, so BN is not the identity
    model.eval()
    ref = _without_inplace(model)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    targets = [torch.arange(5) % 10, (torch.arange(5) + 3) % 10]
    layers = catalog.gradcam_layer_paths(name, options)  # what the grid accepts
    assert set(layers) == set(gradcam_layers(model))
    for path in layers:
        got = gradcam(model, model.get_submodule(path), x, targets, mean, std, 3, channels_last=False)
        want = gradcam(ref, ref.get_submodule(path), x, targets, mean, std, 3, channels_last=False)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5, msg=f"{name} {path}")


def test_cublas_workspace_is_set_for_every_run_and_a_conflicting_value_is_refused():
    """cuBLAS reads CUBLAS_WORKSPACE_CONFIG once per process, so it is set even for a
    non-deterministic run (a later deterministic run in the same --cluster debug process would
    otherwise raise at every GEMM), a value the user chose is kept where it is allowed, and a
    non-deterministic value is refused for a deterministic run, naming the variable and the values."""
    env: dict[str, str] = {}
    assert engine.configure_cublas_workspace(False, env) == ":4096:8" and env == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}
    assert engine.configure_cublas_workspace(True, env) == ":4096:8"
    env = {"CUBLAS_WORKSPACE_CONFIG": ":16:8"}
    assert engine.configure_cublas_workspace(True, env) == ":16:8"
    env = {"CUBLAS_WORKSPACE_CONFIG": ":0:0"}
    assert engine.configure_cublas_workspace(False, env) == ":0:0"  # the user's choice, for a run that allows it
    with pytest.raises(ValueError, match=r"CUBLAS_WORKSPACE_CONFIG=':0:0'.*allowed: :4096:8 or :16:8"):
        engine.configure_cublas_workspace(True, env)


def test_set_determinism_makes_float32_ieee_and_reports_it():
    """Torch 2.14 runs float32 cuDNN convolutions as TF32 by default; float32 means IEEE
    float32 here, and the settings are returned for the results' root attributes."""
    torch.backends.cudnn.conv.fp32_precision = "tf32"  # torch's default
    settings = set_determinism(0, True)
    assert torch.backends.cudnn.conv.fp32_precision == "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert settings["cudnn_conv_fp32_precision"] == "ieee" and settings["deterministic_algorithms"] == "True"


def test_predict_on_an_index_equals_predict_on_the_gathered_images():
    """A subset is gathered batch by batch, never copied whole onto the device."""
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, width=4).eval()
    x = torch.randint(0, 256, (20, 3, 32, 32), dtype=torch.uint8)
    idx = torch.tensor([17, 2, 5, 11, 0, 19, 3])
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    p = Precision("cpu", torch.bfloat16, False)
    a = predict(model, x[idx], mean, std, p, 3, False, with_embedding=True)
    b = predict(model, x, mean, std, p, 3, False, with_embedding=True, index=idx)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


# --- ROAD's noisy linear imputation ----------------------------------------------------------------


def _road_by_dense_system(img: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The ROAD paper's system written out pixel by pixel: each removed pixel equals the weighted mean
    of its in-image 8 neighbours (1/6 sharing an edge, 1/12 diagonal), kept pixels fixed; solved densely."""
    c, h, w = img.shape
    out = img.astype(np.float64).copy()
    unknown = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    for ch in range(c):
        a = np.zeros((len(unknown), len(unknown)))
        b = np.zeros(len(unknown))
        for (i, j), k in unknown.items():
            for di in (-1, 0, 1):
                for dj in (-1, 0, 1):
                    ii, jj = i + di, j + dj
                    if (di, dj) == (0, 0) or not (0 <= ii < h and 0 <= jj < w):
                        continue
                    wt = 1 / 6 if di == 0 or dj == 0 else 1 / 12
                    a[k, k] += wt
                    if (ii, jj) in unknown:
                        a[k, unknown[(ii, jj)]] -= wt
                    else:
                        b[k] += wt * img[ch, ii, jj]
        for (i, j), k in unknown.items():
            out[ch, i, j] = np.linalg.solve(a, b)[k]
    return out


@pytest.mark.parametrize("seed, share", [(0, 0.3), (1, 0.7), (2, 0.95)])
def test_road_imputation_solves_the_papers_linear_system(seed, share):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(2, 3, 7, 9))
    removed = rng.random((2, 7, 9)) < share
    removed[:, 0, 0] = False  # at least one kept pixel: the system has one solution
    got = engine.noisy_linear_impute(torch.tensor(img, dtype=torch.float32), torch.tensor(removed), noise=0.0,
                                     tol=1e-9, max_iter=2000).numpy()
    for n in range(2):
        np.testing.assert_allclose(got[n], _road_by_dense_system(img[n], removed[n]), atol=2e-5)
        assert np.array_equal(got[n][:, ~removed[n]], img[n][:, ~removed[n]].astype(np.float32))


def test_road_noise_touches_only_removed_pixels_and_follows_its_generator():
    rng = np.random.default_rng(3)
    x = torch.tensor(rng.normal(size=(4, 3, 16, 16)), dtype=torch.float32)
    removed = torch.tensor(rng.random((4, 1, 16, 16)) < 0.5)
    clean = engine.noisy_linear_impute(x, removed, noise=0.0)
    noisy = engine.noisy_linear_impute(x, removed, generator=torch.Generator().manual_seed(7))
    again = engine.noisy_linear_impute(x, removed, generator=torch.Generator().manual_seed(7))
    assert torch.equal(noisy, again)
    m = removed.expand(-1, 3, -1, -1)
    diff = (noisy - clean)[m]
    assert torch.equal(noisy[~m], x[~m]) and torch.equal(clean[~m], x[~m])
    assert abs(float(diff.std()) - engine.ROAD_NOISE) < 0.1 * engine.ROAD_NOISE
    # nothing kept: nothing to interpolate from, the mean (0) plus noise
    everything = engine.noisy_linear_impute(x, torch.ones_like(removed), noise=0.0)
    assert torch.equal(everything, torch.zeros_like(x))


def test_road_removal_in_the_curves_ends_where_mean_fill_ends():
    torch.manual_seed(0)
    model = build_model("simple_cnn", 10, width=4).eval()
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    sal = torch.rand(5, 8, 8, generator=torch.Generator().manual_seed(1))
    cls = torch.arange(5)
    mean, std = torch.tensor(MEAN), torch.tensor(STD)
    p = Precision("cpu", torch.float32, False)
    d_mean, i_mean = deletion_insertion(model, x, sal, cls, mean, std, p, 4, False)
    d_road, i_road = deletion_insertion(model, x, sal, cls, mean, std, p, 4, False, removal="road",
                                        generator=torch.Generator().manual_seed(2))
    # nothing removed yet: the image itself; everything removed: the mean image (plus ROAD's 0.01 noise)
    torch.testing.assert_close(d_road[:, 0], d_mean[:, 0])
    torch.testing.assert_close(i_road[:, -1], i_mean[:, -1])
    torch.testing.assert_close(d_road[:, -1], d_mean[:, -1], atol=0.02, rtol=0)
    assert not torch.allclose(d_road[:, 1:-1], d_mean[:, 1:-1])  # in between, the removal differs
    with pytest.raises(ValueError, match="removal"):
        deletion_insertion(model, x, sal, cls, mean, std, p, 4, False, removal="blur")
