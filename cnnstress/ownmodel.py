"""A model named by reference in ``[base].model``: where its source lives and what identifies it.

Torch-free: the grid reader resolves a reference and hashes its source file on a login node without
importing it (``importlib.machinery.PathFinder`` finds a module's file without running any package
code). Building the model (:func:`cnnstress.models.build_reference`) and the launch check
(``python -m cnnstress.models --check``) live in models.py.

Forms:

* ``"package.module:callable"``: importable with the grid file's folder first on ``sys.path``;
* ``"path/to/file.py:callable"``: a file, relative to the grid file's folder;
* ``"torchvision:<name>"``: a classification builder of ``torchvision.models``;
* ``"timm:<name>"``: ``timm.create_model(name)`` (the optional ``timm`` extra).

The callable is called with ``num_classes=`` and the grid's ``model_options`` as keyword arguments
and returns an ``nn.Module``.
"""

from __future__ import annotations

import importlib.machinery
import re
import sys
from pathlib import Path
from typing import Any

from . import atomic

TORCHVISION = "torchvision:"
TIMM = "timm:"  # behind the optional extra: pip install -e '.[timm]'
FORMS = ('"package.module:callable", "path/to/file.py:callable" (relative to the grid file), "torchvision:<name>" '
         'or "timm:<name>"')
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class ReferenceProblem(ValueError):
    """A reference that cannot be resolved; the message is one line."""


def is_reference(name: Any) -> bool:
    """Whether ``[base].model`` names a model by reference rather than from the built-in registry."""
    return isinstance(name, str) and ":" in name


def _split(ref: str) -> tuple[str, str]:
    target, _, attr = ref.rpartition(":")
    if not target or not all(_IDENT.match(part) for part in attr.split(".")):
        raise ReferenceProblem(f"{ref!r} is not a model reference; use {FORMS}")
    return target, attr


def _module_file(dotted: str, root: Path) -> Path:
    """The source file of module ``dotted``, found with ``root`` first on the path, running no code."""
    if not all(_IDENT.match(part) for part in dotted.split(".")):
        raise ReferenceProblem(f"{dotted!r} is not a module name; use {FORMS}")
    search: list[str] | None = [str(root), *sys.path]
    spec = None
    for depth, part in enumerate(dotted.split(".")):
        spec = importlib.machinery.PathFinder.find_spec(".".join(dotted.split(".")[:depth + 1]), search)
        if spec is None:
            where = f"in {root} or on the Python path" if depth == 0 else "in its package"
            raise ReferenceProblem(f"module {'.'.join(dotted.split('.')[:depth + 1])!r} not found {where}")
        search = list(spec.submodule_search_locations or [])
    if spec is None or not spec.origin or not Path(spec.origin).is_file():
        raise ReferenceProblem(f"module {dotted!r} has no source file to identify it by")
    return Path(spec.origin).resolve()


_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """The file's sha256; a grid of thousands of runs names one file, hashed once while it is unchanged."""
    st = path.stat()
    key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
    if key not in _DIGESTS:
        _DIGESTS[key] = atomic.sha256_file(path)
    return _DIGESTS[key]


def resolve(ref: str, root: Path) -> dict[str, Any]:
    """What a worker needs to import ``ref`` and what identifies its code: ``{"root", "file",
    "sha256"}`` (``root`` goes first on ``sys.path``; ``file`` is the source file's absolute path).

    ``torchvision:<name>`` and ``timm:<name>`` have no source file of the user's: ``{}``, their
    identity is their name and the installed library is the environment's. Raises ReferenceProblem (one line)."""
    target, attr = _split(ref)
    if ref.startswith((TORCHVISION, TIMM)):
        if "." in attr:
            raise ReferenceProblem(f"{ref!r}: {target}:<name> takes a model name such as resnet18")
        return {}
    if target.endswith(".py"):
        file = (root / target).resolve()
        if not file.is_file():
            raise ReferenceProblem(f"{ref!r}: no file {file} (a .py path is relative to the grid file's folder)")
    else:
        file = _module_file(target, root)
    try:
        digest = sha256_file(file)
    except OSError as e:
        raise ReferenceProblem(f"{ref!r}: cannot read {file} ({e.strerror or e})") from None
    return {"root": str(root.resolve()), "file": str(file), "sha256": digest}


def check_options(options: Any) -> dict[str, Any]:
    """``model_options`` of a reference model: keyword arguments of plain TOML values."""
    if not isinstance(options, dict):
        raise ReferenceProblem(f"must be a table of keyword arguments, got {type(options).__name__}")
    for key in options:
        if not _IDENT.match(str(key)):
            raise ReferenceProblem(f"{key!r} is not a keyword argument name")
    return dict(sorted(options.items()))
