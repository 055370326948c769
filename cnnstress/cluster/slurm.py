"""``--cluster slurm``: every unfinished run as one submitit job array (split at the cluster's
MaxArraySize), then one gather job with ``--dependency=afterany:<arrays>``. One new submitit
folder per launch. The only importer of submitit."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any, Sequence

import submitit
from rich.console import Console

from ..config import RunSpec, SlurmConfig
from ..layout import SUBMITIT_DIR, submitit_launch_name
from .base import PACKAGE_ROOT, Handle, LaunchContext
from .slurmctl import (JobRequest, shell_join, Launch, SlurmError, SlurmLikeBackend, _now, _one_line, chunk_items,
                       check_controller, job_request, max_array_size, max_array_size_said, packing_lines, packs,
                       record_launch, share_parallelism)

class TrainTask(submitit.helpers.Checkpointable):
    """The submitted callable. Holds no training state: on preemption or timeout submitit calls
    ``checkpoint`` and requeues ``TrainTask()(spec_json)``, which resumes from checkpoint.pt on disk
    (never from anything pickled at submission time)."""

    def __call__(self, spec_json: str) -> dict[str, Any]:
        # Imported here so the job process sets CUDA_VISIBLE_DEVICES before torch loads.
        from .. import worker

        return worker.run(spec_json)



class PackTask(submitit.helpers.Checkpointable):
    """The submitted callable of a packed array ([slurm].runs_per_task > 1): trains its runs at
    once, one worker process each (pack.py). Requeued after a stop signal as the same task, whose
    finished runs are then skipped and the others resumed from their checkpoints."""

    def __init__(self, mps: bool = False):
        self.mps = mps

    def __call__(self, spec_jsons: list[str]) -> dict[str, str]:
        from .. import pack

        ends = pack.run_pack(spec_jsons, mps=self.mps)
        failed = [e for e in ends if e.status == "failed"]
        if failed:  # each has its FAILED.json; the task's state says that not all went well
            raise RuntimeError(f"{len(failed)} of {len(ends)} packed runs failed: "
                               + "; ".join(f"{e.run_id}: {e.detail}" for e in failed))
        return {e.run_id: e.status for e in ends}


class GatherTask:
    """The gather job: rebuilds the report with the launch's own arguments (the sweep's copy of the
    grid, --set overrides, --out, --data-root), so the report sees exactly the runs that were
    submitted. It calls the gather side (``gather.gather_as_launched``), not the command line."""

    def __call__(self, launcher_args: list[str]) -> str:
        from .. import gather  # the gather half (numpy, h5py, matplotlib), loaded only in the gather job

        return f"report written: {gather.gather_as_launched(launcher_args)}"



def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{max(1, round(mem_gb * 1024))}MB"


def _parameters(req: JobRequest) -> dict[str, Any]:
    """A JobRequest spelt as SlurmExecutor.update_parameters() arguments. gpus map to
    gpus_per_node (one task per node); 0 requests no GPU at all (no --gpus-per-node line)."""
    params: dict[str, Any] = {"job_name": req.job_name, "time": int(req.time_min), "cpus_per_task": int(req.cpus),
                              "mem": _mem(float(req.mem_gb))}
    if req.array_parallelism is not None:
        params["array_parallelism"] = int(req.array_parallelism)
    if req.signal_delay_s is not None:
        params["signal_delay_s"] = int(req.signal_delay_s)
    params["additional_parameters"] = {**({"requeue": True} if req.requeue else {}), "chdir": str(PACKAGE_ROOT),
                                       **req.additional}
    if req.gpus:
        params["gpus_per_node"] = int(req.gpus)
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(req, key):
            params[key] = getattr(req, key)
    if req.setup:
        params["setup"] = list(req.setup)
    return params


def submitit_parameters(slurm: SlurmConfig, sweep: str, array_parallelism: int | None = None) -> dict[str, Any]:
    """SlurmExecutor.update_parameters() arguments for the training array."""
    return _parameters(job_request(slurm, sweep, "array", array_parallelism))


def gather_parameters(slurm: SlurmConfig, sweep: str, dependency: str) -> dict[str, Any]:
    """Parameters of the gather job: no GPU, its own time/cpus/mem, after the arrays."""
    params = _parameters(job_request(slurm, sweep, "gather"))
    # submitit's template puts it where it lists the others; keep the old key order for the golden file
    return {**{k: params[k] for k in ("job_name", "time", "cpus_per_task", "mem")}, "dependency": dependency,
            **{k: v for k, v in params.items() if k not in ("job_name", "time", "cpus_per_task", "mem")}}


# ------------------------------------------------------------------------------------------------
# submitit executor
# ------------------------------------------------------------------------------------------------


def make_slurm_executor(folder: Path, params: dict[str, Any], max_num_timeout: int,
                        python: str | None = None) -> submitit.SlurmExecutor:
    """A SlurmExecutor with these parameters (submitit checks them against its sbatch template)."""
    try:
        executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=max_num_timeout, python=python)
    except RuntimeError as e:  # submitit: 'Could not detect "srun"'
        raise SlurmError(f"{e}: the Slurm client commands (srun, sbatch) are not on PATH here") from None
    executor.update_parameters(**params)
    return executor


class _TextOnlySlurmExecutor(submitit.SlurmExecutor):
    """Renders submitit's sbatch script without needing srun (dry runs, golden tests)."""

    @classmethod
    def affinity(cls) -> int:
        return 2


def submitit_script_text(folder: Path, params: dict[str, Any], max_num_timeout: int, map_count: int | None,
                         python: str | None = None) -> str:
    """The sbatch script submitit writes for these parameters: an array of map_count tasks, or
    one job (map_count None). Same code path as a real submission, minus sbatch."""
    executor = _TextOnlySlurmExecutor(folder=folder, max_num_timeout=max_num_timeout, python=python)
    executor.update_parameters(**params)
    if map_count is not None:
        executor.parameters["map_count"] = map_count  # what submitit sets for map_array
    return executor._make_submission_file_text(executor._submitit_command_str, "dry-run")


def new_launch_folder(parent: Path, kind: str) -> Path:
    """A fresh folder per launch: submitit matches result files by job id, and job ids restart
    when a cluster is reinstalled, so a reused folder could hand back another job's result."""
    stamp = submitit_launch_name(kind, time.strftime('%Y%m%d-%H%M%S'), os.getpid())
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 1000):
        folder = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise SlurmError(f"could not create a new launch folder under {parent}")



# ------------------------------------------------------------------------------------------------
# submitting
# ------------------------------------------------------------------------------------------------


def submit_slurm(runs: Sequence[RunSpec], slurm: SlurmConfig, sweep: str, sweep_dir: Path,
                 gather_args: list[str], console: Console, array_parallelism: int | None = None) -> Launch:
    """All runs as submitit job arrays (split at MaxArraySize), then one gather job that starts
    after every task has ended, however it ended (afterany)."""
    check_controller()
    folder = new_launch_folder(sweep_dir / SUBMITIT_DIR, SlurmBackend.name)
    launch = Launch(SlurmBackend.name, str(folder), time=_now())
    limit = max_array_size()
    tasks = packs(runs, slurm.runs_per_task)
    params = submitit_parameters(slurm, sweep, array_parallelism)
    chunks = chunk_items(len(tasks), limit)
    try:
        executor = make_slurm_executor(folder, params, slurm.max_num_timeout)
        for chunk, share in zip(chunks, share_parallelism(params["array_parallelism"], max(1, len(chunks)))):
            executor.update_parameters(array_parallelism=share)
            part = [tasks[i] for i in chunk]
            if slurm.runs_per_task == 1:
                jobs = executor.map_array(TrainTask(), [p[0].to_json() for p in part])
            else:
                jobs = executor.map_array(PackTask(slurm.mps), [[s.to_json() for s in p] for p in part])
            launch.arrays.append(str(jobs[0].job_id).split("_")[0])
            launch.runs.update({s.run_id: str(j.job_id) for p, j in zip(part, jobs) for s in p})
        dependency = "afterany:" + ":".join(launch.arrays)
        gatherer = make_slurm_executor(folder, gather_parameters(slurm, sweep, dependency), 0)
        launch.gather = str(gatherer.submit(GatherTask(), gather_args).job_id)
    except (submitit.core.utils.UncompletedJobError, submitit.core.utils.FailedSubmissionError,
            subprocess.CalledProcessError, OSError) as e:
        raise SlurmError(f"sbatch refused the submission: {_one_line(str(e))}"
                         + (f" (already submitted: arrays {', '.join(launch.arrays)})" if launch.arrays else "")) from None
    finally:
        if launch.arrays:
            record_launch(sweep_dir, launch)
    return launch




class SlurmBackend(SlurmLikeBackend):
    """``--cluster slurm``: submitit job arrays and a submitit gather job."""

    name = "slurm"

    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        limit, said = max_array_size_said()
        params = submitit_parameters(ctx.slurm, ctx.sweep, ctx.max_parallel)
        chunks = chunk_items(len(packs(runs, ctx.slurm.runs_per_task)), limit)
        folder = ctx.sweep_dir / SUBMITIT_DIR / submitit_launch_name(self.name, "<timestamp>", "<pid>")
        text = submitit_script_text(folder, params, ctx.slurm.max_num_timeout,
                                    len(chunks[0]) if len(chunks[0]) > 1 else None)
        dependency = "afterany:" + ":".join(f"<array {i + 1} id>" for i in range(len(chunks)))
        gather = submitit_script_text(folder, gather_parameters(ctx.slurm, ctx.sweep, dependency), 0, None)
        return [*packing_lines(runs, ctx.slurm, ctx.sweep_dir),
                f"would submit {len(runs)} runs as {len(chunks)} submitit job array(s) (MaxArraySize {limit}, "
                f"{said}), then one gather job; the first array's sbatch script:", text,
                "the gather job's sbatch script (it builds the report of: " + shell_join(ctx.gather_args) + "):",
                gather]

    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Handle:
        launch = submit_slurm(runs, ctx.slurm, ctx.sweep, ctx.sweep_dir, ctx.gather_args, ctx.console, ctx.max_parallel)
        return Handle(self, ctx.sweep_dir, tuple(r.run_id for r in runs), launch=launch)

    def task_log(self, folder: str, job_id: str) -> str:
        return f"{folder}/{job_id}_0_log.err"

    def gather_log(self, folder: str, job_id: str) -> str:
        return f"{folder}/{job_id}_0_log.out"
