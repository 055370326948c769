"""AutoAttack (Croce & Hein 2020; cnnstress/autoattack.py) on a fixed sample of test images: the
robust accuracy published results (RobustBench) are compared by, and which attack broke each
image. Needs the optional ``autoattack`` extra (torchattacks); launch refuses a grid that turns it
on without it. Read by the autoattack report section."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

from ..catalog import Param
from ..layout import Field
from .base import Probe

#: the radius when [stress].autoattack_eps is 0: RobustBench's CIFAR-10 threat models
DEFAULT_EPS: dict[str, float] = {"Linf": 8 / 255, "L2": 0.5}
#: /autoattack/broken_by: an int8 code per attacked image, its index here
CODES: tuple[str, ...] = ("not broken", "wrong without attack", "APGD-CE", "APGD-T", "FAB-T", "Square", "APGD-DLR")
NOT_BROKEN, CLEAN_WRONG = 0, 1
CODE_OF: dict[str, int] = {"apgd-ce": 2, "apgd-t": 3, "fab-t": 4, "square": 5, "apgd-dlr": 6}
EXTRA = "autoattack"
INSTALL = f"pip install -e '.[{EXTRA}]'"


def available() -> bool:
    """Whether torchattacks can be imported here (looked up, not imported: no torch is loaded)."""
    return importlib.util.find_spec("torchattacks") is not None


def missing_package(runs) -> str | None:
    """The launch error when some run turns AutoAttack on and torchattacks is not installed."""
    if any(getattr(r.stress, "autoattack", None) for r in runs) and not available():
        return ("[stress].autoattack is on, but the torchattacks package is not installed in this Python "
                f"({sys.executable}); install the extra with: {INSTALL}  (or: pip install torchattacks)")
    return None


class AutoAttackProbe(Probe):
    name = "autoattack"
    keys = {
        "autoattack": Param(False, doc="attack a fixed sample of test images with AutoAttack "
                                       "(needs pip install -e '.[autoattack]')"),
        "autoattack_norm": Param("Linf", choices=("Linf", "L2"), doc="the threat model's norm"),
        "autoattack_eps": Param(0.0, 0.0, 64.0, doc="radius in [0,1] pixel units (0.0313725 is 8/255); "
                                                    "0 = 8/255 for Linf, 0.5 for L2"),
        "autoattack_version": Param("standard", choices=("standard", "rand"),
                                    doc="standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE, APGD-DLR with "
                                        "expectation over 20 samples (randomised defences)"),
        "autoattack_samples": Param(1000, 1, 100_000, doc="test images attacked (the same for every run)"),
    }
    fields = {"autoattack": {}}  # norm, eps, version, samples; {} = off
    rows = (
        Field("autoattack/positions", "int32", ("A",), check="positions", bundle="autoattack",
              doc="rows of /test attacked by AutoAttack (the same for every run of a sweep)"),
        Field("autoattack/logits", "float32", ("A", "C"), check="logits", chunked=True, bundle="autoattack",
              doc="logits of the adversarial image that broke each image, or its clean logits when none did"),
        Field("autoattack/broken_by", "int8", ("A",), bundle="autoattack",
              doc="per image: 0 not broken, 1 wrong without attack, 2 APGD-CE, 3 APGD-T, 4 FAB-T, 5 Square, "
                  "6 APGD-DLR (cnnstress.autoattack.CODES)"),
    )
    section = "autoattack"

    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        norm, eps = stress["autoattack_norm"], float(stress["autoattack_eps"])
        if norm == "Linf" and eps > 1:
            raise v.fail("[stress].autoattack_eps", f"{eps:g} is above 1: an L-inf radius is in [0,1] pixel units "
                                                    "(8/255 = 0.0313725)")
        if not stress["autoattack"]:
            return {"autoattack": {}}
        return {"autoattack": {"norm": norm, "eps": eps if eps > 0 else DEFAULT_EPS[norm],
                               "version": stress["autoattack_version"], "samples": stress["autoattack_samples"]}}

    def measure(self, pred, data, spec, log):
        import time

        import numpy as np
        import torch

        from .. import autoattack
        from ..engine import fixed_positions

        aa, st, test = spec.stress.autoattack, spec.stress, data.test
        pos = fixed_positions(len(test), aa["samples"], st.corruption_seed)
        tpos = torch.from_numpy(pos).to(test.x.device)
        labels = test.y[tpos]
        t0 = time.time()
        logits, codes, skipped = autoattack.run(
            pred, test.x[tpos], labels, norm=aa["norm"], eps=aa["eps"], version=aa["version"],
            seed=st.corruption_seed, batch_size=min(spec.train.eval_batch_size, 256),
            on_attack=lambda name, n, s: log(f"AutoAttack {name}: {n} images in {s:.0f}s"))
        acc = float((logits.argmax(1) == labels).float().mean()) if len(pos) else float("nan")
        if skipped:
            log(f"AutoAttack skipped {', '.join(skipped)}: the model has fewer classes than its DLR loss reads")
        log(f"AutoAttack ({aa['version']}, {aa['norm']} eps {aa['eps']:.5g}) on {len(pos)} test images in "
            f"{time.time() - t0:.0f}s; robust accuracy {acc:.3f}")
        return {"autoattack/positions": pos.astype(np.int32), "autoattack/logits": logits.float().cpu().numpy(),
                "autoattack/broken_by": codes.cpu().numpy().astype(np.int8)}


PROBE = AutoAttackProbe()
