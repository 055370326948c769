"""GPU acceptance check: what the CPU test suite cannot see, in one command.

    make gpu-check                                   # = .venv/bin/python bench/gpu_check.py
    .venv/bin/python bench/gpu_check.py [--out scratch/gpu-check/gpu_check.json] [--keep]
    .venv/bin/python bench/gpu_check.py --models resnet18 --dtypes bfloat16    # a subset, to rerun one

On a machine with a CUDA GPU (under 8 minutes on one H100/H200 class GPU, plus runs_per_hour's), named checks:

pipeline/<model>/<dtype>       for simple_cnn, flexible_cnn, resnet18 x bfloat16, float16, float32:
                               a short deterministic training (torch.use_deterministic_algorithms on,
                               every augmentation + label smoothing, SGD + one-cycle, GradScaler for
                               float16), evaluation, prediction with embeddings, Grad-CAM at every
                               layer models.gradcam_layers accepts, every corruption, and
                               deletion/insertion (Grad-CAM and random maps). Passes when nothing
                               raised (no determinism error) and every output is finite (maps in [0, 1]).
fresh_process_bitwise/<model>/<dtype>
                               the same pipeline in two fresh processes (started at once, one GPU):
                               sha256 of every weight, logit, embedding, map and curve must agree.
kill_resume                    the real worker through `python launch.py --cluster local`: one run per
                               dtype, SIGKILLed half-way through its 2nd checkpoint write
                               (CNNSTRESS_FAULT=kill:checkpoint.pt:2), relaunched, must end with every
                               results.h5 array bitwise equal to an uninterrupted launch's
                               (history/epoch_seconds excepted: it is a time).
host_syncs_per_step            training epochs on the bfloat16 path under
                               torch.cuda.set_sync_debug_mode("warn"): synchronizing CUDA calls per
                               training step (the difference between a long and a short epoch, so the
                               per-epoch ones, such as the final loss read-back, do not count), for
                               crop+flip and for every augmentation; must be 0. float16 (GradScaler
                               reads found_inf each step) and float32 are shown, not judged.
resnet18_throughput            ResNet-18 training images/s, bfloat16 autocast, channels_last,
                               deterministic (cnnstress's loop) against the DataLoader reference loop,
                               both from bench/train_input.py (imported), on 32x32x3 uint8 images.
                               Passes when ours is not slower (the target for resnet18); the
                               20 000 images/s H100 target is reported beside it.
runs_per_hour                  simple_cnn, flexible_cnn and resnet18: 8 runs of 4 000 shapes images
                               (one epoch, clean accuracy) trained K = 1, 2, 4, 8 at a time on the GPU
                               through the packed task ([slurm].runs_per_task), from bench/pack.py
                               (imported): runs per hour at each K, and over K = 1. Reported, not
                               judged; about 5 minutes.

It prints a rich table and writes every number to a JSON (default scratch/gpu-check/gpu_check.json).
Exit status: 0 when every check passed, 1 when one failed (each check runs on its own: one failure
does not hide the others), 2 for bad arguments. Without a GPU (and without --device) it prints one
line saying so, checks nothing and exits 0.

Hidden smoke mode, for the test suite (tests/test_gpu_check.py) to keep this script from rotting:
``--device cpu --quick`` runs the same checks on the CPU with tiny sizes (32 training images, one
epoch, simple_cnn width 4, flexible_cnn width 8 depth 1, a 3-epoch kill/resume of simple_cnn in
bfloat16): it proves the script runs end to end, never that a GPU is right. There the AMP dtypes are
forced on (``Precision(..., enabled=True)``, emulated) so that the bfloat16 and float16 code paths
run; ResNet-18's pipeline and bitwise checks are skipped (30 s to minutes a process on a CPU);
host_syncs_per_step counts the aten ops that synchronise on CUDA (``_local_scalar_dense``,
``nonzero``, ...) with a TorchDispatchMode and does not judge (the CPU's F.one_hot reads the class
range with .item(), CUDA's does not); resnet18_throughput runs one step of simple_cnn (width 4) in its
place and does not judge speed. (flexible_cnn is not run at width 4 on the CPU: a 1x1 stride-2 channels_last convolution from
4 channels corrupts memory in oneDNN's backward on torch 2.14.1, see docs/performance.md.)
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from _common import REPO, console, machine_text, median, spread, table

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODELS = ("simple_cnn", "flexible_cnn", "resnet18")
DTYPES = ("bfloat16", "float16", "float32")
NUM_CLASSES = 10
SEED = 7
DEFAULT_OUT = REPO / "scratch" / "gpu-check" / "gpu_check.json"
SYNC_WARNING = "synchronizing CUDA operation"
# aten ops that make the host wait for a CUDA device (the CPU stand-in for set_sync_debug_mode)
SYNC_OPS = ("_local_scalar_dense", "nonzero", "masked_select", "_unique2", "unique_dim", "unique_consecutive",
            "repeat_interleave", "bincount", "histc", "equal", "is_nonzero")
THROUGHPUT_TARGET = 20_000  # images/s, the GPU target for ResNet-18 on one H100
# --quick on the CPU: ResNet-18 has no width option; its pipeline takes 30 s a process in float32 and
# ~2.5 minutes in the emulated bfloat16/float16, so the smoke run leaves it to the GPU run (it still
# builds and trains it in resnet18_throughput).
QUICK_SKIPPED = {("resnet18", d) for d in DTYPES}


class Skip(Exception):
    """A check that does not apply here (reported as skipped, not failed)."""


@dataclass(frozen=True)
class Sizes:
    """How much work each check does (GPU defaults; --quick: tiny, for the CPU)."""

    n_train: int
    n_test: int
    batch_size: int
    eval_batch_size: int
    epochs: int
    severities: tuple[int, ...]
    faith_samples: int
    faith_steps: int
    faith_batch: int
    model_options: dict
    sync_steps: tuple[int, int]
    sync_batch: int
    sync_model: tuple[str, dict]
    tp_steps: int
    tp_repeats: int
    tp_warmup: int
    tp_batch: int
    tp_model: tuple[str, dict]
    resume_train: int
    resume_test: int
    resume_epochs: int
    resume_batch: int
    resume_model: tuple[str, dict, str]
    resume_dtypes: tuple[str, ...]


GPU_SIZES = Sizes(
    n_train=2048, n_test=512, batch_size=128, eval_batch_size=256, epochs=2, severities=(1, 3, 5),
    faith_samples=64, faith_steps=16, faith_batch=32,
    model_options={"simple_cnn": {}, "flexible_cnn": {}, "resnet18": {}},
    sync_steps=(3, 9), sync_batch=128, sync_model=("resnet18", {}),
    tp_steps=200, tp_repeats=3, tp_warmup=20, tp_batch=128, tp_model=("resnet18", {}),
    resume_train=1200, resume_test=200, resume_epochs=3, resume_batch=128,
    resume_model=("resnet18", {}, "layer3"), resume_dtypes=DTYPES,
)
QUICK_SIZES = Sizes(
    n_train=32, n_test=8, batch_size=16, eval_batch_size=8, epochs=1, severities=(3,),
    faith_samples=4, faith_steps=4, faith_batch=2,
    model_options={"simple_cnn": {"width": 4}, "flexible_cnn": {"width": 8, "depth": 1}, "resnet18": {}},
    sync_steps=(1, 2), sync_batch=8, sync_model=("simple_cnn", {"width": 4}),
    tp_steps=1, tp_repeats=1, tp_warmup=1, tp_batch=8, tp_model=("simple_cnn", {"width": 4}),
    resume_train=128, resume_test=100, resume_epochs=3, resume_batch=32,
    resume_model=("simple_cnn", {"width": 4}, "block3"), resume_dtypes=("bfloat16",),
)


# ------------------------------------------------------------------------------------------------
# shared pieces
# ------------------------------------------------------------------------------------------------


def ensure_cublas_workspace() -> str:
    """Deterministic cuBLAS needs CUBLAS_WORKSPACE_CONFIG before the first GEMM of the process (the
    children inherit it). A non-deterministic value is replaced: this script checks determinism."""
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (":4096:8", ":16:8"):
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    return os.environ["CUBLAS_WORKSPACE_CONFIG"]


def make_precision(device: torch.device, dtype: str):
    """The worker's precision for ``dtype`` on CUDA; on the CPU the AMP dtypes are forced on (the
    worker would fall back to float32 on a CPU without bf16 units) so that their code paths run."""
    from cnnstress.engine import Precision

    if dtype == "float32":
        return Precision.for_device(device, amp=False, amp_dtype="bfloat16")
    if device.type == "cuda":
        return Precision.for_device(device, amp=True, amp_dtype=dtype)
    return Precision(device.type, getattr(torch, dtype), True)


def shapes_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from cnnstress.data import generate_shapes

    x, y, _, _ = generate_shapes(n, seed=seed, shortcut=0.8)
    return x, y


def digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (+ dtype and shape): equal digests mean bitwise equal tensors."""
    a = t.detach().cpu().contiguous()
    raw = a.reshape(-1).view(torch.uint8).numpy().tobytes() if a.numel() else b""
    return hashlib.sha256(raw).hexdigest()[:32] + f":{str(a.dtype).replace('torch.', '')}{tuple(a.shape)}"


def call(fn: Callable, **kwargs):
    """Call an engine function with keywords, dropping the optional ones it does not take (its API
    gains keywords over time, e.g. deletion_insertion's batch_size)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return fn(**kwargs)
    return fn(**{k: v for k, v in kwargs.items() if k in params})


def where(e: BaseException) -> str:
    """``file:line in function`` of the innermost frames of ``e`` (the two deepest, outermost first)."""
    frames = traceback.extract_tb(e.__traceback__)[-2:]
    return " > ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.float()).all())


# ------------------------------------------------------------------------------------------------
# the pipeline (run in fresh child processes)
# ------------------------------------------------------------------------------------------------


def pipeline(model_name: str, dtype: str, sizes: Sizes, device: torch.device, train_np, test_np) -> tuple[dict, dict]:
    """Train, evaluate, predict, Grad-CAM at every accepted layer, corruptions, deletion/insertion.
    Returns (numbers, {array name: digest})."""
    from cnnstress import catalog
    from cnnstress.augment import AUGMENTS, BatchAugment
    from cnnstress.config import Component
    from cnnstress.corrupt import CORRUPTIONS, corrupt, corrupt_seed
    from cnnstress.data import channel_stats
    from cnnstress.engine import (DeviceData, build_optimizer, build_scheduler, deletion_insertion, evaluate,
                                  gradcam, predict, set_determinism, train_one_epoch, train_steps)
    from cnnstress.models import build_model, gradcam_layers, resolve_layer

    numbers: dict[str, Any] = {}
    digests: dict[str, str] = {}
    t0 = time.perf_counter()
    set_determinism(SEED, True)
    numbers["deterministic_algorithms"] = torch.are_deterministic_algorithms_enabled()
    precision = make_precision(device, dtype)
    m_, s_ = channel_stats(train_np[0])
    mean = torch.tensor(m_, device=device, dtype=torch.float32)
    std = torch.tensor(s_, device=device, dtype=torch.float32)
    train = DeviceData.from_numpy(*train_np, device)
    test = DeviceData.from_numpy(*test_np, device)
    model = build_model(model_name, NUM_CLASSES, **sizes.model_options[model_name]).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, Component("sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True,
                                                         "weight_decay": 5e-4}))
    scheduler = build_scheduler(optimizer, Component("onecycle", {"pct_start": 0.25, "div_factor": 25.0}),
                                sizes.epochs, train_steps(len(train), sizes.batch_size))
    scaler = precision.scaler()
    augment = BatchAugment(list(AUGMENTS), {}, mean=m_, std=s_, num_classes=NUM_CLASSES, label_smoothing=0.1)
    generator = torch.Generator(device=device)
    generator.manual_seed(SEED)

    fit = {}
    for _ in range(sizes.epochs):
        fit = train_one_epoch(model=model, data=train, augment=augment, optimizer=optimizer, scheduler=scheduler,
                              scaler=scaler, precision=precision, generator=generator, batch_size=sizes.batch_size)
    numbers["train_loss"] = round(fit["loss"], 5)
    numbers["train_acc"] = round(fit["acc"], 4)
    numbers["train_s"] = round(time.perf_counter() - t0, 2)
    for name, value in model.state_dict().items():
        digests[f"weights/{name}"] = digest(value)
    weights_finite = all(finite(v) for v in model.state_dict().values() if v.is_floating_point())

    t1 = time.perf_counter()
    ev = evaluate(model=model, data=test, mean=mean, std=std, precision=precision,
                  batch_size=sizes.eval_batch_size, channels_last=True)
    numbers["eval_loss"] = round(ev["loss"], 5)
    numbers["eval_acc"] = round(ev["acc"], 4)
    digests["eval/loss_acc"] = hashlib.sha256(repr((ev["loss"], ev["acc"])).encode()).hexdigest()[:32]
    logits, emb = predict(model=model, x_uint8=test.x, mean=mean, std=std, precision=precision,
                          batch_size=sizes.eval_batch_size, channels_last=True, with_embedding=True)
    numbers["logits_dtype"] = str(logits.dtype).replace("torch.", "")
    digests["test/logits"] = digest(logits)
    digests["test/embedding"] = digest(emb)
    preds = logits.argmax(1)
    outputs_finite = finite(logits) and finite(emb)

    layers = gradcam_layers(model)
    maps_ok = True
    default_cam = None
    for path in layers:
        cam_pred, cam_true = gradcam(model=model, layer=resolve_layer(model, path), x_uint8=test.x,
                                     targets=[preds, test.y], mean=mean, std=std,
                                     batch_size=sizes.eval_batch_size, channels_last=True)
        for label, cam in (("pred", cam_pred), ("true", cam_true)):
            digests[f"gradcam/{path}/{label}"] = digest(cam)
            maps_ok &= finite(cam) and bool(cam.min() >= 0) and bool(cam.max() <= 1)
        if path == catalog.GRADCAM_DEFAULT[model_name]:
            default_cam = cam_pred
    numbers["gradcam_layers"] = len(layers)
    numbers["predict_gradcam_s"] = round(time.perf_counter() - t1, 2)

    t2 = time.perf_counter()
    n_sets = 0
    for cname in CORRUPTIONS:
        for sev in sizes.severities:
            def transform(x01, b, cname=cname, sev=sev):
                g = torch.Generator(device=x01.device)
                g.manual_seed(corrupt_seed(SEED, cname, sev, b))
                return corrupt(x01, cname, sev, g)

            clog, _ = predict(model=model, x_uint8=test.x, mean=mean, std=std, precision=precision,
                              batch_size=sizes.eval_batch_size, channels_last=True, transform=transform)
            digests[f"stress/{cname}/{sev}"] = digest(clog)
            outputs_finite &= finite(clog)
            n_sets += 1
    numbers["corrupted_sets"] = n_sets
    numbers["corruptions_s"] = round(time.perf_counter() - t2, 2)

    t3 = time.perf_counter()
    m = min(sizes.faith_samples, len(test))
    g = torch.Generator(device=device)
    g.manual_seed(SEED)
    random_maps = torch.rand(default_cam[:m].shape, generator=g, device=device)
    aucs = {}
    for label, maps in (("gradcam", default_cam[:m]), ("random", random_maps)):
        dele, ins = call(deletion_insertion, model=model, x_uint8=test.x[:m], saliency=maps, classes=preds[:m],
                         mean=mean, std=std, precision=precision, steps=sizes.faith_steps, channels_last=True,
                         batch_size=sizes.faith_batch)
        digests[f"faithfulness/deletion_{label}"] = digest(dele)
        digests[f"faithfulness/insertion_{label}"] = digest(ins)
        outputs_finite &= finite(dele) and finite(ins)
        aucs[f"deletion_auc_{label}"] = round(float(dele.float().mean()), 4)
        aucs[f"insertion_auc_{label}"] = round(float(ins.float().mean()), 4)
    numbers.update(aucs)
    numbers["faithfulness_s"] = round(time.perf_counter() - t3, 2)
    numbers["weights_finite"] = weights_finite
    numbers["outputs_finite"] = outputs_finite
    numbers["maps_in_0_1"] = maps_ok
    numbers["arrays_hashed"] = len(digests)
    if device.type == "cuda":
        numbers["peak_mem_mib"] = round(torch.cuda.max_memory_allocated() / 2**20)
        torch.cuda.reset_peak_memory_stats()
    numbers["seconds"] = round(time.perf_counter() - t0, 2)
    return numbers, digests


def child_main(args: argparse.Namespace) -> int:
    """One fresh process: every (model, dtype) pipeline, each on its own; results to a JSON file."""
    device = torch.device(args.device)
    if args.quick:
        torch.set_num_threads(1)
    sizes = QUICK_SIZES if args.quick else GPU_SIZES
    train_np = shapes_data(sizes.n_train, seed=1)
    test_np = shapes_data(sizes.n_test, seed=2)
    results: dict[str, Any] = {}
    for model_name in args.models:
        for dtype in args.dtypes:
            key = f"{model_name}/{dtype}"
            if args.quick and (model_name, dtype) in QUICK_SKIPPED:
                continue
            try:
                numbers, digests = pipeline(model_name, dtype, sizes, device, train_np, test_np)
                results[key] = {"ok": True, "numbers": numbers, "digests": digests}
            except Exception as e:  # noqa: BLE001 - reported per configuration
                results[key] = {"ok": False, "error": f"{type(e).__name__}: {e}"[:1500], "where": where(e),
                                "traceback": traceback.format_exc()[-3000:]}
            if device.type == "cuda":
                torch.cuda.empty_cache()
    Path(args.child).write_text(json.dumps(results, indent=1))
    return 0


# ------------------------------------------------------------------------------------------------
# the checks
# ------------------------------------------------------------------------------------------------


class Context:
    """What the checks share: arguments, sizes, device, a temp dir, and the children's results."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.sizes = QUICK_SIZES if args.quick else GPU_SIZES
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu check "))  # a space in the name, on purpose
        self._children: list[dict] | None = None
        self._children_error: str | None = None
        self.children_seconds = 0.0

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "CNNSTRESS_FAULT"}  # faults: only where asked for
        if not self.cuda:
            env["CUDA_VISIBLE_DEVICES"] = ""
            env["OMP_NUM_THREADS"] = "1"
        return env

    def children(self) -> list[dict]:
        """Two fresh processes running every pipeline, started together (run once, then cached)."""
        if self._children is None and self._children_error is None:
            t0 = time.perf_counter()
            procs = []
            for i in range(2):
                out = self.tmp / f"child {i}.json"
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(out), "--device", self.args.device,
                       "--models", ",".join(self.args.models), "--dtypes", ",".join(self.args.dtypes)]
                if self.args.quick:
                    cmd.append("--quick")
                log = open(self.tmp / f"child {i}.log", "w")
                proc = subprocess.Popen(cmd, cwd=REPO, env=self.child_env(), stdout=log, stderr=subprocess.STDOUT)
                procs.append((proc, out, log))
            results, errors = [], []
            for proc, out, log in procs:
                try:
                    rc = proc.wait(timeout=self.args.child_timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    rc = proc.wait()
                log.close()
                if rc != 0 or not out.exists():
                    tail = (self.tmp / out.name.replace(".json", ".log")).read_text()[-1500:]
                    errors.append(f"child process exited {rc}: {tail}")
                else:
                    results.append(json.loads(out.read_text()))
            self.children_seconds = time.perf_counter() - t0
            if errors:
                self._children_error = " | ".join(errors)
            else:
                self._children = results
        if self._children_error:
            raise RuntimeError(self._children_error)
        return self._children


def skip_in_quick(ctx: Context, model_name: str, dtype: str) -> None:
    if ctx.args.quick and (model_name, dtype) in QUICK_SKIPPED:
        raise Skip(f"--quick: {model_name} {dtype} takes 30 s to minutes a process on the CPU; GPU run only")


def child_results(ctx: Context, model_name: str, dtype: str) -> tuple[dict, dict]:
    """The two fresh processes' results for one model and dtype (both checks read them)."""
    skip_in_quick(ctx, model_name, dtype)
    a, b = ctx.children()
    key = f"{model_name}/{dtype}"
    return a[key], b[key]


def check_pipeline(ctx: Context, model_name: str, dtype: str) -> tuple[bool, dict, str]:
    ra, rb = child_results(ctx, model_name, dtype)
    if not ra["ok"] or not rb["ok"]:
        bad = ra if not ra["ok"] else rb
        return False, {}, bad["error"] + " at " + bad["where"]
    numbers = dict(ra["numbers"])
    problems = [k for k in ("weights_finite", "outputs_finite", "maps_in_0_1", "deterministic_algorithms")
                if not numbers.get(k)]
    note = (f"{numbers['gradcam_layers']} Grad-CAM layers, {numbers['corrupted_sets']} corrupted sets, "
            f"eval acc {numbers['eval_acc']:.3f}")
    if problems:
        return False, numbers, "not true: " + ", ".join(problems)
    return True, numbers, note


def check_bitwise(ctx: Context, model_name: str, dtype: str) -> tuple[bool, dict, str]:
    ra, rb = child_results(ctx, model_name, dtype)
    if not ra["ok"] or not rb["ok"]:
        return False, {}, f"the pipeline failed in a child process (see pipeline/{model_name}/{dtype})"
    da, db = ra["digests"], rb["digests"]
    differ = sorted(k for k in set(da) | set(db) if da.get(k) != db.get(k))
    groups = Counter(k.split("/")[0] for k in da)
    numbers = {"arrays": len(da), **{f"arrays_{g}": n for g, n in sorted(groups.items())}, "differ": len(differ)}
    if differ:
        return False, numbers, f"{len(differ)} of {len(da)} arrays differ, first: {', '.join(differ[:6])}"
    return True, numbers, f"{len(da)} arrays bitwise equal (sha256) across two fresh processes"


def resume_grid_text(ctx: Context, with_every_min: bool) -> str:
    s = ctx.sizes
    model, options, layer = s.resume_model
    opts = ", ".join(f"{k} = {v}" for k, v in options.items())
    variants = {"bfloat16": 'amp_dtype = "bfloat16"', "float16": 'amp_dtype = "float16"', "float32": "amp = false"}
    return "\n".join([
        'name = "gpu-check-resume"',
        "[base]",
        'dataset = "shapes"',
        f"dataset_options = {{ n_train = {s.resume_train}, n_test = {s.resume_test} }}",
        f'model = "{model}"',
        f"model_options = {{ {opts} }}",
        f"epochs = {s.resume_epochs}",
        f"batch_size = {s.resume_batch}",
        f"eval_batch_size = {max(s.resume_test, 100)}",
        'optimizer = { name = "sgd", lr = 0.05, momentum = 0.9, nesterov = true, weight_decay = 5e-4 }',
        'schedule = { name = "onecycle" }',
        'augment = ["crop", "flip", "rotation", "color_jitter", "cutout", "random_erasing", "cutmix", "mixup"]',
        "label_smoothing = 0.1",
        "amp = true",
        "deterministic = true",
        "channels_last = true",
        *(["checkpoint_every_min = 0"] if with_every_min else []),
        *[f"[variants.{d}]\n{variants[d]}" for d in s.resume_dtypes],
        "[grid]",
        f"seed = [{SEED}]",
        "[stress]",
        'corruptions = ["gaussian_noise", "gaussian_blur", "fog"]',
        "severities = [1, 5]",
        "faithfulness_samples = 16",
        "train_embedding_samples = 32",
        "[report]",
        f'gradcam_layer = "{layer}"',
        "",
    ])


def _launch(ctx: Context, grid: Path, out: Path, data: Path, fault: str | None = None,
            dry_run: bool = False) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch.py", "--grid", str(grid), "--cluster", "local", "--out", str(out),
           "--data-root", str(data), "--no-gather"]
    if dry_run:
        cmd.append("--dry-run")
    env = ctx.child_env()
    if fault:
        env["CNNSTRESS_FAULT"] = fault
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=ctx.args.child_timeout)


def _run_dirs(out: Path) -> dict[str, Path]:
    """variant -> run folder of the one sweep under ``out``."""
    found = {}
    for spec in sorted(out.glob("*/runs/*/spec.json")):
        found[json.loads(spec.read_text())["variant"]] = spec.parent
    return found


def _h5_arrays(run_dir: Path) -> dict[str, np.ndarray]:
    from cnnstress import store

    with store.open_results(run_dir / "results.h5") as r:
        return {k: r.read(k) for k in r.keys() if k != "history/epoch_seconds"}


def check_kill_resume(ctx: Context) -> tuple[bool, dict, str]:
    from cnnstress import store

    root = ctx.tmp / "kill resume"
    root.mkdir()
    grid, data = root / "resume grid.toml", root / "data dir"
    notes = []
    grid.write_text(resume_grid_text(ctx, with_every_min=True))
    probe = _launch(ctx, grid, root / "probe", data, dry_run=True)
    if probe.returncode != 0 and "checkpoint_every_min" in probe.stdout + probe.stderr:
        grid.write_text(resume_grid_text(ctx, with_every_min=False))
        notes.append("checkpoint_every_min rejected by the grid, left out")
        probe = _launch(ctx, grid, root / "probe", data, dry_run=True)
    if probe.returncode != 0:
        return False, {}, f"dry run of the grid failed: {(probe.stderr or probe.stdout).strip()[-600:]}"
    numbers: dict[str, Any] = {"runs": len(ctx.sizes.resume_dtypes)}
    t0 = time.perf_counter()
    # the uninterrupted and the killed launch side by side (own data roots: the shapes cache is
    # written by whichever launch comes first)
    with ThreadPoolExecutor(2) as pool:
        ref_f = pool.submit(_launch, ctx, grid, root / "uninterrupted", root / "data ref")
        killed_f = pool.submit(_launch, ctx, grid, root / "killed", data, fault="kill:checkpoint.pt:2")
        ref, killed = ref_f.result(), killed_f.result()
    numbers["both_launches_s"] = round(time.perf_counter() - t0, 1)
    if ref.returncode != 0:
        return False, numbers, f"uninterrupted launch exited {ref.returncode}: {ref.stderr.strip()[-800:]}"
    numbers["killed_launch_rc"] = killed.returncode
    killed_dirs = _run_dirs(root / "killed")
    states = {v: store.run_state(d) for v, d in killed_dirs.items()}
    numbers["killed_states"] = {v: s.status for v, s in states.items()}
    not_killed = [v for v, s in states.items() if s.status == "done"]
    if killed.returncode == 0 or not_killed:
        return False, numbers, (f"the kill never happened for {not_killed or 'every run'} (checkpoint.pt written "
                                f"fewer than 2 times?); {'; '.join(notes)}")
    t0 = time.perf_counter()
    resumed = _launch(ctx, grid, root / "killed", data)
    numbers["relaunch_s"] = round(time.perf_counter() - t0, 1)
    numbers["relaunch_rc"] = resumed.returncode
    if resumed.returncode != 0:
        return False, numbers, f"relaunch exited {resumed.returncode}: {resumed.stderr.strip()[-800:]}"
    ref_dirs = _run_dirs(root / "uninterrupted")
    problems, compared = [], 0
    for variant, rd in killed_dirs.items():
        if "resumed from checkpoint after epoch 1" not in (rd / "log.txt").read_text():
            problems.append(f"{variant}: did not resume from epoch 1's checkpoint")
        got, want = _h5_arrays(rd), _h5_arrays(ref_dirs[variant])
        if sorted(got) != sorted(want):
            problems.append(f"{variant}: different arrays {sorted(set(got) ^ set(want))[:4]}")
        for key in sorted(set(got) & set(want)):
            compared += 1
            if got[key].dtype != want[key].dtype or got[key].shape != want[key].shape or \
                    got[key].tobytes() != want[key].tobytes():
                problems.append(f"{variant}: {key} differs")
    numbers["arrays_compared"] = compared
    if problems:
        return False, numbers, "; ".join(notes + problems[:6])
    done = (f"{len(killed_dirs)} runs ({', '.join(killed_dirs)}) SIGKILLed at their 2nd checkpoint write, "
            f"resumed, {compared} arrays bitwise equal")
    return True, numbers, "; ".join(notes + [done])


class SyncCounter:
    """Counts host syncs: on CUDA, warnings of torch.cuda.set_sync_debug_mode("warn"), by Python call
    site; on the CPU, aten ops that synchronise on CUDA (a stand-in, seen by a TorchDispatchMode)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.sites: Counter[str] = Counter()

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def __enter__(self) -> SyncCounter:
        if self.cuda:
            torch.cuda.synchronize()
            self._warn = warnings.catch_warnings(record=True)
            self._records = self._warn.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        else:
            from torch.utils._python_dispatch import TorchDispatchMode

            sites = self.sites

            class Mode(TorchDispatchMode):
                def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                    name = func.overloadpacket.__name__
                    if name in SYNC_OPS:
                        sites[f"aten.{name}"] += 1
                    return func(*args, **(kwargs or {}))

            self._mode = Mode()
            self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.set_sync_debug_mode(0)
            self._warn.__exit__(*exc)
            for w in self._records:
                if SYNC_WARNING in str(w.message):
                    self.sites[f"{Path(w.filename).name}:{w.lineno}"] += 1
        else:
            self._mode.__exit__(*exc)


def check_host_syncs(ctx: Context) -> tuple[bool, dict, str]:
    from cnnstress.augment import AUGMENTS, BatchAugment
    from cnnstress.data import channel_stats
    from cnnstress.engine import DeviceData, set_determinism, train_one_epoch
    from cnnstress.models import build_model

    s = ctx.sizes
    short, long_ = s.sync_steps
    x, y = shapes_data(long_ * s.sync_batch, seed=3)
    m_, s_ = channel_stats(x)
    data = {n: DeviceData.from_numpy(x[:n * s.sync_batch], y[:n * s.sync_batch], ctx.device) for n in (short, long_)}
    numbers: dict[str, Any] = {"method": "set_sync_debug_mode" if ctx.cuda else "cpu stand-in: aten sync ops",
                               "steps": f"{short} vs {long_}"}
    bad, sites_all = [], Counter()
    for dtype in ("bfloat16", "float16", "float32"):
        for aug_label, names in (("cropflip", ["crop", "flip"]), ("all", list(AUGMENTS))):
            if dtype != "bfloat16" and aug_label != "all":
                continue
            set_determinism(SEED, True)
            name, options = s.sync_model
            model = build_model(name, NUM_CLASSES, **options).to(ctx.device).to(memory_format=torch.channels_last)
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            precision = make_precision(ctx.device, dtype)
            scaler = precision.scaler()
            augment = BatchAugment(names, {}, mean=m_, std=s_, num_classes=NUM_CLASSES, label_smoothing=0.1)
            gen = torch.Generator(device=ctx.device)
            gen.manual_seed(SEED)

            def epoch(n: int) -> SyncCounter:
                with SyncCounter(ctx.device) as counter:
                    train_one_epoch(model=model, data=data[n], augment=augment, optimizer=optimizer,
                                    scheduler=scheduler, scaler=scaler, precision=precision, generator=gen,
                                    batch_size=s.sync_batch)
                return counter

            epoch(short)  # warm-up: lazy initialisation (cuDNN handles, optimizer state) is not per step
            c_short, c_long = epoch(short), epoch(long_)
            per_step = (c_long.count - c_short.count) / (long_ - short)
            per_epoch = c_short.count - per_step * short
            label = f"{dtype}_{aug_label}"
            numbers[f"per_step_{label}"] = round(per_step, 3)
            numbers[f"per_epoch_fixed_{label}"] = round(per_epoch, 3)
            per_step_sites = {k: (c_long.sites[k] - c_short.sites[k]) / (long_ - short)
                              for k in c_long.sites if c_long.sites[k] != c_short.sites[k]}
            if dtype == "bfloat16" and per_step != 0:
                bad.append(f"{label}: {per_step:g} per step at " +
                           ", ".join(f"{k} ({v:g})" for k, v in sorted(per_step_sites.items())[:5]))
            sites_all.update({f"{label} {k}": v for k, v in c_long.sites.items()})
    numbers["sites_long_epoch"] = dict(sites_all.most_common(12))
    if not ctx.cuda:
        # F.one_hot checks the class range with two .item() calls on the CPU only (ATen's one_hot
        # leaves that to a device assert on CUDA): the stand-in cannot judge, it only runs the code.
        return True, numbers, ("CPU stand-in, not judged: " + ("; ".join(bad) if bad else "no sync ops per step"))
    if bad:
        return False, numbers, "host syncs per training step on the bfloat16 path: " + "; ".join(bad)
    return True, numbers, (f"bfloat16: 0 per step (crop+flip and all augmentations); per epoch "
                           f"{numbers['per_epoch_fixed_bfloat16_all']:g}; float16 {numbers['per_step_float16_all']:g}"
                           f"/step, float32 {numbers['per_step_float32_all']:g}/step (not judged)")


def check_throughput(ctx: Context) -> tuple[bool, dict, str]:
    import train_input as ti
    from cnnstress.data import channel_stats

    s = ctx.sizes
    plan = ti.Plan(*s.tp_model, s.tp_steps, s.tp_repeats, s.tp_warmup)
    x, y = shapes_data(max(s.tp_steps, s.tp_warmup) * s.tp_batch, seed=4)
    mean, std = channel_stats(x)
    precision = make_precision(ctx.device, "bfloat16") if ctx.cuda else \
        ti.Precision.for_device(ctx.device, amp=True, amp_dtype="bfloat16")  # the CPU: as train_input decides
    sync = torch.cuda.synchronize if ctx.cuda else (lambda: None)
    r = ti.bench_training(plan, x, y, mean, std, ctx.device, precision, s.tp_batch, ctx.args.workers, sync)
    ours, usual, alone = median(r["ours"]), median(r["usual"]), median(r["alone"])
    numbers = {
        "model": s.tp_model[0], "batch": s.tp_batch, "steps_x_repeats": f"{s.tp_steps} x {s.tp_repeats}",
        "dataloader_workers": ctx.args.workers,
        "precision": str(precision.dtype).replace("torch.", "") if precision.enabled else "float32",
        "ours_images_per_s": round(ours, 1), "ours_spread": spread(r["ours"]),
        "usual_images_per_s": round(usual, 1), "usual_spread": spread(r["usual"]),
        "model_alone_images_per_s": round(alone, 1), "ratio": round(ours / usual, 3),
        "ceiling_ratio": round(alone / usual, 3), "usual_startup_s": round(median(r["startup"]), 3),
        "target_images_per_s": THROUGHPUT_TARGET, "meets_target": ours >= THROUGHPUT_TARGET,
    }
    note = (f"ours {ours:,.0f} vs DataLoader {usual:,.0f} images/s ({ours / usual:.2f}x); "
            f"{'meets' if ours >= THROUGHPUT_TARGET else 'below'} the {THROUGHPUT_TARGET:,} images/s H100 target")
    if not ctx.cuda:
        return True, numbers, f"CPU smoke run with {s.tp_model[0]} standing in, speed not judged: " + note
    return ours >= usual, numbers, note


#: runs_per_hour on a GPU: each model's runs trained K at a time on the one GPU (bench/pack.py)
PACK_PLAN = dict(models=("simple_cnn", "flexible_cnn", "resnet18"), ks=(1, 2, 4, 8), runs=8, n_train=4000, repeats=1)


def check_runs_per_hour(ctx: Context) -> tuple[bool, dict, str]:
    """Runs per hour at K = 1, 2, 4, 8 runs on the GPU at once, through the packed task itself.
    Reported, not judged (what packing gains depends on the model and the GPU)."""
    if ctx.args.quick:
        raise Skip("--quick: bench/pack.py --quick measures packing on the CPU in the test suite; GPU run only")
    import pack as bench_pack

    plan = bench_pack.Plan(**PACK_PLAN)
    rows = bench_pack.rows(plan, bench_pack.measure(plan))
    numbers = {f"{r['model']}/k{r['k']}": {"runs_per_hour": r["runs_per_hour"], "seconds": r["seconds"],
                                           "vs_k1": r["vs_first_k"]} for r in rows}
    best = {m: max((r for r in rows if r["model"] == m), key=lambda r: r["runs_per_hour"]) for m in plan.models}
    note = "; ".join(f"{m}: best K={b['k']} at {b['runs_per_hour']:.0f} runs/h ({b['vs_first_k']:.2f}x K=1)"
                     for m, b in best.items())
    return True, numbers, note


# ------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------


def checks(ctx: Context) -> list[tuple[str, Callable[[], tuple[bool, dict, str]]]]:
    out = []
    for model_name in ctx.args.models:
        for dtype in ctx.args.dtypes:
            out.append((f"pipeline/{model_name}/{dtype}", lambda m=model_name, d=dtype: check_pipeline(ctx, m, d)))
    for model_name in ctx.args.models:
        for dtype in ctx.args.dtypes:
            out.append((f"fresh_process_bitwise/{model_name}/{dtype}",
                        lambda m=model_name, d=dtype: check_bitwise(ctx, m, d)))
    out.append(("kill_resume", lambda: check_kill_resume(ctx)))
    out.append(("host_syncs_per_step", lambda: check_host_syncs(ctx)))
    out.append(("resnet18_throughput", lambda: check_throughput(ctx)))
    out.append(("runs_per_hour", lambda: check_runs_per_hour(ctx)))
    return out


def environment(ctx: Context) -> dict[str, Any]:
    env: dict[str, Any] = {
        "device": str(ctx.device), "quick": ctx.args.quick, "machine": machine_text(ctx.args.device),
        "torch": torch.__version__, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "python": sys.version.split()[0], "CUBLAS_WORKSPACE_CONFIG": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        from cnnstress.engine import precision_settings  # present in every version that has bf16 precision settings

        env["precision_settings"] = precision_settings()
    except ImportError:
        pass
    if ctx.cuda:
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return env


def short_numbers(numbers: dict) -> str:
    keys = [k for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return ", ".join(f"{k} {numbers[k]:g}" for k in keys[:5])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"the JSON (default {DEFAULT_OUT.relative_to(REPO)})")
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS))
    ap.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of " + ",".join(DTYPES))
    ap.add_argument("--workers", type=int, default=None,
                    help="DataLoader workers of the reference loop (default 2, as bench/train_input.py)")
    ap.add_argument("--keep", action="store_true", help="keep the temp folder (child logs, launched sweeps)")
    ap.add_argument("--child-timeout", type=int, default=900, help=argparse.SUPPRESS)
    # hidden: the CPU smoke mode of the test suite, and the child processes
    ap.add_argument("--device", choices=("cuda", "cpu"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.workers is None:
        args.workers = 0 if args.quick else 2  # --quick: no worker processes to start for one step
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for given, valid, what in ((args.models, MODELS, "model"), (args.dtypes, DTYPES, "dtype")):
        bad = [g for g in given if g not in valid]
        if bad or not given:
            ap.error(f"unknown {what}(s) {bad}; valid: {', '.join(valid)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device is None:
        if not torch.cuda.is_available():
            # a GPU machine whose torch cannot use its GPU must fail here, not pass as a CPU machine:
            # the same census --cluster local takes (driver files, nvidia-smi, CUDA_VISIBLE_DEVICES)
            from cnnstress.cluster.local import local_gpu_census

            census = local_gpu_census()
            if census.warning:
                print(f"gpu-check: error: {census.warning.removeprefix('WARNING: ')}; nothing checked", file=sys.stderr)
                return 1
            print("gpu-check: no CUDA GPU here (torch.cuda.is_available() is False, and no NVIDIA driver, device or "
                  "CUDA_VISIBLE_DEVICES entry); nothing checked")
            return 0
        args.device = "cuda"
    if args.device == "cuda":
        if not torch.cuda.is_available():
            print("error: --device cuda: no CUDA GPU here", file=sys.stderr)
            return 2
        ensure_cublas_workspace()  # before this process or its children touch CUDA
    if args.child:
        return child_main(args)

    t_start = time.perf_counter()
    ctx = Context(args)
    quick = " (--quick: a CPU smoke run, not an acceptance)" if args.quick else ""
    console.print(f"[bold]gpu-check[/bold] on {ctx.device}{quick}: "
                  f"{len(args.models)} models x {len(args.dtypes)} dtypes; temp folder {ctx.tmp}")
    console.print(machine_text(args.device))
    results = []
    try:
        for name, fn in checks(ctx):
            t0 = time.perf_counter()
            try:
                ok, numbers, note = fn()
                status = "pass" if ok else "fail"
            except Skip as e:
                ok, numbers, note, status = True, {}, str(e), "skip"
            except Exception as e:  # noqa: BLE001 - one failing check must not hide the others
                ok, numbers, status = False, {}, "fail"
                note = f"{type(e).__name__}: {e}"[:1200] + " at " + where(e)
            seconds = time.perf_counter() - t0  # the first pipeline check includes the child processes
            results.append({"name": name, "status": status, "ok": ok, "seconds": round(seconds, 2),
                            "numbers": numbers, "note": note})
            colour = {"pass": "green", "fail": "red", "skip": "yellow"}[status]
            console.print(f"  [{colour}]{status}[/{colour}] {name} ({seconds:.1f}s)")
    finally:
        if args.keep:
            console.print(f"kept {ctx.tmp}")
        else:
            shutil.rmtree(ctx.tmp, ignore_errors=True)

    total = time.perf_counter() - t_start
    passed = all(r["ok"] for r in results)
    report = {"passed": passed, "seconds": round(total, 1), "environment": environment(ctx),
              "children_seconds": round(ctx.children_seconds, 1), "checks": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    t = table(f"gpu-check on {ctx.device}: {sum(r['ok'] for r in results)}/{len(results)} passed in {total:.0f}s",
              ["check", "status", "seconds", "numbers", "note"])
    for r in results:
        colour = {"pass": "green", "fail": "red", "skip": "yellow"}[r["status"]]
        t.add_row(r["name"], f"[{colour}]{r['status']}[/{colour}]", f"{r['seconds']:.1f}",
                  short_numbers(r["numbers"]), r["note"][:300])
    console.print(t)
    console.print(f"wrote {args.out}")
    failed = [r["name"] for r in results if not r["ok"]]
    print(f"gpu-check {'passed' if passed else 'FAILED'}: {len(results) - len(failed)}/{len(results)} checks"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; {total:.0f}s")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
