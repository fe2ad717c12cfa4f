"""`trainjob report` on real offline runs: a hyperband sweep run by `trainjob sweep run`, a run
preempted (SIGTERM) and resumed in a second process, a run SIGKILLed mid-training, then copies
with a run file cut short and one with damaged bytes. Every figure on the page is checked
against W&B's own reader (`wandb leet inspect`) or trainjob's run.json; the page is opened in
headless Chromium with the network off (tests/browser.py): rows, plots, highlighting and sorting
work, the console has no error, and the only request is the page itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from browser import chromium
from helpers import ROOT, clean_env, offline_runs, read_offline_run, run_cli

from trainjob.report.collect import gather
from trainjob.tracking.runfile import read_run_file

DRIVER = ROOT / "tests" / "preempt_driver.py"
ARGS = ["--batch_size", "32", "--data_slice", "1", "--log_every", "2", "--epochs", "2"]
SWEEP = {
    "name": "hb-report",
    "method": "grid",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    # The third learning rate is far too small: it trails at the first band and is stopped.
    "parameters": {
        "learning_rate": {"values": [0.01, 0.005, 0.00001]},
        "epochs": {"value": 4},
    },
    "early_terminate": {"type": "hyperband", "min_iter": 1, "eta": 2},
}
NASTY_NAME = '<b>resumed</b> & "quoted"'  # must reach the page escaped


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """One WANDB_DIR (= the workspace) holding a sweep, a resumed run and a killed run."""
    ws = tmp_path_factory.mktemp("report-ws")
    env = clean_env(ws, TRAINJOB_DATA_DIR=str(tiny_data), TRAINJOB_BATCH_SIZE="64")
    env.update(TRAINJOB_DATA_SLICE="1", TRAINJOB_LOG_EVERY="2", TRAINJOB_CHECKPOINT_EVERY_S="0")
    (ws / "hb.yaml").write_text(yaml.safe_dump(SWEEP, sort_keys=False))
    done = run_cli(["sweep", "run", "hb.yaml"], env, ws)
    assert done.returncode == 0, done.stdout + done.stderr

    resumed = {**env, "TRAINJOB_RUN_ID": "resumed1", "TRAINJOB_RUN_NAME": NASTY_NAME}
    first = _run([str(DRIVER), "TERM@step:6", *ARGS], resumed, ws)
    assert first.returncode == 143, first.stderr
    second = run_cli(ARGS, resumed, ws)
    assert second.returncode == 0, second.stderr

    killed = {**env, "TRAINJOB_RUN_ID": "killed1"}
    dead = _run([str(DRIVER), "KILL@step:12", *ARGS, "--epochs", "3"], killed, ws)
    assert dead.returncode == -9, dead.stderr
    return ws


def report(paths: list[Path], out: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return run_cli(["report", *map(str, paths), "--out", str(out)], clean_env(cwd, **env), cwd)


class Page(HTMLParser):
    """The parts of the page the tests read: leaderboard rows, SVG marks, and every tag."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[list[str]] = []  # leaderboard rows, cell texts
        self._cells: list[str] | None = None
        self._cell: list[str] | None = None
        self._board = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "table" and "board" in (dict(attrs).get("class") or ""):
            self._board += 1
        if tag == "tr" and self._board and dict(attrs).get("data-run"):
            self._cells = []
        if tag == "td" and self._cells is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cells is not None and self._cell is not None:
            self._cells.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._cells is not None:
            self.rows.append(self._cells)
            self._cells = None
        elif tag == "table" and self._board:
            self._board -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def marks(self, tag: str, svg_class: str | None = None) -> list[dict[str, str | None]]:
        return [a for t, a in self.tags if t == tag and "run" in (a.get("class") or "").split()]


def trial_records(ws: Path) -> dict[str, dict]:
    folder = ws / "outputs" / "sweeps" / SWEEP["name"]
    return {
        p.parent.name: json.loads(p.read_text())
        for p in sorted(folder.glob("*/*/run.json"))
        if not p.is_symlink()
    }


# --- what is read -------------------------------------------------------------------------------


def test_each_run_once_with_wandbs_own_values(workspace: Path) -> None:
    found = gather([workspace])
    runs = {r.run_id: r for r in found.runs}
    trials = trial_records(workspace)
    assert set(runs) == {t["run_id"] for t in trials.values()} | {"resumed1", "killed1"}
    (sweep,) = [g for g in found.groups if g.sweep]
    assert sweep.name == SWEEP["name"] and sweep.parameters == ["learning_rate"]
    assert len(sweep.runs) == 3
    for record in trials.values():
        run = runs[record["run_id"]]
        theirs = read_offline_run(Path(record["run_dir"]))  # W&B's own reader
        assert run.exit_code == theirs.exit_code == record["exit_code"]
        assert run.value() == pytest.approx(record["summary"]["test_accuracy"])
        loss = [(h["_step"], h["loss"]) for h in theirs.history if "loss" in h]
        assert run.series("loss") == loss and loss  # the same JSON values, read by two readers
        assert run.onnx is None or run.onnx == Path(record["run_dir"]) / "files" / "model.onnx"
    states = sorted(runs[t["run_id"]].state for t in trials.values())
    assert states == ["finished", "finished", "stopped by hyperband"]
    stopped = next(runs[t["run_id"]] for t in trials.values() if t["exit_code"] == 6)
    assert len(stopped.epoch_values) == 2 and stopped.onnx is None
    assert all(runs[t["run_id"]].onnx for t in trials.values() if t["exit_code"] == 0)


def test_a_resumed_run_is_one_run_with_its_history_in_order(workspace: Path) -> None:
    run = next(r for r in gather([workspace]).runs if r.run_id == "resumed1")
    folders = [p for p in offline_runs(workspace) if p.name.endswith("-resumed1")]
    assert len(run.parts) == len(folders) == 2
    assert [p.path.parent for p in run.parts] == sorted(folders)  # the interrupted one first
    assert [p.exit_code for p in run.parts] == [143, 0] and run.state == "finished"
    theirs = [h["_step"] for f in folders for h in read_offline_run(f).history]
    steps = [row["_step"] for row in run.history]
    assert steps == sorted(set(theirs)) and len(steps) == len(set(steps))
    assert len(run.epoch_values) == 2


def test_a_second_folder_of_the_same_second_is_the_runs_next_process(
    workspace: Path, tmp_path: Path
) -> None:
    """wandb names a process's folder by the second it started, adding -1, -2... on a clash:
    such a folder is the same run's next process (its run file says whose), in order."""
    first, second = sorted((workspace / "wandb").glob("offline-run-*-resumed1"))
    copy = tmp_path / "wandb"
    copy.mkdir()
    shutil.copytree(first, copy / first.name)
    shutil.copytree(second, copy / f"{first.name}-1")  # the same second as the first
    (run,) = gather([copy]).runs
    assert run.run_id == "resumed1" and [p.exit_code for p in run.parts] == [143, 0]
    assert (
        run.state == "finished"
        and run.history
        == next(r for r in gather([workspace]).runs if r.run_id == "resumed1").history
    )


def test_reading_in_several_processes_reads_the_same(workspace: Path) -> None:
    """Many run files are read by a pool of processes (read_all): the same runs, rows, states."""

    def seen(workers: int) -> list[tuple]:
        runs = gather([workspace], workers=workers).runs
        return sorted((r.run_id, r.state, r.value(), r.history, r.notes) for r in runs)

    assert seen(2) == seen(1)


def test_a_killed_run_shows_what_was_written(workspace: Path) -> None:
    run = next(r for r in gather([workspace]).runs if r.run_id == "killed1")
    assert run.exit_code is None and run.state == "running or killed"
    # SIGKILL can land before wandb-core wrote its first block: then only the header is there.
    assert run.notes or run.history


# --- the page ---------------------------------------------------------------------------------


def test_the_page_shows_every_run_and_the_sweep(workspace: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = report([workspace], out, tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"trainjob report: 5 run\(s\) in \d group\(s\) -> .+\n", done.stdout)
    text = out.read_text()
    page = Page(text)
    by_run = {row[1]: row for row in page.rows}
    trials = trial_records(workspace)
    for record in trials.values():
        row = by_run[record["run_id"]]
        assert f"{record['summary']['test_accuracy']:.4f}" in row
        state = "stopped by hyperband" if record["exit_code"] == 6 else "finished"
        assert row[3].startswith(state)
    assert by_run["resumed1"][3] == "finished exit 0, 2 processes"
    assert by_run["killed1"][3].startswith("running or killed")
    # The sweep's section: parallel coordinates with one line per trial, loss and per-epoch
    # accuracy with one line per run (the stopped trial too), the epochs per trial.
    sweep = Page(text[: text.index('<section class="group" data-group="runs"')])
    charts = [a.get("class") for t, a in sweep.tags if t == "svg"]
    assert charts == ["chart parallel", "chart lines", "chart lines", "chart epochs"]
    lines = [a["data-run"] for t, a in sweep.tags if t == "polyline" and a.get("data-run")]
    for record in trials.values():
        assert lines.count(record["run_id"]) == 3  # parallel coordinates, loss, accuracy
    assert "stopped after epoch" in text and "early termination" in text
    assert text.count('class="run stop"') >= 2  # a cross on the accuracy line and on its bar
    for record in trials.values():
        if record["exit_code"] == 0:
            assert str(Path(record["run_dir"]) / "files" / "model.onnx") in text
    # Self-contained: nothing to fetch, and the run's own strings escaped.
    assert not [a for _, a in page.tags if a.get("src") or a.get("href")]
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", text)
    assert NASTY_NAME not in text and "&lt;b&gt;resumed&lt;/b&gt; &amp;" in text


def test_a_sweep_folder_alone_finds_its_runs_through_run_json(
    workspace: Path, tmp_path: Path
) -> None:
    folder = workspace / "outputs" / "sweeps" / SWEEP["name"]
    assert (folder / "sweep.yaml").is_file()  # left there by `sweep run`
    out = tmp_path / "sweep.html"
    done = report([folder], out, tmp_path)
    assert done.returncode == 0, done.stderr
    page = Page(out.read_text())
    assert len(page.rows) == 3 + 1  # the leaderboard and the stopped-trials table
    assert "Sweep: hb-report" in out.read_text()
    assert len([a for _, a in page.tags if a.get("class") == "chart parallel"]) == 1


def test_default_path_is_wandb_dir_and_the_page_goes_there(workspace: Path, tmp_path: Path):
    env = clean_env(tmp_path, WANDB_DIR=str(workspace))
    env["TRAINJOB_OUTPUT_DIR"] = str(tmp_path / "none")
    done = run_cli(["report"], env, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (workspace / "report.html").is_file()
    assert str(workspace / "report.html") in done.stdout
    (workspace / "report.html").unlink()


def _damaged_copy(workspace: Path, tmp_path: Path) -> tuple[Path, str, str]:
    """A copy of the workspace with one finished trial's run file cut in the middle of a record
    and another's bytes overwritten inside a record."""
    copy = tmp_path / "ws"
    shutil.copytree(workspace, copy, symlinks=True)
    finished = [t for t in trial_records(copy).values() if t["exit_code"] == 0]
    cut_id, bad_id = finished[0]["run_id"], finished[1]["run_id"]
    (cut,) = (copy / "wandb").glob(f"offline-run-*-{cut_id}/run-{cut_id}.wandb")
    blob = cut.read_bytes()
    cut.write_bytes(blob[: len(blob) // 2 + 3])
    (bad,) = (copy / "wandb").glob(f"offline-run-*-{bad_id}/run-{bad_id}.wandb")
    blob = bytearray(bad.read_bytes())
    blob[40:200] = b"\xff" * 160  # inside the first records, framing kept
    bad.write_bytes(bytes(blob))
    return copy, cut_id, bad_id


def test_cut_and_damaged_run_files_show_what_could_be_read(workspace: Path, tmp_path: Path) -> None:
    copy, cut_id, bad_id = _damaged_copy(workspace, tmp_path)
    cut = read_run_file(next((copy / "wandb").glob(f"*-{cut_id}/run-{cut_id}.wandb")))
    assert cut.damage.cut and cut.records > 0 and cut.exit_code is None
    bad = read_run_file(next((copy / "wandb").glob(f"*-{bad_id}/run-{bad_id}.wandb")))
    assert bad.damage.unreadable > 0 and bad.exit_code is not None  # read on past the damage
    out = tmp_path / "r.html"
    done = report([copy / "wandb", copy / "outputs"], out, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "not read whole (said on the page)" in done.stdout
    text = out.read_text()
    assert "ends inside a record: the run is still being written, or was killed" in text
    assert "damaged record(s) skipped" in text and 'id="warnings"' in text
    rows = {row[1]: row for row in Page(text).rows}
    # The cut file lost its exit record; the job's run.json (written by that process) still
    # says how it ended.
    assert rows[cut_id][3] == "finished exit 0" and rows[bad_id][3] == "finished exit 0"
    (cut_run,) = [r for r in gather([copy]).runs if r.run_id == cut_id]
    (whole,) = (workspace / "wandb").glob(f"offline-run-*-{cut_id}")
    assert 0 < len(cut_run.history) < len(read_offline_run(whole).history)


def test_nothing_readable_is_one_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    junk = empty / "wandb" / "offline-run-20260101_000000-junk1234"
    junk.mkdir(parents=True)
    (junk / "run-junk1234.wandb").write_bytes(b"not a run file")
    done = report([empty], tmp_path / "x.html", tmp_path)
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr.count("\n") == 1 and "no readable W&B run" in done.stderr
    assert not (tmp_path / "x.html").exists()
    done = report([tmp_path / "nope"], tmp_path / "x.html", tmp_path)
    assert done.returncode == 2 and "PATH='" in done.stderr and done.stderr.count("\n") == 1
    done = run_cli(["report", str(empty), "--epochs", "x"], clean_env(tmp_path), tmp_path)
    assert done.returncode == 2 and done.stderr.startswith("trainjob: error: --epochs=x is invalid")


def test_an_unwritable_page_is_exit_5(workspace: Path, tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/trainjob-report.html")  # refused even to root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "r.html"
    done = report([workspace / "wandb"], target, tmp_path)
    assert done.returncode == 5 and done.stderr.count("\n") == 1, done.stderr


# --- in a browser, as a person would look at it -----------------------------------------------

needs_browser = pytest.mark.skipif(
    chromium() is None and os.environ.get("REPORT_BROWSER") != "required",
    reason="no chromium on PATH (.ci/run installs Debian's chromium)",
)


@needs_browser
def test_the_page_in_headless_chromium_with_the_network_off(
    workspace: Path, tmp_path: Path
) -> None:
    from browser import Browser, network_namespace_works

    assert network_namespace_works() or os.environ.get("REPORT_BROWSER") != "required"
    out = tmp_path / "report.html"
    assert report([workspace], out, tmp_path).returncode == 0
    with Browser() as browser:
        page = browser.open(out)
        count = page.evaluate
        assert count("document.querySelectorAll('section.group').length") >= 2
        sweep = "document.querySelector('section.group')"
        rows = count(f"{sweep}.querySelectorAll('tr[data-run]').length")
        assert rows == 3 + 1  # the sweep's 3 trials, and its stopped trial's row
        assert count(f"{sweep}.querySelectorAll('svg.parallel polyline.run').length") == 3
        width = count("document.querySelector('svg.lines').getBoundingClientRect().width")
        assert width > 300  # drawn, not collapsed
        # Pointing at a row picks that run out in every chart; a header click sorts.
        picked = count(
            "(function(){var r=document.querySelector('table.board tr[data-run]');"
            "r.dispatchEvent(new MouseEvent('mouseenter'));var id=r.getAttribute('data-run');"
            "var hl=document.querySelectorAll('.hl').length;"
            "var same=document.querySelectorAll('.hl[data-run=\"'+id+'\"]').length;"
            "var dim=document.querySelectorAll('.chart.dim').length;"
            "r.dispatchEvent(new MouseEvent('mouseleave'));"
            "return [hl, same, dim, document.querySelectorAll('.hl').length];})()"
        )
        assert picked[0] == picked[1] >= 3 and picked[2] >= 3 and picked[3] == 0
        order = count(
            "(function(){var t=document.querySelector('table.board');var th=t.tHead.rows[0]"
            ".cells[4];th.click();var up=Array.prototype.map.call(t.tBodies[0].rows,"
            "function(r){return r.cells[4].textContent;});th.click();var down=Array.prototype"
            ".map.call(t.tBodies[0].rows,function(r){return r.cells[4].textContent;});"
            "return [up, down];})()"
        )
        assert order[0] == sorted(order[0]) and order[1] == sorted(order[1], reverse=True)
        shot = page.screenshot(tmp_path / "report.png")
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
        assert page.errors == []
        assert page.requests == [out.resolve().as_uri()]


def test_the_bench_runs_and_prints_its_ratio(tmp_path: Path) -> None:
    """bench/report.py on 3 runs (its figures are in bench/README.md; nothing timed here)."""
    bench = [sys.executable, str(ROOT / "bench" / "report.py"), "--runs", "3", "--repeats", "1"]
    done = subprocess.run(
        [*bench, "--leet", "1", "--keep", str(tmp_path / "runs")],
        env=clean_env(tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.search(r"wrote 3 runs \(4 folders", done.stdout), done.stdout  # one resumed
    assert re.search(r"trainjob report: median [\d.]+ s", done.stdout), done.stdout
    assert re.search(r"ratio: the report takes [\d.]+ of W&B's", done.stdout), done.stdout
    runs = {r.run_id: r for r in gather([tmp_path / "runs"]).runs}
    assert len(runs) == 3 and all(r.trial is not None and r.history for r in runs.values())
    assert [len(r.parts) for r in runs.values()] == [1, 2, 1]
    assert [r.state for r in runs.values()] == ["finished", "finished", "failed"]


def test_runs_rank_by_the_sweeps_own_metric_and_goal(workspace: Path) -> None:
    """A sweep minimizing another summary metric ranks by it (the page's column, its colours)."""
    (sweep,) = [g for g in gather([workspace]).groups if g.sweep]
    sweep.sweep = {**sweep.sweep, "metric": {"name": "perf/train_s", "goal": "minimize"}}
    times = [r.value("perf/train_s") for r in sweep.ranked()]
    finished = [t for t in times if t is not None]
    assert finished == sorted(finished) and len(finished) == 2  # the stopped trial has none
    assert times[-1] is None and sweep.value(sweep.ranked()[0]) == finished[0]


AGENT_TRIAL = """
import wandb
run = wandb.init(project="p", settings=wandb.Settings(x_disable_viewer=True))
run.log({"loss": 1.0, "test_accuracy": 0.5}, step=10)
run.finish()
"""


def test_a_wandb_agents_trial_is_grouped_by_its_sweep(tmp_path: Path) -> None:
    """W&B's agent sets WANDB_SWEEP_ID (wandb writes it into the run); no group: its sweep's."""
    env = clean_env(tmp_path, WANDB_SWEEP_ID="abc123")
    done = subprocess.run([sys.executable, "-c", AGENT_TRIAL], env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0
    (group,) = gather([tmp_path]).groups
    assert group.name == "sweep abc123" and [r.series("loss") for r in group.runs] == [[(10, 1.0)]]
