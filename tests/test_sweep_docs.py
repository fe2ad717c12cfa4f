"""Every sweep command in README.md and docs/sweeps.md runs as shown.

Each ``trainjob sweep run`` line runs with ``--dry-run`` added (the trials themselves are
tested in tests/test_sweep_run.py), ``trainjob sweep create`` and agent lines against the local
W&B stand-in (tests/fake_wandb.py; its sweep has no trials left, so the agent exits at once).
"""

from __future__ import annotations

import re
import secrets
import shlex
from pathlib import Path

import pytest
from fake_wandb import fake_wandb
from helpers import ROOT, clean_env, run_cli

DOCS = (ROOT / "README.md", ROOT / "docs" / "sweeps.md")
KEY = f"canary-{secrets.token_hex(20)}"


def documented_commands() -> list[str]:
    """Shell lines that run a sweep command, from the docs' ```bash blocks."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
            for line in block.replace("\\\n", " ").splitlines():  # joined continuations
                line = line.split("  #", 1)[0].strip()
                if not re.match(r"([A-Z_]+=\S*\s+)*trainjob\s", line + " "):
                    continue
                words = shlex.split(line, comments=True)
                command = [w for w in words if not re.fullmatch(r"[A-Z_]+=\S*", w)]
                if command[:2] == ["trainjob", "sweep"] or command[:2] == ["trainjob", "agent"]:
                    found.append(line)
                elif command[:1] == ["trainjob"] and "TRAINJOB_SWEEP_ID=" in line:
                    found.append(line)  # the agent as the default command
    return sorted(set(found))


def test_the_docs_show_sweep_commands() -> None:
    commands = documented_commands()
    assert any(" sweep run " in c for c in commands) and any("sweep create" in c for c in commands)
    assert any("--worker" in c for c in commands)


@pytest.mark.parametrize("line", documented_commands())
def test_documented_sweep_command_runs(line: str, tmp_path: Path, tiny_data: Path) -> None:
    words = shlex.split(line)
    env_words = [w for w in words if re.fullmatch(r"[A-Z_]+=\S*", w)]
    args = [w for w in words if w not in env_words][1:]  # without "trainjob"
    (tmp_path / "sweep.yaml").symlink_to(ROOT / "sweep.yaml")
    (tmp_path / "k8s").symlink_to(ROOT / "k8s")
    extra = dict(w.split("=", 1) for w in env_words)
    env = clean_env(tmp_path, TRAINJOB_DATA_DIR=str(tiny_data), **extra)
    if args[:2] == ["sweep", "run"]:
        if "--dry-run" not in args:
            args.append("--dry-run")
        result = run_cli(args, env, tmp_path, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
        assert "trainjob sweep:" in result.stdout and "trial" in result.stdout
        return
    with fake_wandb("ok", tmp_path, plan=[]) as server:
        env.update(WANDB_MODE="online", WANDB_API_KEY=KEY, WANDB_BASE_URL=server.url)
        result = run_cli(args, env, tmp_path, timeout=180)
        unknown = server.unknown_ops()
    assert result.returncode == 0, result.stderr[-2000:]
    assert not unknown, unknown
    if args[:2] == ["sweep", "create"]:
        assert "sweep: " in result.stdout
    else:
        assert "trainjob agent: done after 0 trial(s)" in result.stdout
