"""The README and docs/: short enough to read, every link resolves, nothing points outside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "RESULTS.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def local_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


def test_the_readme_reads_in_ten_minutes():
    assert len((ROOT / "README.md").read_bytes()) <= 10_000


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves_inside_the_repository(page):
    broken = []
    for target in local_links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.is_relative_to(ROOT) or not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: links that lead nowhere: {broken}"


def test_the_checker_finds_a_broken_link_and_an_anchor(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# The gap, cause by cause\n[a](#the-gap-cause-by-cause) [b](missing.md) [c](#nowhere)\n")
    assert anchors(page) == {"the-gap-cause-by-cause"}
    assert local_links(page) == ["#the-gap-cause-by-cause", "missing.md", "#nowhere"]


def test_no_page_or_module_cites_a_file_outside_the_repository():
    texts = [*PAGES, *ROOT.joinpath("pipeline").rglob("*.py")]
    assert not [str(p.relative_to(ROOT)) for p in texts if re.search(r"\.\./shared|DESIGN\.md", p.read_text())]
