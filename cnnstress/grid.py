"""Grid file (TOML) -> validated list of ``RunSpec``.

base <- variant overrides <- cartesian [grid] -> one RunSpec per point. Every problem is a
``GridError`` naming the file, the key path and what is allowed, raised before anything runs.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import catalog, data, ownmodel, probes
from .catalog import Param
from .config import Component, Paths, Runtime, RunSpec, SlurmConfig, StressSpec, TrainSpec
from .layout import GRID_COPY, LAUNCH_FILE  # LAUNCH_FILE: importers take it from here too

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

MAX_RUNS = 10_000
MAX_GRID_FILE_BYTES = 1_000_000
# Tables and arrays nested deeper than this are refused before anything walks them: the deepest
# real grid value ([variants.x].augment = [{name, params = {...}}]) is 5 levels, and the readers
# (tomllib's, and the key walkers here) recurse once per level, so 1 000 levels raised RecursionError.
MAX_NESTING = 32

# Names that become folder names, Slurm job names and HTML: letters, digits, '_' and '-', no dots
# (so never '..'), no slashes, quotes, spaces, '$', backticks or newlines.
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
# Slurm option values (partition, account, qos, constraint): Slurm's own characters, nothing a shell
# or an sbatch line could read as something else.
SAFE_SLURM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,:|&=+*\[\]-]{0,127}$")
SAFE_SLURM_KEY = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


class GridError(ValueError):
    """A grid problem, as one line: '<file>: <key path>: <what is wrong and what is allowed>'."""

    def __init__(self, source: str, path: str, message: str):
        # Keys, values and file names come from the user: a newline or other control character in
        # one must not break the one-line promise (hypothesis found a key named "\n").
        source, path, message = (_one_line(str(x)) for x in (source, path, message))
        self.source, self.path, self.message = source, path, message
        super().__init__(f"{source}: {path}: {message}" if path else f"{source}: {message}")


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


# ------------------------------------------------------------------------------------------------
# key tables
# ------------------------------------------------------------------------------------------------

TOP_KEYS = ("name", "description", "base", "variants", "grid", "compare", "stress", "report", "slurm")

# [base] keys that are plain values, with their defaults and ranges (None default = required).
BASE_SCALARS: dict[str, Param] = {
    "dataset": Param(None, choices=tuple(catalog.DATASETS)),
    "model": Param(None, choices=tuple(catalog.MODELS)),
    "epochs": Param(None, 0, 10_000, doc="0: nothing is trained, [base].weights are measured as they are"),
    "batch_size": Param(128, 2, 65_536, doc="BatchNorm needs at least 2 samples per batch"),
    "eval_batch_size": Param(1000, 1, 65_536),
    "label_smoothing": Param(0.0, 0.0, 0.5),
    "amp": Param(True),
    "amp_dtype": Param("bfloat16", choices=("bfloat16", "float16")),
    "deterministic": Param(True),
    "channels_last": Param(True),
    "compile": Param(False),
    "val_fraction": Param(0.1, 0.001, 0.5),
    "split_seed": Param(0, 0, 2**31 - 1),
    "seed": Param(0, 0, 2**31 - 1),
    # how often the worker writes checkpoint.pt; not part of a run's identity (config.Runtime)
    "checkpoint_every_min": Param(10.0, 0.0, 24 * 60.0, doc="0: after every epoch"),
    # trained weights to start from (or, with epochs = 0, to measure): a state dict file, relative
    # to the grid file's folder; its sha256 is part of the run's identity, its path is not
    "weights": Param("", doc="a torch state dict file (.pt); \"\" = the model's own initialisation"),
    "weights_key": Param("", doc="the key holding the state dict in a checkpoint dict; \"\" = the file is the state dict"),
}
# normalization = { mean = [...], std = [...] }: the preprocessing the weights expect (absent =
# the training split's statistics)
BASE_TABLES = ("dataset_options", "model_options", "optimizer", "schedule", "normalization")
BASE_KEYS = tuple(BASE_SCALARS) + BASE_TABLES + ("augment",)
BASE_DEFAULTS: dict[str, Any] = {
    "optimizer": {"name": "sgd"},
    "schedule": {"name": "constant"},
    "augment": [],
    "dataset_options": {},
    "model_options": {},
    "normalization": {},
}
# One sweep has one test set: these may not differ between runs (variants or [grid]).
SWEEP_WIDE = ("dataset", "dataset_options", "val_fraction", "split_seed", "checkpoint_every_min")

# [stress] keys are the registered stress tests' keys (cnnstress/probes/, each probe's ``keys``):
# ``probes.stress_keys()``, read when a grid is expanded.
REPORT_KEYS: dict[str, Param] = {
    "confidence_threshold": Param(0.7, 0.01, 0.999),
    "gradcam_layer": Param(""),
    # the classifier of a model by reference, when it is not the last nn.Linear its forward pass runs
    "head_layer": Param(""),
    "canonical_cases": Param(6, 1, 50),
    "top_failures": Param(32, 1, 400),
    # the smallest change worth detecting (a fraction: 0.01 = one accuracy point); the report and
    # --dry-run say how many seeds a sweep needs to detect it
    "target_difference": Param(0.01, 0.0001, 1.0),
    # TensorBoard event files per run (cnnstress/tensorboard.py); config.Runtime, not part of a run's id
    "tensorboard": Param(False, doc="write TensorBoard event files under <sweep>/tensorboard/ (the tensorboard extra)"),
}
COMPARE_KEYS: dict[str, Param] = {"baseline": Param("baseline")}
SLURM_KEYS: dict[str, Param] = {
    "partition": Param(""),
    "account": Param(""),
    "qos": Param(""),
    "constraint": Param(""),
    "time_min": Param(60, 1, 60 * 24 * 30),
    "gpus_per_task": Param(1, 0, 16, doc="0 or 1: a run trains on one GPU (checked in expand)"),
    "cpus_per_task": Param(4, 1, 1024),
    "mem_gb": Param(16.0, 0.1, 8192.0),
    "array_parallelism": Param(64, 1, 1_000_000),
    "max_num_timeout": Param(3, 0, 100),
    "signal_delay_s": Param(120, 10, 3600),
    "gather_time_min": Param(60, 1, 60 * 24 * 7),
    "gather_cpus": Param(2, 1, 256),
    "gather_mem_gb": Param(8.0, 0.1, 8192.0),
    "runs_per_task": Param(1, 1, 64, doc="runs trained at once in one array task, on its one GPU or its CPUs"),
    "mps": Param(False, doc="share the task's GPU through a CUDA MPS daemon of its own (runs_per_task > 1)"),
    "setup": Param([], doc="shell lines run before each task"),
    "additional": Param({}, doc="extra sbatch options, name -> value"),
}


# ------------------------------------------------------------------------------------------------
# the parsed grid
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    name: str
    source: str
    runs: list[RunSpec]
    variants: list[str]
    baseline: str
    report: dict[str, Any]
    slurm: SlurmConfig
    grid_keys: list[str]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    overrides: list[str] = field(default_factory=list)  # the --set values it was expanded with
    grid_dir: str = ""  # the folder relative dataset paths were read against


def load_grid(
    path: str | os.PathLike,
    *,
    overrides: list[str] | tuple[str, ...] = (),
    out_root: str | os.PathLike = "scratch",
    data_root: str | os.PathLike | None = None,
) -> Grid:
    """Read, validate and expand a grid file."""
    path = Path(path)
    source = str(path)
    try:
        st = path.stat()
    except OSError as e:
        raise GridError(source, "", f"cannot read the grid file ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise GridError(source, "", "cannot read the grid file (it is a directory); pass a .toml file")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or a device: reading one waits for a writer, forever
        raise GridError(source, "", f"not a regular file ({_file_kind(st.st_mode)}); pass a .toml file")
    size = st.st_size
    if size > MAX_GRID_FILE_BYTES:
        raise GridError(source, "", f"file is {size} bytes; at most {MAX_GRID_FILE_BYTES} allowed")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise GridError(source, "", f"not valid TOML: {e}") from None
    except OSError as e:  # a directory, a vanished file, no permission
        raise GridError(source, "", f"cannot read the grid file ({e.strerror or e}); pass a .toml file") from None
    raw = _parse_toml(text, source, "")
    return expand(raw, source=source, overrides=overrides, out_root=out_root, data_root=data_root,
                  grid_dir=_grid_dir(path))


def _grid_dir(path: Path) -> str:
    """The folder relative dataset paths are read against: the grid file's, or for a sweep's copy of
    the grid the folder of the file it was launched from (recorded in launch.json)."""
    launch = path.parent / LAUNCH_FILE
    if path.name == GRID_COPY and launch.is_file():
        try:
            recorded = json.loads(launch.read_text(encoding="utf-8")).get("grid_dir")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if isinstance(recorded, str) and recorded:
            return recorded
    return os.path.abspath(path.parent)


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def _parse_toml(text: str, source: str, path: str) -> dict[str, Any]:
    """tomllib.loads as a GridError: tomllib recurses once per nested array or inline table, so deep
    nesting raises RecursionError (not TOMLDecodeError) before any check here could run."""
    try:
        raw = tomllib.loads(text)
    except RecursionError:
        raise GridError(source, path, f"nested deeper than the TOML reader can follow; at most {MAX_NESTING} "
                        "levels of tables and arrays allowed") from None
    except (ValueError, MemoryError) as e:  # TOMLDecodeError is a ValueError
        raise GridError(source, path, f"not valid TOML: {e}") from None
    _check_nesting(raw, source, path)
    return raw


def _check_nesting(value: Any, source: str, where: str = "") -> None:
    """Refuse tables and arrays nested more than MAX_NESTING deep (dotted keys too: a.b.c is three
    tables), naming the key; walked with a stack, not recursion, so any depth is measured safely."""
    stack: list[tuple[Any, list[str], int]] = [(value, [where] if where else [], 0)]
    while stack:
        node, keys, depth = stack.pop()
        if depth > MAX_NESTING:
            shown = ".".join(keys[:6]) + ("..." if len(keys) > 6 else "")
            raise GridError(source, shown, f"nested more than {MAX_NESTING} levels deep; at most {MAX_NESTING} "
                            "levels of tables and arrays allowed")
        if isinstance(node, dict):
            stack.extend((v, [*keys, str(k)], depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((v, keys, depth + 1) for v in node)


def load_sweep_grid(sweep_dir: str | os.PathLike) -> Grid:
    """The grid a sweep folder was launched with: its copy of grid.toml expanded with the launch's
    --set values and data root (from launch.json), so the run ids are the ones on disk."""
    sweep_dir = Path(sweep_dir)
    launch: dict[str, Any] = {}
    path = sweep_dir / LAUNCH_FILE
    if path.exists():
        try:
            launch = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise GridError(str(path), "", f"cannot be read: {e}") from None
    return load_grid(sweep_dir / GRID_COPY, overrides=launch.get("overrides", []), out_root=sweep_dir.parent,
                     data_root=launch.get("data_root"))


def expand(
    raw: dict[str, Any],
    *,
    source: str = "<grid>",
    overrides: list[str] | tuple[str, ...] = (),
    out_root: str | os.PathLike = "scratch",
    data_root: str | os.PathLike | None = None,
    grid_dir: str | os.PathLike | None = None,
) -> Grid:
    """Validate a parsed grid (a dict as tomllib returns it) and expand it into runs. Relative
    dataset paths are read against ``grid_dir`` (default: the working directory)."""
    v = _Validator(source)
    v.grid_dir = os.path.abspath(grid_dir if grid_dir is not None else os.curdir)
    if not isinstance(raw, dict):
        raise GridError(source, "", "the grid must be a TOML table")
    _check_nesting(raw, source)  # expand() is also called with dicts that no file reader checked
    raw = _apply_overrides(raw, overrides, v)
    if overrides:  # a --set key path under a deep grid value can nest the two deeper than either
        _check_nesting(raw, "--set")
    v.check_keys(raw, TOP_KEYS, "")

    name = v.safe_name(raw.get("name"), "name")
    if "description" in raw:
        v.typed(raw["description"], str, "description")
    base_raw = v.table(raw.get("base"), "[base]", required=True)
    v.check_keys(base_raw, BASE_KEYS, "[base]")
    for key, p in BASE_SCALARS.items():
        if p.default is None and key not in base_raw:
            raise GridError(source, f"[base].{key}", f"is required ({p.describe()})")

    variants_raw = dict(v.table(raw.get("variants", {}), "[variants]"))
    if not variants_raw:
        variants_raw = {"baseline": {}}
    variant_names = []
    for vname, vtab in list(variants_raw.items()):
        v.safe_name(vname, f"[variants] name {vname!r}")
        vt = variants_raw[vname] = v.table(vtab, f"[variants.{vname}]", required=True)
        v.check_keys(vt, BASE_KEYS, f"[variants.{vname}]")
        for key in SWEEP_WIDE + ("seed",):
            if key in vt:
                why = ("seeds go in [grid].seed" if key == "seed" else "it is how the sweep is looked after, set it in [base]"
                       if key == "checkpoint_every_min" else "one sweep has one dataset and split")
                raise GridError(source, f"[variants.{vname}].{key}", f"cannot differ between variants ({why})")
        variant_names.append(vname)

    compare = v.section(raw.get("compare", {}), COMPARE_KEYS, "[compare]")
    baseline = raw.get("compare", {}).get("baseline") if isinstance(raw.get("compare"), dict) else None
    if baseline is None:
        baseline = "baseline" if "baseline" in variant_names else variant_names[0]
    elif baseline not in variant_names:
        raise GridError(source, "[compare].baseline", f"names no variant: {baseline!r}; variants are {variant_names}{_suggest(baseline, variant_names)}")
    compare["baseline"] = baseline

    grid_raw = _flatten_grid(v.table(raw.get("grid", {}), "[grid]"))
    for key, values in grid_raw.items():
        top = key.split(".")[0]
        if top not in BASE_KEYS:
            raise GridError(source, f"[grid].{key}", f"unknown key{_suggest(top, BASE_KEYS)}; valid keys: {', '.join(BASE_KEYS)}")
        if top in SWEEP_WIDE:
            raise GridError(source, f"[grid].{key}", "cannot vary within a sweep (one sweep has one dataset, one split "
                                                     "and one checkpoint cadence)")
        if not isinstance(values, list):
            raise GridError(source, f"[grid].{key}", f"must be a list of values, got {_tname(values)}")
        if not values:
            raise GridError(source, f"[grid].{key}", "is an empty list: the grid would have no runs")
    grid_keys = sorted(grid_raw)
    n_points = math.prod(len(grid_raw[k]) for k in grid_keys) * len(variant_names)
    if n_points > MAX_RUNS:
        raise GridError(source, "[grid]", f"expands to {n_points} runs; at most {MAX_RUNS} allowed")

    try:
        stress_keys = probes.stress_keys()
    except probes.ProbeRegistryError as e:  # a registered stress test's module is broken: one line naming it
        raise GridError(source, "[stress]", str(e)) from None
    stress = v.section(raw.get("stress", {}), stress_keys, "[stress]")
    report = v.section(raw.get("report", {}), REPORT_KEYS, "[report]")
    slurm = v.section(raw.get("slurm", {}), SLURM_KEYS, "[slurm]")
    v.slurm_strings(slurm)
    if slurm["gpus_per_task"] > 1:
        # A worker trains one run on one device; more GPUs per task would sit idle while billed.
        raise GridError(source, "[slurm].gpus_per_task",
                        f"{slurm['gpus_per_task']}: a run trains on one GPU, so the others would sit idle; allowed: "
                        "0 (CPU nodes) or 1. Slurm already packs one-GPU array tasks onto a node's GPUs; raise "
                        "[slurm].array_parallelism for more at once")
    if slurm["mps"] and slurm["runs_per_task"] == 1:
        raise GridError(source, "[slurm].mps", "true needs [slurm].runs_per_task of 2 or more: MPS lets several "
                                               "processes share a GPU, and one run per task has none to share it with")
    if slurm["mps"] and slurm["gpus_per_task"] == 0:
        raise GridError(source, "[slurm].mps", "true needs [slurm].gpus_per_task = 1: MPS shares a GPU, and these "
                                               "tasks ask for none")

    out_abs = os.path.abspath(out_root)
    data_abs = os.path.abspath(data_root) if data_root is not None else os.path.join(out_abs, "data")
    paths = Paths(out_root=out_abs, data_root=data_abs)
    # each stress test turns its validated keys into its StressSpec fields (and checks what no
    # single key's range can express)
    stress_spec = StressSpec(**probes.resolve(v, stress, dataset=_merge(BASE_DEFAULTS, base_raw).get("dataset"),
                                              data_root=data_abs))

    runs: list[RunSpec] = []
    seen: dict[str, str] = {}
    for vname in variant_names:
        merged = _merge(_merge(BASE_DEFAULTS, base_raw), variants_raw[vname])
        for point in itertools.product(*(grid_raw[k] for k in grid_keys)):
            values = dict(zip(grid_keys, point))
            cfg = merged
            for key, value in values.items():
                cfg = _set_path(cfg, key, value)
            where = _Origin(vname, variants_raw[vname], values)
            spec = _build_spec(v, cfg, where, name=name, variant=vname, grid_values=values,
                               report=report, stress=stress_spec, paths=paths)
            where = f"[variants.{vname}]" + (f" with [grid] {values}" if values else "")
            same = spec.settings_hash  # everything but the variant's name
            if same in seen:
                raise GridError(source, where, f"duplicate run: resolves to the same settings as {seen[same]} "
                                               "(a variant must change something; grid values must differ)")
            seen[same] = where
            runs.append(spec)
    if not runs:
        raise GridError(source, "", "the grid expands to no runs")
    return Grid(name=name, source=source, runs=runs, variants=variant_names, baseline=baseline,
                report=report, slurm=SlurmConfig.from_dict(slurm), grid_keys=grid_keys, raw=raw, overrides=list(overrides),
                grid_dir=v.grid_dir)


# ------------------------------------------------------------------------------------------------
# building one spec
# ------------------------------------------------------------------------------------------------


class _Origin:
    """Names the section a merged value came from: [grid], the variant's table, or [base]."""

    def __init__(self, variant: str, overrides: dict[str, Any], grid_values: dict[str, Any]):
        self.variant, self.overrides, self.grid_values = variant, overrides, grid_values

    def __call__(self, key: str) -> _Where:
        return _Where(self, key)

    def path(self, key: str) -> str:
        top = key.split(".")[0]
        if any(g == key or g.startswith(key + ".") or key.startswith(g + ".") for g in self.grid_values):
            return f"[grid].{key} (variant {self.variant}, {self.grid_values})"
        if top in self.overrides:
            return f"[variants.{self.variant}].{key}"
        return f"[base].{key}"


class _Where:
    """A key path, worked out only when an error message needs it (expanding a 5 000-run grid
    asks for ~100 000 of them and formats none)."""

    __slots__ = ("origin", "key")

    def __init__(self, origin: _Origin, key: str):
        self.origin, self.key = origin, key

    def __str__(self) -> str:
        return self.origin.path(self.key)

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


def _build_spec(v: _Validator, cfg: dict[str, Any], where: _Origin, *, name: str, variant: str,
                grid_values: dict[str, Any], report: dict[str, Any], stress: StressSpec,
                paths: Paths) -> RunSpec:
    sc = {}
    for key, p in BASE_SCALARS.items():
        if key == "model" and ownmodel.is_reference(cfg.get(key)):
            sc[key] = cfg[key]  # a model by reference: checked by _reference_model, built at launch
            continue
        try:
            sc[key] = v.value(cfg.get(key, p.default), p, where(key))
        except GridError as e:
            if key != "model":
                raise
            raise GridError(e.source, e.path, f"{e.message}; or your own by reference: {ownmodel.FORMS}"[:600]) from None
    num_classes, dopts = catalog.DATASETS[sc["dataset"]]
    dataset = Component(sc["dataset"], v.params(cfg.get("dataset_options", {}), dopts, where("dataset_options")))
    if sc["dataset"] in OWN_DATASETS:
        dataset, num_classes = v.own_dataset(dataset, paths.data_root, where("dataset_options"))
    model_source: dict[str, Any] = {}
    if ownmodel.is_reference(sc["model"]):
        model, model_source = _reference_model(v, cfg, where, report)
    else:
        model = Component(sc["model"], v.params(cfg.get("model_options", {}), catalog.MODELS[sc["model"]], where("model_options")))
        if report["head_layer"]:
            raise GridError(v.source, "[report].head_layer", f"names the head of a model by reference only; "
                            f"{sc['model']} has its own (model.head)")
    weights = v.weights(sc["weights"], sc["weights_key"], where)
    if sc["epochs"] == 0 and not weights:
        raise GridError(v.source, where("epochs"), "0 needs [base].weights (nothing is trained: the run measures "
                                                   "the given weights); allowed: 1 to 10000, or 0 with weights")
    normalization = v.normalization(cfg.get("normalization", {}), where("normalization"))
    optimizer = v.named(cfg["optimizer"], catalog.OPTIMIZERS, where("optimizer"))
    schedule = v.named(cfg["schedule"], catalog.SCHEDULES, where("schedule"))
    if sc["epochs"] == 0:
        pass  # nothing is trained: the schedule is never stepped
    elif schedule.name == "multistep":
        ms = schedule.params["milestones"]
        if any(m > sc["epochs"] for m in ms) or ms != sorted(set(ms)):
            raise GridError(v.source, where("schedule.milestones"),
                            f"must be increasing epochs in [1, epochs={sc['epochs']}], got {ms}")
    elif schedule.name == "cosine" and schedule.params["warmup_epochs"] >= sc["epochs"]:
        raise GridError(v.source, where("schedule.warmup_epochs"),
                        f"must be less than epochs={sc['epochs']} (a warm-up that never ends), got "
                        f"{schedule.params['warmup_epochs']}")
    augment = v.augment_list(cfg.get("augment", []), where("augment"))
    # a model by reference: "" = the last module with a 4-D output, found (and a named layer checked)
    # on the meta device at launch (launcher.model_problem), never here: reading a grid imports no torch
    layer = report["gradcam_layer"] or catalog.GRADCAM_DEFAULT.get(model.name, "")
    valid_layers = () if ownmodel.is_reference(model.name) else catalog.gradcam_layer_paths(model.name, model.params)
    if valid_layers and layer not in valid_layers:
        nested = [p for p in valid_layers if "." in p]
        raise GridError(v.source, "[report].gradcam_layer",
                        f"{layer!r} is not a feature-map layer of {model.name}{_suggest(layer, valid_layers)}; valid: "
                        f"{', '.join(catalog.GRADCAM_LAYERS[model.name])} (nested: {nested[0]} ... {nested[-1]})"[:400])
    train = TrainSpec(
        epochs=sc["epochs"], batch_size=sc["batch_size"], eval_batch_size=sc["eval_batch_size"],
        optimizer=optimizer, schedule=schedule, augment=augment, label_smoothing=sc["label_smoothing"],
        amp=sc["amp"], amp_dtype=sc["amp_dtype"], deterministic=sc["deterministic"],
        channels_last=sc["channels_last"], compile=sc["compile"], val_fraction=sc["val_fraction"],
        split_seed=sc["split_seed"],
    )
    return RunSpec(sweep=name, variant=variant, seed=sc["seed"], dataset=dataset, num_classes=num_classes,
                   model=model, train=train, stress=stress, gradcam_layer=layer,
                   grid_values=dict(sorted(grid_values.items())), paths=paths,
                   runtime=Runtime(checkpoint_every_min=sc["checkpoint_every_min"], tensorboard=report["tensorboard"]),
                   model_source=model_source, weights=weights, normalization=normalization)


def _reference_model(v: _Validator, cfg: dict[str, Any], where: _Origin,
                     report: dict[str, Any]) -> tuple[Component, dict[str, Any]]:
    """A model named by reference (cnnstress/ownmodel.py): its options as given (the callable's
    keyword arguments) and where its source is, with the file's sha256 (part of the run's identity)."""
    ref = cfg["model"]
    if not _SAFE_REFERENCE.match(ref):
        raise GridError(v.source, where("model"), f"{ref!r} has characters a model reference may not hold; "
                        f"allowed: letters, digits, spaces and _ . - / : ; use {ownmodel.FORMS}")
    try:
        options = ownmodel.check_options(cfg.get("model_options", {}))
    except ownmodel.ReferenceProblem as e:
        raise GridError(v.source, where("model_options"), str(e)) from None
    try:
        source = ownmodel.resolve(ref, Path(v.grid_dir))  # the grid file's folder, as recorded at launch
    except ownmodel.ReferenceProblem as e:
        raise GridError(v.source, where("model"), str(e)) from None
    if report["head_layer"]:
        source = {**source, "head_layer": report["head_layer"]}
    return Component(ref, options), source


_SAFE_REFERENCE = re.compile(r"[A-Za-z0-9_. /:-]+\Z")


# Datasets of the user's own images: the option naming their file or folder, and the class count
# comes from the data (the folders, or the .npz's labels), counted once per sweep.
OWN_DATASETS = {"imagefolder": "root", "arrays": "path"}


class _Validator:
    """Type and range checks that raise GridError with the key path."""

    def __init__(self, source: str):
        self.source = source
        self.grid_dir = os.path.abspath(os.curdir)
        self._own: dict[str, tuple[Component, int]] = {}
        self._weights: dict[str, str] = {}

    def own_dataset(self, dataset: Component, data_root: str, path: Any) -> tuple[Component, int]:
        """``dataset`` with its path option resolved against the grid file's folder, and its class
        count read from the data (folders listed / labels read; no image opened)."""
        key = json.dumps([dataset.name, dataset.params], sort_keys=True)
        if key not in self._own:
            option = OWN_DATASETS[dataset.name]
            value = dataset.params[option]
            if not value:
                raise self.fail(f"{path}.{option}", f"is required ({catalog.DATASETS[dataset.name][1][option].doc})")
            params = dict(dataset.params)
            params[option] = os.path.normpath(os.path.join(self.grid_dir, os.path.expanduser(value)))
            size = params.get("image_size")
            if size is not None and size not in data.SUPPORTED_IMAGE_SIZES:
                raise self.fail(f"{path}.image_size", f"{size}: allowed: an integer in {data.SUPPORTED_IMAGE_SIZES[0]}.."
                                f"{data.SUPPORTED_IMAGE_SIZES[-1]} (the side of the square images)")
            for split in ("train", "test"):
                name = params.get(split)
                if name is not None and (not name or os.path.isabs(name) or ".." in Path(name).parts):
                    raise self.fail(f"{path}.{split}", f"{name!r}: allowed: a sub-folder name of root")
            try:
                classes = data.own_classes(dataset.name, data_root, params)
            except data.DataError as e:
                raise self.fail(f"{path}.{option}", str(e)) from None
            self._own[key] = (Component(dataset.name, dict(sorted(params.items()))), len(classes))
        return self._own[key]

    def weights(self, path: str, key: str, where: _Origin) -> dict[str, Any]:
        """[base].weights resolved against the grid file's folder, with the file's sha256 (hashed
        once per file and grid read); {} when none. The file is opened here, not unpickled: reading
        a grid imports no torch (launcher.model_problem loads it at launch)."""
        if not path:
            if key:
                raise self.fail(str(where("weights_key")), "names a key in [base].weights, which is not set")
            return {}
        full = os.path.normpath(os.path.join(self.grid_dir, os.path.expanduser(path)))
        if full not in self._weights:
            if not os.path.isfile(full):
                raise self.fail(str(where("weights")), f"{path!r}: no such file ({full}); allowed: a torch state "
                                "dict file, relative to the grid file's folder")
            try:
                self._weights[full] = ownmodel.sha256_file(Path(full))
            except OSError as e:
                raise self.fail(str(where("weights")), f"{full}: cannot be read ({e.strerror})") from None
        return {"file": full, "key": key, "sha256": self._weights[full]}

    def normalization(self, given: Any, path: Any) -> dict[str, Any]:
        """{mean, std} as 3 floats each (one value stands for all three channels); {} when not given."""
        given = self.table(given, str(path))
        if not given:
            return {}
        self.check_keys(given, ("mean", "std"), str(path))
        out = {}
        for name in ("mean", "std"):
            vals = given.get(name)
            ok = (isinstance(vals, list) and len(vals) in (1, 3)
                  and all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in vals))
            if ok and name == "std":
                ok = all(x > 0 for x in vals)
            if not ok:
                what = "positive numbers" if name == "std" else "finite numbers"
                raise self.fail(f"{path}.{name}", f"must be a list of 1 or 3 {what} (per RGB channel of the [0, 1] "
                                f"image), got {vals!r}"[:300])
            out[name] = [float(x) for x in vals] * (3 if len(vals) == 1 else 1)
        return out

    def fail(self, path: str, msg: str) -> GridError:
        return GridError(self.source, path, msg)

    def check_keys(self, table: dict[str, Any], allowed, path: str) -> None:
        for key in table:
            if key not in allowed:
                where = f"{path}.{key}" if path else str(key)
                raise self.fail(where, f"unknown key{_suggest(str(key), allowed)}; valid keys: {', '.join(allowed)}")

    def table(self, value: Any, path: str, required: bool = False) -> dict[str, Any]:
        if value is None:
            if required:
                raise self.fail(path, "is required (a TOML table)")
            return {}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a table, got {_tname(value)}")
        return value

    def typed(self, value: Any, typ: type, path: str) -> Any:
        if not isinstance(value, typ) or (typ is int and isinstance(value, bool)):
            raise self.fail(path, f"must be {typ.__name__}, got {_tname(value)} {value!r}"[:300])
        return value

    def safe_name(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
            raise self.fail(path, f"{value!r} is not a safe name: use 1-64 letters, digits, '_' or '-', starting with a letter or digit"[:300])
        return value

    def value(self, value: Any, p: Param, path: str) -> Any:
        """Check one value against a Param; ints are accepted where floats are expected."""
        try:
            return p.check(value)
        except ValueError as e:
            raise self.fail(path, str(e)) from None

    def params(self, given: Any, spec: dict[str, Param], path: str) -> dict[str, Any]:
        given = self.table(given, path)
        self.check_keys(given, tuple(spec), path)
        out = {}
        for key, p in spec.items():
            val = self.value(given.get(key, p.default), p, f"{path}.{key}")
            if isinstance(p.default, list):
                val = self.int_list(val, f"{path}.{key}", p.lo, p.hi)
            out[key] = val
        return dict(sorted(out.items()))

    def named(self, given: Any, registry: dict[str, dict[str, Param]], path: str) -> Component:
        given = self.table(given, path)
        if "name" not in given:
            raise self.fail(f"{path}.name", f"is required; allowed: {', '.join(registry)}")
        name = given["name"]
        if not isinstance(name, str) or name not in registry:
            raise self.fail(f"{path}.name", f"{name!r} is not allowed{_suggest(str(name), registry)}; allowed: {', '.join(registry)}"[:400])
        rest = {k: x for k, x in given.items() if k != "name"}
        return Component(name, self.params(rest, registry[name], path))

    def augment_list(self, given: Any, path: str) -> list[Component]:
        if not isinstance(given, list):
            raise self.fail(path, f"must be a list of augmentation names or {{name = ..., ...}} tables, got {_tname(given)}")
        out, names = [], set()
        for i, item in enumerate(given):
            if isinstance(item, str):
                item = {"name": item}
            comp = self.named(item, catalog.AUGMENTS, f"{path}[{i}]")
            problem = catalog.augment_problem(comp.name, comp.params)
            if problem is not None:
                raise self.fail(f"{path}[{i}].{problem[0]}", problem[1])
            if comp.name in names:
                raise self.fail(f"{path}[{i}]", f"{comp.name!r} is listed twice")
            names.add(comp.name)
            out.append(comp)
        order = list(catalog.AUGMENTS)  # canonical order: the one they are applied in
        return sorted(out, key=lambda c: order.index(c.name))

    def int_list(self, value: Any, path: str, lo, hi) -> list[int]:
        if not isinstance(value, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in value):
            raise self.fail(path, f"must be a list of integers, got {value!r}"[:300])
        for x in value:
            if (lo is not None and x < lo) or (hi is not None and x > hi):
                raise self.fail(path, f"{x} is out of range [{lo}, {hi}]")
        if len(set(value)) != len(value):
            raise self.fail(path, f"has duplicates: {value}")
        return sorted(value)

    def section(self, given: Any, spec: dict[str, Param], path: str) -> dict[str, Any]:
        given = self.table(given, path)
        self.check_keys(given, tuple(spec), path)
        out = {}
        for key, p in spec.items():
            out[key] = self.value(given.get(key, p.default), p, f"{path}.{key}") if key in given else p.default
        return out

    def slurm_strings(self, slurm: dict[str, Any]) -> None:
        for key in ("partition", "account", "qos", "constraint"):
            val = slurm[key]
            if val and (not SAFE_SLURM.fullmatch(val) or ".." in val):
                raise self.fail(f"[slurm].{key}", f"{val!r} contains characters not allowed in a Slurm option (letters, digits and _ . , : | & = + * [ ] - only, no '..')"[:300])
        setup = slurm["setup"]
        if not isinstance(setup, list) or not all(isinstance(s, str) for s in setup):
            raise self.fail("[slurm].setup", "must be a list of shell lines (strings)")
        for i, line in enumerate(setup):
            if any(c in line for c in "\n\r\x00"):
                raise self.fail(f"[slurm].setup[{i}]", "must be one line: no newline or NUL characters")
        extra = self.table(slurm["additional"], "[slurm].additional")
        for key, val in extra.items():
            if not SAFE_SLURM_KEY.fullmatch(key):
                raise self.fail(f"[slurm].additional.{key}", "option names are lower-case letters, digits and '_'")
            if isinstance(val, bool) or not isinstance(val, (str, int)) or (isinstance(val, str) and (not SAFE_SLURM.fullmatch(val) or ".." in val)):
                raise self.fail(f"[slurm].additional.{key}", f"{val!r} is not a safe Slurm option value"[:300])


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


_suggest = catalog.suggest
_tname = catalog.type_name


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Variant overrides: tables merge key by key, unless the override names another component
    (then its parameters would not fit: it replaces the table)."""
    out = dict(base)
    for key, val in over.items():
        old = out.get(key)
        if isinstance(old, dict) and isinstance(val, dict) and val.get("name", old.get("name")) == old.get("name"):
            out[key] = _merge(old, val)
        else:
            out[key] = val
    return out


def _set_path(cfg: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    head, _, rest = dotted.partition(".")
    out = dict(cfg)
    if rest:
        sub = out.get(head, {})
        out[head] = _set_path(sub if isinstance(sub, dict) else {}, rest, value)
    else:
        out[head] = value
    return out


def _flatten_grid(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, val in table.items():
        full = f"{prefix}.{key}" if prefix else key
        if isinstance(val, dict):
            out.update(_flatten_grid(val, full))
        else:
            out[full] = val
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """'optimizer.lr=0.01' -> ('optimizer.lr', 0.01). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise GridError("--set", text, "must look like key=value (e.g. epochs=2, optimizer.lr=0.01)")
    key, _, val = text.partition("=")
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*", key):
        raise GridError("--set", key, "is not a key path (letters, digits, '_' separated by '.')")
    if key.count(".") >= MAX_NESTING:
        shown = ".".join(key.split(".")[:6]) + f"... ({key.count('.') + 1} keys deep)"
        raise GridError("--set", shown, f"nested more than {MAX_NESTING} levels deep; at most {MAX_NESTING} allowed")
    try:
        parsed = tomllib.loads(f"v = {val}")["v"]
    except RecursionError:  # see _parse_toml
        raise GridError("--set", key, f"the value is nested deeper than the TOML reader can follow; at most "
                        f"{MAX_NESTING} levels of tables and arrays allowed") from None
    except ValueError:  # not a TOML literal (TOMLDecodeError): a bare word, taken as a string
        parsed = val.strip()
    _check_nesting(parsed, "--set", key)
    return key, parsed


def _apply_overrides(raw: dict[str, Any], overrides, v: _Validator) -> dict[str, Any]:
    """--set applies to [base] unless the key starts with a section name (stress., report., ...)."""
    for text in overrides:
        key, value = parse_override(text)
        head = key.split(".")[0]
        if head in ("name",):
            raw = _set_path(raw, key, value)
        elif head in ("stress", "report", "slurm", "compare", "grid", "variants"):
            raw = _set_path(raw, key, value)
        elif head in BASE_KEYS:
            _refuse_shadowed_override(raw, key, text)
            raw = _set_path(raw, f"base.{key}", value)
        else:
            raise GridError("--set", key, f"unknown key{_suggest(head, BASE_KEYS)}; valid: name, stress.*, report.*, slurm.*, compare.*, grid.*, variants.*, or a [base] key: {', '.join(BASE_KEYS)}")
    return raw


def _refuse_shadowed_override(raw: dict[str, Any], key: str, text: str) -> None:
    """A --set of a [base] key that [grid] or a variant sets too would change nothing (or only some
    runs) without a word: say so, and name the --set that does what was meant."""
    grid = raw.get("grid")
    if isinstance(grid, dict):
        for g in _flatten_grid(grid):
            if g == key or g.startswith(key + ".") or key.startswith(g + "."):
                raise GridError("--set", text, f"[grid].{g} sets this key for every run, so a [base] value "
                                f"would change nothing; set the grid instead, e.g. --set grid.{g}=[...]")
    variants = raw.get("variants")
    if isinstance(variants, dict):
        for name, table in variants.items():
            node: Any = table
            base: Any = raw.get("base")
            for part in key.split("."):
                if not isinstance(node, dict):
                    break  # the variant replaces a whole value on the way: it shadows the key
                if "name" in node and (not isinstance(base, dict) or base.get("name") != node["name"]):
                    break  # it names another component, whose table replaces the base one
                if part not in node:
                    node = None
                    break
                node = node[part]
                base = base.get(part) if isinstance(base, dict) else None
            if node is not None and isinstance(table, dict):
                raise GridError("--set", text, f"[variants.{name}] sets this key, so a [base] value would not "
                                f"reach that variant; use --set variants.{name}.{key}=... (and the same for [base])")


