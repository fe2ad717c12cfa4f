"""docker/: the compose file (one sweep agent per GPU) and the documented env file.

`docker compose config` needs the compose plugin, which not every docker CLI has; the
file is read with PyYAML (merge keys resolved as compose does) and checked by yamllint, and
`docker compose config` runs too where the plugin exists.

Its values are checked against where they come from, not copied back: the image `make image`
builds, the Dockerfile's entrypoint, CMD, user, working folder, volume and ENV, the k8s base Job's
grace period, shared memory and Secret, the Settings fields, docs/docker.md's `docker run` flags.
Each agent's environment then goes through the image's entrypoint here, without Docker, and
starts an agent (against the W&B stand-in, tests/fake_wandb.py).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile import exec_form, parse
from fake_wandb import fake_wandb
from helpers import ROOT

from trainjob.interrupt import PREEMPT_SIGNALS
from trainjob.settings import Settings, env_name, load_settings

COMPOSE = ROOT / "docker" / "compose.yaml"
ENV_EXAMPLE = ROOT / "docker" / "trainjob.env.example"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
IMAGE = f"ghcr.io/trainjob/trainjob:{VERSION}"
ENV_LINE = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def agents(compose: dict) -> dict[str, dict]:
    return {k: v for k, v in compose["services"].items() if "TRAINJOB_SWEEP_ID" in v["environment"]}


def gpus(service: dict) -> list[str]:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert len(devices) == 1 and devices[0]["driver"] == "nvidia"
    assert "gpu" in devices[0]["capabilities"]
    return [str(d) for d in devices[0]["device_ids"]]


def test_each_agent_gets_its_own_gpu_and_folders(compose: dict) -> None:
    found = agents(compose)
    assert len(found) >= 2
    ids = [gpus(service) for service in found.values()]
    assert all(len(i) == 1 for i in ids)  # one GPU per agent
    assert len({i[0] for i in ids}) == len(ids)  # ... a distinct one
    for key in ("TRAINJOB_OUTPUT_DIR", "TRAINJOB_CHECKPOINT_DIR"):
        dirs = [service["environment"][key] for service in found.values()]
        assert len(set(dirs)) == len(dirs) and all(d.startswith("/workspace/") for d in dirs)


def test_all_agents_run_the_one_sweep_from_the_shell(compose: dict) -> None:
    sweep_ids = {s["environment"]["TRAINJOB_SWEEP_ID"] for s in agents(compose).values()}
    (value,) = sweep_ids
    assert value.startswith("${TRAINJOB_SWEEP_ID:?")  # compose refuses to start without it
    for service in agents(compose).values():
        assert service["environment"]["WANDB_API_KEY"] is None  # passed through, not stored


# --- compose against its sources of truth -----------------------------------------------------
DOCKERFILE = parse(ROOT / "Dockerfile").final
K8S_JOB = yaml.safe_load((ROOT / "k8s" / "base" / "job.yaml").read_text())
K8S_POD = K8S_JOB["spec"]["template"]["spec"]
(K8S_CONTAINER,) = K8S_POD["containers"]
DOCKER_DOCS = (ROOT / "docs" / "docker.md").read_text()


def image_volume() -> str:
    volume = DOCKERFILE.last("VOLUME")
    assert volume, "the image declares no VOLUME"
    (path,) = json.loads(volume.args)
    return path


def seconds(duration: str | int) -> float:
    """A compose duration ("2m", "1m30s", "90s") in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", str(duration))
    assert parts and "".join(n + u for n, u in parts) == str(duration), duration
    return sum(float(n) * units[u] for n, u in parts)


def size(text: str) -> int:
    """Bytes of a Docker size ("1gb", "1g": powers of 1024) or a Kubernetes quantity ("1Gi")."""
    match = re.fullmatch(r"(\d+)\s*([kmg])?(?:i|b)?", str(text).lower())
    assert match, text
    return int(match.group(1)) * 1024 ** " kmg".index(match.group(2) or " ")


def test_agents_run_the_image_make_image_builds(compose: dict) -> None:
    """The image compose runs (and builds) is the tag `make image` gives and the k8s Job runs;
    its build context is the folder holding the Makefile and the Dockerfile."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make here (make test runs under it)")
    dry = subprocess.run(
        [make, "-n", "--no-print-directory", "image"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("IMAGE", "MAKEFLAGS")},
    )
    tag = re.search(r"docker build -t (\S+)", dry.stdout)
    assert tag, dry.stdout + dry.stderr
    assert K8S_CONTAINER["image"] == tag.group(1)
    for name, service in agents(compose).items():
        assert service["image"] == tag.group(1), name
        context = (COMPOSE.parent / service["build"]["context"]).resolve()
        assert context == ROOT and (context / service["build"]["dockerfile"]).is_file(), name


def test_agents_keep_the_image_contract(compose: dict) -> None:
    """Nothing the Dockerfile decides is overridden: the entrypoint and its empty CMD (with
    TRAINJOB_SWEEP_ID set the container is an agent), the user, the working folder; the one
    volume is the image's VOLUME, read-only elsewhere as the k8s container is."""
    assert exec_form(DOCKERFILE.last("CMD")) == []
    volume = image_volume()
    for name, service in agents(compose).items():
        assert "entrypoint" not in service and "command" not in service, name
        assert service.get("user", DOCKERFILE.last("USER").args) == DOCKERFILE.last("USER").args
        assert service.get("working_dir", volume) == DOCKERFILE.last("WORKDIR").args == volume
        mounts = [v.split(":") for v in service["volumes"]]
        assert [m[1] for m in mounts] == [volume] and mounts[0][0] in compose["volumes"], name
        read_only = K8S_CONTAINER["securityContext"]["readOnlyRootFilesystem"]
        assert service["read_only"] is read_only, name
        for key, value in service["environment"].items():
            if key.endswith("_DIR"):
                assert value.startswith(volume + "/"), f"{name}: {key}={value} off the volume"


def test_agents_stop_as_kubernetes_stops_the_job(compose: dict) -> None:
    """`docker compose stop` sends SIGTERM (no stop_signal), which the job answers with a
    checkpoint (exit 143), and waits at least the pod's grace period; docs/docker.md's
    `docker run` flags give the same grace and shared memory as compose and the pod."""
    grace = K8S_POD["terminationGracePeriodSeconds"]
    (docs_grace,) = set(re.findall(r"--stop-timeout (\d+)", DOCKER_DOCS))
    (docs_shm,) = set(re.findall(r"--shm-size (\d+[kmg]?)\b", DOCKER_DOCS))
    (dshm,) = [v for v in K8S_POD["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    for name, service in agents(compose).items():
        assert signal.Signals[service.get("stop_signal", "SIGTERM")] in PREEMPT_SIGNALS, name
        assert seconds(service["stop_grace_period"]) >= grace, name
        assert seconds(service["stop_grace_period"]) == int(docs_grace), name
        assert size(service["shm_size"]) == size(docs_shm) == size(dshm["emptyDir"]["sizeLimit"])


def test_every_variable_compose_sets_is_a_setting_or_the_secret(compose: dict) -> None:
    """TRAINJOB_* names are Settings fields (a typo would be exit 2 at start); the others are
    the ones the k8s Job takes from its Secret, passed through from the shell, never stored."""
    fields = {env_name(name) for name in Settings.model_fields}
    secret = {e["name"] for e in K8S_CONTAINER["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for name, service in agents(compose).items():
        env = service["environment"]
        assert sorted(k for k in env if k.startswith("TRAINJOB_") and k not in fields) == []
        others = {k for k in env if not k.startswith("TRAINJOB_")}
        assert others == secret and all(env[k] is None for k in others), name


def test_the_docs_compose_command_names_real_services(compose: dict) -> None:
    (line,) = [line for line in DOCKER_DOCS.splitlines() if "docker compose -f" in line]
    words = shlex.split(line, comments=True)
    assert (ROOT / words[words.index("-f") + 1]) == COMPOSE
    named = words[words.index("up") + 2 :]
    assert named and set(named) <= set(agents(compose)), named
    count = re.search(r"\((\d+) services agent-gpu0\.\.(\d+);", DOCKER_DOCS)
    assert count and int(count.group(1)) == len(agents(compose)) == int(count.group(2)) + 1


def service_process(
    compose: dict, name: str, shell: dict[str, str], tmp: Path
) -> tuple[list[str], dict[str, str]]:
    """The service's container as a local process (argv, env): the image's ENTRYPOINT + CMD with
    the venv's python, the image's ENV then the service's (``${VAR:?}`` and pass-through keys
    from ``shell``), the image's volume mapped to a folder under ``tmp``."""
    volume = image_volume()
    workspace = tmp / "workspace"

    def mapped(value: str) -> str:
        return str(workspace) + value[len(volume) :] if value.startswith(volume) else value

    env = {k: mapped(v) for k, v in DOCKERFILE.env({"PATH": os.environ["PATH"]}).items()}
    for key, value in agents(compose)[name]["environment"].items():
        if value is None:  # passed through from the shell when set there
            if key in shell:
                env[key] = shell[key]
            continue
        interpolated = re.sub(r"\$\{(\w+):\?[^}]*\}", lambda m: shell[m.group(1)], value)
        env[key] = mapped(interpolated)
    argv = [*exec_form(DOCKERFILE.last("ENTRYPOINT")), *exec_form(DOCKERFILE.last("CMD"))]
    argv = [sys.executable if a.endswith("/python") else a for a in argv]
    if shutil.which("tini") is None:  # tini only forwards signals; the command stays the same
        argv = argv[argv.index("--") + 1 :]
    env["PYTHONPATH"] = str(ROOT / "src")  # this checkout's trainjob, as the image installs it
    return [shutil.which(argv[0]) or argv[0], *argv[1:]], env


@pytest.mark.parametrize("name", ["agent-gpu0", "agent-gpu3"])
def test_each_agent_runs_the_entrypoint_as_an_agent(
    compose: dict, name: str, tmp_path: Path
) -> None:
    """The service's environment, through the image's entrypoint, starts a sweep agent on the
    shell's sweep (no Docker: the same command and variables, here): against the W&B stand-in,
    whose sweep has no trials left, it ends at once, exit 0."""
    with fake_wandb("ok", tmp_path, plan=[]) as server:
        shell = {"TRAINJOB_SWEEP_ID": "me/pytorch-demo/abc123", "WANDB_API_KEY": "k" * 40}
        argv, env = service_process(compose, name, shell, tmp_path)
        env["WANDB_BASE_URL"] = server.url  # the one variable added: the stand-in's address
        result = subprocess.run(
            argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180
        )
        unknown = server.unknown_ops()
    assert result.returncode == 0, result.stderr[-2000:]
    assert not unknown, unknown
    assert "trainjob agent: done after 0 trial(s)" in result.stdout
    assert Path(env["TRAINJOB_OUTPUT_DIR"]).is_relative_to(tmp_path / "workspace")


def test_compose_file_is_clean_yaml() -> None:
    yamllint = shutil.which("yamllint", path=str(Path(sys.executable).parent))
    assert yamllint, "yamllint is missing: pip install -e '.[dev]'"
    config = "{extends: default, rules: {line-length: {max: 100}, document-start: disable}}"
    result = subprocess.run(
        [yamllint, "-s", "-d", config, str(COMPOSE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout


def _docker_compose() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="no `docker compose` plugin here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TRAINJOB_SWEEP_ID": "e/p/abc"}
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    missing = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config"],
        capture_output=True,
        text=True,
        env={k: v for k, v in env.items() if k != "TRAINJOB_SWEEP_ID"},
        timeout=60,
    )
    assert missing.returncode != 0 and "TRAINJOB_SWEEP_ID" in missing.stderr


# --- the env file ------------------------------------------------------------------------------
def env_example() -> dict[str, tuple[str, bool]]:
    """KEY -> (value, commented out)."""
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = ENV_LINE.match(line.strip())
        if match:
            entries[match.group(2)] = (match.group(3), bool(match.group(1)))
    return entries


def test_env_example_documents_every_setting_and_nothing_else() -> None:
    documented = {k for k in env_example() if k.startswith("TRAINJOB_")}
    fields = {env_name(name) for name in Settings.model_fields}
    missing = [
        f"# {Settings.model_fields[name].description}\n# {env_name(name)}="
        for name in Settings.model_fields
        if env_name(name) not in documented
    ]
    assert not missing, "add to docker/trainjob.env.example:\n" + "\n".join(missing)
    assert documented <= fields, f"not settings: {sorted(documented - fields)}"
    for key in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        assert key in env_example(), key


def test_env_example_shows_the_values_the_container_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every commented value is what the image runs with when the line stays commented."""
    image_env = parse(ROOT / "Dockerfile").final.env({"PATH": "/usr/bin"})
    for key in [k for k in os.environ if k.startswith("TRAINJOB_")]:
        monkeypatch.delenv(key)
    for key, value in image_env.items():
        if key.startswith("TRAINJOB_"):
            monkeypatch.setenv(key, value)
    expected = load_settings([]).model_dump()
    for key, (value, _) in env_example().items():
        if key.startswith("TRAINJOB_") and value:
            monkeypatch.setenv(key, value)
        if key.startswith("WANDB_") and key in image_env:
            assert value == image_env[key], key
    assert load_settings([]).model_dump() == expected


def test_env_example_holds_no_secret() -> None:
    entries = env_example()
    assert entries["WANDB_API_KEY"] == ("", True)  # documented, commented out, empty
    assert not re.search(r"\b[0-9a-f]{40}\b", ENV_EXAMPLE.read_text())  # a W&B key's shape
    assert "/docker/trainjob.env" in (ROOT / ".gitignore").read_text().splitlines()
