"""Where runs execute. The only module that imports submitit and calls the Slurm commands
(scontrol, sbatch, squeue, sacct).

- ``debug``: in this process, one run after another.
- ``local``: one process per run through submitit's LocalExecutor, at most ``max_parallel`` at
  once (submitit itself would start them all), each pinned to one GPU when there are GPUs. The
  worker runs in a child of the job process, so a worker killed outright (OOM killer) still ends
  with FAILED.json and its reason.
- ``slurm``: every unfinished run as one submitit job array (split at the cluster's MaxArraySize),
  then one gather job with ``--dependency=afterany:<arrays>``. One new submitit folder per launch.
- ``sbatch``: the same without submitit: the static ``slurm/array.sbatch`` over lines of this
  launch's own manifest (``<sweep>/sbatch/manifest-<sha256>.jsonl``, never rewritten) and
  ``slurm/gather.sbatch``; grid values travel only as sbatch arguments.

Every Slurm launch is appended to ``<sweep>/launches.jsonl`` (job ids, run -> array task), which
``run_statuses`` combines with the files on disk and ``squeue`` (``sacct`` only if it answers).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import submitit
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import atomic, states, store
from .claims import claim_holder
from .layout import EXIT_BUSY, LAUNCHES_FILE, LAUNCHES_LOCK, PROGRESS_FILE, RUNS_DIR, SPEC_FILE
from .config import RunSpec

LOCAL_TIMEOUT_MIN = 60 * 24 * 7  # submitit's LocalExecutor kills jobs after 2 minutes by default


class TrainTask(submitit.helpers.Checkpointable):
    """The submitted callable. Holds no training state: on preemption or timeout submitit calls
    ``checkpoint`` and requeues ``TrainTask()(spec_json)``, which resumes from checkpoint.pt on disk
    (never from anything pickled at submission time)."""

    def __call__(self, spec_json: str) -> dict[str, Any]:
        # Imported here so the job process sets CUDA_VISIBLE_DEVICES before torch loads.
        from . import worker

        return worker.run(spec_json)


class RunFailed(RuntimeError):
    """A local run ended without a result; the message is the reason (as in FAILED.json)."""


class LocalTrainTask:
    """The callable of a ``--cluster local`` job: runs the worker in a child process and watches
    how it ends. The kernel's OOM killer ends a run with SIGKILL, which no Python code in the
    dying process can catch, and submitit's local controller drops its tasks' exit status; this
    parent survives the child, so it can record why the run ended (FAILED.json) instead of leaving
    a run that looks 'partial' with no reason."""

    def __init__(self, worker_argv: Sequence[str] | None = None):
        # the command that trains a spec file (tests put a stand-in here); it gets "--spec FILE"
        self.worker_argv = list(worker_argv) if worker_argv else None

    def __call__(self, spec_json: str, run_dir: str, device: str = "") -> dict[str, Any]:
        """device: the CUDA_VISIBLE_DEVICES entry of the one GPU this run may use ("2", a
        "GPU-<uuid>"), or "" for none (CPU). Set here, for the worker alone: submitit's own
        visible_gpus takes only integers and renumbers nothing, so it cannot pass a parent's
        CUDA_VISIBLE_DEVICES=2,3 or UUIDs through."""
        import tempfile

        argv = self.worker_argv or [sys.executable, "-m", "cnnstress.worker"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        with tempfile.TemporaryDirectory(prefix="cnnstress-spec-") as tmp:
            spec_file = Path(tmp) / SPEC_FILE
            spec_file.write_text(spec_json)
            # stderr is this job's log file (inherited); stdout is read to get the result line
            proc = subprocess.Popen([*argv, "--spec", str(spec_file)], cwd=PACKAGE_ROOT, env=env,
                                    stdout=subprocess.PIPE, text=True)
            last = ""
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                last = line.strip() or last
            rc = proc.wait()
        if rc == 0:
            return json.loads(last)
        if rc == EXIT_BUSY:  # worker.main: another live process holds the run
            raise RuntimeError(f"RunBusy: another live process holds {run_dir}")
        state = store.run_state(Path(run_dir), verify_hash=False)
        if state.status == "failed":  # the worker wrote its reason
            raise RunFailed(state.reason)
        reason = record_unreported_end(Path(run_dir), rc)
        raise RunFailed(reason or f"the worker exited with status {rc}")


@dataclass
class Outcome:
    run_id: str
    status: str  # done | skipped | failed | busy
    detail: str = ""
    summary: dict[str, Any] | None = None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries that name them to a child
    process ("2", "GPU-<uuid>", "MIG-<uuid>"), without importing torch. A parent's
    CUDA_VISIBLE_DEVICES=2,3 gives ["2", "3"]: a child pinned with "0" would use physical GPU 0,
    which this process was not given."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        out = []
        for entry in (x.strip() for x in env.split(",")):
            if not entry or entry.startswith("-"):  # CUDA ignores everything from an invalid entry on
                break
            out.append(entry)
        return out
    try:
        res = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):  # no driver, no GPUs
        return []
    return parse_nvidia_smi_list(res.stdout) if res.returncode == 0 else []


#: Asked in a child process: the launcher itself never initialises CUDA (a CUDA context is not
#: inherited by forked children, and would hold memory on a GPU the runs need).
TORCH_DEVICE_COUNT = "import torch; print(torch.cuda.device_count())"
#: Files a machine with an NVIDIA driver has, whether or not nvidia-smi is installed.
NVIDIA_DEVICE_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version")


@dataclass
class GpuCensus:
    """The GPUs ``--cluster local`` pins its runs to, and a warning when runs will train on the
    CPU of a machine that has a GPU."""

    devices: list[str]
    torch_count: int | None  # None: not asked (no sign of a GPU) or the child failed
    warning: str = ""


def local_gpu_census(python: str = sys.executable, device_files: Sequence[str] = NVIDIA_DEVICE_FILES) -> GpuCensus:
    """Count GPUs as torch does, not as nvidia-smi does: with nvidia-smi missing or failing, or with
    a CPU-only torch build, the runs used to train on the CPU of a GPU machine without a word.

    The CUDA_VISIBLE_DEVICES entries (or, when it is unset, nvidia-smi's devices) are kept only as
    far as torch sees them: the first ``torch.cuda.device_count()`` of them (CUDA enumerates the
    listed devices in order), or indices 0..n-1 when nvidia-smi is missing. Where there is no sign
    of an NVIDIA GPU at all (no CUDA_VISIBLE_DEVICES entries, no nvidia-smi device, no driver
    files), torch is not asked: it could not see one either."""
    explicit = os.environ.get("CUDA_VISIBLE_DEVICES")
    named = visible_gpus()
    driver = [f for f in device_files if os.path.exists(f)]
    if explicit is not None and not named:
        return GpuCensus([], None)  # CUDA_VISIBLE_DEVICES='' : the user asked for the CPU
    if not named and not driver:
        return GpuCensus([], None)
    count = torch_gpu_count(python)
    if count is None:
        devices: list[str] = []
    elif named:
        devices = named[:count]
    else:
        devices = [str(i) for i in range(count)]
    warning = ""
    if not devices:
        evidence = (f"nvidia-smi lists {', '.join(named)}" if named and explicit is None else
                    f"CUDA_VISIBLE_DEVICES={explicit}" if named else f"the NVIDIA driver is loaded ({driver[0]})")
        why = ("the check failed" if count is None else
               "torch.cuda.device_count() is 0: a CPU-only torch build, or a driver too old for its CUDA")
        warning = (f"WARNING: this machine has a GPU ({evidence}) but torch sees none ({why}): every run will "
                   "train on the CPU. Install a CUDA build of torch, or set CUDA_VISIBLE_DEVICES='' to say the "
                   "CPU is meant.")
    return GpuCensus(devices, count, warning)


def torch_gpu_count(python: str = sys.executable) -> int | None:
    """``torch.cuda.device_count()`` in a child process with this environment; None if it fails."""
    try:
        res = subprocess.run([python, "-c", TORCH_DEVICE_COUNT], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return None
    try:
        return int(res.stdout.strip().splitlines()[-1]) if res.returncode == 0 else None
    except (ValueError, IndexError):
        return None


def parse_nvidia_smi_list(text: str) -> list[str]:
    """``nvidia-smi -L`` -> device UUIDs: a GPU's own, or its MIG instances' when it is split.
    UUIDs, not indices: nvidia-smi counts GPUs in PCI order, CUDA by default fastest first."""
    out: list[str] = []
    gpu: str | None = None
    migs: list[str] = []
    for line in [*text.splitlines(), "GPU end"]:
        stripped = line.strip()
        m = re.search(r"\(UUID: ((?:GPU|MIG)-[^)\s]+)\)", stripped)
        if stripped.startswith("GPU "):
            if gpu is not None:
                out.extend(migs or [gpu])
            gpu, migs = (m.group(1) if m else None), []
        elif stripped.startswith("MIG ") and m:
            migs.append(m.group(1))
    return out


def run_debug(runs: Sequence[RunSpec], console: Console) -> list[Outcome]:
    """Run in this process, one after the other (for debuggers and tests)."""
    from . import worker

    outcomes = []
    for spec in runs:
        try:
            res = worker.run(spec)
            outcomes.append(Outcome(spec.run_id, res["status"], summary=res))
        except worker.RunBusy as e:
            outcomes.append(Outcome(spec.run_id, "busy", str(e)))
        except Exception as e:  # noqa: BLE001 - recorded in FAILED.json; go on with the others
            outcomes.append(Outcome(spec.run_id, "failed", f"{type(e).__name__}: {e}"))
            console.print(f"[red]run {spec.run_id} failed[/red]: {type(e).__name__}: {e}")
    return outcomes


def run_local(runs: Sequence[RunSpec], sweep_dir: Path, console: Console, max_parallel: int | None = None,
              poll_s: float = 0.5, task: LocalTrainTask | None = None) -> list[Outcome]:
    """One process per run via submitit's LocalExecutor, throttled to ``max_parallel``, which
    is capped to the number of visible GPUs when there are any (each run gets one of its own)."""
    census = local_gpu_census()
    if census.warning:
        console.print(census.warning, style="bold red", markup=False)
    gpus = census.devices
    if max_parallel is None:
        max_parallel = max(1, len(gpus))
    elif gpus and max_parallel > len(gpus):
        # a run started without a free GPU would get none and train on the CPU, silently and slowly
        console.print(f"note: --max-parallel {max_parallel} capped to {len(gpus)}: one run per visible GPU "
                      f"({', '.join(gpus)}); to train on the CPU instead, set CUDA_VISIBLE_DEVICES=''",
                      markup=False)
        max_parallel = len(gpus)
    folder = sweep_dir / "submitit" / f"local-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    executor = submitit.LocalExecutor(folder=folder)
    # the job process itself needs no GPU; LocalTrainTask pins its worker to `gpu`
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0)
    task = task or LocalTrainTask()
    queue = list(runs)
    active: dict[str, tuple[Any, RunSpec, str | None]] = {}
    free = list(gpus)
    outcomes: list[Outcome] = []
    with _progress(console) as progress:
        overall = progress.add_task("runs", total=len(queue))
        bars: dict[str, Any] = {}
        while queue or active:
            while queue and len(active) < max_parallel:
                spec = queue.pop(0)
                gpu = free.pop(0) if free else None  # never None when there are GPUs (capped above)
                job = executor.submit(task, spec.to_json(), str(sweep_dir / RUNS_DIR / spec.run_id), gpu or "")
                active[spec.run_id] = (job, spec, gpu)
                bars[spec.run_id] = progress.add_task(spec.run_id, total=spec.train.epochs)
            for rid, (job, spec, gpu) in list(active.items()):
                done_epochs = _progress_epochs(sweep_dir / RUNS_DIR / rid)
                progress.update(bars[rid], completed=done_epochs)
                if not job.done():
                    continue
                del active[rid]
                if gpu is not None:
                    free.append(gpu)
                oc = _outcome(job, spec, folder)
                if oc.status == "failed":
                    # FAILED.json holds the reason (submitit's exception text ends with log paths);
                    # if even the task process died, nobody wrote one yet
                    run_dir = sweep_dir / RUNS_DIR / rid
                    state = store.run_state(run_dir, verify_hash=False)
                    reason = state.reason if state.status == "failed" else record_unreported_end(run_dir, None)
                    if reason:
                        oc.detail = f"{reason} (logs: {folder})"
                outcomes.append(oc)
                progress.update(bars[rid], completed=spec.train.epochs, visible=False)
                progress.advance(overall)
                oc = outcomes[-1]
                colour = {"done": "green", "skipped": "green", "failed": "red"}.get(oc.status, "yellow")
                console.print(f"[{colour}]{oc.status:>7}[/{colour}] {rid} {oc.detail}")
            time.sleep(poll_s)
    return outcomes


def _outcome(job: Any, spec: RunSpec, folder: Path) -> Outcome:
    try:
        res = job.result()
        return Outcome(spec.run_id, res["status"], summary=res)
    except Exception as e:  # noqa: BLE001 - submitit wraps the worker's exception
        text = str(e)
        status = "busy" if "RunBusy" in text else "failed"
        last = [line for line in text.strip().splitlines() if line.strip()]
        detail = last[-1] if last else type(e).__name__
        return Outcome(spec.run_id, status, f"{detail} (logs: {folder})")


SIGNAL_CAUSES = {"SIGKILL": "out of memory, or killed by hand", "SIGTERM": "stopped by the system or by hand",
                 "SIGSEGV": "crashed in native code", "SIGBUS": "crashed in native code",
                 "SIGABRT": "aborted in native code"}


def record_unreported_end(run_dir: Path, exit_status: int | None) -> str | None:
    """A local job that ended with neither DONE.json nor FAILED.json died where the worker could
    not write its reason (the kernel's OOM killer sends SIGKILL, which nothing can catch). Write
    FAILED.json for it, in the worker's own format, so --status, --rerun-failed and the report see
    a failed run with a reason instead of a 'partial' one. Returns the reason written, else None."""
    state = store.run_state(run_dir, verify_hash=False)
    if state.status in ("done", "failed") or not run_dir.is_dir():
        return None
    if exit_status is not None and exit_status < 0:
        import signal

        try:
            name = signal.Signals(-exit_status).name
        except ValueError:
            name = f"signal {-exit_status}"
        cause = SIGNAL_CAUSES.get(name)
        how = f"killed by signal {-exit_status} ({name}{': ' + cause if cause else ''})"
    elif exit_status is not None:
        how = f"its process exited with status {exit_status} without a result"
    else:
        how = "its process ended without a result"
    if any((run_dir / name).exists() for name in store.CHECKPOINT_NAMES):
        after = f" after epoch {_progress_epochs(run_dir)}" if _progress_epochs(run_dir) else ""
        rest = f"checkpoint{after} kept, relaunch resumes"
    else:
        rest = "no checkpoint yet, relaunch starts it over"
    reason = f"{how}; {rest}"
    try:
        store.write_failed(run_dir, reason, "written by the launcher: the worker process could not report")
    except OSError:
        return None
    return reason


def _progress_epochs(run_dir: Path) -> int:
    try:
        return int(json.loads((run_dir / PROGRESS_FILE).read_text())["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=False)


# ================================================================================================
# Slurm: submitit job arrays (--cluster slurm) and the static sbatch scripts (--cluster sbatch)
# ================================================================================================

# Where the package lives: jobs run with this as their working directory, so that
# ``python -m cnnstress.worker`` and submitit's unpickling find the package even when it is not
# installed into the interpreter (an editable install works either way).
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MAX_ARRAY_SIZE = 1001  # Slurm's default MaxArraySize
CMD_TIMEOUT_S = 30

# Slurm job states (squeue %T / sacct State), grouped by what they mean for a run.
PENDING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
                            "STOPPED", "SPECIAL_EXIT"})
RUNNING_STATES = frozenset({"RUNNING", "CONFIGURING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING"})
ACTIVE_STATES = PENDING_STATES | RUNNING_STATES
# Everything else (COMPLETED, FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, NODE_FAIL, PREEMPTED,
# BOOT_FAIL, DEADLINE, REVOKED) means the job has ended.

# [slurm].additional may not set what cnnstress sets itself (or has a [slurm] key for).
RESERVED_SBATCH = {
    "array": "cnnstress builds the array from the unfinished runs",
    "output": "logs go to the sweep's folder", "error": "logs go to the sweep's folder",
    "open_mode": "requeued tasks append to their log", "parsable": "cnnstress reads the job id",
    "wrap": "the job script is cnnstress's", "dependency": "the gather job depends on the arrays",
    "signal": "use [slurm].signal_delay_s", "job_name": "the job name is cnnstress-<sweep>",
    "partition": "use [slurm].partition", "account": "use [slurm].account", "qos": "use [slurm].qos",
    "constraint": "use [slurm].constraint", "time": "use [slurm].time_min", "mem": "use [slurm].mem_gb",
    "cpus_per_task": "use [slurm].cpus_per_task", "gpus_per_node": "use [slurm].gpus_per_task",
    "gres": "use [slurm].gpus_per_task", "requeue": "tasks are always requeueable",
    # submitit lets additional parameters replace its own lines, and sbatch takes the last of two
    "chdir": "jobs run in the cnnstress package folder, where the worker and submitit's pickles import it",
    "nodes": "each run is one task on one node", "ntasks": "each run is one task on one node",
    "ntasks_per_node": "each run is one task on one node (more would train the run several times at once)",
    "mem_per_cpu": "use [slurm].mem_gb (sbatch refuses it next to --mem)",
    "mem_per_gpu": "use [slurm].mem_gb (sbatch refuses it next to --mem)",
    "gpus": "use [slurm].gpus_per_task", "gpus_per_task": "use [slurm].gpus_per_task",
}


class SlurmError(RuntimeError):
    """Slurm cannot be used or refused a submission; the message says what to do."""


class GatherTask:
    """The gather job: rebuilds the report with the launch's own arguments (the sweep's copy of the
    grid, --set overrides, --out, --data-root), so the report sees exactly the runs that were
    submitted. It calls the gather side (``gather.gather_as_launched``), not the command line."""

    def __call__(self, launcher_args: list[str]) -> str:
        from . import gather  # the gather half (numpy, h5py, matplotlib), loaded only in the gather job

        return f"report written: {gather.gather_as_launched(launcher_args)}"


def gather_arguments(grid_copy: Path, out_root: Path, data_root: Path, overrides: Sequence[str]) -> list[str]:
    """launch.py arguments that rebuild exactly this sweep (the gather job adds --gather)."""
    args = ["--grid", str(grid_copy), "--out", str(out_root), "--data-root", str(data_root)]
    for text in overrides:
        args += ["--set", text]
    return args


# ------------------------------------------------------------------------------------------------
# talking to the controller
# ------------------------------------------------------------------------------------------------


def _slurm_cmd(argv: Sequence[str], timeout: float = CMD_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run a Slurm client command (never through a shell). A missing command or a hang becomes a
    CompletedProcess with returncode 127 / 124 and the reason in stderr."""
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return subprocess.CompletedProcess(list(argv), 127, "", f"{argv[0]}: command not found")
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(argv), 124, "", f"{argv[0]}: no answer within {timeout:g} s")


def check_controller() -> None:
    """Fail fast (SlurmError) unless ``scontrol ping`` says the controller is UP. submitit alone
    would pick Slurm whenever srun is on PATH and then hang or fail obscurely."""
    res = _slurm_cmd(["scontrol", "ping"], timeout=15)
    text = (res.stdout + res.stderr).strip()
    if res.returncode == 0 and "is UP" in res.stdout:
        return
    raise SlurmError(
        "the Slurm controller does not answer (`scontrol ping`: "
        f"{' '.join(text.split()) or f'exit status {res.returncode}'}). "
        "On the dev machine start it with `sudo bash slurm/dev-cluster.sh up`; on a real cluster run this "
        "on a login node or ask your admin whether slurmctld is up; or use --cluster local.")


def max_array_size() -> int:
    """MaxArraySize from ``scontrol show config`` (Slurm's default 1001 when it cannot be read)."""
    res = _slurm_cmd(["scontrol", "show", "config"])
    return parse_max_array_size(res.stdout) if res.returncode == 0 else DEFAULT_MAX_ARRAY_SIZE


def parse_max_array_size(config_text: str) -> int:
    m = re.search(r"^\s*MaxArraySize\s*=\s*(\d+)", config_text, re.MULTILINE)
    return int(m.group(1)) if m and int(m.group(1)) > 0 else DEFAULT_MAX_ARRAY_SIZE


# ------------------------------------------------------------------------------------------------
# [slurm] -> submitit / sbatch parameters (pure functions)
# ------------------------------------------------------------------------------------------------


def _check_additional(additional: dict[str, Any]) -> dict[str, Any]:
    for key in additional:
        if key in RESERVED_SBATCH:
            raise ValueError(f"[slurm].additional.{key}: cannot be set here ({RESERVED_SBATCH[key]}); "
                             f"reserved names: {', '.join(sorted(RESERVED_SBATCH))}")
    return dict(additional)


def _mem_submitit(mem_gb: float) -> str:
    return f"{int(mem_gb)}GB" if mem_gb == int(mem_gb) else f"{max(1, round(mem_gb * 1024))}MB"


def _mem_sbatch(mem_gb: float) -> str:
    return f"{int(mem_gb)}G" if mem_gb == int(mem_gb) else f"{max(1, round(mem_gb * 1024))}M"


def submitit_parameters(slurm: dict[str, Any], sweep: str, array_parallelism: int | None = None) -> dict[str, Any]:
    """SlurmExecutor.update_parameters() arguments for the training array, from the grid's
    validated [slurm] table. gpus_per_task maps to gpus_per_node (one task per node); 0 requests
    no GPU at all (no --gpus-per-node line), which a cluster without GPUs requires."""
    params: dict[str, Any] = {
        "job_name": f"cnnstress-{sweep}",
        "time": int(slurm["time_min"]),
        "cpus_per_task": int(slurm["cpus_per_task"]),
        "mem": _mem_submitit(float(slurm["mem_gb"])),
        "array_parallelism": int(array_parallelism or slurm["array_parallelism"]),
        "signal_delay_s": int(slurm["signal_delay_s"]),
        "additional_parameters": {"requeue": True, "chdir": str(PACKAGE_ROOT),
                                  **_check_additional(slurm["additional"])},
    }
    if slurm["gpus_per_task"]:
        params["gpus_per_node"] = int(slurm["gpus_per_task"])
    for key in ("partition", "account", "qos", "constraint"):
        if slurm[key]:
            params[key] = slurm[key]
    if slurm["setup"]:
        params["setup"] = list(slurm["setup"])
    return params


def gather_parameters(slurm: dict[str, Any], sweep: str, dependency: str) -> dict[str, Any]:
    """Parameters of the gather job: no GPU, its own time/cpus/mem, after the arrays."""
    params: dict[str, Any] = {
        "job_name": f"cnnstress-{sweep}-gather",
        "time": int(slurm["gather_time_min"]),
        "cpus_per_task": int(slurm["gather_cpus"]),
        "mem": _mem_submitit(float(slurm["gather_mem_gb"])),
        "dependency": dependency,
        "additional_parameters": {"chdir": str(PACKAGE_ROOT), **_check_additional(slurm["additional"])},
    }
    for key in ("partition", "account", "qos"):
        if slurm[key]:
            params[key] = slurm[key]
    if slurm["setup"]:
        params["setup"] = list(slurm["setup"])
    return params


def chunk_items(n: int, max_array_size: int) -> list[range]:
    """Split n array tasks (indices 0..n-1 each) into arrays of at most max_array_size tasks."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    return [range(i, min(i + max_array_size, n)) for i in range(0, n, max_array_size)]


def share_parallelism(total: int, n_arrays: int) -> list[int]:
    """The %N limit of each of the n arrays one launch is split into. They are submitted together
    and run at once, so each getting the whole [slurm].array_parallelism would let the launch run
    n times that many tasks; the shares sum to ``total`` instead (at least 1 each, so with more
    arrays than ``total`` the launch runs one task per array)."""
    if n_arrays < 1:
        raise ValueError(f"n_arrays must be at least 1, got {n_arrays}")
    base, extra = divmod(int(total), n_arrays)
    return [max(1, base + (i < extra)) for i in range(n_arrays)]


def split_indices(indices: Sequence[int], max_array_size: int) -> list[tuple[int, list[int]]]:
    """Manifest lines -> arrays whose task ids all stay below MaxArraySize: [(offset, task ids)],
    where line = offset + task id. Lines are taken in order; each array starts at its first line."""
    if max_array_size < 1:
        raise ValueError(f"max_array_size must be at least 1, got {max_array_size}")
    rest = sorted(set(indices))
    if any(i < 0 for i in rest):
        raise ValueError(f"manifest indices must be >= 0, got {rest[0]}")
    out: list[tuple[int, list[int]]] = []
    while rest:
        offset = rest[0]
        take = [i for i in rest if i < offset + max_array_size]
        out.append((offset, [i - offset for i in take]))
        rest = rest[len(take):]
    return out


def array_ranges(task_ids: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (sbatch --array syntax)."""
    ids = sorted(set(task_ids))
    parts, i = [], 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def _slurm_filename(path: Path) -> str:
    # '%' starts a Slurm filename pattern; a literal one is written '%%'
    return str(path).replace("%", "%%")


def sbatch_array_argv(slurm: dict[str, Any], sweep: str, sweep_dir: Path, manifest: Path, python: str,
                      offset: int, task_ids: Sequence[int], setup_file: Path | None = None,
                      array_parallelism: int | None = None, repo: Path = PACKAGE_ROOT,
                      manifest_sha256: str = "") -> list[str]:
    """The sbatch command line of one training array of the sbatch fallback. Every grid value
    travels as an argument; slurm/array.sbatch itself is a static file. With manifest_sha256 the
    script refuses to start when the manifest is no longer the file that was submitted."""
    parallel = int(array_parallelism or slurm["array_parallelism"])
    argv = ["sbatch", "--parsable", f"--array={array_ranges(task_ids)}%{min(parallel, len(task_ids))}",
            f"--job-name=cnnstress-{sweep}", *_common_sbatch(slurm),
            f"--time={int(slurm['time_min'])}", f"--cpus-per-task={int(slurm['cpus_per_task'])}",
            f"--mem={_mem_sbatch(float(slurm['mem_gb']))}"]
    if slurm["gpus_per_task"]:
        argv.append(f"--gres=gpu:{int(slurm['gpus_per_task'])}")
    if slurm["constraint"]:
        argv.append(f"--constraint={slurm['constraint']}")
    argv += [f"--signal=B:USR2@{int(slurm['signal_delay_s'])}", *_additional_sbatch(slurm),
             f"--chdir={repo}", f"--output={_slurm_filename(sweep_dir / 'slurm-logs')}/%A_%a.out",
             str(repo / "slurm" / "array.sbatch"), str(manifest), python, str(offset),
             str(int(slurm["max_num_timeout"]))]
    if setup_file is not None or manifest_sha256:
        argv.append(str(setup_file or ""))
    if manifest_sha256:
        argv.append(manifest_sha256)
    return argv


def sbatch_gather_argv(slurm: dict[str, Any], sweep: str, sweep_dir: Path, python: str, dependency: str,
                       gather_args: Sequence[str], setup_file: Path | None = None,
                       repo: Path = PACKAGE_ROOT) -> list[str]:
    """The sbatch command line of the fallback's gather job (runs ``launch.py --gather``)."""
    return ["sbatch", "--parsable", f"--dependency={dependency}", f"--job-name=cnnstress-{sweep}-gather",
            *_common_sbatch(slurm), f"--time={int(slurm['gather_time_min'])}",
            f"--cpus-per-task={int(slurm['gather_cpus'])}", f"--mem={_mem_sbatch(float(slurm['gather_mem_gb']))}",
            *_additional_sbatch(slurm), f"--chdir={repo}",
            f"--output={_slurm_filename(sweep_dir / 'slurm-logs')}/gather-%j.out",
            str(repo / "slurm" / "gather.sbatch"), python, str(setup_file or ""), *gather_args]


def _common_sbatch(slurm: dict[str, Any]) -> list[str]:
    return [f"--{key}={slurm[key]}" for key in ("partition", "account", "qos") if slurm[key]]


def _additional_sbatch(slurm: dict[str, Any]) -> list[str]:
    return [f"--{key.replace('_', '-')}={value}" for key, value in _check_additional(slurm["additional"]).items()]


def shell_join(argv: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


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
    stamp = f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
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
# launches.jsonl: what was submitted, for --status and --wait
# ------------------------------------------------------------------------------------------------


@dataclass
class Launch:
    """One submission: the job ids and where each run went."""

    cluster: str
    folder: str  # submitit folder (slurm) or slurm-logs folder (sbatch)
    arrays: list[str] = field(default_factory=list)
    gather: str | None = None
    runs: dict[str, str] = field(default_factory=dict)  # run_id -> "<array>_<task>"
    time: str = ""

    def job_ids(self) -> list[str]:
        return [*self.arrays, *([self.gather] if self.gather else [])]

    def log_for(self, job_id: str) -> str:
        """Where a task's output goes."""
        if self.cluster == "slurm":
            return f"{self.folder}/{job_id}_0_log.err"
        return f"{self.folder}/{job_id}.out"

    def gather_log(self) -> str:
        if not self.gather:
            return ""
        if self.cluster == "slurm":
            return f"{self.folder}/{self.gather}_0_log.out"
        return f"{self.folder}/gather-{self.gather}.out"

    def to_dict(self) -> dict[str, Any]:
        return {"time": self.time, "cluster": self.cluster, "folder": self.folder, "arrays": self.arrays,
                "gather": self.gather, "runs": self.runs}


def record_launch(sweep_dir: Path, launch: Launch) -> None:
    """Append one line to <sweep>/launches.jsonl (rewritten atomically: never a half line).

    Read, append and replace happen under an exclusive flock on launches.jsonl.lock: two launches
    of one sweep finishing at once would otherwise each rewrite the file from the same old content
    and one line (jobs --status and --wait then never hear of) would be lost. Readers need no lock,
    since they only ever see a whole old or a whole new file."""
    import fcntl

    path = sweep_dir / LAUNCHES_FILE
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LAUNCHES_LOCK, "a") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file is closed
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        atomic.atomic_write_bytes(path, old + (json.dumps(launch.to_dict(), sort_keys=True) + "\n").encode())


def read_launches(sweep_dir: Path) -> list[Launch]:
    """The launches recorded for a sweep, oldest first (unreadable lines are skipped)."""
    path = sweep_dir / LAUNCHES_FILE
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            d = json.loads(line)
            out.append(Launch(cluster=str(d["cluster"]), folder=str(d["folder"]),
                              arrays=[str(a) for a in d.get("arrays", [])], gather=d.get("gather"),
                              runs={str(k): str(v) for k, v in d.get("runs", {}).items()}, time=str(d.get("time", ""))))
        except (ValueError, KeyError, TypeError, AttributeError):
            continue
    return out


def latest_jobs(launches: Sequence[Launch]) -> dict[str, tuple[str, Launch]]:
    """run_id -> (job id, launch) of the most recent submission of each run."""
    out: dict[str, tuple[str, Launch]] = {}
    for launch in launches:
        for run_id, job in launch.runs.items():
            out[run_id] = (job, launch)
    return out


# ------------------------------------------------------------------------------------------------
# job states: squeue first (works everywhere), sacct only if accounting answers
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str  # squeue %T / sacct State, first word ("CANCELLED by 0" -> CANCELLED)
    reason: str = ""  # squeue %r (why pending) or sacct ExitCode
    source: str = "squeue"

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


@dataclass
class JobQuery:
    """Result of asking Slurm about some job ids."""

    jobs: dict[str, JobInfo]
    ok: bool  # squeue answered (an empty answer is then trustworthy)
    notes: list[str] = field(default_factory=list)


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """Lines '%i|%T|%r' -> job id -> JobInfo."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0]:
            out[parts[0]] = JobInfo(parts[0], parts[1].split()[0] if parts[1] else "UNKNOWN",
                                    parts[2] if len(parts) > 2 and parts[2] != "None" else "")
    return out


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """Lines 'JobID|State|ExitCode' (sacct -n -P -X) -> job id -> JobInfo. Collapsed pending
    array lines ('12_[3-5]') are skipped: squeue knows those."""
    out = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) >= 2 and parts[0] and "[" not in parts[0]:
            state = parts[1].split()[0] if parts[1] else "UNKNOWN"
            out[parts[0]] = JobInfo(parts[0], state, f"exit {parts[2]}" if len(parts) > 2 and parts[2] else "", "sacct")
    return out


def query_jobs(job_ids: Sequence[str], use_sacct: bool = True) -> JobQuery:
    """States of these jobs (array ids are expanded into '<array>_<task>'). squeue -t all also
    shows jobs that ended less than MinJobAge ago; sacct is asked about the rest, and its failure
    (no accounting) only costs detail."""
    mains = sorted({j.split("_")[0] for j in job_ids if j}, key=lambda x: (len(x), x))
    if not mains:
        return JobQuery({}, True)
    res = _slurm_cmd(["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r", f"--jobs={','.join(mains)}"])
    notes = []
    if res.returncode == 0:
        jobs, ok = parse_squeue(res.stdout), True
    elif "Invalid job id" in res.stderr:
        jobs, ok = {}, True  # every id has been purged from the controller's memory
    else:
        jobs, ok = {}, False
        notes.append(f"squeue failed: {' '.join((res.stderr or res.stdout).split())[:200]}")
    unknown = [j for j in job_ids if j not in jobs and not any(k.startswith(j + "_") for k in jobs)]
    if use_sacct and unknown:
        sres = _slurm_cmd(["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode",
                           f"--jobs={','.join(sorted({j.split('_')[0] for j in unknown}))}"])
        if sres.returncode == 0:
            for jid, info in parse_sacct(sres.stdout).items():
                jobs.setdefault(jid, info)
        else:
            notes.append("sacct unavailable (no accounting?): jobs that left squeue are judged from files only")
    return JobQuery(jobs, ok, notes)


# ------------------------------------------------------------------------------------------------
# run status: files first, then the recorded job's state
# ------------------------------------------------------------------------------------------------

RUN_STATUSES = states.ALL  # the one vocabulary (states.py)


@dataclass
class RunStatus:
    run_id: str
    status: str  # one of RUN_STATUSES
    detail: str = ""
    epoch: int = 0
    epochs: int = 0
    job_id: str = ""
    log: str = ""
    summary: dict[str, Any] | None = None


def classify(disk: store.RunState, job: JobInfo | None, claim: dict[str, Any] | None,
             epoch: int = 0, job_id: str = "", squeue_ok: bool = False) -> tuple[str, str]:
    """(status, detail) of one run from its files, its latest job's state and a live claim.

    DONE.json wins; a queued or running job comes next (a failed run being retried is pending);
    then FAILED.json / a broken DONE.json; then a job that ended without DONE.json is failed
    (time limit, out of memory, cancelled, killed: the worker could not write FAILED.json).
    job_id is the run's recorded job; when squeue answered and no longer lists it (and sacct could
    not say more), that job has ended too: Slurm forgets ended jobs after MinJobAge, and calling
    the run 'partial' would keep --rerun-failed from ever resubmitting it."""
    if disk.status == "done":
        return "done", ""
    if job is not None and job.state in PENDING_STATES:
        why = f" ({job.reason})" if job.reason else ""
        return "pending", f"job {job.job_id} {job.state.lower()}{why}"
    if job is not None and job.state in RUNNING_STATES:
        return "running", f"job {job.job_id}"
    if claim is not None:
        return "running", f"claimed by pid {claim.get('pid')} on {claim.get('host')}"
    if disk.status in ("failed", "broken"):
        return disk.status, disk.reason
    after = f"; checkpoint after epoch {epoch}" if epoch else ""
    if job is not None:
        extra = f", {job.reason}" if job.reason else ""
        return "failed", f"job {job.job_id} ended {job.state}{extra} without DONE.json{after}"
    if job_id and squeue_ok:
        return "failed", f"its Slurm job {job_id} ended without a result (no accounting to say why){after}"
    return disk.status, disk.reason


def run_statuses(runs: Sequence[RunSpec], sweep_dir: Path, ask_slurm: bool = True,
                 verify_hash: bool = False) -> tuple[list[RunStatus], list[str]]:
    """Every run's status, and notes on what could not be asked."""
    launches = read_launches(sweep_dir) if ask_slurm else []
    latest = latest_jobs(launches)
    wanted = [latest[r.run_id][0] for r in runs if r.run_id in latest]
    query = query_jobs(wanted) if wanted else JobQuery({}, True)
    out = []
    for spec in runs:
        run_dir = sweep_dir / RUNS_DIR / spec.run_id
        disk = store.run_state(run_dir, verify_hash=verify_hash) if run_dir.exists() else store.RunState("missing", "")
        job_id, launch = latest.get(spec.run_id, ("", None))
        job = query.jobs.get(job_id) if job_id else None
        epoch = _progress_epochs(run_dir)
        claim = claim_holder(run_dir) if disk.status != "done" and (job is None or not job.active) else None
        status, detail = classify(disk, job, claim, epoch, job_id, query.ok)
        log = launch.log_for(job_id) if launch is not None and job_id else ""
        if status in ("failed", "broken") and log:
            detail += f" (log: {log}; {run_dir / 'log.txt'})"
        out.append(RunStatus(spec.run_id, status, detail, epoch, spec.train.epochs, job_id, log, disk.summary))
    return out, query.notes


# ------------------------------------------------------------------------------------------------
# submitting
# ------------------------------------------------------------------------------------------------


def submit_slurm(runs: Sequence[RunSpec], slurm: dict[str, Any], sweep: str, sweep_dir: Path,
                 gather_args: list[str], console: Console, array_parallelism: int | None = None) -> Launch:
    """All runs as submitit job arrays (split at MaxArraySize), then one gather job that starts
    after every task has ended, however it ended (afterany)."""
    check_controller()
    folder = new_launch_folder(sweep_dir / "submitit", "slurm")
    launch = Launch("slurm", str(folder), time=_now())
    limit = max_array_size()
    specs = list(runs)
    params = submitit_parameters(slurm, sweep, array_parallelism)
    chunks = chunk_items(len(specs), limit)
    try:
        executor = make_slurm_executor(folder, params, int(slurm["max_num_timeout"]))
        for chunk, share in zip(chunks, share_parallelism(params["array_parallelism"], max(1, len(chunks)))):
            executor.update_parameters(array_parallelism=share)
            part = [specs[i] for i in chunk]
            jobs = executor.map_array(TrainTask(), [s.to_json() for s in part])
            launch.arrays.append(str(jobs[0].job_id).split("_")[0])
            launch.runs.update({s.run_id: str(j.job_id) for s, j in zip(part, jobs)})
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


def setup_file(sweep_dir: Path, setup: Sequence[str]) -> tuple[Path, bytes] | None:
    """(path, content) of the file holding [slurm].setup for the sbatch fallback's static scripts.
    Named by its content, like the manifest: queued tasks of an earlier launch keep sourcing the
    lines they were submitted with, whatever a later launch's grid says."""
    if not setup:
        return None
    text = "# [slurm].setup of this launch's grid, sourced by slurm/array.sbatch and gather.sbatch\n"
    data = (text + "".join(line + "\n" for line in setup)).encode()
    return sweep_dir / "sbatch" / f"setup-{hashlib.sha256(data).hexdigest()[:16]}.sh", data


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
    return sweep_dir / "sbatch" / f"manifest-{sha[:16]}.jsonl", data, sha


def sbatch_plan(runs: Sequence[RunSpec], slurm: dict[str, Any], sweep: str, sweep_dir: Path, python: str,
                gather_args: list[str], max_size: int,
                array_parallelism: int | None = None) -> tuple[list[tuple[list[str], list[RunSpec], int]], list[str]]:
    """The sbatch command lines of a fallback launch: [(array argv, its runs, offset)], gather argv
    (its dependency is 'afterany:<ARRAY_IDS>' until the arrays are submitted). Line i of the
    launch's manifest (launch_manifest) is runs[i]; task t of an array trains line offset + t."""
    runs = list(runs)
    manifest, _, sha = launch_manifest(runs, sweep_dir)
    made = setup_file(sweep_dir, slurm["setup"])
    setup = made[0] if made else None
    arrays = []
    split = split_indices(range(len(runs)), max_size)
    shares = share_parallelism(int(array_parallelism or slurm["array_parallelism"]), max(1, len(split)))
    for (offset, tasks), share in zip(split, shares):
        argv = sbatch_array_argv(slurm, sweep, sweep_dir, manifest, python, offset, tasks, setup, share,
                                 manifest_sha256=sha)
        arrays.append((argv, [runs[offset + t] for t in tasks], offset))
    gather = sbatch_gather_argv(slurm, sweep, sweep_dir, python, "afterany:<ARRAY_IDS>", gather_args, setup)
    return arrays, gather


def submit_sbatch(runs: Sequence[RunSpec], slurm: dict[str, Any], sweep: str, sweep_dir: Path,
                  gather_args: list[str], array_parallelism: int | None = None) -> Launch:
    """The fallback without submitit: slurm/array.sbatch over the lines of this launch's own
    manifest, then slurm/gather.sbatch."""
    check_controller()
    (sweep_dir / "slurm-logs").mkdir(parents=True, exist_ok=True)  # Slurm does not create it
    write_setup_file(sweep_dir, slurm["setup"])
    runs = list(runs)
    manifest, data, _ = launch_manifest(runs, sweep_dir)
    _write_launch_file(manifest, data)
    arrays, gather = sbatch_plan(runs, slurm, sweep, sweep_dir, sys.executable, gather_args,
                                 max_array_size(), array_parallelism)
    launch = Launch("sbatch", str(sweep_dir / "slurm-logs"), time=_now())
    try:
        for argv, part, offset in arrays:
            job = _sbatch(argv)
            launch.arrays.append(job)
            launch.runs.update({r.run_id: f"{job}_{t}" for t, r in enumerate(part)})
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


def _one_line(text: str, limit: int = 600) -> str:
    return " ".join(text.split())[:limit]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# ------------------------------------------------------------------------------------------------
# waiting (--wait)
# ------------------------------------------------------------------------------------------------


def wait_for_launch(launch: Launch, runs: Sequence[RunSpec], sweep_dir: Path, console: Console,
                    poll_s: float | None = None, patience_s: float = 600) -> None:
    """Block until no job of this launch is queued or running any more (squeue; no accounting
    needed). Prints each run as it finishes. Polls every 2 s at first, then less often (at most
    every 30 s), unless poll_s is given. SlurmError when squeue fails for patience_s in a row."""
    ids = launch.job_ids()
    by_run = {r.run_id: r for r in runs if r.run_id in launch.runs}
    reported: set[str] = set()
    t0 = last_ok = time.time()
    with _progress(console) as progress:
        bar = progress.add_task(f"{len(by_run)} runs (jobs {', '.join(ids)})", total=len(by_run))
        while True:
            query = query_jobs(ids, use_sacct=False)
            now = time.time()
            if query.ok:
                last_ok = now
            elif now - last_ok > patience_s:
                raise SlurmError(f"squeue has not answered for {patience_s:.0f} s: {'; '.join(query.notes)}")
            for rid, spec in by_run.items():
                if rid in reported:
                    continue
                job = query.jobs.get(launch.runs[rid])
                finished = (sweep_dir / RUNS_DIR / rid / store.DONE_NAME).exists()
                if finished or (query.ok and (job is None or not job.active)):
                    reported.add(rid)
                    progress.advance(bar)
                    colour = "green" if finished else "red"
                    word = "done" if finished else f"ended ({job.state if job else 'gone from squeue'})"
                    console.print(f"[{colour}]{word}[/{colour}] {rid} (job {launch.runs[rid]})")
            active = [j for j in query.jobs.values() if j.active]
            if query.ok and not active:
                break
            time.sleep(poll_s if poll_s is not None else min(30.0, 2.0 + (now - t0) / 20))
