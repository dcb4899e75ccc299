"""Every relative link of README.md and docs/*.md leads somewhere: the file exists, and its ``#anchor`` is a heading
of the page it names (GitHub's anchor rules), so moving a section never leaves a dead link behind."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks, with inline code spans blanked (links in code are not links)."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            out.append(re.sub(r"`+[^`]*`+", "``", line))
    return out


def slug(title: str) -> str:
    """GitHub's anchor of a heading: lower case, markup and punctuation dropped (letters, digits, ``_``, ``-`` and
    spaces stay), each space a ``-``."""
    text = re.sub(r"<[^>]+>", "", title)  # inline HTML
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", text)  # a link's text stays
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a page: its headings' slugs, numbered ``-1``, ``-2`` when repeated, and explicit HTML ids."""
    seen: dict[str, int] = {}
    out = set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", path.read_text()))
    fenced = False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and (m := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
            base = slug(m.group(1))
            n = seen.get(base, 0)
            out.add(base if n == 0 else f"{base}-{n}")
            seen[base] = n + 1
    return out


def relative_links(path: Path) -> list[str]:
    """The link targets of a page that are neither URLs nor mail addresses."""
    targets = [m.group(1) for line in _prose(path.read_text()) for m in LINK.finditer(line)]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


def broken(path: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``path`` whose file is missing or whose anchor is not on the page it names (paths
    named relative to ``root``)."""
    out = []
    for target in relative_links(path):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            out.append(f"{target}: no {dest.relative_to(root) if dest.is_relative_to(root) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return out


def test_the_slugs_follow_githubs_rules():
    assert slug("What the quickstart answers") == "what-the-quickstart-answers"
    assert slug("`--help` of every command") == "--help-of-every-command"
    assert slug("`base.mask` (strategy: patch)") == "basemask-strategy-patch"
    assert slug("Ray 2.60") == "ray-260"
    assert slug("Several GPUs, a Ray cluster and Docker") == "several-gpus-a-ray-cluster-and-docker"


def test_a_dead_link_and_a_missing_anchor_are_found(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A part\n\n```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n[ok](other.md#a-part) [ok](#page) [gone](missing.md) [no](other.md#not-a-heading)\n"
        "[self](#nowhere) `[code](nowhere.md)` [web](https://example.com/x#y)\n"
    )
    assert broken(page, tmp_path) == [
        "missing.md: no missing.md",
        "other.md#not-a-heading: no heading with anchor #not-a-heading in other.md",
        "#nowhere: no heading with anchor #nowhere in page.md",
    ]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page):
    assert broken(page) == []
