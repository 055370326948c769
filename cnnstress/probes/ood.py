"""Out-of-distribution detection (and selective prediction on the test set): logits on the
out-of-distribution sets of oodsets.py. Read by the ood section."""

from __future__ import annotations

from typing import Any

from .. import catalog
from ..catalog import Param, suggest
from ..layout import Field
from .base import Probe


class OodProbe(Probe):
    name = "ood"
    keys = {
        "ood": Param(False, doc="score out-of-distribution sets (and selective prediction on the test set)"),
        "ood_sets": Param([], doc="names, or your own sets \"folder:<path>\" / \"npz:<path>\" (relative to the grid "
                                  "file's folder); [] = every set offered for the dataset whose files are present"),
        "ood_samples": Param(1000, 1, 100_000, doc="images per generated set (at most this many of a CIFAR set)"),
    }
    fields = {"ood": {}}  # sets, samples; {} = off
    rows = (
        Field("ood/<set>/logits", "float32", ("*K", "C"), check="logits", chunked=True,
              doc="logits on an out-of-distribution set (K, C); K differs between sets"),
    )
    # ood_sets: set name -> what the set is (kind near/far, description, count, seed, source)
    root_attrs = {"ood_sets": "json"}
    section = "ood"

    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        sets = stress["ood_sets"]
        if not isinstance(sets, list) or not all(isinstance(x, str) for x in sets):
            raise v.fail("[stress].ood_sets", f"must be a list of set names, got {sets!r}"[:300])
        if len(set(sets)) != len(sets):
            raise v.fail("[stress].ood_sets", f"has duplicates: {sets}")
        if dataset not in catalog.DATASETS or not (stress["ood"] or sets):  # (a bad dataset is reported by [base])
            return {"ood": {}}
        from .. import oodsets  # numpy only; loaded when a grid asks for OOD sets

        offered = oodsets.sets_for(dataset)
        for name in sets:
            kind = oodsets.own_kind(name)
            if kind is not None and not name.partition(":")[2].strip():
                raise v.fail("[stress].ood_sets", f"{name!r} names no path; allowed: \"{kind}:<path>\", relative to "
                                                  "the grid file's folder")
            if kind is None and name not in offered:
                raise v.fail("[stress].ood_sets", f"{name!r} is not an out-of-distribution set for {dataset}"
                                                  f"{suggest(name, offered)}; allowed: {', '.join(offered)}, "
                                                  "\"folder:<path>\" or \"npz:<path>\""[:400])
        if not stress["ood"]:
            return {"ood": {}}
        # [] stays [] (every set whose files are there when the run starts, which the run records in its
        # ood_sets attribute): resolving it here would change run ids when a file is downloaded later.
        # A named set whose files are missing fails the run with the --download command (oodsets).
        resolved = {"sets": [n for n in offered if n in sets], "samples": stress["ood_samples"]}
        own = oodsets.resolve_own_sets(v, [s for s in sets if oodsets.own_kind(s)], "ood_sets")
        if own:  # absent otherwise, so the run ids of grids without them stay what they were
            resolved["own"] = own
        return {"ood": resolved}

    def measure(self, pred, data, spec, log):
        """Logits on every out-of-distribution set of the grid; what each set is goes in the root
        attribute ``ood_sets``."""
        import torch

        from .. import oodsets, store

        out = {}
        described: dict[str, Any] = {}
        own = spec.stress.ood.get("own", [])
        # [] with only sets of your own means those alone, not every built-in set besides
        names = spec.stress.ood["sets"] or ([] if own else oodsets.available_sets(spec.dataset.name, spec.paths.data_root))
        size = int(data.test.x.shape[-1])
        loads = [(name, lambda name=name: oodsets.load_ood_set(name, spec.dataset.name, spec.paths.data_root,
                                                               spec.stress.ood["samples"], spec.stress.corruption_seed,
                                                               size=size))
                 for name in names]
        loads += [(entry["set"], lambda entry=entry: oodsets.load_own_set(entry, spec.dataset.name, size,
                                                                         spec.stress.ood["samples"])) for entry in own]
        for name, load in loads:
            x, attrs = load()
            logits, _ = pred.predict(torch.from_numpy(x).to(pred.device), spec.train.eval_batch_size)
            out[store.ood_key(name)] = logits.float().cpu().numpy()
            described[name] = {k: v for k, v in attrs.items() if isinstance(v, (str, int, float, bool))}
        log(f"scored {len(out)} out-of-distribution sets: {', '.join(name for name, _ in loads)}")
        data.attrs["ood_sets"] = described
        return out


PROBE = OodProbe()
