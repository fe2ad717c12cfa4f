"""Progress a log can follow: plain lines when stderr is not a terminal, the bar on one."""

from __future__ import annotations

import io
import re
from pathlib import Path

import torch
from helpers import clean_env, run_cli
from tqdm.auto import tqdm

from trainjob import data
from trainjob.model import ConvNet
from trainjob.progress import LineProgress, display
from trainjob.train import LoopConfig, Progress, Report, make_optimizer, train

LINE = re.compile(
    r"^trainjob: progress epoch (\d+)/(\d+) step (\d+)/(\d+) \((\d+)%\) loss (\S+) "
    r"samples/s ([\d,]+) eta (\d+:\d\d:\d\d|-)$"
)


def test_cli_with_stderr_piped_prints_plain_lines(tiny_data: Path, tmp_path: Path) -> None:
    """The default TRAINJOB_PROGRESS=true with stderr a pipe (kubectl/docker logs): lines, no
    bar. A tiny TRAINJOB_PROGRESS_EVERY_S makes the time-based line fire between epoch ends."""
    env = clean_env(
        tmp_path,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_PROGRESS="true",
        TRAINJOB_PROGRESS_EVERY_S="0.001",
        TRAINJOB_LOG_EVERY="4",
    )
    result = run_cli(["--epochs", "2", "--batch_size", "32"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr, result.stderr[-2000:]
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("trainjob: progress")]
    print("\n".join([*lines[:3], "...", *lines[-2:]]))
    parsed = [LINE.match(ln) for ln in lines]
    assert all(parsed), [ln for ln, m in zip(lines, parsed, strict=True) if not m]
    steps = [(int(m[1]), int(m[3]), int(m[4])) for m in parsed if m]
    # 512 examples / 32 = 16 batches per epoch; the epoch-end lines are at 16 and 32 of 32.
    assert (1, 16, 32) in steps and steps[-1] == (2, 32, 32)
    assert len(lines) > 2, "the time-based line never fired between the epoch ends"
    assert [s for _, s, _ in steps] == sorted(s for _, s, _ in steps)
    last = parsed[-1]
    assert last is not None and float(last[6]) >= 0  # a loss was logged (not "-")


def _loop(every_s: float, epochs: int = 3) -> list[str]:
    split = data.Split(*(torch.from_numpy(a) for a in _arrays()))
    torch.manual_seed(0)
    model = ConvNet([4, 8], 10)
    cfg = LoopConfig(epochs=epochs, batch_size=16, log_every=3, seed=0)
    progress = Progress()
    stream = io.StringIO()
    bar = LineProgress(progress, epochs, every_s, stream)
    criterion = torch.nn.CrossEntropyLoss()
    report = Report(_NullTracker(), progress, bar=bar)
    train(model, make_optimizer(model, 0.005), criterion, split, cfg, report)
    return stream.getvalue().splitlines()


def _arrays():
    from helpers import synthetic_split

    images, labels = synthetic_split(64, 0)
    return images[:, None], labels.astype("int64")


class _NullTracker:
    def log(self, metrics, step: int) -> None:
        return None


def test_every_s_zero_prints_one_line_per_epoch() -> None:
    lines = _loop(every_s=0)
    assert len(lines) == 3, lines
    assert [LINE.match(ln)[3] for ln in lines] == ["4", "8", "12"]  # type: ignore[index]
    assert lines[-1].endswith("eta 0:00:00")


def test_a_terminal_gets_the_bar_a_pipe_gets_lines() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert display(Progress(), 1, True, 30.0, Tty()) is tqdm
    assert isinstance(display(Progress(), 1, True, 30.0, io.StringIO()), LineProgress)
    assert isinstance(display(Progress(), 1, False, 30.0, Tty()), LineProgress)
