"""Fuzzing the settings: every generated environment (TRAINJOB_* variables,
flags, WANDB_MODE) either validates or fails with a one-line ConfigError, never anything else;
in a real process that is exit 2 and exactly that line on stderr, never a traceback."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from helpers import SRC, clean_env, run_cli
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from trainjob.errors import ConfigError
from trainjob.settings import Settings, env_name, load_settings
from trainjob.tracking.env import resolve_mode

FIELDS = sorted(Settings.model_fields)

# Text an environment variable can hold (no NUL, no lone surrogates), biased to the edges.
env_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "-inf", "1e999", "0x10", "1_000", " 7 ", "", "0", "-0", "+3", "1.5"]),
)
lists = st.one_of(
    st.lists(st.integers(-5, 5000), max_size=4).map(json.dumps),
    st.lists(st.integers(-5, 5000), max_size=4).map(lambda xs: ",".join(map(str, xs))),
    st.sampled_from(["[16, 32", "[[1,2]]", '["a","b"]', "16,,32", "[1e3, 2]", "null", "{}"]),
)
words = st.sampled_from(
    ["true", "false", "True", "0", "1", "yes", "MNIST", "KMNIST", "cifar", "CNN", "cpu", "cuda:1",
     "cuda:x", "all", "none", "bf16", "dynamo", "a b", "../x", "/tmp/x", "é", "\n", "\t1"]
)  # fmt: skip
values = st.one_of(numbers, lists, words, env_text)
names = st.one_of(
    st.sampled_from(FIELDS).map(env_name),
    st.sampled_from(["TRAINJOB_EPOCS", "TRAINJOB_", "TRAINJOB_X", "trainjob_epochs"]),
)
environments = st.dictionaries(names, values, max_size=5)
flags = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(FIELDS), values).map(lambda kv: f"--{kv[0]}={kv[1]}"),
        st.sampled_from(FIELDS).map(lambda f: f"--{f}"),
        values,
        st.sampled_from(["--", "-x", "--epoch=3", "--data-dir=x", "---epochs=1", "--epochs=1=2"]),
    ),
    max_size=4,
)


@contextlib.contextmanager
def environment(variables: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.upper().startswith(("TRAINJOB_", "WANDB_")):
            del os.environ[key]
    os.environ.update(variables)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def outcome(variables: dict[str, str], argv: list[str]) -> Settings | ConfigError:
    """load_settings in this process: Settings or a ConfigError; anything else fails the test."""
    with environment(variables):
        try:
            return load_settings(argv)
        except ConfigError as exc:
            return exc


def assert_one_line(exc: ConfigError) -> None:
    message = str(exc)
    assert message and message == message.strip(), repr(message)
    assert "\n" not in message and "\r" not in message, repr(message)
    assert "Traceback" not in message


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(environments, flags)
def test_any_environment_validates_or_fails_in_one_line(variables, argv) -> None:
    assume(not any(a in ("-h", "--help") for a in argv))  # help is answered before parsing
    result = outcome(variables, argv)
    if isinstance(result, ConfigError):
        assert_one_line(result)
    else:
        config = result.run_config()
        json.dumps(config)  # what goes to W&B is plain JSON
        assert result.epochs > 0 and result.batch_size > 0 and len(result.kernels) == 2


@settings(max_examples=200, deadline=None)
@given(st.one_of(words, env_text))
def test_any_wandb_mode_resolves_or_fails_in_one_line(mode: str) -> None:
    with environment({"WANDB_MODE": mode}):
        try:
            assert resolve_mode() in {"online", "offline", "disabled", "shared"}
        except ConfigError as exc:
            assert_one_line(exc)


# --- the same through a real process: exit 2, exactly that one line, no traceback -------------


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(variables=environments, argv=flags)
def test_invalid_invocations_exit_2_with_the_same_line(variables, argv, tmp_path_factory) -> None:
    assume(not any(a in ("-h", "--help") for a in argv))
    assume(argv[:1] not in (["agent"], ["sweep"]) and "TRAINJOB_SWEEP_ID" not in variables)
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    env = clean_env(tmp, PYTHONPATH=str(SRC))
    env.update(variables)
    ours = {k: v for k, v in env.items() if k.upper().startswith(("TRAINJOB_", "WANDB_"))}
    expected = outcome(ours, argv)
    assume(isinstance(expected, ConfigError))  # valid settings would start training
    result = run_cli(argv, env, tmp, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.splitlines() == [f"trainjob: error: {expected}"]
