"""The job's W&B run: one per process, created here and passed around explicitly.

W&B's tutorial calls ``wandb.init`` again inside ``train_log``; with wandb 0.31 that finishes
the active run and the ``watch`` hooks then crash (one active run per process by default:
https://docs.wandb.ai/models/runs/multiple-runs-per-process). So the job creates
exactly one run here and hands a ``Tracker`` to the loop. ``WANDB_MODE=disabled`` gives a
run object with the same methods: no ``if wandb:`` anywhere else.

A W&B server that is down, slow or gone never stops or hangs a job: ``choose_mode``
bounds the first contact and falls back offline in this process, ``Tracker.finish`` bounds the
final upload, and the job prints the exact ``trainjob sync`` (or ``wandb sync``) command for
whatever the server has not got. tests/test_resilience_wandb.py runs each case against a local
fake server.

The training thread does not wait for W&B: ``Tracker.log`` queues each row for a thread of its
own (``Sender``), and every other call on the run waits for the rows first, so W&B gets the
same calls in the same order (tests/test_tracker.py).
"""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wandb
from torch import nn

from ..errors import ConfigError, StorageError
from ..log import logger
from ..settings import Settings
from .env import base_url, has_api_key, redact, resolve_mode
from .history import scan_run_file
from .server import REJECTED, probe
from .watch import HostHistogram, Watcher

log = logger()


class Sender:
    """``run.log`` calls made on a thread of their own, one at a time, in the order sent.

    W&B's ``run.log`` returns only once its asyncio thread has handed the record to wandb-core
    (wandb 0.31: ``interface_sock._publish`` waits on ``asyncio_manager.run``): a switch to
    that thread and back, which took 1-10 ms per call on a loaded 2-core CPU while the training
    thread sat idle. Here the training thread only queues the row. An error ``run.log`` raises
    is raised on the caller's thread at its next ``send`` or ``wait``; the rows queued after it
    are dropped, as a job stops logging at the first failing row."""

    def __init__(self, log: Callable[..., Any]) -> None:
        self._log = log
        self._queue: queue.SimpleQueue[tuple[dict[str, Any], int] | threading.Event] = (
            queue.SimpleQueue()
        )
        self._error: BaseException | None = None
        thread = threading.Thread(target=self._run, name="trainjob-wandb-log", daemon=True)
        thread.start()

    def send(self, data: dict[str, Any], step: int) -> None:
        self._raise()
        self._queue.put((data, step))

    def wait(self) -> None:
        """Return once W&B has every row sent so far; raise the first error, if any."""
        done = threading.Event()
        self._queue.put(done)
        done.wait()
        self._raise()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if isinstance(item, threading.Event):
                item.set()
            elif self._error is None:
                try:
                    self._log(item[0], step=item[1])
                except BaseException as exc:  # raised on the caller's thread (_raise)
                    self._error = exc

    def _raise(self) -> None:
        error, self._error = self._error, None
        if error is not None:
            raise error


class Tracker:
    """The W&B run behind the small interface the rest of trainjob sees: log, watch, summary,
    model, preemption, finish. Nothing outside this module reaches through to ``run``."""

    def __init__(
        self, run: Any, mode: str, finish_timeout: float = 0.0, server_timeout: float = 15.0
    ) -> None:
        self.run = run
        self.mode = mode
        self.finish_timeout = finish_timeout
        self.server_timeout = server_timeout
        self.upload_incomplete = False  # online, but the server went away before the end
        self.watcher: Watcher | None = None
        # The step of the history row W&B keeps open: a row stays open until a higher step is
        # logged (or the run finishes), and run.watch's commit=False histograms join it.
        self.open_step = self.starting_step
        # Rows go to W&B from a thread of their own (Sender); every other call on the run
        # waits for them first (_sent), so W&B sees the same calls in the same order.
        self.sender = Sender(run.log) if self.enabled else None

    @property
    def enabled(self) -> bool:
        return self.mode != "disabled"

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    @property
    def starting_step(self) -> int:
        """The first step a resumed online run may log (the server's view); 0 for a new run."""
        return int(getattr(self.run, "starting_step", 0) or 0)

    @property
    def run_dir(self) -> Path | None:
        """The run's folder (``wandb/offline-run-*`` or ``wandb/run-*``), None when disabled."""
        if not self.enabled:
            return None
        return Path(self.run.dir).parent

    def sync_command(self) -> str | None:
        """The exact command that uploads what the server has not got, or None if nothing is
        missing: ``trainjob sync RUN_DIR`` for an offline run (sync.py). An online run whose upload
        gave up needs ``--no-skip-online``: ``wandb sync`` skips online runs by default."""
        if self.run_dir is None:
            return None
        if self.mode == "offline":
            from .sync import hint

            return hint(self.run_dir)
        if self.upload_incomplete:
            return f"wandb sync --no-skip-online {self.run_dir}"
        return None

    def log(self, metrics: Mapping[str, float | int], step: int) -> None:
        if step > self.open_step:
            self._flush_histograms()  # they belong to the row this log closes
            self.open_step = step
        self._log(dict(metrics), step)

    def _log(self, data: dict[str, Any], step: int) -> None:
        if self.sender is not None:
            self.sender.send(data, step)
        else:
            self.run.log(data, step=step)

    def _sent(self) -> None:
        """Wait until W&B has every row logged so far (before any other call on the run)."""
        if self.sender is not None:
            self.sender.wait()

    def watch(
        self,
        model: nn.Module,
        criterion: nn.Module,
        log: str,
        log_freq: int,
        watcher: Watcher | None = None,
    ) -> None:
        """Histograms of ``model``'s gradients and/or parameters every ``log_freq`` batches:
        trainjob's ``watcher`` (computed on the device, see watch.py) when one is given, else
        W&B's own ``run.watch`` hooks. Both give the same history records."""
        if log == "none" or not self.enabled:
            return
        if watcher is None:
            # W&B's hooks log from the training thread into the row open at that moment: from
            # here on every row is logged on that thread too, so that they meet the same row.
            self._sent()
            self.sender = None
            self.run.watch(model, criterion, log=log, log_freq=log_freq)
            return
        self.watcher = watcher
        watcher.start()

    def _flush_histograms(self) -> None:
        """Log the watcher's pending histograms into the open row, all in one ``run.log``."""
        if self.watcher is None or not self.watcher.pending:
            return
        found = self.watcher.collect()
        if found:
            self._log(package(found), self.open_step)

    def summary(self, values: Mapping[str, Any]) -> None:
        self._sent()
        for key, value in values.items():
            self.run.summary[key] = value

    def save_model(self, path: Path, metadata: Mapping[str, Any]) -> None:
        """Store the ONNX file with the run (a real copy in ``run.dir``: ``run.save`` of an
        outside path stores a symlink) and log it as a ``model`` artifact."""
        if not self.enabled:
            return
        self._sent()
        inside = Path(self.run.dir) / path.name
        if path.resolve() != inside.resolve():
            try:
                shutil.copyfile(path, inside)
            except OSError as exc:
                raise StorageError(
                    f"could not copy {path} into the run folder {inside.parent}: "
                    f"{exc.strerror or exc}; {path} itself is complete"
                ) from None
        self.run.save(str(inside), base_path=self.run.dir, policy="now")
        artifact = wandb.Artifact(f"model-{self.run.id}", type="model", metadata=dict(metadata))
        # "immutable": the artifact refers to the copy in the run folder (never changed
        # again) instead of staging one more copy under WANDB_DATA_DIR: the run folder alone
        # holds everything `wandb sync` uploads.
        artifact.add_file(str(inside), name=path.name, policy="immutable")
        if self.mode != "offline" and not _server_answers(self.server_timeout):
            # Online, log_artifact first asks the server (wandb.Api) and, with the server gone,
            # raises instead of skipping that optional check (wandb 0.31, wandb_run.py
            # _assert_can_log_artifact catches only WandbApiFailedError).
            self._server_lost(f"the model artifact was not logged; {path.name} is in the run files")
            return
        try:
            self.run.log_artifact(artifact)
        except wandb.errors.CommError:
            self._server_lost(f"the model artifact was not logged; {path.name} is in the run files")

    def _server_lost(self, what: str) -> None:
        self.upload_incomplete = True
        _quiet_telemetry()
        log.warning(f"the W&B server {base_url()} stopped answering; {what}")

    def mark_preempting(self) -> None:
        """Tell W&B the run was preempted, so that a sweep requeues it (no-op when disabled)."""
        if self.enabled:
            self._sent()
            self.run.mark_preempting()

    def finish(self, exit_code: int = 0) -> None:
        """Finish the run, recording ``exit_code`` (non-zero: W&B marks the run failed).

        Online, this waits at most ``wandb_finish_timeout`` s for the server: a server that died
        mid-run does not hang the job; everything is in the run folder for ``wandb sync``."""
        # W&B writes the open row at finish, with the histograms logged into it since. Never
        # in the way of finishing: a failing device (the reason this job ends?) must not keep
        # the run from being marked finished with its exit code.
        try:
            self._flush_histograms()
        except Exception as exc:
            log.warning(f"last watch histograms not logged: {exc}")
        try:
            self._sent()  # and before run.finish, every row is W&B's
        except Exception as exc:
            log.warning(f"last history rows not logged: {exc}")
        try:
            self.run.finish(exit_code=exit_code)
        except TimeoutError:
            self.upload_incomplete = True
            _quiet_telemetry()
            log.warning(
                f"the W&B server did not take the run's data within "
                f"TRAINJOB_WANDB_FINISH_TIMEOUT={self.finish_timeout:g}s; nothing is lost: "
                f"every step is in {self.run_dir}"
            )


def package(found: list[HostHistogram]) -> dict[str, wandb.Histogram]:
    """``wandb.Histogram`` s exactly as W&B's ``log_tensor_stats`` builds them (from lists)."""
    return {h.key: wandb.Histogram(np_histogram=(h.counts, h.edges)) for h in found}


def choose_mode(settings: Settings) -> str:
    """The W&B mode this job will really use, decided before any data is loaded.

    Online, the server gets ``wandb_init_timeout`` seconds to answer a credential check: a
    server that rejects the key is a ConfigError (exit 2) before any training; one that cannot be
    reached (refused, DNS, 5xx, a hanging proxy) means the job goes on offline, in this process.
    """
    mode = resolve_mode()
    if mode not in ("online", "shared"):
        _no_network()
        return mode
    if not has_api_key():
        raise ConfigError(
            f"WANDB_MODE={mode} but no W&B API key is configured; set WANDB_API_KEY (from a "
            "secret) or use WANDB_MODE=offline"
        )
    started = time.monotonic()
    reason = probe(settings.wandb_init_timeout)
    if reason is None:
        return mode
    _going_offline(f"{reason}; waited {time.monotonic() - started:.1f}s")
    return "offline"


@dataclass
class Trace:
    """What is known of a run id before a job starts it: where it is recorded as finished (exit
    0), if anywhere, and the last step its history holds (-1: none) and where."""

    finished: str | None = None
    last_step: int = -1
    where: str | None = None

    def saw(self, step: int | None, where: str) -> None:
        if step is not None and step > self.last_step:
            self.last_step, self.where = step, where


def run_trace(settings: Settings, run_id: str, mode: str) -> Trace:
    """The traces of run ``run_id``: the run folders under WANDB_DIR (offline runs and the local
    copies of online ones: their exit and history records) and, online, the server's run (its
    state and last history step). W&B itself cannot tell: ``resume="allow"`` reopens a finished
    run as readily as an interrupted one, and ``resume="never"`` refuses both."""
    trace = Trace()
    root = Path(os.environ.get("WANDB_DIR") or ".") / "wandb"
    for folder in sorted(root.glob(f"*-{run_id}")) if root.is_dir() else []:
        last_step, exit_code = scan_run_file(folder / f"run-{run_id}.wandb")
        if exit_code == 0 and trace.finished is None:
            trace.finished = str(folder)
        trace.saw(last_step, str(folder))
    if mode not in ("online", "shared"):
        return trace
    try:
        api = wandb.Api(timeout=settings.wandb_init_timeout)  # type: ignore[arg-type]
        path = f"{api.default_entity}/{settings.resolved_project}/{run_id}"
        run = api.run(path)
        state = run.state
        keys = getattr(run, "historyKeys", None) or {}
        lines = int(getattr(run, "historyLineCount", 0) or 0)
    except Exception:  # not found (ValueError), or no answer: nothing known there
        return trace
    where = f"{base_url()} {path}"
    if state == "finished" and trace.finished is None:
        trace.finished = where
    last = keys.get("lastStep") if isinstance(keys, dict) else None
    trace.saw(int(last) if isinstance(last, int) else (0 if lines > 0 else None), where)
    return trace


def prestart(mode: str) -> threading.Thread | None:
    """Start W&B's service process (wandb-core) now, in the background, so that the job's data
    loading and model building overlap it instead of waiting for it in ``wandb.init``: a fresh
    process's first ``wandb.init`` spent ~0.2 s of its ~0.3 s starting the service (2-core CPU;
    a second one in the same process took 0.09 s). ``wandb.setup`` is W&B's documented way to
    start it early and is thread-safe (its singleton and connection are created under locks);
    ``wandb.init`` then uses it. Called after ``choose_mode``, which sets the variables the
    service reads at its start. A failure here is left to ``wandb.init`` to report."""
    if mode == "disabled":
        return None

    def setup() -> None:
        with contextlib.suppress(Exception):
            wandb.setup()

    thread = threading.Thread(target=setup, name="trainjob-wandb-setup", daemon=True)
    thread.start()
    return thread


def start(
    settings: Settings,
    extra_config: Mapping[str, Any],
    run_id: str | None = None,
    mode: str | None = None,
    on_stop: Callable[[], None] | None = None,
) -> Tracker:
    """Create the job's one W&B run in ``mode`` (default: ``choose_mode``). ``run_id`` (from a
    checkpoint or TRAINJOB_RUN_ID) resumes into that run instead of starting a duplicate.

    If the server stops answering between the check and ``wandb.init`` (``CommError`` after
    ``wandb_init_timeout`` s), the run is created offline instead, in this process.

    ``on_stop``: called when W&B says the run should stop (a user's stop, a sweep's early
    termination); W&B's default sends SIGINT, which the job would take for a preemption.
    """
    mode = mode or choose_mode(settings)
    config = {**settings.run_config(), **extra_config}
    kwargs: dict[str, Any] = {
        "project": settings.resolved_project,
        "config": config,
        "name": settings.run_name,
        "group": settings.group,
        "tags": settings.tags or None,
        "job_type": "train",
        "settings": _wandb_settings(settings, on_stop),
    }
    # Inside a W&B sweep the agent owns the run id: never set one there (W&B's own rule).
    if run_id and not os.environ.get("WANDB_SWEEP_ID"):
        kwargs.update(id=run_id, resume="allow")
    try:
        run = wandb.init(mode=mode, **kwargs)
    except wandb.errors.AuthenticationError:
        raise ConfigError(REJECTED.format(url=base_url(), status="at wandb.init")) from None
    except wandb.errors.CommError as exc:
        if mode == "offline":
            raise
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _going_offline(f"wandb.init: {redact(first_line)}")
        mode = "offline"
        run = wandb.init(mode=mode, **kwargs)
    return Tracker(run, mode, settings.wandb_finish_timeout, settings.wandb_init_timeout)


def _no_network() -> None:
    """Offline or disabled: nothing may contact a server. wandb otherwise reports its own
    errors and usage (Sentry in wandb-core, OpenTelemetry in Python) to WANDB_BASE_URL even
    offline; through a proxy that never answers that cost 10-15 s per process, at exit.
    ``WANDB_ERROR_REPORTING=false`` is W&B's documented switch for both (wandb/env.py; the
    service is then started with ``--no-observability``); a value the user set is kept."""
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")
    _quiet_telemetry()


def _going_offline(reason: str) -> None:
    _no_network()
    log.info(
        f"W&B server {base_url()} unreachable ({reason}); continuing offline: every "
        "step is kept on disk for `wandb sync`"
    )


def _wandb_settings(
    settings: Settings, on_stop: Callable[[], None] | None = None
) -> wandb.Settings:
    return wandb.Settings(
        stop_fn=on_stop,
        init_timeout=settings.wandb_init_timeout,
        # wandb.init would otherwise spend up to 2 x 5 s asking the server who the key belongs
        # to (wandb/sdk/lib/identity.py) *before* init_timeout starts; probe() has
        # already done that, within the job's own timeout.
        x_disable_viewer=True,
        # run.finish() waits for uploads forever by default; a server that died mid-run would
        # hang the job. After this many seconds it gives up: the data stays in the run folder.
        finish_timeout=settings.wandb_finish_timeout,
        finish_timeout_raises=True,
    )


def _quiet_telemetry() -> None:
    """Stop wandb's own usage telemetry, which it sends to WANDB_BASE_URL: with that server
    unreachable, flushing it at exit blocks the process for 10-16 s (measured with a hanging
    server; wandb/analytics/opentelemetry/opentelemetry_proxy.py). Best effort: private API."""
    with contextlib.suppress(Exception):
        from wandb.analytics.opentelemetry import opentelemetry_proxy

        opentelemetry_proxy.disable()


def _server_answers(timeout: float) -> bool:
    try:
        return probe(timeout) is None
    except ConfigError:  # the key stopped working mid-run: still "not answering" for us
        return False
