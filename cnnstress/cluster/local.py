"""``--cluster debug`` (in this process, one run after another) and ``--cluster local`` (one
process per run through submitit's LocalExecutor, at most ``max_parallel`` at once, each pinned
to one GPU when there are GPUs). The worker runs in a child of the job process, so a worker
killed outright (OOM killer) still ends with FAILED.json and its reason."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import submitit
from rich.console import Console

from .. import atomic, faults, store
from ..claims import claim_holder, describe_holder
from ..config import RunSpec
from ..layout import EXIT_BUSY, EXIT_INTERRUPTED, RUNS_AT_ONCE_ENV, RUNS_DIR, SPEC_FILE, SUBMITIT_DIR, submitit_launch_name
from ..pack import record_unreported_end, threads_per_run
from ..store import progress_epochs
from .base import PACKAGE_ROOT, Backend, Handle, LaunchContext, Outcome, progress_bar

LOCAL_TIMEOUT_MIN = 60 * 24 * 7  # submitit's LocalExecutor kills jobs after 2 minutes by default


class RunFailed(RuntimeError):
    """A local run ended without a result; the message is the reason (as in FAILED.json)."""


class RunInterrupted(RuntimeError):
    """A local run was stopped by Ctrl-C: it keeps its checkpoint and no FAILED.json."""


class LocalTrainTask:
    """The callable of a ``--cluster local`` job: runs the worker in a child process and watches
    how it ends. The kernel's OOM killer ends a run with SIGKILL, which no Python code in the
    dying process can catch, and submitit's local controller drops its tasks' exit status; this
    parent survives the child, so it can record why the run ended (FAILED.json) instead of leaving
    a run that looks 'partial' with no reason."""

    def __init__(self, worker_argv: Sequence[str] | None = None, threads: int | None = None, at_once: int = 1):
        # the command that trains a spec file (tests put a stand-in here); it gets "--spec FILE"
        self.worker_argv = list(worker_argv) if worker_argv else None
        self.threads = threads  # the worker's OMP_NUM_THREADS when runs share the CPU (None: inherited)
        self.at_once = at_once  # runs sharing a device with this one, itself included (DONE.json says it)

    def __call__(self, spec_json: str, run_dir: str, device: str = "") -> dict[str, Any]:
        """device: the CUDA_VISIBLE_DEVICES entry of the one GPU this run may use ("2", a
        "GPU-<uuid>"), or "" for none (CPU). Set here, for the worker alone: submitit's own
        visible_gpus takes only integers and renumbers nothing, so it cannot pass a parent's
        CUDA_VISIBLE_DEVICES=2,3 or UUIDs through."""
        import tempfile

        argv = self.worker_argv or [sys.executable, "-m", "cnnstress.worker"]
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        if getattr(self, "threads", None):  # (a task pickled before the field existed has none)
            env["OMP_NUM_THREADS"] = str(self.threads)
        env[RUNS_AT_ONCE_ENV] = str(getattr(self, "at_once", 1))
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
        if rc == EXIT_BUSY:  # worker.main: another live process holds the run; its line names it
            raise RuntimeError(f"RunBusy: {_busy_line(last, Path(run_dir))}")
        if rc == EXIT_INTERRUPTED:  # Ctrl-C: the run keeps its checkpoint and is not failed
            raise RunInterrupted(f"run {Path(run_dir).name} stopped by Ctrl-C")
        try:  # a linked run folder: the worker refused it, and nothing may be written into it here
            atomic.refuse_links(Path(run_dir).parent.parent, Path(run_dir))
        except atomic.LinkRefused as e:
            raise RunFailed(f"{type(e).__name__}: {e}") from None
        state = store.run_state(Path(run_dir), verify_hash=False)
        if state.status == "failed":  # the worker wrote its reason
            raise RunFailed(state.reason)
        reason = record_unreported_end(Path(run_dir), rc)
        raise RunFailed(reason or f"the worker exited with status {rc}")


def _busy_line(last: str, run_dir: Path) -> str:
    """What a worker refused with EXIT_BUSY printed last ("run X is claimed by pid P on H since T"),
    or, from an older worker, the holder as the claim file names it now."""
    if last.startswith("busy: "):
        return last[len("busy: "):]
    return f"run {run_dir.name} is {describe_holder(claim_holder(run_dir))}"


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


def gpu_memory_bytes(gpus: Sequence[str]) -> int | None:
    """The memory of the smallest of ``gpus`` (CUDA_VISIBLE_DEVICES entries: indices or GPU UUIDs),
    from nvidia-smi without importing torch; None when it cannot be told (no nvidia-smi, a MIG
    instance, an entry nvidia-smi does not list)."""
    if not gpus or any(g.startswith("MIG-") for g in gpus):
        return None
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=index,uuid,memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    sizes = []
    for gpu in gpus:
        for line in res.stdout.splitlines():
            parts = [x.strip() for x in line.split(",")]
            if len(parts) == 3 and (gpu == parts[0] or (gpu.startswith("GPU-") and parts[1].startswith(gpu))):
                try:
                    sizes.append(int(float(parts[2])) * 2**20)  # MiB
                except ValueError:
                    return None
                break
        else:
            return None
    return min(sizes) if sizes else None


def available_ram_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (what can be allocated without swapping), None off Linux."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


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
        warning = _cpu_fallback_warning(explicit, named, driver, count)
    return GpuCensus(devices, count, warning)


#: What CUDA takes as a CUDA_VISIBLE_DEVICES entry: an index, or a GPU/MIG UUID (possibly shortened)
DEVICE_ENTRY = re.compile(r"^(\d+|GPU-[0-9A-Fa-f-]+|MIG-[0-9A-Za-z/-]+)$")


def _cpu_fallback_warning(explicit: str | None, named: list[str], driver: list[str], count: int | None) -> str:
    """Why the runs will train on the CPU though something pointed at a GPU. Only the driver's files
    and nvidia-smi are evidence that this machine has a GPU: a CUDA_VISIBLE_DEVICES value is not
    (CUDA_VISIBLE_DEVICES=garbage on a machine without a GPU was reported as 'this machine has a GPU')."""
    fix = "set CUDA_VISIBLE_DEVICES='' to say the CPU is meant"
    bad = next((e for e in named if not DEVICE_ENTRY.match(e)), None) if explicit is not None else None
    if bad is not None and bad == named[0]:  # CUDA stops at the first invalid entry: here, before any GPU
        where = "every GPU of this machine" if driver else "every device (and this machine shows no NVIDIA GPU either)"
        return (f"WARNING: CUDA_VISIBLE_DEVICES={explicit} is not a valid device list ({bad!r} is not a GPU index, "
                f"GPU-<uuid> or MIG-<uuid>), so it hides {where}: every run will train on the CPU. Name GPUs "
                f"(e.g. CUDA_VISIBLE_DEVICES=0), or {fix}.")
    why = ("the check failed" if count is None else
           "torch.cuda.device_count() is 0: a CPU-only torch build, or a driver too old for its CUDA")
    if explicit is not None and not driver:
        return (f"WARNING: CUDA_VISIBLE_DEVICES={explicit} names GPUs, but this machine shows no NVIDIA driver "
                f"({', '.join(NVIDIA_DEVICE_FILES)} are missing) and torch sees no GPU: every run will train "
                f"on the CPU; {fix}.")
    evidence = (f"nvidia-smi lists {', '.join(named)}" if named and explicit is None else
                f"the NVIDIA driver is loaded ({driver[0]}; CUDA_VISIBLE_DEVICES={explicit})" if explicit is not None
                else f"the NVIDIA driver is loaded ({driver[0]})")
    return (f"WARNING: this machine has a GPU ({evidence}) but torch sees none ({why}): every run will "
            f"train on the CPU. Install a CUDA build of torch, or {fix}.")


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
    from .. import worker

    outcomes = []
    for spec in runs:
        try:
            outcomes.append(Outcome.of_result(spec.run_id, worker.run(spec)))
        except worker.RunBusy as e:  # someone else's live process is training it
            outcomes.append(Outcome(spec.run_id, "running", str(e)))
        except Exception as e:  # noqa: BLE001 - recorded in FAILED.json; go on with the others
            why = faults.naming(f"{type(e).__name__}: {e}")
            outcomes.append(Outcome(spec.run_id, "failed", why))
            console.print(f"[red]run {spec.run_id} failed[/red]: {why}", markup=False)
    return outcomes


def run_local(runs: Sequence[RunSpec], sweep_dir: Path, console: Console, max_parallel: int | None = None,
              poll_s: float = 0.5, task: LocalTrainTask | None = None, runs_per_gpu: int = 1) -> list[Outcome]:
    """One process per run via submitit's LocalExecutor, throttled to ``max_parallel``, which
    is capped to ``runs_per_gpu`` runs per visible GPU when there are any (each run is pinned to
    one GPU, which it shares with at most ``runs_per_gpu - 1`` others). On the CPU ``runs_per_gpu``
    runs at once (or ``max_parallel``) split the cores between them: each gets its share as
    OMP_NUM_THREADS, so that a run's numbers are those of a run alone with as many threads."""
    census = local_gpu_census()
    if census.warning:
        console.print(census.warning, style="bold red", markup=False)
    gpus = census.devices
    slots = [g for g in gpus for _ in range(runs_per_gpu)]  # GPU i appears runs_per_gpu times
    if max_parallel is None:
        max_parallel = len(slots) if gpus else runs_per_gpu
    elif gpus and max_parallel > len(slots):
        # a run started without a free GPU would get none and train on the CPU, silently and slowly
        per = "one run" if runs_per_gpu == 1 else f"{runs_per_gpu} runs"
        console.print(f"note: --max-parallel {max_parallel} capped to {len(slots)}: {per} per visible GPU "
                      f"({', '.join(gpus)}); --runs-per-gpu K packs K runs on each; to train on the CPU instead, set "
                      "CUDA_VISIBLE_DEVICES=''", markup=False)
        max_parallel = len(slots)
    threads = threads_per_run(min(max_parallel, len(runs))) if not gpus and min(max_parallel, len(runs)) > 1 else None
    if threads is not None:
        console.print(f"{min(max_parallel, len(runs))} runs at once on the CPU, {threads} thread(s) each "
                      "(OMP_NUM_THREADS)", markup=False)
    folder = sweep_dir / SUBMITIT_DIR / submitit_launch_name("local", time.strftime('%Y%m%d-%H%M%S'), os.getpid())
    executor = submitit.LocalExecutor(folder=folder)
    # the job process itself needs no GPU; LocalTrainTask pins its worker to `gpu`
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, gpus_per_node=0)
    at_once = runs_per_gpu if gpus else min(max_parallel, len(runs))
    task = task or LocalTrainTask(threads=threads, at_once=max(1, at_once))
    queue = list(runs)
    active: dict[str, tuple[Any, RunSpec, str | None]] = {}
    free = list(slots)
    outcomes: list[Outcome] = []
    try:
        _follow(executor, task, queue, active, free, max_parallel, sweep_dir, folder, outcomes, console, poll_s)
    except KeyboardInterrupt:
        # Ctrl-C reached every worker too (one process group): each keeps its last finished
        # epoch and exits; wait for that before saying which runs resume
        _wait_for_stopped([job for job, _, _ in active.values()], console)
        raise
    return outcomes


def _follow(executor: Any, task: LocalTrainTask, queue: list[RunSpec], active: dict[str, tuple[Any, RunSpec, str | None]],
            free: list[str], max_parallel: int, sweep_dir: Path, folder: Path, outcomes: list[Outcome],
            console: Console, poll_s: float) -> None:
    """Start runs as slots free up and report each as it ends, until none is left."""
    with progress_bar(console) as progress:
        overall = progress.add_task("runs", total=len(queue))
        bars: dict[str, Any] = {}
        while queue or active:
            while queue and len(active) < max_parallel:
                spec = queue.pop(0)
                gpu = free.pop(0) if free else None  # never None when there are GPUs (capped above)
                with _sigint_ignored():
                    job = executor.submit(task, spec.to_json(), str(sweep_dir / RUNS_DIR / spec.run_id), gpu or "")
                active[spec.run_id] = (job, spec, gpu)
                bars[spec.run_id] = progress.add_task(spec.run_id, total=spec.train.epochs)
            for rid, (job, spec, gpu) in list(active.items()):
                done_epochs = progress_epochs(sweep_dir / RUNS_DIR / rid)
                progress.update(bars[rid], completed=done_epochs)
                if not job.done():
                    continue
                del active[rid]
                if gpu is not None:
                    free.append(gpu)
                oc = _outcome(job, spec, folder)
                if oc.state == "failed":
                    # FAILED.json holds the reason (submitit's exception text ends with log paths);
                    # if even the task process died, nobody wrote one yet
                    run_dir = sweep_dir / RUNS_DIR / rid
                    state = store.run_state(run_dir, verify_hash=False)
                    reason = state.reason if state.status == "failed" else record_unreported_end(run_dir, None)
                    if reason:
                        oc = replace(oc, detail=f"{reason} (logs: {folder})")
                outcomes.append(oc)
                progress.update(bars[rid], completed=spec.train.epochs, visible=False)
                progress.advance(overall)
                colour = {"done": "green", "failed": "red"}.get(oc.state, "yellow")
                console.print(f"[{colour}]{oc.word:>7}[/{colour}] {rid} {oc.detail}")
            time.sleep(poll_s)


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """Start a job with SIGINT ignored (inherited through exec): submitit's controller process then
    outlives a Ctrl-C instead of printing a KeyboardInterrupt traceback and dropping its jobs'
    ends; the worker under it installs Python's SIGINT handler again (worker.main), so Ctrl-C
    still stops each run, which keeps its checkpoint."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


def _wait_for_stopped(jobs: Sequence[Any], console: Console, limit_s: float = 120.0) -> None:
    """Wait (at most ``limit_s``; a second Ctrl-C stops waiting) for interrupted jobs to end."""
    deadline = time.time() + limit_s
    try:
        while any(not job.done() for job in jobs) and time.time() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        console.print("stopped waiting for the runs to save their checkpoints", markup=False)


def _outcome(job: Any, spec: RunSpec, folder: Path) -> Outcome:
    try:
        return Outcome.of_result(spec.run_id, job.result())
    except Exception as e:  # noqa: BLE001 - submitit wraps the worker's exception
        text = str(e)
        busy = "RunBusy" in text  # another live process holds the run: it is running, not failed
        last = [line for line in text.strip().splitlines() if line.strip()]
        detail = last[-1] if last else type(e).__name__
        # submitit's text ends with the job's log paths: a busy run's own line names the holder
        said = [line.split("RunBusy: ", 1)[1] for line in last if "RunBusy: " in line]
        if busy and said:
            detail = said[-1]
        return Outcome(spec.run_id, "running" if busy else "failed", f"{detail} (logs: {folder})")



class DebugBackend(Backend):
    """``--cluster debug``: every run in this process, one after another (pdb works)."""

    name = "debug"

    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        return []

    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Handle:
        return finished_handle(self, runs, ctx.sweep_dir, run_debug(runs, ctx.console))


class LocalBackend(Backend):
    """``--cluster local``: one process per run on this machine, one GPU each (or the CPU)."""

    name = "local"

    def plan(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> list[str]:
        return []

    def submit(self, runs: Sequence[RunSpec], ctx: LaunchContext) -> Handle:
        return finished_handle(self, runs, ctx.sweep_dir, run_local(runs, ctx.sweep_dir, ctx.console, ctx.max_parallel,
                                                                    runs_per_gpu=ctx.runs_per_gpu))


def finished_handle(chosen: Backend, runs: Sequence[RunSpec], sweep_dir: Path, outcomes: Sequence[Outcome]) -> Handle:
    """The handle of runs that ran to their end before submit returned."""
    return Handle(chosen, sweep_dir, tuple(r.run_id for r in runs), {o.run_id: o for o in outcomes})
