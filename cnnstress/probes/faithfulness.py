"""Grad-CAM faithfulness: deletion and insertion curves (most salient pixels first) of the predicted
class's probability, for Grad-CAM maps and random maps; removed pixels take the dataset mean and,
with ``faithfulness_road``, also ROAD's noisy linear imputation. Read by the faithfulness section."""

from __future__ import annotations

from ..catalog import Param
from ..layout import Field
from .base import Probe

FAITHFULNESS_STEPS = 16


class FaithfulnessProbe(Probe):
    name = "faithfulness"
    keys = {"faithfulness_samples": Param(200, 0, 10_000),
            "faithfulness_road": Param(False, doc="also remove pixels by ROAD's noisy linear imputation "
                                                  "(Rong et al. 2022), beside the mean fill")}
    # test images used for Grad-CAM deletion/insertion curves; 0 = off (in every run's identity);
    # faithfulness_road false is left out of the identity, so runs from before it keep their ids
    fields = {"faithfulness_samples": 0, "faithfulness_road": False}
    kept = ("faithfulness_samples",)
    # any float array below faithfulness/: the curves, their positions, ROAD removal curves
    rows = (Field("faithfulness/<name>", "float32", None, chunked=True, doc="optional faithfulness array"),)
    section = "faithfulness"

    def resolve(self, v, stress, *, dataset, data_root):
        return {"faithfulness_samples": stress["faithfulness_samples"],
                "faithfulness_road": bool(stress["faithfulness_road"]) and stress["faithfulness_samples"] > 0}

    def measure(self, pred, data, spec, log):
        """Deletion and insertion curves of the predicted class's Grad-CAM maps and of random maps,
        mean-filled, and with ``faithfulness_road`` ROAD-imputed too (``*_road`` arrays)."""
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
        modes = ("mean", "road") if st.faithfulness_road else ("mean",)
        for mode in modes:
            # ROAD's noise from its own seeded stream, so turning it on changes no mean-fill number
            noise = torch.Generator(device=test.x.device)
            noise.manual_seed(st.corruption_seed + 1)
            suffix = "" if mode == "mean" else "_road"
            for label, maps in (("gradcam", data.cam_pred[tpos]), ("random", random_maps)):
                dele, ins = pred.deletion_insertion(test.x[tpos], maps, data.preds[tpos], FAITHFULNESS_STEPS,
                                                    min(bs, 256), removal=mode, generator=noise)
                out[f"faithfulness/deletion_{label}{suffix}"] = dele.cpu().numpy()
                out[f"faithfulness/insertion_{label}{suffix}"] = ins.cpu().numpy()
        out["faithfulness/positions"] = pos.astype(np.float32)
        return out


PROBE = FaithfulnessProbe()
