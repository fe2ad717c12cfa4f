"""The ONNX part of a sweep trial: a fresh export vs. the architecture's template, weights swapped.

    python bench/export_cost.py [--reps 7]

Each measurement runs in a child forked from this process after it has imported torch, onnx,
onnxruntime, onnxscript and trainjob and run no torch op: the state a sweep trial starts in
(sweep/trials.py forks trials from such a pre-imported server), so first-call costs (oneDNN,
the onnxruntime environment) count as they do in a trial. The child builds the tutorial's
ConvNet, then times ``export.export_onnx`` (16-image sample) and ``export.check_onnx`` (37
images: the job's check) one after the other. Variants, interleaved within each repetition so
that load from other work hits all alike:

- dynamo export + check: the default exporter, no template (what every trial paid before);
- template swap + check: the same call with a warm template cache (every trial but the first
  of an architecture);
- torchscript export + check: the deprecated exporter, no template.

Prints the CPU, the median [range] of each and the ratios; no timed asserts anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

VARIANTS = {
    "dynamo export + check": ("dynamo", False),
    "template swap + check (warm cache)": ("dynamo", True),
    "torchscript export + check": ("torchscript", False),
}


def cpu() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next((ln.split(":", 1)[1].split() for ln in info.splitlines() if "flags" in ln), [])
    wanted = [f for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (
        f"{name or platform.processor()}, {os.cpu_count()} cores, flags: {' '.join(wanted) or '-'}"
    )


def _trial(exporter: str, cache: Path | None, folder: Path, seed: int) -> dict[str, float]:
    """In the forked child: one trial's export and check, timed."""
    import torch

    from trainjob import export
    from trainjob.model import ConvNet

    torch.manual_seed(seed)
    model = ConvNet([16, 32], 10)
    sample, batch = torch.rand(16, 1, 28, 28), torch.rand(37, 1, 28, 28)
    path = folder / f"model-{os.getpid()}.onnx"
    start = time.perf_counter()
    export.export_onnx(model, sample, path, exporter, cache)
    exported = time.perf_counter()
    diff = export.check_onnx(model, path, batch)
    checked = time.perf_counter()
    return {"export": exported - start, "check": checked - exported, "diff": diff}


def forked(exporter: str, cache: Path | None, folder: Path, seed: int) -> dict[str, float]:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report, leave without running the parent's atexit
        code = 1
        try:
            os.close(read)
            with os.fdopen(write, "w") as out:
                json.dump(_trial(exporter, cache, folder, seed), out)
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as inp:
        text = inp.read()
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0 or not text:
        raise SystemExit(f"bench: a measuring child failed ({exporter}, cache={cache})")
    return json.loads(text)


def fmt(values: list[float]) -> str:
    return f"{statistics.median(values):7.3f} s [{min(values):.3f}..{max(values):.3f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="repetitions (>= 5 for a median)")
    args = parser.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import onnx
        import onnxruntime
        import onnxscript
        import torch
        import torch.onnx._internal.exporter._core  # what the fork server preloads

        import trainjob.export
        import trainjob.model
        import trainjob.onnx_template  # noqa: F401

    print(f"CPU: {cpu()}; load average at start {os.getloadavg()[0]:.2f}")
    print(
        f"python {platform.python_version()}, torch {torch.__version__}, onnx {onnx.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, onnxscript {onnxscript.__version__}; "
        f"torch threads {torch.get_num_threads()}; each figure: one forked child"
    )
    with tempfile.TemporaryDirectory(prefix="export-bench-") as tmp:
        folder, cache = Path(tmp), Path(tmp) / "cache"
        first = forked("dynamo", cache, folder, seed=0)  # the architecture's first trial
        print(
            f"first trial of the architecture (exports the template): export "
            f"{first['export']:.3f} s + check {first['check']:.3f} s"
        )
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
        for rep in range(args.reps):
            for name, (exporter, cached) in VARIANTS.items():
                runs[name].append(forked(exporter, cache if cached else None, folder, rep + 1))
        assert len(list((cache / "onnx").iterdir())) == 1  # one template, reused by every rep
    print(f"\nmedian [range] over {args.reps} repetitions     export + check = total")
    totals = {}
    for name, results in runs.items():
        totals[name] = [r["export"] + r["check"] for r in results]
        worst = max(r["diff"] for r in results)
        print(f"{name:36s} export {fmt([r['export'] for r in results])}")
        print(f"{'':36s} check  {fmt([r['check'] for r in results])}  (max abs diff {worst:.2g})")
        print(f"{'':36s} total  {fmt(totals[name])}")
    swaps = totals["template swap + check (warm cache)"]
    swap = statistics.median(swaps)
    for name in ("dynamo export + check", "torchscript export + check"):
        ratios = [a / b for a, b in zip(totals[name], swaps, strict=True)]
        print(
            f"ratio {name} / template swap + check: {statistics.median(totals[name]) / swap:.1f}x "
            f"(per repetition {min(ratios):.1f}..{max(ratios):.1f}x)"
        )
    print(f"load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
