"""The stress tests (probes): one module each, one line each here.

A probe is a ``base.Probe`` subclass in its own module, which ends with ``PROBE = TheProbe()``: its
[stress] grid keys, the StressSpec fields they resolve to, what it measures on a trained model
(``measure`` -> named arrays), the results.h5 rows it writes and the report section that reads
them. grid.py validates the keys of every registered probe, config.py leaves an off probe out of a
run's identity, store.py composes its SCHEMA from the rows, the worker runs each enabled probe, and
the report shows each probe's section. Adding a stress test is writing its module and adding its
name to ``MODULES`` (a dotted name for a module outside this package); see docs/extending.md, "Adding a
stress test".

Importing this package, or any probe module, loads no torch, h5py or matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from ..layout import Field
from .base import MeasureData, Probe

#: The registry: one module per stress test, in the order their keys are listed and run.
MODULES: tuple[str, ...] = (
    "corruptions",
    "faithfulness",
    "neighbours",
    "adversarial",
    "autoattack",
    "ood",
    "shift",
    "sanity",
    "shortcut",
)


class ProbeRegistryError(ImportError):
    """A probe module cannot be imported, or two probes claim the same name, key or field. One line
    naming the module."""


def _module(name: str) -> str:
    return name if "." in name else f"{__name__}.{name}"


def load(name: str) -> Probe:
    """The PROBE of ``probes/<name>.py`` (or of the module ``name`` when it is dotted)."""
    module = _module(name)
    try:
        probe = import_module(module).PROBE
    except Exception as exc:  # noqa: BLE001 - ImportError, SyntaxError, a missing PROBE, ...: one line
        raise ProbeRegistryError(f"stress test module {module} cannot be imported "
                                 f"({type(exc).__name__}: {exc})", name=module) from exc
    if not isinstance(probe, Probe):
        raise ProbeRegistryError(f"stress test module {module}: PROBE is a {type(probe).__name__}, not a "
                                 "cnnstress.probes.base.Probe", name=module)
    return probe


_loaded: tuple[tuple[str, ...], tuple[Probe, ...]] = ((), ())


def registered() -> tuple[Probe, ...]:
    """The registered probes, in ``MODULES`` order (loaded once per value of ``MODULES``)."""
    global _loaded
    if _loaded[0] != MODULES:
        names = MODULES
        found = tuple(load(n) for n in names)
        _check(names, found)
        _loaded = (names, found)
    return _loaded[1]


def _check(names: tuple[str, ...], found: tuple[Probe, ...]) -> None:
    owner: dict[tuple[str, str], str] = {}
    for module, probe in zip(map(_module, names), found):
        if not probe.name:
            raise ProbeRegistryError(f"stress test module {module}: its probe has no name")
        for kind, items in (("name", (probe.name,)), ("[stress] key", probe.keys), ("StressSpec field", probe.fields),
                            ("root attribute", probe.root_attrs),
                            ("results.h5 dataset", (r.template for r in probe.rows))):
            for item in items:
                other = owner.setdefault((kind, item), module)
                if other != module:
                    raise ProbeRegistryError(f"stress test modules {other} and {module} both declare the {kind} "
                                             f"{item!r}: each belongs to one stress test")


def stress_keys() -> dict[str, Any]:
    """Every [stress] key (name -> catalog.Param), in registry order."""
    return {k: p for probe in registered() for k, p in probe.keys.items()}


def spec_fields() -> dict[str, Any]:
    """Every StressSpec field with its off value, in registry order."""
    return {k: off for probe in registered() for k, off in probe.fields.items()}


def optional_fields() -> dict[str, Any]:
    """StressSpec fields left out of a run's identity while they hold their off value."""
    return {k: off for probe in registered() for k, off in probe.fields.items() if k not in probe.kept}


def resolve(v: Any, stress: dict[str, Any], *, dataset: str | None, data_root: str) -> dict[str, Any]:
    """Every probe's StressSpec fields from the validated [stress] table."""
    out: dict[str, Any] = {}
    for probe in registered():
        out.update(probe.resolve(v, stress, dataset=dataset, data_root=data_root))
    return out


def schema_rows() -> tuple[Field, ...]:
    """The results.h5 rows of every probe; catch-all rows (``<name>`` under a prefix) last, so that
    a more specific row always matches first."""
    rows = [r for probe in registered() for r in probe.rows]
    return tuple(sorted(rows, key=lambda r: r.template.endswith("/<name>")))  # (a stable sort)


def root_attrs() -> dict[str, str]:
    """The optional results.h5 root attributes the probes write (name -> kind)."""
    return {k: kind for probe in registered() for k, kind in probe.root_attrs.items()}


def enabled(spec: Any) -> list[Probe]:
    """The probes a run measures, in registry order."""
    return [p for p in registered() if p.enabled(spec.stress)]


__all__ = ["MODULES", "MeasureData", "Probe", "ProbeRegistryError", "enabled", "load", "optional_fields",
           "registered", "resolve", "root_attrs", "schema_rows", "spec_fields", "stress_keys"]
