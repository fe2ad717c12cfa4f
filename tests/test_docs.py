"""The documentation agrees with the code and with itself.

README.md is an index (at most 200 lines) with the one exit-code table, which must list exactly
the codes of ``trainjob.errors.ExitCode``; every relative link in README.md, bench/README.md and
docs/*.md must lead to a file of this repository (and a ``#fragment`` to a heading there, with
GitHub's heading anchors); every page says what is tested and how.

The commands the pages tell a reader to run exist: the README's two are what ``make -n`` says the
Makefile runs (and CI's last command), every ``make`` target, ``trainjob`` command and flag, script
and repository path in a page's ``bash`` blocks is real, and every test file a page names exists,
with docs/testing.md's table listing each ``tests/test_*.py`` once.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
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


# --- the README's two commands ---------------------------------------------------------------
# What each must do, as lines of `make -n -B <target>` (the recipe lines make would run, every
# prerequisite included): a fresh checkout gets its venv, then the job or the checks.
VENV_STEPS = [r"-m venv \.venv$", r"\.venv/bin/python -m pip install -q -e '\.\[dev\]'$"]
README_TARGETS = {
    "run": [*VENV_STEPS, r"^\.venv/bin/trainjob$"],
    "test": [
        *VENV_STEPS,
        r"^\.venv/bin/ruff check src tests bench$",
        r"^\.venv/bin/ruff format --check src tests bench$",
        r"^\.venv/bin/python -m pytest -q$",
    ],
}


def first_commands(page: Path) -> list[list[str]]:
    """The commands of the page's first ``bash`` block."""
    blocks = bash_blocks(page.read_text())
    assert blocks, f"{page.name} shows no command"
    return [argv for argv, _ in commands(blocks[0])]


def make_dry_run(root: Path, target: str) -> list[str]:
    """The recipe lines ``make`` would run for ``target`` in ``root``, all rebuilt (-B), none run
    (-n); only ``$(shell ...)`` in variables make expands, none in these two targets."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make here (make test runs under it)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    result = subprocess.run(
        [make, "-n", "-B", "--no-print-directory", target],
        cwd=root,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def missing_steps(lines: list[str], steps: list[str]) -> list[str]:
    """The steps not found in ``lines`` in this order (each after the one before); the last
    step must be the last line (what the command ends with is its point)."""
    missing, at = [], 0
    for step in steps:
        found = next((i for i in range(at, len(lines)) if re.search(step, lines[i])), None)
        if found is None:
            missing.append(step)
        else:
            at = found + 1
    if not missing and at != len(lines):
        missing.append(f"{steps[-1]} as the last line, not {lines[-1]!r}")
    return missing


def test_readme_starts_with_the_two_make_commands() -> None:
    assert first_commands(README) == [["make", target] for target in README_TARGETS]


@pytest.mark.parametrize("target", README_TARGETS)
def test_readme_commands_are_what_the_makefile_runs(target: str) -> None:
    lines = make_dry_run(ROOT, target)
    assert missing_steps(lines, README_TARGETS[target]) == [], "\n".join(lines)


def last_command(script: Path) -> str:
    lines = [line.strip() for line in script.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")][-1]


def test_ci_ends_with_the_readme_test_command() -> None:
    """CI passes when what a reader runs passes: .ci/run ends with `make test`, unchanged."""
    assert last_command(ROOT / ".ci" / "run") == shlex.join(first_commands(README)[1])


# --- every command a page shows ----------------------------------------------------------------
BASH_BLOCK = re.compile(r"^```(?:bash|sh|shell)\n(.*?)^```", re.S | re.M)
# Tools from outside this repository that pages may tell a reader to run: the shell's own, and
# the ones a test needs or skips without (docs/testing.md names them).
SHELL = {".", "set", "export", "read", "cd", "mkdir", "cat", "sudo"}
EXTERNAL = {"docker", "kubectl", "pytest"}
VENV_BIN = Path(sys.executable).parent  # wandb, ruff, trainjob: installed by `make venv`
REPO_PATH = re.compile(r"^(?:\./)?(?:bench|docker|docs|k8s|presets|src|tests|\.ci)/[\w./-]*$")


def bash_blocks(text: str) -> list[str]:
    return BASH_BLOCK.findall(text)


def commands(block: str) -> list[tuple[list[str], set[str]]]:
    """Each simple command of a ``bash`` block as (argv, paths it creates): continuation lines
    joined, comments and here-documents dropped, ``&&``/``|``/``;`` split, ``VAR=value``
    prefixes and ``sudo`` removed, ``<placeholder>`` words kept as one word."""
    out: list[tuple[list[str], set[str]]] = []
    lines = iter(block.replace("\\\n", " ").splitlines())
    for line in lines:
        heredoc = re.search(r"<<\s*'?(\w+)'?", line)
        if heredoc:
            for body in lines:  # skip to the end marker
                if body.strip() == heredoc.group(1):
                    break
            line = line[: heredoc.start()]
        lexer = shlex.shlex(
            re.sub(r"<([\w ]+)>", r"_\1_", line), posix=True, punctuation_chars=";&|<>"
        )
        lexer.whitespace_split = True
        words = list(lexer)
        segment: list[str] = []
        for word in [*words, ";"]:
            if word in (";", "&&", "||", "|", "&"):
                if segment:
                    out.append(simple(segment))
                segment = []
            else:
                segment.append(word)
    return [c for c in out if c[0]]


def simple(words: list[str]) -> tuple[list[str], set[str]]:
    created = {words[i + 1] for i, w in enumerate(words[:-1]) if w == ">"}
    words = [w for i, w in enumerate(words) if w != ">" and (i == 0 or words[i - 1] != ">")]
    while words and (re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]) or words[0] == "sudo"):
        words = words[1:]
    if words[:1] == ["mkdir"]:
        created |= {w for w in words[1:] if not w.startswith("-")}
    return words, created


@cache
def trainjob_help() -> tuple[frozenset[str], frozenset[str]]:
    """The commands and the flags `trainjob --help` lists: the reference for both."""
    help_text = subprocess.run(
        [sys.executable, "-m", "trainjob", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    ).stdout
    names = re.findall(r"^  ([a-z]+(?: [a-z]+)?)  ", help_text, re.M)
    return frozenset(names), frozenset({"--help", *re.findall(r"--[a-z][\w-]*", help_text)})


def makefile_targets(root: Path) -> set[str]:
    text = (root / "Makefile").read_text()
    return set(re.findall(r"^([\w.-]+)\s*:(?!=)", text, re.M)) - {".PHONY"}


def trainjob_problems(args: list[str]) -> list[str]:
    names, flags = trainjob_help()
    words: list[str] = []
    for arg in args[:2]:  # the command's words come before any flag or path
        if not re.fullmatch(r"[a-z]+", arg):
            break
        words.append(arg)
    command = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in names), None)
    problems = [] if command or not words else [f"trainjob {words[0]}: no such command"]
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag not in flags:
            problems.append(f"trainjob {flag}: not in trainjob --help")
    return problems


def command_problems(argv: list[str], created: set[str], root: Path = ROOT) -> list[str]:
    """Why ``argv`` would not run as a page shows it (empty: it would, as far as can be told
    without a GPU, an engine, a cluster or a server)."""
    tool, args = argv[0], argv[1:]
    problems = [
        f"{arg}: no such file in the repository"
        for arg in args
        if REPO_PATH.match(arg)
        and not (root / arg).exists()
        and not any(arg == c or arg.startswith(c.rstrip("/") + "/") for c in created)
    ]
    if tool == "make":
        targets = makefile_targets(root)
        problems += [
            f"make {a}: no such target"
            for a in args
            if "=" not in a and not a.startswith("-")
            if a not in targets
        ]
    elif tool == "trainjob" or argv[:3] == ["python", "-m", "trainjob"]:
        problems += trainjob_problems(args if tool == "trainjob" else args[2:])
    elif tool == "python" or tool.endswith("/python"):
        if args[:1] == ["-m"]:
            if args[1] != "trainjob" and shutil.which(args[1], path=str(VENV_BIN)) is None:
                problems.append(f"python -m {args[1]}: not installed by make venv")
        elif not (root / args[0]).is_file():
            problems.append(f"python {args[0]}: no such script")
    elif "/" in tool:
        if tool.startswith(".venv/bin/"):
            if shutil.which(tool.split("/")[-1], path=str(VENV_BIN)) is None:
                problems.append(f"{tool}: not installed by make venv")
        elif not os.access(root / tool, os.X_OK):
            problems.append(f"{tool}: no such executable in the repository")
    elif tool not in SHELL | EXTERNAL and shutil.which(tool, path=str(VENV_BIN)) is None:
        problems.append(f"{tool}: not a command this repository or its venv provides")
    return problems


def page_command_problems(page: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for block in bash_blocks(page.read_text()):
        created: set[str] = set()  # by an earlier command of the same block
        for argv, creates in commands(block):
            created |= creates
            problems += [f"{shlex.join(argv)}: {p}" for p in command_problems(argv, created, root)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_shown_exists(page: Path) -> None:
    assert page_command_problems(page) == []


# --- test files --------------------------------------------------------------------------------
TEST_FILE = re.compile(r"\btests/[\w/]+\.py\b")
TESTING = ROOT / "docs" / "testing.md"


def table_files(text: str) -> list[str]:
    """The files in the first column of docs/testing.md's "What is tested" table, in order."""
    section = re.search(r"^## What is tested\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "docs/testing.md has no '## What is tested' section"
    return re.findall(r"^\| `(tests/[\w/]+\.py)` \|", section.group(1), re.M)


def table_problems(listed: list[str], files: list[str]) -> list[str]:
    twice = sorted({f for f in listed if listed.count(f) > 1})
    return (
        [f"{f}: not in the table" for f in sorted(set(files) - set(listed))]
        + [f"{f}: in the table, no such file" for f in sorted(set(listed) - set(files))]
        + [f"{f}: in the table twice" for f in twice]
    )


def test_every_test_file_named_exists() -> None:
    named = {(page.name, f) for page in PAGES for f in TEST_FILE.findall(page.read_text())}
    assert sorted(f"{page}: {f}" for page, f in named if not (ROOT / f).is_file()) == []


def test_testing_page_lists_every_test_file_once() -> None:
    files = [f"tests/{p.name}" for p in sorted((ROOT / "tests").glob("test_*.py"))]
    assert table_problems(table_files(TESTING.read_text()), files) == []


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


def test_the_command_checks_can_fail(tmp_path: Path) -> None:
    """A Makefile whose `run` forgets the venv and trains with another program, a CI script
    that ends elsewhere, and a page showing a missing target, command, flag, script and path
    are all caught; a path the block creates itself, placeholders and heredocs are not."""
    (tmp_path / "Makefile").write_text(
        "run: data\n\tpython3 -m trainjob\n\ndata:\n\tmkdir -p data\n\ntest:\n\tpytest -q\n"
    )
    lines = make_dry_run(tmp_path, "run")
    assert lines == ["mkdir -p data", "python3 -m trainjob"]
    assert missing_steps(lines, README_TARGETS["run"]) == README_TARGETS["run"]
    ordered = [".venv/bin/python -m venv .venv", "x", ".venv/bin/trainjob", "make: extra"]
    assert missing_steps(ordered, [r"-m venv \.venv$", r"^\.venv/bin/trainjob$"]) == [
        "^\\.venv/bin/trainjob$ as the last line, not 'make: extra'"
    ]
    (tmp_path / "ci").write_text("#!/bin/sh\nmake test\nmake lint  # after the tests\n\n# end\n")
    assert last_command(tmp_path / "ci") == "make lint  # after the tests"
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "ok.py").touch()
    page = tmp_path / "page.md"
    page.write_text(
        "```bash\n"
        "make run && make deploy             # no such target\n"
        "TRAINJOB_EPOCHS=1 trainjob --epochs 2 --no_such_flag 1\n"
        "trainjob sweep launch sweep.yaml\n"
        "trainjob sync $WANDB_DIR/wandb/offline-run-<date>-<run id> --sync_stall_s 5\n"
        "python bench/ok.py && python bench/gone.py\n"
        "kubectl apply -k k8s/overlays/gone \\\n  --dry-run=client\n"
        "mkdir -p k8s/overlays/mine && cat > k8s/overlays/mine/k.yaml <<'YAML'\n"
        "resources: [../nope]\nYAML\n"
        "kubectl apply -k k8s/overlays/mine\n"
        "frobnicate --all\n"
        "```\n"
    )
    assert [p.split(": ", 1)[1] for p in page_command_problems(page, tmp_path)] == [
        "make deploy: no such target",
        "trainjob --no_such_flag: not in trainjob --help",
        "trainjob sweep: no such command",
        "bench/gone.py: no such file in the repository",
        "python bench/gone.py: no such script",
        "k8s/overlays/gone: no such file in the repository",
        "frobnicate: not a command this repository or its venv provides",
    ]


def test_the_test_file_checks_can_fail() -> None:
    table = (
        "## What is tested\n\n| file | what |\n|---|---|\n| `tests/test_a.py` | a |\n"
        "| `tests/test_gone.py` | b |\n| `tests/test_a.py` | again |\n\n## Next\n"
    )
    assert table_problems(table_files(table), ["tests/test_a.py", "tests/test_new.py"]) == [
        "tests/test_new.py: not in the table",
        "tests/test_gone.py: in the table, no such file",
        "tests/test_a.py: in the table twice",
    ]
    assert TEST_FILE.findall("see tests/test_x.py and `tests/helpers.py`") == [
        "tests/test_x.py",
        "tests/helpers.py",
    ]
