"""Fault injection for the reliability tests: off unless CNNSTRESS_FAULT is set.

``CNNSTRESS_FAULT="kill:checkpoint.pt:2"`` SIGKILLs this process half-way through its 2nd write of
checkpoint.pt; ``enospc:results.h5`` raises "No space left on device" while results.h5 is written;
``oom:epoch:1`` raises MemoryError in the first training epoch; ``slow:epoch:0.5`` sleeps 0.5 s at
every epoch (so that a test's signal reaches a tiny run mid-training whatever the machine's speed;
results are unchanged); ``hold:epoch:/some/file`` waits at every epoch until that file exists (at
most 10 minutes), so a test decides when the run may go on. Several faults are separated by commas.
A point is a file name written atomically by store.py, or ``epoch``.

A hook left set by mistake must not pass for a real failure: the launcher warns when it is set,
the worker logs it at start, a failed run's reason names it, and a run records it (``injected()``,
in results.h5's ``injected_faults`` attribute and in DONE.json / FAILED.json).
"""

from __future__ import annotations

import errno
import os
import signal
import time

ENV = "CNNSTRESS_FAULT"
_counts: dict[str, int] = {}


def injected() -> str | None:
    """The CNNSTRESS_FAULT value in force (control characters escaped, so it prints as one line),
    or None when it is unset or empty."""
    spec = os.environ.get(ENV)
    if not spec:
        return None
    return spec if spec.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in spec)


def naming(reason: str) -> str:
    """``reason`` with '; CNNSTRESS_FAULT=<value> was set' appended when it is: an injected SIGKILL
    reads like the kernel's OOM killer unless the reason says the hook was on."""
    spec = injected()
    return f"{reason}; {ENV}={spec} was set" if spec else reason


def maybe_fail(point: str) -> None:
    spec = os.environ.get("CNNSTRESS_FAULT")
    if not spec:
        return
    _counts[point] = _counts.get(point, 0) + 1
    for item in spec.split(","):
        action, _, rest = item.strip().partition(":")
        where, _, nth = rest.partition(":")
        if where != point:
            continue
        if action == "slow":  # at every occurrence; its third field is seconds
            time.sleep(float(nth or 1))
            continue
        if action == "hold":  # at every occurrence; its third field is a path
            deadline = time.monotonic() + 600
            while not os.path.exists(nth) and time.monotonic() < deadline:
                time.sleep(0.05)
            continue
        if _counts[point] != int(nth or 1):
            continue
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), point)
        elif action == "oom":
            raise MemoryError(f"injected out-of-memory at {point}")
        elif action == "raise":
            raise RuntimeError(f"injected failure at {point}")
        else:
            raise ValueError(f"CNNSTRESS_FAULT: unknown action {action!r}; valid: kill, enospc, oom, raise, slow, hold")
