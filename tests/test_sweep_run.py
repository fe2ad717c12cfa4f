"""Offline sweeps end to end on tiny data: every trial a real `trainjob train` process (forked from
the pre-imported server), every trial an offline W&B run read back from its files.

The sweeps run in this pytest process (``main([...])``, the code path of ``python -m trainjob``)
so that all tests share one fork server (tests/test_sweep.py runs the command line itself).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import offline_runs, read_offline_run

from trainjob.__main__ import main
from trainjob.metrics import HISTORY, SUMMARY
from trainjob.sweep.local import Point, Result, bayes_point, sweep_group
from trainjob.sweep.spec import load_sweep


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def trial_records(tmp: Path, name: str) -> dict[str, dict]:
    folder = tmp / "outputs" / "sweeps" / name
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/run.json"))}


def table(out: str, metric: str = "test_accuracy") -> list[list[str]]:
    lines = out.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.split()[:3] == ["trial", "exit", metric])
    rows = []
    for line in lines[start + 1 :]:
        if not line.startswith("  ") or not line.strip():
            break
        rows.append(line.split(maxsplit=3))
    return rows


METRIC = "test_accuracy"
LRS, KERNELS = [0.003, 0.01], [[4, 8], [8, 16]]
GRID = {
    "name": "grid-2x2",
    "method": "grid",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": LRS}, "kernels": {"values": KERNELS}},
}


def test_offline_grid_end_to_end(sweep_env: Path, capsys: pytest.CaptureFixture) -> None:
    path = write(sweep_env / "grid.yaml", GRID)
    assert main(["sweep", "run", str(path)]) == 0
    out = capsys.readouterr().out

    run_dirs = offline_runs(sweep_env)
    assert len(run_dirs) == 4
    runs = [read_offline_run(p) for p in run_dirs]
    points = sorted((r.config["learning_rate"], r.config["kernels"]) for r in runs)
    assert points == sorted((lr, k) for lr in LRS for k in KERNELS)  # exactly the grid
    group = sweep_group("grid-2x2", path.read_bytes())
    assert re.fullmatch(r"grid-2x2-[0-9a-f]{8}", group)
    for run in runs:
        assert run.run_info["run_group"] == group
        assert run.run_info["display_name"].startswith("grid-2x2-00")
        assert run.exit_code == 0 and run.config["epochs"] == 1
        # The metrics sweep.py offers are really logged by a job.
        assert set(SUMMARY) <= set(run.summary)
        assert set(HISTORY) <= {k for row in run.history for k in row}

    rows = table(out)
    accuracies = [float(r[2]) for r in rows]
    assert len(rows) == 4 and accuracies == sorted(accuracies, reverse=True)
    by_name = {r.run_info["display_name"]: r.summary["test_accuracy"] for r in runs}
    assert {f"grid-2x2-{r[0]}": float(r[2]) for r in rows} == pytest.approx(by_name, abs=1e-4)
    sync = out.split("upload the offline runs with:\n")[1].splitlines()[0].split()
    assert sync[:2] == ["trainjob", "sync"] and sorted(sync[2:]) == sorted(map(str, run_dirs))

    # A rerun (e.g. a restarted pod) keeps the finished trials instead of running them again.
    assert main(["sweep", "run", str(path)]) == 0
    assert capsys.readouterr().out.count("already finished") == 4
    assert len(offline_runs(sweep_env)) == 4


def test_random_sweep_honours_run_cap(sweep_env: Path, capsys: pytest.CaptureFixture) -> None:
    config = {
        "name": "rand",
        "method": "random",
        "run_cap": 2,
        "metric": {"name": "test_accuracy", "goal": "maximize"},
        "parameters": {
            "learning_rate": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.02},
            "batch_size": {"values": [32, 64]},
        },
    }
    path = write(sweep_env / "r.yaml", config)
    assert main(["sweep", "run", str(path), "--log_every=2"]) == 0  # a setting for every trial
    runs = [read_offline_run(p) for p in offline_runs(sweep_env)]
    assert all(r.config["log_every"] == 2 for r in runs)
    assert len(runs) == 2  # the distribution never runs out: run_cap stops it
    assert all(r.run_info["run_group"] == sweep_group("rand", path.read_bytes()) for r in runs)
    assert all(0.001 <= r.config["learning_rate"] <= 0.02 for r in runs)
    assert all(r.config["batch_size"] in (32, 64) for r in runs)
    assert len(table(capsys.readouterr().out)) == 2


def test_bayes_sweep_uses_earlier_results(sweep_env: Path, capsys: pytest.CaptureFixture) -> None:
    config = {
        "name": "bayes3",
        "method": "bayes",
        "run_cap": 3,
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {
            "learning_rate": {"distribution": "log_uniform_values", "min": 0.001, "max": 0.03}
        },
    }
    path = write(sweep_env / "b.yaml", config)
    assert main(["sweep", "run", str(path)]) == 0
    out = capsys.readouterr().out
    records = trial_records(sweep_env, "bayes3")
    assert len(records) == 3 and all(r["exit_code"] == 0 for r in records.values())
    ran = dict(re.findall(r"trial (\d{3}-\w+): train --learning_rate=(\S+)", out))
    done = [
        Result(Point(int(key[:3]), {"learning_rate": float(ran[key])}), 0, r["summary"][METRIC])
        for key, r in records.items()
    ]
    # What ran is what the W&B run recorded.
    last = read_offline_run(Path(records[max(records)]["run_dir"]))
    assert last.config["learning_rate"] == done[2].point.params["learning_rate"]
    assert last.summary[METRIC] == done[2].metric
    # Trial 2 is exactly what the engine proposes from trials 0 and 1's results, and not what
    # it proposes without them.
    loaded = load_sweep(path)
    assert bayes_point(loaded, 2, done[:2]) == done[2].point.params
    assert bayes_point(loaded, 2, []) != done[2].point.params


def test_failed_trials_fail_alone_until_too_many_in_a_row(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("TRAINJOB_MAX_CONSECUTIVE_FAILURES", "2")
    config = {
        "name": "fails",
        "method": "grid",
        "metric": {"name": "test_accuracy", "goal": "maximize"},
        # Valid settings, but larger than the 512 training examples: the trial exits 2.
        "parameters": {"batch_size": {"values": [4096, 32, 8192, 16384, 64]}},
    }
    assert main(["sweep", "run", str(write(sweep_env / "f.yaml", config))]) == 7
    out, err = capsys.readouterr()
    errors = [ln for ln in err.splitlines() if ln.startswith("trainjob: error:")]
    assert errors[-1].startswith("trainjob: error: 2 trials failed in a row")
    assert "Traceback" not in err
    exits = re.findall(r" exited (\d+);", out)
    assert exits == ["2", "0", "2", "2"]  # the 5th point never ran
    records = trial_records(sweep_env, "fails")
    assert [r["exit_code"] for r in records.values()] == [0]
    assert len(offline_runs(sweep_env)) == 1


def test_sigterm_reaches_the_trial_and_stops_the_sweep(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRAINJOB_EPOCHS", "400")  # long enough to be interrupted mid-training
    monkeypatch.setenv("TRAINJOB_WATCH_LOG", "none")
    config = {"name": "term", "method": "grid", "parameters": {"seed": {"values": [1, 2]}}}
    path = write(sweep_env / "t.yaml", config)

    def terminate_when_training() -> None:
        deadline = time.monotonic() + 240
        while not offline_runs(sweep_env) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)  # as Kubernetes signals the pod's PID 1

    killer = threading.Thread(target=terminate_when_training, daemon=True)
    killer.start()
    assert main(["sweep", "run", str(path)]) == 143
    killer.join()
    ((key, record),) = trial_records(sweep_env, "term").items()
    assert record["exit_code"] == 143  # the trial got the signal and checkpointed
    # <checkpoint_dir>/sweeps/<name>/<point>/<run id>/: one folder per run id
    ckpt = sweep_env / "outputs" / "checkpoints" / "sweeps" / "term" / key / record["run_id"]
    assert len(list(ckpt.glob("*.pt"))) >= 1
    # The driver gave its claim on the point up: another driver or a rerun resumes it.
    assert not (sweep_env / "outputs" / "sweeps" / "term" / key / "claim.json").exists()
    assert len(offline_runs(sweep_env)) == 1  # the second point never started


def test_offline_hyperband_stops_a_trailing_trial_between_epochs(
    sweep_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """W&B's engine (sweeps.stop_runs) against the earlier trials' per-epoch test_accuracy: the
    third point (a learning rate far too small) trails both earlier ones at the first band and
    stops after its 2nd epoch; it is recorded as stopped (exit 6) in the table, in its run.json
    and in its offline W&B run, and leaves no checkpoint."""
    monkeypatch.setenv("TRAINJOB_EPOCHS", "4")
    monkeypatch.setenv("TRAINJOB_WATCH_LOG", "none")
    config = {
        "name": "hb",
        "method": "grid",
        "metric": {"name": METRIC, "goal": "maximize"},
        "parameters": {"learning_rate": {"values": [0.01, 0.005, 0.00001]}},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
    }
    path = write(sweep_env / "hb.yaml", config)
    assert main(["sweep", "run", str(path)]) == 0
    out = capsys.readouterr().out
    records = trial_records(sweep_env, "hb")
    codes = [r["exit_code"] for _, r in sorted(records.items())]
    assert codes == [0, 0, 6], out
    stopped_key = max(records)
    rows = {r[0]: r for r in (line.split() for line in out.splitlines()) if r and r[0] in records}
    assert rows[stopped_key][1:2] == ["6"] and rows[stopped_key][3:5] == ["stopped", "2"]
    assert f"hb: 3 trial(s), 1 stopped early, highest {METRIC} first" in out
    folder = sweep_env / "outputs" / "sweeps" / "hb"
    epochs = folder / stopped_key / records[stopped_key]["run_id"] / "epochs.json"
    assert json.loads(epochs.read_text())[METRIC][1] < 0.5
    run = read_offline_run(Path(records[stopped_key]["run_dir"]))
    assert run.exit_code == 6 and "early termination" in run.summary["stopped"]
    assert len([h for h in run.history if METRIC in h]) == 2  # stopped between epochs 2 and 3
    finished = read_offline_run(Path(records[min(records)]["run_dir"]))
    assert len([h for h in finished.history if METRIC in h]) == 4  # one value per epoch
    assert not list((sweep_env / "outputs" / "checkpoints").rglob("ckpt-*.pt"))

    # A rerun keeps the stopped trial as it is, like a finished one: no duplicate run.
    assert main(["sweep", "run", str(path)]) == 0
    assert "already stopped" in capsys.readouterr().out
    assert len(offline_runs(sweep_env)) == 3
