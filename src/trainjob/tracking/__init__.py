"""Everything trainjob does with W&B, in one package, pinned to one wandb version.

    run.py      the job's one W&B run (``Tracker``): init with an offline fallback, log, watch,
                model artifact, finish; the traces of a run id before it starts
    history.py  a run's history continued after a restart, read from W&B's run files (.wandb)
    runfile.py  W&B's run files (.wandb) read back: the framing, and a run's records
    watch.py    ``run.watch``'s histograms computed on the device, by W&B's own rules
    sync.py     ``trainjob sync``: offline runs uploaded with ``wandb sync``, in order, once
    server.py   ``probe``: does the W&B server answer and take the key (asked from a child)
    env.py      W&B's environment variables, read without importing wandb
    sweeps.py   W&B's sweep calls (create, agent, a trial's arguments) and its sweep engine

Some of this leans on wandb's *private* behaviour: modules outside its documented API, the run
file's binary format, rules copied from its code, switches read from its source. Each such
reliance is listed below (``PRIVATE`` and ``BEHAVIOURS``) and tests/test_tracking_pin.py checks
it against the installed wandb, so a wandb upgrade is one place to look: bump wandb in
pyproject.toml and requirements.lock, set ``WANDB_VERSION`` here, run
``pytest tests/test_tracking_pin.py``, and read what fails against this list.
No module outside this package imports wandb (the same test checks that).

This file imports nothing: the ``--help`` and preflight path reaches env.py through it.
"""

from __future__ import annotations

from typing import NamedTuple

WANDB_VERSION = "0.31.0"  # the version pinned in pyproject.toml and requirements.lock
SWEEPS_VERSION = "0.2.0"  # W&B's sweep engine (PyPI ``sweeps``); 0.3.0 pins numpy<2


class Private(NamedTuple):
    """One wandb (or sweeps) symbol trainjob uses that its documentation does not promise."""

    module: str
    name: str
    used_in: str  # the module of this package that uses it
    why: str
    params: tuple[str, ...] = ()  # the parameters trainjob passes it (checked against it)


PRIVATE: tuple[Private, ...] = (
    Private(
        "wandb.proto.wandb_internal_pb2",
        "Record",
        "runfile.py",
        "one record of a run file: history, summary, config, exit code (history.py, report)",
    ),
    Private(
        "wandb.sdk.lib.wbauth.validation",
        "check_api_key",
        "server.py",
        "wandb's own key-format check: a malformed key is exit 2 before any request",
        ("key",),
    ),
    Private(
        "wandb.analytics.opentelemetry.opentelemetry_proxy",
        "disable",
        "run.py",
        "stops wandb's usage telemetry, whose flush at exit blocks 10-16 s on a dead server",
    ),
    Private(
        "wandb.sdk.launch.sweeps.utils",
        "create_sweep_command_args",
        "sweeps.py",
        "formats a trial's ${args} exactly as W&B's CLI agent does",
        ("command",),
    ),
    Private(
        "wandb.sdk.lib.urls",
        "DEFAULT_BASE_URL",
        "env.py",
        "the server wandb talks to when WANDB_BASE_URL is unset (copied: env.py imports no wandb)",
    ),
    Private(
        "wandb.integration.torch.wandb_torch",
        "TorchHistory",
        "watch.py",
        "run.watch's hooks; watch.py reproduces log_tensor_stats (64 bins, float32, finite only)",
    ),
    Private(
        "wandb",
        "Settings",
        "run.py",
        "x_disable_viewer is private; finish_timeout(_raises) bound run.finish",
        ("stop_fn", "init_timeout", "x_disable_viewer", "finish_timeout", "finish_timeout_raises"),
    ),
    Private(
        "wandb",
        "agent",
        "sweeps.py",
        "a function per trial; one raising trial stops it (max_consecutive_failed_runs=1)",
        ("sweep_id", "function", "project", "count", "max_consecutive_failed_runs"),
    ),
    Private(
        "wandb",
        "Histogram",
        "run.py",
        "built from (counts, edges) as log_tensor_stats builds it",
        ("np_histogram",),
    ),
    Private(
        "sweeps",
        "stop_runs",
        "epoch_end.py, sweep/spec.py",
        "W&B's early termination, run locally",
        ("sweep_config", "runs"),
    ),
    Private(
        "sweeps",
        "next_run",
        "sweep/local.py",
        "W&B's next trial (grid, random, bayes), run locally",
        ("sweep_config", "runs"),
    ),
    Private(
        "sweeps",
        "next_runs",
        "sweep/local.py",
        "a grid's trials, in W&B's order",
        ("sweep_config", "runs", "n"),
    ),
    Private(
        "sweeps",
        "SweepRun",
        "epoch_end.py, sweep/local.py",
        "a run as the engine sees it; sampledHistory is the alias pydantic 2 keeps",
        ("name", "state", "sampledHistory", "config", "summaryMetrics"),
    ),
    Private(
        "sweeps",
        "schema_violations_from_proposed_config",
        "sweep/spec.py",
        "W&B's sweep schema check",
        ("config",),
    ),
)

# What trainjob relies on that is not a symbol, each with the test that checks it.
BEHAVIOURS: tuple[str, ...] = (
    "run file: LevelDB log framing, 32 KiB blocks, a 7-byte ':W&B' header (magic 0xBEE1), "
    "history and exit records; wandb never appends to an earlier process's folder "
    "(runfile.py, history.py; test_tracking_pin, test_preemption, test_report)",
    "run.watch: a forward hook counts parameter calls, a tensor hook per parameter counts "
    "gradients, each firing every log_freq-th call; commit=False histograms join the open "
    "history row (watch.py; test_tracking_pin, test_watch)",
    "WANDB_ERROR_REPORTING=false switches off wandb-core's Sentry and Python's OpenTelemetry "
    "reports (run.py; test_airgap)",
    "wandb.Api(timeout=...) raises AuthenticationError with the failed request as __cause__ "
    "(.response.http_status); UsageError without credentials (server.py; test_resilience_wandb)",
    "run.finish with finish_timeout_raises raises TimeoutError; log_artifact online asks the "
    "server first and raises with it gone (run.py; test_resilience_wandb)",
    "`wandb sync` writes run-<id>.wandb.synced when the server took a file and exits 0 when it "
    "refused one; WANDB_RESUME=allow makes a later folder append (sync.py; test_sync)",
    "W&B's agent sets WANDB_RUN_ID, WANDB_SWEEP_ID and WANDB_SWEEP_PARAM_PATH per trial; "
    "WANDB_SWEEP_ID overrides wandb.init(id=...) (sweeps.py, run.py; test_sweep_agent)",
)
