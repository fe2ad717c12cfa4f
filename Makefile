# trainjob: `make run` trains once, `make test` runs the checks. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real MNIST, when this checkout sits beside a ../shared/data/mnist folder (CI's does).
MNIST_SRC ?= $(firstword $(wildcard ../shared/data/mnist))
export MNIST_TEST_DIR ?= $(if $(MNIST_SRC),$(abspath $(MNIST_SRC)))

# checkov (tests/test_k8s.py) pins packaging<24 and networkx<3, which clash with torch's: it
# gets a venv of its own (~2.5 min to install, once).
CHECKOV_VENV ?= .venv-checkov
export CHECKOV ?= $(abspath $(CHECKOV_VENV))/bin/checkov

.PHONY: run test lint format bench clean venv lock image checkov

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Seed ./data from the shared copy when there is one; otherwise torchvision downloads it.
data/.seeded:
	mkdir -p data
	if [ -n "$(MNIST_SRC)" ]; then cp -n $(MNIST_SRC)/*-ubyte.gz data/; fi
	touch $@

checkov: $(CHECKOV_VENV)/.installed

$(CHECKOV_VENV)/.installed:
	test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/python -m pip install -q checkov==3.3.30
	touch $@

run: venv data/.seeded
	$(VENV)/bin/trainjob

test: venv checkov
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests bench

format: venv
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

bench: venv data/.seeded
	$(PY) bench/cpu.py

# The image's dependencies: every runtime package pinned with hashes, for the image's Python
# (3.12, Ubuntu 24.04's) on x86_64 Linux. Keeps existing pins; add --upgrade to move them.
lock: venv
	$(VENV)/bin/uv pip compile pyproject.toml --python-version 3.12 \
	  --python-platform x86_64-manylinux_2_39 --generate-hashes --quiet -o requirements.lock

IMAGE ?= ghcr.io/trainjob/trainjob:$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
# Extra `docker build` flags; empty for the image users get. .ci/image passes a stand-in base.
IMAGE_BUILD_ARGS ?=
image:
	docker build -t $(IMAGE) --build-arg REVISION=$(shell git rev-parse --short HEAD) \
	  $(IMAGE_BUILD_ARGS) .

clean:
	rm -rf outputs wandb .pytest_cache
