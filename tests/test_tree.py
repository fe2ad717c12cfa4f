"""What a job leaves in the project root must not change what the checks say.

`make run` writes `wandb/`, `outputs/`, `checkpoints/` and `data/` into the checkout; `make test`
runs ruff and pytest in the same checkout afterwards. These tests copy the project's sources into
a temporary folder, add those folders there, and run the real ruff on the copy.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT

RUFF = Path(sys.executable).with_name("ruff")
# What one offline `make run` leaves in the root (see .gitignore), each shaped like the real thing.
RUN_LEFTOVERS = {
    "wandb/offline-run-20260101_000000-abc/files/model.onnx": b"",
    "wandb/__init__.py": b"",  # a package-shaped folder is the worst case for import sorting
    "outputs/run.json": b"{}",
    "checkpoints/.keep": b"",
    "data/MNIST/raw/train-labels-idx1-ubyte": b"",
}


def _copy_project(target: Path) -> Path:
    target.mkdir(parents=True)
    for name in ("pyproject.toml", "src", "tests", "bench"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target / name)
    return target


@pytest.mark.skipif(not RUFF.exists(), reason=f"ruff is not installed beside {sys.executable}")
def test_ruff_verdict_does_not_depend_on_run_leftovers(tmp_path: Path) -> None:
    project = _copy_project(tmp_path / "project")
    clean = subprocess.run(
        [str(RUFF), "check", "--no-cache", "src", "tests", "bench"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    for rel, blob in RUN_LEFTOVERS.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(blob)
    after = subprocess.run(
        [str(RUFF), "check", "--no-cache", "src", "tests", "bench"],
        cwd=project,
        capture_output=True,
        text=True,
    )
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert after.returncode == 0, (
        "ruff fails once a run has left its folders in the project root:\n" + after.stdout
    )


# --- the package's shape: no import cycles, the entry point at the top, one file tree ----------

PACKAGE = ROOT / "src" / "trainjob"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Each trainjob module -> the trainjob modules it imports anywhere in its code (imports
    inside functions count: a cycle through a lazy import is still a cycle to a reader); only
    ``if TYPE_CHECKING:`` blocks are left out."""
    import ast

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skipped = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t in modules and t != name)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_import_cycles_and_library_code_never_imports_the_entry_point() -> None:
    graph = _imports(MODULES)
    assert _cycles(graph) == []
    top = {"trainjob.__main__", "trainjob.cli"}
    for name, deps in graph.items():
        if name != "trainjob.__main__":
            assert not deps & top, f"{name} imports the command line: {sorted(deps & top)}"


def test_the_checks_catch_a_cycle_and_an_entry_point_import(tmp_path: Path) -> None:
    """The two checks above can fail: a lazy import that closes a loop, a library module that
    imports ``__main__``."""
    package = tmp_path / "trainjob"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text("from .a import f\n")
    (package / "a.py").write_text("def f():\n    from .b import g\n")
    (package / "b.py").write_text("from . import a\nfrom .__main__ import main\n")
    modules = {
        ".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
        for p in sorted(package.rglob("*.py"))
    }
    graph = _imports(modules)
    assert _cycles(graph) == [["trainjob.__main__", "trainjob.a", "trainjob.b"]]
    assert "trainjob.__main__" in graph["trainjob.b"]


def test_architecture_tree_lists_every_module_once() -> None:
    """docs/architecture.md's ``src/trainjob/`` tree: one line per module, none missing."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    tree = page.split("```text\nsrc/trainjob/\n", 1)[1].split("```", 1)[0]
    listed: list[str] = []
    folder = ""
    for line in tree.splitlines():
        if not line.startswith("  ") or not line.strip():
            break  # the tree's top-level lines (tests/, bench/, ...) follow the package
        entry = line.split()[0]
        if line.startswith("    "):
            listed.append(folder + entry)
        elif entry.endswith("/"):
            folder = entry
            listed.append(entry)
        else:
            folder = ""
            listed.append(entry)
    actual = [
        p.relative_to(PACKAGE).as_posix()
        for p in sorted(PACKAGE.rglob("*.py"))
        if p.name != "__init__.py" or p.parent != PACKAGE
    ]
    actual = [
        a.removesuffix("/__init__.py") + "/" if a.endswith("__init__.py") else a for a in actual
    ]
    assert sorted(listed) == sorted(actual)
    assert len(listed) == len(set(listed))


def test_metric_names_are_spelled_in_one_module() -> None:
    """A metric's name is a constant of trainjob.metrics; no other module writes it as a
    string, so the loop, the job and the sweep checks cannot drift apart."""
    import ast

    from trainjob import metrics

    names = {
        *metrics.LOGGED,
        metrics.LOSS_MEAN,
        metrics.STEADY_SAMPLES_PER_S,
        metrics.WARMUP_S,
        metrics.COMPILE_S,
        metrics.WEIGHTS_SHA256,
    }
    found = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in MODULES.values()
        if path.name != "metrics.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert found == []


def _error_classes_in(source: str, family: set[str]) -> list[str]:
    """The classes ``source`` defines on a base named in ``family``."""
    import ast

    return [
        node.name
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef)
        and any(ast.unparse(base).rpartition(".")[2] in family for base in node.bases)
    ]


def test_exceptions_with_exit_codes_are_defined_in_errors() -> None:
    """Every exception that ends a command with an exit code is a class of trainjob.errors,
    next to the codes the Kubernetes podFailurePolicy and the README's table rely on."""
    from trainjob import errors

    family = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, errors.TrainjobError)
    }
    assert _error_classes_in("class Gone(errors.StorageError): ...", family) == ["Gone"]
    found = {
        name: classes
        for name, path in MODULES.items()
        if name != "trainjob.errors"
        if (classes := _error_classes_in(path.read_text(), family))
    }
    assert found == {}


# --- docs/architecture.md names code that exists -------------------------------------------------

# `module.name` or `folder/module.Class.method` in a code span of the page's prose.
CODE_REF = re.compile(r"`((?:[a-z_]+/)*[a-z_]+)\.([A-Za-z_][\w.]*)`")
FILE_SUFFIXES = {"py", "json", "md", "yaml", "onnx", "env"}  # `run.json`: a file, not code


def unresolved(text: str) -> list[str]:
    """The ``module.name`` references in ``text`` (outside fenced blocks) that do not resolve
    to a module of trainjob and an attribute of it; ``x.py`` must be a module's file."""
    prose = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    missing = []
    for module, attr in CODE_REF.findall(prose):
        if attr in FILE_SUFFIXES:
            if attr == "py" and not any((d / f"{module}.py").exists() for d in (PACKAGE, ROOT)):
                missing.append(f"{module}.py")
            continue
        name = "trainjob." + module.replace("/", ".")
        if importlib.util.find_spec(name) is None:
            missing.append(f"{module}.{attr}: no module {name}")
            continue
        target: object = importlib.import_module(name)
        for part in attr.split("."):
            if not hasattr(target, part):
                missing.append(f"{module}.{attr}: no {part}")
                break
            target = getattr(target, part)
    return missing


def test_architecture_page_names_only_code_that_exists() -> None:
    page = (ROOT / "docs" / "architecture.md").read_text()
    assert len(CODE_REF.findall(page)) >= 20  # the page still names code to check
    assert unresolved(page) == []


def test_the_architecture_check_can_fail() -> None:
    text = "`job.run` `job.no_such` `nomodule.run` `tracking/run.Tracker.nope` `gone.py` `run.json`"
    assert unresolved(text) == [
        "job.no_such: no no_such",
        "nomodule.run: no module trainjob.nomodule",
        "tracking/run.Tracker.nope: no nope",
        "gone.py",
    ]
