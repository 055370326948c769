"""The report's sections, in page order: one module each, one line each here.

A section is a ``base.Section`` subclass in its own module, which ends with ``SECTION = TheSection()``
(see ``base`` for the interface). The page shows them in the order of ``MODULES``. Gather hands
every finished run's open results.h5 to each section, and then aggregates, compares and finishes
them, in ``compute_order()``: the page order, except that a section comes after every section it
names in its ``depends``. Adding a section is writing its module and adding its name to ``MODULES``;
see docs/extending.md, "Adding a report section".

A section module that cannot be imported, an unknown id in ``depends`` or a cycle of them is an
error when this package is imported (``SectionRegistryError``, an ImportError naming the module
or the sections): the report is never built without one of its sections.

Importing this package loads no matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import Iterable

from .base import FigureSpec, GatherContext, RunContext, RunRecord, Section

#: The registry: one module name per section, in page order.
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
    "autoattack",
    "ood",
    "shift",
    "faithfulness",
    "sanity",
    "shortcut",
    "files",
)


class SectionRegistryError(ImportError):
    """The registry cannot be built: a section module fails to import, or ``depends`` names an
    unknown section or makes a cycle. Its text is one line naming the module or the sections."""


def load(name: str) -> Section:
    """The SECTION of ``sections/<name>.py``; any failure to import it names the module."""
    module = f"{__name__}.{name}"
    try:
        return import_module(module).SECTION
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, a missing SECTION, ...: one line
        raise SectionRegistryError(f"report section module {module} cannot be imported "
                                   f"({type(exc).__name__}: {exc})", name=module) from exc


def dependency_order(sections: Iterable[Section]) -> list[Section]:
    """``sections`` sorted so that each comes after those it ``depends`` on, otherwise in the given
    order (at each step the first listed section whose dependencies are placed). Raises
    SectionRegistryError for an unknown id in ``depends``, a duplicate id, a cycle, or more than
    one section with a ``read_plan``."""
    todo = list(sections)
    ids = [s.id for s in todo]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise SectionRegistryError(f"report sections share the id {', '.join(map(repr, dup))}: each id must be unique")
    for s in todo:
        unknown = [d for d in s.depends if d not in ids]
        if unknown:
            raise SectionRegistryError(f"report section {s.id!r} depends on {', '.join(map(repr, unknown))}, which "
                                       f"is not a registered section (registered: {', '.join(ids)})")
    planners = [s.id for s in todo if type(s).read_plan is not Section.read_plan]
    if len(planners) > 1:
        raise SectionRegistryError(f"report sections {', '.join(map(repr, planners))} each define read_plan: only one "
                                   "section may set the order in which runs are read")
    placed: list[Section] = []
    done: set[str] = set()
    while todo:
        ready = next((s for s in todo if all(d in done for d in s.depends)), None)
        if ready is None:
            raise SectionRegistryError(f"report sections depend on each other in a cycle: {_cycle(todo, done)}; "
                                       "a section may depend only on sections that do not depend on it")
        todo.remove(ready)
        placed.append(ready)
        done.add(ready.id)
    return placed


def _cycle(todo: list[Section], done: set[str]) -> str:
    """One cycle among sections none of which can be placed, as "a -> b -> a"."""
    by_id = {s.id: s for s in todo}
    path = [todo[0].id]
    while True:
        nxt = next(d for d in by_id[path[-1]].depends if d not in done)
        if nxt in path:
            return " -> ".join(path[path.index(nxt):] + [nxt])
        path.append(nxt)


#: The sections themselves, in page order (a list: a test may add one for the length of a gather).
SECTIONS: list[Section] = [load(name) for name in MODULES]
dependency_order(SECTIONS)  # checked now: a broken ``depends`` fails the import, not a gather


#: Sections brought by stress tests (``Probe.report_section``) whose section is not a module here:
#: registered probe -> its section, as placed in SECTIONS.
_from_probes: dict[object, Section] = {}
_synced: tuple[object, ...] | None = None


def sync_probe_sections() -> None:
    """Place the section of every registered stress test (cnnstress/probes/) that brings its own
    before the last section ("files"), and take out those of stress tests no longer registered, so
    that registering a stress test is all it takes for its section to be on the page. Raises
    SectionRegistryError for a stress test that names a section nobody registers."""
    global _synced
    from ... import probes  # torch-free: the stress tests' declarations

    registered = probes.registered()
    if registered == _synced:
        return
    for probe in [p for p in _from_probes if p not in registered]:
        SECTIONS.remove(_from_probes.pop(probe))
    for probe in registered:
        if not probe.section or probe in _from_probes or any(s.id == probe.section for s in SECTIONS):
            continue
        section = probe.report_section()
        if section is None or section.id != probe.section:
            raise SectionRegistryError(f"stress test {probe.name!r} names the report section {probe.section!r}, which is "
                                       "neither a module of cnnstress/report/sections/ listed in MODULES nor what its "
                                       "report_section() returns")
        _from_probes[probe] = section
        SECTIONS.insert(len(SECTIONS) - 1, section)
    dependency_order(SECTIONS)
    _synced = registered


def compute_order() -> list[Section]:
    """The registered sections in the order gather runs them (see ``dependency_order``), the
    stress tests' own sections included (``sync_probe_sections``)."""
    sync_probe_sections()
    return dependency_order(SECTIONS)


def planner() -> Section | None:
    """The registered section that plans the read order (``Section.read_plan``), if any."""
    return next((s for s in compute_order() if type(s).read_plan is not Section.read_plan), None)


__all__ = ["MODULES", "SECTIONS", "FigureSpec", "GatherContext", "RunContext", "RunRecord", "Section",
           "SectionRegistryError", "compute_order", "dependency_order", "load", "planner", "sync_probe_sections"]
