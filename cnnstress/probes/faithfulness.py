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
        import numpy as np
        import torch

        from ..engine import deletion_insertion

        st, test = spec.stress, data.test
        bs = spec.train.eval_batch_size
        m = min(st.faithfulness_samples, len(test))
        pos = np.sort(np.random.default_rng(st.corruption_seed).permutation(len(test))[:m])
        tpos = torch.from_numpy(pos).to(test.x.device)
        g = torch.Generator(device=test.x.device)
        g.manual_seed(st.corruption_seed)
        random_maps = torch.rand(data.cam_pred[tpos].shape, generator=g, device=test.x.device)
        out = {}
        for label, maps in (("gradcam", data.cam_pred[tpos]), ("random", random_maps)):
            dele, ins = deletion_insertion(pred.model, test.x[tpos], maps, data.preds[tpos], pred.mean, pred.std,
                                           pred.precision, FAITHFULNESS_STEPS, pred.channels_last,
                                           batch_size=min(bs, 256))
            out[f"faithfulness/deletion_{label}"] = dele.cpu().numpy()
            out[f"faithfulness/insertion_{label}"] = ins.cpu().numpy()
        out["faithfulness/positions"] = pos.astype(np.float32)
        return out


PROBE = FaithfulnessProbe()
