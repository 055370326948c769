"""The fault-injection hook the reliability tests steer workers with."""

from __future__ import annotations

import threading
import time

import pytest

from cnnstress import faults


def test_off_without_the_variable(monkeypatch):
    monkeypatch.delenv("CNNSTRESS_FAULT", raising=False)
    faults.maybe_fail("epoch")  # nothing happens


def test_slow_sleeps_at_every_occurrence_of_its_point_only(monkeypatch):
    monkeypatch.setenv("CNNSTRESS_FAULT", "slow:epoch:0.2")
    t0 = time.monotonic()
    faults.maybe_fail("checkpoint.pt")
    assert time.monotonic() - t0 < 0.2
    t0 = time.monotonic()
    for _ in range(3):
        faults.maybe_fail("epoch")
    assert time.monotonic() - t0 >= 0.6


@pytest.mark.parametrize("spec, exc, match", [
    ("raise:epoch:1", RuntimeError, "injected failure at epoch"),
    ("oom:epoch:1", MemoryError, "injected out-of-memory"),
    ("enospc:epoch:1", OSError, "No space left"),
    ("explode:epoch:1", ValueError, "valid: kill, enospc, oom, raise, slow, hold"),
])
def test_actions_fire_at_the_nth_occurrence(monkeypatch, spec, exc, match):
    monkeypatch.setenv("CNNSTRESS_FAULT", spec.replace(":1", ":2"))
    monkeypatch.setattr(faults, "_counts", {})
    faults.maybe_fail("epoch")  # the first occurrence passes
    with pytest.raises(exc, match=match):
        faults.maybe_fail("epoch")


def test_hold_waits_until_its_file_exists(monkeypatch, tmp_path):
    gate = tmp_path / "go on"
    monkeypatch.setenv("CNNSTRESS_FAULT", f"hold:epoch:{gate}")
    opened = threading.Timer(0.3, gate.touch)
    t0 = time.monotonic()  # before the timer starts: it touches the file 0.3 s after its own start
    opened.start()
    faults.maybe_fail("epoch")
    assert gate.exists() and time.monotonic() - t0 >= 0.3
    opened.join()
