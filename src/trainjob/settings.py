"""The one typed configuration of trainjob.

Precedence: defaults < ``TRAINJOB_*`` environment variables < command-line flags. A W&B sweep
agent passes ``--learning_rate=0.01``; a Kubernetes Job sets ``TRAINJOB_LEARNING_RATE``: both land
here and are validated the same way. W&B's own variables (``WANDB_API_KEY``, ``WANDB_MODE``,
``WANDB_PROJECT``, ``WANDB_DIR``, ...) are deliberately *not* declared: wandb reads them itself.

    python -m trainjob --help
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "TRAINJOB_"
DATASETS = ("MNIST", "FashionMNIST", "KMNIST")
DATASET_CLASSES = 10  # all three torchvision datasets have ten labels
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")

# Fields that describe *where* or *how* a job runs, not *what* it learns. They are kept out of
# the W&B config so that two runs with the same hyperparameters compare equal on the dashboard.
RUNTIME_FIELDS = frozenset(
    {
        "data_dir",
        "cache_dir",
        "output_dir",
        "checkpoint_dir",
        "checkpoint_every_steps",
        "checkpoint_every_s",
        "run_id",
        "run_name",
        "group",
        "sweep_id",
        "sweep_count",
        "max_consecutive_failures",
        "wandb_init_timeout",
        "wandb_finish_timeout",
        "threads",
        "progress",
        "progress_every_s",
        "device",
        "onnx_exporter",
        "watcher",
    }
)


class Settings(BaseSettings):
    """Every knob of a trainjob run. Each field is an env var ``TRAINJOB_<NAME>`` and a flag
    ``--<name>``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="forbid",
        validate_default=True,
        cli_prog_name="trainjob",
        cli_exit_on_error=False,
        cli_hide_none_type=True,
        cli_avoid_json=True,
        cli_implicit_flags=False,
    )

    # --- the tutorial's hyperparameters (logged as the W&B config) ---------------------------
    epochs: int = Field(5, gt=0, le=100_000, description="Passes over the (sliced) training set.")
    batch_size: int = Field(128, gt=0, le=65_536, description="Examples per optimizer step.")
    learning_rate: float = Field(
        0.005, gt=0, le=10, allow_inf_nan=False, description="Adam learning rate."
    )
    kernels: Annotated[list[int], NoDecode] = Field(
        [16, 32],
        description="Output channels of the two conv layers, e.g. '[16, 32]' or '16,32'.",
    )
    classes: int = Field(10, ge=DATASET_CLASSES, le=10_000, description="Output logits (>= 10).")
    dataset: Literal["MNIST", "FashionMNIST", "KMNIST"] = Field(
        "MNIST", description="torchvision dataset: MNIST, FashionMNIST or KMNIST."
    )
    architecture: Literal["CNN"] = Field("CNN", description="Model family (only CNN).")
    data_slice: int = Field(
        5, gt=0, le=10_000, description="Keep every n-th example, the tutorial's [::5]; 1 = all."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for weights and shuffling.")
    lr_schedule: Literal["none", "onecycle"] = Field(
        "none", description="none (constant, the tutorial's) or onecycle (warm up, cosine to 0)."
    )

    # --- speed (results are identical on CPU whatever these are, except amp) -----------------
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    amp: Literal["none", "bf16"] = Field(
        "none",
        description="Autocast precision: none or bf16, on CUDA and on the CPU. On a CPU bf16 "
        "pays only with native bf16 (AMX or AVX-512 BF16: Xeon 4th gen+, AMD Zen 4+); "
        "elsewhere it is emulated and slower (a warning says so).",
    )
    compile: bool = Field(False, description="torch.compile the model (pays off on long jobs).")
    cuda_graphs: bool = Field(
        False,
        description="CUDA: replay each full-batch step as one CUDA graph (not with watcher=wandb).",
    )
    channels_last: bool = Field(True, description="Use channels_last memory format.")
    onnx_exporter: Literal["dynamo", "torchscript"] = Field(
        "dynamo",
        description="ONNX exporter: dynamo (torch's default, 2-8 s) or torchscript (0.2 s).",
    )
    threads: int = Field(
        0, ge=0, le=1024, description="CPU threads; 0 = from the cgroup CPU quota/OMP_NUM_THREADS."
    )

    # --- W&B tracking --------------------------------------------------------------------------
    project: str | None = Field(
        None, description="W&B project; default WANDB_PROJECT, else 'pytorch-demo'."
    )
    run_name: str | None = Field(None, description="W&B run display name.")
    group: str | None = Field(None, description="W&B run group (offline sweeps set it).")
    run_id: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Deterministic W&B run id (e.g. the Kubernetes Job name) to resume into.",
    )
    watcher: Literal["trainjob", "wandb"] = Field(
        "trainjob",
        description="Who computes the watch histograms: trainjob (on the device, same records) "
        "or wandb (W&B's run.watch hooks, slower).",
    )
    watch_log: Literal["gradients", "parameters", "all", "none"] = Field(
        "all", description="run.watch log: gradients, parameters, all or none."
    )
    watch_freq: int = Field(10, gt=0, description="run.watch log_freq, in batches.")
    log_every: int = Field(25, gt=0, description="Log loss/epoch every n batches.")
    wandb_init_timeout: float = Field(
        15.0, gt=0, le=600, description="Seconds to wait for the W&B server before going offline."
    )
    wandb_finish_timeout: float = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds run.finish() waits for uploads; the rest stays for `wandb sync`.",
    )

    # --- where things go -----------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Dataset root (raw IDX files, .gz or not).")
    cache_dir: Path | None = Field(
        None,
        description="Unpacked-dataset cache (the data folder is only read); "
        "default $XDG_CACHE_HOME/trainjob or ~/.cache/trainjob.",
    )
    output_dir: Path = Field(Path("outputs"), description="Model and run summary output folder.")
    checkpoint_dir: Path | None = Field(
        None, description="Checkpoint folder; default <output_dir>/checkpoints."
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Checkpoint every n optimizer steps; 0 = off."
    )
    checkpoint_every_s: float = Field(
        60.0, ge=0, allow_inf_nan=False, description="Checkpoint every n seconds; 0 = off."
    )
    progress: bool = Field(
        True, description="A progress bar on a terminal; false (or no terminal): plain lines."
    )
    progress_every_s: float = Field(
        30.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Without a bar: a progress line at least every n seconds (0 = per epoch).",
    )

    # --- sweeps --------------------------------------------------------------------------------
    sweep_id: str | None = Field(
        None,
        description="W&B sweep to run an agent for ('entity/project/id' or 'id').",
    )
    sweep_count: int | None = Field(None, gt=0, description="Trials this agent runs; default all.")
    max_consecutive_failures: int = Field(
        3, gt=0, description="Agent stops (exit 1) after this many failed trials in a row."
    )

    @field_validator("kernels", mode="before")
    @classmethod
    def _parse_kernels(cls, value: Any) -> Any:
        # Env vars and sweep flags arrive as text: accept JSON ('[16, 32]') and '16,32'.
        if isinstance(value, str):
            text = value.strip()
            try:
                return (
                    json.loads(text)
                    if text.startswith("[")
                    else [int(part) for part in re.split(r"[,\s]+", text) if part]
                )
            except ValueError as exc:
                raise ValueError("expected a list of 2 positive integers like [16, 32]") from exc
        return value

    @field_validator("kernels")
    @classmethod
    def _check_kernels(cls, value: list[int]) -> list[int]:
        if len(value) != 2 or any(k <= 0 or k > 4096 for k in value):
            raise ValueError("expected a list of 2 integers in 1..4096 like [16, 32]")
        return value

    @field_validator("watch_log")
    @classmethod
    def _check_watch_with_graphs(cls, value: str, info: ValidationInfo) -> str:
        # W&B's run.watch works through module and tensor hooks, which run in Python and so
        # not inside a CUDA graph replay: its histograms would silently stop after the capture.
        # trainjob's watcher is driven by the loop around each replay instead.
        if value != "none" and info.data.get("cuda_graphs") and info.data.get("watcher") == "wandb":
            raise ValueError(
                "TRAINJOB_CUDA_GRAPHS=true with TRAINJOB_WATCHER=wandb needs "
                "TRAINJOB_WATCH_LOG=none (run.watch's hooks do not run inside a CUDA graph "
                "replay); use TRAINJOB_WATCHER=trainjob"
            )
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not _DEVICE_RE.match(value):
            raise ValueError("expected auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _defaults_that_depend(self) -> Settings:
        if self.checkpoint_dir is None:
            self.checkpoint_dir = self.output_dir / "checkpoints"
        return self

    # --- derived values ------------------------------------------------------------------------
    @property
    def resolved_project(self) -> str:
        return self.project or os.environ.get("WANDB_PROJECT") or "pytorch-demo"

    @property
    def ckpt_dir(self) -> Path:
        assert self.checkpoint_dir is not None  # set by the validator above
        return self.checkpoint_dir

    def run_config(self) -> dict[str, Any]:
        """The hyperparameters logged as the W&B config: JSON-safe, no paths, no secrets."""
        data = self.model_dump(mode="json", exclude=set(RUNTIME_FIELDS))
        data["project"] = self.resolved_project
        return data


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"
