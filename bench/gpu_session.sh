#!/usr/bin/env bash
# Everything that needs a GPU, in one call on a GPU machine (any machine with
# CUDA and python3 + torch). Logs go to $OUT (default ./gpu-logs).
#   1. the CUDA tests (tests/test_cuda_graphs.py, the CUDA divergence test)
#   2. bench/gpu.py --variants: parts (a)-(e) on full MNIST
#   3. one real job with presets/fast-h100.env, W&B offline, ONNX export, its summary
# Prepared beforehand (both ignored by git, carried to the machine):
#   .whl/        wheels for what the machine lacks (wandb, pydantic-settings, ...; see docs/performance.md)
#   .benchdata/  the four MNIST *-ubyte.gz files (copied from wherever MNIST is)
set -uo pipefail
OUT=${OUT:-$PWD/gpu-logs}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl >"$OUT/pip.log" 2>&1 || echo "wheel install FAILED"
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export MNIST_TEST_DIR=$PWD/.benchdata
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

echo "== 1. CUDA tests"
timeout 120 python3 -m pytest -q -rA -p no:cacheprovider tests/test_cuda_graphs.py \
    tests/test_resilience_diverge.py -k "cuda or graph" 2>&1 | tee "$OUT/pytest.log" | tail -25

echo "== 2. bench/gpu.py --variants"
timeout 300 python3 bench/gpu.py --data .benchdata --variants 2>&1 | tee "$OUT/bench.log"

echo "== 3. a real job with presets/fast-h100.env (W&B offline)"
job=$(mktemp -d)
mkdir -p "$job/data" && cp .benchdata/*.gz "$job/data/"
(
    set -a && . presets/fast-h100.env && set +a
    export WANDB_MODE=offline WANDB_DIR=$job TRAINJOB_DATA_DIR=$job/data
    export TRAINJOB_OUTPUT_DIR=$job/outputs TRAINJOB_PROGRESS=false
    timeout 120 python3 -m trainjob
    echo "exit code $?"
) >"$OUT/job.log" 2>&1
tail -20 "$OUT/job.log"
cp "$job/outputs/run.json" "$OUT/run.json" 2>/dev/null || true
