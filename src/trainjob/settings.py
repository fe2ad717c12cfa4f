"""The one typed configuration of trainjob.

Precedence: defaults < ``TRAINJOB_*`` environment variables < command-line flags. A W&B sweep
agent passes ``--learning_rate=0.01``; a Kubernetes Job sets ``TRAINJOB_LEARNING_RATE``: both land
here and are validated the same way. W&B's own variables (``WANDB_API_KEY``, ``WANDB_MODE``,
``WANDB_PROJECT``, ``WANDB_DIR``, ...) are deliberately *not* declared: wandb reads them itself.

    python -m trainjob --help
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from .choices import DATASET_CLASSES, DATASETS, WATCH_LOG_CHOICES, Dataset, WatchLog
from .errors import ConfigError

ENV_PREFIX = "TRAINJOB_"
_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def _one_of(choices: tuple[str, ...]) -> str:
    """('a', 'b', 'c') -> 'a, b or c', for a description that lists a field's choices."""
    return f"{', '.join(choices[:-1])} or {choices[-1]}"


class Scope(Enum):
    """What a setting is about, declared once per field (``Annotated[type, Scope.X]``; no mark:
    ``LEARNED``). Everything that treats fields differently asks this: the W&B config
    (``run_config``), the sweep file checks, ``sweep run``'s flags and the trial's environment."""

    LEARNED = "learned"  # what a run learns: the W&B config; may be a sweep parameter
    # Where or how a job runs, not what it learns: kept out of the W&B config, so that two runs
    # with the same hyperparameters compare equal on the dashboard; may be a sweep parameter.
    RUNTIME = "runtime"
    PLACE = "place"  # where a run's files go: a sweep gives each trial a folder under it
    IDENTITY = "identity"  # names one run: a sweep names each trial itself
    SWEEP = "sweep"  # the sweep process's own: its value never reaches a trial


RUNTIME, PLACE, IDENTITY, SWEEP = Scope.RUNTIME, Scope.PLACE, Scope.IDENTITY, Scope.SWEEP


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
    dataset: Dataset = Field("MNIST", description=f"torchvision dataset: {_one_of(DATASETS)}.")
    architecture: Literal["CNN"] = Field("CNN", description="Model family (only CNN).")
    data_slice: int = Field(
        5, gt=0, le=10_000, description="Keep every n-th example, the tutorial's [::5]; 1 = all."
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="Seed for weights and shuffling.")
    lr_schedule: Literal["none", "onecycle"] = Field(
        "none", description="none (constant, the tutorial's) or onecycle (warm up, cosine to 0)."
    )

    # --- speed (results are identical on CPU whatever these are, except amp) -----------------
    device: Annotated[str, RUNTIME] = Field("auto", description="auto, cpu, cuda or cuda:N.")
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
    onnx_exporter: Annotated[Literal["dynamo", "torchscript"], RUNTIME] = Field(
        "dynamo",
        description="ONNX exporter: dynamo (torch's default, 2-8 s) or torchscript (0.2 s).",
    )
    threads: Annotated[int, RUNTIME] = Field(
        0, ge=0, le=1024, description="CPU threads; 0 = from the cgroup CPU quota/OMP_NUM_THREADS."
    )

    # --- W&B tracking --------------------------------------------------------------------------
    project: str | None = Field(
        None, description="W&B project; default WANDB_PROJECT, else 'pytorch-demo'."
    )
    run_name: Annotated[str | None, IDENTITY] = Field(None, description="W&B run display name.")
    group: Annotated[str | None, IDENTITY] = Field(
        None, description="W&B run group (offline sweeps set it)."
    )
    run_id: Annotated[str | None, IDENTITY] = Field(
        None,
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="Deterministic W&B run id (e.g. the Kubernetes Job name) to resume into.",
    )
    tags: Annotated[list[str], NoDecode, IDENTITY] = Field([], description="W&B run tags.")
    watcher: Annotated[Literal["trainjob", "wandb"], RUNTIME] = Field(
        "trainjob",
        description="Who computes the watch histograms: trainjob (on the device, same records) "
        "or wandb (W&B's run.watch hooks, slower).",
    )
    watch_log: WatchLog = Field("all", description=f"run.watch log: {_one_of(WATCH_LOG_CHOICES)}.")
    watch_freq: int = Field(10, gt=0, description="run.watch log_freq, in batches.")
    log_every: int = Field(25, gt=0, description="Log loss/epoch every n batches.")
    wandb_init_timeout: Annotated[float, RUNTIME] = Field(
        15.0, gt=0, le=600, description="Seconds to wait for the W&B server before going offline."
    )
    wandb_finish_timeout: Annotated[float, RUNTIME] = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds run.finish() waits for uploads; the rest stays for `wandb sync`.",
    )
    sync_stall_s: Annotated[float, RUNTIME] = Field(
        60.0,
        gt=0,
        le=86_400,
        description="Seconds `trainjob sync` waits for progress from `wandb sync` (a line, "
        "a run marked synced) before stopping it, exit 8.",
    )

    # --- where things go -----------------------------------------------------------------------
    data_dir: Annotated[Path, RUNTIME] = Field(
        Path("data"), description="Dataset root (raw IDX files, .gz or not)."
    )
    cache_dir: Annotated[Path | None, RUNTIME] = Field(
        None,
        description="Unpacked-dataset cache (the data folder is only read); "
        "default $XDG_CACHE_HOME/trainjob or ~/.cache/trainjob.",
    )
    output_dir: Annotated[Path, PLACE] = Field(
        Path("outputs"), description="Model and run summary output folder."
    )
    checkpoint_dir: Annotated[Path | None, PLACE] = Field(
        None,
        description="Checkpoint folder, one folder per run id inside; default "
        "<output_dir>/checkpoints.",
    )
    checkpoint_every_steps: Annotated[int, RUNTIME] = Field(
        0, ge=0, description="Checkpoint every n optimizer steps; 0 = off."
    )
    checkpoint_every_s: Annotated[float, RUNTIME] = Field(
        60.0, ge=0, allow_inf_nan=False, description="Checkpoint every n seconds; 0 = off."
    )
    lease_ttl_s: Annotated[float, RUNTIME] = Field(
        30.0,
        ge=1,
        le=3600,
        allow_inf_nan=False,
        description="A run id's lease (one live job per id) expires this long after its "
        "holder's last heartbeat.",
    )
    progress: Annotated[bool, RUNTIME] = Field(
        True, description="A progress bar on a terminal; false (or no terminal): plain lines."
    )
    progress_every_s: Annotated[float, RUNTIME] = Field(
        30.0,
        ge=0,
        le=86_400,
        allow_inf_nan=False,
        description="Without a bar: a progress line at least every n seconds (0 = per epoch).",
    )

    # --- sweeps --------------------------------------------------------------------------------
    sweep_id: Annotated[str | None, SWEEP] = Field(
        None,
        description="W&B sweep to run an agent for ('entity/project/id' or 'id').",
    )
    sweep_count: Annotated[int | None, SWEEP] = Field(
        None, gt=0, description="Trials this agent runs; default all."
    )
    parallel_trials: Annotated[int | Literal["auto"], SWEEP] = Field(
        1,
        description="Trials a sweep (agent, sweep run) runs at once on this machine, sharing "
        "its CPUs and GPU; auto: from the device (said at start).",
    )
    max_consecutive_failures: Annotated[int, SWEEP] = Field(
        3,
        gt=0,
        description="Agent / sweep run stops (exit 7) after this many failed trials in a row.",
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

    @field_validator("tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: Any) -> Any:
        # As for kernels: text from the environment is JSON ('["a", "b"]') or 'a,b'.
        if isinstance(value, str):
            text = value.strip()
            if not text.startswith("["):
                return [part.strip() for part in text.split(",") if part.strip()]
            try:
                return json.loads(text)
            except ValueError as exc:
                raise ValueError('expected a JSON list of strings like ["a", "b"], or a,b') from exc
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        # wandb.init refuses a tag that is empty or over 64 characters (wandb_settings.py,
        # validate_run_tags): refused here instead, before any work, naming the setting.
        bad = [t for t in value if not 1 <= len(t) <= 64]
        if bad:
            raise ValueError(f"a W&B tag has 1 to 64 characters, not {bad[0]!r}")
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

    @field_validator("parallel_trials", mode="before")
    @classmethod
    def _check_parallel(cls, value: Any) -> Any:
        text = str(value).strip().lower()
        if text == "auto":
            return "auto"
        if not text.isdigit() or not 1 <= int(text) <= 64:
            raise ValueError("expected auto or a whole number from 1 to 64")
        return int(text)

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
    def checkpoint_root(self) -> Path:
        """``checkpoint_dir``, resolved: the folder that holds one folder per run id (a job's
        own is ``identity.Claim.checkpoint_folder``)."""
        assert self.checkpoint_dir is not None  # set by the validator above
        return self.checkpoint_dir

    def run_config(self) -> dict[str, Any]:
        """The hyperparameters logged as the W&B config: JSON-safe, no paths, no secrets."""
        data = self.model_dump(mode="json", include=set(fields_in(Scope.LEARNED)))
        data["project"] = self.resolved_project
        return data


def scope_of(name: str) -> Scope:
    marks = [m for m in Settings.model_fields[name].metadata if isinstance(m, Scope)]
    return marks[0] if marks else Scope.LEARNED


def fields_in(*scopes: Scope) -> tuple[str, ...]:
    """The fields of these scopes, in declaration order."""
    return tuple(name for name in Settings.model_fields if scope_of(name) in scopes)


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# --- settings from the environment and flags, every problem one line ---------------------------


def flag_names(argv: Sequence[str]) -> list[str]:
    """The names of the flags in ``argv`` (``--name`` or ``--name=value``), in order."""
    return [a[2:].split("=", 1)[0] for a in argv if a.startswith("--")]


def _describe(loc: str, value: Any, argv: Sequence[str]) -> str:
    if loc in flag_names(argv):
        return f"--{loc}={value!s}"
    env = env_name(loc)
    if env in os.environ:
        return f"{env}={os.environ[env]!r}"
    return f"{loc}={value!r}"


def check_unknown_env() -> None:
    """pydantic-settings ignores unknown prefixed variables; a typo such as TRAINJOB_EPOCS=3
    would silently train with the default. Refuse it instead."""
    known = {env_name(name) for name in Settings.model_fields}
    for key in sorted(os.environ):
        if key.upper().startswith(ENV_PREFIX) and key.upper() not in known:
            close = difflib.get_close_matches(key.upper(), sorted(known), n=1)
            hint = f"; did you mean {close[0]}?" if close else "; see trainjob --help"
            raise ConfigError(f"{key} is not a trainjob setting{hint}")


def _one_line(text: str) -> str:
    """A value holding a newline or another control character must not break the one-line
    error contract: such characters are shown escaped, as ``repr`` would."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def load_settings(argv: Sequence[str]) -> Settings:
    """Settings from env + flags, or a ConfigError whose message is one line (several problems
    are joined with '; '); tests/test_resilience_fuzz.py checks that nothing else escapes."""
    try:
        return _load_settings(argv)
    except ConfigError as exc:
        raise ConfigError(_one_line(str(exc))) from None


def _load_settings(argv: Sequence[str]) -> Settings:
    check_unknown_env()
    try:
        return Settings(_cli_parse_args=list(argv))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "settings"
            field = str(err["loc"][0]) if err["loc"] else loc
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_describe(field, err.get('input'), argv)} is invalid: {msg}")
        raise ConfigError("; ".join(problems)) from None
    except SettingsError as exc:
        text = str(exc).removeprefix("error parsing CLI: ")
        if "unrecognized arguments" in text:
            names = [a.split("=")[0].lstrip("-") for a in text.split(":", 1)[1].split()]
            close = (
                difflib.get_close_matches(names[0], list(Settings.model_fields), n=1)
                if names
                else []
            )
            hint = f"; did you mean --{close[0]}?" if close else "; see trainjob --help"
            raise ConfigError(f"{text}{hint}") from None
        raise ConfigError(f"{' '.join(text.split())}; see trainjob --help") from None
