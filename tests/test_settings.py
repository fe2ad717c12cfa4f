"""Settings: precedence, parsing of sweep-style flags, --help, and the bad-input matrix."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Annotated

import pytest
from helpers import SRC, clean_env, run_cli
from pydantic import BaseModel

from trainjob.cli import Command, parse
from trainjob.errors import ConfigError
from trainjob.settings import Scope, Settings, env_name, load_settings


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith(("TRAINJOB_", "WANDB_")):
            monkeypatch.delenv(key)


def test_defaults_are_the_tutorials() -> None:
    s = load_settings([])
    assert (s.epochs, s.batch_size, s.learning_rate, s.kernels, s.classes) == (
        5,
        128,
        0.005,
        [16, 32],
        10,
    )
    assert (s.dataset, s.architecture, s.data_slice) == ("MNIST", "CNN", 5)
    assert (s.watch_log, s.watch_freq, s.log_every) == ("all", 10, 25)
    assert s.resolved_project == "pytorch-demo"
    assert s.checkpoint_dir == Path("outputs") / "checkpoints"


def test_precedence_defaults_env_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINJOB_EPOCHS", "3")
    monkeypatch.setenv("TRAINJOB_LEARNING_RATE", "0.02")
    s = load_settings(["--learning_rate=0.01"])
    assert s.epochs == 3  # env beats default
    assert s.learning_rate == 0.01  # CLI beats env
    assert s.batch_size == 128  # default


@pytest.mark.parametrize(
    "argv",
    [
        ["--kernels=[8, 16]"],  # what a W&B sweep agent passes for a list value
        ["--kernels", "[8,16]"],
        ["--kernels=8,16"],
    ],
)
def test_kernels_forms(argv: list[str]) -> None:
    assert load_settings(argv).kernels == [8, 16]


def test_env_list_and_bool_forms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINJOB_KERNELS", "4, 8")
    monkeypatch.setenv("TRAINJOB_CHANNELS_LAST", "false")
    s = load_settings(["--compile=True"])  # the agent's spelling of a bool
    assert s.kernels == [4, 8] and s.channels_last is False and s.compile is True


def test_wandb_project_env_is_honoured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_PROJECT", "from-wandb")
    assert load_settings([]).resolved_project == "from-wandb"
    assert load_settings(["--project", "mine"]).resolved_project == "mine"


def test_run_config_has_no_paths_or_runtime_fields() -> None:
    config = load_settings(["--run_id", "job-1"]).run_config()
    assert "data_dir" not in config and "run_id" not in config and "output_dir" not in config
    assert config["kernels"] == [16, 32] and config["project"] == "pytorch-demo"


def test_parse_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse(["--epochs", "1"]) == Command("train", ["--epochs", "1"])
    run = parse(["sweep", "run", "s.yaml", "--worker", "0/2", "--epochs", "1"])
    assert (run.name, run.file, run.flags) == ("sweep run", "s.yaml", ["--epochs", "1"])
    assert (run.worker, run.workers) == (0, 2)
    assert parse(["sweep", "create"]) == Command("sweep create", [], "sweep.yaml")
    sync = parse(["sync", "a", "b", "--sync_stall_s", "5"])
    assert (sync.paths, sync.flags) == (["a", "b"], ["--sync_stall_s", "5"])
    monkeypatch.setenv("TRAINJOB_SWEEP_ID", "abc")
    assert parse([]) == Command("agent", [])
    assert parse(["train"]) == Command("train", [])


def test_parse_keeps_settings_flags_verbatim() -> None:
    """Whatever is not the command's own goes to load_settings as given, so that its errors
    name the flag exactly as it was typed."""
    odd = ["--", "-x", "--epoch=3", "---epochs=1", "--epochs=1=2", "-1", "a b", "--worker", "-"]
    for command in (["train"], ["agent"], ["sweep", "create", "f.yaml"]):
        assert parse([*command, *odd]).flags == odd


def test_load_settings_raises_config_error() -> None:
    with pytest.raises(ConfigError, match=r"--epochs=0 is invalid"):
        load_settings(["--epochs=0"])


def _cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = clean_env(tmp_path)
    environ.update(env)
    environ["PYTHONPATH"] = str(SRC)
    return run_cli(args, environ, tmp_path, timeout=60)


# (env, argv, text the one-line message must contain): each must exit 2, no traceback.
BAD_INPUT = [
    ({"TRAINJOB_EPOCHS": "0"}, [], "TRAINJOB_EPOCHS='0'"),
    ({"TRAINJOB_EPOCHS": "three"}, [], "TRAINJOB_EPOCHS='three'"),
    ({}, ["--epochs=-1"], "--epochs=-1"),
    ({}, ["--batch_size=0"], "--batch_size=0"),
    ({"TRAINJOB_LEARNING_RATE": "nan"}, [], "TRAINJOB_LEARNING_RATE"),
    ({}, ["--learning_rate=-0.1"], "--learning_rate=-0.1"),
    ({"TRAINJOB_DATASET": "CIFAR10"}, [], "'MNIST', 'FashionMNIST' or 'KMNIST'"),
    ({}, ["--kernels=[16, 32, 64]"], "list of 2 integers"),
    ({"TRAINJOB_KERNELS": "[16, 32"}, [], "TRAINJOB_KERNELS"),
    ({}, ["--kernels=sixteen"], "--kernels=sixteen"),
    ({}, ["--kernels=[0, 32]"], "list of 2 integers"),
    ({}, ["--classes=5"], "--classes=5"),
    ({}, ["--device=tpu"], "auto, cpu, cuda or cuda:N"),
    ({}, ["--watch_log=everything"], "'gradients', 'parameters', 'all' or 'none'"),
    ({}, ["--data_slice=0"], "--data_slice=0"),
    ({}, ["--epoch=3"], "did you mean --epochs"),
    ({}, ["--log_every"], "expected one argument"),
    ({}, ["stray"], "unrecognized arguments: stray"),
    ({"TRAINJOB_EPOCS": "3"}, [], "did you mean TRAINJOB_EPOCHS"),
    ({}, ["--architecture=ResNet"], "'CNN'"),
    ({}, ["--run_id=has space"], "--run_id=has space"),
    ({}, ["--compile=maybe"], "--compile=maybe"),
    ({"TRAINJOB_AMP": "fp8"}, [], "'none' or 'bf16'"),
    ({"WANDB_MODE": "sometimes"}, ["--epochs=1"], "WANDB_MODE='sometimes'"),
]


@pytest.mark.parametrize(("env", "argv", "expected"), BAD_INPUT)
def test_bad_input_exits_2_with_one_line(
    env: dict[str, str], argv: list[str], expected: str, tmp_path: Path, tiny_data: Path
) -> None:
    result = _cli(argv, tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), **env)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("trainjob: error:")]
    assert len(errors) == 1, result.stderr
    assert expected in errors[0]


def test_help_documents_every_field(tmp_path: Path) -> None:
    result = _cli(["--help"], tmp_path)
    assert result.returncode == 0
    for name, field in Settings.model_fields.items():
        line = next(
            (ln for ln in result.stdout.splitlines() if ln.strip().startswith(f"--{name} ")), ""
        )
        assert f"TRAINJOB_{name.upper()}" in line, name
        assert field.description and field.description in line, name
        assert "(default:" in line, name


def test_makefile_exports_no_trainjob_variable() -> None:
    """`make run` inherits what the Makefile exports; any TRAINJOB_* name there that is not a
    setting would make the job refuse to start (unknown variables are errors)."""
    from helpers import ROOT

    makefile = (ROOT / "Makefile").read_text()
    exported = [line for line in makefile.splitlines() if line.startswith("export ")]
    assert exported, "the Makefile exports the real-MNIST folder for the tests"
    assert not [line for line in exported if "TRAINJOB_" in line], exported


ENV_WORD = re.compile(r"\bTRAINJOB_[A-Z0-9]\w*")


def test_every_variable_the_code_names_is_a_setting() -> None:
    """Code builds a setting's variable with ``settings.env_name``; a message, comment or
    docstring that spells one out (the loop modules cannot import settings.py) must still name a
    field, or a renamed field leaves a hint pointing at a variable that is refused."""
    known = {env_name(name) for name in Settings.model_fields}
    example = {"TRAINJOB_EPOCS"}  # check_unknown_env's docstring: the typo it refuses
    found = {
        f"{path.relative_to(SRC)}: {word}"
        for path in sorted((SRC / "trainjob").rglob("*.py"))
        for word in ENV_WORD.findall(path.read_text())
        if word not in known | example
    }
    assert found == set()
    assert ENV_WORD.findall("TRAINJOB_EPOCHS=1, TRAINJOB_* and TRAINJOB_<NAME>") == [
        "TRAINJOB_EPOCHS"
    ]


def _marked_twice(model: type[BaseModel]) -> list[str]:
    """The fields of ``model`` that carry more than one Scope mark (``scope_of`` would take the
    first and silently drop the other)."""
    return [
        name
        for name, info in model.model_fields.items()
        if sum(isinstance(mark, Scope) for mark in info.metadata) > 1
    ]


class _TwoScopes(BaseModel):
    both: Annotated[int, Scope.RUNTIME, Scope.SWEEP] = 0
    one: Annotated[int, Scope.PLACE] = 0
    none: int = 0


def test_every_field_is_classified_once_and_the_lists_follow() -> None:
    """Each field's scope is declared on the field; the W&B config, the sweep checks and the
    trial environment are derived from it, so a new field cannot be classified in one place and
    forgotten in another."""
    from trainjob.settings import fields_in, scope_of
    from trainjob.sweep.local import PER_TRIAL_FIELDS
    from trainjob.sweep.spec import MANAGED_FIELDS
    from trainjob.sweep.trials import SWEEP_ONLY_ENV

    assert _marked_twice(_TwoScopes) == ["both"]  # the check below can fail
    assert _marked_twice(Settings) == []  # each field carries at most one mark: one scope
    every = list(Settings.model_fields)
    by_scope = {scope: fields_in(scope) for scope in Scope}
    assert sorted(sum(by_scope.values(), ())) == sorted(every)  # fields_in lists every field
    assert by_scope[Scope.IDENTITY] == ("run_name", "group", "run_id", "tags")
    assert set(by_scope[Scope.SWEEP]) == {
        "sweep_id",
        "sweep_count",
        "max_consecutive_failures",
        "parallel_trials",
    }
    assert set(by_scope[Scope.PLACE]) == {"output_dir", "checkpoint_dir"}
    assert {"epochs", "learning_rate", "kernels", "seed", "dataset"} <= set(by_scope[Scope.LEARNED])
    assert {"device", "threads", "data_dir", "watcher"} <= set(by_scope[Scope.RUNTIME])
    config = load_settings([]).run_config()
    assert set(config) == set(by_scope[Scope.LEARNED])
    assert set(MANAGED_FIELDS) == set(every) - set(fields_in(Scope.LEARNED, Scope.RUNTIME))
    assert by_scope[Scope.IDENTITY] == PER_TRIAL_FIELDS
    assert set(SWEEP_ONLY_ENV) == {
        env_name(f) for f in every if scope_of(f) in (Scope.SWEEP, Scope.IDENTITY)
    }
