"""index.html: one self-contained page (figures as base64 PNG, inline CSS, no scripts, no links out).

The page is the registered sections (``report.sections.SECTIONS``) in order, each rendered by its
``Section.render``; the building blocks (escaping, tables, figures) are in ``report.markup``. Each
section always appears, with a sentence saying why it is empty when the sweep has no data for it,
so a reader (and a test) finds every heading.
"""

from __future__ import annotations

from .markup import CSS, esc, para
from .model import FigureRef, ReportData
from .sections import SECTIONS as REGISTRY



def __getattr__(name: str):
    """``SECTIONS``: (id, heading) of the registered sections in page order, read when asked (the
    registry is a list a test may extend)."""
    if name == "SECTIONS":
        return tuple((s.id, s.title) for s in REGISTRY)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def page(report: ReportData, figs: dict[str, FigureRef]) -> str:
    """The whole page as text."""
    toc = "".join(f'<li><a href="#{s.id}">{esc(s.title)}</a></li>' for s in REGISTRY)
    notes = "".join(para(n, "note") for n in report.notes)
    body = "".join(section.render(report, figs) for section in REGISTRY)
    meta = (f"dataset {report.dataset} ({report.num_classes} classes) · baseline '{report.baseline}' · "
            f"confidence threshold {report.threshold:g} · results as of {report.generated_at}")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>cnnstress report: {esc(report.sweep)}</title><style>{CSS}</style></head><body><main>"
            f"<h1>cnnstress report: {esc(report.sweep)}</h1><p class=\"meta\">{esc(meta)}</p>{notes}"
            f"<nav class=\"toc\"><strong>Contents</strong><ol>{toc}</ol></nav>{body}</main></body></html>\n")
