# The two commands of the README: `make run` and `make test`. Each installs what it needs
# into a local virtualenv (.venv) first, so they work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test bench bench-faults lint emulator

$(BIN)/.runtime: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(BIN)/.dev: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(BIN)/.runtime $@

## Start the gateway (with the bundled Dify emulator when no Dify is configured).
run: $(BIN)/.runtime
	$(BIN)/python openai_to_dify.py

## Run every test: unit tests and the gateway served for real against the emulator.
test: $(BIN)/.dev
	$(BIN)/python -m pytest -q

## Benchmarks: the gateway against the emulator called directly, in one run.
bench: $(BIN)/.dev
	$(BIN)/python -m bench

## The fault and load report: disconnect storms, 1,000 held streams, upstream faults.
bench-faults: $(BIN)/.dev
	$(BIN)/python -m bench faults

## Only the Dify emulator (http://127.0.0.1:5001/v1), for local development.
emulator: $(BIN)/.runtime
	$(BIN)/python -m dify_emulator --port 5001

lint: $(BIN)/.dev
	$(BIN)/ruff check .
