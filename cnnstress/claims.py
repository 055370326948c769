"""One process per run: an exclusive flock claim on ``claim.lock`` in the run folder. Torch-free, so
that ``--status`` on a login node can ask who trains a run without importing torch."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .atomic import open_in_place
from .layout import CLAIM_FILE


class RunBusy(RuntimeError):
    """Another live process holds this run's claim."""


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Exclusive claim on a run. An flock dies with its process, so a claim left by a killed worker
    is recovered without any staleness guess. (flock over NFS depends on the mount; Lustre and
    GPFS honour it with the default 'flock' mount option.)"""
    path = run_dir / CLAIM_FILE
    fd = open_in_place(path, os.O_RDWR | os.O_CREAT)  # LinkRefused: never truncates a link's target
    try:
        # A few tries over a second: claim_holder (--status, another launch) takes a shared lock for
        # a moment, and a worker that met it would otherwise give up a run nobody trains.
        for _ in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        else:
            raise RunBusy(f"run {run_dir.name} is {describe_holder(_read_holder(fd))}")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read_holder(fd: int) -> dict[str, Any]:
    """The holder's {"pid", "host", "since"} as it wrote them ({"pid": None, "host": "?"} when unreadable)."""
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode())
    except ValueError:
        return {"pid": None, "host": "?"}
    return info if isinstance(info, dict) else {"pid": None, "host": "?"}


def describe_holder(info: dict[str, Any] | None) -> str:
    """'claimed by pid 12 on n1 since <time>' (--status says the same, without the time)."""
    info = info or {}
    since = f" since {info['since']}" if info.get("since") else ""
    return f"claimed by pid {info.get('pid') or '?'} on {info.get('host') or '?'}{since}"


def claim_holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the claim right now (None when nobody does; nobody can hold a claim.lock that
    is a symbolic link, since claim refuses it)."""
    path = run_dir / CLAIM_FILE
    if not path.exists() or path.is_symlink():
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:  # replaced by a link, or removed, since the look above
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            # the holder writes its name just after it takes the lock: give it a moment
            for _ in range(20):
                try:
                    return json.loads(os.pread(fd, 4096, 0).decode())
                except ValueError:
                    time.sleep(0.01)
            return {"pid": None, "host": "?"}
    finally:
        os.close(fd)
