"""PGD attacks: eps = 0 is the clean prediction, a linear model reaches the analytic worst case,
accuracy is monotone over eps, results are bitwise reproducible and batch-size independent, and the
model is left as it was found."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import cuda_guard as cg
from cnnstress import attacks
from cnnstress.attacks import attack_positions, attack_seed, attack_sweep, pgd, pgd_images
from cnnstress.engine import Precision, Predictor, predict, to_input
from cnnstress.models import build_model

@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread for this module: on the shared 2-core machine two OpenMP threads competing
    with other processes made these tests 5x slower (measured: 19 s with one, 64-125 s with two).
    Restored afterwards for the other modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FP32 = Precision("cpu", torch.float32, False)
BF16 = Precision("cpu", torch.bfloat16, True)
MEAN, STD = torch.tensor([0.5, 0.45, 0.4]), torch.tensor([0.25, 0.24, 0.26])


def _cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("simple_cnn", 10, width=4).eval()


def _calibrated(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """``model`` with BatchNorm statistics of ``x`` (one train-mode pass, cumulative averages), back
    in eval mode: an untrained net whose BatchNorms are identities predicts one class with a wide
    margin for every image; calibrated, its predictions spread and small eps break some of them."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(to_input(x.float() / 255, MEAN, STD, False))
    return model.eval()


def _images(n: int, seed: int = 0, lo: int = 0, hi: int = 256, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class Linear(nn.Module):
    """The smallest model float32_head accepts: features = identity, pooled = flatten, a Linear head."""

    def __init__(self, d: int, classes: int, seed: int):
        super().__init__()
        self.head = nn.Linear(d, classes)
        g = _gen(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(classes, d, generator=g) * 0.05)
            self.head.bias.copy_(torch.randn(classes, generator=g))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(fmap, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(self.features(x)))


class Rowwise(nn.Module):
    """A nonlinear model whose CPU kernels are bitwise independent of the batch: elementwise
    ``features`` (sin; images of 3x8x8, a multiple of 16 values: the vectorised path for every element,
    and few enough dimensions that small eps break some images, not all) and a head that
    multiplies and sums each row on its own. A Conv2d or an nn.Linear is not (oneDNN and BLAS block
    the batch dimension: simple_cnn's ``predict`` logits differ by ~1e-7 between batch sizes 7 and
    64 on this machine), so only a model like this one can show that the attack itself never mixes
    images of a batch."""

    def __init__(self, d: int, classes: int, seed: int):
        super().__init__()
        g = _gen(seed)
        self.weight = nn.Parameter(torch.randn(classes, d, generator=g) * 0.05)
        self.bias = nn.Parameter(torch.randn(classes, generator=g) * 0.1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    def pooled(self, fmap: torch.Tensor) -> torch.Tensor:
        return torch.flatten(fmap, 1)

    def head(self, emb: torch.Tensor) -> torch.Tensor:
        return (emb.unsqueeze(1) * self.weight).sum(-1) + self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pooled(self.features(x)))


# ------------------------------------------------------------------------------------------------
# 1. eps = 0 is the clean prediction
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [FP32, BF16], ids=["float32", "bf16-autocast"])
def test_eps_zero_returns_the_clean_logits_bitwise(precision):
    model, x = _cnn(), _images(40)
    labels = torch.arange(40) % 10
    clean, _ = predict(model, x, MEAN, STD, precision, 16, channels_last=False)
    gen = _gen(0)
    state = gen.get_state()
    for norm in ("linf", "l2"):
        out = pgd(model, x, labels, MEAN, STD, norm=norm, eps=0.0, generator=gen, batch_size=16, precision=precision)
        assert out.dtype == torch.float32 and torch.equal(out, clean)
    assert torch.equal(gen.get_state(), state)  # eps = 0 draws no noise
    sweep = attack_sweep(model, x, labels, MEAN, STD, precision, norms={"linf": [0, 2]}, seed=1, steps=1,
                         batch_size=16)
    assert torch.equal(sweep[("linf", 0)], clean)


# ------------------------------------------------------------------------------------------------
# 3. a linear model reaches the analytic worst case
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,steps,step_size,dual", [
    ("linf", 10, None, 1.0),  # Madry's default step rule: 10 x 0.25 eps cross the cube
    ("l2", 30, 2.0, 2.0),     # a step of 2 eps (a factor of eps): the start's off-axis part shrinks ~3x a step
], ids=["linf", "l2"])
def test_linear_model_reaches_the_analytic_minimum_margin(norm, steps, step_size, dual):
    """For logits W x + b and images away from the box's edges, min over the ball of the margin
    (w_y - w_j).x + (b_y - b_j) is margin - eps * ||w_y - w_j||_q, q the dual norm (1 for L-inf,
    2 for L2). mean 0, std 1: the normalisation is the identity."""
    n, size = 48, 8
    model = Linear(3 * size * size, 2, seed=3)
    with torch.no_grad():  # classes balanced around the mid-grey image: margins of both signs
        model.head.weight.mul_(4)
        model.head.bias.copy_(-0.5 * model.head.weight.sum(1))
    x = _images(n, seed=4, lo=77, hi=179, size=size)  # pixels in [0.30, 0.70]: eps never reaches the box
    x01 = x.double() / 255
    w, b = model.head.weight.detach().double(), model.head.bias.detach().double()
    clean = x01.flatten(1) @ w.T + b
    labels = clean.argmax(1)
    other = 1 - labels
    m0 = (clean.gather(1, labels.view(-1, 1)) - clean.gather(1, other.view(-1, 1))).squeeze(1)
    dual_norm = (w[0] - w[1]).norm(p=dual)  # ||w_y - w_j|| is the same for every image
    # eps puts the reduction in the widest gap between the middle half of the clean margins: some
    # images are broken, some not, and no worst-case margin is near 0 (a relative check means something)
    mid = m0.sort().values[n // 4: 3 * n // 4]
    gap = int((mid[1:] - mid[:-1]).argmax())
    eps = float((mid[gap] + mid[gap + 1]) / 2 / dual_norm)
    assert 0 < eps < 0.29
    analytic = m0 - eps * dual_norm
    logits = pgd(model, x, labels, torch.zeros(3), torch.ones(3), norm=norm, eps=eps, steps=steps,
                 step_size=None if step_size is None else step_size * eps, generator=_gen(5), batch_size=13)
    got = (logits.gather(1, labels.view(-1, 1)) - logits.gather(1, other.view(-1, 1))).squeeze(1).double()
    assert torch.allclose(got, analytic, rtol=1e-4, atol=0), ((got - analytic) / analytic).abs().max()
    assert (labels != logits.argmax(1)).sum() >= n // 4 and (labels == logits.argmax(1)).sum() >= n // 4


# ------------------------------------------------------------------------------------------------
# 2. accuracy is monotone over eps
# ------------------------------------------------------------------------------------------------


def test_sweep_accuracy_is_monotone_and_broken_images_carry_their_example():
    x = _images(48, seed=1)
    model = _calibrated(_cnn(1), x)
    labels, _ = predict(model, x, MEAN, STD, FP32, 48, channels_last=False)
    labels = labels.argmax(1)  # every image correct when clean: the attack has all 48 to break
    norms = {"linf": [4, 0.5, 2, 1], "l2": [0.05, 0.5, 0.2]}
    seen: list[tuple[int, int]] = []
    out = attack_sweep(model, x, labels, MEAN, STD, FP32, norms=norms, seed=7, steps=2, batch_size=32,
                       on_batch=lambda done, total: seen.append((done, total)))
    assert list(out) == [("linf", e) for e in (0.5, 1, 2, 4)] + [("l2", e) for e in (0.05, 0.2, 0.5)]
    assert seen[-1] == (7 * 48, 7 * 48) and all(a[0] <= b[0] for a, b in zip(seen, seen[1:]))
    for norm in norms:
        keys = [k for k in out if k[0] == norm]
        acc = [float((out[k].argmax(1) == labels).float().mean()) for k in keys]
        assert all(a >= b for a, b in zip(acc, acc[1:])), (norm, acc)
        assert acc[0] > acc[-1], (norm, acc)  # the attack does break images, more with more eps
        for small, large in zip(keys, keys[1:]):
            broken = out[small].argmax(1) != labels
            assert torch.equal(out[large][broken], out[small][broken])  # carried, not re-attacked


def test_sweep_results_do_not_depend_on_the_other_eps_listed():
    x, model = _images(24, seed=2, size=8), Rowwise(3 * 8 * 8, 10, seed=2)
    labels = predict(model, x, MEAN, STD, FP32, 24, channels_last=False)[0].argmax(1)
    alone = attack_sweep(model, x, labels, MEAN, STD, FP32, norms={"linf": [8.0]}, seed=3, steps=2, batch_size=24)
    both = attack_sweep(model, x, labels, MEAN, STD, FP32, norms={"l2": [0.1], "linf": [2, 8]}, seed=3, steps=2,
                        batch_size=24)
    ok_at_2 = both[("linf", 2)].argmax(1) == labels
    broken_at_8 = alone[("linf", 8.0)].argmax(1) != labels
    assert (ok_at_2 & broken_at_8).any() and (~ok_at_2).any()
    # images the eps=2 attack did not break were attacked at 8 from the same start as alone (fewer
    # of them in the batch: a model whose kernels do not mix rows gives the same bits)
    assert torch.equal(both[("linf", 8)][ok_at_2], alone[("linf", 8.0)][ok_at_2])
    assert attack_seed(3, "linf", 8) == attack_seed(3, "linf", 8.0) != attack_seed(3, "l2", 8)
    assert attack_seed(3, "linf", 8) != attack_seed(4, "linf", 8)


# ------------------------------------------------------------------------------------------------
# 4. bitwise reproducibility
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 8 / 255), ("l2", 0.5)])
def test_pgd_is_bitwise_reproducible(norm, eps):
    x = _images(32, seed=3)
    model = _calibrated(_cnn(3), x)
    labels = predict(model, x, MEAN, STD, FP32, 32, channels_last=False)[0].argmax(1)

    def run(seed: int) -> torch.Tensor:
        return pgd(model, x, labels, MEAN, STD, norm=norm, eps=eps, steps=2, generator=_gen(seed), batch_size=32)

    a = run(11)
    assert torch.equal(a, run(11))
    assert not torch.equal(a, run(12))


@pytest.mark.parametrize("norm,eps", [("linf", 2 / 255), ("l2", 0.1)])
def test_pgd_does_not_depend_on_the_batch_size(norm, eps):
    """Bitwise, for a model whose own kernels do not depend on it (:class:`Rowwise`): the random
    start is drawn for all images at once, every step is per image."""
    x, model = _images(64, seed=8, size=8), Rowwise(3 * 8 * 8, 10, seed=8)
    labels = predict(model, x, MEAN, STD, FP32, 64, channels_last=False)[0].argmax(1)

    def run(seed: int, bs: int) -> torch.Tensor:
        return pgd(model, x, labels, MEAN, STD, norm=norm, eps=eps, steps=3, generator=_gen(seed), batch_size=bs)

    a = run(11, 64)
    assert (a.argmax(1) != labels).any() and (a.argmax(1) == labels).any()
    assert torch.equal(a, run(11, 7))
    assert torch.equal(a, run(11, 1))
    assert not torch.equal(a, run(12, 64))


def test_random_start_is_uniform_in_the_ball_and_drawn_on_the_cpu():
    # d = 2: the radius is visibly spread (in high dimension nearly all the ball's volume is at its rim)
    disc = attacks.random_start((4000, 1, 1, 2), "l2", 0.5, _gen(0))
    assert disc.device.type == "cpu" and disc.dtype == torch.float32
    r = disc.flatten(1).norm(dim=1) / 0.5
    assert r.max() <= 1 + 1e-6
    assert abs(float((r ** 2).mean()) - 0.5) < 0.02  # uniform in the disc: (r/eps)^2 ~ U(0,1)
    angle = torch.atan2(disc[:, 0, 0, 1], disc[:, 0, 0, 0])
    assert torch.histc(angle, 4, -torch.pi, torch.pi).min() > 900  # every direction
    cube = attacks.random_start((10, 3, 4, 4), "linf", 0.1, _gen(0))
    assert cube.abs().max() <= 0.1 and cube.abs().max() > 0.09 and abs(float(cube.std()) - 0.1 / 3 ** 0.5) < 0.01
    assert torch.equal(cube, attacks.random_start((10, 3, 4, 4), "linf", 0.1, _gen(0)))
    assert not torch.equal(cube, attacks.random_start((10, 3, 4, 4), "linf", 0.1, _gen(1)))
    cuda_generator = SimpleNamespace(device=torch.device("cuda"))  # no GPU here: only its device is read
    with pytest.raises(ValueError, match="CPU torch.Generator"):
        attacks.random_start((10, 3, 4, 4), "linf", 0.1, cuda_generator)


# ------------------------------------------------------------------------------------------------
# 5. the perturbation stays in the ball and in the box
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm,eps", [("linf", 16 / 255), ("l2", 1.0)])
def test_adversarial_images_stay_in_the_ball_and_in_the_box(norm, eps):
    model, x = _cnn(4), _images(20, seed=5)  # full 0..255 range: the box clips
    labels = torch.arange(20) % 10
    images, logits = pgd_images(model, x, labels, MEAN, STD, norm=norm, eps=eps, steps=4, generator=_gen(1),
                                batch_size=8)
    x01 = x.float() / 255
    delta = (images - x01).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    assert (size <= eps * (1 + 1e-5)).all() and size.max() > 0.5 * eps
    assert images.min() >= 0 and images.max() <= 1
    assert torch.equal(logits, pgd(model, x, labels, MEAN, STD, norm=norm, eps=eps, steps=4, generator=_gen(1),
                                   batch_size=8))
    # the logits are the float32-head logits of the returned images, as predict would compute them
    again = Predictor(model, MEAN, STD, FP32, channels_last=False).logits(images)
    assert torch.equal(logits, again)


def test_a_step_has_the_step_size_in_its_norm_whatever_the_gradient_scale():
    g = torch.randn(4, 3, 4, 4, generator=_gen(0)) * torch.tensor([1.0, 1e3, 1e-30, 0.0]).view(4, 1, 1, 1)
    x = torch.full((4, 3, 4, 4), 0.5)
    l2 = (attacks.ascend(x, g, "l2", 0.01) - x).flatten(1).norm(dim=1)
    assert torch.allclose(l2[:3], torch.full((3,), 0.01), rtol=1e-5) and l2[3] == 0  # tiny: no underflow
    linf = (attacks.ascend(x, g, "linf", 0.01) - x).flatten(1).abs()
    assert torch.allclose(linf[:3], torch.full_like(linf[:3], 0.01), rtol=1e-5) and (linf[3] == 0).all()
    up = attacks.ascend(x, g, "l2", 0.01) - x
    assert ((up * g).flatten(1).sum(1)[:3] > 0).all()  # along the gradient, not against it


def test_each_image_keeps_its_most_adversarial_iterate():
    labels = torch.tensor([0, 0, 1])
    first = torch.tensor([[2.0, 1.0], [0.0, 1.0], [0.0, 3.0]])
    worst = attacks.WorstCase(torch.zeros(3, 1), first, labels, keep_images=True)
    worst.offer(torch.ones(3, 1), torch.tensor([[1.5, 1.0], [0.0, 5.0], [0.0, 2.0]]))
    worst.offer(torch.full((3, 1), 2.0), torch.tensor([[3.0, 0.0], [3.0, 0.0], [0.0, 0.5]]))
    # image 0: lowest margin (0.5, step 1); image 1: stays misclassified though step 2 is correct
    # with a lower |margin|, keeping the lowest margin (-5); image 2: lowest margin 0.5 (step 2)
    assert worst.logits.tolist() == [[1.5, 1.0], [0.0, 5.0], [0.0, 0.5]]
    assert worst.images.flatten().tolist() == [1.0, 1.0, 2.0]
    assert worst.wrong.tolist() == [False, True, False]


# ------------------------------------------------------------------------------------------------
# 6. the model is left as it was found (and in eval mode)
# ------------------------------------------------------------------------------------------------


def test_model_parameters_and_mode_are_untouched():
    model, x = _cnn(5), _images(8, seed=6)
    model.train()
    params = dict(model.named_parameters())
    params["block1.0.weight"].requires_grad_(False)
    sentinel = torch.full_like(params["head.weight"], 7.0)
    params["head.weight"].grad = sentinel
    flags = {k: p.requires_grad for k, p in params.items()}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pgd(model, x, torch.zeros(8, dtype=torch.long), MEAN, STD, norm="l2", eps=0.5, steps=2, generator=_gen(0))
    assert not model.training and not any(m.training for m in model.modules())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert params["head.weight"].grad is sentinel and torch.equal(sentinel, torch.full_like(sentinel, 7.0))
    assert all(p.grad is None for k, p in params.items() if k != "head.weight")
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # BN buffers too


def test_pgd_works_inside_inference_mode_and_the_grid_units_are_converted():
    x, model = _images(6, seed=9, size=8), Rowwise(3 * 8 * 8, 10, seed=9)
    y = torch.zeros(6, dtype=torch.long)
    outside = pgd(model, x, y, MEAN, STD, norm="linf", eps=4 / 255, steps=2, generator=_gen(0))
    with torch.inference_mode():
        inside = pgd(model, x, y, MEAN, STD, norm="linf", eps=4 / 255, steps=2, generator=_gen(0))
    assert torch.equal(inside, outside)
    assert attacks.pixel_eps("linf", 8) == 8 / 255 and attacks.pixel_eps("l2", 0.5) == 0.5


# ------------------------------------------------------------------------------------------------
# the CUDA path, checked on the CPU; positions; argument checks
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,options", [("simple_cnn", {"width": 4}), ("flexible_cnn", {"width": 4, "depth": 1}),
                                          ("resnet18", {})])
def test_attack_runs_only_ops_with_deterministic_cuda_kernels_and_no_per_step_syncs(name, options):
    torch.manual_seed(0)
    model = build_model(name, 10, **options).eval()
    x = _images(2, seed=7)
    labels = predict(model, x, MEAN, STD, FP32, 2, channels_last=False)[0].argmax(1)  # both get attacked
    with cg.OpRecorder() as rec:
        attack_sweep(model, x, labels, MEAN, STD, FP32, norms={"linf": [4], "l2": [0.5]}, seed=0,
                     steps=1, batch_size=2)
    assert rec.ops["aten::convolution_backward.default"] > 0  # the gradient steps were recorded
    rec.assert_deterministic()
    assert len(rec.syncs) <= 2, rec.report()  # one per (norm, eps) (which images are left), none per step


def test_attack_positions_are_a_fixed_sorted_sample():
    a = attack_positions(1000, 50, seed=9)
    assert a.dtype == np.int64 and len(a) == 50 and len(set(a.tolist())) == 50
    assert np.all(np.diff(a) > 0) and a.min() >= 0 and a.max() < 1000
    assert np.array_equal(a, attack_positions(1000, 50, seed=9))
    assert not np.array_equal(a, attack_positions(1000, 50, seed=10))
    assert np.array_equal(attack_positions(30, 50, seed=9), np.arange(30))
    assert np.array_equal(attack_positions(30, 30, seed=1), np.arange(30))
    with pytest.raises(ValueError, match="count"):
        attack_positions(30, -1, seed=1)


def test_bad_arguments_are_refused_with_the_reason():
    model, x = _cnn(), _images(2)
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown attack norm 'l1'"):
        pgd(model, x, y, MEAN, STD, norm="l1", eps=0.1, generator=_gen(0))
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, MEAN, STD, norm="linf", eps=8.0, generator=_gen(0))  # /255 units belong to the grid
    with pytest.raises(ValueError, match="needs a CPU torch.Generator"):
        pgd(model, x, y, MEAN, STD, norm="linf", eps=0.1, generator=None)
    with pytest.raises(ValueError, match="uint8"):
        pgd(model, x.float(), y, MEAN, STD, norm="linf", eps=0.1, generator=_gen(0))
    with pytest.raises(ValueError, match="twice"):
        attack_sweep(model, x, y, MEAN, STD, FP32, norms={"linf": [8, 8.0]}, seed=0)
