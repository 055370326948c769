"""A CPU guard for the CUDA path: which aten ops a code path runs, and which of them would fail or
sync on a GPU.

``OpRecorder`` is a ``TorchDispatchMode``: it sees every aten op below autograd and autocast (the
kernels that really run, backward ones included), on the CPU, with no GPU. It flags

* an op that PyTorch has no deterministic CUDA kernel for (``ENTRIES``): under
  ``torch.use_deterministic_algorithms(True)`` (what ``engine.set_determinism`` sets) such an op
  raises a RuntimeError on CUDA, so the run would fail on its first batch on a GPU;
* host syncs (``SYNC_OPS``): ``aten::_local_scalar_dense`` (``.item()``, ``float(t)``, ``bool(t)``,
  ``if t:``) and the ops whose output size depends on data (nonzero, masked_select, unique...): on
  CUDA each one waits for the GPU to drain its queue;
* copies between the host and the device (``COPY_OPS``), when the recorder runs inside a
  FakeTensorMode whose tensors report "cuda": a device-to-host copy waits for the GPU, and a
  pageable host-to-device copy with ``non_blocking=False`` (``torch.tensor(data, device="cuda")``, a
  CPU constant ``.to(cuda)``) ends in a stream synchronize (ATen's ``memcpy_and_sync``), so both are
  host syncs (``torch.cuda.set_sync_debug_mode`` reports them).

What the CPU cannot see, and ``make gpu-check`` must: host/device copies outside
FakeTensorMode (on real CPU tensors every copy is CPU to CPU; ``.tolist()``/``.numpy()`` dispatch no
op at all), cuDNN algorithm choices, cuBLAS workspace (``CUBLAS_WORKSPACE_CONFIG``),
and ops that only CUDA dispatches to (``cudnn_grid_sampler`` for ``grid_sample(align_corners=True)``).

Importable by the tests (``tests/`` is on ``sys.path``, see conftest.py) and by a bench script
(``sys.path.insert(0, "tests")``; ``import cuda_guard``).
"""

from __future__ import annotations

import os
import re
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

# ------------------------------------------------------------------------------------------------
# provenance: a torch upgrade must re-derive the list (test_guard_list_matches_installed_torch_version)
# ------------------------------------------------------------------------------------------------

#: The torch release the list below was derived from (``torch.__version__`` without ``+cu...``).
TORCH_VERSION = "2.14.1"

DERIVED_FROM = """\
Derived for torch 2.14.1 from
 1. the docstring of torch.use_deterministic_algorithms in the installed torch 2.14.1
    (torch/__init__.py): the list "The following normally-nondeterministic operations will throw a
    RuntimeError when mode=True" (every bullet is mapped in DOCSTRING_THROW_ITEMS below, and
    test_guard_list_covers_the_installed_docstring re-parses the installed docstring);
 2. the ATen call sites of at::globalContext().alertNotDeterministic(...) for CUDA, read in the
    pytorch/pytorch sources (aten/src/ATen/native/cuda/*.cu, native/TensorAdvancedIndexing.cpp).
    The stored source snapshots that were readable are not pinned to the v2.14.1 tag (some files
    are older, some newer than 2.14); where they disagree with the 2.14.1 docstring the entry
    takes the stricter reading and says so (histc, replication pad, scatter_reduce amax/amin).
Ops are named as a TorchDispatchMode sees them: func._schema.name (every overload of that name,
.out and .grad_input variants included); the condition says when the CUDA kernel alerts.
"""


def installed_torch_version() -> str:
    return torch.__version__.split("+")[0]


# ------------------------------------------------------------------------------------------------
# the list
# ------------------------------------------------------------------------------------------------


def _always(_args: dict[str, Any]) -> bool:
    return True


@dataclass(frozen=True)
class Entry:
    """One op (or family of overload names) without a deterministic CUDA kernel."""

    key: str
    ops: tuple[str, ...]  # func._schema.name as the dispatch mode sees it
    condition: str  # when the CUDA kernel raises, in words
    source: str  # the docstring bullet and/or the ATen alert site
    example: Callable[[], None]  # a tiny CPU trigger, for the self-tests
    applies: Callable[[dict[str, Any]], bool] = _always  # the condition, over the bound schema args


def _leaf(*shape: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(*shape, generator=g).requires_grad_()


def _backward(y: torch.Tensor) -> None:
    y.float().sum().backward()


def _ex_adaptive_avg_pool2d() -> None:
    _backward(torch.nn.AdaptiveAvgPool2d(2)(_leaf(1, 2, 5, 5)))


def _ex_adaptive_avg_pool3d() -> None:
    _backward(F.adaptive_avg_pool3d(_leaf(1, 2, 5, 5, 5), 2))


def _ex_adaptive_max_pool2d() -> None:
    _backward(F.adaptive_max_pool2d(_leaf(1, 2, 5, 5), 2))


def _ex_adaptive_max_pool3d() -> None:
    _backward(F.adaptive_max_pool3d(_leaf(1, 2, 5, 5, 5), 2))


def _ex_avg_pool3d() -> None:
    _backward(F.avg_pool3d(_leaf(1, 2, 4, 4, 4), 2))


def _ex_fractional_max_pool2d() -> None:
    _backward(F.fractional_max_pool2d(_leaf(1, 2, 6, 6), 2, output_size=3,
                                      _random_samples=torch.full((1, 2, 2), 0.5)))


def _ex_fractional_max_pool3d() -> None:
    _backward(F.fractional_max_pool3d(_leaf(1, 2, 6, 6, 6), 2, output_size=3,
                                      _random_samples=torch.full((1, 2, 3), 0.5)))


def _ex_max_unpool2d() -> None:
    out, idx = F.max_pool2d(torch.rand(1, 2, 4, 4), 2, return_indices=True)
    F.max_unpool2d(out, idx, 2)


def _ex_max_unpool3d() -> None:
    out, idx = F.max_pool3d(torch.rand(1, 2, 4, 4, 4), 2, return_indices=True)
    F.max_unpool3d(out, idx, 2)


def _ex_upsample(mode: str, dims: int, antialias: bool = False) -> Callable[[], None]:
    def run() -> None:
        x = _leaf(1, 2, *([6] * dims))
        if antialias:  # antialias only differs from plain bilinear/bicubic when downsampling
            y = F.interpolate(x, scale_factor=0.5, mode=mode, antialias=True, align_corners=False)
        else:
            y = F.interpolate(x, scale_factor=2.0, mode=mode, align_corners=False)
        _backward(y)

    return run


def _ex_pad(mode: str, dims: int) -> Callable[[], None]:
    def run() -> None:
        _backward(F.pad(_leaf(1, 2, *([4] * dims)), (1, 1) * dims, mode=mode))

    return run


def _ex_nll_loss2d() -> None:
    logp = torch.log_softmax(torch.rand(2, 3, 4, 4), 1)
    F.nll_loss(logp, torch.zeros(2, 4, 4, dtype=torch.long))  # reduction="mean"


def _ex_ctc_loss() -> None:
    logp = torch.log_softmax(_leaf(6, 1, 4), 2)
    targets = torch.tensor([[1, 2]])
    _backward(F.ctc_loss(logp, targets, torch.tensor([6]), torch.tensor([2])))


def _ex_embedding_bag_max() -> None:
    w = _leaf(5, 3)
    _backward(F.embedding_bag(torch.tensor([0, 1, 2, 3]), w, torch.tensor([0, 2]), mode="max"))


def _ex_put() -> None:
    torch.zeros(4).put_(torch.tensor([0, 0]), torch.tensor([1.0, 2.0]), accumulate=True)


def _ex_histc() -> None:
    torch.histc(torch.rand(8), bins=4)


def _ex_bincount() -> None:
    torch.bincount(torch.tensor([0, 1, 1]), weights=torch.tensor([0.5, 1.0, 2.0]))


def _ex_median_dim() -> None:
    torch.median(torch.rand(3, 4), dim=1)


def _ex_nanmedian_dim() -> None:
    torch.nanmedian(torch.rand(3, 4), dim=1)


def _ex_kthvalue() -> None:
    torch.kthvalue(torch.rand(3, 4), 2, dim=1)


def _ex_grid_sampler_2d() -> None:
    grid = torch.zeros(1, 3, 3, 2)
    _backward(F.grid_sample(_leaf(1, 2, 4, 4), grid, align_corners=False))


def _ex_grid_sampler_3d() -> None:
    grid = torch.zeros(1, 2, 2, 2, 3)
    _backward(F.grid_sample(_leaf(1, 2, 3, 3, 3), grid, align_corners=False))


def _ex_scatter_reduce(reduce: str) -> Callable[[], None]:
    def run() -> None:
        torch.ones(3).scatter_reduce(0, torch.tensor([0, 0, 1]), torch.rand(3), reduce=reduce)

    return run


def _ex_scatter_multiply() -> None:
    with warnings.catch_warnings():  # reduce= on scatter_ is deprecated (but still dispatched)
        warnings.simplefilter("ignore")
        torch.ones(3).scatter_(0, torch.tensor([0, 0, 1]), torch.rand(3), reduce="multiply")


def _ex_index_reduce() -> None:
    with warnings.catch_warnings():  # "index_reduce() is in beta"
        warnings.simplefilter("ignore")
        torch.ones(3).index_reduce_(0, torch.tensor([0, 0]), torch.rand(2), "prod")


def _ex_resize_quantized() -> None:
    with warnings.catch_warnings():  # quantized tensor creation is deprecated in 2.14
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.rand(4), 0.1, 0, torch.quint8)
    q.resize_(2)


ENTRIES: tuple[Entry, ...] = (
    Entry("adaptive_avg_pool2d_backward", ("aten::_adaptive_avg_pool2d_backward",),
          "always; AdaptiveAvgPool2d with a 1x1 output never reaches it (ATen's composite "
          "adaptive_avg_pool2d computes mean(-1, -2) instead, on every device)",
          "docstring: AdaptiveAvgPool2d when differentiating a CUDA tensor; "
          "ATen cuda/AdaptiveAveragePooling.cu adaptive_avg_pool2d_backward_out_cuda/_cuda",
          _ex_adaptive_avg_pool2d),
    Entry("adaptive_avg_pool3d_backward", ("aten::_adaptive_avg_pool3d_backward", "aten::adaptive_avg_pool3d_backward"),
          "always (a 1x1x1 output is computed as a mean instead)",
          "docstring: AdaptiveAvgPool3d; ATen cuda/AdaptiveAveragePooling3d.cu", _ex_adaptive_avg_pool3d),
    Entry("adaptive_max_pool2d_backward", ("aten::adaptive_max_pool2d_backward",), "always",
          "docstring: AdaptiveMaxPool2d; ATen cuda/AdaptiveMaxPooling2d.cu", _ex_adaptive_max_pool2d),
    Entry("adaptive_max_pool3d_backward", ("aten::adaptive_max_pool3d_backward",), "always",
          "ATen cuda/AdaptiveMaxPooling3d.cu adaptive_max_pool3d_backward_out_cuda", _ex_adaptive_max_pool3d),
    Entry("avg_pool3d_backward", ("aten::avg_pool3d_backward",), "always",
          "docstring: AvgPool3d; ATen cuda/AveragePool3d.cu", _ex_avg_pool3d),
    Entry("fractional_max_pool2d_backward", ("aten::fractional_max_pool2d_backward",), "always",
          "docstring: FractionalMaxPool2d; ATen cuda/FractionalMaxPool2d.cu", _ex_fractional_max_pool2d),
    Entry("fractional_max_pool3d_backward", ("aten::fractional_max_pool3d_backward",), "always",
          "docstring: FractionalMaxPool3d; ATen cuda/FractionalMaxPool3d.cu", _ex_fractional_max_pool3d),
    Entry("max_unpool2d", ("aten::max_unpool2d",), "always (forward)",
          "docstring: MaxUnpool1d, MaxUnpool2d (MaxUnpool1d runs as max_unpool2d); ATen cuda/MaxUnpooling.cu",
          _ex_max_unpool2d),
    Entry("max_unpool3d", ("aten::max_unpool3d",), "always (forward)",
          "docstring: MaxUnpool3d; ATen cuda/MaxUnpooling.cu", _ex_max_unpool3d),
    Entry("upsample_linear1d_backward", ("aten::upsample_linear1d_backward",), "always",
          "docstring: interpolate linear; ATen cuda/UpSampleLinear1d.cu", _ex_upsample("linear", 1)),
    Entry("upsample_bilinear2d_backward", ("aten::upsample_bilinear2d_backward",), "always",
          "docstring: interpolate bilinear; ATen cuda/UpSampleBilinear2d.cu", _ex_upsample("bilinear", 2)),
    Entry("upsample_bilinear2d_aa_backward", ("aten::_upsample_bilinear2d_aa_backward",), "always",
          "ATen cuda/UpSampleBilinear2d.cu _upsample_bilinear2d_aa_backward_out_cuda",
          _ex_upsample("bilinear", 2, antialias=True)),
    Entry("upsample_bicubic2d_backward", ("aten::upsample_bicubic2d_backward",), "always",
          "docstring: interpolate bicubic; ATen cuda/UpSampleBicubic2d.cu", _ex_upsample("bicubic", 2)),
    Entry("upsample_bicubic2d_aa_backward", ("aten::_upsample_bicubic2d_aa_backward",), "always",
          "ATen cuda/UpSampleBicubic2d.cu _upsample_bicubic2d_aa_backward_out_cuda",
          _ex_upsample("bicubic", 2, antialias=True)),
    Entry("upsample_trilinear3d_backward", ("aten::upsample_trilinear3d_backward",), "always",
          "docstring: interpolate trilinear; ATen cuda/UpSampleTrilinear3d.cu", _ex_upsample("trilinear", 3)),
    Entry("reflection_pad_backward",
          ("aten::reflection_pad1d_backward", "aten::reflection_pad2d_backward", "aten::reflection_pad3d_backward"),
          "always", "docstring: ReflectionPad1d/2d/3d; ATen cuda/ReflectionPad.cu", _ex_pad("reflect", 2)),
    Entry("replication_pad_backward",
          ("aten::replication_pad1d_backward", "aten::replication_pad2d_backward", "aten::replication_pad3d_backward"),
          "always. Stricter than the docstring, which lists ReplicationPad as made deterministic: that is "
          "F.pad routing CUDA input to a decomposition (index ops) when deterministic mode is on, in Python, "
          "before dispatch; the ATen kernels still alert (cuda/ReplicationPadding.cu), and on the CPU the "
          "recorder cannot tell the routed call from a direct one",
          "ATen cuda/ReplicationPadding.cu replication_pad{1,2,3}d_backward_out_cuda", _ex_pad("replicate", 2)),
    Entry("nll_loss2d_forward", ("aten::nll_loss2d_forward",),
          "reduction is 'mean' or 'sum' (reduction='none' is deterministic)",
          "docstring: NLLLoss on a CUDA tensor; ATen cuda/Loss.cu nll_loss2d_forward_out_cuda_template",
          _ex_nll_loss2d, lambda a: int(a.get("reduction", 1)) != 0),
    Entry("ctc_loss_backward", ("aten::_ctc_loss_backward",), "always",
          "docstring: CTCLoss; ATen cuda/LossCTC.cu ctc_loss_backward_gpu", _ex_ctc_loss),
    Entry("embedding_bag_max_backward", ("aten::_embedding_bag_dense_backward", "aten::_embedding_bag_backward"),
          "mode='max' (mode == 2)",
          "docstring: EmbeddingBag mode='max'; ATen cuda/EmbeddingBag.cu embedding_bag_backward_cuda_max",
          _ex_embedding_bag_max, lambda a: int(a.get("mode", 0)) == 2),
    Entry("put", ("aten::put_", "aten::put"),
          "always on CUDA (accumulate=False: duplicate indices race; accumulate=True: atomicAdd)",
          "docstring: Tensor.put_; ATen TensorAdvancedIndexing.cpp put_", _ex_put),
    Entry("histc", ("aten::histc",),
          "always (the 2.14.1 docstring says: on a CUDA tensor; newer ATen alerts only for floating input)",
          "docstring: torch.histc; ATen cuda/SummaryOps.cu _histc_cuda", _ex_histc),
    Entry("bincount_weights", ("aten::bincount",), "weights given",
          "docstring: torch.bincount with weights; ATen cuda/SummaryOps.cu _bincount_cuda",
          _ex_bincount, lambda a: a.get("weights") is not None),
    Entry("median_dim", ("aten::median",), "with a dim (the overload that returns indices)",
          "docstring: torch.median with indices output; ATen cuda/Sorting.cpp median_with_indices_impl",
          _ex_median_dim, lambda a: "dim" in a),
    Entry("nanmedian_dim", ("aten::nanmedian",), "with a dim (indices output)",
          "ATen cuda/Sorting.cpp median_with_indices_impl (ignore_nan=True)",
          _ex_nanmedian_dim, lambda a: "dim" in a),
    Entry("kthvalue", ("aten::kthvalue",), "always (it always has a dim and indices)",
          "ATen cuda/Sorting.cpp kthvalue_out_cuda ('kthvalue CUDA')", _ex_kthvalue),
    Entry("grid_sampler_2d_backward", ("aten::grid_sampler_2d_backward",), "always",
          "docstring: grid_sample when differentiating; ATen cuda/GridSampler.cpp grid_sampler_2d_backward_cuda",
          _ex_grid_sampler_2d),
    Entry("grid_sampler_3d_backward", ("aten::grid_sampler_3d_backward",), "always",
          "ATen cuda/GridSampler.cpp grid_sampler_3d_backward_cuda", _ex_grid_sampler_3d),
    Entry("scatter_reduce_prod", ("aten::scatter_reduce", "aten::scatter_reduce_"), "reduce='prod'",
          "docstring: scatter_reduce reduce='prod'; ATen cuda/ScatterGatherKernel.cu scatter_reduce_two_cuda_kernel",
          _ex_scatter_reduce("prod"), lambda a: a.get("reduce") == "prod"),
    Entry("scatter_reduce_amax_amin", ("aten::scatter_reduce", "aten::scatter_reduce_"), "reduce='amax' or 'amin'",
          "stricter than the docstring: TensorAdvancedIndexing.cpp scatter_impl routes only sum/mean to the "
          "deterministic index_put path; amax/amin reach scatter_reduce_two_cuda_kernel, which alerts",
          _ex_scatter_reduce("amax"), lambda a: a.get("reduce") in ("amax", "amin")),
    Entry("scatter_multiply", ("aten::scatter", "aten::scatter_"), "tensor src with reduce='multiply'",
          "ATen cuda/ScatterGatherKernel.cu scatter_reduce_cuda_kernel (only reduce='add' is routed to index_put)",
          _ex_scatter_multiply, lambda a: a.get("reduce") == "multiply" and isinstance(a.get("src"), torch.Tensor)),
    Entry("index_reduce", ("aten::index_reduce", "aten::index_reduce_"), "always",
          "ATen cuda/Indexing.cu index_reduce_func_cuda_impl ('index_reduce_cuda')", _ex_index_reduce),
    Entry("resize_quantized", ("aten::resize_",), "on a quantized tensor",
          "docstring: Tensor.resize_ with a quantized tensor",
          _ex_resize_quantized, lambda a: isinstance(a.get("self"), torch.Tensor) and a["self"].is_quantized),
)

ENTRIES_BY_OP: dict[str, tuple[Entry, ...]] = {}
for _e in ENTRIES:
    for _op in _e.ops:
        ENTRIES_BY_OP[_op] = ENTRIES_BY_OP.get(_op, ()) + (_e,)

#: Every bullet of the installed docstring's "will throw a RuntimeError" list (whitespace squeezed),
#: with the entries that cover it, or why none is needed.
DOCSTRING_THROW_ITEMS: dict[str, tuple[str, ...] | str] = {
    ":class:`torch.nn.AvgPool3d` when attempting to differentiate a CUDA tensor": ("avg_pool3d_backward",),
    ":class:`torch.nn.AdaptiveAvgPool2d` when attempting to differentiate a CUDA tensor":
        ("adaptive_avg_pool2d_backward",),
    ":class:`torch.nn.AdaptiveAvgPool3d` when attempting to differentiate a CUDA tensor":
        ("adaptive_avg_pool3d_backward",),
    ":class:`torch.nn.AdaptiveMaxPool2d` when attempting to differentiate a CUDA tensor":
        ("adaptive_max_pool2d_backward",),
    ":class:`torch.nn.FractionalMaxPool2d` when attempting to differentiate a CUDA tensor":
        ("fractional_max_pool2d_backward",),
    ":class:`torch.nn.FractionalMaxPool3d` when attempting to differentiate a CUDA tensor":
        ("fractional_max_pool3d_backward",),
    ":class:`torch.nn.MaxUnpool1d`": ("max_unpool2d",),
    ":class:`torch.nn.MaxUnpool2d`": ("max_unpool2d",),
    ":class:`torch.nn.MaxUnpool3d`": ("max_unpool3d",),
    ":func:`torch.nn.functional.interpolate` when attempting to differentiate a CUDA tensor and one of the "
    "following modes is used: - ``linear`` - ``bilinear`` - ``bicubic`` - ``trilinear``":
        ("upsample_linear1d_backward", "upsample_bilinear2d_backward", "upsample_bilinear2d_aa_backward",
         "upsample_bicubic2d_backward", "upsample_bicubic2d_aa_backward", "upsample_trilinear3d_backward"),
    ":class:`torch.nn.ReflectionPad1d` when attempting to differentiate a CUDA tensor": ("reflection_pad_backward",),
    ":class:`torch.nn.ReflectionPad2d` when attempting to differentiate a CUDA tensor": ("reflection_pad_backward",),
    ":class:`torch.nn.ReflectionPad3d` when attempting to differentiate a CUDA tensor": ("reflection_pad_backward",),
    ":class:`torch.nn.NLLLoss` when called on a CUDA tensor": ("nll_loss2d_forward",),
    ":class:`torch.nn.CTCLoss` when attempting to differentiate a CUDA tensor": ("ctc_loss_backward",),
    ":class:`torch.nn.EmbeddingBag` when attempting to differentiate a CUDA tensor when ``mode='max'``":
        ("embedding_bag_max_backward",),
    ":func:`torch.Tensor.put_` when ``accumulate=False``": ("put",),
    ":func:`torch.Tensor.put_` when ``accumulate=True`` and called on a CUDA tensor": ("put",),
    ":func:`torch.histc` when called on a CUDA tensor": ("histc",),
    ":func:`torch.bincount` when called on a CUDA tensor and ``weights`` tensor is given": ("bincount_weights",),
    ":func:`torch.median` with indices output when called on a CUDA tensor": ("median_dim",),
    ":func:`torch.nn.functional.grid_sample` when attempting to differentiate a CUDA tensor":
        ("grid_sampler_2d_backward", "grid_sampler_3d_backward"),
    ":func:`torch.Tensor.scatter_reduce` when ``reduce='prod'`` and called on CUDA tensor": ("scatter_reduce_prod",),
    ":func:`torch.Tensor.resize_` when called with a quantized tensor": ("resize_quantized",),
}


def installed_docstring_throw_items() -> list[str]:
    """The bullets of the installed ``use_deterministic_algorithms`` "will throw" list."""
    doc = torch.use_deterministic_algorithms.__doc__ or ""
    start = doc.index("normally-nondeterministic operations will throw a")
    section = doc[start:doc.index("In addition", start)]
    section = section[section.index("\n") + 1:]
    section = section[section.index(":\n") + 2:]
    items = re.split(r"\n\s*\* ", "\n" + section)
    return [" ".join(i.split()) for i in items if i.strip()]


# ------------------------------------------------------------------------------------------------
# host syncs
# ------------------------------------------------------------------------------------------------

#: Ops that make the host wait for the GPU: a scalar read, or an output whose size depends on data.
SYNC_OPS: frozenset[str] = frozenset({
    "aten::_local_scalar_dense",  # .item(), float(t), int(t), bool(t), `if t:`
    "aten::nonzero",  # also boolean-mask indexing x[mask], torch.where(cond)
    "aten::masked_select",
    "aten::_unique2",
    "aten::unique_dim",
    "aten::unique_consecutive",
    "aten::equal",
})

#: Copies between devices; under FakeTensorMode (tensors that report "cuda") the recorder sees the
#: devices: a device-to-host copy (.cpu(), .tolist() of a CUDA tensor) waits for the GPU, and so
#: does a host-to-device copy with non_blocking=False (torch.tensor(data, device="cuda"), a CPU
#: constant .to(cuda)): ATen ends it with a stream synchronize (memcpy_and_sync).
COPY_OPS: frozenset[str] = frozenset({"aten::_to_copy", "aten::copy_"})


def _bind(func: Any, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The op's arguments by schema name (positional ones by position, the rest by keyword)."""
    bound: dict[str, Any] = {}
    positional = [a for a in func._schema.arguments if not a.kwarg_only]
    for a, v in zip(positional, args):
        bound[a.name] = v
    bound.update(kwargs)
    return bound


_HERE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__))


def caller() -> str:
    """``file:line function`` of the innermost frame outside torch and this module."""
    frame = sys._getframe(1)
    while frame is not None:
        path = os.path.abspath(frame.f_code.co_filename)
        if path != _HERE and not path.startswith(_TORCH_DIR) and "/contextlib.py" not in path:
            return f"{os.path.relpath(path)}:{frame.f_lineno} {frame.f_code.co_name}"
        frame = frame.f_back
    return "?"


def _copy_kind(name: str, args: tuple, kwargs: dict) -> str | None:
    """"h2d" / "d2h" for a copy between the CPU and another device, else None. A 0-dim CPU source is
    no copy on CUDA (kernels take it as a scalar argument)."""
    if name == "aten::_to_copy":
        src = args[0]
        dst = kwargs.get("device") or src.device
    else:
        dst, src = args[0].device, args[1]
    if not isinstance(src, torch.Tensor):
        return None
    s, d = src.device.type, torch.device(dst).type
    if s == d:
        return None
    if s == "cpu":
        return "h2d"
    return "d2h" if d == "cpu" else None


@dataclass(frozen=True)
class Hit:
    op: str  # schema name + overload, e.g. aten::_adaptive_avg_pool2d_backward.default
    key: str  # Entry.key, or "sync", or "host-data"
    where: str  # caller()
    tensor: Any = None  # for syncs: the tensor read (to tell optimizer step counters apart)


class OpRecorder(TorchDispatchMode):
    """Record every aten op run inside ``with OpRecorder() as rec:``; see the module docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.offenses: list[Hit] = []
        self.syncs: list[Hit] = []
        self.copies: list[Hit] = []  # host<->device, seen only under FakeTensorMode with "cuda" fakes
        self.cpu_only_syncs: list[Hit] = []
        self._in_one_hot = 0
        self._saved_one_hot = None

    # ATen's one_hot checks the class values with min().item() and max().item() on the CPU only; on
    # CUDA it relies on scatter's device asserts (aten/src/ATen/native/Onehot.cpp, "rely on device
    # asserts from scatter to avoid sync here"). Those two CPU reads are kept apart, not counted.
    def __enter__(self):
        self._saved_one_hot = F.one_hot
        recorder = self

        def one_hot(*args, **kwargs):
            recorder._in_one_hot += 1
            try:
                return recorder._saved_one_hot(*args, **kwargs)
            finally:
                recorder._in_one_hot -= 1

        F.one_hot = one_hot
        return super().__enter__()

    def __exit__(self, *exc):
        F.one_hot = self._saved_one_hot
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name
        full = f"{name}.{func._overloadname}"
        self.ops[full] += 1
        for entry in ENTRIES_BY_OP.get(name, ()):
            if entry.applies(_bind(func, args, kwargs)):
                self.offenses.append(Hit(full, entry.key, caller()))
        if name in SYNC_OPS:
            hit = Hit(full, "sync", caller(), args[0] if args else None)
            (self.cpu_only_syncs if self._in_one_hot else self.syncs).append(hit)
        elif name in COPY_OPS:
            kind = _copy_kind(name, args, kwargs)
            if kind:
                self.copies.append(Hit(full, kind, caller()))
        return func(*args, **kwargs)

    @property
    def offending_keys(self) -> set[str]:
        return {h.key for h in self.offenses}

    def report(self) -> str:
        lines = [f"{h.op} ({h.key}) at {h.where}" for h in self.offenses]
        lines += [f"{h.op} (host sync) at {h.where}" for h in self.syncs]
        lines += [f"{h.op} ({h.key} copy) at {h.where}" for h in self.copies]
        return "\n".join(lines) or "nothing flagged"

    def assert_deterministic(self) -> None:
        """Fail listing every op without a deterministic CUDA kernel, with where it was called."""
        if self.offenses:
            detail = "\n".join(
                f"  {h.op} at {h.where}: {next(e for e in ENTRIES if e.key == h.key).condition}"
                for h in dict.fromkeys(self.offenses))
            raise AssertionError(f"ops without a deterministic CUDA kernel (torch {TORCH_VERSION}):\n{detail}")


__all__ = ["DERIVED_FROM", "DOCSTRING_THROW_ITEMS", "ENTRIES", "Entry", "Hit", "OpRecorder", "SYNC_OPS",
           "COPY_OPS", "TORCH_VERSION", "installed_docstring_throw_items", "installed_torch_version"]
