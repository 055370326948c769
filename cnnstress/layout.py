"""The names on disk, defined once: the files of a run folder and of a sweep folder, and the
per-epoch history keys of results.h5. Torch-free and h5py-free, so every side may import it.

    <out>/<sweep>/
      grid.toml  manifest.jsonl  launch.json  launches.jsonl (+ .lock)
      runs/<run_id>/  spec.json  log.txt  progress.json  claim.lock  checkpoint.pt  checkpoint.prev.pt
                      best.pt  results.h5  DONE.json  FAILED.json
      report/    index.html  summary.json  failures.json  runs.csv  figures/<name>.png
      sbatch/    manifest-<sha>.jsonl  setup-<sha>.sh         (the sbatch fallback's launch files)
      slurm-logs/  <array>_<task>.out  gather-<job>.out     (the sbatch fallback's logs)
      submitit/  slurm-<time>-<pid>/  local-<time>-<pid>/   (submitit's folders, one per launch)
      tensorboard/<variant>/<seed, grid values>/             ([report].tensorboard)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

# -- a run folder ------------------------------------------------------------------------------
SPEC_FILE = "spec.json"
#: DONE.json's summary key saying how many runs trained at once on the run's device (itself
#: included), and the environment variable through which whoever started them tells the worker
RUNS_AT_ONCE = "runs_at_once"
RUNS_AT_ONCE_ENV = "CNNSTRESS_RUNS_AT_ONCE"
LOG_FILE = "log.txt"
PROGRESS_FILE = "progress.json"  # epoch, epochs, val_acc, updated, checkpoint_epoch, stage, stage_started (for --status)
CLAIM_FILE = "claim.lock"  # flock held by the process training the run
CHECKPOINT_NAME = "checkpoint.pt"
PREV_CHECKPOINT_NAME = "checkpoint.prev.pt"
CHECKPOINT_NAMES = (CHECKPOINT_NAME, PREV_CHECKPOINT_NAME)  # newest first: what a resume may read
BEST_FILE = "best.pt"
RESULTS_NAME = "results.h5"
DONE_NAME = "DONE.json"
FAILED_NAME = "FAILED.json"

# -- a sweep folder ----------------------------------------------------------------------------
RUNS_DIR = "runs"
GRID_COPY = "grid.toml"  # the grid as launched
MANIFEST_FILE = "manifest.jsonl"  # one resolved RunSpec per line
LAUNCH_FILE = "launch.json"  # the last launch's --set values and data root
LAUNCHES_FILE = "launches.jsonl"  # one line per launch (appended under LAUNCHES_LOCK)
LAUNCHES_LOCK = "launches.jsonl.lock"
REPORT_DIR = "report"
REPORT_PREV_DIR = "report.prev"  # the report a gather with fewer finished runs replaced, kept whole
# a report is built in .report.tmp-<host>-<pid>-<hex>/ beside report/, then renamed into place
REPORT_STAGING_PREFIX = ".report.tmp-"
SBATCH_DIR = "sbatch"  # the sbatch fallback's per-launch manifest and setup files (content-named, read-only)
SLURM_LOGS_DIR = "slurm-logs"  # the sbatch fallback's job logs (Slurm does not create the folder)
SUBMITIT_DIR = "submitit"  # submitit's own folders, one per launch
TENSORBOARD_DIR = "tensorboard"  # TensorBoard event files, one folder per run ([report].tensorboard)


def sbatch_manifest_name(sha256: str) -> str:
    """sbatch/<this>: the runs of one sbatch launch, named by the sha256 of its content."""
    return f"manifest-{sha256[:16]}.jsonl"


def sbatch_setup_name(sha256: str) -> str:
    """sbatch/<this>: the [slurm].setup lines of one sbatch launch, named by their content's sha256."""
    return f"setup-{sha256[:16]}.sh"


#: slurm-logs/<this>: an array task's log, a Slurm filename pattern (%A array job id, %a task id)
SBATCH_TASK_LOG = "%A_%a.out"
#: slurm-logs/<this>: the gather job's log (%j its job id)
SBATCH_GATHER_LOG = "gather-%j.out"


def submitit_launch_name(kind: str, stamp: str, pid: int | str) -> str:
    """submitit/<this>: one launch's submitit folder (kind: slurm or local)."""
    return f"{kind}-{stamp}-{pid}"


# -- a sweep's report/ folder (written by gather) -------------------------------------------------
REPORT_INDEX = "index.html"
REPORT_SUMMARY = "summary.json"
REPORT_FAILURES = "failures.json"
REPORT_RUNS_CSV = "runs.csv"
FIGURES_DIR = "figures"  # figures/<name>.png

# -- results.h5 --------------------------------------------------------------------------------
#: Root attribute: the side of the run's square images, written only where it is not 32 (absent: 32).
IMAGE_SIZE_ATTR = "image_size"

class HistoryKey(NamedTuple):
    """One per-epoch value of a run: /history/<name> in results.h5, a checkpoint's history, a TensorBoard scalar."""

    name: str
    dtype: str  # of /history/<name>
    doc: str
    tag: str | None  # its TensorBoard scalar (None: the epoch, which is the step)


#: /history/<key>, one value per epoch, in this order (the worker writes them, store's schema checks
#: them, TensorBoard draws them, gather reads them). The one definition.
HISTORY = (
    HistoryKey("epoch", "int32", "epoch number, 1-based", None),
    HistoryKey("lr", "float64", "learning rate used in the epoch", "lr"),
    HistoryKey("train_loss", "float64", "mean training loss", "loss/train"),
    HistoryKey("train_acc", "float64", "training accuracy, fraction", "accuracy/train"),
    HistoryKey("val_loss", "float64", "validation loss", "loss/val"),
    HistoryKey("val_acc", "float64", "validation accuracy, fraction", "accuracy/val"),
    HistoryKey("epoch_seconds", "float64", "wall time of the epoch", "epoch_seconds"),
)
HISTORY_KEYS = tuple(key.name for key in HISTORY)


@dataclass(frozen=True)
class Field:
    """One dataset (or family of datasets) of results.h5: a row of ``store.SCHEMA``. Defined here,
    not in store.py (the only importer of h5py), so that a stress test's module under
    ``cnnstress/probes/`` can declare the rows it writes without loading h5py or torch.

    ``dims`` are symbolic sizes that must agree across all datasets naming them (N test images,
    C classes, E epochs, D embedding width, h/w Grad-CAM map, V validation images, T train-subset
    images); ``None`` means any shape. Optional fields with the same ``bundle`` must appear
    together. ``check`` names the value check run by validate_results.
    """

    template: str
    dtype: str
    dims: tuple[str, ...] | None
    required: bool = False
    bundle: str = ""
    # "" | "index" | "label" | "logits" | "positions" (distinct rows of /test); every float dataset is
    # also checked finite whatever its check (no field stores NaN or infinity by design: a "not
    # measured" value is an absent dataset, never a NaN marker)
    check: str = ""
    chunked: bool = False  # chunked along the first axis + gzip + shuffle (when it has >= 2 axes)
    doc: str = ""

    @property
    def np_dtype(self) -> Any:
        import numpy as np  # (numpy only when a file is written or read)

        return np.dtype(self.dtype)

# -- the worker command's exit status (python -m cnnstress.worker; read by cluster/local.py and array.sbatch)
EXIT_DONE = 0
EXIT_FAILED = 1  # FAILED.json says why
EXIT_USAGE = 2  # bad arguments (e.g. a manifest index out of range)
EXIT_BUSY = 3  # another live process holds the run's claim
EXIT_INTERRUPTED = 130  # stopped by Ctrl-C (128 + SIGINT, as a shell reports it); resumable
# told to stop (SIGTERM, SIGUSR2): 128 + the signal number, like a shell; the run stays resumable
