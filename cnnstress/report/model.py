"""What the report shows, as plain data: built by ``cnnstress.gather`` and the report sections
(``report.sections``), drawn and written out by them.

No matplotlib here, so gather can build these without importing a plotting library. Arrays are
small reductions (per class, per threshold, per epoch, a few images and maps); nothing is
(N, C)-sized. ``None`` means "not available" and the report says so.
"""

from __future__ import annotations

import base64
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def slug(text: str) -> str:
    """A file-name-safe form of a label (figure names)."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[:60] or "x"


@dataclass(frozen=True)
class FigureRef:
    """A saved figure: its file name under figures/, the PNG bytes (for embedding) and a caption."""

    name: str
    filename: str
    png: bytes
    caption: str

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode("ascii")


@dataclass
class Neighbour:
    """A training image close to a test image in the baseline's feature space."""

    train_index: int  # index into the dataset's official training split
    label_name: str
    similarity: float  # cosine similarity of the penultimate embeddings
    image: np.ndarray | None  # (S, S, 3) uint8, or None when images are unavailable


@dataclass
class CaseView:
    """One canonical failure case as one model (baseline or variant) saw it, first seed."""

    seed: int | None
    pred_name: str
    confidence: float
    cam_pred: np.ndarray | None  # (S, S) float32 Grad-CAM for the predicted class, upsampled to the image
    cam_true: np.ndarray | None  # (S, S) float32 Grad-CAM for the true class
    right_seeds: int  # in how many of this model's seeds the image is classified right
    n_seeds: int


@dataclass
class Case:
    """A canonical failure: a high-confidence baseline failure in more than half of the baseline seeds."""

    position: int  # position in the stored test arrays
    test_index: int  # index into the official test split
    true_name: str
    image: np.ndarray | None  # (S, S, 3) uint8
    fail_fraction: float  # share of baseline seeds where it is a high-confidence failure
    baseline: CaseView
    neighbours: list[Neighbour] = field(default_factory=list)


@dataclass
class Cell:
    """One variant within one group of non-seed grid values, summarised over its finished seeds.

    The fields are what every section shares (who, which seeds, accuracy); what one section
    aggregates lives in ``parts[section.id]`` (None when no run of the cell has it).
    """

    label: str  # "variant" or "variant [group]"
    variant: str
    group: str
    is_baseline: bool
    color: int
    run_ids: list[str] = field(default_factory=list)  # finished runs, by seed
    seeds: list[int] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    acc_mean: float | None = None
    acc_std: float | None = None  # ddof=1; None with fewer than two seeds
    acc_ci95: tuple[float, float] | None = None
    gradcam: list[tuple[str, tuple[int, int] | None]] = field(default_factory=list)  # (layer, (h, w)) of its runs
    diff: list[tuple[str, Any, Any]] = field(default_factory=list)  # vs the baseline: key, baseline, this
    runs: list[Any] = field(default_factory=list, repr=False)  # gather's RunData of run_ids, by seed
    parts: dict[str, Any] = field(default_factory=dict, repr=False)  # section id -> its aggregate
    missing: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict, repr=False)  # section id -> (run id, arrays it lacks)

    @property
    def n_runs(self) -> int:
        return len(self.run_ids)

    @property
    def gradcam_text(self) -> str:
        """'block3, 8×8' (the Grad-CAM layer and the map size before upsampling); '' without runs."""
        return "; ".join(f"{layer}, {size[0]}×{size[1]}" if size else f"{layer}, no maps stored"
                         for layer, size in self.gradcam)


@dataclass
class Comparison:
    """A variant against the baseline of its group (compare_variant's statistics)."""

    variant: str
    baseline: str
    group: str
    label: str
    stats: dict[str, Any]  # compare_variant's dict, with base_seed/var_seed per pair


@dataclass
class Group:
    """Runs sharing the same non-seed grid values: one baseline and its variants."""

    label: str  # "" when the grid varies nothing but the seed
    cells: list[Cell]
    parts: dict[str, Any] = field(default_factory=dict, repr=False)  # section id -> its group-level result

    @property
    def comparisons(self) -> list[Comparison]:
        """The comparison section's result: each variant with finished runs against the baseline."""
        return self.parts.get("comparison") or []


@dataclass
class ReportData:
    sweep: str
    description: str
    generated_at: str
    dataset: str
    num_classes: int
    class_names: list[str]
    baseline: str
    threshold: float
    thresholds: np.ndarray  # the thresholds of the failures section's threshold counts
    top_failures_k: int
    # one per expected run: run_id, variant, seed, group, status (done/failed/missing), state (done,
    # failed, broken, partial, missing), reason
    status_rows: list[dict[str, Any]]
    status_counts: dict[str, int]
    state_counts: dict[str, int]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)  # e.g. "test images unavailable: ..."
    summary_lines: list[str] = field(default_factory=list)
    parts: dict[str, Any] = field(default_factory=dict, repr=False)  # section id -> its report-level result

    @property
    def cells(self) -> list[Cell]:
        return [c for g in self.groups for c in g.cells]

    @property
    def comparisons(self) -> list[Comparison]:
        return [c for g in self.groups for c in g.comparisons]


class ReportWriteError(OSError):
    """A report file could not be written (disk full, report/ removed, no permission). Its text
    is one line, "cannot write the report: <path>: <why>", naming the file being written."""

    def __init__(self, exc: OSError, path: Any):
        self.message = f"cannot write the report: {path}: {exc.strerror or exc or type(exc).__name__}"
        super().__init__(exc.errno, self.message)

    def __str__(self) -> str:
        return self.message


def jsonable(obj: Any) -> Any:
    """Plain JSON types: numpy to Python, tuples to lists, NaN/inf to None."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    return str(obj)
