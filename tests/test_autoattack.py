"""AutoAttack (torchattacks' attacks, chained as the reference does): on a linear model it breaks
exactly the images the analytic worst case breaks; on a briefly trained CNN its robust accuracy is
at most PGD's at the same radius and at most the clean accuracy; it is bitwise reproducible, leaves
the model and the global RNG as they were; its grid keys, launch check, results.h5 rows and report
section work end to end.

The reference implementation (fra31/auto-attack) has no installable package here, so the
cross-check is against the project's own PGD (cnnstress/attacks.py) and the analytic optimum."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("torchattacks", reason="the autoattack extra: pip install -e '.[autoattack]'")

from cnnstress import attacks, autoattack  # noqa: E402
from cnnstress.engine import Precision, Predictor  # noqa: E402
from cnnstress.models import build_model  # noqa: E402
from cnnstress.probes import autoattack as probe  # noqa: E402

FP32 = Precision("cpu", torch.float32, False)
MEAN, STD = torch.tensor([0.5, 0.45, 0.4]), torch.tensor([0.25, 0.24, 0.26])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread (the shared 2-core machine; see tests/test_attacks.py), restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class Linear(nn.Module):
    """Logits W x + b of the flattened [0,1] image (the shape float32_head accepts)."""

    def __init__(self, d: int, classes: int, seed: int):
        super().__init__()
        self.head = nn.Linear(d, classes)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(classes, d, generator=g) * 0.2)
            self.head.bias.copy_(-0.5 * self.head.weight.sum(1))  # balanced around the mid-grey image

    def features(self, x):
        return x

    def pooled(self, fmap):
        return torch.flatten(fmap, 1)

    def forward(self, x):
        return self.head(self.pooled(self.features(x)))


def _images(n: int, seed: int, lo: int = 0, hi: int = 256, size: int = 8) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return attacks.margin(logits.double(), labels)


# ------------------------------------------------------------------------------------------------
# 1. a linear model: the analytic worst case
# ------------------------------------------------------------------------------------------------


def test_linear_model_autoattack_and_pgd_break_exactly_the_analytically_breakable_images():
    """For two classes and logits W x + b, the least margin over the L-inf ball (images away from the
    box's edges) is margin - eps * ||w_y - w_j||_1. Every attack of the standard version runs on the
    images left standing, so none may break an image whose worst margin is positive (the ball is
    respected), and APGD-CE must break every other one, at the analytic minimum; PGD likewise."""
    n, size = 40, 8
    model = Linear(3 * size * size, 2, seed=3).eval()
    pred = Predictor(model, torch.zeros(3), torch.ones(3), FP32, False)  # identity normalisation
    x = _images(n, seed=4, lo=77, hi=179, size=size)  # pixels in [0.30, 0.70]: eps never reaches the box
    w, b = model.head.weight.detach().double(), model.head.bias.detach().double()
    clean = (x.double() / 255).flatten(1) @ w.T + b
    labels = clean.argmax(1)
    m0 = _margin(clean, labels)
    dual = (w[0] - w[1]).abs().sum()
    mid = m0.sort().values[n // 4: 3 * n // 4]  # eps in the widest gap of the middle half: no margin near 0
    gap = int((mid[1:] - mid[:-1]).argmax())
    eps = float((mid[gap] + mid[gap + 1]) / 2 / dual)
    assert 0 < eps < 0.29
    analytic = m0 - eps * dual
    breakable = analytic < 0
    assert n // 4 <= int(breakable.sum()) <= 3 * n // 4

    logits, codes, skipped = autoattack.run(pred, x, labels, norm="Linf", eps=eps, version="standard", seed=0,
                                            batch_size=16, steps=20, queries=200)
    assert skipped == ["apgd-t"]  # two classes: no fourth logit for the targeted DLR loss
    broken = logits.argmax(1) != labels
    assert torch.equal(broken, breakable)
    assert torch.equal(codes, torch.where(breakable, autoattack.CODE_OF["apgd-ce"], autoattack.NOT_BROKEN).to(torch.int8))
    got = _margin(logits, labels)
    torch.testing.assert_close(got[broken], analytic[broken], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got[~broken], m0[~broken].to(got.dtype), rtol=1e-5, atol=1e-5)  # the clean logits

    pgd = attacks.pgd(model, x, labels, torch.zeros(3), torch.ones(3), norm="linf", eps=eps, steps=10,
                      generator=torch.Generator().manual_seed(5), batch_size=16)
    assert torch.equal(pgd.argmax(1) != labels, breakable)
    torch.testing.assert_close(_margin(pgd, labels)[broken], analytic[broken], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# 2. a briefly trained CNN: against PGD and the clean accuracy; reproducible; side effects
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained():
    """simple_cnn (width 4) trained for 60 steps to tell four colour-and-brightness classes of 8x8
    images apart: accurate, and not robust at a few grey levels."""
    g = torch.Generator().manual_seed(0)
    n = 160
    labels = torch.arange(n) % 4
    base = torch.tensor([[110, 110, 110], [150, 110, 110], [110, 150, 110], [110, 110, 150]], dtype=torch.float32)[labels]
    x = (base.view(n, 3, 1, 1) + 12 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    torch.manual_seed(0)
    model = build_model("simple_cnn", 4, width=4)
    pred = Predictor(model, MEAN, STD, FP32, False)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(60):
        idx = torch.randint(0, n, (32,), generator=g)
        loss = nn.functional.cross_entropy(model(pred.input(x[idx].float() / 255)), labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    ty = torch.arange(48) % 4
    test = (base[ty].view(48, 3, 1, 1) + 12 * torch.randn(48, 3, 8, 8, generator=g)).clamp(0, 255).to(torch.uint8)
    return pred, test, ty


def test_autoattack_is_at_most_pgd_and_clean_and_its_codes_agree_with_its_logits(trained):
    pred, x, y = trained
    clean, _ = pred.predict(x, 16)
    clean_acc = float((clean.argmax(1) == y).float().mean())
    assert clean_acc >= 0.8, clean_acc
    eps = 8 / 255
    logits, codes, skipped = autoattack.run(pred, x, y, norm="Linf", eps=eps, version="standard", seed=1,
                                            batch_size=16, steps=25, queries=300)
    assert skipped == []
    pgd = attacks.sweep(pred, x, y, norms={"linf": [8]}, seed=1, steps=10, batch_size=16)[("linf", 8)]
    aa_acc = float((logits.argmax(1) == y).float().mean())
    pgd_acc = float((pgd.argmax(1) == y).float().mean())
    assert aa_acc <= pgd_acc <= clean_acc
    assert aa_acc < clean_acc  # the radius matters for this model: the check above is not 0 <= 0
    # the codes: wrong without attack exactly where the clean prediction is wrong; not broken exactly
    # where the stored logits classify right; every broken image's logits misclassify it
    right = logits.argmax(1) == y
    assert torch.equal(codes == autoattack.CLEAN_WRONG, clean.argmax(1) != y)
    assert torch.equal(codes == autoattack.NOT_BROKEN, right)
    assert set(codes.tolist()) <= set(range(len(autoattack.CODES)))
    # L2 as well: never above clean
    l2, l2_codes, _ = autoattack.run(pred, x, y, norm="L2", eps=0.25, version="standard", seed=1, batch_size=16,
                                     steps=10, queries=100, only=("apgd-ce", "square"))
    assert float((l2.argmax(1) == y).float().mean()) <= clean_acc
    assert set(l2_codes.tolist()) <= {0, 1, 2, 5}


def test_autoattack_is_bitwise_reproducible_and_leaves_model_and_rng_alone(trained):
    pred, x, y = trained
    model = pred.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    torch.manual_seed(123)
    rng = torch.get_rng_state()
    kw = dict(norm="Linf", eps=2 / 255, version="standard", seed=7, batch_size=16, steps=10, queries=100)
    a = autoattack.run(pred, x, y, **kw)
    assert torch.equal(torch.get_rng_state(), rng), "the caller's global RNG was moved"
    b = autoattack.run(pred, x, y, **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = autoattack.run(pred, x, y, **{**kw, "seed": 8})
    assert c[0].shape == a[0].shape  # another seed runs (its numbers may or may not differ)
    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_attack_seeds_are_stable_and_distinct():
    seeds = {autoattack.attack_seed(0, n) for n in autoattack.CODE_OF}
    assert len(seeds) == len(autoattack.CODE_OF) and all(0 <= s < 2**63 for s in seeds)
    assert autoattack.attack_seed(0, "apgd-ce") == autoattack.attack_seed(0, "apgd-ce")
    assert autoattack.attack_seed(0, "apgd-ce") != autoattack.attack_seed(1, "apgd-ce")


def test_bad_arguments_are_refused_with_the_reason(trained):
    pred, x, y = trained
    with pytest.raises(ValueError, match="norm must be one of Linf, L2"):
        autoattack.run(pred, x, y, norm="linf", eps=0.03, version="standard", seed=0)
    with pytest.raises(ValueError, match="version must be one of standard, rand"):
        autoattack.run(pred, x, y, norm="Linf", eps=0.03, version="plus", seed=0)
    with pytest.raises(ValueError, match=r"eps must be in \(0, 1\]"):
        autoattack.run(pred, x, y, norm="Linf", eps=8, version="standard", seed=0)


# ------------------------------------------------------------------------------------------------
# 3. grid keys and the launch check (torch-free side)
# ------------------------------------------------------------------------------------------------


def test_a_missing_package_is_one_launch_line_naming_the_extra(monkeypatch):
    on = SimpleNamespace(stress=SimpleNamespace(autoattack={"norm": "Linf"}))
    off = SimpleNamespace(stress=SimpleNamespace(autoattack={}))
    monkeypatch.setattr(probe.importlib.util, "find_spec", lambda name: None)
    msg = probe.missing_package([off, on])
    assert msg and "\n" not in msg and "[stress].autoattack" in msg and "pip install -e '.[autoattack]'" in msg
    assert probe.missing_package([off]) is None


def test_launch_refuses_a_grid_with_autoattack_on_when_the_package_is_missing(tmp_path, monkeypatch):
    from conftest import REPO

    from cnnstress import launcher
    from cnnstress.grid import load_grid

    def load(extra):
        return load_grid(_grid(tmp_path, extra, lean=True), out_root=tmp_path / "out",
                         data_root=REPO / "scratch" / "test-data")

    on, off = load("autoattack = true\n"), load("")
    assert not launcher._launch_problem(on)  # installed here
    monkeypatch.setattr(probe.importlib.util, "find_spec", lambda name: None)
    assert not launcher._launch_problem(off)
    assert "pip install -e '.[autoattack]'" in launcher._launch_problem(on)


def _grid(tmp: Path, extra: str, **kw) -> Path:
    from grids import tiny_grid_text

    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "aa grid.toml"
    path.write_text(tiny_grid_text(name="aa", extra=extra, **kw))
    return path


def test_grid_keys_resolve_with_the_norms_default_radius_and_are_checked(tmp_path):
    from conftest import REPO

    from cnnstress.grid import GridError, load_grid

    def load(extra):
        return load_grid(_grid(tmp_path, extra), out_root=tmp_path / "out", data_root=REPO / "scratch" / "test-data")

    base = load("")
    assert all(r.stress.autoattack == {} for r in base.runs)
    on = load('autoattack = true\nautoattack_norm = "L2"\nautoattack_samples = 7\n')
    assert on.runs[0].stress.autoattack == {"norm": "L2", "eps": 0.5, "version": "standard", "samples": 7}
    assert on.runs[0].run_id != base.runs[0].run_id
    linf = load("autoattack = true\n")
    assert linf.runs[0].stress.autoattack["eps"] == pytest.approx(8 / 255)
    assert linf.runs[0].stress.autoattack["samples"] == 1000
    # off with other settings changed: the settings are not part of an off run's identity
    assert load('autoattack_version = "rand"\n').runs[0].run_id == base.runs[0].run_id
    with pytest.raises(GridError, match=r"autoattack_eps.*above 1"):
        load("autoattack = true\nautoattack_eps = 8\n")
    with pytest.raises(GridError, match="autoattack_norm"):
        load('autoattack = true\nautoattack_norm = "Linf2"\n')


# ------------------------------------------------------------------------------------------------
# 4. end to end: a tiny run, results.h5 against the schema, the report section
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_with_autoattack_stores_checked_arrays_and_the_report_shows_them(tmp_path):
    from rich.console import Console

    from conftest import REPO

    from cnnstress import gather, store
    from cnnstress.grid import load_grid
    from cnnstress.worker import run, run_dir_for

    extra = "autoattack = true\nautoattack_samples = 6\n"
    grid = load_grid(_grid(tmp_path, extra, epochs=1, lean=True), out_root=tmp_path / "out dir",
                     data_root=REPO / "scratch" / "test-data")
    for spec in grid.runs:
        assert run(spec, echo=False)["status"] == "done"
    spec = grid.runs[0]
    path = run_dir_for(spec) / "results.h5"
    store.validate_results(path)
    with store.open_results(path) as r:
        pos, logits, codes = (r.read(f"autoattack/{k}") for k in ("positions", "logits", "broken_by"))
        test_logits, labels = r.read("test/logits"), r.read("test/label")
    assert pos.dtype == np.int32 and codes.dtype == np.int8 and logits.dtype == np.float32
    assert np.array_equal(pos, np.sort(np.random.default_rng(spec.stress.corruption_seed).permutation(len(labels))[:6]))
    right = logits.argmax(1) == labels[pos]
    assert np.array_equal(right, codes == 0)
    assert right.mean() <= (test_logits[pos].argmax(1) == labels[pos]).mean()
    log = (run_dir_for(spec) / "log.txt").read_text()
    assert "AutoAttack (standard, Linf eps 0.031373) on 6 test images" in log

    index = gather.gather(Path(spec.paths.out_root) / spec.sweep, grid=grid,
                          console=Console(file=io.StringIO(), width=200), figures=True)
    page = index.read_text(encoding="utf-8")
    body = page.split('<section id="autoattack">', 1)[1].split("</section>", 1)[0]
    assert "Adversarial robustness (AutoAttack)" in body and "compare with published results" in body
    assert "8/255" in body
    # compared image by image with the baseline in "What the modification changed" (flip vs baseline)
    changes = page.split('<section id="changes">', 1)[1].split("</section>", 1)[0]
    assert "accuracy under AutoAttack (L∞ ε = 8/255)" in changes
    summary = json.loads((index.parent / "summary.json").read_text())
    row = next(r for r in summary["runs"] if r["run_id"] == spec.run_id)
    assert row["autoattack_accuracy"] == pytest.approx(float(right.mean()))


@pytest.mark.slow
def test_the_benchmark_quick_mode_runs():
    import subprocess
    import sys

    from conftest import REPO

    res = subprocess.run([sys.executable, "bench/autoattack.py", "--quick"], cwd=REPO, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stdout.strip().splitlines()[-1].startswith("ratio autoattack/pgd"), res.stdout[-500:]


# ------------------------------------------------------------------------------------------------
# 5. the report section on hand-made arrays
# ------------------------------------------------------------------------------------------------


class _Res:
    def __init__(self, arrays):
        self.arrays = arrays

    def read(self, key):
        return self.arrays[key]


def _section_run(codes, logits, labels, where="run 'a'/results.h5"):
    spec = SimpleNamespace(stress=SimpleNamespace(autoattack={"norm": "Linf", "eps": 8 / 255, "version": "standard",
                                                              "samples": len(codes)}))
    run = SimpleNamespace(where=where, labels=labels, logits=np.eye(3, dtype=np.float32)[labels], spec=spec)
    res = _Res({"autoattack/positions": np.arange(len(codes), dtype=np.int32), "autoattack/logits": logits,
                "autoattack/broken_by": np.asarray(codes, dtype=np.int8)})
    return res, run


def test_the_section_reads_codes_checks_them_and_gives_a_per_image_headline_metric():
    from cnnstress.report.sections.autoattack import SECTION

    labels = np.array([0, 1, 2, 0, 1, 2])
    codes = [0, 2, 3, 0, 5, 4]  # images 0 and 3 stand; the others broken by four different attacks
    adv = np.eye(3, dtype=np.float32)[labels]
    adv[[1, 2, 4, 5]] = np.eye(3, dtype=np.float32)[(labels[[1, 2, 4, 5]] + 1) % 3]
    parts = [SECTION.reduce(*_section_run(codes, adv, labels)) for _ in range(2)]
    assert parts[0]["right"].tolist() == [True, False, False, True, False, False]
    (metric,) = SECTION.metrics(parts[0])
    assert metric.key == "autoattack" and metric.headline and metric.higher_is_better
    assert np.array_equal(metric.value, parts[0]["right"].astype(float))
    agg = SECTION.aggregate(None, parts, None)
    assert agg["stats"]["mean"] == pytest.approx(2 / 6)
    assert agg["share"].tolist() == pytest.approx([2 / 6, 0, 1 / 6, 1 / 6, 1 / 6, 1 / 6, 0])
    assert SECTION.run_fields(None, parts[0]) == {"autoattack_accuracy": pytest.approx(2 / 6)}

    with pytest.raises(ValueError, match=r"run 'a'/results.h5: autoattack/broken_by holds 0..9"):
        SECTION.reduce(*_section_run([0, 2, 3, 0, 9, 4], adv, labels))
    with pytest.raises(ValueError, match="the two disagree"):
        SECTION.reduce(*_section_run([0, 0, 3, 0, 5, 4], adv, labels))


def test_the_rand_version_runs_apgd_ce_then_apgd_dlr_and_stays_at_most_clean(trained):
    pred, x, y = trained
    clean, _ = pred.predict(x, 16)
    logits, codes, skipped = autoattack.run(pred, x[:16], y[:16], norm="Linf", eps=8 / 255, version="rand", seed=2,
                                            batch_size=16, steps=5)
    assert skipped == [] and set(codes.tolist()) <= {0, 1, 2, 6}
    assert torch.equal(codes == autoattack.NOT_BROKEN, logits.argmax(1) == y[:16])
    assert int((codes == 0).sum()) <= int((clean[:16].argmax(1) == y[:16]).sum())


def test_targeted_attacks_target_at_most_nine_classes_as_the_reference_does():
    net = nn.Linear(3, 100)
    for classes, targets in ((100, 9), (10, 9), (4, 3)):
        for name in ("apgd-t", "fab-t"):
            atk = autoattack.build(name, net, norm="Linf", eps=8 / 255, classes=classes, seed=0)
            assert atk.n_target_classes == targets, (name, classes)
