"""Adversarial robustness: PGD (Madry et al.; attacks.py) on a fixed sample of test images, every
norm and radius of the grid. Read by the adversarial section."""

from __future__ import annotations

import math
from typing import Any

from ..catalog import Param
from ..layout import Field
from .base import Probe


class AdversarialProbe(Probe):
    name = "adversarial"
    keys = {
        "adversarial": Param(False, doc="attack a fixed sample of test images with PGD"),
        "adversarial_linf": Param([0, 1, 2, 4, 8], doc="L-infinity radii in 1/255 units, 0..64"),
        "adversarial_l2": Param([], doc="L2 radii (pixels in [0, 1]), 0..16; [] = no L2 attack"),
        "adversarial_steps": Param(10, 1, 1000, doc="PGD steps (step size 2.5 * eps / steps)"),
        "adversarial_samples": Param(1000, 1, 100_000, doc="test images attacked (the same for every run)"),
    }
    fields = {"adversarial": {}}  # linf, l2 (eps lists), steps, samples; {} = off
    rows = (
        Field("adversarial/positions", "int32", ("M",), check="positions",
              doc="rows of /test attacked (the same for every run of a sweep)"),
        Field("adversarial/<norm>/<eps>/logits", "float32", ("M", "C"), check="logits", chunked=True,
              doc="logits after the PGD attack of that norm and radius"),
    )
    section = "adversarial"

    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        # the radii are checked whether or not the attack is on, so a typo is an error before it is turned on
        linf = _radii(v, stress["adversarial_linf"], "[stress].adversarial_linf", 64)
        l2 = _radii(v, stress["adversarial_l2"], "[stress].adversarial_l2", 16)
        if not stress["adversarial"]:
            return {"adversarial": {}}
        if not linf and not l2:
            raise v.fail("[stress].adversarial_linf", "and [stress].adversarial_l2 are both empty: nothing to attack "
                                                      "(set adversarial = false to turn the attack off)")
        return {"adversarial": {"linf": linf, "l2": l2, "steps": stress["adversarial_steps"],
                                "samples": stress["adversarial_samples"]}}

    def measure(self, pred, data, spec, log):
        """PGD (attacks.sweep) on a fixed sample of test images, every norm and radius of the grid."""
        import time

        import numpy as np
        import torch

        from .. import attacks, store
        from ..engine import fixed_positions

        adv, st, test = spec.stress.adversarial, spec.stress, data.test
        pos = fixed_positions(len(test), adv["samples"], st.corruption_seed)
        tpos = torch.from_numpy(pos).to(test.x.device)
        norms = {norm: adv[norm] for norm in attacks.NORMS if adv.get(norm)}
        t0 = time.time()
        found = attacks.sweep(pred, test.x[tpos], test.y[tpos], norms=norms, seed=st.corruption_seed,
                              steps=adv["steps"], batch_size=min(spec.train.eval_batch_size, 256))
        out = {"adversarial/positions": pos.astype(np.int32)}
        labels = test.y[tpos]
        for (norm, eps), logits in found.items():
            out[store.adversarial_key(norm, eps)] = logits.float().cpu().numpy()
        accs = ", ".join(f"{norm} {store.eps_text(eps)}: {float((lg.argmax(1) == labels).float().mean()):.3f}"
                         for (norm, eps), lg in found.items())
        log(f"PGD ({adv['steps']} steps) on {len(pos)} test images in {time.time() - t0:.0f}s; accuracy {accs}")
        return out


def _radii(v: Any, value: Any, path: str, hi: float) -> list[float | int]:
    """A sorted list of distinct attack radii in [0, hi] (integers stay integers: they name keys)."""
    if not isinstance(value, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        raise v.fail(path, f"must be a list of numbers in [0, {hi:g}], got {value!r}"[:300])
    for x in value:
        if not math.isfinite(x) or x < 0 or x > hi:
            raise v.fail(path, f"{x!r} is out of range [0, {hi:g}]")
    if len({float(x) for x in value}) != len(value):
        raise v.fail(path, f"has duplicates: {value}")
    return sorted(int(x) if float(x).is_integer() else float(x) for x in value)


PROBE = AdversarialProbe()
