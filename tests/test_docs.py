"""README.md and docs/*.md: every relative link points to a file of the repository (and, with a
#fragment, to a heading of that page), and none leads outside it. The pages are read as text; the
check is the one a reader's click makes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!\!)\[[^\]]*\]\(([^)\s]+)\)|\!\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The page without its fenced code blocks (a TOML or shell example is not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", lambda m: m.group(1) or "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", _prose(page.read_text(encoding="utf-8")), re.M)}


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(_prose(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves_inside_the_repository(page: Path) -> None:
    for target in links(page):
        if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        assert dest.is_relative_to(REPO), f"{page.name}: {target} leads outside the repository"
        assert dest.exists(), f"{page.name}: {target} does not exist"
        if fragment:
            assert fragment in anchors(dest), f"{page.name}: {target}: no heading {fragment!r} in {dest.name}"


def test_slug_follows_github() -> None:
    # an independent spelling of GitHub's rule for the headings these pages use
    assert slug("GPU acceptance: make gpu-check") == "gpu-acceptance-make-gpu-check"
    assert slug("`results.h5`") == "resultsh5"
    assert slug("Trained weights, and measuring more later") == "trained-weights-and-measuring-more-later"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    readme = set(links(REPO / "README.md"))
    for page in PAGES[1:]:
        assert f"docs/{page.name}" in readme, f"docs/{page.name} is not linked from README.md"
