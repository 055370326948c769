"""Trained weights named by [base].weights: read a state dict from a file and put it in a model.

The file is a state dict, or a checkpoint dict holding one under [base].weights_key. It is read
with ``weights_only=True`` (pickled code is refused). A prefix every key carries (``module.`` from
DataParallel, ``model.`` from Lightning-style wrappers) is stripped. A state dict that does not
fit the model exactly is refused with the missing and unexpected keys listed, in one line.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

#: prefixes wrappers put before every key; stripped when every key has one
PREFIXES = ("module.", "model.")
#: keys listed in an error, of each kind
SHOWN = 10


class WeightsProblem(ValueError):
    """The weights file cannot be read or does not fit the model: one line naming [base].weights."""


def read_state_dict(weights: dict[str, Any], log: Callable[[str], None] = lambda _m: None) -> dict[str, torch.Tensor]:
    """The state dict in ``weights["file"]`` (under ``weights["key"]`` when set), on the CPU, with
    a common wrapper prefix stripped."""
    path, key = weights["file"], weights.get("key", "")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable, or pickled objects: one line either way
        first = " ".join(str(e).split())[:300]
        raise WeightsProblem(f"[base].weights: {path} cannot be loaded as a state dict with weights_only=True "
                             f"({type(e).__name__}: {first})") from None
    if key:
        if not isinstance(obj, dict) or key not in obj:
            keys = sorted(map(str, obj))[:SHOWN] if isinstance(obj, dict) else type(obj).__name__
            raise WeightsProblem(f"[base].weights_key: {key!r} is not a key of {path}; its keys: {keys}")
        obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        hint = " (a checkpoint? name the key holding the state dict in [base].weights_key)" if isinstance(obj, dict) else ""
        raise WeightsProblem(f"[base].weights: {path}{f' [{key!r}]' if key else ''} is not a state dict "
                             f"(a dict of tensors){hint}")
    return _strip_prefix(obj, path, log)


def _strip_prefix(sd: dict[str, torch.Tensor], path: str, log: Callable[[str], None]) -> dict[str, torch.Tensor]:
    for prefix in PREFIXES:
        if all(k.startswith(prefix) for k in sd):
            log(f"weights: stripped the prefix {prefix!r} from every key of {path}")
            return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def mismatch(model: nn.Module, sd: dict[str, torch.Tensor], path: str) -> str:
    """"" when ``sd`` fits ``model`` exactly (keys and shapes; works on the meta device), else one
    line listing the missing and unexpected keys and the shapes that differ."""
    want = model.state_dict()
    missing = [k for k in want if k not in sd]
    unexpected = [k for k in sd if k not in want]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(want[k].shape)}" for k in want
              if k in sd and tuple(sd[k].shape) != tuple(want[k].shape)]
    if not (missing or unexpected or shapes):
        return ""
    parts = []
    for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape (file vs model)", shapes)):
        if keys:
            more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            parts.append(f"{len(keys)} {what}: {', '.join(keys[:SHOWN])}{more}")
    return (f"[base].weights: {path} does not fit the model ({'; '.join(parts)}); allowed: a state dict with "
            "exactly the model's keys and shapes")


def load_into(model: nn.Module, weights: dict[str, Any], log: Callable[[str], None]) -> None:
    """Put the weights file's state dict in ``model`` (strict), or raise WeightsProblem."""
    sd = read_state_dict(weights, log)
    problem = mismatch(model, sd, weights["file"])
    if problem:
        raise WeightsProblem(problem)
    model.load_state_dict(sd, strict=True)
    log(f"weights: loaded {len(sd)} tensors from {weights['file']} (sha256 {weights['sha256'][:12]})")
