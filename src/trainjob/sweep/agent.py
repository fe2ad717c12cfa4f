"""``trainjob agent``: W&B's agent for TRAINJOB_SWEEP_ID, each trial a process of its own
(trials.py)."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError, ExitCode, SweepGaveUp
from ..settings import Settings
from ..wandb_env import resolve_mode
from .server import check_server
from .spec import TRIAL_COMMAND
from .trials import FailureCounter, Interrupted, SignalForwarder, TrialRunner, trial_env


def check_agent(settings: Settings) -> str:
    """The sweep the agent serves, or a ConfigError before any server call."""
    if not settings.sweep_id:
        raise ConfigError(
            "trainjob agent needs TRAINJOB_SWEEP_ID (from trainjob sweep create); "
            "to sweep without a W&B server use: trainjob sweep run sweep.yaml"
        )
    mode = resolve_mode()
    if mode != "online":
        raise ConfigError(
            f"TRAINJOB_SWEEP_ID={settings.sweep_id} needs the W&B server, but W&B is {mode} "
            "(WANDB_MODE or no WANDB_API_KEY); unset TRAINJOB_SWEEP_ID and run the sweep offline "
            "with: trainjob sweep run sweep.yaml"
        )
    if len(settings.sweep_id.split("/")) > 3:
        raise ConfigError(
            f"TRAINJOB_SWEEP_ID={settings.sweep_id!r} is not a sweep; use ID, project/ID or "
            "entity/project/ID"
        )
    return settings.sweep_id


class TooManyFailures(Exception):
    """Raised inside W&B's agent to make it stop (it stops on a raising trial function)."""


class AgentTrial:
    """The function W&B's agent calls per trial (``wandb.agent(function=...)``).

    W&B's agent has put the run id, the sweep id and the trial's parameters in the environment
    (WANDB_RUN_ID, WANDB_SWEEP_ID, WANDB_SWEEP_PARAM_PATH). This starts ``python -m trainjob
    train ${args}`` as its own process with that environment (so the trial's ``wandb.init`` joins
    the sweep run), waits for it, counts consecutive failures, and raises to stop the agent when
    there are too many or when the agent process got SIGTERM.
    """

    def __init__(
        self,
        settings: Settings,
        runner: TrialRunner,
        failures: FailureCounter,
        signals: SignalForwarder,
    ) -> None:
        self.settings = settings
        self.runner = runner
        self.failures = failures
        self.signals = signals
        self.results: list[int] = []

    def env(self) -> dict[str, str]:
        """The agent's environment for the trial, with the trial's own output folder
        (``<output_dir>/sweeps/<sweep>/<run>``); its checkpoints go to
        ``<checkpoint_dir>/<run>`` (job.py keys them by the W&B run id in a sweep)."""
        sweep = os.environ.get("WANDB_SWEEP_ID") or "sweep"
        run = os.environ.get("WANDB_RUN_ID") or "run"
        return trial_env(
            os.environ,
            TRAINJOB_OUTPUT_DIR=str(self.settings.output_dir / "sweeps" / sweep / run),
            TRAINJOB_CHECKPOINT_DIR=str(self.settings.ckpt_dir),
        )

    def argv(self) -> list[str]:
        import yaml
        from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

        path = os.environ.get("WANDB_SWEEP_PARAM_PATH", "")
        try:
            params = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"W&B's agent gave no trial parameters ({path!r}: {exc})") from None
        params.pop("wandb_version", None)
        # W&B's own formatting of ${args}: exactly what the CLI agent would run.
        return [*TRIAL_COMMAND, *create_sweep_command_args({"args": params})["args"]]

    def __call__(self) -> None:
        argv = self.argv()
        print(f"trainjob agent: trial {os.environ.get('WANDB_RUN_ID')}: {' '.join(argv)}")
        try:
            code = self.signals.run(self.runner, argv, self.env(), stoppable=True)
        except Interrupted:
            self.results.append(int(ExitCode.PREEMPTED))
            raise
        self.results.append(code)
        self.failures.record(code)
        what = " (stopped by the sweep)" if code == ExitCode.STOPPED else ""
        print(f"trainjob agent: trial {os.environ.get('WANDB_RUN_ID')} exited {code}{what}")
        if self.failures.exhausted:
            raise TooManyFailures(self.failures.message())


def agent(settings: Settings) -> int:
    """Run W&B's agent for TRAINJOB_SWEEP_ID until the sweep ends, ``sweep_count`` trials ran
    (exit 0), ``max_consecutive_failures`` trials failed in a row (exit 7), or SIGTERM (143).
    No answer from the server: exit 8 before any trial."""
    sweep_id = check_agent(settings)
    check_server(settings.wandb_init_timeout)
    import wandb

    runner = TrialRunner()
    runner.warm_up()
    failures = FailureCounter(settings.max_consecutive_failures)
    signals = SignalForwarder(interrupt_when_idle=True)
    trial = AgentTrial(settings, runner, failures, signals)
    # W&B's agent reads WANDB_SWEEP_ID itself; ours is TRAINJOB_SWEEP_ID (WANDB_SWEEP_ID would
    # also override the run id of every wandb.init in this process).
    os.environ.pop("TRAINJOB_SWEEP_ID", None)
    with signals.active():
        # Our function raises only to stop; W&B's agent then stops after that one failure.
        wandb.agent(
            sweep_id,
            function=trial,
            project=settings.project,
            count=settings.sweep_count,
            max_consecutive_failed_runs=1,
        )
    if signals.signal is not None:
        return int(ExitCode.PREEMPTED)
    if failures.exhausted:
        raise SweepGaveUp(failures.message())
    print(f"trainjob agent: done after {len(trial.results)} trial(s)")
    return int(ExitCode.OK)
