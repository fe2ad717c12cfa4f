"""Sweep trials, each in its own process, started in about a second instead of ~10-30 s.

Every trial is ``python -m trainjob train --param=value ...`` in a process of its own: GPU memory
is freed between trials, SIGTERM reaches the trial, and a crash kills one trial, not the sweep.
Starting such a process cold costs more than the trial's first step: ``import torch`` +
torchvision + wandb take 10-25 s on a 2-core CPU (AMD EPYC VM; bench/sweep_overhead.py). So trials
are forked from a *fork server* (``multiprocessing``'s ``forkserver``): a clean, single-threaded
process that imports torch, torchvision, wandb, onnx and trainjob once, runs no torch op (so no
OpenMP/CUDA state exists to be broken by ``fork``), and forks one child per trial. The child sets
its environment, runs the same ``preflight.main`` as ``trainjob train`` on the command line, and
exits with the job's exit code. Where ``forkserver`` is missing (not Linux/macOS) trials are plain
``subprocess`` children.

    python bench/sweep_overhead.py   # trial overhead, fork server vs. a cold process
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from multiprocessing import connection, forkserver
from pathlib import Path
from typing import Any

from ..errors import ExitCode, Interrupted
from ..interrupt import PREEMPT_SIGNALS, STOP_SIGNAL
from ..settings import Scope, env_name, fields_in
from .spec import TRIAL_COMMAND

# What a trial imports, found by diffing sys.modules around a whole job: torch, torchvision and
# wandb are ~95% of the import time; wandb.init imports ``wandb.sdk.launch``, ``requests`` and
# ``yaml`` lazily (~2 s, 2 cores); the default ONNX exporter imports onnxscript at the end of every
# trial. None of these runs a torch op or initialises CUDA at import.
PRELOAD = (
    "torch",
    "torchvision.datasets",
    "tqdm.auto",
    "wandb",
    "wandb.sdk.launch",
    "wandb.sdk.launch.inputs.internal",
    "wandb.apis.public",
    "requests",
    "yaml",
    "onnx",
    "onnxruntime",
    "onnxscript",
    "torch.onnx._internal.exporter._core",
    "trainjob.job",
    "trainjob.tracking.run",
    "trainjob.data",
    "trainjob.export",
    "trainjob.checkpoint",
    "trainjob.tracking.history",
    "trainjob.train",
    "trainjob.model",
    "trainjob.runtime",
    "trainjob.epoch_end",
    "trainjob.preflight",
    "trainjob.interrupt",
    "trainjob.tracking.sweeps",  # W&B's engine: offline early termination asks it per epoch
)
POLL_S = 0.5
# A forked trial's exit code comes from the fork server through its sentinel, read once by
# whichever ``poll`` gets there first; another reader at the same moment gets EOF and records 255
# (multiprocessing/popen_forkserver.py). ``Process.start`` polls every other live child
# (``multiprocessing.process._cleanup``), so a trial started in one thread while another thread
# waits for its own trial can steal that trial's code: parallel trials saw a stopped trial's 6
# turn into 255. Every start and every exit-code read holds this lock.
_STATUS_LOCK = threading.Lock()
# Exit codes that are not a failure of the trial: done, stopped by the sweep, preempted
# (W&B's own counter treats a preempted run as failed: wandb/wandb#12821).
NOT_FAILED = (int(ExitCode.OK), int(ExitCode.STOPPED), int(ExitCode.PREEMPTED))


def exit_status(code: int | None) -> int:
    """A child's exit status as a shell reports it: killed by signal N -> 128 + N."""
    if code is None:
        return int(ExitCode.CRASHED)
    return 128 - code if code < 0 else code


def _trial_main(argv: list[str], env: dict[str, str], argv0: str) -> None:
    """Runs in the forked child: become ``python -m trainjob <argv>`` with ``env``."""
    os.environ.clear()
    os.environ.update(env)
    sys.argv[:] = [argv0, *argv]  # what W&B records as the run's command line
    from ..preflight import main

    command, flags = argv[: len(TRIAL_COMMAND)], argv[len(TRIAL_COMMAND) :]
    if tuple(command) != TRIAL_COMMAND:  # the sweep drivers build every trial's command line
        raise ValueError(f"a trial runs {' '.join(TRIAL_COMMAND)}, not {argv!r}")
    code = main(flags)
    # multiprocessing children leave with os._exit (no atexit): end wandb's service here.
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        with contextlib.suppress(Exception, SystemExit):
            wandb.teardown()
    sys.exit(code)


@contextlib.contextmanager
def _package_on_pythonpath() -> Iterator[None]:
    """The fork server is a fresh interpreter that ignores this process's ``sys.path`` (Python
    3.11): put the folder this ``trainjob`` was imported from first on its PYTHONPATH, or it may
    preload another copy (e.g. an installed one instead of a checkout's ``src``)."""
    old = os.environ.get("PYTHONPATH")
    here = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([here, *([old] if old else [])])
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


class Trial:
    """A running trial: ``wait()`` returns its exit status; ``send(sig)`` signals it."""

    def __init__(self, proc: Any) -> None:
        self._proc = proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def send(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            if self._proc.pid is not None:
                os.kill(self._proc.pid, signum)

    def wait(self) -> int:
        # Short waits in a loop, not one blocking call: W&B's agent stops a trial (a "stop"
        # from the UI or from early termination) by raising an exception asynchronously in the
        # thread that runs it, which Python delivers only between bytecodes.
        while True:
            if isinstance(self._proc, subprocess.Popen):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    return exit_status(self._proc.wait(timeout=POLL_S))
            else:
                # Wait on the sentinel without reading it; read the exit code under the lock
                # (see _STATUS_LOCK): two threads reading one sentinel lose the code.
                connection.wait([self._proc.sentinel], timeout=POLL_S)
                with _STATUS_LOCK:
                    code = self._proc.exitcode
                if code is not None:
                    return exit_status(code)


class TrialRunner:
    """Starts trials: forked from the pre-imported server (``fork=True``, the default where the
    platform has it) or as cold ``python -m trainjob`` processes (``fork=False``)."""

    def __init__(self, fork: bool | None = None, target: Callable[..., None] = _trial_main):
        available = "forkserver" in multiprocessing.get_all_start_methods()
        self.fork = available if fork is None else (fork and available)
        self._target = target
        self._ctx = multiprocessing.get_context("forkserver") if self.fork else None

    def warm_up(self) -> None:
        """Start the fork server now, in the background: its imports overlap the caller's work
        (loading sweep.yaml, proposing the first point) instead of delaying the first trial."""
        if self._ctx is not None:
            self._ctx.set_forkserver_preload(list(PRELOAD))
            with _package_on_pythonpath():
                forkserver.ensure_running()

    def start(self, argv: Sequence[str], env: Mapping[str, str]) -> Trial:
        sys.stdout.flush()
        sys.stderr.flush()
        if self._ctx is None:
            cmd = [sys.executable, "-m", "trainjob", *argv]
            return Trial(subprocess.Popen(cmd, env=dict(env)))
        self.warm_up()
        argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "trainjob"
        proc = self._ctx.Process(
            target=self._target, args=(list(argv), dict(env), argv0), name="trainjob-trial"
        )
        with _STATUS_LOCK:  # start() polls every other child (see _STATUS_LOCK)
            proc.start()
        return Trial(proc)


class SignalForwarder:
    """While active, SIGTERM/SIGINT/SIGUSR1 sent to the sweep process go to every running trial
    (each checkpoints and exits 143) and stop the sweep after them. Kubernetes signals only PID 1.

    ``run`` may be called from several threads at once (parallel trials). The handler runs in
    the main thread and must never wait for a lock a worker holds, so the running trials are a
    tuple that is replaced, never changed in place: the handler reads whichever is current.

    ``interrupt_when_idle``: with no trial running, raise KeyboardInterrupt in the main thread,
    which is how W&B's agent is told to stop waiting for its next trial.
    """

    def __init__(self, interrupt_when_idle: bool = False) -> None:
        self.signal: int | None = None
        self.trials: tuple[Trial, ...] = ()
        self.interrupt_when_idle = interrupt_when_idle
        self._previous: dict[int, Any] = {}
        self._lock = threading.Lock()  # between workers only; the handler never takes it

    def _handle(self, signum: int, _frame: object) -> None:
        first = self.signal is None
        self.signal = signum
        running = self.trials
        for trial in running:
            trial.send(signum)
        if not running and first and self.interrupt_when_idle:
            raise KeyboardInterrupt

    def track(self, trial: Trial, running: bool = True) -> None:
        """Forward signals to ``trial`` from now on (``running``) or no longer."""
        with self._lock:
            others = tuple(t for t in self.trials if t is not trial)
            self.trials = (*others, trial) if running else others

    @contextlib.contextmanager
    def active(self) -> Iterator[SignalForwarder]:
        for sig in PREEMPT_SIGNALS:  # forwarded: what would preempt a job preempts its trials
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
            self._previous.clear()

    def run(
        self,
        runner: TrialRunner,
        argv: Sequence[str],
        env: Mapping[str, str],
        stoppable: bool = False,
    ) -> int:
        """Run one trial to its end; raise ``Interrupted`` when a signal came before or during
        it. ``stoppable``: this thread is W&B's agent's, whose ``stop`` command raises a bare
        ``Exception`` in it (wandb/agents/pyagent.py, ``_terminate_thread``): the trial is then
        stopped (exit 6) and its exit status returned."""
        if self.signal is not None:
            raise Interrupted(self._message())
        trial = runner.start(argv, env)
        self.track(trial, running=True)
        try:
            if self.signal is not None:  # it came while the trial was being started
                trial.send(self.signal)
            try:
                code = trial.wait()
            except Exception as exc:
                if not (stoppable and type(exc) is Exception):
                    raise
                trial.send(STOP_SIGNAL)
                code = trial.wait()
        except BaseException:
            # Anything else that ends the wait (a bug, Ctrl-C while not forwarding) must not
            # leave the trial training on as an orphan: it checkpoints and ends.
            trial.send(signal.SIGTERM)
            trial.wait()
            raise
        finally:
            self.track(trial, running=False)
        if self.signal is not None:
            raise Interrupted(self._message())
        return code

    def check(self) -> None:
        """Raise ``Interrupted`` when a signal came (between trials, e.g. while waiting)."""
        if self.signal is not None:
            raise Interrupted(self._message())

    def stop_trial(self) -> None:
        """The sweep stops the running trial(s) (early termination, a user's stop): it ends
        between two steps with exit 6 and keeps no checkpoint. Safe to call twice, or when the
        trial has already ended."""
        for trial in self.trials:
            trial.send(STOP_SIGNAL)

    def _message(self) -> str:
        name = signal.Signals(self.signal).name if self.signal else "signal"
        return f"{name}: sweep stopped; the interrupted trial resumes from its checkpoint on rerun"


class FailureCounter:
    """Consecutive failed trials (W&B's ``max_consecutive_failed_runs``): a trial that finished
    resets it; one stopped by the sweep (6) or preempted (143) neither counts nor resets it, as
    neither says anything about whether the trials work."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.consecutive = 0

    def record(self, exit_code: int) -> None:
        if exit_code == ExitCode.OK:
            self.consecutive = 0
        elif exit_code not in NOT_FAILED:
            self.consecutive += 1

    @property
    def exhausted(self) -> bool:
        return self.consecutive >= self.limit

    def message(self) -> str:
        return (
            f"{self.consecutive} trials failed in a row (TRAINJOB_MAX_CONSECUTIVE_FAILURES="
            f"{self.limit}); stopping so that a broken node does not burn the sweep"
        )


# The sweep's own settings and one run's names never reach a trial: TRAINJOB_SWEEP_ID would make
# a trial without a subcommand start another agent (the trial's command says ``train``
# explicitly, too); TRAINJOB_RUN_ID would make every trial resume the same W&B run, and
# TRAINJOB_RUN_NAME give every trial one name.
SWEEP_ONLY_ENV = tuple(env_name(f) for f in fields_in(Scope.SWEEP, Scope.IDENTITY))


def trial_env(base: Mapping[str, str], **overrides: str) -> dict[str, str]:
    """The trial's environment: the sweep process's, minus ``SWEEP_ONLY_ENV``."""
    env = {k: v for k, v in base.items() if k.upper() not in SWEEP_ONLY_ENV}
    env.update(overrides)
    return env
