"""Natural distribution shift: logits and labels on labelled test sets of the same classes drawn
from elsewhere (CIFAR-10.1, a shifted shapes split, your own folder or .npz; shiftsets.py). Read by
the shift section, which sets each set's accuracy against the clean test accuracy."""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..catalog import Param, suggest
from ..layout import Field
from .base import Probe


def shift_key(name: str, what: str) -> str:
    """results.h5 path of one array of a shift set: shift/<set>/{logits,label,index}."""
    return f"shift/{name}/{what}"


class ShiftProbe(Probe):
    name = "shift"
    keys = {
        "shift_sets": Param([], doc="labelled test sets of the same classes from elsewhere: \"cifar10.1\" (cifar10), "
                                    "\"shapes_shifted\" (shapes), or your own \"folder:<path>\" (a sub-folder per class) "
                                    "/ \"npz:<path>\" (x, y), relative to the grid file's folder; [] = off"),
        "shift_samples": Param(2000, 1, 100_000, doc="images per shift set: a set on disk with more gives this many, "
                                                     "drawn from [stress].corruption_seed (the same in every run)"),
    }
    fields = {"shift": {}}  # sets, samples, own; {} = off
    rows = (
        Field("shift/<set>/logits", "float32", ("*K", "C"), check="logits", chunked=True,
              doc="logits on a natural distribution shift set (K, C); K differs between sets"),
        Field("shift/<set>/label", "int16", ("*K",), check="label", doc="true class of each shift set image"),
        Field("shift/<set>/index", "int32", ("*K",), check="index", doc="position of each image in its set"),
    )
    # shift_sets: set name -> what the set is (description, count, source, sha256 of your own)
    root_attrs = {"shift_sets": "json"}
    section = "shift"

    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        sets = stress["shift_sets"]
        if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
            raise v.fail("[stress].shift_sets", f"must be a list of set names, got {sets!r}"[:300])
        if len(set(sets)) != len(sets):
            raise v.fail("[stress].shift_sets", f"has duplicates: {sets}")
        if not sets or dataset not in catalog.DATASETS:  # off (a bad dataset is reported by [base])
            return {"shift": {}}
        from .. import oodsets, shiftsets  # numpy only; loaded when a grid asks for shift sets

        offered = shiftsets.sets_for(dataset)
        for name in sets:
            kind = oodsets.own_kind(name)
            if kind is not None and not name.partition(":")[2].strip():
                raise v.fail("[stress].shift_sets", f"{name!r} names no path; allowed: \"{kind}:<path>\", relative to "
                                                    "the grid file's folder")
            if kind is None and name not in offered:
                allowed = ", ".join([*offered, '"folder:<path>"', '"npz:<path>"'])
                raise v.fail("[stress].shift_sets", f"{name!r} is not a shift set for {dataset}"
                                                    f"{suggest(name, list(shiftsets.SETS))}; allowed: {allowed}"[:400])
        resolved: dict[str, Any] = {"sets": [n for n in sets if n in offered], "samples": stress["shift_samples"]}
        own = oodsets.resolve_own_sets(v, [s for s in sets if oodsets.own_kind(s)], "shift_sets")
        if own:
            resolved["own"] = own
        return {"shift": resolved}

    def measure(self, pred, data, spec, log):
        """Logits, labels and positions on every shift set of the grid; what each set is goes in the
        root attribute ``shift_sets``."""
        import numpy as np
        import torch

        from .. import shiftsets

        cfg = spec.stress.shift
        n = int(cfg["samples"])
        size = int(data.test.x.shape[-1])
        names = tuple(data.splits.info.class_names)
        loads = [(shiftsets.SETS[name].key,
                  lambda name=name: shiftsets.load_set(name, spec.dataset.name, spec.paths.data_root, n,
                                                       spec.stress.corruption_seed, size=size))
                 for name in cfg["sets"]]
        loads += [(e["set"], lambda e=e: shiftsets.load_own_set(e, spec.dataset.name, size, n, names,
                                                                 spec.stress.corruption_seed))
                  for e in cfg.get("own", [])]
        out: dict[str, np.ndarray] = {}
        described: dict[str, Any] = {}
        for key, load in loads:
            x, y, index, attrs = load()
            logits, _ = pred.predict(torch.from_numpy(x).to(pred.device), spec.train.eval_batch_size)
            logits = logits.float().cpu().numpy()
            out[shift_key(key, "logits")] = logits
            out[shift_key(key, "label")] = y.astype(np.int16)
            out[shift_key(key, "index")] = index.astype(np.int32)
            described[key] = {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))}
            log(f"shift set {key}: {y.shape[0]} images, accuracy {float((logits.argmax(1) == y).mean()):.4f}")
        data.attrs["shift_sets"] = described
        return out


PROBE = ShiftProbe()
