# Two commands do everything on a fresh machine: `make run` and `make test`.
# CPU-only machine: `make run TORCH=cpu` (PyTorch's CPU build instead of the public index's CUDA one).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.yaml
TORCH ?= default
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu

.PHONY: run test lint format tiny bench install clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "OnTheFly needs Python 3.11 or newer; $(PYTHON) is " + sys.version.split()[0] + ". Install one and run: make PYTHON=python3.11 ...")'
	@echo "Creating $(VENV) and installing the dependencies (torch and the model libraries: several GB on a first install)..."
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
ifeq ($(TORCH),cpu)
	$(PY) -m pip install --index-url $(TORCH_CPU_INDEX) "$$(grep '^torch==' requirements.txt)"
endif
	$(PY) -m pip install -r requirements-dev.txt
	touch $@

## Start the bot (Discord when DISCORD_TOKEN is set, the console chat otherwise).
run: $(VENV)/.installed
	$(PY) bot.py --config $(CONFIG)

## Lint (with the layering bans), format check, type check and the whole test suite, offline on tiny models.
test: $(VENV)/.installed
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

format: $(VENV)/.installed
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

## Tiny random-weight models (engine + the evaluation's CLIP/DINO) and a config for them in var/tiny.
tiny: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) -m evaluation tiny-models var/tiny

## The benchmarks, offline on tiny models; each prints ratios against a baseline of the same run.
bench: $(VENV)/.installed
	HF_HUB_OFFLINE=1 $(PY) bench/edit_bench.py
	HF_HUB_OFFLINE=1 $(PY) bench/queue_bench.py --tiny
	HF_HUB_OFFLINE=1 $(PY) bench/bot_bench.py

## The commands onthefly, onthefly-edit and onthefly-eval in $(VENV)/bin, from this checkout.
install: $(VENV)/.installed
	$(PY) -m pip install --no-deps .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build
