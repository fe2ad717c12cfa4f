"""W&B's own environment variables, read the way W&B documents them, without importing wandb
(so that a bad WANDB_MODE fails in milliseconds, before any data is loaded)."""

from __future__ import annotations

import netrc
import os
from urllib.parse import urlparse

from .errors import ConfigError


def has_api_key() -> bool:
    """True when wandb would find a key: WANDB_API_KEY or a ``wandb login`` netrc entry."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return bool(host and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


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
