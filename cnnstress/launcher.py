"""``python launch.py``: expand a grid, run or submit what is not finished, gather a report.

Exit status: 0 when every run asked for is finished (local, debug, slurm/sbatch with --wait) or
submitted (slurm/sbatch without --wait); 1 when some run failed (or the report is missing after
--wait) or the output folder cannot be written; 2 for bad input (grid errors, missing data, a
symbolic link where the sweep is written in place) or when Slurm cannot be used. --status: 0 when no
run is failed or broken (done, running, pending, partial or missing), 3 when some run is failed or
broken (STATUS_FAILED).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import atomic, faults, reuse, states, store, tensorboard
from .probes import autoattack as autoattack_probe
from .cluster import BACKENDS, BackendError, Handle, LaunchContext, backend
from .cluster.base import gather_arguments
from .config import RunSpec
from .grid import Grid, GridError, load_grid, load_sweep_grid
from .layout import (DONE_NAME, EXIT_INTERRUPTED, GRID_COPY, LAUNCH_FILE, LAUNCHES_FILE, LAUNCHES_LOCK, LOG_FILE, MANIFEST_FILE, REPORT_DIR,
                     REPORT_INDEX, RUNS_DIR)

#: --status's exit status when some run is failed or broken: a script can tell them apart from
#: runs that are only unfinished (0) and from bad input (2) without reading the table.
STATUS_FAILED = 3


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python launch.py",
        description="Stress-test CNN classifiers: expand a grid, train every run, gather a report.")
    ap.add_argument("--grid", help="grid file (TOML), e.g. jobs/demo.toml")
    ap.add_argument("--cluster", choices=tuple(BACKENDS), default="local",
                    help="local: one process per run on this machine (default); debug: in this process; "
                         "slurm: one job array through submitit; sbatch: the sbatch-script fallback")
    ap.add_argument("--out", default="scratch", help="output root (default: scratch)")
    ap.add_argument("--data-root", default=None, help="where datasets live (default: <out>/data)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="override a [base] value (epochs=2, optimizer.lr=0.01) or a section value "
                         "(stress.severities=[1], report.confidence_threshold=0.8); repeatable")
    ap.add_argument("--tensorboard", action="store_true",
                    help="write TensorBoard event files per run under <out>/<sweep>/tensorboard/ (the same as "
                         "--set report.tensorboard=true; needs pip install -e '.[tensorboard]')")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the expanded runs (and, for slurm/sbatch, what would be submitted) and exit; "
                         "writes and submits nothing")
    ap.add_argument("--wait", action="store_true",
                    help="slurm/sbatch: wait for every task and the gather job, then print each run's outcome")
    ap.add_argument("--max-parallel", type=int, default=None,
                    help="local: runs at once (default: one per visible GPU, 1 on CPU; never more than the "
                         "visible GPUs, one GPU each; CUDA_VISIBLE_DEVICES='' trains on CPU); "
                         "slurm/sbatch: array tasks at once (default: [slurm].array_parallelism)")
    ap.add_argument("--runs-per-gpu", type=int, default=1, metavar="K",
                    help="local: K runs at once on each visible GPU (small CNNs leave most of a GPU idle), or K runs "
                         "at once on the CPU with the cores split between them (default 1)")
    ap.add_argument("--rerun-failed", action="store_true",
                    help="run or submit only runs that failed, are broken or never started "
                         "(never ones that are queued, running or partly trained)")
    ap.add_argument("--gather", nargs="?", const=True, default=False, metavar="SWEEP_DIR",
                    help="only (re)build the report from finished runs, of the sweep as it was last launched "
                         "(its --set values and data root); or of the sweep folder given")
    ap.add_argument("--no-gather", action="store_true", help="do not build the report after local runs")
    ap.add_argument("--status", nargs="?", const=True, default=False, metavar="SWEEP_DIR",
                    help="show every run's state (done, running, pending, failed, broken, partial, missing) and the "
                         "report's, of the sweep as it was last launched (or of the sweep folder given), and exit: "
                         f"0 when no run is failed or broken, {STATUS_FAILED} when some run is")
    ap.add_argument("--download", choices=("cifar10", "cifar100", "cifar10-c", "cifar100-c", "cifar10.1"),
                    help="fetch a dataset with torchvision's downloader into --data-root and exit; cifar10-c and "
                         "cifar100-c are the published corruption files ([stress].source = \"official\"), "
                         "checked against the test labels when the clean dataset is there too; cifar10.1 is "
                         "CIFAR-10.1 v6 ([stress].shift_sets = [\"cifar10.1\"]), checked against its published "
                         "checksums")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except atomic.LinkRefused as e:  # a link in the sweep folder: one line, never a traceback
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {e}", markup=False)
        return 2


def _main(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.tensorboard:
        args.overrides.append("report.tensorboard=true")
    console = Console(highlight=False)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if faults.injected():  # inherited by every run, local or Slurm: a forgotten test hook fails real runs
        err.print(f"warning: {faults.ENV}={faults.injected()} is set: runs of this launch will have faults "
                  "injected (a test hook); unset it for real runs", markup=False)
    out_root = Path(args.out)
    data_root = Path(args.data_root) if args.data_root else out_root / "data"

    if args.download:
        from . import cifar_c, data

        try:
            if args.download in cifar_c.SETS:
                path, checked = cifar_c.download(args.download, data_root)
                console.print(checked, markup=False, soft_wrap=True)
            elif args.download == "cifar10.1":
                from . import shiftsets

                path, checked = shiftsets.download(data_root)
                console.print(checked, markup=False, soft_wrap=True)
            else:
                path = data.download(args.download, data_root)
        except Exception as e:  # noqa: BLE001 - network errors, disk errors: say what happened
            err.print(f"error: downloading {args.download} into {data_root} failed: {e}", markup=False)
            return 2
        console.print(f"{args.download} is in {path}", markup=False, soft_wrap=True)
        return 0
    folder = next((v for v in (args.status, args.gather) if isinstance(v, str)), None)
    if folder is not None and folder.endswith(".toml") and not args.grid:  # --status g.toml: the grid file
        args.grid, folder = folder, None
        args.status, args.gather = bool(args.status), bool(args.gather)
    if folder is not None:
        return _sweep_folder_command(args, Path(folder), console, err)
    if not args.grid:
        err.print("[red]error:[/red] --grid is required (e.g. --grid jobs/demo.toml); see --help")
        return 2
    if args.max_parallel is not None and args.max_parallel < 1:
        err.print("[red]error:[/red] --max-parallel must be at least 1")
        return 2
    if args.runs_per_gpu < 1 or (args.runs_per_gpu > 1 and args.cluster != "local"):
        err.print(f"error: --runs-per-gpu {args.runs_per_gpu}: allowed: an integer >= 1, with --cluster local "
                  "(on Slurm, [slurm].runs_per_task = K, or --set slurm.runs_per_task=K, packs K runs into each array "
                  "task)", markup=False)
        return 2
    try:
        grid = load_grid(args.grid, overrides=args.overrides, out_root=out_root, data_root=data_root)
    except GridError as e:
        err.print(f"error: {e}", markup=False)
        return 2
    sweep_dir = out_root / grid.name
    if (args.status or args.gather) and not args.dry_run:
        # the sweep as it was launched: its --set values and data root, whatever was typed now
        launched = as_launched(args, grid, out_root, err)
        if launched is None:
            return 2
        grid, sweep_dir = launched
    chosen = backend(args.cluster)
    try:  # e.g. [slurm].additional names that cnnstress sets itself: refused before anything happens
        chosen.check(grid.slurm, grid.name)
    except ValueError as e:
        err.print(f"error: {grid.source}: {e}", markup=False)
        return 2

    if args.dry_run:
        print_runs(grid, sweep_dir, console)
        for line in power_notes(grid, sweep_dir):
            console.print(line, markup=False)
        _print_plan(args, grid, sweep_dir, out_root, data_root, console)
        problem = _launch_problem(grid, args.cluster, args.max_parallel, args.runs_per_gpu)
        if problem:  # what the launch itself would refuse
            err.print(f"error: {grid.source}: {problem}", markup=False)
            return 2
        return 0
    if args.status:
        return _status(grid, sweep_dir, console, args)
    if args.gather:
        return _gather(grid, sweep_dir, console)
    problem = _launch_problem(grid, args.cluster, args.max_parallel, args.runs_per_gpu)
    if problem:  # before anything is written or submitted (gather and --status never need the files)
        err.print(f"error: {grid.source}: {problem}", markup=False)
        return 2
    return _launch(args, grid, sweep_dir, out_root, data_root, console, err)


# ------------------------------------------------------------------------------------------------
# --status and --gather: the sweep as launched
# ------------------------------------------------------------------------------------------------

def _sweep_folder_command(args: argparse.Namespace, sweep_dir: Path, console: Console, err: Console) -> int:
    """--status SWEEP_DIR / --gather SWEEP_DIR: the sweep folder's own grid copy and launch record."""
    if not (sweep_dir / GRID_COPY).is_file():
        err.print(f"error: {sweep_dir}: not a sweep folder (no {GRID_COPY}); allowed: a folder that a launch "
                  f"wrote (<out>/<name>), or --grid GRID_FILE", markup=False)
        return 2
    try:
        grid = load_sweep_grid(sweep_dir)
    except GridError as e:
        err.print(f"error: {e}", markup=False)
        return 2
    if args.status:
        return _status(grid, sweep_dir, console, args)
    return _gather(grid, sweep_dir, console)


def _recorded(sweep_dir: Path) -> dict[str, Any] | None:
    """launch.json of a sweep folder (None when there is none or it cannot be read)."""
    try:
        value = json.loads((sweep_dir / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _launches_of(grid_path: Path, out_root: Path) -> list[Path]:
    """Sweep folders under ``out_root`` launched from this grid file (its recorded path, or a copy
    with the same bytes), the most recently launched first."""
    try:
        text = grid_path.read_bytes()
        candidates = [d for d in out_root.iterdir() if d.is_dir() and not d.is_symlink()]
    except OSError:
        return []
    found = []
    for d in candidates:
        rec = _recorded(d)
        if rec is None:
            continue
        try:
            same = rec.get("grid_file") == os.path.abspath(grid_path) or (d / GRID_COPY).read_bytes() == text
        except OSError:
            continue
        if same:
            found.append(d)
    return sorted(found, key=lambda d: (d / LAUNCH_FILE).stat().st_mtime, reverse=True)


def _flags(overrides: Sequence[str], data_root: Any) -> str:
    return " ".join([*(f"--set {_q(o)}" for o in overrides), f"--data-root {_q(data_root)}"])


def as_launched(args: argparse.Namespace, grid: Grid, out_root: Path, err: Console) -> tuple[Grid, Path] | None:
    """(grid, sweep folder) for --status and --gather: the sweep these flags name, expanded with the
    --set values and data root its launch recorded (the flags typed now are compared and a
    difference is said); when these flags name no launched sweep, the last launch of this grid
    file under --out. None (after one line) when there is nothing to show."""
    sweep_dir = out_root / grid.name
    rec = _recorded(sweep_dir)
    if rec is None:
        launches = _launches_of(Path(args.grid), out_root)
        if launches:
            sweep_dir, rec = launches[0], _recorded(launches[0])
            if len(launches) > 1:
                err.print(f"note: {len(launches)} sweeps under {out_root} were launched from {args.grid}: showing the "
                          f"latest, {sweep_dir.name} (others: {', '.join(d.name for d in launches[1:])}; pass "
                          "--status SWEEP_DIR for another)", markup=False)
    if rec is None:
        if not (sweep_dir / RUNS_DIR).is_dir():
            if not args.gather:  # every run is missing: that is the status
                err.print(f"note: nothing has been launched into {sweep_dir} yet", markup=False)
                return grid, sweep_dir
            err.print(f"error: nothing was launched into {sweep_dir} (no {LAUNCH_FILE}), so there is no report to build; "
                      "allowed: the --out and --set values of the launch, or --gather SWEEP_DIR", markup=False)
            return None
        return grid, sweep_dir  # (a sweep folder written before launches were recorded)
    overrides = [str(o) for o in rec.get("overrides", []) if isinstance(o, str)]
    data_root = rec.get("data_root") if isinstance(rec.get("data_root"), str) else None
    given_root = args.data_root and os.path.abspath(args.data_root)
    if args.overrides and list(args.overrides) != overrides or (given_root and given_root != os.path.abspath(str(data_root))):
        err.print(f"note: {sweep_dir.name} was launched with {_flags(overrides, data_root)}; showing it as launched "
                  f"(the flags given now, {_flags(args.overrides, args.data_root or '<out>/data')}, are not used)",
                  markup=False)
    elif overrides and not args.overrides:
        err.print(f"note: showing {sweep_dir.name} as launched, with {' '.join(f'--set {_q(o)}' for o in overrides)}",
                  markup=False)
    try:
        grid = load_sweep_grid(sweep_dir)
    except GridError as e:
        err.print(f"error: {e}", markup=False)
        return None
    return grid, sweep_dir


def _status(grid: Grid, sweep_dir: Path, console: Console, args: argparse.Namespace) -> int:
    counts = print_status(grid, sweep_dir, console)
    line = report_line(grid, sweep_dir, _gather_command(args, sweep_dir))
    if line:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    return STATUS_FAILED if counts.get("failed") or counts.get("broken") else 0


def _gather_command(args: argparse.Namespace, sweep_dir: Path) -> str:
    return f"python launch.py --gather {_q(sweep_dir)}"


def report_staleness(grid: Grid, sweep_dir: Path) -> tuple[str, str]:
    """("missing" | "stale" | "current" | "", detail) of the sweep's report against its finished
    runs: stale when some run finished after the report was written ("" when nothing is done)."""
    runs_dir = sweep_dir / RUNS_DIR
    newest, newest_id = 0.0, ""
    for r in grid.runs:
        try:
            t = (runs_dir / r.run_id / DONE_NAME).stat().st_mtime
        except OSError:
            continue
        if t > newest:
            newest, newest_id = t, r.run_id
    if not newest_id:
        return "", ""
    try:
        written = (sweep_dir / REPORT_DIR / REPORT_INDEX).stat().st_mtime
    except OSError:
        return "missing", ""
    if written < newest:
        return "stale", f"older than run {newest_id}, finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(newest))}"
    return "current", ""


def report_line(grid: Grid, sweep_dir: Path, rebuild: str) -> str:
    """What --status says about the report."""
    state, detail = report_staleness(grid, sweep_dir)
    index = sweep_dir / REPORT_DIR / REPORT_INDEX
    if state == "missing":
        return f"report: none yet; build it from the finished runs: {rebuild}"
    if state == "stale":
        return f"report: {index} is stale ({detail}); rebuild it: {rebuild}"
    if state == "current":
        return f"report: {index}"
    return ""


# ------------------------------------------------------------------------------------------------
# which runs to start
# ------------------------------------------------------------------------------------------------

def _select(grid: Grid, sweep_dir: Path, rerun_failed: bool, ask_slurm: bool, verify_hash: bool = True):
    """(runs to start, number finished, statuses of runs someone is already working on).
    Runs with a queued or running job, or a live claim, are never started twice. With
    rerun_failed only failed, broken and missing runs are started (partial ones are not)."""
    from .cluster.status import run_statuses

    statuses, _ = run_statuses(grid.runs, sweep_dir, ask_slurm=ask_slurm, verify_hash=verify_hash)
    by_id = {r.run_id: r for r in grid.runs}
    done = sum(st.status == "done" for st in statuses)
    busy = [st for st in statuses if states.STATES[st.status].busy]
    wanted = states.to_start(rerun_failed)
    todo = [by_id[st.run_id] for st in statuses if st.status in wanted]
    return todo, done, busy


# ------------------------------------------------------------------------------------------------
# launching: one path for every backend
# ------------------------------------------------------------------------------------------------


def _context(args: argparse.Namespace, grid: Grid, sweep_dir: Path, out_root: Path, data_root: Path,
             console: Console) -> LaunchContext:
    gather_args = gather_arguments(sweep_dir / GRID_COPY, Path(os.path.abspath(out_root)),
                                   Path(os.path.abspath(data_root)), args.overrides)
    return LaunchContext(grid.name, sweep_dir, grid.slurm, console, gather_args, args.max_parallel,
                         getattr(args, "runs_per_gpu", 1))


def _launch(args: argparse.Namespace, grid: Grid, sweep_dir: Path, out_root: Path, data_root: Path,
            console: Console, err: Console) -> int:
    """Run or submit every unfinished run that nobody is working on. The backend's handle says what
    became of them: runs that ran here have ended; queued jobs are followed with --wait (or later
    with --status). Then the report: the gather job's, checked, or built here."""
    chosen = backend(args.cluster)
    try:
        chosen.check_environment()
    except BackendError as e:
        err.print(f"error: {e}", markup=False)
        return 2
    if not _wrote_sweep_files(grid, sweep_dir, Path(args.grid), err):
        return 1
    # a scheduler's backend asks it which runs are queued; runs started here need only their files
    todo, done, busy = _select(grid, sweep_dir, args.rerun_failed, ask_slurm=chosen.batch)
    if chosen.batch:
        console.print(f"sweep [bold]{grid.name}[/bold]: {len(grid.runs)} runs, {done} already finished, "
                      f"{len(busy)} queued or running, {len(todo)} to submit ({args.cluster}); output in {sweep_dir}")
    else:
        console.print(f"sweep [bold]{grid.name}[/bold]: {len(grid.runs)} runs, {done} already finished, "
                      f"{len(todo)} to run ({args.cluster}); output in {sweep_dir}")
    _print_remeasured(todo, sweep_dir, console)
    for st in busy:
        console.print(f"  not {'resubmitted' if chosen.batch else 'started'}: {st.run_id} is {st.status} ({st.detail})",
                      markup=False)
    if not todo and chosen.batch:
        if not busy and report_staleness(grid, sweep_dir)[0] in ("missing", "stale"):
            console.print("nothing to submit; the report is older than the finished runs: rebuilding it here",
                          soft_wrap=True)
            return _gather(grid, sweep_dir, console)
        console.print("nothing to submit" + ("; see --status" if busy else ""))
        return 0
    t_submit = time.time()
    try:
        handle = chosen.submit(todo, _context(args, grid, sweep_dir, out_root, data_root, console))
    except BackendError as e:
        err.print(f"error: {e}", markup=False)
        return 2
    except KeyboardInterrupt:
        err.print(interrupted_line(todo, sweep_dir, args), markup=False, highlight=False, soft_wrap=True)
        return EXIT_INTERRUPTED
    _print_jobs(handle, todo, sweep_dir, time.time() - t_submit, console)
    if not handle.finished and not args.wait:
        same = "".join(f" --set {_q(o)}" for o in args.overrides) + (f" --out {_q(args.out)}" if args.out != "scratch" else "")
        console.print(f"follow with: python launch.py --grid {_q(args.grid)}{same} --status", markup=False)
        return 0
    try:
        handle.wait(console)
    except KeyboardInterrupt:
        console.print("stopped waiting; the jobs go on (see --status)")
        return 130
    except BackendError as e:
        err.print(f"error: {e}", markup=False)
        return 1
    return _ended(args, grid, sweep_dir, handle, t_submit, console, err)


def _ended(args: argparse.Namespace, grid: Grid, sweep_dir: Path, handle: Handle, t_submit: float,
           console: Console, err: Console) -> int:
    """Exit status once nothing of the handle is left running: 1 unless every submitted run is done
    (and, after jobs, every run of the grid) and the report was written."""
    ended = handle.states()
    # runs that ran here, in the order they ended, in their own words (busy: another process has it)
    for oc in handle.outcomes.values():
        if ended[oc.run_id] != "done":
            err.print(f"run {oc.run_id}: {oc.word}: {oc.detail}", markup=False)
    rc = 0 if all(ended[r] == "done" for r in handle.run_ids) else 1
    if handle.launch is not None:  # jobs ran elsewhere: every run's state, as --status shows it
        counts = print_status(grid, sweep_dir, console, verify_hash=True)
        rc = max(rc, 0 if counts.get("done", 0) == len(grid.runs) else 1)
    gather_job = handle.launch.gather if handle.launch is not None else None
    if gather_job is None:  # nobody else builds the report
        return rc if args.no_gather else max(rc, _gather(grid, sweep_dir, console))
    report = sweep_dir / REPORT_DIR / REPORT_INDEX
    if report.exists() and report.stat().st_mtime >= t_submit:
        console.print(f"report: {report}", markup=False)
        return rc
    console.print(f"[red]no new report[/red]: the gather job {gather_job} did not write {report}; "
                  f"see {handle.gather_log()}", markup=True)
    return 1


def interrupted_line(todo: Sequence, sweep_dir: Path, args: argparse.Namespace) -> str:
    """One line after Ctrl-C: which runs stopped, which keep a checkpoint, and that a relaunch resumes."""
    runs_dir = sweep_dir / RUNS_DIR
    stopped = [r.run_id for r in todo if store.run_state(runs_dir / r.run_id, verify_hash=False).status != "done"]
    kept = [rid for rid in stopped if any((runs_dir / rid / n).exists() for n in store.CHECKPOINT_NAMES)]
    listed = ", ".join(f"{rid} (epoch {store.progress_epochs(runs_dir / rid)})" for rid in kept[:5])
    more = f" and {len(kept) - 5} more" if len(kept) > 5 else ""
    keep = f"{len(kept)} keep a checkpoint: {listed}{more}" if kept else "none had a checkpoint yet"
    same = "".join(f" --set {_q(o)}" for o in args.overrides) + (f" --out {_q(args.out)}" if args.out != "scratch" else "")
    same += f" --data-root {_q(args.data_root)}" if args.data_root else ""
    return (f"interrupted: {len(stopped)} of {len(todo)} runs stopped before the end, {keep}; "
            f"the same command resumes them: python launch.py --grid {_q(args.grid)}{same} --cluster {args.cluster}")


def _q(text: str) -> str:
    import shlex

    return shlex.quote(str(text))


def _print_jobs(handle: Handle, todo: Sequence, sweep_dir: Path, seconds: float, console: Console) -> None:
    """The jobs a submission queued, and where their logs go (nothing for runs that ran here)."""
    launch = handle.launch
    if launch is None:
        return
    arrays = ", ".join(launch.arrays)
    console.print(f"submitted {len(todo)} runs as job array {arrays} and gather job {launch.gather} "
                  f"(--dependency=afterany:{':'.join(launch.arrays)}) in {seconds:.1f}s", markup=False)
    console.print(f"task logs: {handle.task_log(handle.job_of(todo[0].run_id))} (one per task; <array>_<task>)",
                  markup=False)
    console.print(f"run logs: {sweep_dir / RUNS_DIR / '<run_id>' / LOG_FILE}; gather log: {handle.gather_log()}",
                  markup=False)
    console.print(f"jobs recorded in {sweep_dir / LAUNCHES_FILE}", markup=False)


def _print_remeasured(todo: Sequence, sweep_dir: Path, console: Console, each: bool = False) -> None:
    """Which of the runs to start would only be measured: a finished run of the sweep has their
    training settings (only the stress tests differ), so they take its final weights (reuse.py)."""
    if not todo:
        return
    adopted = reuse.plan(todo, sweep_dir / RUNS_DIR)
    console.print(f"  {len(todo) - len(adopted)} to train, {len(adopted)} to re-measure from the final weights of "
                  "finished runs with the same training settings (nothing trained)", markup=False, soft_wrap=True)
    if each:
        for run_id, source in adopted.items():
            console.print(f"  re-measure {run_id} <- weights of {source}", markup=False, highlight=False, soft_wrap=True)


def _print_plan(args: argparse.Namespace, grid: Grid, sweep_dir: Path, out_root: Path, data_root: Path,
                console: Console) -> None:
    """--dry-run: what the backend would do, from the files alone (no squeue, no hashing: a folder
    that does not exist yet reads as missing)."""
    todo, _, _ = _select(grid, sweep_dir, args.rerun_failed, ask_slurm=False, verify_hash=False)
    chosen = backend(args.cluster)
    _print_remeasured(todo, sweep_dir, console, each=True)
    if not todo:
        if chosen.batch:
            console.print("nothing would be submitted")
        return
    for line in chosen.plan(todo, _context(args, grid, sweep_dir, out_root, data_root, console)):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------
# --status
# ------------------------------------------------------------------------------------------------

STATUS_COLOURS = {"done": "green", "running": "cyan", "pending": "blue", "failed": "red", "broken": "red",
                  "partial": "yellow", "missing": "white"}


def print_status(grid: Grid, sweep_dir: Path, console: Console, verify_hash: bool = True) -> dict[str, int]:
    # verify_hash: a results.h5 that no longer matches its DONE.json must show as broken; hashing
    # costs about a second per GB of results, far less than training them.
    """Every run's state from its files and (for Slurm launches) squeue/sacct, as a table.
    Returns how many runs are in each state."""
    from .cluster.status import RUN_STATUSES, run_statuses

    statuses, notes = run_statuses(grid.runs, sweep_dir, ask_slurm=True, verify_hash=verify_hash)
    by_id = {r.run_id: r for r in grid.runs}
    table = Table(title=f"status of {grid.name} ({sweep_dir})", title_justify="left")
    table.add_column("run_id", no_wrap=True, min_width=max(len(r.run_id) for r in grid.runs))
    for col in ("variant", "seed", *[k for k in grid.grid_keys if k != "seed"], "state", "epoch", "job", "detail"):
        table.add_column(col, overflow="fold")
    counts: dict[str, int] = {}
    rows: list[tuple[str, ...]] = []
    sharing: dict[str, list[str]] = {}  # job id -> its runs ([slurm].runs_per_task: several)
    for st in statuses:
        if st.job_id:
            sharing.setdefault(st.job_id, []).append(st.run_id)
    for st in statuses:
        r = by_id[st.run_id]
        counts[st.status] = counts.get(st.status, 0) + 1
        colour = STATUS_COLOURS.get(st.status, "white")
        restarts = (st.summary or {}).get("restarts")
        detail = "; ".join(x for x in (st.detail, f"restarts: {restarts}" if restarts else "") if x)
        short = detail if len(detail) <= 60 or st.status not in ("failed", "broken") else detail[:57] + "..."
        rows.append((st.run_id, r.variant, str(r.seed), *[str(r.grid_values[k]) for k in grid.grid_keys if k != "seed"],
                     f"[{colour}]{st.status}[/{colour}]", f"{st.epoch}/{st.epochs}", _job_cell(st.job_id, sharing),
                     _escape(short)))
        table.add_row(*rows[-1])
    print_table(console, table, rows)
    console.print("  ".join(f"{k}: {counts[k]}" for k in RUN_STATUSES if k in counts))
    for job_id, together in sharing.items():
        if len(together) > 1:
            console.print(f"task {job_id} trains {len(together)} runs at once: {', '.join(together)}", markup=False)
    for st in statuses:  # whole reasons, unfolded, where a table cell would cut them
        if st.status in ("failed", "broken"):
            console.print(f"{st.status} {st.run_id}: {st.detail}", markup=False, soft_wrap=True)
    for note in notes:
        console.print(f"note: {note}", markup=False)
    return counts


def _job_cell(job_id: str, sharing: dict[str, list[str]]) -> str:
    """A run's job in the --status table, with how many runs its task trains when it packs several."""
    if not job_id:
        return "-"
    n = len(sharing.get(job_id, []))
    return f"{job_id} ({n} runs)" if n > 1 else job_id


def _launch_problem(grid: Grid, cluster: str = "local", max_parallel: int | None = None, runs_per_gpu: int = 1) -> str:
    """Why this grid cannot be launched from here ("" when it can); --dry-run says the same."""
    return (missing_files(grid) or memory_problem(grid, cluster, max_parallel, runs_per_gpu=runs_per_gpu)
            or model_problem(grid)
            or tensorboard.missing_package(grid.runs) or autoattack_probe.missing_package(grid.runs))


#: What a run holds besides its images (torch's and CUDA's own memory, the model, its optimizer
#: state and activations): a floor, not a measurement, so that only what cannot fit is refused
MEMORY_MARGIN = 512 * 2**20
#: Copies of the images in host memory while a run starts: the decoded (or read) arrays, and the
#: train and validation parts cut from them; on a GPU they are held once
HOST_COPIES = 2
GIB = 2**30


def _gib(n: int) -> str:
    return f"{n / GIB:.3g} GiB"


def memory_problem(grid: Grid, cluster: str, max_parallel: int | None = None, *,
                   ram: int | None = None, gpu: int | None = None, runs_per_gpu: int = 1) -> str:
    """Why the dataset cannot fit the memory its runs will have ("" when it can): its images
    (data.images_held: the official train and test splits, uint8) held HOST_COPIES times in host
    memory and once on the GPU, plus MEMORY_MARGIN, against [slurm].mem_gb on Slurm (GPU memory is
    not known before a job lands on a node, so it is not checked there) or, here, against the free
    RAM shared by the runs at once and the smallest visible GPU's memory. ``ram``/``gpu`` replace
    the machine's (bytes). One line naming the dataset key."""
    from .data import DataError, images_held

    spec = grid.runs[0]  # one dataset per sweep (SWEEP_WIDE)
    try:
        n, size = images_held(spec.dataset.name, spec.paths.data_root, spec.dataset.params)
    except (DataError, OSError, KeyError):  # missing files are missing_files' to report
        return ""
    if n == 0:
        return ""
    limits: list[tuple[int, int, int, str, str]] = []  # (copies, bytes needed, bytes there, what gives them, what to do)
    host_need = HOST_COPIES * size + MEMORY_MARGIN
    if backend(cluster).batch:
        k = min(grid.slurm.runs_per_task, len(grid.runs))  # [slurm].mem_gb is the whole task's
        limits.append((HOST_COPIES, k * host_need, int(grid.slurm.mem_gb * GIB), f"[slurm].mem_gb = {grid.slurm.mem_gb:g}"
                       + (f" (shared by the {k} runs of a task)" if k > 1 else ""),
                       "raise [slurm].mem_gb" + (" or lower [slurm].runs_per_task" if k > 1 else "")))
    else:
        from .cluster.local import available_ram_bytes, gpu_memory_bytes, visible_gpus

        gpus = visible_gpus() if cluster == "local" and gpu is None else []
        slots = len(gpus) * runs_per_gpu if gpus else runs_per_gpu
        at_once = 1 if cluster == "debug" else min(len(grid.runs), max_parallel or slots)
        if gpus:
            at_once = min(at_once, slots)
        free = ram if ram is not None else available_ram_bytes()
        if free is not None:
            limits.append((HOST_COPIES, host_need, free // at_once, f"this machine's free RAM ({_gib(free)}"
                           + (f" shared by {at_once} runs at once)" if at_once > 1 else ")"),
                           "free memory" + (" or lower --max-parallel" if at_once > 1 else "")))
        gpu_bytes = gpu if gpu is not None else gpu_memory_bytes(gpus)
        if gpu_bytes is not None:
            share = min(runs_per_gpu, at_once)  # the runs that share one GPU each hold their own copy
            limits.append((1, share * (size + MEMORY_MARGIN), gpu_bytes, "the smallest visible GPU's memory"
                           + (f", shared by {share} runs" if share > 1 else ""),
                           "use a larger GPU" + (" or lower --runs-per-gpu" if share > 1 else "")))
    where = spec.dataset.params.get("root") or spec.dataset.params.get("path")
    name = f"{spec.dataset.name}" + (f" ({where})" if where else "")
    for copies, need, have, what, fix in limits:
        if need > have:
            held = f"{_gib(size)} as uint8" + (f", held {copies} times while the splits are made" if copies > 1 else "")
            return (f"[base].dataset: {name} needs about {_gib(need)} ({n} images, {held}, plus "
                    f"{_gib(MEMORY_MARGIN)} for torch and the model) but {what} gives {_gib(have)}; allowed: fewer "
                    f"or smaller images, or {fix}")
    return ""


def model_problem(grid: Grid) -> str:
    """Why a model by reference ([base].model = "pkg.mod:fn", "file.py:fn", "torchvision:<name>")
    would fail in its runs ("" when none would): built on the meta device in a child process (the
    launcher itself never imports torch), it must construct with its model_options, map a batch of
    the dataset's images to (N, num_classes), and have its Grad-CAM layer. One line naming the key.
    A [base].weights file is loaded there too (weights_only) and must fit the model exactly: its
    missing and unexpected keys are listed.
    Checked at launch and by --dry-run, not when the grid is read (--status imports no torch)."""
    seen: set[str] = set()
    sizes: dict[str, int] = {}
    for spec in grid.runs:
        if ":" not in spec.model.name and not spec.weights:
            continue
        size = _image_size(spec, sizes)
        request = json.dumps({"model": spec.model.name, "options": spec.model.params, "model_source": spec.model_source,
                              "num_classes": spec.num_classes, "image_size": size,
                              "gradcam_layer": spec.gradcam_layer, "weights": spec.weights}, sort_keys=True)
        if request in seen:
            continue
        seen.add(request)
        proc = subprocess.run([sys.executable, "-m", "cnnstress.models", "--check", request],
                              capture_output=True, text=True, timeout=600)
        if proc.returncode != 0:
            lines = (proc.stdout.strip() or proc.stderr.strip() or f"exit status {proc.returncode}").splitlines()
            return lines[-1] if proc.stdout.strip() else f"[base].model: {spec.model.name!r}: the check failed: {lines[-1]}"
    return ""


def _image_size(spec: RunSpec, sizes: dict[str, int]) -> int:
    """The side of the run's images, which the model is checked on (32 for the built-in datasets;
    your own images': image_size, or the arrays' shape), read once per dataset."""
    from .data import image_size

    key = json.dumps([spec.dataset.name, spec.paths.data_root, spec.dataset.params], sort_keys=True)
    if key not in sizes:
        sizes[key] = image_size(spec.dataset.name, spec.paths.data_root, spec.dataset.params)
    return sizes[key]


def missing_files(grid: Grid) -> str:
    """Why runs of this grid could not read the files they need on this machine ("" when they can),
    everything missing in one line, each with the command that fetches it: the clean CIFAR files, a
    named [stress].ood_sets set (your own: missing, empty, a corrupt image, an .npz of another
    shape), a [stress].shift_sets set (CIFAR-10.1's files read in full, your own labelled sets), or
    the official CIFAR-C files of [stress].source = "official" (missing,
    or a header, shape, dtype or size that is not the published one: cifar_c.check_files).
    Checked at launch and by --dry-run, not when the grid is read: the sweep's run ids must not depend on which
    files happen to be there, and gather and --status need none of them. Your own images (imagefolder,
    arrays) are all opened here, so a corrupt file or an empty class is refused before any worker runs."""
    problems: list[str] = []
    cifar = {(r.dataset.name, r.paths.data_root) for r in grid.runs if r.dataset.name in ("cifar10", "cifar100")}
    if cifar:
        from .data import cifar_missing

        for dataset, root in sorted(cifar):
            problem = cifar_missing(dataset, root)
            if problem:
                problems.append(f"[base].dataset: {problem}")
    own = {(r.dataset.name, r.paths.data_root, json.dumps(r.dataset.params, sort_keys=True)) for r in grid.runs
           if r.dataset.name in ("imagefolder", "arrays")}
    if own:
        from .data import DataError, own_data_check

        for dataset, root, params in sorted(own):
            try:
                own_data_check(dataset, root, json.loads(params))
            except DataError as e:
                problems.append(f"[base].dataset_options: {e}")
    sizes: dict[str, int] = {}
    own_sets = {(json.dumps(e, sort_keys=True), _image_size(r, sizes)) for r in grid.runs
                for e in (r.stress.ood or {}).get("own", [])}
    if own_sets:
        from .data import DataError
        from .oodsets import check_own_set

        for entry, size in sorted(own_sets):
            try:
                check_own_set(json.loads(entry), size)
            except DataError as e:
                problems.append(f"[stress].ood_sets: {e}")
    problems += _shift_problems(grid, sizes)
    named = {(r.dataset.name, r.paths.data_root, name) for r in grid.runs for name in (r.stress.ood or {}).get("sets", [])}
    if named:
        from . import oodsets

        for dataset, root, name in sorted(named):
            if name not in oodsets.available_sets(dataset, root):
                problems.append(f"[stress].ood_sets: {name!r} needs the {name} test files under {root}; fetch them "
                                f"with: python launch.py --download {name} --data-root {_q(root)}")
    official = {(r.dataset.name, r.paths.data_root, tuple(r.stress.corruptions)) for r in grid.runs
                if r.stress.source == "official" and r.stress.corruptions}
    if official:
        from . import cifar_c
        from .data import DataError

        for dataset, root, corruptions in sorted(official):
            missing = cifar_c.missing_files(dataset, root, list(corruptions))
            if missing:
                problems.append(f"[stress].source: \"official\" needs {missing[0]} ({len(missing)} of the files "
                                f"missing); fetch them with: {cifar_c.download_command(dataset, root)}")
                continue
            try:  # headers, shapes, dtypes and sizes (no image is read) and labels.npy against the test labels
                cifar_c.check_files(dataset, root, corruptions)
            except DataError as e:  # a truncated or damaged file would otherwise fail every run after training
                problems.append(f"[stress].source: \"official\": {e}")
    return "; and ".join(dict.fromkeys(problems))


def _shift_problems(grid: Grid, sizes: dict[str, int]) -> list[str]:
    """[stress].shift_sets: CIFAR-10.1's files (missing, empty or not in the published layout, with the
    command that fetches them) and your own sets (their images as an OOD set's, and their labels: a
    folder's class folders against the dataset's classes where they are known without reading the
    dataset, an .npz's y)."""
    problems: list[str] = []
    if not any((r.stress.shift or {}) for r in grid.runs):
        return problems
    from . import shiftsets
    from .data import DataError

    for root in sorted({r.paths.data_root for r in grid.runs if "cifar10.1" in (r.stress.shift or {}).get("sets", [])}):
        problem = shiftsets.cifar101_missing(root)
        if not problem:
            try:  # 6 MB, read in full: a damaged file would otherwise fail every run after training
                shiftsets.load_cifar101(root)
            except DataError as e:
                problem = str(e)
        if problem:
            problems.append(f"[stress].shift_sets: {problem}")
    seen: set[str] = set()
    for r in grid.runs:
        for entry in (r.stress.shift or {}).get("own", []):
            key = json.dumps([entry, r.dataset.name, r.dataset.params], sort_keys=True)
            if key in seen:
                continue
            seen.add(key)
            try:
                shiftsets.check_own_set(entry, _image_size(r, sizes), _class_names(r))
            except DataError as e:
                problems.append(f"[stress].shift_sets: {e}")
    return problems


def _class_names(spec: RunSpec) -> tuple[str, ...] | None:
    """The dataset's class names where they are known without reading its images (None: checked
    when the run reads them)."""
    from . import data

    if spec.dataset.name == "shapes":
        return data.SHAPE_NAMES
    if spec.dataset.name == "cifar10":  # its batches.meta, which is unpickled only by the runs
        return ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
    if spec.dataset.name in ("imagefolder", "arrays"):
        try:
            return data.own_classes(spec.dataset.name, spec.paths.data_root, spec.dataset.params)
        except data.DataError:
            return None  # reported by the dataset's own check
    return None


def power_notes(grid: Grid, sweep_dir: Path) -> list[str]:
    """Before more runs are launched: how small an accuracy change the sweep's finished runs can
    detect and how many seeds [report].target_difference needs (from DONE.json's test accuracy
    only; no results.h5 is read). One line per variant with at least two finished seeds next to
    two finished baseline seeds; nothing when there are none."""
    if not (sweep_dir / RUNS_DIR).is_dir():
        return []
    from .analysis import verdicts

    acc: dict[tuple[str, tuple], dict[int, float]] = {}
    for r in grid.runs:
        state = store.run_state(sweep_dir / RUNS_DIR / r.run_id, verify_hash=False)
        value = (state.summary or {}).get("test_accuracy") if state.status == "done" else None
        if isinstance(value, (int, float)):
            group = tuple(sorted((k, str(v)) for k, v in r.grid_values.items() if k != "seed"))
            acc.setdefault((r.variant, group), {})[r.seed] = float(value)
    target = float(grid.report.get("target_difference", 0.01))
    lines = []
    for (variant, group), by_seed in sorted(acc.items()):
        base = acc.get((grid.baseline, group), {})
        if variant == grid.baseline or len(base) < 2:
            continue
        seeds = sorted(set(base) & set(by_seed))
        paired = len(seeds) >= 2
        b = [base[s] for s in seeds] if paired else [base[s] for s in sorted(base)]
        sd = verdicts.sd_of_paired_difference(b, [by_seed[s] for s in seeds] if paired else None)
        if sd is None:
            continue
        where = f" [{', '.join(f'{k}={v}' for k, v in group)}]" if group else ""
        lines.append(f"{variant} vs {grid.baseline}{where}, from the finished runs: "
                     + verdicts.power_sentence("test accuracy", len(b), sd, target, unit="points", scale=100))
    return lines


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _gather(grid: Grid, sweep_dir: Path, console: Console) -> int:
    try:
        from . import gather
    except ImportError as exc:  # e.g. a report section module that cannot be imported: never a silent success
        where = f"{exc.name}: " if exc.name and exc.name not in str(exc) else ""
        console.print(f"error: cannot build the report: {where}{exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    try:
        index = gather.gather(sweep_dir, grid=grid, console=console)
    except gather.ReportWriteError as exc:  # disk full, report/ removed: one line, not a traceback
        console.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 1
    except OSError as e:  # e.g. --out on a read-only file system: the report folder cannot be written
        if e.errno not in WRITE_ERRNOS:
            raise
        Console(stderr=True, highlight=False, soft_wrap=True).print(f"error: {CannotWrite(e, sweep_dir / REPORT_DIR)}",
                                                                    markup=False)
        return 1
    console.print(f"report: {index}")
    return 0


#: OSErrors that say the output folder cannot be written (rather than a bug or an unreadable input)
WRITE_ERRNOS = (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT)


def _wrote_sweep_files(grid: Grid, sweep_dir: Path, grid_path: Path, err: Console) -> bool:
    try:
        write_sweep_files(grid, sweep_dir, grid_path)
    except (CannotWrite, GridError) as e:
        err.print(f"error: {e}", markup=False)
        return False
    return True


class CannotWrite(Exception):
    """The output root cannot be written (a read-only file system, a full disk, no permission): one
    line naming the path, for exit status 1 (the environment, not the input, is at fault)."""

    def __init__(self, e: OSError, fallback: Path):
        path = atomic.written_path(e.filename) if e.filename else fallback
        super().__init__(f"cannot write {path}: {e.strerror or e}")


def write_sweep_files(grid: Grid, sweep_dir: Path, grid_path: Path) -> None:
    """grid.toml (as launched) and manifest.jsonl (one resolved RunSpec per line, for people and
    tools; the sbatch fallback reads its own per-launch copy, since this one follows the grid).
    Rewritten only when their content changes, so relaunching a finished grid touches no file.
    Raises CannotWrite when the sweep folder or a file in it cannot be written."""
    try:
        grid_bytes = grid_path.read_bytes()
    except OSError as e:  # the grid file went away since it was read: not a write error
        raise GridError(str(grid_path), "", f"cannot read the grid file ({e.strerror or e})") from None
    try:
        _write_sweep_files(grid, sweep_dir, grid_bytes, grid_path)
    except atomic.LinkRefused:  # bad input (exit 2), not a folder that cannot be written
        raise
    except OSError as e:
        raise CannotWrite(e, sweep_dir) from None


def _write_sweep_files(grid: Grid, sweep_dir: Path, grid_bytes: bytes, grid_path: Path) -> None:
    sweep_dir.mkdir(parents=True, exist_ok=True)
    # runs/ and launches.jsonl.lock are written in place: a link there is refused before anything
    # is submitted (LinkRefused; the files below are replaced, which replaces a link)
    atomic.refuse_links(sweep_dir, sweep_dir / RUNS_DIR)
    atomic.refuse_links(sweep_dir, sweep_dir / LAUNCHES_LOCK)
    (sweep_dir / RUNS_DIR).mkdir(exist_ok=True)
    atomic.atomic_write_bytes(sweep_dir / GRID_COPY, grid_bytes, if_changed=True)
    atomic.atomic_write_json(sweep_dir / LAUNCH_FILE, {"overrides": grid.overrides,
                                                      "data_root": grid.runs[0].paths.data_root,
                                                      "grid_dir": grid.grid_dir,
                                                      "grid_file": os.path.abspath(grid_path)}, if_changed=True)
    manifest = "".join(r.to_json() + "\n" for r in grid.runs).encode()
    atomic.atomic_write_bytes(sweep_dir / MANIFEST_FILE, manifest, if_changed=True)


TABLE_ROWS = 200  # above this a rich table (about 10 ms a row) is replaced by groups + plain lines


def print_runs(grid: Grid, sweep_dir: Path, console: Console, title: str | None = None) -> None:
    """The expanded runs with their state on disk: a table for small grids; for big ones a table
    with one row per (variant, non-seed grid values) group, then one plain line per run."""
    states = _states(grid, sweep_dir)
    if len(grid.runs) <= TABLE_ROWS:
        _print_table(grid, states, console, title)
    else:
        _print_groups(grid, states, console, title)
    counts: dict[str, int] = {}
    for status in states:
        counts[status] = counts.get(status, 0) + 1
    console.print("  ".join(f"{k}: {v}" for k, v in sorted(counts.items())))


def _states(grid: Grid, sweep_dir: Path) -> list[str]:
    if not sweep_dir.exists():
        return ["missing"] * len(grid.runs)
    return [store.run_state(sweep_dir / RUNS_DIR / r.run_id, verify_hash=False).status for r in grid.runs]


def _describe(r, grid: Grid) -> tuple[str, ...]:
    opt = r.train.optimizer
    return (f"{r.model.name} {_fmt_params(r.model.params)}".strip(), str(r.train.epochs),
            ",".join(a.name for a in r.train.augment) or "-", f"{opt.name} lr={opt.params['lr']:g}")


def _print_table(grid: Grid, states: list[str], console: Console, title: str | None) -> None:
    keys = [k for k in grid.grid_keys if k != "seed"]
    table = Table(title=title or f"{grid.name}: {len(grid.runs)} runs", title_justify="left")
    table.add_column("run_id", no_wrap=True, min_width=max(len(r.run_id) for r in grid.runs))
    for col in ("variant", "seed", *keys, "model", "epochs", "augment", "optimizer", "state"):
        table.add_column(col, overflow="fold")
    rows = []
    for r, status in zip(grid.runs, states):
        rows.append((r.run_id, r.variant + (" (baseline)" if r.variant == grid.baseline else ""), str(r.seed),
                     *[str(r.grid_values[k]) for k in keys], *_describe(r, grid), status))
        table.add_row(*rows[-1])
    print_table(console, table, rows)


def print_table(console: Console, table: Table, rows: list[tuple[str, ...]]) -> None:
    """The table when it fits the console; otherwise (a narrow terminal, an 80-column log) its title
    and one plain line per row, 'header=value' after the first column, instead of a table rich would
    squeeze to a character per column."""
    from rich.measure import Measurement

    if Measurement.get(console, console.options.update(max_width=100_000), table).maximum <= console.width:
        console.print(table)
        return
    headers = [str(c.header) for c in table.columns]
    if table.title:
        console.print(str(table.title), markup=False, highlight=False)
    for row in rows:
        plain = [Text.from_markup(v).plain if isinstance(v, str) else str(v) for v in row]
        console.print("  ".join([plain[0], *(f"{h}={v}" for h, v in zip(headers[1:], plain[1:]) if v not in ("", "-"))]),
                      markup=False, highlight=False, soft_wrap=True)


def _print_groups(grid: Grid, states: list[str], console: Console, title: str | None) -> None:
    keys = [k for k in grid.grid_keys if k != "seed"]
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(grid.runs):
        groups.setdefault((r.variant, *[str(r.grid_values[k]) for k in keys]), []).append(i)
    table = Table(title=title or f"{grid.name}: {len(grid.runs)} runs in {len(groups)} groups", title_justify="left")
    for col in ("variant", *keys, "runs", "seeds", "model", "epochs", "augment", "optimizer", "states"):
        table.add_column(col, overflow="fold")
    for key, idx in groups.items():
        first = grid.runs[idx[0]]
        seeds = sorted(grid.runs[i].seed for i in idx)
        st: dict[str, int] = {}
        for i in idx:
            st[states[i]] = st.get(states[i], 0) + 1
        table.add_row(key[0] + (" (baseline)" if key[0] == grid.baseline else ""), *key[1:], str(len(idx)),
                      f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0]), *_describe(first, grid),
                      " ".join(f"{k} {v}" for k, v in sorted(st.items())))
    console.print(table)
    # every run, as plain text: rich's layout costs ~10 ms a row, a plain line nothing
    width = max(len(r.run_id) for r in grid.runs)
    lines = [f"{r.run_id:<{width}}  {r.variant}  seed {r.seed}  {s}\n" for r, s in zip(grid.runs, states)]
    console.file.write("".join(lines))


def _fmt_params(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


if __name__ == "__main__":  # ``python -m cnnstress.launcher``: what slurm/gather.sbatch runs
    sys.exit(main())
