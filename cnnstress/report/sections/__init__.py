"""The report's sections, in page order: one module each, one line each here.

A section is a ``base.Section`` subclass in its own module, which ends with ``SECTION = TheSection()``
(see ``base`` for the interface). Gather hands every finished run's open results.h5 to each
section below, in this order (a section may use the reduction of one listed before it), and the
page shows them in this order. Adding a section is writing its module and adding its name to
``MODULES``; see the README's "Adding a report section".

Importing this package loads no matplotlib.
"""

from __future__ import annotations

from importlib import import_module

from .base import FigureSpec, GatherContext, RunContext, Section

#: The registry: one module name per section, in page order (and reduce order).
MODULES: tuple[str, ...] = (
    "findings",
    "status",
    "summary",
    "setup",
    "accuracy",
    "curves",
    "confusion",
    "per_class",
    "failures",
    "comparison",
    "changes",
    "canonical",
    "neighbours",
    "calibration",
    "robustness",
    "adversarial",
    "ood",
    "faithfulness",
    "sanity",
    "shortcut",
    "files",
)

#: The sections themselves (a list: a test may add one for the length of a gather).
SECTIONS: list[Section] = [import_module(f"{__name__}.{name}").SECTION for name in MODULES]

__all__ = ["MODULES", "SECTIONS", "FigureSpec", "GatherContext", "RunContext", "Section"]
