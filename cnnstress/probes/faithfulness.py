"""Grad-CAM faithfulness: deletion and insertion curves (mean-fill removal, most salient pixels
first) of the predicted class's probability, for Grad-CAM maps and random maps. Read by the
faithfulness section."""

from __future__ import annotations

from ..catalog import Param
from ..layout import Field
from .base import Probe

FAITHFULNESS_STEPS = 16


class FaithfulnessProbe(Probe):
    name = "faithfulness"
    keys = {"faithfulness_samples": Param(200, 0, 10_000)}
    # test images used for Grad-CAM deletion/insertion curves; 0 = off (in every run's identity)
    fields = {"faithfulness_samples": 0}
    kept = ("faithfulness_samples",)
    # any float array below faithfulness/: the curves, their positions, ROAD removal curves
    rows = (Field("faithfulness/<name>", "float32", None, chunked=True, doc="optional faithfulness array"),)
    section = "faithfulness"

    def resolve(self, v, stress, *, dataset, data_root):
        return {"faithfulness_samples": stress["faithfulness_samples"]}

    def measure(self, pred, data, spec, log):
        """Deletion and insertion curves of the predicted class's Grad-CAM maps and of random maps."""
        import numpy as np
        import torch

        from ..engine import fixed_positions

        st, test, bs = spec.stress, data.test, spec.train.eval_batch_size
        pos = fixed_positions(len(test), st.faithfulness_samples, st.corruption_seed)
        tpos = torch.from_numpy(pos).to(test.x.device)
        g = torch.Generator(device=test.x.device)
        g.manual_seed(st.corruption_seed)
        random_maps = torch.rand(data.cam_pred[tpos].shape, generator=g, device=test.x.device)
        out = {}
        for label, maps in (("gradcam", data.cam_pred[tpos]), ("random", random_maps)):
            dele, ins = pred.deletion_insertion(test.x[tpos], maps, data.preds[tpos], FAITHFULNESS_STEPS, min(bs, 256))
            out[f"faithfulness/deletion_{label}"] = dele.cpu().numpy()
            out[f"faithfulness/insertion_{label}"] = ins.cpu().numpy()
        out["faithfulness/positions"] = pos.astype(np.float32)
        return out


PROBE = FaithfulnessProbe()
