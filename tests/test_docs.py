"""The documentation agrees with the code and with itself.

README.md is an index (at most 200 lines) with the one exit-code table, which must list exactly
the codes of ``trainjob.errors.ExitCode``; every relative link in README.md, bench/README.md and
docs/*.md must lead to a file of this repository (and a ``#fragment`` to a heading there, with
GitHub's heading anchors); every page says what is tested and how.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainjob.errors import ExitCode

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200

# [text](target) outside code; images too. Targets with a scheme or starting with "#" are
# handled separately; reference-style links are not used in these pages.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links there are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub generates for a Markdown file: lower case, punctuation other
    than '-' and '_' dropped, spaces to '-', and -1, -2, ... appended to repeated ones."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower().replace("`", "")).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def exit_code_table(text: str) -> dict[int, str]:
    """The rows of the table under the README's ``## Exit codes``: code -> meaning."""
    section = re.search(r"^## Exit codes\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Exit codes' section"
    rows = {}
    for line in section.group(1).splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].isdigit():
            code = int(cells[0])
            assert code not in rows, f"exit code {code} is twice in the README's table"
            rows[code] = cells[1]
    return rows


def test_readme_exit_code_table_is_errors_exitcode() -> None:
    rows = exit_code_table(README.read_text())
    codes = {int(c) for c in ExitCode}
    assert sorted(set(rows) - codes) == [], "in the README's table but not in ExitCode"
    assert sorted(codes - set(rows)) == [], "in ExitCode but not in the README's table"
    assert all(rows.values()), "every exit code in the README's table says what it means"


def test_only_the_readme_has_an_exit_code_table() -> None:
    """One table: the pages link to it instead of repeating it (and drifting)."""
    for page in PAGES[1:]:
        for line in page.read_text().splitlines():
            assert not re.match(r"\|\s*(code|exit)\b", line), f"{page.name}: {line}"


def test_readme_is_an_index() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"
    # The two commands come first and stay the Makefile's targets.
    assert lines[2] == "```bash" and lines[3].startswith("make run ")
    assert lines[4].startswith("make test ")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^run:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative links of ``page`` that lead nowhere inside ``root``."""
    broken = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path, _, fragment = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists() or root not in (dest, *dest.parents):
            broken.append(f"{target}: no such file in the repository")
        elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    assert broken_links(page) == [], page.relative_to(ROOT)


@pytest.mark.parametrize("page", PAGES[1:], ids=lambda p: str(p.relative_to(ROOT)))
def test_every_page_says_what_is_tested(page: Path) -> None:
    assert re.search(r"^## What is tested and how$", page.read_text(), re.M)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """A missing file, a wrong anchor, a link outside the repository and an extra exit code are
    caught; links in code are not links."""
    (tmp_path / "a.md").write_text("# A\n\n## Two `words`, here\n\n## A\n")
    assert anchors(tmp_path / "a.md") == {"a", "two-words-here", "a-1"}
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#two-words-here) [gone](missing.md) [bad](a.md#nope) [out](../x.md)\n"
        "`[code](in-code.md)` [web](https://example.org)\n```\n[fenced](f.md)\n```\n"
    )
    (tmp_path.parent / "x.md").touch()
    assert [b.split(":")[0] for b in broken_links(page, tmp_path)] == [
        "missing.md",
        "a.md#nope",
        "../x.md",
    ]
    table = "## Exit codes\n\n| code | meaning |\n|---|---|\n| 0 | ok |\n| 99 | no |\n\n## Next\n"
    assert set(exit_code_table(table)) - {int(c) for c in ExitCode} == {99}
