# Two commands do everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= config.yaml

.PHONY: run test lint format tiny bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
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

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
