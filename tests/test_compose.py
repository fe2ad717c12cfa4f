"""docker/: the compose file (one sweep agent per GPU) and the documented env file.

`docker compose config` needs the compose plugin, which not every docker CLI has; the
file is read with PyYAML (merge keys resolved as compose does) and checked by yamllint, and
`docker compose config` runs too where the plugin exists.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from dockerfile import parse
from helpers import ROOT

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


def test_agents_run_the_image_read_only_with_the_volume(compose: dict) -> None:
    runtime = parse(ROOT / "Dockerfile").final
    volume = runtime.last("VOLUME")
    assert volume and "/workspace" in volume.args
    for name, service in agents(compose).items():
        assert service["image"] == IMAGE, name
        assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
        assert service["read_only"] is True
        assert service["volumes"] == ["trainjob:/workspace"]
        assert re.fullmatch(r"\d+(\.\d+)?[kmg]b?", str(service["shm_size"]).lower())
        assert service["stop_grace_period"]
        assert service["env_file"] == [{"path": "trainjob.env", "required": False}]
        # Nothing overrides the image's entrypoint/command: TRAINJOB_SWEEP_ID makes it an agent.
        assert "entrypoint" not in service and "command" not in service
    assert "trainjob" in compose["volumes"]


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
