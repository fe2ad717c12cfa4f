"""The process entry point's quick exit (``trainjob.__main__.cli``): the exit status, the atexit
handlers and buffered output survive it; interpreter teardown is skipped; a running non-daemon
thread gets Python's normal, joining exit instead.

The whole-job side (the offline W&B run read back complete after the process ended this way,
exit codes 2 and 143) is covered by every test that runs ``python -m trainjob``.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from helpers import ROOT, SRC

# A stand-in for main(): writes unflushed output, registers an atexit handler, leaves an object
# whose finalizer only interpreter teardown would run, optionally starts a non-daemon thread.
SCRIPT = """
import atexit, sys, threading, time
import trainjob.__main__ as entry

marker = open(sys.argv[1], "a", buffering=1)

class Finalized:
    # builtins may be gone by then: bind what the finalizer needs
    def __del__(self, _open=open, path=sys.argv[1]):
        with _open(path, "a") as f:
            f.write("teardown\\n")

kept = Finalized()

def main():
    atexit.register(lambda: marker.write("atexit\\n"))
    sys.stdout.write("last words, no newline")  # stays in the buffer of a pipe
    if sys.argv[2] == "thread":
        def late():
            time.sleep(0.3)
            marker.write("thread\\n")
        threading.Thread(target=late, daemon=False).start()
    return 7

entry.main = main
entry.cli()
"""


def run_entry(tmp_path: Path, mode: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    marker = tmp_path / "marker.txt"
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}  # no PYTHONUNBUFFERED
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(marker), mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done, marker.read_text().splitlines() if marker.exists() else []


def test_quick_exit_keeps_status_atexit_and_output_and_skips_teardown(tmp_path: Path) -> None:
    done, events = run_entry(tmp_path, "plain")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "last words, no newline"
    assert done.stderr == ""
    # atexit ran; the finalizer that only interpreter teardown calls did not: os._exit was taken
    assert events == ["atexit"]


def test_non_daemon_thread_gets_the_normal_joining_exit(tmp_path: Path) -> None:
    done, events = run_entry(tmp_path, "thread")
    assert done.returncode == 7, done.stderr
    assert done.stdout == "last words, no newline"
    # joined first, then atexit; with a normal exit interpreter teardown may run finalizers too
    assert events[:2] == ["thread", "atexit"]


def test_console_script_and_module_use_the_quick_exit() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["trainjob"] == "trainjob.__main__:cli"
    module = (SRC / "trainjob" / "__main__.py").read_text()
    assert module.rstrip().endswith('if __name__ == "__main__":\n    cli()')
