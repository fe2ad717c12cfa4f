"""``--amp bf16`` on the CPU: autocast really runs in bf16, and a CPU without native bf16 gets a
one-line warning at start (the speed itself is bench/cpu.py's business)."""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import clean_env, run_cli

from trainjob import data, runtime
from trainjob.model import ConvNet
from trainjob.step import autocast, prepare, train_step
from trainjob.train import LoopConfig, make_optimizer


def test_bf16_autocasts_on_the_cpu(tiny_data: Path) -> None:
    split = data.load("MNIST", tiny_data, data_slice=1).train
    torch.manual_seed(0)
    model = ConvNet([16, 32], 10).to(memory_format=torch.channels_last)
    with autocast(torch.device("cpu"), bf16=True):
        assert model(prepare(split.images[:8], True)).dtype == torch.bfloat16
    optimizer = make_optimizer(model, 0.005)
    cfg = LoopConfig(epochs=1, batch_size=64, log_every=5, seed=0, bf16=True, progress_bar=False)
    loss = train_step(model, optimizer, torch.nn.CrossEntropyLoss(), split, torch.arange(64), cfg)
    assert torch.isfinite(loss)
    # weights, gradients and Adam stay float32 (autocast casts per operation)
    assert all(
        p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in model.parameters()
    )


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not runtime.cpu_has_native_bf16(info)
    info.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert runtime.cpu_has_native_bf16(info)


def test_job_warns_once_where_bf16_is_emulated(tiny_data: Path, tmp_path: Path) -> None:
    env = clean_env(
        tmp_path,
        TRAINJOB_DATA_DIR=str(tiny_data),
        TRAINJOB_DATA_SLICE="4",
        TRAINJOB_EPOCHS="1",
        TRAINJOB_BATCH_SIZE="64",
        TRAINJOB_AMP="bf16",
        TRAINJOB_DEVICE="cpu",
        WANDB_MODE="disabled",
    )
    result = run_cli([], env, tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if "TRAINJOB_AMP=bf16" in line]
    assert len(warnings) == (0 if runtime.cpu_has_native_bf16() else 1), result.stderr
