"""What trainjob relies on in wandb's private behaviour, checked against the installed wandb.

``trainjob.tracking`` lists it (``PRIVATE``, ``BEHAVIOURS``); these tests fail when a wandb
upgrade moves or changes any of it, and when a module outside ``src/trainjob/tracking/`` starts
importing wandb. Upgrading wandb: bump it in pyproject.toml and requirements.lock, set
``tracking.WANDB_VERSION``, run this file first (docs/tracking.md, "The W&B adapter").
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata
import inspect
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, clean_env, offline_runs, read_offline_run

from trainjob import tracking
from trainjob.tracking import env, history, sweeps, watch

PACKAGE = ROOT / "src" / "trainjob"
W_AND_B = ("wandb", "sweeps")  # wandb and W&B's sweep engine: both pinned in tracking/


# --- the pin --------------------------------------------------------------------------------


def _pinned(text: str, name: str) -> set[str]:
    return set(re.findall(rf"^\s*\"?{name}==([\w.]+)", text, re.M))


@pytest.mark.parametrize(
    ("name", "version"), [("wandb", tracking.WANDB_VERSION), ("sweeps", tracking.SWEEPS_VERSION)]
)
def test_installed_and_locked_versions_are_the_pinned_one(name: str, version: str) -> None:
    assert importlib.metadata.version(name) == version
    assert _pinned((ROOT / "pyproject.toml").read_text(), name) == {version}
    assert _pinned((ROOT / "requirements.lock").read_text(), name) == {version}


# --- the private symbols ------------------------------------------------------------------------


@pytest.mark.parametrize("private", tracking.PRIVATE, ids=lambda p: f"{p.module}.{p.name}")
def test_private_symbol_exists_with_the_parameters_trainjob_passes(
    private: tracking.Private,
) -> None:
    found = getattr(importlib.import_module(private.module), private.name)
    if not private.params:
        return
    assert callable(found), private
    parameters = inspect.signature(found).parameters
    missing = [p for p in private.params if p not in parameters]
    assert not missing, f"{private.module}.{private.name} no longer takes {missing}"


def test_every_private_import_in_the_package_is_listed() -> None:
    """The list is complete: each ``from wandb.x import y`` / ``sweeps`` attribute that
    tracking/ reaches beyond wandb's top-level API is in ``PRIVATE``."""
    listed = {(p.module, p.name) for p in tracking.PRIVATE}
    for path in sorted((PACKAGE / "tracking").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wandb."):
                for alias in node.names:
                    pair = (node.module, alias.name)
                    module_itself = f"{node.module}.{alias.name}"
                    assert pair in listed or any(m == module_itself for m, _ in listed), (
                        f"{path.name} imports {pair}, not in tracking.PRIVATE"
                    )


def test_default_server_is_wandbs() -> None:
    from wandb.sdk.lib.urls import DEFAULT_BASE_URL

    assert env.DEFAULT_BASE_URL == DEFAULT_BASE_URL


def test_key_format_check_answers_as_server_py_reads_it() -> None:
    from wandb.sdk.lib.wbauth.validation import check_api_key

    assert isinstance(check_api_key("short"), str) and check_api_key("short")
    assert check_api_key("a" * 40) is None


def test_trial_arguments_are_formatted_by_wandb() -> None:
    params = {"learning_rate": {"value": 0.01}, "epochs": {"value": 2}}
    assert sweeps.command_args(params) == ["--learning_rate=0.01", "--epochs=2"]


# --- the run file reader ------------------------------------------------------------------------

WRITE_RUN = """
import wandb
run = wandb.init(mode="offline", project="pin", settings=wandb.Settings(x_disable_viewer=True))
for step in range(5):
    run.log({"x": float(step)}, step=step)
run.finish(exit_code=3)
"""


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline run written by ``wandb.init``: 5 history rows (steps 0-4), exit code 3."""
    tmp = tmp_path_factory.mktemp("pin")
    subprocess.run(
        [sys.executable, "-c", WRITE_RUN], env=clean_env(tmp), cwd=tmp, check=True, timeout=120
    )
    (run_dir,) = offline_runs(tmp)
    return run_dir


def test_run_file_reader_reads_what_wandb_wrote(offline_run: Path) -> None:
    (path,) = offline_run.glob("run-*.wandb")
    theirs = read_offline_run(offline_run)  # W&B's own reader
    assert len(theirs.history) == 5 and theirs.exit_code == 3
    assert history.scan_run_file(path) == (4, 3)
    assert history.last_history_step(path) == 4
    assert history.has_records(path)


def test_run_file_reader_survives_a_cut_file(offline_run: Path, tmp_path: Path) -> None:
    """A SIGKILL leaves a partial last record, or only the 7-byte header."""
    blob = next(offline_run.glob("run-*.wandb")).read_bytes()
    assert blob[:4] == b":W&B"  # the header history.py's framing starts after
    cut = tmp_path / "cut.wandb"
    cut.write_bytes(blob[: len(blob) - 1])
    last, _ = history.scan_run_file(cut)
    assert last is None or 0 <= last <= 4
    cut.write_bytes(blob[:7])
    assert history.scan_run_file(cut) == (None, None) and not history.has_records(cut)


# --- run.watch's rules ------------------------------------------------------------------------


class _Run:
    """What wandb's ``TorchHistory`` logs to (``wandb.run._log``), without a run."""

    def __init__(self) -> None:
        self.logged: list[dict[str, Any]] = []

    def _log(self, data: dict[str, Any], commit: bool | None = None) -> None:
        self.logged.append(data)


@pytest.fixture
def wandb_history(monkeypatch: pytest.MonkeyPatch) -> tuple[Any, _Run]:
    import wandb
    from wandb.integration.torch.wandb_torch import TorchHistory

    run = _Run()
    monkeypatch.setattr(wandb, "run", run)
    return TorchHistory(), run


def test_histogram_matches_wandbs_on_a_tensor(wandb_history: tuple[Any, _Run]) -> None:
    from trainjob.tracking.run import package

    theirs_history, run = wandb_history
    assert theirs_history._num_bins == watch.BINS
    tensor = torch.randn(2000, generator=torch.Generator().manual_seed(0))
    tensor[::97] = float("nan")
    theirs_history.log_tensor_stats(tensor, "w")
    (logged,) = run.logged
    ours = package(watch.histograms(["w"], watch.tensor_stats(tensor)[None]))
    assert ours["w"].histogram == logged["w"].histogram
    assert ours["w"].bins == logged["w"].bins


def test_hooks_fire_on_the_calls_wandbs_fire(wandb_history: tuple[Any, _Run]) -> None:
    """A forward hook counts parameter calls and a tensor hook counts gradients, each firing on
    every ``log_freq``-th call: 7 steps at log_freq 3 fire twice, for both."""
    theirs_history, run = wandb_history
    freq, steps = 3, 7
    theirs = torch.nn.Linear(3, 2)
    ours = torch.nn.Linear(3, 2)
    theirs_history.add_log_parameters_hook(theirs, log_freq=freq)  # keys: parameters/<name>
    theirs_history.add_log_gradients_hook(theirs, log_freq=freq)  # gradients/<name>
    watcher = watch.Watcher(ours, "all", freq)
    watcher.start()
    for model in (theirs, ours):
        for _ in range(steps):
            model(torch.ones(4, 3)).sum().backward()
    logged = [key for data in run.logged for key in data]
    assert sorted(logged) == sorted(watcher.keys * (steps // freq))
    assert watcher.computed == len(logged)


# --- no wandb outside tracking/ ---------------------------------------------------------------

# module (relative to src/trainjob) -> why it may name wandb outside tracking/
ALLOWED = {
    "sweep/trials.py": "a forked trial ends wandb's service with wandb.teardown if, and only if, "
    "the job imported wandb (a sys.modules lookup, never an import); PRELOAD names wandb "
    "modules for the fork server to import, as strings",
}
_DYNAMIC = ("import_module", "__import__", "get")  # importlib.import_module, sys.modules.get


def _modules(node: ast.AST) -> list[str]:
    """The module names ``node`` imports or looks up by a constant string."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        return [] if node.level else [node.module or ""]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return [str(node.args[0].value)] if name in _DYNAMIC else []
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return [str(node.slice.value)] if "modules" in ast.unparse(node.value) else []
    return []


def wandb_references(source: str) -> list[str]:
    """``line: module`` for each import of wandb or sweeps in ``source``, at any depth, and each
    dynamic one (``importlib.import_module("wandb...")``, ``sys.modules["wandb"]``)."""
    return [
        f"{node.lineno}: {module}"
        for node in ast.walk(ast.parse(source))
        for module in _modules(node)
        if module.split(".")[0] in W_AND_B
    ]


def test_no_module_outside_tracking_uses_wandb() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("tracking/") or rel in ALLOWED:
            continue
        found = wandb_references(path.read_text())
        if found:
            offenders[rel] = found
    assert not offenders, f"wandb used outside src/trainjob/tracking/: {offenders}"
    for rel in ALLOWED:  # an allowance no longer needed goes
        assert wandb_references((PACKAGE / rel).read_text()), f"{rel} no longer needs ALLOWED"


@pytest.mark.parametrize(
    "source",
    [
        "import wandb\n",
        "import wandb.apis.public as public\n",
        "def f():\n    from wandb.sdk.lib import urls\n",
        "from sweeps import next_run\n",
        "import importlib\nimportlib.import_module('wandb.proto')\n",
        "import sys\nw = sys.modules.get('wandb')\n",
        "import sys\nw = sys.modules['sweeps']\n",
    ],
)
def test_the_wandb_check_catches_a_use(source: str) -> None:
    assert wandb_references(source), source


def test_the_wandb_check_lets_other_code_through() -> None:
    source = (
        "from . import wandb_like\nimport wandbx\nwatcher = 'wandb'\n"
        "import sys\nsys.modules.get('torch')\n"
    )
    assert wandb_references(source) == []
