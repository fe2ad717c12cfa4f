"""The built image on a real Docker engine, run as users run it: no network, read-only root, no
capabilities, no privilege escalation, one named volume on /workspace holding MNIST.

    .ci/image && IMAGE_UNDER_TEST=trainjob-test:ci pytest tests/test_image.py -q

Without an engine or without the image every test here skips with one line saying why
(``IMAGE_TESTS=required``, set by .ci/run, turns that into a failure). Results are read from the
volume (exit codes, offline W&B runs, model files), found by glob, never by internal paths.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from docker_engine import (
    HARDENED,
    IMAGE,
    Volume,
    check_engine,
    docker,
    run,
    run_argv,
    unique,
    volume,
)
from helpers import ROOT, offline_runs, read_offline_run
from k8s_docker import docker_pod
from test_k8s import JOB_UID, claim, main_job, render, report_job

from trainjob.errors import ExitCode
from trainjob.sweep.local import sweep_group

UID = 10001  # the image's user (Dockerfile USER)
MNIST_ENV = "MNIST_TEST_DIR"
# Tiny jobs: 1,200 training and 200 test images of the real MNIST (every 50th).
REAL_SLICE = ["--data_slice", "50"]
FAST_EXPORT = {"TRAINJOB_ONNX_EXPORTER": "torchscript"}  # 0.2 s instead of 2-8 s


@pytest.fixture(scope="module")
def image() -> str:
    check_engine(IMAGE)
    return IMAGE


@pytest.fixture(scope="module")
def mnist(tiny_data: Path) -> tuple[Path, list[str]]:
    """The dataset folder to put into the volume and the slice flag that keeps a job tiny:
    the real MNIST when the tests have it, else the synthetic tiny one (512 images, all used)."""
    real = os.environ.get(MNIST_ENV)
    if real and Path(real).is_dir():
        return Path(real).resolve(), REAL_SLICE
    return tiny_data, ["--data_slice", "1"]


@pytest.fixture
def vol(image: str, mnist: tuple[Path, list[str]]) -> Iterator[Volume]:
    with volume(image) as v:
        v.seed(mnist[0])
        yield v


def only_run(files: Path) -> Any:
    (run_dir,) = offline_runs(files)
    return read_offline_run(run_dir)


def models(files: Path) -> list[Path]:
    """The job's model.onnx files in the volume: one per run under ``outputs/<run id>/`` (a W&B
    run folder holds a copy of each too, and ``outputs/model.onnx`` links to the latest)."""
    return [
        p
        for p in files.glob("**/model.onnx")
        if "wandb" not in p.relative_to(files).parts and not p.is_symlink()
    ]


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    output = result.stdout + result.stderr
    assert "Traceback" not in output and "Read-only file system" not in output, output[-3000:]


# --- (a) a job, then `trainjob sync` from a second container -------------------------------------


def test_job_trains_as_the_image_user_and_trainjob_sync_finds_the_run(
    image: str, vol: Volume, mnist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    result = run(run_argv(image, vol, ["--epochs", "1", "--log_every", "2", *mnist[1]]))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean(result)
    files = vol.files(tmp_path / "volume")
    run_ = only_run(files)
    assert run_.exit_code == 0
    assert run_.summary["test_accuracy"] > 0.5
    assert [row for row in run_.history if any("loss" in key for key in row)]
    (model,) = models(files)
    assert model.stat().st_size > 10_000  # the weights are inside, not in a side file
    run_file = next(run_.path.glob("run-*.wandb"))
    for written in (model, run_file):  # written by the image's user, not root
        assert vol.owners[os.path.relpath(written, files)] == UID

    # The README's air-gapped recipe: a second container of the image syncs the volume's runs.
    # There is no W&B server here: against a closed port it stops at once (exit 8), having found
    # the one run; `wandb sync --dry-run` lists it.
    run_id = run_.path.name.rsplit("-", 1)[-1]
    started = time.monotonic()
    sync = run(run_argv(image, vol, ["sync"], env={"WANDB_BASE_URL": "http://127.0.0.1:9"}))
    assert sync.returncode == ExitCode.WANDB_UNREACHABLE, sync.stderr
    assert "0 run(s) uploaded, 1 left" in sync.stderr and time.monotonic() - started < 60
    sync = run(
        run_argv(image, vol, ["sync", "--dry-run"], flags=(*HARDENED, "--entrypoint", "wandb"))
    )
    assert sync.returncode == 0, sync.stderr
    assert "Would sync 1 run(s)" in sync.stderr and f"run-{run_id}.wandb" in sync.stderr


# --- (b) docker stop: checkpoint, exit 143, the same command resumes -----------------------------

# Long enough to be stopped mid-training (20 epochs of 19 steps), short enough for CI.
STOP_ARGS = ["--epochs", "20", "--batch_size", "64"]


def wait_for_checkpoint(name: str, proc: subprocess.Popen[str], limit_s: float = 300) -> None:
    """Until the running container has written its first checkpoint (after epoch 1)."""
    deadline = time.monotonic() + limit_s  # a hang guard, not a speed assertion
    find = ["exec", name, "find", "/workspace", "-name", "ckpt-*.pt", "-print", "-quit"]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the job exited {proc.returncode} before its first checkpoint")
        if docker(*find, check=False).stdout.strip():
            return
        time.sleep(0.2)
    docker("rm", "-f", name, check=False)
    pytest.fail(f"no checkpoint within {limit_s} s")


@pytest.fixture(scope="module")
def uninterrupted(image: str, mnist: tuple[Path, list[str]], tmp_path_factory) -> Any:
    with volume(image) as v:
        v.seed(mnist[0])
        result = run(run_argv(image, v, [*STOP_ARGS, *mnist[1]], env=FAST_EXPORT))
        assert result.returncode == 0, result.stderr[-3000:]
        return only_run(v.files(tmp_path_factory.mktemp("uninterrupted")))


def test_docker_stop_checkpoints_and_the_same_run_resumes_bit_identically(
    image: str, vol: Volume, mnist: tuple[Path, list[str]], uninterrupted: Any, tmp_path: Path
) -> None:
    name = unique("stop")
    argv = run_argv(image, vol, [*STOP_ARGS, *mnist[1]], env=FAST_EXPORT, name=name)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(name, proc)
        docker("stop", "--time", "60", name)  # SIGTERM to tini, SIGKILL after 60 s
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == ExitCode.PREEMPTED, stderr[-3000:]
    assert "got SIGTERM" in stderr and "Traceback" not in stderr
    stopped = vol.files(tmp_path / "stopped")
    assert list(stopped.glob("**/ckpt-*.pt")), "no checkpoint in the volume after docker stop"

    resumed = run(run_argv(image, vol, [*STOP_ARGS, *mnist[1]], env=FAST_EXPORT))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stderr
    files = vol.files(tmp_path / "resumed")
    runs = [read_offline_run(p) for p in offline_runs(files)]
    assert len(runs) == 2  # one folder per process, one W&B run id
    assert len({r.path.name.rsplit("-", 1)[-1] for r in runs}) == 1
    assert [r.exit_code for r in runs] == [ExitCode.PREEMPTED, 0]
    final, reference = runs[-1].summary, uninterrupted.summary
    assert len(final["weights_sha256"]) == 64
    assert final["weights_sha256"] == reference["weights_sha256"]
    assert final["examples_seen"] == reference["examples_seen"]


def test_docker_stop_before_training_exits_143_at_once(
    image: str, vol: Volume, mnist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    """tini is PID 1 and forwards SIGTERM to python while it still imports (no handler yet):
    the default action ends it; as PID 1 itself python would ignore it until SIGKILL."""
    name = unique("early")
    argv = run_argv(image, vol, ["--epochs", "1", *mnist[1]], name=name)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while docker("inspect", "-f", "{{.State.Running}}", name, check=False).stdout.strip() != (
            "true"
        ):
            assert time.monotonic() < deadline and proc.poll() is None, "the container never ran"
            time.sleep(0.1)
        docker("stop", "--time", "60", name)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    # 143, not 137: SIGTERM reached python (ignored, docker would SIGKILL it after 60 s).
    assert proc.returncode == ExitCode.PREEMPTED
    assert not offline_runs(vol.files(tmp_path / "volume"))  # stopped before any W&B run


# --- (c) bad input and --help --------------------------------------------------------------------


def test_bad_setting_is_one_line_and_exit_2(image: str, vol: Volume) -> None:
    result = run(run_argv(image, vol, env={"TRAINJOB_EPOCHS": "zero"}))
    assert result.returncode == ExitCode.BAD_CONFIG
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("trainjob: error:") and "TRAINJOB_EPOCHS" in lines[0]
    assert "zero" in lines[0]


def test_help_lists_the_settings(image: str, vol: Volume) -> None:
    result = run(run_argv(image, vol, ["--help"]))
    assert result.returncode == 0, result.stderr
    assert "--epochs" in result.stdout and "TRAINJOB_EPOCHS" in result.stdout
    assert_clean(result)


# --- (d) the Kubernetes pod's own container spec, run by Docker ----------------------------------


def image_overlay(folder: Path, overlay: str, image: str) -> Path:
    """The README's path for Kubernetes users: an overlay of their own that points the shipped
    one at the image they built and pushed (kustomize `images:`)."""
    name, _, tag = image.rpartition(":")
    folder.mkdir(parents=True, exist_ok=True)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(ROOT / "k8s" / "overlays" / overlay, folder)],
        "images": [{"name": "ghcr.io/trainjob/trainjob", "newName": name, "newTag": tag}],
    }
    (folder / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return folder


@pytest.mark.parametrize("overlay", ["train", "offline", "sweep-agents", "offline-sweep"])
def test_kustomize_images_points_every_pod_at_the_built_image(overlay: str, tmp_path: Path) -> None:
    docs = render(image_overlay(tmp_path / "mine", overlay, "registry.example/team/trainjob:1"))
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "Job"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert images and set(images) == {"registry.example/team/trainjob:1"}


def test_k8s_train_pod_runs_in_docker_as_it_would_in_the_cluster(
    image: str, vol: Volume, mnist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    docs = render(image_overlay(tmp_path / "mine", "train", image))
    job = main_job(docs)
    claim = job["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    pod = docker_pod(docs, job, claims={claim: vol.name})
    assert pod.image == image  # the rendered manifest's image, set by `images:`
    assert pod.missing_secrets == ["trainjob-wandb/WANDB_API_KEY"]  # no key: offline run
    # What Docker cannot express here; everything else in the spec became a flag.
    assert sorted(pod.untranslated) == [
        "limits.ephemeral-storage=10Gi",
        "limits.nvidia.com/gpu=1",
    ]
    for flag in ("--read-only", "--cap-drop=ALL", "no-new-privileges", "--user", "10001:10001"):
        assert flag in pod.flags
    # Tiny data, as a user's patch would set it: one more arg after the manifest's own.
    result = run([*pod.argv(unique("k8s")), "--epochs", "1", *mnist[1]])
    assert result.returncode == 0, result.stderr[-3000:]
    assert_clean(result)
    files = vol.files(tmp_path / "volume")
    run_ = only_run(files)
    name = job["metadata"]["name"]
    # TRAINJOB_RUN_ID from the Job object's UID label (one run per Job, stable across its pods),
    # the Job's name as the run's display name.
    uid = pod.env["TRAINJOB_RUN_ID"]
    assert uid == JOB_UID and run_.run_info["run_id"] == uid
    assert run_.run_info["display_name"] == name
    assert run_.exit_code == 0 and run_.summary["test_accuracy"] > 0.5
    # OMP_NUM_THREADS from the CPU limit reached torch, as in the pod.
    assert run_.config["env"]["threads"] == int(pod.env["OMP_NUM_THREADS"])
    (model,) = models(files)
    assert model.stat().st_size > 10_000
    # Checkpoints on the claim, one folder per run id, i.e. per Job (empty: the run finished,
    # its checkpoints and its lease are gone).
    ckpt = pod.env["TRAINJOB_CHECKPOINT_DIR"]
    assert ckpt == "/workspace/checkpoints"
    run_ckpt = files / os.path.relpath(ckpt, "/workspace") / uid
    assert run_ckpt.is_dir() and not list(run_ckpt.iterdir())


# --- (e) an offline sweep in the image ----------------------------------------------------------

SWEEP = {
    "name": "image-test",
    "method": "grid",
    "metric": {"name": "test_accuracy", "goal": "maximize"},
    "parameters": {"learning_rate": {"values": [0.005, 0.01]}, "epochs": {"value": 1}},
}


def test_offline_sweep_runs_two_trials_in_the_image_and_the_report_job_shows_them(
    image: str, mnist: tuple[Path, list[str]], tmp_path: Path
) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump(SWEEP))
    sweep_file.chmod(0o644)
    docs = render(image_overlay(tmp_path / "mine", "offline-sweep", image))
    reporter = report_job(docs)
    with volume(image) as v:
        v.seed(mnist[0], (sweep_file, "/workspace/sweep.yaml"))
        result = run(run_argv(image, v, ["sweep", "run", "sweep.yaml", *mnist[1]], FAST_EXPORT))
        assert result.returncode == 0, result.stderr[-3000:]
        assert_clean(result)
        files = v.files(tmp_path / "volume")
        # The offline-sweep overlay's report Job, as rendered, over the same volume: read-only
        # root, no network, the image's user; its log (stdout) is the page and nothing else.
        pod = docker_pod(docs, reporter, claims={claim(reporter): v.name})
        page = run(pod.argv(unique("report")), timeout=180)
    assert page.returncode == 0, page.stderr[-3000:]
    assert_clean(page)
    assert page.stdout.startswith("<!DOCTYPE html>") and page.stdout.endswith("</html>\n")
    assert f"Sweep: {SWEEP['name']}" in page.stdout
    runs = [read_offline_run(p) for p in offline_runs(files)]
    assert len(runs) == 2, [r.path.name for r in runs]
    group = sweep_group("image-test", sweep_file.read_bytes())  # the name + its file's hash
    assert sorted(r.config["learning_rate"] for r in runs) == [0.005, 0.01]
    for run_ in runs:
        assert run_.exit_code == 0 and run_.run_info.get("run_group") == group
    assert len(models(files)) == 2
    assert "trainjob sync /workspace/wandb/offline-run-" in result.stdout  # uploads them later
    # One leaderboard row per trial (its first cell the rank), each with its run id.
    rows = re.findall(r'<tr data-run="([^"]+)"><td class="num" data-v="\d+">', page.stdout)
    assert sorted(rows) == sorted(r.run_info["run_id"] for r in runs)
