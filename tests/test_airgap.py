"""Air-gapped means no waits: an offline job contacts nothing, and an unreachable W&B server
is detected as fast as the network allows.

The "network" is a listener on 127.0.0.1 that accepts every connection and never answers (a
hanging proxy or server), with HTTP_PROXY / HTTPS_PROXY pointed at it: every client that
honours the proxy variables (Python's requests and urllib, Go's net/http in wandb-core,
onnxruntime's telemetry) connects there first, so the count of accepted connections is the
count of network calls. Times are printed and checked only against generous bounds that
prove "did not wait the full timeout", never as a benchmark.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from fake_wandb import closed_port, silent_listener
from helpers import clean_env, offline_runs, run_cli

PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")


def proxied(env: dict[str, str], url: str) -> dict[str, str]:
    for var in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return {**env, **dict.fromkeys(PROXY_VARS, url)}


def test_the_listener_counts_a_proxied_request() -> None:
    """The instrument works: a request through the proxy variables is one connection."""
    with silent_listener() as listener:
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({"http": listener.url, "https": listener.url})
        )
        with pytest.raises(OSError):
            opener.open("https://example.invalid/", timeout=0.5)
        time.sleep(0.2)
        assert listener.connections == 1


@pytest.mark.parametrize("mode", ["default", "offline"])
def test_offline_job_makes_no_network_call(mode: str, tiny_data: Path, tmp_path: Path) -> None:
    """No key and no WANDB_MODE (trainjob's default: offline), or WANDB_MODE=offline."""
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), TRAINJOB_DATA_SLICE="1")
    env.pop("WANDB_API_KEY", None)
    if mode == "default":
        env.pop("WANDB_MODE")
    with silent_listener() as listener:
        started = time.monotonic()
        result = run_cli(
            ["--epochs", "1", "--batch_size", "64"], proxied(env, listener.url), tmp_path
        )
        wall = time.monotonic() - started
        time.sleep(0.5)  # a connection made at exit is counted too
        print(f"{mode}: {listener.connections} connection(s), process wall {wall:.1f}s")
        assert result.returncode == 0, result.stderr
        assert len(offline_runs(tmp_path)) == 1
        assert listener.connections == 0, listener.first_bytes


CHOOSE = """
import json, sys, time
from trainjob.tracking import run as tracking
from trainjob.settings import Settings
started = time.monotonic()
mode = tracking.choose_mode(Settings(wandb_init_timeout=float(sys.argv[1])))
print(json.dumps({"mode": mode, "elapsed": time.monotonic() - started}))
"""


def choose_mode(tmp: Path, timeout: float, **env: str) -> tuple[dict, str]:
    """``tracking.choose_mode`` online with a well-formed key no server knows, in a child."""
    child = clean_env(tmp, WANDB_MODE="online", WANDB_API_KEY=f"canary-{secrets.token_hex(20)}")
    for var in (*PROXY_VARS, "NO_PROXY", "no_proxy"):
        child.pop(var, None)
    child.update(env)
    result = subprocess.run(
        [sys.executable, "-c", CHOOSE, str(timeout)],
        env=child,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1]), result.stderr


TIMEOUT = 12.0


@pytest.mark.parametrize("via", ["server", "proxy"])
def test_refused_connection_falls_back_at_once(via: str, tmp_path: Path) -> None:
    refused = f"http://127.0.0.1:{closed_port()}"
    env = {"WANDB_BASE_URL": refused} if via == "server" else dict.fromkeys(PROXY_VARS, refused)
    answer, stderr = choose_mode(tmp_path, TIMEOUT, **env)
    print(f"refused ({via}): offline after {answer['elapsed']:.2f}s of {TIMEOUT:g}s")
    assert answer["mode"] == "offline"
    assert "refused" in stderr and "continuing offline" in stderr
    assert answer["elapsed"] < TIMEOUT / 2  # an answer, not a wait for the timeout


def test_silent_server_waits_at_most_the_timeout(tmp_path: Path) -> None:
    timeout = 4.0
    with silent_listener() as listener:
        answer, stderr = choose_mode(tmp_path, timeout, WANDB_BASE_URL=listener.url)
    print(f"silent: offline after {answer['elapsed']:.2f}s of {timeout:g}s")
    assert answer["mode"] == "offline" and "continuing offline" in stderr
    assert listener.connections >= 1  # it did try
    assert answer["elapsed"] < timeout + 3  # bounded (3 s for a loaded machine)
