"""How long a job waits for a W&B server that is down, and what it does then.

For each failure of tests/fake_wandb.py (refused, HTTP 500, hanging, rejecting the key, dying
right after the run is created) one real ``python -m trainjob`` on tiny synthetic data, online
with a fake key; prints when each stderr line appeared, seconds since the start.

    python bench/wandb_outage.py [--init-timeout 3] [--modes refuse,500,hang,401,die]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "src")]

from fake_wandb import fake_wandb  # noqa: E402
from helpers import clean_env, write_tiny_mnist  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--init-timeout", default="3")
    parser.add_argument("--finish-timeout", default="3")
    parser.add_argument("--modes", default="refuse,500,hang,401,die")
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        data = write_tiny_mnist(tmp / "data")
        for mode in ns.modes.split(","):
            work = tmp / mode
            work.mkdir()
            server_mode, die = ("ok", 1) if mode == "die" else (mode, 0)
            with fake_wandb(server_mode, work, die_on_stream=die) as server:
                env = clean_env(
                    work,
                    WANDB_MODE="online",
                    WANDB_API_KEY="fake-" + "0" * 40,
                    WANDB_BASE_URL=server.url,
                    TRAINJOB_DATA_DIR=str(data),
                    TRAINJOB_DATA_SLICE="1",
                    TRAINJOB_WANDB_INIT_TIMEOUT=ns.init_timeout,
                    TRAINJOB_WANDB_FINISH_TIMEOUT=ns.finish_timeout,
                )
                start = time.monotonic()
                proc = subprocess.Popen(
                    [sys.executable, "-m", "trainjob", "--epochs=1", "--batch_size=64"],
                    env=env,
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                assert proc.stderr is not None
                print(f"== {mode} (init timeout {ns.init_timeout}s)")
                for line in proc.stderr:
                    if line.startswith("trainjob:"):
                        print(f"  {time.monotonic() - start:6.1f}s  {line.rstrip()[:150]}")
                code = proc.wait()
                print(f"  {time.monotonic() - start:6.1f}s  exit {code}")


if __name__ == "__main__":
    main()
