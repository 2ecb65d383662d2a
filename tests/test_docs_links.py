"""The README is a front page and the docs hold the rest: every relative link and anchor resolves."""

import re
from pathlib import Path

import pytest

from salsa_lib import paths

README_MAX_LINES = 200
PAGES = [paths.REPO_ROOT / "README.md", *sorted((paths.REPO_ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^\s*(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"`+[^`]*`+")


def _prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation except hyphens, spaces and
    underscores dropped (letters of any alphabet kept), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps only its text
    text = re.sub(r"[`*]", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every anchor of a Markdown file, numbered as GitHub numbers repeated headings (-1, -2, …)."""
    seen: dict[str, int] = {}
    found = set()
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        heading = _HEADING.match(line)
        if not heading:
            continue
        slug = github_slug(heading[2])
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def relative_links(page: Path) -> list[str]:
    """The link targets of a page that are neither web addresses nor mail, outside code."""
    targets = []
    for line in _prose_lines(page.read_text(encoding="utf-8")):
        for target in _LINK.findall(_INLINE_CODE.sub("", line)):
            if target and not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
                targets.append(target)
    return targets


def _broken(page: Path, target: str) -> str | None:
    path_part, _, anchor = target.partition("#")
    destination = (page.parent / path_part).resolve() if path_part else page
    if not destination.exists():
        return f"{page.name}: link {target!r} points to {path_part!r}, which does not exist"
    if anchor and destination.suffix == ".md" and anchor not in anchors(destination):
        return (f"{page.name}: link {target!r}: {destination.relative_to(paths.REPO_ROOT)} has no heading "
                f"with anchor #{anchor}")
    return None


def test_github_slugs():
    assert github_slug("7.3 Distillation loss L_dist") == "73-distillation-loss-l_dist"
    assert github_slug("Before a long run: `--check`") == "before-a-long-run---check"
    assert github_slug("12. Differences from the paper and the original code") == \
        "12-differences-from-the-paper-and-the-original-code"
    assert github_slug("Évaluation § 2 – données") == "évaluation--2--données"


def test_repeated_headings_are_numbered(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Notes\n## Setup\n```bash\n# not a heading\n```\n## Setup\n")
    assert anchors(page) == {"notes", "setup", "setup-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(paths.REPO_ROOT).as_posix())
def test_every_relative_link_and_anchor_resolves(page):
    broken = [problem for target in relative_links(page) if (problem := _broken(page, target))]
    assert not broken, "\n".join(broken)


def test_the_readme_is_a_front_page():
    lines = (paths.REPO_ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, \
        f"README.md has {len(lines)} lines; move detail to a page under docs/ (at most {README_MAX_LINES})"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {(paths.REPO_ROOT / t.partition("#")[0]).resolve() for t in relative_links(PAGES[0])}
    unlinked = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not unlinked, f"docs pages the README does not link: {unlinked}"
