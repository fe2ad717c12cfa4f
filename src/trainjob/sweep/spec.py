"""The sweep file, ``sweep.yaml`` (W&B's sweep format), read and checked.

The file is checked before anything runs (exit 2, one line): W&B's own schema (the ``sweeps``
package, W&B's sweep engine), the metric is one the job logs, every parameter is a Settings field
and every value it can take passes Settings validation, spelled as W&B's agent spells it
(``--kernels=[8, 16]``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .. import metrics
from ..errors import ConfigError
from ..settings import Scope, Settings, fields_in, load_settings

# Settings a sweep sets itself (each trial's folders and names, the sweep's own): they cannot be
# sweep parameters.
MANAGED_FIELDS = fields_in(Scope.PLACE, Scope.IDENTITY, Scope.SWEEP)
# What the trial process runs; sweep.yaml's ``command`` is the same for W&B's CLI agent.
TRIAL_COMMAND = ("train",)
SERVER_ONLY_KEYS = ("run_cap",)


def flag(name: str, value: Any) -> str:
    """One parameter as W&B's agent writes it into ``${args}``: ``--name=str(value)``."""
    return f"--{name}={value}"


def plain(value: Any) -> Any:
    """numpy scalars/lists (what the ``sweeps`` engine proposes) -> Python values."""
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, str | bytes):
        return plain(value.tolist())
    return value


def read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"sweep file {path} not found; pass the path of a sweep.yaml") from None
    except OSError as exc:
        raise ConfigError(f"sweep file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ConfigError(f"sweep file {path} is not valid YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"sweep file {path} must be a mapping (method, metric, parameters, ...)")
    return data


def parameter_values(spec: dict[str, Any]) -> list[Any]:
    """The values a parameter can take that can be checked: listed values, or the two ends of a
    bounded distribution (log_uniform's bounds are exponents)."""
    if "value" in spec:
        return [spec["value"]]
    if "values" in spec:
        return list(spec["values"])
    if "min" in spec and "max" in spec:
        ends = [spec["min"], spec["max"]]
        if spec.get("distribution") in ("log_uniform", "q_log_uniform"):
            ends = [math.exp(e) for e in ends]
        return ends
    return []  # normal / log_normal: unbounded, each trial validates its own value


def check_parameters(path: Path, config: dict[str, Any]) -> None:
    fields = Settings.model_fields
    for name, spec in config["parameters"].items():
        if name not in fields:
            raise ConfigError(
                f"{path}: parameter {name!r} is not a trainjob setting; use fields listed by "
                "trainjob --help"
            )
        if name in MANAGED_FIELDS:
            raise ConfigError(f"{path}: parameter {name!r} is set by the sweep itself per trial")
        if "parameters" in spec:
            raise ConfigError(f"{path}: parameter {name!r} cannot have nested parameters")
        for value in parameter_values(spec):
            try:
                load_settings([flag(name, plain(value))])
            except ConfigError as exc:
                raise ConfigError(f"{path}: parameters.{name}: {exc}") from None


def check_metric(path: Path, config: dict[str, Any], allowed: tuple[str, ...]) -> None:
    metric = config.get("metric")
    if metric is None:
        if config["method"] == "bayes":
            raise ConfigError(
                f"{path}: a bayes sweep needs a metric (e.g. {metrics.TEST_ACCURACY})"
            )
        return
    name = metric.get("name")
    if name not in allowed:
        logged = "never logged by trainjob" if name not in metrics.LOGGED else "not in the summary"
        raise ConfigError(f"{path}: metric {name!r} is {logged}; use one of {', '.join(allowed)}")


def check_early_terminate(path: Path, raw: dict[str, Any]) -> None:
    """``early_terminate`` as W&B's engine reads it (its own checks, run on an empty sweep), and
    a metric that is logged once per epoch: named in one line, before any trial."""
    import jsonschema

    spec = raw.get("early_terminate")
    if spec is None:
        return
    example = "e.g. {type: hyperband, min_iter: 1, eta: 2}"
    metric = raw.get("metric") if isinstance(raw.get("metric"), dict) else {}
    if not metric.get("name"):
        raise ConfigError(
            f"{path}: early_terminate needs the sweep's metric: add metric: {{name: "
            f"{metrics.PER_EPOCH[0]}, goal: maximize}}"
        )
    try:
        sweep_engine().stop_runs({"metric": metric, "early_terminate": spec}, [])
    except jsonschema.ValidationError as exc:
        problem = exc.message
        if exc.validator == "anyOf":
            problem = "it needs min_iter (with eta) or max_iter (with s and eta)"
        raise ConfigError(
            f"{path}: early_terminate={spec!r} is invalid: {problem}; {example}"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        problem = " ".join(str(exc).split())
        raise ConfigError(
            f"{path}: early_terminate={spec!r} is invalid: {problem}; {example}"
        ) from None
    name = metric.get("name")
    if name not in metrics.PER_EPOCH:
        raise ConfigError(
            f"{path}: metric {name!r} is not logged once per epoch, so early_terminate has no "
            f"iterations to compare; use metric {' or '.join(metrics.PER_EPOCH)} or remove "
            "early_terminate"
        )


def sweep_engine() -> Any:
    """W&B's sweep engine (PyPI ``sweeps``), see tracking/sweeps.py."""
    from ..tracking.sweeps import engine

    return engine


def check_run_cap(path: Path, config: dict[str, Any]) -> None:
    cap = config.get("run_cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap <= 0):
        raise ConfigError(f"{path}: run_cap={cap!r} is invalid: expected a positive integer")


def load_sweep(path: str | Path, allowed: tuple[str, ...] = metrics.LOGGED) -> dict[str, Any]:
    """Read and check ``path``; returns the config with W&B's defaults filled in."""
    import jsonschema

    sweeps = sweep_engine()
    path = Path(path)
    raw = read_yaml(path)
    # run_cap is a documented top-level key the W&B server knows and sweeps 0.2.0's schema
    # predates: check it here and the rest against the engine's schema.
    check_run_cap(path, raw)
    check_early_terminate(path, raw)
    rest = {k: v for k, v in raw.items() if k not in SERVER_ONLY_KEYS}
    try:
        violations = sweeps.schema_violations_from_proposed_config(rest)
    except ValueError as exc:
        violations = [str(exc)]
    if violations:
        first = " ".join(str(violations[0]).split())
        more = f" (+{len(violations) - 1} more)" if len(violations) > 1 else ""
        raise ConfigError(f"{path} is rejected by W&B's sweep schema: {first}{more}")
    try:
        config = dict(sweeps.SweepConfig(rest))
    except (jsonschema.ValidationError, ValueError) as exc:
        raise ConfigError(f"{path} is rejected by W&B's sweep schema: {exc}") from None
    config.update({k: raw[k] for k in SERVER_ONLY_KEYS if k in raw})
    config.setdefault("name", path.stem)
    check_metric(path, config, allowed)
    check_parameters(path, config)
    return config
