"""What ``--amp bf16`` costs in test accuracy against float32: the tutorial's job (5 epochs,
MNIST [::5]) over several seeds, each a fresh ``python -m trainjob`` process with W&B disabled.

    python bench/bf16_accuracy.py --data ../shared/data/mnist            # 5 seeds x 5 epochs
    python bench/bf16_accuracy.py --seeds 3 --epochs 2                   # quicker, less said

Prints per seed the test accuracy and steady samples/s of both precisions, then the mean
accuracies, their difference and the mean speed ratio. On a CPU without native bf16 (no AMX /
AVX-512 BF16) bf16 is emulated: slower, but the accuracy figure still holds for the arithmetic.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import child_env, find_data, hardware, stage

ACCURACY = re.compile(r"test_accuracy=([\d.]+)")
STEADY = re.compile(r"steady_samples/s=(\d+)")


def job(root: Path, tmp: Path, seed: int, amp: str, epochs: int) -> tuple[float, float]:
    tmp.mkdir(parents=True)
    args = ["--data_dir", str(root), "--epochs", str(epochs), "--seed", str(seed), "--amp", amp]
    out = subprocess.run(
        [sys.executable, "-m", "trainjob", *args],
        env=child_env(tmp, "disabled"),
        cwd=tmp,
        capture_output=True,
        text=True,
        check=False,
    )
    accuracy, steady = ACCURACY.search(out.stdout), STEADY.search(out.stdout)
    if out.returncode != 0 or not accuracy or not steady:
        sys.exit(f"bench: job failed ({out.returncode}):\n{out.stdout}{out.stderr[-3000:]}")
    return float(accuracy.group(1)), float(steady.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the four MNIST *-ubyte.gz files")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    print(f"hardware: {hardware()}")
    print(f"config: tutorial job, {args.epochs} epochs, seeds 0..{args.seeds - 1}", flush=True)
    found: dict[str, list[tuple[float, float]]] = {"none": [], "bf16": []}
    with tempfile.TemporaryDirectory(prefix="trainjob-bf16-") as name:
        tmp = Path(name)
        root = stage(find_data(args.data), tmp / "data")
        for seed in range(args.seeds):
            for amp in found:
                found[amp].append(job(root, tmp / f"{amp}-{seed}", seed, amp, args.epochs))
            (f32, f32_rate), (b16, b16_rate) = found["none"][-1], found["bf16"][-1]
            print(
                f"  seed {seed}: float32 {100 * f32:.2f}% ({f32_rate:,.0f}/s)  "
                f"bf16 {100 * b16:.2f}% ({b16_rate:,.0f}/s)",
                flush=True,
            )
    mean = {amp: 100 * statistics.mean(a for a, _ in runs) for amp, runs in found.items()}
    ratio = statistics.mean(b[1] / f[1] for f, b in zip(found["none"], found["bf16"], strict=True))
    print(
        f"mean test accuracy over {args.seeds} seeds: float32 {mean['none']:.2f}%, "
        f"bf16 {mean['bf16']:.2f}% (bf16 - float32: {mean['bf16'] - mean['none']:+.2f} points; "
        f"goal within 0.5); bf16 / float32 samples/s: {ratio:.2f}x"
    )


if __name__ == "__main__":
    main()
