"""What the report shows, as plain data: built by ``cnnstress.gather``, drawn by ``report.figures``
and written out by ``report.html``.

No matplotlib here, so gather can build these without importing a plotting library. Arrays are
small reductions (per class, per threshold, per epoch, a few 32x32 images and maps); nothing is
(N, C)-sized. ``None`` means "not available" and the report says so.
"""

from __future__ import annotations

import base64
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
    image: np.ndarray | None  # (32, 32, 3) uint8, or None when images are unavailable


@dataclass
class CaseView:
    """One canonical failure case as one model (baseline or variant) saw it, first seed."""

    seed: int | None
    pred_name: str
    confidence: float
    cam_pred: np.ndarray | None  # (32, 32) float32 Grad-CAM for the predicted class, upsampled
    cam_true: np.ndarray | None  # (32, 32) float32 Grad-CAM for the true class
    right_seeds: int  # in how many of this model's seeds the image is classified right
    n_seeds: int


@dataclass
class Case:
    """A canonical failure: a high-confidence baseline failure in more than half of the baseline seeds."""

    position: int  # position in the stored test arrays
    test_index: int  # index into the official test split
    true_name: str
    image: np.ndarray | None  # (32, 32, 3) uint8
    fail_fraction: float  # share of baseline seeds where it is a high-confidence failure
    baseline: CaseView
    neighbours: list[Neighbour] = field(default_factory=list)


@dataclass
class Cell:
    """One variant within one group of non-seed grid values, summarised over its finished seeds."""

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
    high_conf: list[int] = field(default_factory=list)
    history: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (S, E)
    confusion: np.ndarray | None = None  # (C, C) int64, summed over seeds
    per_class: np.ndarray | None = None  # (C,) mean over seeds
    threshold_counts: np.ndarray | None = None  # (T,) mean over seeds
    conf_hist: dict[str, np.ndarray] | None = None  # edges, right_counts, wrong_counts (summed)
    calibration: dict[str, float | None] = field(default_factory=dict)  # means over seeds
    reliability: dict[str, np.ndarray] | None = None  # pooled over seeds
    stress: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # corruption -> severities, accuracy
    mca: float | None = None  # mean corruption accuracy, mean over seeds
    # ece, nll, brier, ece_after (clean validation temperature) on the corrupted sets, mean over all and seeds
    corruption_calibration: dict[str, float | None] = field(default_factory=dict)
    stress_reliability: dict[str, np.ndarray] | None = None  # highest severities, pooled over corruptions, seeds
    breaking: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # corruption -> (class, drop)
    faithfulness: dict[str, Any] | None = None  # curves {kind: (K,)}, auc {kind: float}, n
    gradcam: list[tuple[str, tuple[int, int] | None]] = field(default_factory=list)  # (layer, (h, w)) of its runs
    shortcut: dict[str, float | None] | None = None
    top_failures: list[dict[str, Any]] = field(default_factory=list)  # first seed, by confidence
    top_failures_seed: int | None = None
    diff: list[tuple[str, Any, Any]] = field(default_factory=list)  # vs the baseline: key, baseline, this

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
    """A variant against the baseline of its group (compare_variant plus per-class deltas)."""

    variant: str
    baseline: str
    group: str
    label: str
    stats: dict[str, Any]  # compare_variant's dict, with base_seed/var_seed per pair
    per_class_order: np.ndarray  # (C,) class indices, largest gain first
    per_class_delta: np.ndarray  # (C,) variant - baseline, class order
    cases: list[CaseView | None] = field(default_factory=list)  # aligned with Group.cases


@dataclass
class Group:
    """Runs sharing the same non-seed grid values: one baseline and its variants."""

    label: str  # "" when the grid varies nothing but the seed
    cells: list[Cell]
    comparisons: list[Comparison] = field(default_factory=list)
    cases: list[Case] = field(default_factory=list)
    case_note: str = ""  # why there are no (or fewer) cases, when so
    neighbour_note: str = ""
    shortcut_sentence: str = ""


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
    thresholds: np.ndarray  # the thresholds of Cell.threshold_counts
    top_failures_k: int
    # one per expected run: run_id, variant, seed, group, status (done/failed/missing), state (done,
    # failed, broken, partial, missing), reason
    status_rows: list[dict[str, Any]]
    status_counts: dict[str, int]
    state_counts: dict[str, int]
    groups: list[Group]
    notes: list[str] = field(default_factory=list)  # e.g. "test images unavailable: ..."
    summary_lines: list[str] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [c for g in self.groups for c in g.cells]

    @property
    def comparisons(self) -> list[Comparison]:
        return [c for g in self.groups for c in g.comparisons]
