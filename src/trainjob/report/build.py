"""``trainjob report`` itself: gather (collect.py), render (page.py), write the page once.

trainjob report [PATH ...] [--out FILE]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .. import records
from ..errors import ConfigError
from ..log import logger
from .collect import Found, gather
from .page import render

log = logger("report")
DEFAULT_OUT = "report.html"


def default_out(paths: Sequence[Path]) -> Path:
    """``report.html`` in the first folder reported on (a volume, WANDB_DIR), else here."""
    first = paths[0] if paths else Path(".")
    return (first if first.is_dir() else Path(".")) / DEFAULT_OUT


def report(paths: Sequence[Path], out: Path | None) -> int:
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"report: PATH={str(missing[0])!r} does not exist")
    started = time.perf_counter()
    found: Found = gather(paths)
    if not found.runs:
        raise ConfigError(
            f"report: no readable W&B run or trainjob run record under "
            f"{', '.join(map(str, paths))}: expected wandb/offline-run-* folders or sweep folders"
        )
    target = out or default_out(paths)
    title = _title(found)
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    page = render(found, title, [str(p) for p in paths], stamp)
    if str(target) == "-":  # the page alone on stdout: `kubectl logs job/... > report.html`
        sys.stdout.write(page)
        sys.stdout.flush()
        return 0
    records.write_atomic(target, page.encode())
    damaged = sum(1 for r in found.runs if r.notes)
    also = f"; {damaged} run(s) not read whole (said on the page)" if damaged else ""
    log.info(
        f"{len(found.runs)} run(s) in {len(found.groups)} group(s) -> {target.resolve()} "
        f"({len(page) / 1024:.0f} KiB, {time.perf_counter() - started:.1f} s){also}"
    )
    return 0


def _title(found: Found) -> str:
    sweeps = [g.name for g in found.groups if g.sweep]
    if len(sweeps) == 1:
        return f"trainjob report: sweep {sweeps[0]}"
    return "trainjob report"
