"""Every relative link and anchor in README.md and docs/*.md leads somewhere that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:href|src)=\"([^\"]+)\"")


def prose(text: str, inline_code: bool = False) -> str:
    """The page without fenced code blocks (and inline code unless asked), where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)
    return text if inline_code else re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids (lower case, punctuation dropped, spaces to hyphens, -1 -2 for repeats),
    and explicit id/name attributes."""
    found: set[str] = set()
    for heading in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page.read_text(encoding="utf-8"), inline_code=True), re.M
    ):
        text = re.sub(r"<[^>]+>|[*`]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = 0
        while (f"{slug}-{n}" if n else slug) in found:
            n += 1
        found.add(f"{slug}-{n}" if n else slug)
    found.update(re.findall(r"(?:id|name)=\"([^\"]+)\"", page.read_text(encoding="utf-8")))
    return found


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I):  # http:, https:, mailto: ... are not checked
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(
                f"{link} (no {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})"
            )
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_finder_sees_links_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A Title: with *punctuation*\n## Step 2 - go\n## Step 2 - go\n## Serving (`bench/serve_it.py`)\n"
        'see [x](other.md#a-title-with-punctuation), ![img](fig.png "t") and `[not](a-link.md)`\n'
        '```\n[nor](this.md)\n```\n<img src="pic.png">\n',
        encoding="utf-8",
    )
    assert links(page) == ["other.md#a-title-with-punctuation", "fig.png", "pic.png"]
    assert anchors(page) == {
        "a-title-with-punctuation",
        "step-2---go",
        "step-2---go-1",
        "serving-benchserve_itpy",
    }
