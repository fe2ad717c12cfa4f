"""Asking the W&B server whether it answers and takes the key, within a timeout, without
letting a silent server hold this process: the question is asked from a child process that is
killed (with the wandb-core it started) when the time is up. A refused connection or a name that
does not resolve is known at once (``env.connect_fails``)."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any

from ..errors import ConfigError
from .env import base_url, connect_fails, redact

REJECTED = (
    "the W&B server {url} rejected WANDB_API_KEY ({status}); set a valid key (wandb.ai/authorize) "
    "or WANDB_MODE=offline"
)
SERVICE_START_S = 1.0


def check_key_format() -> None:
    """ConfigError for a WANDB_API_KEY that wandb itself would reject before any request
    (``wandb.Api()`` runs the same check first). Best effort: private API."""
    key = os.environ.get("WANDB_API_KEY")
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key

        problem = check_api_key(key) if key else None
    except Exception:
        return
    if problem:
        raise ConfigError(redact(f"W&B credentials are invalid: {problem}"))


def probe(timeout: float) -> str | None:
    """Ask the W&B server who the credentials belong to, waiting at most ``timeout`` seconds.

    Returns None when it answered, a short reason when it cannot be reached; raises ConfigError
    when it rejects the key (HTTP 401/403) or the key is malformed. ``wandb.Api()`` verifies the
    key through wandb-core and chains the failed request (with its HTTP status) as the cause.
    """
    limit = timeout  # what the messages name: the setting, not what is left of it
    started = time.monotonic()
    refused = connect_fails(base_url(), timeout)  # refused or unresolvable: known at once
    if refused is not None:
        check_key_format()  # a malformed key is exit 2 whether or not a server answers
        return refused
    timeout = max(timeout - (time.monotonic() - started), 0.5)
    # The wait below starts once wandb-core runs, which took 0.4-0.9 s (2 CPU cores): keep 1 s
    # of the budget for that, so that the whole check stays within ``timeout``.
    wait = max(timeout - SERVICE_START_S, timeout / 2)
    answer = _ask_server(wait, budget=timeout + CHILD_GRACE_S)
    if answer is None:
        return f"no answer within {limit:g}s"
    if "usage" in answer:  # no credentials found after all
        raise ConfigError(redact(f"W&B credentials: {answer['usage']}"))
    if "auth" in answer:
        status = int(answer.get("status") or 0)
        if answer.get("local"):  # rejected locally: a malformed key
            raise ConfigError(redact(f"W&B credentials are invalid: {answer['auth']}"))
        if status in (401, 403):
            raise ConfigError(REJECTED.format(url=base_url(), status=f"HTTP {status}"))
        if status:
            return f"HTTP {status}"
        return f"no answer within {limit:g}s"
    return None


# Asked in a child process (its own session) that is killed, with the wandb-core it started,
# after ``budget`` seconds: against a server that accepts connections and never answers, a
# process that called ``wandb.Api(timeout=...)`` was seen to hang for over two minutes instead of
# the timeout (wandb 0.31), and the job's own process must not hold wandb-core's stuck requests
# either. The answer travels through a file: an orphaned wandb-core may keep pipes open.
_ASK = """
import json, os, sys
import wandb
try:
    wandb.Api(timeout=float(sys.argv[1]))
    out = {"ok": True}
except wandb.errors.AuthenticationError as exc:
    cause = exc.__cause__
    status = getattr(getattr(cause, "response", None), "http_status", 0)
    out = {"auth": str(exc), "local": cause is None, "status": status or 0}
except wandb.errors.UsageError as exc:
    out = {"usage": str(exc)}
sys.stdout.write(json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""
CHILD_GRACE_S = 2.0  # the child's interpreter start and `import wandb`, on 2 busy cores


def _ask_server(wait: float, budget: float) -> dict[str, Any] | None:
    """The outcome of ``wandb.Api(timeout=wait)`` in a child process; None when it did not
    finish within ``budget`` seconds."""
    import json
    import signal
    import subprocess
    import tempfile

    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _ASK, f"{wait:g}"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            pass
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the child and the wandb-core it started
            proc.wait()
        out.seek(0)
        try:
            answer = json.loads(out.read() or b"null")
        except ValueError:
            return None
    return answer if isinstance(answer, dict) else None
