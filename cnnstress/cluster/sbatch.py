"""``--cluster sbatch``: the Slurm launch without submitit. The static ``slurm/array.sbatch`` runs
lines of this launch's own manifest (``<sweep>/sbatch/manifest-<sha256>.jsonl``, never rewritten)
and ``slurm/gather.sbatch`` rebuilds the report; grid values travel only as sbatch arguments."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path
from typing import Sequence

from .. import atomic
from ..config import RunSpec, SlurmConfig
from ..layout import (SBATCH_DIR, SBATCH_GATHER_LOG, SBATCH_TASK_LOG, SLURM_LOGS_DIR, sbatch_manifest_name,
                      sbatch_setup_name)
from .base import PACKAGE_ROOT, Handle, LaunchContext
from .slurmctl import (JobRequest, Launch, SlurmError, SlurmLikeBackend, _now, _one_line, _slurm_cmd,
                       array_ranges, check_controller, job_request, max_array_size, max_array_size_said, packing_lines,
                       packs, record_launch, share_parallelism, shell_join, split_indices)

def _slurm_filename(path: Path) -> str:
    # '%' starts a Slurm filename pattern; a literal one is written '%%'
    return str(path).replace("%", "%%")


def _mem(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{max(1, round(mem_gb * 1024))}M"


def _options(req: JobRequest) -> list[str]:
    """A JobRequest spelt as sbatch options. Requeueing is not an option here: slurm/array.sbatch
    says ``#SBATCH --requeue`` itself."""
    argv = [f"--job-name={req.job_name}",
            *[f"--{key}={getattr(req, key)}" for key in ("partition", "account", "qos") if getattr(req, key)],
            f"--time={int(req.time_min)}", f"--cpus-per-task={int(req.cpus)}", f"--mem={_mem(float(req.mem_gb))}"]
    if req.gpus:
        argv.append(f"--gres=gpu:{int(req.gpus)}")
    if req.constraint:
        argv.append(f"--constraint={req.constraint}")
    if req.signal_delay_s is not None:
        argv.append(f"--signal=B:USR2@{int(req.signal_delay_s)}")
    return argv + [f"--{key.replace('_', '-')}={value}" for key, value in req.additional.items()]


def sbatch_array_argv(slurm: SlurmConfig, sweep: str, sweep_dir: Path, manifest: Path, python: str,
                      offset: int, task_ids: Sequence[int], setup_file: Path | None = None,
                      array_parallelism: int | None = None,
                      manifest_sha256: str = "") -> list[str]:
    """The sbatch command line of one training array of the sbatch fallback. Every grid value
    travels as an argument; slurm/array.sbatch itself is a static file. With manifest_sha256 the
    script refuses to start when the manifest is no longer the file that was submitted. Task t
    trains manifest lines (offset + t) * runs_per_task onwards, runs_per_task of them at once."""
    req = job_request(slurm, sweep, "array", array_parallelism)
    parallel = min(int(req.array_parallelism or 1), len(task_ids))
    argv = ["sbatch", "--parsable", f"--array={array_ranges(task_ids)}%{parallel}", *_options(req),
            f"--chdir={PACKAGE_ROOT}", f"--output={_slurm_filename(sweep_dir / SLURM_LOGS_DIR)}/{SBATCH_TASK_LOG}",
            str(PACKAGE_ROOT / "slurm" / "array.sbatch"), str(manifest), python, str(offset), str(slurm.max_num_timeout)]
    packed = slurm.runs_per_task > 1
    if setup_file is not None or manifest_sha256 or packed:
        argv.append(str(setup_file or ""))
    if manifest_sha256 or packed:
        argv.append(manifest_sha256)
    if packed:
        argv += [str(slurm.runs_per_task), "1" if slurm.mps else "0"]
    return argv


def sbatch_gather_argv(slurm: SlurmConfig, sweep: str, sweep_dir: Path, python: str, dependency: str,
                       gather_args: Sequence[str], setup_file: Path | None = None) -> list[str]:
    """The sbatch command line of the fallback's gather job (runs ``launch.py --gather``)."""
    return ["sbatch", "--parsable", f"--dependency={dependency}", *_options(job_request(slurm, sweep, "gather")),
            f"--chdir={PACKAGE_ROOT}", f"--output={_slurm_filename(sweep_dir / SLURM_LOGS_DIR)}/{SBATCH_GATHER_LOG}",
            str(PACKAGE_ROOT / "slurm" / "gather.sbatch"), python, str(setup_file or ""), *gather_args]


def setup_file(sweep_dir: Path, setup: Sequence[str]) -> tuple[Path, bytes] | None:
    """(path, content) of the file holding [slurm].setup for the sbatch fallback's static scripts.
    Named by its content, like the manifest: queued tasks of an earlier launch keep sourcing the
    lines they were submitted with, whatever a later launch's grid says."""
    if not setup:
        return None
    text = "# [slurm].setup of this launch's grid, sourced by slurm/array.sbatch and gather.sbatch\n"
    data = (text + "".join(line + "\n" for line in setup)).encode()
    return sweep_dir / SBATCH_DIR / sbatch_setup_name(hashlib.sha256(data).hexdigest()), data


def write_setup_file(sweep_dir: Path, setup: Sequence[str]) -> Path | None:
    """Write setup_file() (once: never rewritten, read-only) and return its path."""
    made = setup_file(sweep_dir, setup)
    if made is None:
        return None
    path, data = made
    _write_launch_file(path, data)
    return path


def _write_launch_file(path: Path, data: bytes) -> None:
    """A content-named file that queued tasks read until they end (manifest, setup lines): written
    once (an identical one is left alone) and made read-only, since nobody should edit it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.atomic_write_bytes(path, data, if_changed=True)
    path.chmod(0o444)


def launch_manifest(runs: Sequence[RunSpec], sweep_dir: Path) -> tuple[Path, bytes, str]:
    """(path, content, sha256) of the manifest an sbatch launch of these runs reads: one RunSpec
    per line, in this order. Named by its content, so it is never rewritten with other lines: a
    later launch of a changed grid cannot shift the lines under tasks that are still queued (they
    read their manifest when they start, maybe days later, and after every requeue)."""
    data = "".join(r.to_json() + "\n" for r in runs).encode()
    sha = hashlib.sha256(data).hexdigest()
    return sweep_dir / SBATCH_DIR / sbatch_manifest_name(sha), data, sha


def sbatch_plan(runs: Sequence[RunSpec], slurm: SlurmConfig, sweep: str, sweep_dir: Path, python: str,
                gather_args: list[str], max_size: int,
                array_parallelism: int | None = None) -> tuple[list[tuple[list[str], list[RunSpec], int]], list[str]]:
    """The sbatch command lines of a fallback launch: [(array argv, its tasks' runs, offset)], gather
    argv (its dependency is 'afterany:<ARRAY_IDS>' until the arrays are submitted). Line i of the
    launch's manifest (launch_manifest) is runs[i]; task t of an array trains the lines of pack
    offset + t ([slurm].runs_per_task consecutive lines; one when it is 1)."""
    runs = list(runs)
    manifest, _, sha = launch_manifest(runs, sweep_dir)
    made = setup_file(sweep_dir, slurm.setup)
    setup = made[0] if made else None
    arrays = []
    tasks_runs = packs(runs, slurm.runs_per_task)
    split = split_indices(range(len(tasks_runs)), max_size)
    shares = share_parallelism(int(array_parallelism or slurm.array_parallelism), max(1, len(split)))
    for (offset, tasks), share in zip(split, shares):
        argv = sbatch_array_argv(slurm, sweep, sweep_dir, manifest, python, offset, tasks, setup, share,
                                 manifest_sha256=sha)
        arrays.append((argv, [tasks_runs[offset + t] for t in tasks], offset))
    gather = sbatch_gather_argv(slurm, sweep, sweep_dir, python, "afterany:<ARRAY_IDS>", gather_args, setup)
    return arrays, gather


def submit_sbatch(runs: Sequence[RunSpec], slurm: SlurmConfig, sweep: str, sweep_dir: Path,
                  gather_args: list[str], array_parallelism: int | None = None) -> Launch:
    """The fallback without submitit: slurm/array.sbatch over the lines of this launch's own
    manifest, then slurm/gather.sbatch."""
    check_controller()
    (sweep_dir / SLURM_LOGS_DIR).mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    write_setup_file(sweep_dir, slurm.setup)
    runs = list(runs)
    manifest, data, _ = launch_manifest(runs, sweep_dir)
    _write_launch_file(manifest, data)
    arrays, gather = sbatch_plan(runs, slurm, sweep, sweep_dir, sys.executable, gather_args,
                                 max_array_size(), array_parallelism)
    launch = Launch(SbatchBackend.name, str(sweep_dir / SLURM_LOGS_DIR), time=_now())
    try:
        for argv, part, offset in arrays:
            job = _sbatch(argv)
            launch.arrays.append(job)
            launch.runs.update({r.run_id: f"{job}_{t}" for t, task in enumerate(part) for r in task})
        gather = [a.replace("afterany:<ARRAY_IDS>", "afterany:" + ":".join(launch.arrays)) for a in gather]
        launch.gather = _sbatch(gather)
    finally:
        if launch.arrays:
            record_launch(sweep_dir, launch)
    return launch


def _sbatch(argv: list[str]) -> str:
    res = _slurm_cmd(argv, timeout=120)
    job = res.stdout.strip().split(";")[0]
    if res.returncode != 0 or not job.isdigit():
        raise SlurmError(f"sbatch refused the job (exit {res.returncode}): {_one_line(res.stderr or res.stdout)}; "
                         f"command: {shell_join(argv)}")
    return job




#: the positional arguments of slurm/array.sbatch and slurm/gather.sbatch, as their usage lines name them
ARRAY_ARGUMENTS = ("MANIFEST", "PYTHON", "OFFSET", "MAX_REQUEUES", "SETUP_FILE", "MANIFEST_SHA256", "RUNS_PER_TASK",
                   "MPS")
GATHER_ARGUMENTS = ("PYTHON", "SETUP_FILE", "LAUNCH_ARGS...")


def named_arguments(argv: Sequence[str], script: str, names: Sequence[str]) -> str:
    """The arguments after ``script`` in an sbatch command line, each with its name: a dry run's
    second line (bare positional values such as 0, 3 and an empty string say nothing). The last
    name takes the rest."""
    at = next(i for i, a in enumerate(argv) if a.endswith("/" + script))
    values = list(argv[at + 1:])
    parts = []
    for i, name in enumerate(names):
        if i >= len(values):
            break
        value = values[i:] if name.endswith("...") else [values[i]]
        shown = shell_join(value) if value != [""] else "'' (none)"
        parts.append(f"{name}={shown}")
    return f"  {script} arguments: " + "  ".join(parts)


class SbatchBackend(SlurmLikeBackend):
    """``--cluster sbatch``: the static scripts in slurm/, no submitit."""

    name = "sbatch"

    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        limit, said = max_array_size_said()
        arrays, gather = sbatch_plan(runs, ctx.slurm, ctx.sweep, ctx.sweep_dir, sys.executable, ctx.gather_args,
                                     limit, ctx.max_parallel)
        lines = [*packing_lines(runs, ctx.slurm, ctx.sweep_dir),
                 f"would submit {len(runs)} runs as {len(arrays)} array(s) (MaxArraySize {limit}, {said}), then the "
                 "gather job:"]
        for argv, _, _ in arrays:
            lines += [shell_join(argv), named_arguments(argv, "array.sbatch", ARRAY_ARGUMENTS)]
        return [*lines, shell_join(gather), named_arguments(gather, "gather.sbatch", GATHER_ARGUMENTS)]

    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Handle:
        launch = submit_sbatch(runs, ctx.slurm, ctx.sweep, ctx.sweep_dir, ctx.gather_args, ctx.max_parallel)
        return Handle(self, ctx.sweep_dir, tuple(r.run_id for r in runs), launch=launch)

    def task_log(self, folder: str, job_id: str) -> str:  # job_id: "<array>_<task>", as %A_%a
        return f"{folder}/{SBATCH_TASK_LOG.replace('%A_%a', job_id)}"

    def gather_log(self, folder: str, job_id: str) -> str:
        return f"{folder}/{SBATCH_GATHER_LOG.replace('%j', job_id)}"
