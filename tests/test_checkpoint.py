"""Checkpoint files, the signal flag and the W&B history guard, in process (fast)."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path

import pytest
import torch

from trainjob import checkpoint, identity
from trainjob.errors import Preempted, StorageError, TrialStopped
from trainjob.interrupt import STOP_SIGNAL, Interrupt
from trainjob.model import ConvNet
from trainjob.settings import Settings
from trainjob.tracking import history
from trainjob.train import Progress


def make(tmp: Path, every_steps: int = 0) -> checkpoint.Checkpointer:
    torch.manual_seed(0)
    model = ConvNet([4, 8], 10).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model(torch.rand(2, 1, 28, 28)).sum().backward()
    optimizer.step()  # the optimizer has state (exp_avg, step) worth saving
    return checkpoint.Checkpointer(tmp / "ckpt", model, optimizer, Interrupt(), every_steps)


def test_encode_decode_detects_any_damage() -> None:
    blob = checkpoint.encode({"x": torch.arange(5)})
    assert torch.equal(checkpoint.decode(blob)["x"], torch.arange(5))
    flipped = bytearray(blob)
    flipped[-3] ^= 0x01
    for bad in (blob[: len(blob) // 2], bytes(flipped), b"", b"PK\x03\x04 a zip, not ours"):
        with pytest.raises(ValueError):
            checkpoint.decode(bad)


def test_write_atomic_leaves_old_file_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "f"
    checkpoint.write_atomic(target, b"old")
    (tmp_path / "sub").mkdir()
    with pytest.raises(StorageError, match="previous file is kept"):
        checkpoint.write_atomic(tmp_path / "sub", b"new")  # a folder cannot be replaced
    assert target.read_bytes() == b"old"
    assert not list(tmp_path.glob(".*.tmp"))  # no temp file left behind


def test_save_restore_round_trip(tmp_path: Path) -> None:
    saver = make(tmp_path)
    saver.meta = {"run_id": "abc"}
    saver.extra = lambda: {"history": [(64, {"loss": 0.5})]}
    progress = Progress(epoch=1, batch=3, step=19, examples_seen=608)
    saver.save(progress)
    torch.manual_seed(123)
    random.seed(5)
    saver.save(progress)  # same step: replaces the file, now with this RNG state
    expected = (torch.rand(3), random.random())  # what a resumed job must draw next

    other = make(tmp_path)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    state = checkpoint.load_latest(tmp_path / "ckpt")
    assert state is not None and state["run_id"] == "abc"
    assert state["history"] == [(64, {"loss": 0.5})]
    assert checkpoint.restore(state, other.model, other.optimizer) == progress
    assert checkpoint.weights_sha256(other.model) == checkpoint.weights_sha256(saver.model)
    assert str(other.optimizer.state_dict()) == str(saver.optimizer.state_dict())
    torch.manual_seed(999)
    checkpoint.restore_rng(state["rng"])
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]


def test_keeps_the_last_two_and_drops_stale_future_ones(tmp_path: Path) -> None:
    saver = make(tmp_path)
    directory = tmp_path / "ckpt"
    directory.mkdir()
    (directory / "ckpt-000000000900.pt").write_bytes(b"from a future we did not resume from")
    for step in (1, 2, 3):
        saver.save(Progress(step=step))
    assert [p.name for p in checkpoint.checkpoints(directory)] == [
        "ckpt-000000000003.pt",
        "ckpt-000000000002.pt",
    ]


def test_damaged_newest_falls_back_and_is_set_aside(tmp_path: Path, capsys) -> None:
    saver = make(tmp_path)
    for step in (5, 10):
        saver.save(Progress(step=step))
    newest = tmp_path / "ckpt" / "ckpt-000000000010.pt"
    newest.write_bytes(newest.read_bytes()[:-100])
    state = checkpoint.load_latest(tmp_path / "ckpt")
    assert state is not None and state["progress"]["step"] == 5
    err = capsys.readouterr().err
    assert "warning: damaged checkpoint" in err and "checksum mismatch" in err
    assert newest.with_name(newest.name + ".damaged").is_file() and not newest.exists()


def test_all_damaged_starts_from_scratch_with_a_warning(tmp_path: Path, capsys) -> None:
    directory = tmp_path / "ckpt"
    directory.mkdir()
    for step in (5, 10):
        (directory / f"ckpt-{step:012d}.pt").write_bytes(b"garbage")
    assert checkpoint.load_latest(directory) is None
    assert "no usable checkpoint" in capsys.readouterr().err
    assert checkpoint.load_latest(directory) is None  # the next start: nothing left to warn about
    assert capsys.readouterr().err == ""
    assert checkpoint.load_latest(tmp_path / "missing") is None


def test_an_unreadable_volume_is_a_storage_error_not_damage(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    (directory / "ckpt-000000000005.pt").mkdir(parents=True)  # reading it raises an OSError
    with pytest.raises(StorageError, match="cannot read checkpoint"):
        checkpoint.load_latest(directory)
    assert (directory / "ckpt-000000000005.pt").exists()  # not set aside


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_signal_sets_a_flag_and_the_next_step_saves_and_stops(tmp_path: Path, signum) -> None:
    saver = make(tmp_path, every_steps=100)
    previous = signal.getsignal(signum)
    saver.interrupt.arm()
    try:
        saver.after_step(Progress(step=1))  # not due: nothing saved
        assert not checkpoint.checkpoints(tmp_path / "ckpt")
        os.kill(os.getpid(), signum)  # the handler runs at once, in this (main) thread
        assert saver.interrupt.signal == signum
        with pytest.raises(Preempted, match=f"{signal.Signals(signum).name}: stopped at step 2"):
            saver.after_step(Progress(step=2))
        assert [p.name for p in checkpoint.checkpoints(tmp_path / "ckpt")] == [
            "ckpt-000000000002.pt"
        ]
        with pytest.raises(Preempted):
            saver.during_eval(Progress(step=2))
        with pytest.raises(Preempted, match="stopped at step 0"):
            saver.before_loop(Progress())  # a signal during setup: save, then stop
        assert "ckpt-000000000000.pt" in {p.name for p in (tmp_path / "ckpt").iterdir()}
    finally:
        saver.interrupt.disarm()
    assert signal.getsignal(signum) == previous


def test_a_sweep_stop_heard_during_start_up_ends_the_trial_at_its_first_hook() -> None:
    """SIGUSR2 before the job is armed is kept (not the default action, which kills), and the
    interrupt, first of the loop's hooks, ends the trial (exit 6) before a checkpoint hook runs;
    a later stop and a later reason change nothing; every handler goes back on ``disarm``."""
    before = {sig: signal.getsignal(sig) for sig in (STOP_SIGNAL, signal.SIGTERM)}
    interrupt = Interrupt()
    interrupt.listen()
    try:
        assert signal.getsignal(signal.SIGTERM) == before[signal.SIGTERM]  # not armed yet
        os.kill(os.getpid(), STOP_SIGNAL)
        interrupt.arm()
        assert interrupt.phase == "training" and interrupt.stop_reason == "stopped by its sweep"
        interrupt.from_wandb()  # the first request wins
        with pytest.raises(TrialStopped, match="stopped by its sweep: ended at step 3"):
            interrupt.after_step(Progress(step=3))
        with pytest.raises(ValueError, match="unknown phase"):
            interrupt.enter("cooling down")
    finally:
        interrupt.disarm()
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_signal_while_finishing_lets_the_job_complete(capfd: pytest.CaptureFixture) -> None:
    """In the finishing phase a SIGTERM is only noted: the job says it completes."""
    interrupt = Interrupt()
    interrupt.arm()
    try:
        interrupt.evaluating()
        interrupt.finishing()
        os.kill(os.getpid(), signal.SIGTERM)
    finally:
        interrupt.disarm()
    assert interrupt.signal == signal.SIGTERM
    assert "got SIGTERM; finishing: training is done" in capfd.readouterr().err


def test_weights_digest_ignores_layout_but_not_values() -> None:
    torch.manual_seed(0)
    model = ConvNet([4, 8], 10)
    digest = checkpoint.weights_sha256(model)
    assert checkpoint.weights_sha256(model.to(memory_format=torch.channels_last)) == digest
    with torch.no_grad():
        model.fc.bias[0] = torch.nextafter(model.fc.bias[0], torch.tensor(1.0))  # one ulp
    assert checkpoint.weights_sha256(model) != digest


class Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log(self, metrics, step: int) -> None:
        self.rows.append((step, dict(metrics)))


def test_history_drops_rows_the_run_already_has_and_replays_lost_ones() -> None:
    tracker = Recorder()
    rows = history.History(tracker, floor=128)
    watched = []
    rows.on_first_row = lambda: watched.append(len(tracker.rows))
    lost = [(64, {"loss": 1.0}), (128, {"loss": 0.9}), (192, {"loss": 0.8})]
    assert rows.replay(lost) == 1
    rows.log({"loss": 0.7}, step=256)
    assert tracker.rows == [(192, {"loss": 0.8}), (256, {"loss": 0.7})]
    assert watched == [1]  # once, right after the first row really logged
    assert rows.skipped == 2
    assert list(rows.rows) == [*lost, (256, {"loss": 0.7})]  # for the next checkpoint


def test_every_run_id_gets_its_own_checkpoint_folder(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    monkeypatch.setenv("WANDB_RUN_ID", "abc123")
    settings = Settings(checkpoint_dir=tmp_path, output_dir=tmp_path / "out", run_id="mine")
    claim = identity.claim(settings, "disabled")
    claim.lease.release()
    assert claim.checkpoint_folder == tmp_path / "mine"  # a plain job: its run id's folder
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep9")
    claim = identity.claim(settings, "disabled")
    claim.lease.release()
    # A (requeued) W&B sweep trial: the agent's id.
    assert claim.checkpoint_folder == tmp_path / "abc123"
