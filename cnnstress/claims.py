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

from .layout import CLAIM_FILE


class RunBusy(RuntimeError):
    """Another live process holds this run's claim."""


@contextmanager
def claim(run_dir: Path) -> Iterator[None]:
    """Exclusive claim on a run. An flock dies with its process, so a claim left by a killed worker
    is recovered without any staleness guess. (flock over NFS depends on the mount; Lustre and
    GPFS honour it with the default 'flock' mount option.)"""
    path = run_dir / CLAIM_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
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
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown process"
            raise RunBusy(f"run {run_dir.name} is being trained by {holder}")
        info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S")})
        os.ftruncate(fd, 0)
        os.pwrite(fd, info.encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the flock


def claim_holder(run_dir: Path) -> dict[str, Any] | None:
    """Who holds the claim right now (None when nobody does)."""
    path = run_dir / CLAIM_FILE
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
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
