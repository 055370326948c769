"""Embeddings of a fixed subset of the training images, for the nearest training neighbours of
test images. Read by the neighbours section."""

from __future__ import annotations

from ..catalog import Param
from ..layout import Field
from .base import Probe


class NeighboursProbe(Probe):
    name = "neighbours"
    keys = {"train_embedding_samples": Param(1000, 0, 100_000)}
    # training images whose embeddings are stored; 0 = off (in every run's identity)
    fields = {"train_embedding_samples": 0}
    kept = ("train_embedding_samples",)
    rows = (
        Field("train_subset/index", "int32", ("T",), bundle="train_subset", check="index", doc="index into the training set"),
        Field("train_subset/label", "int16", ("T",), bundle="train_subset", check="label", doc="true class"),
        Field("train_subset/embedding", "float16", ("T", "D"), bundle="train_subset", chunked=True,
              doc="penultimate activations"),
    )
    section = "neighbours"

    def resolve(self, v, stress, *, dataset, data_root):
        return {"train_embedding_samples": stress["train_embedding_samples"]}

    def measure(self, pred, data, spec, log):
        import numpy as np
        import torch

        from ..engine import predict

        train = data.train
        # the same training images for every run of the sweep (drawn with the split seed)
        n = min(spec.stress.train_embedding_samples, len(train))
        pos = np.sort(np.random.default_rng(spec.train.split_seed).permutation(len(train))[:n])
        _, temb = predict(pred.model, train.x, pred.mean, pred.std, pred.precision, spec.train.eval_batch_size,
                          pred.channels_last, index=torch.from_numpy(pos).to(train.x.device), with_embedding=True)
        return {"train_subset/index": data.splits.train.index[pos], "train_subset/label": data.splits.train.y[pos],
                "train_subset/embedding": temb.cpu().numpy()}


PROBE = NeighboursProbe()
