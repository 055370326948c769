"""Where runs execute. One module per backend, each implementing ``base.Backend``; this registry
is the only list of them. Adding a backend is one module plus one line here.

Only this package imports submitit and calls the Slurm commands (scontrol, sbatch, squeue,
sacct). Loading the package loads no backend (and no submitit): ``backend(name)`` imports the
one asked for, so ``--status`` on a login node pays only for what it uses.
"""

from __future__ import annotations

import importlib

from .base import Backend, BackendError, Handle, LaunchContext, Outcome

# --cluster name -> "module:class" (imported on first use)
BACKENDS: dict[str, str] = {
    "local": "local:LocalBackend",
    "debug": "local:DebugBackend",
    "slurm": "slurm:SlurmBackend",
    "sbatch": "sbatch:SbatchBackend",
}

_LOADED: dict[str, Backend] = {}


def backend(name: str) -> Backend:
    """The backend called ``name`` (ValueError listing the valid names otherwise)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown cluster backend {name!r}; valid: {', '.join(BACKENDS)}")
    if name not in _LOADED:
        module, cls = BACKENDS[name].split(":")
        _LOADED[name] = getattr(importlib.import_module(f"{__name__}.{module}"), cls)()
    return _LOADED[name]


__all__ = ["BACKENDS", "Backend", "BackendError", "Handle", "LaunchContext", "Outcome", "backend"]
