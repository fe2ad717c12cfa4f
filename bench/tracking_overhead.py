"""What W&B tracking costs a whole job on the CPU: ``python -m trainjob`` with
``WANDB_MODE=offline`` against the same job with ``WANDB_MODE=disabled``, in interleaved pairs,
at the tutorial's settings (the defaults: watch all every 10 batches, a row every 25).

    python bench/tracking_overhead.py                       # 3 pairs, 5 epochs, real MNIST [::5]
    python bench/tracking_overhead.py --pairs 5 --data DIR  # a folder of the four MNIST .gz files
    python bench/tracking_overhead.py -- --watch_log none   # trainjob flags after --, both sides
    python bench/tracking_overhead.py --breakdown           # also: where an offline job's cost goes
    python bench/tracking_overhead.py --src ../main/src     # another checkout's trainjob

The overhead is ``1 - offline / disabled`` of the training throughput each job reports in its
summary (run.json): ``perf/steady_samples_per_s`` (the loop's samples/s without its first epoch,
as ``bench/cpu.py`` reads it) is the figure held to the 3% goal; ``perf/samples_per_s``
(examples / ``perf/train_s``: the whole loop, warm-up and per-epoch evaluations included, the
figure a user reads in the job's last line) and the process's wall time (W&B's start and finish,
the ONNX export: fixed costs a longer job amortises) are printed beside it.

Each job is a fresh process; a pair runs both modes back to back, alternating which goes first,
so that load from other processes on the machine hits both alike; figures are the median and
range over pairs. Beside each job: its CPU seconds (the job's process, and W&B's service,
``wandb-core``, a separate Go process read from /proc while it lives), to tell "W&B takes CPU
time from a job that uses every core" from "the job's own thread does more".

``--breakdown`` runs one job of each mode with its training loop instrumented: the time the
training thread spends in each part of tracking (the watcher's hooks and statistics, the log
path and its histograms) and the CPU time every other thread and process (wandb-core, its
system monitor, W&B's Python threads, the lease heartbeat) spends while the loop runs, each as a
share of the loop's wall time. Shares of one job's own loop hold up under load from other
processes far better than the difference between two jobs' throughputs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cpu import find_data, hardware, spread  # bench/ is not a package

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"  # the trainjob the jobs run (--src: another checkout's)
SLICE = 5  # the tutorial's [::5]; --data-slice for a quick check
TICK = os.sysconf("SC_CLK_TCK")
MODES = ("disabled", "offline")


@dataclass
class Job:
    """One job's figures."""

    steady: float  # perf/steady_samples_per_s
    rate: float  # perf/samples_per_s
    wall: float  # the process, start to exit, seconds
    cpu: float  # CPU seconds of the job's process (and the children it waited for)
    service_cpu: float = 0.0  # CPU seconds of the processes it started (wandb-core, wandb-symon)


def cpu_flags() -> str:
    """The CPU's native bf16 flags, named with every figure (the same machine kind has been
    CPUs with and without them)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                wanted = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
                return ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in wanted)
    except OSError:
        pass
    return "flags unknown"


def _stat(pid: str) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds) of a process, from /proc/<pid>/stat."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1 : text.rindex(")")]
    rest = text[text.rindex(")") + 2 :].split()
    return int(rest[1]), name, (int(rest[11]) + int(rest[12])) / TICK


class Descendants(threading.Thread):
    """Samples the CPU time of every process below ``root`` (not ``root`` itself) every
    ``every`` seconds; keeps each one's last value (its final ~0.1 s may be missed)."""

    def __init__(self, root: int, every: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.root, self.every = root, every
        self.seen: dict[int, tuple[str, float]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.run_once()

    def run_once(self) -> None:
        table = {}
        for pid in os.listdir("/proc"):
            if pid.isdigit() and (found := _stat(pid)) is not None:
                table[int(pid)] = found
        for pid, (parent, name, cpu) in table.items():
            hops = 0
            while parent not in (self.root, 0, 1) and parent in table and hops < 16:
                parent, hops = table[parent][0], hops + 1
            if parent == self.root:
                self.seen[pid] = (name, cpu)

    def by_name(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for name, cpu in self.seen.values():
            totals[name] = totals.get(name, 0.0) + cpu
        return totals


def job_env(work: Path, mode: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAINJOB_", "WANDB_"))}
    env.update(
        PYTHONPATH=str(SRC),
        WANDB_MODE=mode,
        WANDB_DIR=str(work),
        WANDB_SILENT="true",
        TRAINJOB_OUTPUT_DIR=str(work / "outputs"),
        TRAINJOB_CACHE_DIR=str(work.parent / "cache"),  # shared: the data unpacked once
        TRAINJOB_PROGRESS="false",
    )
    return env


def run_job(
    work: Path, data: Path, epochs: int, mode: str, extra: list[str], probe: Path | None = None
) -> Job:
    """One ``python -m trainjob`` job in the fresh folder ``work``, W&B in ``mode``;
    ``probe``: instrumented (``--breakdown``), its figures written there."""
    work.mkdir(parents=True)
    argv = ["--data_dir", str(data), "--epochs", str(epochs), "--data_slice", str(SLICE), *extra]
    command = ["-m", "trainjob"] if probe is None else [__file__, "--probe", str(probe), "--"]
    log = (work / "job.log").open("w")
    start = time.perf_counter()
    child = subprocess.Popen(
        [sys.executable, *command, *argv],
        env=job_env(work, mode),
        cwd=work,
        stdout=log,
        stderr=log,
    )
    sampler = Descendants(child.pid)
    sampler.start()
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    child.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    if child.returncode != 0:
        sys.exit(f"bench: a {mode} job failed ({child.returncode}), see {work / 'job.log'}")
    summary = json.loads((work / "outputs" / "run.json").read_text())["summary"]
    return Job(
        steady=summary["perf/steady_samples_per_s"],
        rate=summary["perf/samples_per_s"],
        wall=wall,
        cpu=usage.ru_utime + usage.ru_stime,
        service_cpu=sum(sampler.by_name().values()),
    )


def overhead(offline: float, disabled: float) -> float:
    """Per cent of the disabled job's throughput the offline job loses."""
    return 100 * (1 - offline / disabled)


def slower(offline: float, disabled: float) -> float:
    """Per cent more time the offline job takes."""
    return 100 * (offline / disabled - 1)


def pairs(data: Path, epochs: int, count: int, extra: list[str], tmp: Path) -> list[dict]:
    """``count`` pairs, alternating which mode goes first; prints each as it finishes."""
    done = []
    for i in range(count):
        order = MODES if i % 2 == 0 else MODES[::-1]
        pair = {mode: run_job(tmp / f"p{i}-{mode}", data, epochs, mode, extra) for mode in order}
        off, dis = pair["offline"], pair["disabled"]
        load = os.getloadavg()[0]
        print(
            f"  pair {i + 1}/{count} ({order[0]} first, load {load:.2f}): steady samples/s "
            f"disabled {dis.steady:,.0f} offline {off.steady:,.0f} -> "
            f"{overhead(off.steady, dis.steady):+.1f}%; samples/s "
            f"{overhead(off.rate, dis.rate):+.1f}%; wall {dis.wall:.1f} / {off.wall:.1f} s; "
            f"CPU s: job {dis.cpu:.1f} / {off.cpu:.1f}, W&B's processes {off.service_cpu:.1f}",
            flush=True,
        )
        done.append(pair)
    return done


def report(done: list[dict]) -> None:
    def per_pair(field_: str, f) -> list[float]:
        return [f(getattr(p["offline"], field_), getattr(p["disabled"], field_)) for p in done]

    steady = per_pair("steady", overhead)
    print(f"\nmedian [min..max] over {len(done)} pairs:")
    for mode in MODES:
        jobs = [p[mode] for p in done]
        print(
            f"  {mode:8s}  steady samples/s {spread([j.steady for j in jobs])}  samples/s "
            f"{spread([j.rate for j in jobs])}  wall {spread([j.wall for j in jobs], '{:.1f}')} s"
            f"  job CPU {spread([j.cpu for j in jobs], '{:.1f}')} s"
        )
    service = [p["offline"].service_cpu for p in done]
    print(
        "  CPU of W&B's processes (wandb-core, its wandb-symon) per offline job: "
        f"{spread(service, '{:.2f}')} s"
    )
    print(
        "tracking overhead, offline vs disabled (per pair, median [min..max]):\n"
        f"  steady samples/s  {spread(steady, '{:+.1f}')}%  (goal <= 3%)  "
        f"pairs: {', '.join(f'{x:+.1f}' for x in steady)}\n"
        f"  samples/s         {spread(per_pair('rate', overhead), '{:+.1f}')}%\n"
        f"  wall time         {spread(per_pair('wall', slower), '{:+.1f}')}%"
    )


# --- --breakdown: one job's loop, instrumented -------------------------------------------------

# (modules, class, method, label): the parts of tracking timed on the training thread, the
# first module that has the class (later ones: where older checkouts kept it, for --src).
# Indented labels are part of the one above them (its time includes theirs).
WATCH, HISTORY, RUN = (
    ("trainjob.tracking.watch", "trainjob.watch"),
    ("trainjob.tracking.history", "trainjob.history"),
    ("trainjob.tracking.run", "trainjob.tracking"),
)
TIMED = [
    (WATCH, "Watcher", "forward_event", "watcher: parameter hook"),
    (WATCH, "Watcher", "_grad_event", "watcher: gradient hooks"),
    (WATCH, "Watcher", "_record", "  of which the statistics"),
    (HISTORY, "History", "log", "log path (History.log -> run.log)"),
    (RUN, "Tracker", "_flush_histograms", "  of which the histograms"),
]


def _owner(modules: tuple[str, ...], name: str) -> type:
    import importlib

    for module in modules:
        with contextlib.suppress(ImportError):
            found = getattr(importlib.import_module(module), name, None)
            if isinstance(found, type):
                return found
    raise SystemExit(f"bench: no {name} in {', '.join(modules)}")


def _timed(timers: dict[str, list[float]], label: str, function):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            entry = timers.setdefault(label, [0, 0.0])
            entry[0] += 1
            entry[1] += time.perf_counter() - start

    return wrapper


def cpu_by_thread() -> dict[str, float]:
    """CPU seconds so far of this process's threads (by Python thread name; the main thread is
    the training thread and OpenMP's first; nameless ones are OpenMP's others) and of the
    processes below it (by command name)."""
    me, names = os.getpid(), {t.native_id: t.name for t in threading.enumerate()}
    seconds: dict[str, float] = {}
    for tid in os.listdir(f"/proc/{me}/task"):
        found = _stat(f"{me}/task/{tid}")
        if found is not None:
            name = "training thread" if int(tid) == me else names.get(int(tid), "OpenMP workers")
            seconds[name] = seconds.get(name, 0.0) + found[2]
    sampler = Descendants(me)
    sampler.run_once()
    for name, cpu in sampler.by_name().items():
        seconds[name] = seconds.get(name, 0.0) + cpu
    return seconds


def probe_worker(argv: list[str], out: Path) -> None:
    """``python -m trainjob ARGV`` in this process with its loop instrumented; the figures as
    JSON in ``out``."""
    import importlib

    from trainjob import train as loop
    from trainjob.__main__ import main as trainjob_main  # not cli(): its os._exit ends us too

    timers: dict[str, list[float]] = {}
    for modules, owner, name, label in TIMED:
        cls = _owner(modules, owner)
        setattr(cls, name, _timed(timers, label, getattr(cls, name)))
    result: dict[str, object] = {"timed": timers}
    original = loop.train

    def train(*args, **kwargs):
        before, start = cpu_by_thread(), time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            result["loop_s"] = time.perf_counter() - start
            result["load"] = os.getloadavg()[0]
            after = cpu_by_thread()
            result["cpu"] = {k: v - before.get(k, 0.0) for k, v in after.items()}

    loop.train = train  # what job.py imports at its start (or, in older checkouts, later)
    job = importlib.import_module("trainjob.job")
    if getattr(job, "train", None) is original:
        job.train = train
    result["code"] = trainjob_main(argv)
    out.write_text(json.dumps(result))


def breakdown(data: Path, epochs: int, extra: list[str], tmp: Path) -> None:
    """One instrumented job per mode; each part as a share of its own loop's wall time."""
    found = {}
    for mode in MODES:
        out = tmp / f"breakdown-{mode}.json"
        run_job(tmp / f"breakdown-{mode}", data, epochs, mode, extra, probe=out)
        found[mode] = json.loads(out.read_text())
    print(
        f"\nwhere the time goes (one job per mode, {epochs} epochs; share of its loop's wall time):"
    )
    for mode, figures in found.items():
        loop = figures["loop_s"]
        print(f"  {mode}: training loop {loop:.2f} s (load {figures['load']:.2f} at its end)")
        for label in [t[3] for t in TIMED]:
            calls, seconds = figures["timed"].get(label, (0, 0.0))
            if calls:
                print(
                    f"    {label:44s} {1e3 * seconds:8.1f} ms {100 * seconds / loop:6.2f}%  "
                    f"({calls} calls)"
                )
        print("    CPU time while the loop ran, by thread / process:")
        for name, seconds in sorted(figures["cpu"].items(), key=lambda kv: -kv[1]):
            print(f"      {name:42s} {seconds:8.2f} s  {100 * seconds / loop:6.2f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="folder with the four MNIST *-ubyte.gz files")
    parser.add_argument("--pairs", type=int, default=3, help="offline/disabled pairs (0: none)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per job (first = warm-up)")
    parser.add_argument("--breakdown", action="store_true", help="also: where the time goes")
    parser.add_argument("--src", type=Path, help="the src/ folder of the trainjob to run")
    parser.add_argument("--data-slice", type=int, default=5, help="every n-th example (5)")
    parser.add_argument("--probe", type=Path, help=argparse.SUPPRESS)  # internal: one job
    parser.add_argument("extra", nargs="*", help="trainjob flags for both sides, after --")
    args = parser.parse_args()
    if args.probe:
        probe_worker(args.extra, args.probe)
        return
    global SRC, SLICE
    SRC, SLICE = (args.src.resolve() if args.src else SRC), args.data_slice
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    data = find_data(args.data)
    print(f"hardware: {hardware()}; {cpu_flags()}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"config: trainjob defaults (watch all every 10, a row every 25 batches), MNIST "
        f"[::{SLICE}] from {data}, {args.epochs} epochs, trainjob from {SRC}, extra flags: "
        f"{' '.join(args.extra) or 'none'}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="trainjob-overhead-") as name:
        # Not timed: unpacks the data and builds the ONNX template into the shared cache, which
        # only the first job of a cache would pay.
        run_job(Path(name) / "warm-up", data, 2, "disabled", args.extra)
        done = pairs(data, args.epochs, args.pairs, args.extra, Path(name))
        if done:  # --pairs 0: the breakdown alone
            report(done)
        if args.breakdown:
            breakdown(data, args.epochs, args.extra, Path(name))
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
