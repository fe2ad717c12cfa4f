"""``trainjob sync`` end to end: real offline runs (one interrupted by SIGTERM and resumed, one
finished) uploaded by the real ``wandb sync`` to the stand-in server (tests/fake_wandb.py), then
against a server that never answers and a closed port."""

from __future__ import annotations

import secrets
import shutil
import sys
import time
from pathlib import Path

import pytest
from fake_wandb import fake_wandb, silent_listener
from helpers import ROOT, clean_env, offline_runs, read_offline_run, run_cli

CANARY = f"canary-{secrets.token_hex(20)}"  # a well-formed key (40+ chars) no server knows
ARGS = ["--epochs", "1", "--batch_size", "32"]  # 512 examples: 16 steps
STALL_S = 3


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A WANDB_DIR with run ``resumed`` in two folders (SIGTERM at step 8, then rerun to the end)
    and run ``single`` in one; nothing synced. Tests work on copies."""
    import subprocess

    tmp = tmp_path_factory.mktemp("sync-runs")
    env = clean_env(
        tmp,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_LOG_EVERY="2",
        TRAINJOB_CHECKPOINT_EVERY_S="0",
        TRAINJOB_CHECKPOINT_EVERY_STEPS="4",
    )
    driver = [sys.executable, str(ROOT / "tests" / "preempt_driver.py"), "TERM@step:8"]
    first = subprocess.run(
        [*driver, *ARGS, "--run_id", "resumed"],
        env=env,
        cwd=tmp,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert first.returncode == 143, first.stderr  # checkpointed, resumable
    for run_id in ("resumed", "single"):
        done = run_cli([*ARGS, "--run_id", run_id], env, tmp)
        assert done.returncode == 0, done.stderr
    assert "trainjob sync " in done.stdout  # the job's own upload hint
    return tmp


def copy_of(runs: Path, tmp: Path) -> Path:
    target = tmp / "wandb-dir"
    shutil.copytree(runs / "wandb", target / "wandb", symlinks=True)
    return target


def sync_env(tmp: Path, url: str) -> dict[str, str]:
    return clean_env(tmp, WANDB_MODE="online", WANDB_API_KEY=CANARY, WANDB_BASE_URL=url)


def test_sync_uploads_each_row_once_in_order_then_nothing(runs: Path, tmp_path: Path) -> None:
    wandb_dir = copy_of(runs, tmp_path)
    folders = offline_runs(wandb_dir)
    assert [f.name.rsplit("-", 1)[1] for f in folders].count("resumed") == 2
    local = {
        run_id: [
            h["_step"]
            for f in folders
            if f.name.endswith(f"-{run_id}")
            for h in read_offline_run(f).history
        ]
        for run_id in ("resumed", "single")
    }
    with fake_wandb("ok", tmp_path) as server:
        env = sync_env(tmp_path, server.url)
        started = time.monotonic()
        result = run_cli(["sync", str(wandb_dir)], env, tmp_path, timeout=120)
        print(f"trainjob sync: {time.monotonic() - started:.1f} s")
        assert result.returncode == 0, result.stderr
        assert not server.unknown_ops()
        streams = [r for r in server.requests() if "history" in r]
        for run_id, steps in local.items():
            got = [s for r in streams if r["run"] == run_id for s in r["history"]]
            assert got == sorted(set(got)) == steps  # each row once, in step order
        # both folders of the resumed run, oldest first: the interrupted one ended with 143
        ends = [r["exitcode"] for r in streams if r["run"] == "resumed" and "exitcode" in r]
        assert ends == [143, 0]
        assert "uploaded resumed: 2 folder(s) (1 resumed)" in result.stdout
        assert "uploaded single: 1 folder(s)," in result.stdout
        assert "2 run(s) uploaded" in result.stdout.splitlines()[-1]
        assert all(list(f.glob("*.wandb.synced")) for f in folders)
        assert CANARY not in result.stdout + result.stderr

        before = len(server.requests())
        again = run_cli(["sync", str(wandb_dir)], env, tmp_path, timeout=120)
        assert again.returncode == 0, again.stderr
        assert again.stdout.startswith("trainjob sync: nothing to upload")
        assert len(again.stdout.splitlines()) == 1
        assert len(server.requests()) == before  # not a single request


def test_silent_then_refusing_server_exits_8(runs: Path, tmp_path: Path) -> None:
    wandb_dir = copy_of(runs, tmp_path)
    flags = ["--sync_stall_s", str(STALL_S)]
    with silent_listener() as silent:
        started = time.monotonic()
        result = run_cli(["sync", str(wandb_dir), *flags], sync_env(tmp_path, silent.url), tmp_path)
        seconds = time.monotonic() - started
    print(f"silent server: exit {result.returncode} after {seconds:.1f} s")
    assert result.returncode == 8, result.stderr
    assert seconds < STALL_S + 8
    (line,) = result.stderr.splitlines()
    assert line.startswith("trainjob: error: W&B server ") and silent.url in line
    assert f"TRAINJOB_SYNC_STALL_S={STALL_S}s" in line and "2 left" in line
    assert not list(wandb_dir.glob("wandb/*/*.synced"))

    with fake_wandb("refuse", tmp_path) as closed:
        started = time.monotonic()
        result = run_cli(["sync", str(wandb_dir)], sync_env(tmp_path, closed.url), tmp_path)
        seconds = time.monotonic() - started
    print(f"refused: exit {result.returncode} after {seconds:.1f} s")
    assert result.returncode == 8, result.stderr
    assert seconds < 5
    (line,) = result.stderr.splitlines()
    assert "refused" in line and closed.url in line
    assert not list(wandb_dir.glob("wandb/*/*.synced"))


def test_rejected_key_and_missing_path_exit_2(runs: Path, tmp_path: Path) -> None:
    wandb_dir = copy_of(runs, tmp_path)
    with fake_wandb("401", tmp_path) as server:
        result = run_cli(["sync", str(wandb_dir)], sync_env(tmp_path, server.url), tmp_path)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.splitlines()
    assert "rejected WANDB_API_KEY (HTTP 401)" in line and CANARY not in line
    missing = run_cli(["sync", str(tmp_path / "nowhere")], sync_env(tmp_path, server.url), tmp_path)
    assert missing.returncode == 2 and "does not exist" in missing.stderr


def same_second_copy(runs: Path, tmp: Path) -> tuple[Path, Path, Path]:
    """A copy whose resumed run's second process started in the first one's second: wandb then
    names its folder as the first's with ``-1`` added (the name exists), so the folder's tail is
    not the run id; the run file inside (``run-resumed.wandb``) says whose it is."""
    wandb_dir = copy_of(runs, tmp)
    first, second = sorted((wandb_dir / "wandb").glob("offline-run-*-resumed"))
    suffixed = second.rename(first.with_name(f"{first.name}-1"))
    return wandb_dir, first, suffixed


def test_a_folder_wandb_suffixed_with_1_is_uploaded_as_the_runs_next_part(
    runs: Path, tmp_path: Path
) -> None:
    wandb_dir, first, suffixed = same_second_copy(runs, tmp_path)
    steps = [h["_step"] for f in (first, suffixed) for h in read_offline_run(f).history]
    with fake_wandb("ok", tmp_path) as server:
        # The suffixed folder alone selects its whole run, as any run folder does.
        result = run_cli(["sync", str(suffixed)], sync_env(tmp_path, server.url), tmp_path)
        assert result.returncode == 0, result.stderr
        streams = [r for r in server.requests() if "history" in r and r["run"] == "resumed"]
    got = [s for r in streams if "history" in r for s in r["history"]]
    assert got == sorted(set(got)) == steps  # each row of both parts once, in order
    assert [r["exitcode"] for r in streams if "exitcode" in r] == [143, 0]
    assert "uploaded resumed: 2 folder(s) (1 resumed)" in result.stdout
    assert list(first.glob("*.wandb.synced")) and list(suffixed.glob("*.wandb.synced"))
    assert not list((wandb_dir / "wandb").glob("*-single/*.synced"))  # not selected


def test_a_resumed_job_counts_the_rows_of_a_suffixed_folder(runs: Path, tmp_path: Path) -> None:
    """The history floor of a third process: the highest step in both earlier folders, the
    suffixed one included (missing it would log its rows a second time)."""
    from trainjob.tracking.history import earlier_transaction_logs, last_history_step

    wandb_dir, first, suffixed = same_second_copy(runs, tmp_path)
    third = wandb_dir / "wandb" / "offline-run-29991231_235959-resumed"
    third.mkdir()
    logs = earlier_transaction_logs(third, "resumed")
    assert logs == [first / "run-resumed.wandb", suffixed / "run-resumed.wandb"]
    assert last_history_step(logs[1]) == max(h["_step"] for h in read_offline_run(suffixed).history)
    (single,) = (wandb_dir / "wandb").glob("offline-run-*-single")
    assert earlier_transaction_logs(third, "single") == [single / "run-single.wandb"]
    assert earlier_transaction_logs(third, "resume") == []  # a prefix of an id is not the id
