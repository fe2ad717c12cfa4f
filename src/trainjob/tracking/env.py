"""W&B's own environment variables, read the way W&B documents them, without importing wandb
(so that a bad WANDB_MODE fails in milliseconds, before any data is loaded)."""

from __future__ import annotations

import netrc
import os
import socket
import urllib.request
from urllib.parse import urlparse

from ..errors import ConfigError

# wandb 0.31's own default server (wandb/sdk/lib/urls.py DEFAULT_BASE_URL): the host that
# `wandb login` stores the key under and that wandb-core connects to.
DEFAULT_BASE_URL = "https://api.forge.coreweave.com"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def first_hop(url: str) -> tuple[str, int]:
    """The (host, port) a client connects to for ``url``: the proxy that HTTPS_PROXY /
    HTTP_PROXY name unless NO_PROXY exempts the host (the rules of Python's urllib and Go's
    net/http, which wandb-core uses), else the server itself."""
    target = urlparse(url)
    host = target.hostname or ""
    proxy = urllib.request.getproxies().get(target.scheme or "https")
    if proxy and not urllib.request.proxy_bypass(host):
        hop = urlparse(proxy if "://" in proxy else f"http://{proxy}")
        return hop.hostname or "", hop.port or (443 if hop.scheme == "https" else 80)
    return host, target.port or (80 if target.scheme == "http" else 443)


def connect_fails(url: str, timeout: float) -> str | None:
    """Open (and close) one TCP connection to ``url``'s first hop, waiting at most ``timeout``
    seconds. A short reason when it fails, None when something accepted it.

    A refused connection or a name that does not resolve is an answer: it comes back at once
    and waiting cannot change it (wandb's own client retries it until its timeout). Only a
    silent network (a dropped SYN, a firewall) uses up the timeout here.
    """
    host, port = first_hop(url)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror:
        return f"cannot resolve {host}"
    except ConnectionRefusedError:
        return f"connection to {host}:{port} refused"
    except TimeoutError:
        return f"no answer from {host}:{port} within {timeout:g}s"
    except OSError as exc:  # unreachable network, no route, reset
        return f"cannot connect to {host}:{port} ({exc.strerror or exc})"


def _netrc_key() -> str | None:
    host = urlparse(base_url()).hostname
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        entry = netrc.netrc(path).authenticators(host) if host else None
    except (OSError, netrc.NetrcParseError):
        return None
    return entry[2] if entry else None


def has_api_key() -> bool:
    """True when wandb would find credentials: WANDB_API_KEY, a ``wandb login`` netrc entry, or
    an identity token file (federated identity)."""
    return bool(
        os.environ.get("WANDB_API_KEY")
        or os.environ.get("WANDB_IDENTITY_TOKEN_FILE")
        or _netrc_key()
    )


def redact(text: str) -> str:
    """``text`` with the W&B API key (from the environment or netrc) replaced by ``***``.

    Every message trainjob builds from a W&B error goes through here: the key must never reach
    a log, a terminal or an exception message, whatever a library puts in its errors.
    """
    for secret in (os.environ.get("WANDB_API_KEY"), _netrc_key()):
        if secret and len(secret) >= 8:
            text = text.replace(secret, "***")
    return text


def resolve_mode() -> str:
    """WANDB_MODE as W&B documents it; with neither a mode nor a key, offline instead of
    prompting for a login (a batch job has no one to answer)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in {"online", "offline", "disabled", "shared"}:
        return mode
    if mode in {"dryrun"}:
        return "offline"
    if mode in {"run"}:
        return "online"
    if mode:
        raise ConfigError(f"WANDB_MODE={mode!r} is not a W&B mode; use online, offline or disabled")
    return "online" if has_api_key() else "offline"
