"""ONNX templates: one export per architecture, every later model's weights swapped in.

An exported graph depends on the model's structure and the export options, not on its weights:
the weights are the graph's *initializers*, named after the ``state_dict`` keys
(https://onnx.ai/onnx/repo-docs/IR.html#graphs: "initializer: a list of named tensor values";
torch 2.14's two exporters name a parameter's initializer by its state_dict key, and ``swap``
checks that for every model rather than trusting it). So the first
job of an architecture exports a *template* into ``<cache>/onnx/<key>.onnx``; a later job loads
it, replaces each initializer with its own weight of the same name, shape and dtype, and writes
the result. The dynamo exporter costs ~2 s a job (torch 2.14, 2-core CPU); a swap ~1 ms.

The key is a SHA-256 of everything the graph depends on (``template_key``); a template also
carries its key and the SHA-256 of its own content in ``metadata_props``, so a damaged,
truncated or foreign file is exported again, never used. Writes are ``records.replacing`` (a
private temp file + ``os.replace``): trials exporting at the same time never see half a file
(the last one wins; all write the same graph). Nothing here runs the exporter or onnxruntime
(export.py does).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import inspect
import json
import sys
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from . import records
from .log import logger

# Bump when the template file's layout (metadata below, what a swap replaces) changes.
FORMAT = 1
_KEY = "trainjob.template_key"
_SHA256 = "trainjob.template_sha256"
# What the graph is built from besides our own source: the exporters live in torch (opset and
# lowering rules come with the version), onnxscript (the dynamo exporter's op library) and onnx.
_PACKAGES = ("torch", "onnx", "onnxscript")

_warned: set[str] = set()
log = logger()


def warn_once(message: str) -> None:
    """One stderr line per process and message: a trial says it once, not once per export."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


# --- the key --------------------------------------------------------------------------------


@cache
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@cache
def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _code_files(model: nn.Module) -> list[str] | None:
    """The source files of the model's own classes (not torch's: the torch version covers
    those): ``forward`` decides the graph. None when a class has no source file."""
    files: set[str] = set()
    for module in model.modules():
        for cls in type(module).__mro__:
            if cls.__module__.split(".")[0] in ("torch", "builtins"):
                continue
            try:
                files.add(inspect.getsourcefile(cls) or "")
            except TypeError:  # a class defined in __main__ of ``python -c`` or a notebook
                return None
    return None if "" in files else sorted(files)


def template_key(
    model: nn.Module, sample: torch.Tensor, exporter: str, export_code: Iterable[Path]
) -> str | None:
    """SHA-256 of what the exported graph depends on: the model's classes and their source,
    every layer's hyperparameters (``repr``: kernels, classes, padding...), the weights' names,
    shapes and dtypes, the input's shape after the batch axis and dtype, whether the sample
    batch is 1 (an exporter may specialise a size-1 dimension: torch.export's "0/1
    specialization", https://pytorch.org/docs/stable/export.html), the exporter and the code
    calling it (``export_code``: opset, names, dynamic axes), the package versions and this
    format. The training copy's memory format, device, dtype and ``torch.compile`` wrapper are
    not in it: export.py always exports a float32, contiguous-format CPU copy of the module.
    None when the model's source cannot be found (then every job exports in full)."""
    files = _code_files(model)
    if files is None:
        return None
    parts = {
        "format": FORMAT,
        "classes": sorted(
            {f"{type(m).__module__}.{type(m).__qualname__}" for m in model.modules()}
        ),
        "code": {f: _file_sha256(f) for f in [*files, *map(str, export_code)]},
        "layers": repr(model),
        "state": [[k, list(v.shape), str(v.dtype)] for k, v in model.state_dict().items()],
        "input": [list(sample.shape[1:]), str(sample.dtype), "contiguous", sample.shape[0] == 1],
        "exporter": exporter,
        "versions": {name: _package_version(name) for name in _PACKAGES},
        "python": sys.version_info[:2],
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# --- the template file ----------------------------------------------------------------------


class Unswappable(ValueError):
    """The template's initializers do not map one to one onto the model's weights."""


def _digest(model: onnx.ModelProto) -> str:
    # deterministic=True: the same message serializes to the same bytes on write and on read.
    return hashlib.sha256(model.SerializeToString(deterministic=True)).hexdigest()


def _strip_own_metadata(model: onnx.ModelProto) -> dict[str, str]:
    """Remove (and return) this module's ``metadata_props``; the exporter's own stay, in order."""
    ours = {p.key: p.value for p in model.metadata_props if p.key in (_KEY, _SHA256)}
    kept = [p for p in model.metadata_props if p.key not in (_KEY, _SHA256)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    return ours


def make_template(exported: bytes, key: str) -> bytes:
    """A fresh export's bytes as a template: the same model plus its key and content digest."""
    model = onnx.load_from_string(exported)
    _strip_own_metadata(model)
    digest = _digest(model)
    onnx.helper.set_model_props(
        model, {**{p.key: p.value for p in model.metadata_props}, _KEY: key, _SHA256: digest}
    )
    return model.SerializeToString(deterministic=True)


def read_template(blob: bytes, key: str) -> onnx.ModelProto | None:
    """The template in ``blob`` (own metadata removed) if it is whole and made for ``key``."""
    try:
        model = onnx.load_from_string(blob)
    except Exception:  # protobuf's DecodeError (truncated or garbage); its class varies
        return None
    ours = _strip_own_metadata(model)
    if ours.get(_KEY) != key or ours.get(_SHA256) != _digest(model):
        return None
    return model


def swap(template: onnx.ModelProto, state: Mapping[str, np.ndarray]) -> bytes:
    """``template`` with every weight of ``state`` in the initializer of the same name, as the
    bytes of a model file. Unswappable unless every weight has exactly one initializer of its
    shape and dtype, stored inside the file: a weight the exporter folded into another tensor
    (e.g. a batch norm folded into a convolution) must not keep the template's value."""
    model = onnx.ModelProto()
    model.CopyFrom(template)
    inits = {i.name: i for i in model.graph.initializer}
    missing = sorted(set(state) - set(inits))
    if missing or len(inits) != len(model.graph.initializer):
        raise Unswappable(f"no initializer for {', '.join(missing) or 'a repeated name'}")
    for name, value in state.items():
        init = inits[name]
        expected = onnx.helper.np_dtype_to_tensor_dtype(value.dtype)
        if list(init.dims) != list(value.shape) or init.data_type != expected:
            raise Unswappable(f"initializer {name} is not a {value.dtype} {list(value.shape)}")
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise Unswappable(f"initializer {name} is stored outside the file")
        init.CopyFrom(onnx.numpy_helper.from_array(np.ascontiguousarray(value), name))
    return model.SerializeToString()


# --- the cache folder -----------------------------------------------------------------------


class TemplateCache:
    """``<folder>/<key>.onnx``. An unwritable folder is said once and the job goes on (the
    caller exports in full, or keeps the template in memory for this job)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, key: str) -> Path:
        return self.folder / f"{key}.onnx"

    def get(self, key: str) -> onnx.ModelProto | None:
        path = self.path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None  # not exported yet (or unreadable): export
        template = read_template(blob, key)
        if template is None:
            warn_once(f"ONNX template {path} is damaged; exporting it again")
        return template

    def put(self, key: str, blob: bytes) -> None:
        try:
            # Not fsync'd: a template that lost its write fails its own hash and is exported again.
            with records.replacing(self.path(key), durable=False) as tmp:
                tmp.write_bytes(blob)
        except OSError as exc:
            warn_once(
                f"cannot cache the ONNX template in {self.folder} ({exc.strerror or exc}); "
                "each job exports its model in full (set TRAINJOB_CACHE_DIR to a writable folder)"
            )
