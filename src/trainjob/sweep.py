"""Hyperparameter sweeps from one ``sweep.yaml`` (W&B's sweep format).

    trainjob sweep create [sweep.yaml]   # register with W&B, print the agent commands
    trainjob agent                       # = TRAINJOB_SWEEP_ID=... trainjob: run W&B's agent
    trainjob sweep run [sweep.yaml]      # offline / air-gapped: W&B's sweep engine, locally

The file is checked before anything runs (exit 2, one line): W&B's own schema (the ``sweeps``
package, W&B's sweep engine), the metric is one the job logs, every parameter is a Settings field
and every value it can take passes Settings validation, spelled as W&B's agent spells it
(``--kernels=[8, 16]``). Trials are processes of their own (see trials.py); the offline runner
is in sweep_local.py.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from .cli import load_settings
from .early_terminate import PER_EPOCH_METRICS
from .errors import ConfigError, ExitCode, SweepGaveUp, WandbUnreachable
from .settings import Settings
from .trials import FailureCounter, Interrupted, SignalForwarder, TrialRunner, trial_env
from .wandb_env import base_url, redact, resolve_mode

# Metrics a trainjob run logs (train.py / job.py). A sweep metric outside this set would never
# get a value: every trial would look equally bad. tests/test_sweep.py checks these against a
# real run's history and summary.
HISTORY_METRICS = ("loss", "epoch", "perf/samples_per_s")
SUMMARY_METRICS = (
    "test_accuracy",
    "perf/samples_per_s",
    "perf/train_s",
    "onnx/max_abs_diff",
    "examples_seen",
)
JOB_METRICS = tuple(dict.fromkeys(SUMMARY_METRICS + HISTORY_METRICS))

# Settings a sweep sets per trial itself; they cannot be sweep parameters.
MANAGED_FIELDS = (
    "group",
    "run_name",
    "run_id",
    "output_dir",
    "checkpoint_dir",
    "sweep_id",
    "sweep_count",
    "max_consecutive_failures",
)
# What the trial process runs; sweep.yaml's ``command`` is the same for W&B's CLI agent.
TRIAL_COMMAND = ("train",)
SERVER_ONLY_KEYS = ("run_cap",)
IMAGE = "ghcr.io/trainjob/trainjob:0.1.0"  # the image the printed agent commands use


def flag(name: str, value: Any) -> str:
    """One parameter as W&B's agent writes it into ``${args}``: ``--name=str(value)``."""
    return f"--{name}={value}"


def plain(value: Any) -> Any:
    """numpy scalars/lists (what the ``sweeps`` engine proposes) -> Python values."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return plain(value.tolist())
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} not found; pass the path of a sweep.yaml") from None
    except OSError as exc:
        raise ConfigError(f"sweep file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"sweep file {path} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping (method, metric, parameters, ...)")
    return data


def parameter_values(spec: dict[str, Any]) -> list[Any]:
    """The values a parameter can take that can be checked: listed values, or the two ends of a
    bounded distribution (log_uniform's bounds are exponents)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        ends = [spec["min"], spec["max"]]
        if spec.get("distribution") in ("log_uniform", "q_log_uniform"):
            ends = [math.exp(e) for e in ends]
        return ends
    return []  # normal / log_normal: unbounded, each trial validates its own value


def check_parameters(path: Path, config: dict[str, Any]) -> None:
    fields = Settings.model_fields
    for name, spec in config["parameters"].items():
        if name not in fields:
            raise ConfigError(
                f"{path}: parameter {name!r} is not a trainjob setting; use fields listed by "
                "trainjob --help"
            )
        if name in MANAGED_FIELDS:
            raise ConfigError(f"{path}: parameter {name!r} is set by the sweep itself per trial")
        if "parameters" in spec:
            raise ConfigError(f"{path}: parameter {name!r} cannot have nested parameters")
        for value in parameter_values(spec):
            try:
                load_settings([flag(name, plain(value))])
            except ConfigError as exc:
                raise ConfigError(f"{path}: parameters.{name}: {exc}") from None


def check_metric(path: Path, config: dict[str, Any], allowed: tuple[str, ...]) -> None:
    metric = config.get("metric")
    if metric is None:
        if config["method"] == "bayes":
            raise ConfigError(f"{path}: a bayes sweep needs a metric (e.g. test_accuracy)")
        return
    name = metric.get("name")
    if name not in allowed:
        logged = "never logged by trainjob" if name not in JOB_METRICS else "not in the summary"
        raise ConfigError(f"{path}: metric {name!r} is {logged}; use one of {', '.join(allowed)}")


def check_early_terminate(path: Path, raw: dict[str, Any]) -> None:
    """``early_terminate`` as W&B's engine reads it (its own checks, run on an empty sweep), and
    a metric that is logged once per epoch: named in one line, before any trial."""
    import jsonschema

    spec = raw.get("early_terminate")
    if spec is None:
        return
    example = "e.g. {type: hyperband, min_iter: 1, eta: 2}"
    metric = raw.get("metric") if isinstance(raw.get("metric"), dict) else {}
    if not metric.get("name"):
        raise ConfigError(
            f"{path}: early_terminate needs the sweep's metric: add metric: {{name: "
            f"{PER_EPOCH_METRICS[0]}, goal: maximize}}"
        )
    try:
        sweep_engine().stop_runs({"metric": metric, "early_terminate": spec}, [])
    except jsonschema.ValidationError as exc:
        problem = exc.message
        if exc.validator == "anyOf":
            problem = "it needs min_iter (with eta) or max_iter (with s and eta)"
        raise ConfigError(
            f"{path}: early_terminate={spec!r} is invalid: {problem}; {example}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(
            f"{path}: early_terminate={spec!r} is invalid: {problem}; {example}"
        ) from None
    name = metric.get("name")
    if name not in PER_EPOCH_METRICS:
        raise ConfigError(
            f"{path}: metric {name!r} is not logged once per epoch, so early_terminate has no "
            f"iterations to compare; use metric {' or '.join(PER_EPOCH_METRICS)} or remove "
            "early_terminate"
        )


def sweep_engine() -> Any:
    """W&B's sweep engine (PyPI ``sweeps``), see sweep_engine.py."""
    from .sweep_engine import engine

    return engine


def check_run_cap(path: Path, config: dict[str, Any]) -> None:
    cap = config.get("run_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ConfigError(f"{path}: run_cap={cap!r} is invalid: expected a positive integer")


def load_sweep(path: str | Path, metrics: tuple[str, ...] = JOB_METRICS) -> dict[str, Any]:
    """Read and check ``path``; returns the config with W&B's defaults filled in."""
    import jsonschema

    sweeps = sweep_engine()
    path = Path(path)
    raw = read_yaml(path)
    # run_cap is a documented top-level key the W&B server knows and sweeps 0.2.0's schema
    # predates: check it here and the rest against the engine's schema.
    check_run_cap(path, raw)
    check_early_terminate(path, raw)
    rest = {k: v for k, v in raw.items() if k not in SERVER_ONLY_KEYS}
    try:
        violations = sweeps.schema_violations_from_proposed_config(rest)
    except ValueError as exc:
        violations = [str(exc)]
    if violations:
        first = " ".join(str(violations[0]).split())
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ConfigError(f"{path} is rejected by W&B's sweep schema: {first}{more}")
    try:
        config = dict(sweeps.SweepConfig(rest))
    except (jsonschema.ValidationError, ValueError) as exc:
        raise ConfigError(f"{path} is rejected by W&B's sweep schema: {exc}") from None
    config.update({k: raw[k] for k in SERVER_ONLY_KEYS if k in raw})
    config.setdefault("name", path.stem)
    check_metric(path, config, metrics)
    check_parameters(path, config)
    return config


# --- trainjob sweep create ------------------------------------------------------------------


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
    import wandb

    project = config.get("project") or settings.resolved_project
    entity = config.get("entity") or os.environ.get("WANDB_ENTITY")
    try:
        sweep_id = wandb.sweep(config, entity=entity, project=project)
    except wandb.errors.AuthenticationError:
        raise ConfigError(f"the W&B server {base_url()} rejected WANDB_API_KEY") from None
    except wandb.errors.CommError as exc:
        raise ConfigError(f"W&B refused the sweep: {redact(' '.join(str(exc).split()))}") from None
    sweep_path = "/".join(p for p in (entity, project, sweep_id) if p)
    print(f"sweep: {sweep_path}")
    print("start agents with (each runs trials until the sweep ends; add --sweep_count N):")
    for command in agent_commands(sweep_path):
        print(f"  {command}")
    return int(ExitCode.OK)


# --- the server, before the agent or sweep create talk to it ----------------------------------


def check_server(timeout: float) -> None:
    """The agent and ``sweep create`` cannot fall back offline: find out first, within
    ``timeout`` seconds, whether the server at WANDB_BASE_URL answers (else exit 8, one line)
    and takes the key (else exit 2). A refused connection fails at once."""
    import socket
    import time
    from urllib.parse import urlparse

    url = base_url()
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    started = time.monotonic()
    try:
        socket.create_connection((parsed.hostname or "", port), timeout=timeout).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        if isinstance(exc, TimeoutError | socket.timeout):
            why = f"no connection within {timeout:g}s"
        raise WandbUnreachable(_unreachable(url, why)) from None
    import wandb

    left = max(1.0, timeout - (time.monotonic() - started))
    try:
        wandb.Api(timeout=left)  # type: ignore[arg-type]  # asks who the key belongs to
    except wandb.errors.AuthenticationError as exc:
        cause = exc.__cause__
        status = getattr(getattr(cause, "response", None), "http_status", 0)
        if cause is None:  # refused locally: a malformed key
            raise ConfigError(redact(f"W&B credentials are invalid: {exc}")) from None
        if status in (401, 403):
            raise ConfigError(
                f"the W&B server {url} rejected WANDB_API_KEY (HTTP {status}); set a valid key"
            ) from None
        raise WandbUnreachable(
            _unreachable(url, f"HTTP {status}" if status else f"no answer within {timeout:g}s")
        ) from None
    except wandb.errors.UsageError as exc:
        raise ConfigError(redact(f"W&B credentials: {exc}")) from None


def _unreachable(url: str, why: str) -> str:
    return (
        f"no answer from the W&B server at WANDB_BASE_URL={url} ({why}); the agent and sweep "
        "create need it: check the URL and the network, or run the sweep offline with: "
        "trainjob sweep run sweep.yaml"
    )


# --- trainjob agent ---------------------------------------------------------------------------


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


def run_local(file: str, rest: list[str]) -> int:
    from .sweep_local import run_local as _run_local

    return _run_local(file, rest)
