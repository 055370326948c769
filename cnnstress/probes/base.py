"""The interface of a stress test (a probe): what a module under ``cnnstress/probes/`` defines.

A probe module ends with ``PROBE = TheProbe()``. Its declarative part (name, grid keys, the
StressSpec fields they resolve to, results.h5 schema rows, root attributes, the report section)
is read by grid.py, config.py and store.py on machines without torch, so a probe module imports
no torch, no h5py and no matplotlib at module level: ``measure`` imports what it needs inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from ..catalog import Param
from ..layout import Field

if TYPE_CHECKING:  # pragma: no cover - names for annotations only
    import numpy as np

    from ..config import RunSpec


class Probe:
    """One stress test. Subclasses set the class attributes and implement ``measure``.

    The default ``resolve`` and ``enabled`` fit the common shape: a switch key named like the probe
    (``[stress].<name> = true``) and settings keys ``<name>_<setting>``, resolved into one StressSpec
    field ``<name>`` = ``{setting: value, ...}`` while on and ``{}`` while off."""

    #: the results.h5 group it writes under, and the prefix of its [stress] keys
    name: str = ""
    #: its [stress] grid keys, in the catalog's form (default, range, doc); checked like every key
    keys: dict[str, Param] = {}
    #: the StressSpec fields its keys resolve to, with their "off" value: a field holding its off
    #: value is left out of a run's identity, so adding a probe (or turning one off) changes no run id
    fields: dict[str, Any] = {}
    #: fields of ``fields`` that stay in the identity even while off (they were in every run's
    #: identity before off fields were left out; dropping them now would change those run ids)
    kept: tuple[str, ...] = ()
    #: the results.h5 datasets it writes (templates with <placeholders>, see store.SCHEMA)
    rows: tuple[Field, ...] = ()
    #: root attributes of results.h5 it may write: name -> "int" | "str" | "json"
    root_attrs: dict[str, str] = {}
    #: the id of the report section that reads what it writes
    section: str = ""

    # -- the grid side (torch-free) ------------------------------------------------------------
    def resolve(self, v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
        """Its StressSpec fields from the validated [stress] values (every key already passed its
        Param's check). ``v.fail(path, message)`` makes the one-line grid error for a problem no
        single key's range can express."""
        if not self.fields:
            return {}
        if not stress.get(self.name):
            return {self.name: {}}
        prefix = f"{self.name}_"
        return {self.name: {k[len(prefix):]: stress[k] for k in self.keys if k.startswith(prefix)}}

    def enabled(self, stress: Any) -> bool:
        """Whether a run with this StressSpec measures anything of this probe."""
        return any(getattr(stress, name) != off for name, off in self.fields.items())

    # -- the worker side (imports torch inside) ------------------------------------------------
    def measure(self, pred: Any, data: MeasureData, spec: RunSpec, log: Callable[[str], None]) -> dict[str, np.ndarray]:
        """Named arrays (results.h5 dataset paths matching ``rows``) measured on the trained model."""
        raise NotImplementedError(f"probe {self.name!r} measures nothing")

    # -- the report side -----------------------------------------------------------------------
    def report_section(self) -> Any:
        """The report section (a ``report.sections.base.Section``) that reads its arrays, when it is
        not one of the report's own registered sections; None when it is. Called only by the report,
        so a probe may import report code here."""
        return None


@dataclass
class MeasureData:
    """What a probe may use besides the model (``pred``, an engine.Predictor): the run's splits on
    the device and what every run measures anyway (the test set's predictions and Grad-CAM maps)."""

    splits: Any  # data.Splits: official indices and labels
    train: Any  # engine.DeviceData (uint8 images and labels on the device)
    val: Any
    test: Any
    preds: Any  # (N,) predicted classes of the test set
    cam_pred: Any  # (N, h, w) Grad-CAM of the predicted classes
    #: root attributes of results.h5 a probe records (declared in its ``root_attrs``)
    attrs: dict[str, Any] = field(default_factory=dict)
