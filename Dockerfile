# syntax=docker/dockerfile:1
# trainjob: the training job as a non-root, read-only-root-filesystem CUDA image.
#
#   docker build -t ghcr.io/trainjob/trainjob:0.1.0 .
#   docker run --rm --gpus all --read-only -v trainjob:/workspace ghcr.io/trainjob/trainjob:0.1.0
#
# Base: torch 2.14.1's PyPI wheel is the CUDA 13.0 build (torch.version.cuda == "13.0"; its
# nvidia-cuda-runtime wheel is cudart 13.0.96, i.e. CUDA 13.0 Update 2) and brings every CUDA
# library it loads (cuBLAS, cuDNN 9.24, NCCL, ...) as nvidia-* wheels found through its RPATH.
# So the small `base` flavour is enough: it carries NVIDIA_REQUIRE_CUDA (the container toolkit
# refuses a host driver too old for CUDA 13.0 at start, with a clear message, instead of a
# failure deep inside torch) and the NVIDIA_* environment. A cudnn-runtime base would add a
# second copy of the CUDA libraries and cuDNN, several GB that torch never loads.
# Both stages use the same base so the venv's python symlink (/usr/bin/python3.12) resolves.
# PYTHON is the base's Python package, Ubuntu 24.04's python3.12 (the lock's Python). Both
# build args exist for a stand-in base where no registry is reachable (docker/standin-base.sh,
# Debian 13 with python3.13); the defaults are the image users get.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
ARG PYTHON=python3.12

# ---- deps: a venv from the lock file (hash-checked, wheels only) -----------------------------
FROM ${BASE_IMAGE} AS deps
ARG PYTHON

# DL3008 (pin apt versions): Ubuntu drops superseded package versions from its archive, so an
# exact pin breaks the build at the next security update; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends "${PYTHON}" "${PYTHON}-venv" \
 && rm -rf /var/lib/apt/lists/* \
 && "${PYTHON}" -m venv /opt/venv

# Dependencies first: this layer (torch and its CUDA wheels, ~5 GB) is rebuilt only when the
# lock changes, not on every source edit.
COPY requirements.lock /tmp/requirements.lock
RUN /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --require-hashes --only-binary=:all: -r /tmp/requirements.lock

# ---- builder: our package, into that venv (checked) and into /overlay (copied) --------------
FROM deps AS builder
COPY pyproject.toml README.md /src/
COPY src/ /src/src/
# --no-build-isolation: build with the locked setuptools already in the venv (no unpinned
# download); --no-deps: every dependency came from the lock above; `pip check` proves it.
# --root /overlay: the same files again, alone, at their venv paths below /overlay. The runtime
# stage copies the dependencies from `deps` (a ~6 GB layer, cached until the lock changes) and
# only these few files on top, so a source edit rebuilds and pushes kilobytes, not the venv.
# --ignore-installed: pip would see the package in the venv and skip it. --no-compile: bytecode
# compiled below /overlay would name /overlay paths in tracebacks.
RUN /opt/venv/bin/pip wheel --no-cache-dir --disable-pip-version-check \
      --no-deps --no-build-isolation --wheel-dir /tmp/wheel /src \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --no-deps /tmp/wheel/*.whl \
 && /opt/venv/bin/pip check \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check \
      --no-deps --no-compile --ignore-installed --root /overlay /tmp/wheel/*.whl

# ---- runtime: python, tini and the venv; no compilers, no pip cache, no sources --------------
FROM ${BASE_IMAGE} AS runtime

ARG PYTHON

# tini as PID 1: the kernel drops SIGTERM for a PID 1 that has no handler, and trainjob installs
# its checkpointing handler only while it trains. Under tini, python is not PID 1: SIGTERM before
# or after training terminates it at once (exit 143), during training it checkpoints (exit 143),
# and tini reaps the processes wandb and the sweep agent leave behind. tini signals python only
# (no -g): wandb-core runs in its own session and must outlive python's final flush, and W&B's
# agent forwards signals to the trials it starts itself.
# The user has a fixed UID/GID (10001) so Kubernetes can check runAsNonRoot against a numeric
# USER and volumes can be chowned ahead of time. ca-certificates: wandb-core's TLS roots.
# DL3008: see the builder stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends "${PYTHON}" tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 trainjob \
 && useradd --uid 10001 --gid 10001 --no-log-init --no-create-home \
      --home-dir /workspace --shell /usr/sbin/nologin trainjob \
 && install -d -o 10001 -g 10001 -m 0755 /workspace

COPY --from=deps /opt/venv /opt/venv
COPY --from=builder /overlay/ /

# The labels come after the layers: a build arg that RUN can see (REVISION changes with every
# commit) would otherwise miss the layer cache for every RUN below its ARG line.
ARG BASE_IMAGE
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="trainjob" \
      org.opencontainers.image.description="PyTorch ConvNet on MNIST as a batch job tracked with Weights & Biases" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/trainjob/trainjob" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="docker.io/${BASE_IMAGE}"

# Everything that writes lives under /workspace, so the root filesystem can be read-only and
# one volume holds the data, checkpoints, model and the offline W&B runs to `wandb sync` later.
# trainjob creates the missing folders itself (an empty volume is fine).
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/workspace \
    TMPDIR=/workspace/tmp \
    WANDB_DIR=/workspace \
    WANDB_CACHE_DIR=/workspace/.cache/wandb \
    WANDB_CONFIG_DIR=/workspace/.config/wandb \
    WANDB_DATA_DIR=/workspace/.local/share/wandb \
    TRAINJOB_DATA_DIR=/workspace/data \
    TRAINJOB_OUTPUT_DIR=/workspace/outputs \
    TRAINJOB_CHECKPOINT_DIR=/workspace/checkpoints \
    TRAINJOB_PROGRESS=false \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

WORKDIR /workspace
USER 10001:10001
VOLUME ["/workspace"]

# No HEALTHCHECK: a batch job is judged by its exit code, not by probes.
# Flags after the image name go to trainjob (`... IMAGE --epochs 3`); with TRAINJOB_SWEEP_ID
# set and no command the container is a sweep agent, so CMD stays empty (not `train`).
ENTRYPOINT ["/usr/bin/tini", "--", "/opt/venv/bin/python", "-m", "trainjob"]
CMD []
