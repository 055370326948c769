"""Grid texts shared by tests/ and bench/: the tiny shapes grid that trains in seconds on a CPU and
the dev cluster's [slurm] table (slurm/dev-cluster.sh: one node, partition "debug", no GPU)."""

from __future__ import annotations

import json
from typing import Sequence

# [stress] keys that turn off every measurement but clean accuracy (submission tests need no more)
LEAN_STRESS = {"corruptions": "[]", "faithfulness_samples": "0", "train_embedding_samples": "0"}
# the same as launch.py --set options
LEAN = [arg for key, value in LEAN_STRESS.items() for arg in ("--set", f"stress.{key}={value}")]


def tiny_grid_text(name: str = "tiny", epochs: int = 2, extra: str = "", *, seeds: Sequence[int] = (1,),
                   n_train: int = 400, n_test: int = 200, width: int = 4, batch_size: int = 64,
                   lean: bool = False, header: str = "") -> str:
    """A shapes grid small enough to train in seconds on a CPU: baseline and flip x ``seeds``.
    ``lean`` measures clean accuracy only; ``extra`` is appended (a [slurm] table, [report] keys)."""
    stress = ("".join(f"{key} = {value}\n" for key, value in LEAN_STRESS.items()) if lean else
              'corruptions = ["gaussian_noise"]\nseverities = [1, 5]\nfaithfulness_samples = 16\n'
              "train_embedding_samples = 32\n")
    return f"""{header}
name = "{name}"
[base]
dataset = "shapes"
dataset_options = {{ n_train = {n_train}, n_test = {n_test}, shortcut = 0.8 }}
model = "simple_cnn"
model_options = {{ width = {width} }}
epochs = {epochs}
checkpoint_every_min = 0
batch_size = {batch_size}
eval_batch_size = 100
optimizer = {{ name = "adam", lr = 0.003 }}
[variants.baseline]
[variants.flip]
augment = ["flip"]
[grid]
seed = [{", ".join(str(s) for s in seeds)}]
[stress]
{stress}{extra}
"""


def dev_slurm_text(time_min: int = 10, setup: Sequence[str] = ()) -> str:
    """The [slurm] table for the dev cluster: one CPU and 1 GB a task, a short signal delay so that
    a time limit's warning reaches a tiny run, and ``setup`` lines run before each task."""
    setup_line = "setup = [" + ", ".join(json.dumps(s) for s in setup) + "]\n" if setup else ""
    return f"""
[slurm]
partition = "debug"
gpus_per_task = 0
cpus_per_task = 1
mem_gb = 1
gather_cpus = 1
gather_mem_gb = 1
time_min = {time_min}
signal_delay_s = 10
max_num_timeout = 4
{setup_line}"""
