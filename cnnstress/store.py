"""The on-disk layout of one run folder: results.h5, DONE.json, FAILED.json and atomic files.

This is the only module of the project that imports h5py, and it imports no torch, so the gather
job and the status command can read runs on a login node. Layout (see docs/design.md, "What a run writes"):

    runs/<run_id>/spec.json       written by launch
    runs/<run_id>/checkpoint.pt   latest epoch checkpoint (atomic_write_bytes)
    runs/<run_id>/results.h5      publish_results: temp file, validated, fsynced, os.replace'd
    runs/<run_id>/DONE.json       write_done, last: summary + sha256 of results.h5
    runs/<run_id>/FAILED.json     write_failed: reason + traceback

A run is finished only when DONE.json parses, results.h5 exists, its sha256 equals the one in
DONE.json and it passes validate_results (``run_state``).

Every file is replaced atomically: written to a temp file in the same folder whose name starts with
"." and contains ".tmp" (``.<name>.tmp-<pid>-<8 hex>``), fsynced, os.replace'd, and the folder
fsynced. A writer killed half-way leaves only such a temp file, which ``cleanup_temp_files`` removes.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

import h5py
import numpy as np

from .atomic import (atomic_write_bytes, atomic_write_json, cleanup_temp_files, fsync_dir,  # noqa: F401
                     fsync_file, json_text, sha256_file, temp_path)
from . import probes
from .faults import maybe_fail
from .layout import IMAGE_SIZE_ATTR, Field

SCHEMA_VERSION: int = 1

# the run folder's file names are defined once, in layout.py (re-exported here for store's callers)
from .layout import (CHECKPOINT_NAME, CHECKPOINT_NAMES, DONE_NAME, FAILED_NAME,  # noqa: E402,F401
                     HISTORY, PREV_CHECKPOINT_NAME, PROGRESS_FILE, RESULTS_NAME)

# Chunks of about 1 MiB: big enough that gzip works well and reading a whole dataset is a few
# hundred chunk reads, small enough that reading a few rows does not inflate much.
_CHUNK_BYTES = 2**20
_GZIP_LEVEL = 4
# Value checks read big datasets in blocks of about this many bytes, so that validating a run with
# many stress sets stays memory-bounded.
_BLOCK_BYTES = 2**22

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class ResultsError(ValueError):
    """A results.h5 or DONE.json that is broken or does not follow the schema.

    The message names the file and, where there is one, the dataset or attribute, and says why.
    A subclass of ValueError, so publish_results' complaints about bad arrays are ValueErrors too.
    """


# --------------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------------

# Placeholders that may appear in a field's template, with the path segment(s) they match.
_NAME_SEG = r"[a-z0-9_]+"
_PLACEHOLDERS: dict[str, str] = {
    "<corruption>": _NAME_SEG,
    "<severity>": r"[1-5]",
    "<norm>": r"(?:linf|l2)",
    "<eps>": r"[0-9]+(?:\.[0-9]+)?",  # the radius as written in the grid (linf in 1/255 units; eps_text)
    "<set>": _NAME_SEG,
    "<step>": r"[0-9]{2}_[a-z0-9_]+",  # NN_block: the order of the cascade, then what was re-initialised
    # only as the last segment of an optional-prefix field: one or more segments
    "<name>": rf"{_NAME_SEG}(?:/{_NAME_SEG})*",
}


# The rows every run writes; each stress test (cnnstress/probes/) adds the rows of what it measures,
# and SCHEMA is the two together (``schema()``).
CORE_SCHEMA: tuple[Field, ...] = (
    *(Field(f"history/{key.name}", key.dtype, ("E",), required=True, doc=key.doc) for key in HISTORY),
    Field("test/index", "int32", ("N",), True, check="index", doc="index into the official test split"),
    Field("test/label", "int16", ("N",), True, check="label", doc="true class"),
    Field("test/logits", "float32", ("N", "C"), True, check="logits", chunked=True, doc="final logits"),
    Field("test/embedding", "float16", ("N", "D"), True, chunked=True, doc="penultimate activations"),
    Field("test/gradcam/pred", "float16", ("N", "h", "w"), True, chunked=True, doc="Grad-CAM, predicted class"),
    Field("test/gradcam/true", "float16", ("N", "h", "w"), True, chunked=True, doc="Grad-CAM, true class"),
    Field("val/index", "int32", ("V",), bundle="val", check="index", doc="index into the training set"),
    Field("val/label", "int16", ("V",), bundle="val", check="label", doc="true class"),
    Field("val/logits", "float32", ("V", "C"), bundle="val", check="logits", chunked=True, doc="final logits"),
)

# Root attributes: name -> kind ("int", "str" or "json" = JSON text of an object).
ROOT_ATTRS: dict[str, str] = {
    "schema_version": "int",
    "run_id": "str",
    "spec": "json",
    "variant": "str",
    "seed": "int",
    "versions": "json",
    "device": "str",
    "git_sha": "str",
    "timings": "json",
}
# Root attributes a file may lack (written before they existed); readers say so, never fail. The
# stress tests add theirs (probes.root_attrs(); OPTIONAL_ROOT_ATTRS is the two together).
# precision: AMP on/off and dtype, and the float32 and determinism settings in force (TF32 off).
CORE_OPTIONAL_ROOT_ATTRS: dict[str, str] = {
    "precision": "json",
    # injected_faults: the CNNSTRESS_FAULT test hook's value when it was set (absent otherwise)
    "injected_faults": "str",
    # normalization: the mean and std the model's input was normalised with, and where they came
    # from ([base].normalization or the training split)
    "normalization": "json",
    # weights_from_run: the finished run of the same training settings whose final weights this run
    # measured instead of training (cnnstress/reuse.py; absent when the run trained)
    "weights_from_run": "str",
    # image_size: the side of the run's square images where it is not 32 (your own images at 16..128)
    IMAGE_SIZE_ATTR: "int",
}


def _template_regex(template: str) -> re.Pattern[str]:
    parts = [_PLACEHOLDERS.get(seg, re.escape(seg)) for seg in template.split("/")]
    return re.compile("^" + "/".join(parts) + "$")


def _group_regexes(template: str) -> list[re.Pattern[str]]:
    """Regexes for every group a dataset of this template lives in (all proper prefixes)."""
    segs = template.split("/")
    out = []
    for k in range(1, len(segs)):
        out.append(_template_regex("/".join(segs[:k])))
    if segs[-1] == "<name>":  # nested names: faithfulness/a/b is a group too
        out.append(re.compile("^" + _template_regex("/".join(segs[:-1])).pattern[1:-1] + rf"(?:/{_NAME_SEG})+$"))
    return out


@dataclass(frozen=True)
class _Schema:
    """SCHEMA of the registered stress tests, with what matching a path against it needs."""

    fields: tuple[Field, ...]
    field_res: tuple[tuple[Field, re.Pattern[str]], ...]
    group_res: tuple[re.Pattern[str], ...]
    optional_attrs: dict[str, str]


_compiled: tuple[tuple[probes.Probe, ...], _Schema] | None = None


def _schema() -> _Schema:
    """Built once per registry (the registered stress tests can change while a process runs: a test
    registers one)."""
    global _compiled
    registered = probes.registered()
    if _compiled is None or _compiled[0] != registered:
        rows = CORE_SCHEMA + probes.schema_rows()
        _compiled = (registered, _Schema(
            fields=rows, field_res=tuple((f, _template_regex(f.template)) for f in rows),
            group_res=tuple(r for f in rows for r in _group_regexes(f.template)),
            optional_attrs={**CORE_OPTIONAL_ROOT_ATTRS, **probes.root_attrs()}))
    return _compiled[1]


def schema() -> tuple[Field, ...]:
    """Every row of results.h5: CORE_SCHEMA, then the rows of each registered stress test."""
    return _schema().fields


def __getattr__(name: str) -> Any:
    # SCHEMA and OPTIONAL_ROOT_ATTRS follow the registry of stress tests, so they are computed when read
    if name == "SCHEMA":
        return schema()
    if name == "OPTIONAL_ROOT_ATTRS":
        return dict(_schema().optional_attrs)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def eps_text(eps: float) -> str:
    """An attack radius as written in a key: 8 -> "8", 0.25 -> "0.25", 1e-05 -> "0.00001" (plain
    decimals, never an exponent, so that every key matches the schema's <eps>)."""
    if float(eps).is_integer():
        return str(int(eps))
    from decimal import Decimal

    return format(Decimal(repr(float(eps))), "f")


def adversarial_key(norm: str, eps: float) -> str:
    return f"adversarial/{norm}/{eps_text(eps)}/logits"


def ood_key(name: str) -> str:
    return f"ood/{name}/logits"


def sanity_key(step: int, block: str) -> str:
    """Grad-CAM after step ``step`` of the cascade (0: the trained model), ``block`` its last
    re-initialised block; the number keeps the order (HDF5 lists groups alphabetically)."""
    return f"sanity/randomization/{step:02d}_{block}/gradcam"


def field_for(key: str) -> Field | None:
    """The schema field a dataset path (no leading slash) belongs to, or None when unknown."""
    for field, rx in _schema().field_res:
        if rx.match(key):
            return field
    return None


def _allowed_keys_text() -> str:
    return ", ".join(f.template for f in schema())


def _norm_key(key: str) -> str:
    return key.strip("/")


# --------------------------------------------------------------------------------------------
# Generic atomic files
# --------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------
# results.h5: writing
# --------------------------------------------------------------------------------------------


def _open_h5(path: Path, mode: str) -> h5py.File:
    # No HDF5 file locking: results files are replaced atomically, never shared while written,
    # and locking fails outright on some cluster file systems (NFS, Lustre without flock).
    return h5py.File(path, mode, locking=False)


def _cast(key: str, value: Any, field: Field) -> np.ndarray:
    """``value`` as the field's dtype; refuse casts that would lose meaning (float->int, overflow)."""
    arr = np.asarray(value)
    want = field.np_dtype
    if want.kind in "iu":
        allowed = "iub"
    else:
        allowed = "fiub"
    if arr.dtype.kind not in allowed:
        raise ResultsError(
            f"{key}: cannot store dtype {arr.dtype} as {want} (allowed input kinds: "
            f"{'integers/bools' if want.kind in 'iu' else 'floats/integers/bools'})"
        )
    if want.kind in "iu" and arr.size:
        info = np.iinfo(want)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < info.min or hi > info.max:
            raise ResultsError(f"{key}: values in [{lo}, {hi}] do not fit {want} [{info.min}, {info.max}]")
        return arr.astype(want, copy=False)
    with np.errstate(over="ignore"):  # overflow is detected below and reported by name
        out = arr.astype(want, copy=False)
    if want.kind == "f" and arr.size and want.itemsize < arr.dtype.itemsize:
        # a finite value becoming inf means it overflowed the narrower float (float16 max 65504)
        if int(np.count_nonzero(~np.isfinite(out))) > int(np.count_nonzero(~np.isfinite(arr))):
            raise ResultsError(f"{key}: values overflow {want} (largest finite {np.finfo(want).max})")
    if want.kind == "f":
        _check_finite(key, out)
    return out


def _check_finite(where: str, block: np.ndarray, start: int = 0) -> None:
    """Every float array of results.h5 holds finite values only; the first bad row is named."""
    bad = ~np.isfinite(block)
    if bad.any():
        first = int(np.argwhere(bad)[0][0]) + start if block.ndim else 0
        what = "NaN" if np.isnan(block).any() else "infinity"
        raise ResultsError(f"{where}: contains {what} (first in row {first}); allowed: finite numbers only")


def _chunks_for(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunks of whole rows, about 1 MiB each."""
    row_bytes = max(1, math.prod(shape[1:]) * itemsize)
    rows = max(1, min(shape[0], _CHUNK_BYTES // row_bytes))
    return (rows, *shape[1:])


def _storage_options(field: Field, arr: np.ndarray) -> dict[str, Any]:
    if field.chunked and arr.ndim >= 2 and arr.size > 0:
        return {
            "chunks": _chunks_for(arr.shape, arr.dtype.itemsize),
            "compression": "gzip",
            "compression_opts": _GZIP_LEVEL,
            "shuffle": True,
        }
    return {}  # contiguous


def _encode_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Root attributes as stored: JSON kinds as text, ints as int64, plus schema_version."""
    names = set(attrs)
    optional = _schema().optional_attrs
    required = set(ROOT_ATTRS) - {"schema_version"}
    kinds = {**ROOT_ATTRS, **optional}
    if "schema_version" in names:
        raise ResultsError("attrs: schema_version is set by store, do not pass it")
    if names - set(kinds) or required - names:
        raise ResultsError(
            f"attrs: missing {sorted(required - names)}, unknown {sorted(names - set(kinds))}; "
            f"expected exactly {sorted(required)} (optional: {sorted(optional)})"
        )
    out: dict[str, Any] = {"schema_version": np.int64(SCHEMA_VERSION)}
    for name in sorted(names):
        kind, value = kinds[name], attrs[name]
        if kind == "json":
            if isinstance(value, str):
                value = _parse_json_object(value, f"attrs: {name}")
            if not isinstance(value, Mapping):
                raise ResultsError(f"attrs: {name} must be a dict (stored as JSON), got {type(value).__name__}")
            try:
                out[name] = json_text(dict(value), indent=None)
            except (TypeError, ValueError) as exc:
                raise ResultsError(f"attrs: {name} cannot be stored as JSON: {exc}") from exc
        elif kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ResultsError(f"attrs: {name} must be an integer, got {value!r}")
            out[name] = np.int64(value)
        else:
            if not isinstance(value, str):
                raise ResultsError(f"attrs: {name} must be a string, got {type(value).__name__}")
            out[name] = value
    return out


def publish_results(
    run_dir: str | os.PathLike[str], arrays: Mapping[str, Any], attrs: Mapping[str, Any]
) -> str:
    """Write ``run_dir/results.h5`` atomically and return its sha256.

    ``arrays`` maps HDF5 paths without a leading slash ("test/logits",
    "stress/gaussian_noise/3/logits", ...) to arrays; each is cast to its schema dtype. The file is
    written to a temp file in ``run_dir``, closed, reopened and validated, fsynced and then
    os.replace'd; on any error the temp file is removed and an existing results.h5 is untouched.
    A DONE.json already in the folder is removed before the replace: the run is done again only
    when write_done vouches for the new file.
    """
    run_dir = Path(run_dir)
    final = run_dir / RESULTS_NAME
    stored_attrs = _encode_attrs(attrs)
    prepared: dict[str, tuple[Field, np.ndarray]] = {}
    for raw_key, value in arrays.items():
        key = _norm_key(raw_key)
        field = field_for(key)
        if field is None:
            raise ResultsError(f"{key}: unknown dataset path; allowed: {_allowed_keys_text()}")
        if key in prepared:
            raise ResultsError(f"{key}: given twice (keys differ only by slashes)")
        prepared[key] = (field, _cast(key, value, field))

    tmp = temp_path(final)
    try:
        with _open_h5(tmp, "w") as fh:
            for name, value in stored_attrs.items():
                fh.attrs[name] = value
            for i, key in enumerate(sorted(prepared)):
                if i == len(prepared) // 2:
                    fh.flush()
                    maybe_fail(RESULTS_NAME)  # tests: die or fail half-way through the file
                field, arr = prepared[key]
                fh.create_dataset(key, data=arr, **_storage_options(field, arr))
        with _open_h5(tmp, "r") as fh:
            _validate_open(fh, f"{final} (being written as {tmp.name})")
        fsync_file(tmp)
        digest = sha256_file(tmp)
        (run_dir / DONE_NAME).unlink(missing_ok=True)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(run_dir)
    return digest


# --------------------------------------------------------------------------------------------
# results.h5: reading and validating
# --------------------------------------------------------------------------------------------


def _parse_json_object(text: Any, where: str) -> dict[str, Any]:
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise ResultsError(f"{where}: expected JSON text, got {type(text).__name__}")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ResultsError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise ResultsError(f"{where}: JSON is a {type(obj).__name__}, expected an object")
    return obj


def _decode_attrs(fh: h5py.File, label: str) -> dict[str, Any]:
    """Root attributes checked against ROOT_ATTRS and decoded (JSON text -> dict, ints -> int)."""
    raw = dict(fh.attrs)
    optional = _schema().optional_attrs
    if "schema_version" not in raw:
        raise ResultsError(f"{label}: no schema_version attribute on the root (not a cnnstress results file)")
    version = raw["schema_version"]
    if isinstance(version, np.ndarray) and version.shape == ():
        version = version[()]
    if isinstance(version, (bool, np.bool_)) or not isinstance(version, (int, np.integer)):
        raise ResultsError(f"{label}: schema_version is {version!r}, expected an integer")
    if int(version) != SCHEMA_VERSION:
        raise ResultsError(f"{label}: schema_version {int(version)} is not supported (this code reads {SCHEMA_VERSION})")
    missing = sorted(set(ROOT_ATTRS) - set(raw))
    unknown = sorted(set(raw) - set(ROOT_ATTRS) - set(optional))
    if missing or unknown:
        raise ResultsError(f"{label}: root attributes missing {missing}, unknown {unknown}; expected {sorted(ROOT_ATTRS)} "
                           f"(optional: {sorted(optional)})")
    out: dict[str, Any] = {}
    kinds = {**ROOT_ATTRS, **{k: v for k, v in optional.items() if k in raw}}
    for name, kind in kinds.items():
        value = raw[name]
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if kind == "int":
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ResultsError(f"{label}: attribute {name} is {value!r}, expected an integer")
            out[name] = int(value)
        elif kind == "json":
            out[name] = _parse_json_object(value, f"{label}: attribute {name}")
        else:
            if not isinstance(value, str):
                raise ResultsError(f"{label}: attribute {name} is {type(value).__name__}, expected a string")
            out[name] = value
    if not out["run_id"]:
        raise ResultsError(f"{label}: attribute run_id is empty")
    return out


def _walk(fh: h5py.File, label: str) -> tuple[dict[str, h5py.Dataset], list[str]]:
    """All datasets by path, and all group paths; anything else is an error."""
    datasets: dict[str, h5py.Dataset] = {}
    groups: list[str] = []
    others: list[str] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            datasets[name] = obj
        elif isinstance(obj, h5py.Group):
            groups.append(name)
        else:
            others.append(name)

    fh.visititems(visit)
    if others:
        raise ResultsError(f"{label}: {others[0]}: neither a group nor a dataset")
    return datasets, groups


def _iter_blocks(ds: h5py.Dataset) -> Iterator[np.ndarray]:
    """The dataset in blocks of whole rows (about 4 MiB each), to keep memory bounded."""
    if ds.shape == () or ds.shape[0] == 0:
        yield ds[()]
        return
    row_bytes = max(1, math.prod(ds.shape[1:]) * ds.dtype.itemsize)
    step = max(1, _BLOCK_BYTES // row_bytes)
    for start in range(0, ds.shape[0], step):
        yield ds[start : start + step]


def _check_values(key: str, field: Field, ds: h5py.Dataset, num_classes: int, label: str, n_test: int = 0) -> None:
    where = f"{label}: {key}"
    if field.check == "positions":
        values = ds[()]
        if values.size and (int(values.min()) < 0 or int(values.max()) >= n_test):
            raise ResultsError(f"{where}: positions in [{int(values.min())}, {int(values.max())}] are not rows of "
                               f"/test [0, {n_test})")
        if np.unique(values).size != values.size:
            raise ResultsError(f"{where}: {values.size - np.unique(values).size} duplicate position(s)")
        return
    if ds.dtype.kind == "f":  # every float array, one block at a time (memory stays bounded)
        start = 0
        for block in _iter_blocks(ds):
            _check_finite(where, np.asarray(block), start)
            start += len(block) if np.ndim(block) else 1
    if field.check == "label":
        values = ds[()]
        if values.size and (int(values.min()) < 0 or int(values.max()) >= num_classes):
            raise ResultsError(
                f"{where}: labels in [{int(values.min())}, {int(values.max())}] outside [0, {num_classes}) "
                f"(C={num_classes} from the logits)"
            )
    elif field.check == "index":
        values = ds[()]
        if values.size and int(values.min()) < 0:
            raise ResultsError(f"{where}: negative index {int(values.min())}")
        if np.unique(values).size != values.size:
            raise ResultsError(f"{where}: {values.size - np.unique(values).size} duplicate index value(s)")


def _validate_open(fh: h5py.File, label: str) -> dict[str, Any]:
    """validate_results on an open file; ``label`` names the file in messages."""
    attrs = _decode_attrs(fh, label)
    datasets, groups = _walk(fh, label)

    matched: list[tuple[int, str, Field]] = []
    for key in datasets:
        for order, (field, rx) in enumerate(_schema().field_res):
            if rx.match(key):
                matched.append((order, key, field))
                break
        else:
            raise ResultsError(f"{label}: {key}: unknown dataset path; allowed: {_allowed_keys_text()}")
    for group in groups:  # datasets first: a typo is then reported with the dataset's full path
        if not any(rx.match(group) for rx in _schema().group_res):
            raise ResultsError(f"{label}: {group}: unknown group; allowed datasets: {_allowed_keys_text()}")
    matched.sort()  # required fields first, so sizes are bound by them and offenders named

    present = {key for _, key, _ in matched}
    rows = schema()
    for field in rows:
        if field.required and field.template not in present:
            raise ResultsError(f"{label}: required dataset {field.template} is missing")
    for bundle in sorted({f.bundle for f in rows if f.bundle}):
        members = [f.template for f in rows if f.bundle == bundle]
        have = [m for m in members if m in present]
        if have and len(have) != len(members):
            missing = [m for m in members if m not in present]
            raise ResultsError(f"{label}: {bundle}: has {have} but is missing {missing} (they come together)")

    sizes: dict[str, tuple[int, str]] = {}
    for _, key, field in matched:
        ds = datasets[key]
        if ds.dtype != field.np_dtype:
            raise ResultsError(f"{label}: {key}: dtype {ds.dtype}, expected {field.np_dtype}")
        if field.dims is None:
            continue
        if len(ds.shape) != len(field.dims):
            raise ResultsError(f"{label}: {key}: shape {ds.shape}, expected ({', '.join(field.dims)})")
        for sym, size in zip(field.dims, ds.shape):
            if sym.startswith("*"):  # a size of its own (e.g. each OOD set's image count); at least 1
                if size < 1:
                    raise ResultsError(f"{label}: {key}: dimension {sym[1:]} is 0, needs at least one row")
                continue
            if sym not in sizes:
                sizes[sym] = (int(size), key)
            elif sizes[sym][0] != size:
                raise ResultsError(
                    f"{label}: {key}: dimension {sym} is {size} but {sizes[sym][1]} says {sizes[sym][0]}"
                )
    # E may be 0: a run with epochs = 0 measures given weights without training (no history)
    for sym, what in (("N", "test image"), ("C", "class")):
        if sizes[sym][0] < 1:
            raise ResultsError(f"{label}: {sizes[sym][1]}: dimension {sym} is 0, needs at least one {what}")

    num_classes = sizes["C"][0]
    for _, key, field in matched:
        if field.check or datasets[key].dtype.kind == "f":
            _check_values(key, field, datasets[key], num_classes, label, sizes["N"][0])

    return {
        "run_id": attrs["run_id"],
        "n_test": sizes["N"][0],
        "num_classes": num_classes,
        "epochs": sizes["E"][0],
        "stress": _stress_keys(present),
    }


def _stress_keys(keys: Any) -> list[tuple[str, int]]:
    out = []
    for key in keys:
        parts = key.split("/")
        if len(parts) == 4 and parts[0] == "stress" and parts[3] == "logits":
            out.append((parts[1], int(parts[2])))
    return sorted(out)


def _unreadable(label: str, exc: BaseException) -> ResultsError:
    return ResultsError(f"{label}: cannot be read as HDF5 ({type(exc).__name__}: {exc})")


def validate_results(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Check a results.h5 against SCHEMA (attributes, paths, dtypes, shapes, values).

    Raises ResultsError naming the file and the dataset on anything wrong, including files that
    are truncated, garbage or not HDF5. Returns {"run_id", "n_test", "num_classes", "epochs",
    "stress": [(corruption, severity), ...]}.
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise ResultsError(f"{label}: no such file")
    try:
        with _open_h5(path, "r") as fh:
            return _validate_open(fh, label)
    except ResultsError:
        raise
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError, ... on damaged files
        raise _unreadable(label, exc) from exc


class Results:
    """An open results.h5; reads only what is asked. Use as ``with open_results(p) as r:``."""

    def __init__(self, path: Path, fh: h5py.File, attrs: dict[str, Any]) -> None:
        self.path = path
        self.attrs = attrs
        self._fh: h5py.File | None = fh

    def __enter__(self) -> Results:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _file(self) -> h5py.File:
        if self._fh is None:
            raise ResultsError(f"{self.path}: already closed")
        return self._fh

    def _dataset(self, key: str) -> h5py.Dataset:
        key = _norm_key(key)
        try:
            obj = self._file().get(key)
        except ResultsError:
            raise
        except Exception as exc:
            raise _unreadable(f"{self.path}: {key}", exc) from exc
        if not isinstance(obj, h5py.Dataset):
            raise KeyError(f"{self.path}: no dataset {key!r}; has: {', '.join(self.keys())}")
        return obj

    def has(self, key: str) -> bool:
        """Whether the dataset exists (reads no data)."""
        try:
            self._dataset(key)
        except KeyError:
            return False
        return True

    def read(self, key: str, rows: slice | None = None) -> np.ndarray:
        """The dataset (or ``rows`` of it along the first axis) as a numpy array."""
        ds = self._dataset(key)
        try:
            return ds[()] if rows is None else ds[rows]
        except Exception as exc:
            raise _unreadable(f"{self.path}: {_norm_key(key)}", exc) from exc

    def shape(self, key: str) -> tuple[int, ...]:
        """The dataset's shape (reads no data)."""
        return tuple(self._dataset(key).shape)

    def keys(self) -> list[str]:
        """All dataset paths, sorted (reads no data)."""
        names: list[str] = []

        def visit(name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset):
                names.append(name)

        try:
            self._file().visititems(visit)
        except ResultsError:
            raise
        except Exception as exc:
            raise _unreadable(str(self.path), exc) from exc
        return sorted(names)

    def stress_keys(self) -> list[tuple[str, int]]:
        """(corruption, severity) of every stress set present, sorted."""
        return _stress_keys(self.keys())


def open_results(path: str | os.PathLike[str]) -> Results:
    """Open a results.h5 for reading; checks the root attributes (cheap) but reads no arrays.

    Run ``validate_results`` (or ``run_state``) first when the file's contents must be trusted.
    """
    path = Path(path)
    label = str(path)
    if not path.is_file():
        raise ResultsError(f"{label}: no such file")
    try:
        fh = _open_h5(path, "r")
    except Exception as exc:
        raise _unreadable(label, exc) from exc
    try:
        attrs = _decode_attrs(fh, label)
    except BaseException as exc:
        fh.close()
        if isinstance(exc, ResultsError) or not isinstance(exc, Exception):
            raise
        raise _unreadable(label, exc) from exc
    return Results(path, fh, attrs)


# --------------------------------------------------------------------------------------------
# Run state
# --------------------------------------------------------------------------------------------


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_done(run_dir: str | os.PathLike[str], summary: Mapping[str, Any], results_sha256: str, *,
               injected_faults: str | None = None) -> None:
    """Write DONE.json (last step of a run): run_id, results_sha256, summary, finished_at, and
    injected_faults when the CNNSTRESS_FAULT test hook was set.

    Refuses (ResultsError) when results.h5 is missing or its sha256 is not ``results_sha256``, so a
    DONE.json is never written for a file that run_state would call broken.
    """
    run_dir = Path(run_dir)
    results = run_dir / RESULTS_NAME
    if not results.is_file():
        raise ResultsError(f"{results}: missing; publish_results must come before write_done")
    actual = sha256_file(results)
    if actual != results_sha256:
        raise ResultsError(f"{results}: sha256 {actual} is not the given {results_sha256}")
    with open_results(results) as res:
        run_id = res.attrs["run_id"]
    done = {"run_id": run_id, "results_sha256": results_sha256, "summary": dict(summary), "finished_at": _now()}
    if injected_faults:
        done["injected_faults"] = injected_faults
    atomic_write_json(run_dir / DONE_NAME, done)


def write_failed(run_dir: str | os.PathLike[str], reason: str, detail: str = "", *,
                 injected_faults: str | None = None) -> None:
    """Write FAILED.json atomically: {reason, detail (e.g. the traceback), failed_at}, and
    injected_faults when the CNNSTRESS_FAULT test hook was set."""
    failed = {"reason": reason, "detail": detail, "failed_at": _now()}
    if injected_faults:
        failed["injected_faults"] = injected_faults
    atomic_write_json(Path(run_dir) / FAILED_NAME, failed)


def clear_failed(run_dir: str | os.PathLike[str]) -> None:
    """Remove FAILED.json if present (a retry starts)."""
    (Path(run_dir) / FAILED_NAME).unlink(missing_ok=True)
    fsync_dir(Path(run_dir))


@dataclass(frozen=True)
class RunState:
    """Where one run stands on disk.

    status: "done" | "failed" | "broken" | "partial" (checkpoint or results, no DONE.json) |
    "missing" (nothing written yet). reason is human-readable ("" for done/missing); summary is
    DONE.json's summary when done, finished_at its finish time.
    """

    status: str
    reason: str
    summary: dict[str, Any] | None = None
    finished_at: str = ""


def read_done(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """DONE.json parsed and checked for its keys; ResultsError naming the file otherwise."""
    path = Path(run_dir) / DONE_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ResultsError(f"{path}: cannot be read ({exc})") from exc
    done = _parse_json_object(text, str(path))
    problems = []
    if not isinstance(done.get("run_id"), str) or not done.get("run_id"):
        problems.append("run_id is not a non-empty string")
    if not isinstance(done.get("results_sha256"), str) or not _SHA_RE.match(done["results_sha256"]):
        problems.append("results_sha256 is not 64 lowercase hex digits")
    if not isinstance(done.get("summary"), dict):
        problems.append("summary is not an object")
    if problems:
        raise ResultsError(f"{path}: {'; '.join(problems)}")
    return done


def _done_state(run_dir: Path, verify_hash: bool) -> RunState:
    try:
        done = read_done(run_dir)
    except ResultsError as exc:
        return RunState("broken", str(exc))
    if done["run_id"] != run_dir.name:  # copied from another run: never this run's result
        return RunState("broken", f"{run_dir / DONE_NAME}: holds run {done['run_id']!r}, but this folder is run "
                                  f"{run_dir.name!r}")
    results = run_dir / RESULTS_NAME
    if not results.is_file():
        return RunState("broken", f"{run_dir / DONE_NAME} exists but {results} is missing")
    if verify_hash:
        try:
            actual = sha256_file(results)
        except OSError as exc:
            return RunState("broken", f"{results}: cannot be read ({exc})")
        if actual != done["results_sha256"]:
            return RunState(
                "broken", f"{results}: sha256 {actual} does not match DONE.json's {done['results_sha256']}"
            )
    try:
        info = validate_results(results)
    except ResultsError as exc:
        return RunState("broken", str(exc))
    if info["run_id"] != done["run_id"]:
        return RunState("broken", f"{results}: run_id {info['run_id']!r} but DONE.json says {done['run_id']!r}")
    return RunState("done", "", done["summary"], str(done.get("finished_at", "")))


def _failed_reason(run_dir: Path) -> str:
    path = run_dir / FAILED_NAME
    try:
        failed = _parse_json_object(path.read_text(encoding="utf-8"), str(path))
    except (OSError, UnicodeDecodeError, ResultsError) as exc:
        return f"FAILED.json unreadable: {exc}"
    reason = failed.get("reason")
    return str(reason) if reason else "FAILED.json gives no reason"


def run_state(run_dir: str | os.PathLike[str], *, verify_hash: bool = True) -> RunState:
    """The state of one run folder (see RunState); never raises for damaged files. The folder's
    name is the run id: DONE.json and results.h5 must both name it, or the run is broken (files
    copied from another run), which every launch reruns."""
    run_dir = Path(run_dir)
    if (run_dir / DONE_NAME).exists():
        return _done_state(run_dir, verify_hash)
    if (run_dir / FAILED_NAME).exists():
        return RunState("failed", _failed_reason(run_dir))
    present = [name for name in (*CHECKPOINT_NAMES, RESULTS_NAME) if (run_dir / name).exists()]
    if present:
        return RunState("partial", f"{' and '.join(present)} present, no DONE.json")
    return RunState("missing", "")


def progress_epochs(run_dir: str | os.PathLike[str]) -> int:
    """The last epoch progress.json records (0 when there is none or it cannot be read): what
    --status, the local progress bars and a launcher-written FAILED.json say about a run."""
    try:
        return int(read_progress(run_dir)["epoch"])
    except (KeyError, ValueError, TypeError):
        return 0


def read_progress(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """progress.json as a dict ({} when there is none or it cannot be read: it is only ever shown)."""
    path = Path(run_dir) / PROGRESS_FILE
    try:
        if path.stat().st_size > 1 << 16:
            return {}
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def update_progress(run_dir: str | os.PathLike[str], **fields: Any) -> None:
    """Replace progress.json with its fields updated by ``fields`` and the time ("updated"); "epoch"
    is 0 until an epoch is recorded (readers of the epoch need not know about stages)."""
    atomic_write_json(Path(run_dir) / PROGRESS_FILE, {"epoch": 0, **read_progress(run_dir), **fields,
                                                      "updated": datetime.now(timezone.utc).timestamp()})


def progress_stage(run_dir: str | os.PathLike[str]) -> str:
    """The stage a running run is in, with how long it has been in it ("" when unknown)."""
    progress = read_progress(run_dir)
    stage, since = progress.get("stage"), progress.get("stage_started")
    if not isinstance(stage, str) or not stage:
        return ""
    if isinstance(since, (int, float)) and not isinstance(since, bool) and math.isfinite(since):
        return f"{stage[:60]} ({max(0.0, datetime.now(timezone.utc).timestamp() - since):.0f}s)"
    return stage[:60]
