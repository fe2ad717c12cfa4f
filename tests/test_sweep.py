"""sweep.yaml and the sweep commands before any trial: W&B's schema, the job's metrics, Settings
fields and values, the agent's ${args} spelling, worker split and the one-line errors (exit 2)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import ROOT, clean_env, run_cli

from trainjob.__main__ import main
from trainjob.cli import parse
from trainjob.errors import Interrupted
from trainjob.settings import Settings, load_settings
from trainjob.sweep.local import (
    Options,
    Point,
    Result,
    bayes_point,
    grid_points,
    planned,
    random_point,
)
from trainjob.sweep.spec import (
    MANAGED_FIELDS,
    flag,
    load_sweep,
    parameter_values,
    plain,
)
from trainjob.sweep.trials import (
    FailureCounter,
    SignalForwarder,
    TrialRunner,
    exit_status,
    trial_env,
)

SWEEP_YAML = ROOT / "sweep.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.startswith(("TRAINJOB_", "WANDB_", "JOB_COMPLETION")):
            monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.chdir(tmp_path)


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# --- the shipped sweep.yaml -------------------------------------------------------------------


def test_sweep_yaml_parameters_are_settings_and_values_validate() -> None:
    raw = yaml.safe_load(SWEEP_YAML.read_text())
    assert raw["method"] == "bayes"
    assert raw["metric"] == {"name": "test_accuracy", "goal": "maximize"}
    assert raw["early_terminate"]["type"] == "hyperband" and raw["run_cap"] > 0
    assert raw["parameters"]["learning_rate"]["distribution"] == "log_uniform_values"
    assert set(raw["parameters"]) <= set(Settings.model_fields)
    assert not set(raw["parameters"]) & set(MANAGED_FIELDS)
    checked = 0
    for name, spec in raw["parameters"].items():
        for value in parameter_values(spec):
            settings = load_settings([flag(name, value)])  # as W&B's agent passes it
            assert getattr(settings, name) == value
            checked += 1
    assert checked >= 10
    config = load_sweep(SWEEP_YAML)  # W&B's schema + every check trainjob makes
    assert config["name"] == "convnet-mnist"


def test_sweep_yaml_command_runs_train_with_wandb_args() -> None:
    command = yaml.safe_load(SWEEP_YAML.read_text())["command"]
    assert command == ["${env}", "${interpreter}", "-m", "trainjob", "train", "${args}"]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kernels", [8, 16]),
        ("learning_rate", 0.0012345678901234567),
        ("learning_rate", np.float64(0.003)),
        ("batch_size", np.int64(64)),
        ("compile", True),
        ("channels_last", False),
        ("dataset", "FashionMNIST"),
    ],
)
def test_flags_are_wandbs_args_and_parse_back(name: str, value: object) -> None:
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    value = plain(value)
    assert type(value) in (list, float, int, bool, str)
    (wandb_flag,) = create_sweep_command_args({"args": {name: {"value": value}}})["args"]
    assert flag(name, value) == wandb_flag
    assert getattr(load_settings([wandb_flag]), name) == value


# --- errors before any trial: exit 2, one line --------------------------------------------------

GOOD = {
    "name": "t",
    "method": "grid",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.001, 0.01]}},
}


def _with(**changes: object) -> dict:
    config = {**GOOD, **changes}
    return {k: v for k, v in config.items() if v is not None}


BAD_SWEEPS = [
    (_with(method="sideways"), [], "rejected by W&B's sweep schema"),
    (_with(parameters=None), [], "rejected by W&B's sweep schema"),
    # early_terminate: named, with what is wrong, before any trial (W&B's engine's own checks).
    (_with(early_terminate={"type": "hyperband"}), [], "needs min_iter (with eta) or max_iter"),
    (_with(early_terminate="hyperband"), [], "early_terminate='hyperband' is invalid"),
    (_with(early_terminate={"type": "hyperband", "min_iter": 1, "eta": 0}), [], "eta': 0} is"),
    (_with(early_terminate={"type": "hyperbnd", "min_iter": 2}), [], "Invalid early stopping"),
    (_with(early_terminate={"type": "hyperband", "max_iter": 4, "s": 0}), [], "Bands must"),
    (
        _with(metric={"name": "loss"}, early_terminate={"type": "hyperband", "min_iter": 1}),
        [],
        "metric 'loss' is not logged once per epoch, so early_terminate",
    ),
    (
        _with(metric=None, early_terminate={"type": "hyperband", "min_iter": 1}),
        [],
        "early_terminate needs the sweep's metric",
    ),
    (_with(run_cap=0), [], "run_cap=0 is invalid"),
    (_with(metric={"name": "val_loss"}), [], "'val_loss' is never logged by trainjob"),
    (_with(metric={"name": "loss"}), [], "'loss' is not in the summary"),
    (_with(parameters={"dropout": {"values": [0.1]}}), [], "'dropout' is not a trainjob setting"),
    (_with(parameters={"group": {"value": "x"}}), [], "'group' is set by the sweep itself"),
    (_with(parameters={"batch_size": {"values": [64, 0]}}), [], "--batch_size=0 is invalid"),
    (_with(parameters={"kernels": {"values": [[8, 16], [8]]}}), [], "list of 2 integers"),
    (
        _with(parameters={"learning_rate": {"min": -1.0, "max": 0.1}}),
        [],
        "--learning_rate=-1.0 is invalid",
    ),
    (
        _with(parameters={"learning_rate": {"min": 0.001, "max": 0.01}}),
        [],
        "engine refuses the sweep: Parameter learning_rate is a disallowed type with grid search",
    ),
    (
        _with(method="bayes", parameters={"epochs": {"value": 1}}),
        ["--count=2"],
        "Need at least one searchable parameter",
    ),
    (_with(method="bayes"), ["--worker", "1/2"], "cannot be split over 2 workers"),
    (_with(method="random"), [], "never runs out of points"),
    (GOOD, ["--worker", "3/3"], "--worker='3/3' is invalid"),
    (GOOD, ["--count=0"], "--count='0' is invalid"),
    (GOOD, ["--learning_rate=0.1"], "--learning_rate is set by the sweep"),
    (GOOD, ["--group=g"], "--group is set by the sweep"),
    (GOOD, ["--epochs=0"], "--epochs=0 is invalid"),
]


@pytest.mark.parametrize(("config", "argv", "expected"), BAD_SWEEPS)
def test_bad_sweep_exits_2_before_any_trial(
    config: dict, argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = write(tmp_path / "s.yaml", config)
    assert main(["sweep", "run", str(path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainjob: error:"), err
    assert expected in err[0]
    assert not (tmp_path / "outputs").exists()  # no trial started


def test_file_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["sweep", "run", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    (tmp_path / "bad.yaml").write_text("method: grid\nparameters: [unclosed\n")
    assert main(["sweep", "run", str(tmp_path / "bad.yaml")]) == 2
    assert "is not valid YAML at line" in capsys.readouterr().err


def test_sweep_id_in_offline_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    path = write(tmp_path / "s.yaml", GOOD)
    assert main(["sweep", "create", str(path)]) == 2
    assert "run the sweep offline with: trainjob sweep run" in capsys.readouterr().err
    monkeypatch.setenv("TRAINJOB_SWEEP_ID", "me/proj/abc123")
    assert main(["sweep", "run", str(path)]) == 2
    assert "names a sweep on the W&B server" in capsys.readouterr().err
    assert main(["agent"]) == 2
    assert "TRAINJOB_SWEEP_ID=me/proj/abc123 needs the W&B server" in capsys.readouterr().err
    monkeypatch.delenv("WANDB_MODE")  # no key either: offline too
    assert main([]) == 2  # TRAINJOB_SWEEP_ID set: the default command is the agent
    assert "W&B is offline" in capsys.readouterr().err


def test_agent_without_sweep_id(capsys: pytest.CaptureFixture) -> None:
    assert main(["agent"]) == 2
    assert "trainjob agent needs TRAINJOB_SWEEP_ID" in capsys.readouterr().err


def test_container_default_command_with_sweep_id_in_offline_mode(tmp_path: Path) -> None:
    """What the image's entrypoint does with TRAINJOB_SWEEP_ID set and no server: one line."""
    env = clean_env(tmp_path, TRAINJOB_SWEEP_ID="abc123")
    result = run_cli([], env, tmp_path, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "trainjob: error: TRAINJOB_SWEEP_ID=abc123 needs the W&B server, but W&B is offline "
        "(WANDB_MODE or no WANDB_API_KEY); unset TRAINJOB_SWEEP_ID and run the sweep offline "
        "with: trainjob sweep run sweep.yaml"
    ]


# --- worker split and proposals -----------------------------------------------------------------

GRID7 = {
    "name": "g7",
    "method": "grid",
    "parameters": {"batch_size": {"values": [16, 32, 64, 128]}, "seed": {"values": [1, 2]}},
}


def test_grid_points_are_the_product() -> None:
    points = grid_points(load_sweep(write(Path("g.yaml"), GRID7)))
    assert len(points) == 8
    assert {(p["batch_size"], p["seed"]) for p in points} == {
        (b, s) for b in (16, 32, 64, 128) for s in (1, 2)
    }


@pytest.mark.parametrize("method", ["grid", "random"])
def test_worker_split_runs_every_point_exactly_once(method: str, capsys) -> None:
    if method == "grid":
        config = {**GRID7, "run_cap": 7}  # the cap cuts the grid's 8 points to 7
    else:
        config = {
            "name": "r7",
            "method": "random",
            "run_cap": 7,
            "parameters": {
                "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-1},
                "batch_size": {"values": [16, 32, 64]},
            },
        }
    path = write(Path("s.yaml"), config)
    seen: list[str] = []
    for worker in range(3):
        # As in a Kubernetes Indexed Job: no flag, only the pod's environment.
        os.environ.update(JOB_COMPLETION_INDEX=str(worker), JOB_COMPLETIONS="3")
        assert main(["sweep", "run", str(path), "--dry-run"]) == 0
        lines = [ln for ln in capsys.readouterr().out.splitlines() if " trial " in ln]
        assert all(f"(worker {worker}/3)" in ln for ln in lines)
        seen += [ln.split(" trial ")[1].split(" (worker")[0] for ln in lines]
    os.environ.pop("JOB_COMPLETION_INDEX")
    os.environ.pop("JOB_COMPLETIONS")
    assert len(seen) == 7 and len(set(seen)) == 7  # 7 distinct points, each once
    assert sorted(int(key.split("-")[0]) for key in seen) == list(range(7))
    # The same proposal k on one worker alone: identical point (seeded by sweep name and k).
    assert main(["sweep", "run", str(path), "--dry-run"]) == 0
    alone = [
        ln.split(" trial ")[1] for ln in capsys.readouterr().out.splitlines() if " trial " in ln
    ]
    assert sorted(a.split(":")[0] for a in alone) == sorted(seen)


def test_planned_indices_and_count() -> None:
    assert list(planned(7, Options(worker=1, workers=3))) == [1, 4]
    assert list(planned(7, Options(worker=0, workers=3, count=2))) == [0, 3]
    assert list(planned(2, Options(worker=2, workers=3))) == []
    unbounded = planned(None, Options(count=3))
    assert list(unbounded) == [0, 1, 2]


def test_random_points_are_deterministic_and_in_range() -> None:
    config = load_sweep(
        write(
            Path("r.yaml"),
            {
                "name": "r",
                "method": "random",
                "run_cap": 5,
                "parameters": {
                    "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}
                },
            },
        )
    )
    first = [random_point(config, k) for k in range(5)]
    assert first == [random_point(config, k) for k in range(5)]
    rates = [p["learning_rate"] for p in first]
    assert all(type(r) is float and 1e-4 <= r <= 0.1 for r in rates)
    assert len(set(rates)) == 5


def test_bayes_uses_earlier_results() -> None:
    config = load_sweep(
        write(
            Path("b.yaml"),
            {
                "name": "b",
                "method": "bayes",
                "metric": {"name": "test_accuracy", "goal": "maximize"},
                "parameters": {
                    "learning_rate": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1}
                },
            },
        )
    )

    def results(*accuracies: float) -> list[Result]:
        rates = (0.0003, 0.003, 0.03)
        return [
            Result(Point(i, {"learning_rate": rates[i]}), 0, acc)
            for i, acc in enumerate(accuracies)
        ]

    good_low = bayes_point(config, 3, results(0.95, 0.5, 0.1))
    good_high = bayes_point(config, 3, results(0.1, 0.5, 0.95))
    assert good_low == bayes_point(config, 3, results(0.95, 0.5, 0.1))  # deterministic
    # ...and it follows the earlier results: it proposes beyond the best point so far.
    assert good_low["learning_rate"] < 0.0003 and good_high["learning_rate"] > 0.03
    assert type(good_low["learning_rate"]) is float


# --- small pieces -------------------------------------------------------------------------------


def test_sweep_run_options(monkeypatch: pytest.MonkeyPatch) -> None:
    def options(*args: str) -> tuple[int, int, int | None, bool]:
        command = parse(["sweep", "run", *args])
        return command.worker, command.workers, command.count, command.dry_run

    argv = ["--worker", "1/4", "--count=3", "--epochs", "1", "--dry-run"]
    assert options(*argv) == (1, 4, 3, True)
    assert parse(["sweep", "run", *argv]).flags == ["--epochs", "1"]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    monkeypatch.setenv("JOB_COMPLETIONS", "5")
    assert options()[:2] == (2, 5)
    assert options("--worker=0/1")[1] == 1  # the flag wins
    monkeypatch.delenv("JOB_COMPLETIONS")
    with pytest.raises(Exception, match="set JOB_COMPLETIONS too"):
        options()


def test_failure_counter_and_exit_status() -> None:
    counter = FailureCounter(2)
    # Only real failures count: a trial stopped by the sweep (6) or preempted (143) neither
    # counts nor resets the run of failures (wandb/wandb#12821 counts preempted runs).
    steps = [(2, False), (0, False), (1, False), (6, False), (143, False), (6, False), (4, True)]
    for code, exhausted in steps:
        counter.record(code)
        assert counter.exhausted is exhausted, code
    assert counter.consecutive == 2
    assert exit_status(-15) == 143 and exit_status(0) == 0 and exit_status(None) == 1


def test_trial_env_drops_what_must_not_reach_a_trial() -> None:
    base = {"TRAINJOB_SWEEP_ID": "x", "TRAINJOB_RUN_ID": "job-1", "TRAINJOB_EPOCHS": "1", "A": "b"}
    assert trial_env(base, TRAINJOB_GROUP="g") == {
        "TRAINJOB_EPOCHS": "1",
        "A": "b",
        "TRAINJOB_GROUP": "g",
    }


def test_signal_between_trials() -> None:
    """Sweep: the flag stops the next trial before it starts. Agent: W&B's agent, waiting for
    its next trial, is interrupted the way it expects (KeyboardInterrupt)."""
    signals = SignalForwarder()
    with signals.active():
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.signal == signal.SIGTERM
    with pytest.raises(Interrupted, match="SIGTERM: sweep stopped"):
        signals.run(TrialRunner(fork=False), ["train"], {})  # raises before starting anything
    agent = SignalForwarder(interrupt_when_idle=True)
    with pytest.raises(KeyboardInterrupt), agent.active():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises here
    assert agent.signal == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_count_from_the_environment_bounds_a_random_sweep(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    config = {
        "name": "r",
        "method": "random",
        "parameters": {"learning_rate": {"min": 0.001, "max": 0.01}},
    }
    monkeypatch.setenv("TRAINJOB_SWEEP_COUNT", "2")  # no run_cap: the count is the bound
    assert main(["sweep", "run", str(write(Path("r.yaml"), config)), "--dry-run"]) == 0
    assert capsys.readouterr().out.count(" trial ") == 2


def test_stopped_trials_count_for_bayes_as_killed() -> None:
    """As on W&B's server, an early-terminated trial is "killed" for the engine: its config
    counts (with the worst metric imputed) and changes the next proposal; a preempted one is
    still in progress."""
    config = load_sweep(SWEEP_YAML)
    first = Result(Point(0, bayes_point(config, 0, [])), 0, 0.9)
    second = Point(1, bayes_point(config, 1, [first]))
    stopped = Result(second, 6, 0.2)
    assert (first.state, stopped.state, Result(second, 143).state) == (
        "finished",
        "stopped",
        "preempted",
    )
    assert stopped.engine_state == "killed" and Result(second, 2).engine_state == "failed"
    assert bayes_point(config, 2, [first, stopped]) != bayes_point(config, 2, [first])


def test_help_names_every_exit_code() -> None:
    """--help names each code (the README's table is checked in test_docs.py)."""
    from trainjob.cli import help_text
    from trainjob.errors import ExitCode

    assert all(f"{int(c)} " in help_text() for c in ExitCode if c != ExitCode.OK)
