"""Shared test helpers: tiny IDX datasets, running the real CLI, reading offline W&B runs."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from trainjob.train import Hook, Progress

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
RAW = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def idx_images(images: np.ndarray) -> bytes:
    n, rows, cols = images.shape
    return struct.pack(">IIII", 0x00000803, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">II", 0x00000801, len(labels)) + labels.astype(np.uint8).tobytes()


def synthetic_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28x28 digits-alike: class k lights a 4-pixel-wide bar at column 2 + 2.5k,
    plus noise. A ConvNet gets >90% within an epoch, so accuracy checks mean something."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28))
    for i, k in enumerate(labels):
        col = 2 + int(2.5 * k)
        images[i, 4:24, col : col + 3] = 255 - rng.integers(0, 40)
    return images.astype(np.uint8), labels.astype(np.uint8)


def write_tiny_mnist(root: Path, n_train: int = 512, n_test: int = 256, gz: bool = True) -> Path:
    """A flat folder of MNIST-named IDX files, gzipped as distributed."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 1), ("test", n_test, 2)):
        images, labels = synthetic_split(n, seed)
        for name, blob in zip(RAW[split], (idx_images(images), idx_labels(labels)), strict=True):
            if gz:
                with gzip.GzipFile(root / f"{name}.gz", "wb", mtime=0) as fh:
                    fh.write(blob)
            else:
                (root / name).write_bytes(blob)
    return root


def clean_env(tmp: Path, **overrides: str) -> dict[str, str]:
    """A child environment with no TRAINJOB_/WANDB_ leakage from the developer's shell."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TRAINJOB_", "WANDB_"))
        and k not in ("JOB_COMPLETION_INDEX", "XDG_CACHE_HOME")  # the cache: under HOME below
    }
    inherited = os.environ.get("PYTHONPATH")  # e.g. wheels unpacked for a bare GPU machine
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(SRC), inherited])),
        PYTHONUNBUFFERED="1",
        HOME=str(tmp / "home"),
        WANDB_MODE="offline",
        WANDB_DIR=str(tmp),
        WANDB_CACHE_DIR=str(tmp / "home" / ".cache" / "wandb"),
        WANDB_CONFIG_DIR=str(tmp / "home" / ".config" / "wandb"),
        WANDB_DATA_DIR=str(tmp / "home" / ".local" / "wandb"),
        WANDB_SILENT="true",
        TRAINJOB_OUTPUT_DIR=str(tmp / "outputs"),
        TRAINJOB_PROGRESS="false",
        TRAINJOB_ONNX_EXPORTER="torchscript",
        TRAINJOB_THREADS="2",
    )
    (tmp / "home").mkdir(parents=True, exist_ok=True)
    env.update(overrides)
    return env


def adopt_env(monkeypatch: Any, tmp: Path, **overrides: str) -> Path:
    """Make *this* process's environment a clean job environment (``clean_env``) rooted at
    ``tmp``, for in-process code that starts jobs itself (sweep runners, the agent)."""
    for key in list(os.environ):
        if key.startswith(("TRAINJOB_", "WANDB_", "JOB_COMPLETION")):
            monkeypatch.delenv(key)
    for key, value in clean_env(tmp, **overrides).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp)
    return tmp


def run_cli(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trainjob", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass
class OfflineRun:
    path: Path
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for rec in self.records:
            if rec.get("type") == "run":
                config.update(rec["run"].get("config", {}).get("update", {}))
            elif rec.get("type") == "config":
                config.update(rec["config"].get("update", {}))
        config.pop("_wandb", None)
        return config

    @property
    def run_info(self) -> dict[str, Any]:
        return next(r["run"] for r in self.records if r.get("type") == "run")

    @property
    def history(self) -> list[dict[str, Any]]:
        return [r["history"]["item"] for r in self.records if r.get("type") == "history"]

    @property
    def summary(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for rec in self.records:
            if rec.get("type") == "summary":
                merged.update(rec["summary"].get("update", {}))
        return merged

    @property
    def exit_code(self) -> int | None:
        exits = [r["exit"].get("exit_code", 0) for r in self.records if r.get("type") == "exit"]
        return exits[-1] if exits else None

    def counts(self) -> Counter[str]:
        return Counter(r.get("type", "?") for r in self.records)


def wandb_cli() -> str:
    return shutil.which("wandb", path=str(Path(sys.executable).parent)) or "wandb"


def read_offline_run(path: Path) -> OfflineRun:
    """Read an offline run back with W&B's own reader (``wandb leet inspect --json``)."""
    out = subprocess.run(
        [wandb_cli(), "leet", "inspect", "--json", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return OfflineRun(path, [json.loads(line) for line in out.splitlines() if line.strip()])


def offline_runs(wandb_dir: Path) -> list[Path]:
    base = wandb_dir / "wandb"
    return sorted(p for p in base.glob("offline-run-*") if p.is_dir()) if base.is_dir() else []


class Interrupt(Exception):
    """Where ``SaveAndStop`` stops the loop, as a preemption would."""


class SaveAndStop(Hook):
    """An in-process preemption after step ``at``: model, optimizer and progress written with
    ``torch.save`` as checkpoint.py writes them, then the loop stopped."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, at: int) -> None:
        self.model, self.optimizer, self.at, self.saved = model, optimizer, at, b""

    def after_step(self, progress: Progress) -> None:
        if progress.step == self.at:
            state = {
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "progress": progress.state_dict(),
            }
            buffer = io.BytesIO()
            torch.save(state, buffer)
            self.saved = buffer.getvalue()
            raise Interrupt

    def state(self) -> dict[str, Any]:
        """What was saved, read back onto the CPU as checkpoint.py reads it."""
        return torch.load(io.BytesIO(self.saved), map_location="cpu", weights_only=True)

    def resume(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
        """Load the saved state into a fresh model and optimizer; the progress to go on from."""
        state = self.state()
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        return Progress(**state["progress"])
