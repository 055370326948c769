"""Frozen run configuration: ``RunSpec`` and its parts.

A ``RunSpec`` is the only thing handed to a worker. It holds plain JSON types only (str, int, float,
bool, lists, dicts with str keys) so that ``RunSpec.from_json(spec.to_json()) == spec`` exactly, on any
machine. No torch here: the launcher validates and expands grids on login nodes.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import FrozenInstanceError, dataclass, field, fields
from pathlib import Path
from typing import Any

from . import atomic, probes
from .layout import RUNS_DIR

SPEC_VERSION = 1


@dataclass(frozen=True)
class Component:
    """A named, registry-built thing with every parameter resolved (defaults filled in)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Component:
        return cls(name=d["name"], params=dict(d.get("params", {})))


@dataclass(frozen=True)
class TrainSpec:
    epochs: int
    batch_size: int
    eval_batch_size: int
    optimizer: Component
    schedule: Component
    augment: list[Component]
    label_smoothing: float
    amp: bool
    amp_dtype: str  # "bfloat16" | "float16" (CUDA only; the CPU autocasts to bfloat16)
    deterministic: bool
    channels_last: bool
    compile: bool
    val_fraction: float
    split_seed: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainSpec:
        d = dict(d)
        d["optimizer"] = Component.from_dict(d["optimizer"])
        d["schedule"] = Component.from_dict(d["schedule"])
        d["augment"] = [Component.from_dict(a) for a in d["augment"]]
        return cls(**d)


class StressSpec:
    """The resolved [stress] settings: one field per setting of a registered stress test
    (``cnnstress/probes/``; each probe names its fields and their off values), read as attributes
    (``spec.stress.corruptions``). Frozen, compared by value, and plain JSON like every part of a
    RunSpec. A field a spec.json written before its probe existed lacks holds its off value."""

    __slots__ = ("_values",)

    def __init__(self, **values: Any):
        fields = probes.spec_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise TypeError(f"StressSpec: unknown fields {unknown}; fields of the registered stress tests: "
                            f"{', '.join(fields)}")
        object.__setattr__(self, "_values", {k: values[k] if k in values else copy.deepcopy(off)
                                             for k, off in fields.items()})

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"StressSpec has no field {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StressSpec) and self._values == other._values

    __hash__ = None  # type: ignore[assignment]  # (like a frozen dataclass holding lists)

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle and copy rebuild it through the constructor (__setattr__ refuses the default way)
        return (_stress_spec, (dict(self._values),))

    def __repr__(self) -> str:
        return f"StressSpec({', '.join(f'{k}={v!r}' for k, v in self._values.items())})"

    def to_dict(self) -> dict[str, Any]:
        return _plain(self._values)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StressSpec:
        return cls(**d)


def _stress_spec(values: dict[str, Any]) -> StressSpec:
    return StressSpec(**values)


@dataclass(frozen=True)
class Paths:
    """Where things are on the machine that runs the worker. Not part of the run's identity."""

    out_root: str
    data_root: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Paths:
        return cls(**d)


@dataclass(frozen=True)
class Runtime:
    """How the worker looks after a run, not what it computes. Not part of the run's identity:
    changing it resumes the same runs."""

    # Minutes between checkpoints (0: after every epoch). A checkpoint is also written when the job
    # is told to stop (Slurm's USR2 before the time limit, preemption, SIGTERM) and at the end.
    checkpoint_every_min: float = 10.0
    # [report].tensorboard / --tensorboard: the worker writes TensorBoard event files
    # (cnnstress/tensorboard.py); watching a run does not change what it computes.
    tensorboard: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Runtime:
        return cls(**d)


@dataclass(frozen=True)
class SlurmConfig:
    """The grid's validated ``[slurm]`` table (grid.py checks ranges and safe strings; each field
    is documented in grid.SLURM_KEYS). Sweep-wide, never part of a run's identity: where a run
    trains does not change what it computes."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    time_min: int = 60
    gpus_per_task: int = 1
    cpus_per_task: int = 4
    mem_gb: float = 16.0
    array_parallelism: int = 64
    max_num_timeout: int = 3
    signal_delay_s: int = 120
    gather_time_min: int = 60
    gather_cpus: int = 2
    gather_mem_gb: float = 8.0
    runs_per_task: int = 1  # runs trained at once in one array task (cnnstress/pack.py)
    mps: bool = False  # those runs share the task's GPU through a CUDA MPS daemon of the task's own
    setup: tuple[str, ...] = ()
    additional: tuple[tuple[str, Any], ...] = ()  # extra sbatch options, (name, value), in grid order

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlurmConfig:
        d = dict(d)
        d["setup"] = tuple(d.get("setup", ()))
        d["additional"] = tuple(dict(d.get("additional", {})).items())
        return cls(**d)


#: RunSpec fields naming a user's file: the keys that say where it is (left out of the identity)
_FILE_LOCATION = {"model_source": ("root", "file"), "weights": ("file",)}
#: StressSpec fields holding a list of a user's files or folders: (the list's key, the keys of each
#: entry that say where it lies and what it is called; its sha256 stays in the identity)
_STRESS_FILE_LOCATION = {"ood": ("own", ("path", "set")), "shift": ("own", ("path", "set"))}


#: RunSpec identity fields that do not change the trained weights (RunSpec.training_hash)
_MEASUREMENT_ONLY = ("stress", "gradcam_layer", "variant", "grid_values")


@dataclass(frozen=True)
class RunSpec:
    sweep: str
    variant: str
    seed: int
    dataset: Component
    num_classes: int
    model: Component
    train: TrainSpec
    stress: StressSpec
    gradcam_layer: str
    grid_values: dict[str, Any]  # the [grid] values this run took, for readable ids and tables
    paths: Paths
    spec_version: int = SPEC_VERSION
    runtime: Runtime = Runtime()
    # a model named by reference (cnnstress/ownmodel.py): where its source is ("root", "file") and
    # what identifies it ("sha256" of the file, "head_layer"); empty, and absent from the JSON and
    # the identity, for a built-in model, so their run ids stay what they were
    model_source: dict[str, Any] = field(default_factory=dict)
    # [base].weights: {"file", "key", "sha256"}; the file's bytes (sha256) and key are the identity,
    # not its path. [base].normalization: {"mean", "std"}. Both empty, and absent from the JSON and
    # the identity, when not set, so the run ids of grids without them stay what they were
    weights: dict[str, Any] = field(default_factory=dict)
    normalization: dict[str, Any] = field(default_factory=dict)

    # -- identity -----------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """What makes two runs the same run: everything but where it happens to live."""
        return _plain(self._identity)

    @functools.cached_property
    def _identity(self) -> dict[str, Any]:
        # computed once per spec: spec_hash and settings_hash both need it (a grid of 5 000 runs
        # asks for both of every run)
        d = self.to_dict()
        del d["paths"]
        del d["sweep"]
        del d["runtime"]
        for key, where in _FILE_LOCATION.items():  # a file's sha256 identifies it, not where it lies
            if key in d:
                d[key] = {k: v for k, v in d[key].items() if k not in where}
        for key, (entries, where) in _STRESS_FILE_LOCATION.items():
            value = d["stress"].get(key)
            if isinstance(value, dict) and value.get(entries):
                d["stress"][key] = {**value, entries: [{k: v for k, v in e.items() if k not in where}
                                                       for e in value[entries]]}
        # a stress test's fields that hold their off value (off, or the default every run had
        # before the field existed) are left out: adding a stress test changes no run id
        for key, off in probes.optional_fields().items():
            if key in d["stress"] and d["stress"][key] == off:
                del d["stress"][key]
        return d

    @functools.cached_property
    def spec_hash(self) -> str:
        canon = json.dumps(self._identity, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:10]

    @functools.cached_property
    def settings_hash(self) -> str:
        """Like spec_hash but ignoring the variant's name: equal for runs that would train alike."""
        ident = {k: v for k, v in self._identity.items() if k != "variant"}
        canon = json.dumps(ident, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:10]

    @functools.cached_property
    def training_hash(self) -> str:
        """What determines the trained weights (model, data, training settings, seed) and nothing
        that only measures them: runs that share it train bitwise alike (deterministic mode), so a
        finished one's final weights stand for all of them (cnnstress/reuse.py). The stress tests
        and the Grad-CAM layer are measurements; the variant's name and the [grid] values (which
        repeat fields already in the identity) name the run."""
        ident = {k: v for k, v in self._identity.items() if k not in _MEASUREMENT_ONLY}
        canon = json.dumps(ident, sort_keys=True, separators=(",", ":"), allow_nan=False)
        return hashlib.sha256(canon.encode()).hexdigest()[:10]

    @property
    def run_id(self) -> str:
        """Readable prefix + hash of the canonical resolved spec: same spec, same id, anywhere."""
        parts = [self.variant]
        for key, value in sorted(self.grid_values.items()):
            if key == "seed":
                continue
            parts.append(f"{key.split('.')[-1]}{_short(value)}")
        parts.append(f"s{self.seed}")
        prefix = _SAFE.sub("", "-".join(parts))[:60]
        return f"{prefix}-{self.spec_hash}"

    # -- JSON ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = _plain(self)
        for key in ("model_source", "weights", "normalization"):
            if not d[key]:
                del d[key]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"RunSpec: unknown keys {sorted(unknown)}; valid keys: {sorted(known)}")
        d = dict(d)
        if d.get("spec_version", SPEC_VERSION) != SPEC_VERSION:
            raise ValueError(f"RunSpec: spec_version {d['spec_version']} is not {SPEC_VERSION}")
        d["dataset"] = Component.from_dict(d["dataset"])
        d["model"] = Component.from_dict(d["model"])
        d["train"] = TrainSpec.from_dict(d["train"])
        d["stress"] = StressSpec.from_dict(d["stress"])
        d["paths"] = Paths.from_dict(d["paths"])
        d["runtime"] = Runtime.from_dict(d.get("runtime", {}))  # spec.json written before it existed
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> RunSpec:
        return cls.from_dict(json.loads(text))


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return "T" if value else "F"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, dict)):
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:4]
    return str(value)


def spec_diff(a: RunSpec, b: RunSpec) -> dict[str, tuple[Any, Any]]:
    """Flattened key paths whose values differ between two specs (identity only, seed ignored).

    The report uses this to show that a variant changes one constrained thing.
    """
    fa, fb = _flatten(a.identity()), _flatten(b.identity())
    out = {}
    for key in sorted(set(fa) | set(fb)):
        if key in ("seed", "variant") or key.startswith("grid_values"):
            continue
        if fa.get(key) != fb.get(key):
            out[key] = (fa.get(key), fb.get(key))
    return out


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(d, list) and d and all(isinstance(x, dict) and "name" in x for x in d):
        # augmentation lists: compare as a list of names with their parameters
        return {prefix: [x["name"] + ("(" + ", ".join(f"{k}={v}" for k, v in x["params"].items()) + ")"
                                      if x.get("params") else "") for x in d]}
    return {prefix: d}


def _plain(obj: Any) -> Any:
    """dataclasses.asdict's result, without its copy.deepcopy of every leaf (the leaves of a
    RunSpec are str/int/float/bool/None, which deepcopy returns as they are)."""
    if isinstance(obj, StressSpec):
        return obj.to_dict()
    names = getattr(type(obj), "__dataclass_fields__", None)
    if names is not None:
        return {name: _plain(getattr(obj, name)) for name in names}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if isinstance(obj, dict):
        return {_plain(k): _plain(v) for k, v in obj.items()}
    return obj


def run_dir_for(spec: RunSpec) -> Path:
    """<out>/<sweep>/runs/<run_id>. The output root and the sweep folder may be links (a user's
    choice of disk); runs/ and the run folder, which cnnstress creates, may not: a link there sends
    the run's files into another run's folder or out of the sweep (LinkRefused)."""
    root = Path(spec.paths.out_root).resolve()
    sweep_dir = root / spec.sweep
    path = (sweep_dir / RUNS_DIR / spec.run_id).resolve()
    if root not in path.parents:  # sweep and run ids are validated; this is the last line of defence
        raise ValueError(f"run folder {path} escapes the output root {root}")
    atomic.refuse_links(sweep_dir, sweep_dir / RUNS_DIR / spec.run_id)  # (one inside the root too)
    return path
