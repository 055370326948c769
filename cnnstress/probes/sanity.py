"""Explanation sanity check: Grad-CAM after cascading model-parameter randomisation (Adebayo et al.
2018; randomize.py), block by block from the output down. Read by the sanity section."""

from __future__ import annotations

from ..catalog import Param
from ..layout import Field
from .base import Probe


class SanityProbe(Probe):
    name = "sanity"
    keys = {
        "sanity": Param(False, doc="Grad-CAM after re-initialising the model block by block from the output down"),
        "sanity_samples": Param(100, 1, 10_000, doc="test images whose maps are compared"),
    }
    fields = {"sanity": {}}  # samples; {} = off
    rows = (
        Field("sanity/positions", "int32", ("S",), check="positions", doc="rows of /test whose Grad-CAM maps are re-computed"),
        Field("sanity/randomization/<step>/gradcam", "float16", ("S", "h", "w"), chunked=True,
              doc="Grad-CAM after cascading re-initialisation up to this step (00_trained: none)"),
    )
    section = "sanity"

    def measure(self, pred, data, spec, log):
        """Grad-CAM after cascading re-initialisation (randomize.cascading_randomization), for the
        trained model's predicted classes on a fixed sample of test images."""
        import numpy as np
        import torch

        from .. import randomize, store
        from ..engine import fixed_positions

        st, test = spec.stress, data.test
        pos = fixed_positions(len(test), st.sanity["samples"], st.corruption_seed)
        tpos = torch.from_numpy(pos).to(test.x.device)
        g = torch.Generator().manual_seed(st.corruption_seed)
        steps = randomize.cascading_randomization(pred, spec.gradcam_layer, test.x[tpos], data.preds[tpos], generator=g,
                                                  batch_size=min(spec.train.eval_batch_size, 256))
        out = {"sanity/positions": pos.astype(np.int32)}
        for i, (name, maps) in enumerate(steps):
            out[store.sanity_key(i, name)] = maps
        log(f"sanity check: Grad-CAM after {len(steps) - 1} cascading re-initialisations "
            f"({', '.join(n for n, _ in steps[1:])})")
        return out


PROBE = SanityProbe()
