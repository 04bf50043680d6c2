# The two commands of the README: `make run` and `make test`. Each installs what it needs
# into a local virtualenv (.venv) first, so they work on a fresh machine. They install the
# pinned versions of the *.lock files; `make lock` resolves those again from the ranges in
# requirements*.txt (and the legacy SDK's environment for the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

PIP := --quiet --disable-pip-version-check
LOCK_VENV := .lock-venv

.PHONY: run test bench bench-faults lint emulator lock

$(BIN)/.runtime: requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) -r requirements.lock
	touch $@

$(BIN)/.dev: requirements.lock requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP) -r requirements-dev.lock
	touch $(BIN)/.runtime $@

## Start the gateway (with the bundled Dify emulator when no Dify is configured).
run: $(BIN)/.runtime
	$(BIN)/python openai_to_dify.py

# Codex CLI for the Responses API tests, pinned by tests/codex/package-lock.json (npm from Node.js).
CODEX := tests/codex/node_modules/.bin/codex

$(CODEX): tests/codex/package-lock.json
	npm ci --prefix tests/codex --no-audit --no-fund --loglevel=error
	touch $@

## Run every test: unit tests and the gateway served for real against the emulator and real clients.
test: $(BIN)/.dev $(CODEX)
	$(BIN)/python -m pytest -q

## Benchmarks: the gateway against the emulator called directly, and 10,000 held streams, in one run.
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

## Resolve the pinned versions again (requirements.lock, requirements-dev.lock, tests/legacy-openai.lock).
lock:
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install $(PIP) -r requirements.txt
	{ echo "# Pinned runtime packages, resolved from requirements.txt by \`make lock\`: \`make run\` installs these."; \
	  $(LOCK_VENV)/bin/pip freeze; } > requirements.lock
	$(LOCK_VENV)/bin/pip install $(PIP) -r requirements-dev.txt
	{ echo "# Pinned test and benchmark tools (and the runtime), resolved from requirements-dev.txt by \`make lock\`:"; \
	  echo "# \`make test\` installs these, so a CI run is reproducible."; $(LOCK_VENV)/bin/pip freeze; } > requirements-dev.lock
	rm -rf $(LOCK_VENV) && $(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install $(PIP) "openai==0.28.1"
	{ echo "# The legacy openai 0.28 SDK's environment (tests/conftest.py makes it in .venv-legacy), pinned by \`make lock\`."; \
	  $(LOCK_VENV)/bin/pip freeze; } > tests/legacy-openai.lock
	rm -rf $(LOCK_VENV)
