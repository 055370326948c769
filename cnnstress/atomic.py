"""Atomic files: written to a temp file in the same folder, fsynced, ``os.replace``d, the folder
fsynced. A writer killed half-way leaves only a temp file (``.<name>.tmp-<pid>-<8 hex>``), which
``cleanup_temp_files`` removes. No h5py and no torch: the launcher, the cluster side and the report
write their files through this module (store.py re-exports it for results.h5's writers).

The few files written in place (claim.lock, log.txt, launches.jsonl.lock) are opened with
``open_in_place``, which never follows a symbolic link: a link planted in a run or sweep folder
would otherwise make a relaunch truncate or append to whatever file it points at. A replaced file
needs no such care: ``os.replace`` swaps the link itself for the new file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from .faults import maybe_fail

_TEMP_RE = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]{8}$")


class LinkRefused(OSError):
    """A file or folder cnnstress would write in place is a symbolic link."""

    def __init__(self, path: str | os.PathLike[str]):
        super().__init__(f"{path} is a symbolic link; cnnstress does not write through links in a run or sweep "
                         "folder: remove it")


def open_in_place(path: str | os.PathLike[str], flags: int, mode: int = 0o644) -> int:
    """``os.open`` for a file written in place, never through a symbolic link (O_NOFOLLOW; O_CLOEXEC
    so that no child process inherits it). A link raises LinkRefused naming it."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as e:
        # ELOOP is what O_NOFOLLOW gives for a link (a link opened with O_CREAT|O_EXCL gives EEXIST)
        if os.path.islink(path):
            raise LinkRefused(path) from None
        raise


def refuse_links(base: str | os.PathLike[str], path: str | os.PathLike[str]) -> None:
    """LinkRefused when ``path`` or a folder between ``base`` (not included) and it is a symbolic
    link: for folders cnnstress creates itself (runs/<run_id>, the TensorBoard folders), whose
    files would otherwise land wherever the link points."""
    base, path = Path(base), Path(path)
    rel = path.relative_to(base)
    here = base
    for part in rel.parts:
        here = here / part
        if here.is_symlink():
            raise LinkRefused(here)


def temp_path(path: Path) -> Path:
    """A fresh temp name next to ``path`` that cleanup_temp_files recognises as ours."""
    return path.parent / f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def written_path(path: str | os.PathLike[str]) -> Path:
    """The file a temp name of ours stands for (``.x.json.tmp-1-ab12cd34`` -> ``x.json``), else ``path``:
    an error while writing the temp file names the temp file, a user knows the real one."""
    path = Path(path)
    if _TEMP_RE.match(path.name):
        return path.parent / path.name[1:].rsplit(".tmp-", 1)[0]
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (some file systems refuse to fsync folders: ignore)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Iterable[bytes], *,
                       if_changed: bool = False) -> bool:
    """Replace ``path`` with ``data`` atomically: readers see the old file or the whole new one.

    ``data`` may be an iterable of chunks, written as they come (a large file need not be held in
    memory). With ``if_changed`` an identical existing file is left alone (not even its mtime
    changes), so re-running a finished step rewrites nothing. Returns whether the file was written."""
    path = Path(path)
    whole = isinstance(data, (bytes, bytearray))
    if if_changed and whole and not path.is_symlink():  # a link is replaced by a real file, even when alike
        try:
            if path.read_bytes() == data:
                return False
        except OSError:
            pass
    chunks = (data[: len(data) // 2], data[len(data) // 2:]) if whole else data
    tmp = temp_path(path)
    try:
        with open(tmp, "xb") as fh:
            for i, chunk in enumerate(chunks):
                fh.write(chunk)
                if i == 0:
                    fh.flush()
                    maybe_fail(path.name)  # tests: die or fail with part of a temp file on disk
            fh.flush()
            os.fsync(fh.fileno())
        if if_changed and not whole and not path.is_symlink() and _same_bytes(tmp, path):
            tmp.unlink()
            return False
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:  # a read-only file system refuses even this: the write's own error is the one to see
            pass
        raise
    fsync_dir(path.parent)
    return True


def _same_bytes(a: Path, b: Path, block: int = 1 << 20) -> bool:
    try:
        if a.stat().st_size != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while True:
                x, y = fa.read(block), fb.read(block)
                if x != y:
                    return False
                if not x:
                    return True
    except OSError:
        return False


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays show up in summaries; convert them rather than fail
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def json_text(obj: Any, indent: int | None = 2) -> str:
    """Canonical JSON; NaN/inf raise ValueError (strict JSON readers reject them)."""
    return json.dumps(obj, sort_keys=True, indent=indent, allow_nan=False, default=_json_default)


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, if_changed: bool = False) -> bool:
    """Write ``obj`` as JSON (sorted keys, indent 2, trailing newline) atomically.

    NaN or infinity anywhere raises ValueError before anything is written, so the old file stays.
    """
    text = json_text(obj) + "\n"
    return atomic_write_bytes(path, text.encode("utf-8"), if_changed=if_changed)


def cleanup_temp_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove the temp files our atomic writers left in ``run_dir`` (a killed writer) and list them.

    Only names of the form ``.<name>.tmp-<pid>-<8 hex>`` are touched, and only at the top of the
    folder. Call it when no writer of this run is alive (the worker does, on start).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    removed = []
    for entry in sorted(run_dir.iterdir()):
        if _TEMP_RE.match(entry.name) and entry.is_file() and not entry.is_symlink():
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
