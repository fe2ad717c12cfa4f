"""W&B's own environment variables, read the way W&B documents them, without importing wandb
(so that a bad WANDB_MODE fails in milliseconds, before any data is loaded)."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from .errors import ConfigError


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"


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
