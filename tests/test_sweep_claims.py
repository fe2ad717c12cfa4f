"""Several `trainjob sweep run` drivers on one sweep file and one set of folders (two shells, or
pods on one volume): each point is claimed (sweep/local.py, records.Lease at
``<trial folder>/claim.json``) and runs exactly once. Real driver processes, real trials, offline
W&B runs read back from their files.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import clean_env, offline_runs, read_offline_run

from trainjob.settings import load_settings
from trainjob.sweep.local import LocalSweep, Options, Point, sweep_group
from trainjob.sweep.spec import load_sweep

NAME = "claims"


def sweep_file(folder: Path, seeds: list[int], name: str = NAME) -> Path:
    config = {"name": name, "method": "grid", "parameters": {"seed": {"values": seeds}}}
    path = folder / f"{name}-{len(seeds)}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def driver_env(tmp: Path, data: Path, **overrides: str) -> dict[str, str]:
    return clean_env(
        tmp,
        TRAINJOB_DATA_DIR=str(data),
        TRAINJOB_DATA_SLICE="1",
        TRAINJOB_EPOCHS="1",
        TRAINJOB_BATCH_SIZE="64",
        TRAINJOB_WATCH_LOG="none",
        **overrides,
    )


def start_driver(path: Path, env: dict[str, str], tmp: Path, *flags: str) -> subprocess.Popen:
    # A session of its own: killing its process group kills the driver, its fork server and
    # its trial together, as losing the pod or the machine does.
    return subprocess.Popen(
        [sys.executable, "-m", "trainjob", "sweep", "run", str(path), *flags],
        env=env,
        cwd=tmp,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float = 420) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"driver still running after {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def point_records(tmp: Path) -> dict[str, list[dict]]:
    """Per trial folder, the run records of every run trained in it (one folder per run id)."""
    root = tmp / "outputs" / "sweeps" / NAME
    return {
        folder.name: [json.loads(p.read_text()) for p in sorted(folder.glob("*/run.json"))]
        for folder in sorted(root.iterdir())
        if folder.is_dir()
    }


def run_ids(tmp: Path) -> list[str]:
    """The W&B run id of each offline run folder (a resumed run has one folder per process)."""
    return [p.name.rsplit("-", 1)[1] for p in offline_runs(tmp)]


def test_two_drivers_run_each_point_once(tmp_path: Path, tiny_data: Path) -> None:
    path = sweep_file(tmp_path, [1, 2, 3])
    env = driver_env(tmp_path, tiny_data)
    started = time.monotonic()
    drivers = [start_driver(path, env, tmp_path, "--lease_ttl_s=3") for _ in range(2)]
    (rc_a, out_a, err_a), (rc_b, out_b, err_b) = [finish(d) for d in drivers]
    print(f"two drivers, 3 points: {time.monotonic() - started:.1f} s")
    assert (rc_a, rc_b) == (0, 0), (out_a + err_a)[-3000:] + (out_b + err_b)[-3000:]

    per_point = point_records(tmp_path)
    assert len(per_point) == 3
    for key, runs in per_point.items():
        assert [r["exit_code"] for r in runs] == [0], key  # one run per trial folder
    assert sorted(run_ids(tmp_path)) == sorted(r["run_id"] for rs in per_point.values() for r in rs)

    # Each point ran in exactly one driver; the other says it skipped it (held) or kept it
    # (already finished when it got there).
    for key in per_point:
        ran = [out for out in (out_a, out_b) if f"trial {key} exited 0" in out]
        assert len(ran) == 1, key
        other = out_b if ran[0] is out_a else out_a
        said = re.search(rf"trial {key} (is being run by .+; skipped|already finished)", other)
        assert said, (key, other)
    skipped = re.findall(r"trial (\S+) is being run by host \S+, pid \d+, since .+; skipped", out_a)
    skipped += re.findall(
        r"trial (\S+) is being run by host \S+, pid \d+, since .+; skipped", out_b
    )
    assert skipped  # started together, each found the other's claim at least once
    assert not list(tmp_path.glob("outputs/sweeps/*/*/claim.json"))  # every claim released

    # Grouped by the sweep's name and its file's hash; tagged with the name and the point.
    group = sweep_group(NAME, path.read_bytes())
    for run_dir in offline_runs(tmp_path):
        info = read_offline_run(run_dir).run_info
        key = info["display_name"].removeprefix(f"{NAME}-")
        assert info["run_group"] == group
        assert info["tags"] == [NAME, key] and key in per_point


def test_a_killed_drivers_point_is_resumed_by_the_next(tmp_path: Path, tiny_data: Path) -> None:
    """The first driver dies with SIGKILL (its whole process group: driver, fork server and
    trial, as when a pod or machine is lost) while its first trial trains; its claim and the
    trial's run lease are left behind. A driver started afterwards takes the point over and
    the trial resumes from its checkpoint; every point ends with one run."""
    path = sweep_file(tmp_path, [1, 2])
    env = driver_env(tmp_path, tiny_data, TRAINJOB_CHECKPOINT_EVERY_STEPS="4")
    first = start_driver(path, env, tmp_path, "--epochs=400")  # far longer than the test
    ckpts = tmp_path / "outputs" / "checkpoints" / "sweeps" / NAME
    deadline = time.monotonic() + 300
    while not list(ckpts.glob("*/*/ckpt-*.pt")) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    (killed,) = {p.parent.parent.name for p in ckpts.glob("*/*/ckpt-*.pt")}
    assert (tmp_path / "outputs" / "sweeps" / NAME / killed / "claim.json").exists()

    started = time.monotonic()
    rc, out, err = finish(start_driver(path, env, tmp_path, "--lease_ttl_s=2", "--epochs=1"))
    print(f"second driver: {time.monotonic() - started:.1f} s")
    assert rc == 0, (out + err)[-3000:]
    assert re.search(r"trainjob: resuming from \S+ckpt-\d+\.pt at step [1-9]", err), err[-3000:]
    per_point = point_records(tmp_path)
    assert len(per_point) == 2
    assert all([r["exit_code"] for r in runs] == [0] for runs in per_point.values())
    resumed = per_point[killed][0]["run_id"]
    # The killed trial's run went on in a second process (a second offline folder, same id).
    ids = run_ids(tmp_path)
    assert sorted(set(ids)) == sorted(rs[0]["run_id"] for rs in per_point.values())
    assert ids.count(resumed) == 2 and len(ids) == 3


def test_a_waiting_driver_resumes_a_point_whose_driver_got_sigterm(
    tmp_path: Path, tiny_data: Path
) -> None:
    """Driver A trains point 0 (long); driver B, started later, skips it, runs point 1 and
    waits. A gets SIGTERM: its trial checkpoints (143), A releases the claim and exits 143; B
    claims the point and resumes the trial from A's checkpoint; each point has one run."""
    path = sweep_file(tmp_path, [1, 2])
    env = driver_env(tmp_path, tiny_data, TRAINJOB_CHECKPOINT_EVERY_STEPS="4")
    first = start_driver(path, env, tmp_path, "--epochs=400")
    ckpts = tmp_path / "outputs" / "checkpoints" / "sweeps" / NAME
    deadline = time.monotonic() + 300
    while not list(ckpts.glob("*/*/ckpt-*.pt")) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.2)
    second = start_driver(path, env, tmp_path, "--epochs=1")
    while len(point_records(tmp_path)) < 2 and time.monotonic() < deadline:  # B ran point 1
        assert second.poll() is None, second.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # B is waiting for point 0 now
    first.send_signal(signal.SIGTERM)  # the driver alone, as `kill PID` or a pod's PID 1
    rc_a, out_a, err_a = finish(first)
    rc_b, out_b, err_b = finish(second)
    assert rc_a == 143, (out_a + err_a)[-3000:]
    assert rc_b == 0, (out_b + err_b)[-3000:]
    (held,) = re.findall(r"trial (\S+) is being run by .+; skipped", out_b)
    assert f"waiting for trial(s) other drivers run: {held}" in out_b
    assert "SIGTERM: sweep stopped" in err_a and "Traceback" not in err_a
    assert f"trial {held} exited 0" in out_b
    assert re.search(r"trainjob: resuming from \S+ckpt-\d+\.pt at step [1-9]", err_b)
    per_point = point_records(tmp_path)
    assert all([r["exit_code"] for r in runs] == [0] for runs in per_point.values())
    ids = run_ids(tmp_path)  # the resumed run: two offline folders, one id
    assert sorted(set(ids)) == sorted(rs[0]["run_id"] for rs in per_point.values())
    assert ids.count(per_point[held][0]["run_id"]) == 2 and len(ids) == 3


def test_group_is_the_name_and_the_files_hash(tmp_path: Path) -> None:
    """Two different sweep files with the same name: two groups. The group and tags reach
    each trial's environment (the trials' W&B runs are read back above)."""
    one = sweep_file(tmp_path, [1, 2])
    (tmp_path / "b").mkdir()
    two = sweep_file(tmp_path / "b", [3, 4])
    groups = set()
    for path in (one, two):
        sweep = LocalSweep(load_sweep(path), load_settings([]), Options(), {}, path.read_bytes())
        env = sweep.env(Point(0, {"seed": 1}))
        groups.add(env["TRAINJOB_GROUP"])
        assert re.fullmatch(rf"{NAME}-[0-9a-f]{{8}}", env["TRAINJOB_GROUP"])
        assert json.loads(env["TRAINJOB_TAGS"]) == [NAME, Point(0, {"seed": 1}).key]
    assert len(groups) == 2
    assert sweep_group(NAME, one.read_bytes()) == sweep_group(NAME, one.read_bytes())
