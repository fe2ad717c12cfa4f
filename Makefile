# trainjob: `make run` trains once, `make test` runs the checks. Both create .venv when missing.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Real MNIST, when this checkout sits beside the team's shared folder (CI does).
MNIST_SRC ?= $(firstword $(wildcard ../shared/data/mnist))
export TRAINJOB_TEST_MNIST_DIR ?= $(if $(MNIST_SRC),$(abspath $(MNIST_SRC)))

.PHONY: run test lint format bench clean venv lock image

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

run: venv data/.seeded
	$(VENV)/bin/trainjob

test: venv
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
image:
	docker build -t $(IMAGE) --build-arg REVISION=$(shell git rev-parse --short HEAD) .

clean:
	rm -rf outputs wandb .pytest_cache
