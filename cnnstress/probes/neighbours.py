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
        """Embeddings of a fixed training subset: the same images for every run of the sweep (drawn
        with the split seed)."""
        import torch

        from ..engine import fixed_positions

        train, split = data.train, data.splits.train
        pos = fixed_positions(len(train), spec.stress.train_embedding_samples, spec.train.split_seed)
        _, temb = pred.predict(train.x, spec.train.eval_batch_size, index=torch.from_numpy(pos).to(train.x.device),
                               with_embedding=True)
        return {"train_subset/index": split.index[pos], "train_subset/label": split.y[pos],
                "train_subset/embedding": temb.cpu().numpy()}


PROBE = NeighboursProbe()
