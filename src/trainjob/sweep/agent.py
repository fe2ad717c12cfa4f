"""The W&B server's side of a sweep: ``trainjob sweep create`` registers ``sweep.yaml`` and
prints the agent commands; ``trainjob agent`` runs W&B's agent for TRAINJOB_SWEEP_ID, each trial
a process of its own (trials.py). Both ask the server first (``check_server``): neither can fall
back offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, ExitCode, Interrupted, SweepGaveUp, WandbUnreachable
from ..log import logger
from ..settings import Settings, env_name, load_settings
from ..tracking.env import base_url, resolve_mode
from ..tracking.server import probe
from . import parallel
from .spec import TRIAL_COMMAND, load_sweep, read_yaml
from .trials import (
    FailureCounter,
    SignalForwarder,
    Trial,
    TrialRunner,
    exit_status,
    trial_env,
)

IMAGE = "ghcr.io/trainjob/trainjob:0.1.0"  # the image the printed agent commands use

log = logger("agent")


def agent_commands(sweep_path: str) -> list[str]:
    return [
        f"docker run --rm --gpus all -e WANDB_API_KEY -e TRAINJOB_SWEEP_ID={sweep_path} {IMAGE}",
        f"kubectl -n trainjob create configmap trainjob-sweep "
        f"--from-literal=TRAINJOB_SWEEP_ID={sweep_path} --dry-run=client -o yaml "
        "| kubectl apply -f -",
        "kubectl apply -k k8s/overlays/sweep-agents",
        f"TRAINJOB_SWEEP_ID={sweep_path} trainjob          # an agent on this machine",
    ]


def create(file: str, rest: list[str]) -> int:
    """Register ``file`` with W&B and print the sweep path and the commands to start agents."""
    settings = load_settings(rest)
    config = read_yaml(Path(file))  # W&B gets the file as written, after the checks below
    load_sweep(file)
    mode = resolve_mode()
    if mode != "online":
        raise ConfigError(
            f"sweep create needs the W&B server, but W&B is {mode} (WANDB_MODE or no "
            f"WANDB_API_KEY); run the sweep offline with: trainjob sweep run {file}"
        )
    check_server(settings.wandb_init_timeout)
    from ..tracking import sweeps

    project = config.get("project") or settings.resolved_project
    entity = config.get("entity") or os.environ.get("WANDB_ENTITY")
    sweep_id = sweeps.register(config, entity=entity, project=project)
    sweep_path = "/".join(p for p in (entity, project, sweep_id) if p)
    print(f"sweep: {sweep_path}")
    print("start agents with (each runs trials until the sweep ends; add --sweep_count N):")
    for command in agent_commands(sweep_path):
        print(f"  {command}")
    return int(ExitCode.OK)


def check_server(timeout: float) -> None:
    """The agent and ``sweep create`` cannot fall back offline: find out first, within
    ``timeout`` seconds, whether the server at WANDB_BASE_URL answers (else exit 8, one line)
    and takes the key (else exit 2). A refused connection fails at once."""
    why = probe(timeout)
    if why is not None:
        raise WandbUnreachable(_unreachable(base_url(), why))


def _unreachable(url: str, why: str) -> str:
    return (
        f"no answer from the W&B server at WANDB_BASE_URL={url} ({why}); the agent and sweep "
        "create need it: check the URL and the network, or run the sweep offline with: "
        "trainjob sweep run sweep.yaml"
    )


# --- the agent -------------------------------------------------------------------------------


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
            **{
                env_name("output_dir"): str(self.settings.output_dir / "sweeps" / sweep / run),
                env_name("checkpoint_dir"): str(self.settings.checkpoint_root),
            },
        )

    def argv(self) -> list[str]:
        import yaml

        from ..tracking.sweeps import command_args

        path = os.environ.get("WANDB_SWEEP_PARAM_PATH", "")
        try:
            params = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise ConfigError(f"W&B's agent gave no trial parameters ({path!r}: {exc})") from None
        params.pop("wandb_version", None)
        # W&B's own formatting of ${args}: exactly what the CLI agent would run.
        return [*TRIAL_COMMAND, *command_args(params)]

    def __call__(self) -> None:
        argv = self.argv()
        log.info(f"trial {os.environ.get('WANDB_RUN_ID')}: {' '.join(argv)}")
        try:
            code = self.signals.run(self.runner, argv, self.env(), stoppable=True)
        except Interrupted:
            self.results.append(int(ExitCode.PREEMPTED))
            raise
        self.results.append(code)
        self.failures.record(code)
        what = " (stopped by the sweep)" if code == ExitCode.STOPPED else ""
        log.info(f"trial {os.environ.get('WANDB_RUN_ID')} exited {code}{what}")
        if self.failures.exhausted:
            raise TooManyFailures(self.failures.message())


def agent(settings: Settings, argv: Sequence[str] = ()) -> int:
    """Run W&B's agent for TRAINJOB_SWEEP_ID until the sweep ends, ``sweep_count`` trials ran
    (exit 0), ``max_consecutive_failures`` trials failed in a row (exit 7), or SIGTERM (143).
    No answer from the server: exit 8 before any trial. With ``parallel_trials`` N > 1: N agents
    (``fan_out``), each running one trial at a time."""
    sweep_id = check_agent(settings)
    check_server(settings.wandb_init_timeout)
    par = parallel.plan(settings, explicit_threads="threads" in settings.model_fields_set)
    if par.trials > 1:
        log.info(par.why)
        return fan_out(settings, sweep_id, par, argv)
    from ..tracking.sweeps import run_agent

    runner = TrialRunner()
    runner.warm_up()
    failures = FailureCounter(settings.max_consecutive_failures)
    signals = SignalForwarder(interrupt_when_idle=True)
    trial = AgentTrial(settings, runner, failures, signals)
    # W&B's agent reads WANDB_SWEEP_ID itself; ours is TRAINJOB_SWEEP_ID (WANDB_SWEEP_ID would
    # also override the run id of every wandb.init in this process).
    os.environ.pop(env_name("sweep_id"), None)
    with signals.active():
        run_agent(sweep_id, trial, project=settings.project, count=settings.sweep_count)
    if signals.signal is not None:
        return int(ExitCode.PREEMPTED)
    if failures.exhausted:
        raise SweepGaveUp(failures.message())
    log.info(f"done after {len(trial.results)} trial(s)")
    return int(ExitCode.OK)


# The order in which the agents' exit codes speak for all of them: a signal first (the pod is
# going away), then giving up, the server, bad input; else the first other failure.
_FIRST = (ExitCode.PREEMPTED, ExitCode.SWEEP_GAVE_UP, ExitCode.WANDB_UNREACHABLE)


def fan_out(settings: Settings, sweep_id: str, par: parallel.Parallel, argv: Sequence[str]) -> int:
    """N agents at once, each ``python -m trainjob agent`` with one trial at a time and its
    share of the CPU threads and of ``sweep_count``: W&B's Python agent keeps its run's state in
    the process environment (wandb/agents/pyagent.py sets WANDB_RUN_ID and calls
    wandb.teardown per trial), so two agents cannot share a process. SIGTERM/SIGINT/SIGUSR1 go to
    every agent through the same ``SignalForwarder`` as trials (each agent checkpoints its trial
    and exits 143)."""
    counts = _shares(settings.sweep_count, par.trials)
    signals = SignalForwarder()
    for count in counts:
        env = dict(os.environ, **par.env())
        env[env_name("sweep_id")] = sweep_id
        env[env_name("parallel_trials")] = "1"
        if count is not None:
            env[env_name("sweep_count")] = str(count)
        flags = _without(argv, ("--sweep_count", "--parallel_trials"))  # set per agent above
        cmd = [sys.executable, "-m", "trainjob", "agent", *flags]
        signals.track(Trial(subprocess.Popen(cmd, env=env)))
    agents = signals.trials
    with signals.active():  # each agent forwards to its own trial in turn
        codes = [a.wait() for a in agents]
    return _overall(codes, signals.signal is not None)


def _without(argv: Sequence[str], names: tuple[str, ...]) -> list[str]:
    """``argv`` without the flags ``names`` (``--name value`` or ``--name=value``)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in names:
            skip = True
        elif not arg.startswith(tuple(f"{n}=" for n in names)):
            out.append(arg)
    return out


def _shares(count: int | None, n: int) -> list[int | None]:
    """``count`` trials split over ``n`` agents (the first ones one more); all: None each. An
    agent with no share is not started."""
    if count is None:
        return [None] * n
    return [count // n + (i < count % n) for i in range(n) if count // n + (i < count % n)]


def _overall(codes: list[int], signalled: bool) -> int:
    """One exit code for the agents'."""
    codes = [exit_status(c) for c in codes]
    if signalled:
        return int(ExitCode.PREEMPTED)
    for wanted in _FIRST:
        if int(wanted) in codes:
            return int(wanted)
    return next((c for c in codes if c != 0), 0)
