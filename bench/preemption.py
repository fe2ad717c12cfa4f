"""Time from a preemption signal to the process's exit (Kubernetes allows 30 s by default).

    python bench/preemption.py [--repeats 3] [--data DIR]

Runs the real job (offline W&B, synthetic 512/256 images unless --data points at MNIST .gz
files) through ``tests/preempt_driver.py``, which delivers the signal at an exact point: in the
middle of an epoch, on an epoch's last step, during the evaluation. It times each phase from the
driver's timestamp, reading the job's stderr as it comes:

  checkpoint  the checkpoint after the current step is on disk ("checkpoint saved")
  finished    the W&B run is marked preempting and finished (the one-line error is printed)
  exit        the process is gone (includes wandb-core's shutdown at interpreter exit)

No baseline ratio here: the figure to compare with is the grace period itself.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers import clean_env, write_tiny_mnist  # noqa: E402

POINTS = {"mid-epoch": "TERM@step:5", "epoch end": "TERM@step:16", "evaluation": "TERM@eval"}
ARGS = ["--epochs", "2", "--batch_size", "32", "--data_slice", "1", "--checkpoint_every_s", "0"]


def one(where: str, data: Path, tmp: Path) -> dict[str, float]:
    env = clean_env(tmp, TRAINJOB_DATA_DIR=str(data))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "preempt_driver.py"), where, *ARGS],
        env=env,
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    sent, times = None, {}
    for line in proc.stderr:
        now = time.time()
        if line.startswith("driver: sent"):
            sent = float(line.split()[-1])
        elif sent and line.startswith("trainjob: checkpoint saved"):
            times["checkpoint"] = now - sent
        elif sent and line.startswith("trainjob: error:"):
            times["finished"] = now - sent
    proc.wait()
    if sent is None or proc.returncode != 143:
        raise SystemExit(f"{where}: exit code {proc.returncode}, no signal sent")
    times["exit"] = time.time() - sent
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, help="folder of MNIST .gz files (default: tiny)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        base = Path(name)
        data = args.data or write_tiny_mnist(base / "data")
        print(f"cpus={os.cpu_count()} repeats={args.repeats} data={data}")
        print(f"{'signal during':<12} {'checkpoint':>11} {'finished':>9} {'exit':>7}  (median s)")
        for label, where in POINTS.items():
            runs = [one(where, data, base / f"{label}-{i}") for i in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            ckpt = f"{med['checkpoint']:.2f}" if "checkpoint" in med else "-"  # eval: saved before
            print(f"{label:<12} {ckpt:>11} {med['finished']:>9.2f} {med['exit']:>7.2f}")


if __name__ == "__main__":
    main()
