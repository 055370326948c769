"""The worker's checkpoint cadence and stop-signal handling, in-process and fast."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from cnnstress.worker import CheckpointKeeper, RunLog, StopRequested, stop_signals


def _state(epoch: int, weight: torch.Tensor) -> dict:
    return {"format": 1, "spec_hash": "x", "epoch": epoch, "model": {"w": weight}, "optimizer": {}, "scheduler": {},
            "scaler": {}, "rng": {}, "history": {"val_acc": [0.5] * epoch}}


def _keeper(tmp_path: Path, every_s: float) -> CheckpointKeeper:
    return CheckpointKeeper(tmp_path, every_s, RunLog(tmp_path / "log.txt", echo=False))


def test_a_keeper_writes_every_epoch_at_cadence_zero(tmp_path):
    k = _keeper(tmp_path, 0)
    w = torch.zeros(3)
    for epoch in (1, 2):
        assert k.epoch_end(_state(epoch, w), None, final=False)
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == epoch


def test_a_keeper_holds_a_snapshot_between_timed_writes_that_training_cannot_change(tmp_path):
    """Nothing is written before the cadence is due; the held state is a copy, so training going on
    in place (optimizer steps) does not leak into the checkpoint written later by a stop."""
    k = _keeper(tmp_path, 3600)
    w = torch.zeros(3)
    best = {"epoch": 1, "model": {"w": w}}
    assert not k.epoch_end(_state(1, w), best, final=False)
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()
    w.add_(7)  # the next epoch's training, in place
    assert k.flush("test")
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and torch.equal(ckpt["model"]["w"], torch.zeros(3))
    assert torch.equal(torch.load(tmp_path / "best.pt", weights_only=True)["model"]["w"], torch.zeros(3))
    assert not k.flush("again"), "an epoch already on disk is not written twice"
    assert k.epoch_end(_state(2, w), None, final=True), "the last epoch is always written"
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_a_stop_signal_with_no_other_handler_flushes_then_stops(tmp_path):
    k = _keeper(tmp_path, 3600)
    k.epoch_end(_state(1, torch.ones(2)), None, final=False)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(StopRequested) as info:
        with stop_signals(k):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    assert info.value.signum == signal.SIGTERM
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert signal.getsignal(signal.SIGTERM) == before, "the previous handler is restored"


def test_a_stop_signal_runs_an_existing_handler_after_the_flush(tmp_path):
    """submitit's job process handles USR2 (checkpoint, requeue, exit) and logs SIGTERM: those
    handlers still run, after the newest epoch is on disk."""
    k = _keeper(tmp_path, 3600)
    k.epoch_end(_state(1, torch.ones(2)), None, final=False)
    seen = []

    def submitit_like(signum, frame):
        seen.append((signum, (tmp_path / "checkpoint.pt").exists()))

    old = signal.signal(signal.SIGUSR2, submitit_like)
    try:
        with stop_signals(k):
            os.kill(os.getpid(), signal.SIGUSR2)
            for _ in range(1000):
                pass
        assert seen == [(signal.SIGUSR2, True)]
        assert signal.getsignal(signal.SIGUSR2) is submitit_like
    finally:
        signal.signal(signal.SIGUSR2, old)
