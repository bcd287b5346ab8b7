# spendgate — `make run` and `make test` are all a newcomer needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test lint format bench bench-peers bench-ledger bench-soak soak services browser influxdb screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	@touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@ $(VENV)/.installed

## run: start the gateway (the demo with a fake upstream when no upstream key is configured)
run: $(VENV)/.installed
	$(BIN)/spendgate run

## test: install dev dependencies, start local services, install Chromium and InfluxDB, run every test
test: $(VENV)/.installed-dev services browser influxdb
	$(BIN)/pytest -q

services:
	@bash scripts/start-services.sh

## screenshots: the browser test that photographs every console page, into docs/screenshots/
screenshots: $(VENV)/.installed-dev services browser
	SPENDGATE_SCREENSHOTS=1 $(BIN)/pytest -q tests/web/test_browser.py -k screenshots

browser:
	@bash scripts/install-browser.sh

influxdb:
	@bash scripts/install-influxdb.sh

## lint: ruff and mypy --strict
lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy src

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

## bench: throughput and CPU per request, spendgate vs the fake upstream direct
bench: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || (sudo -n apt-get install -y -q wrk || apt-get install -y -q wrk)
	@command -v hey >/dev/null || (sudo -n apt-get install -y -q hey || apt-get install -y -q hey)
	$(BIN)/python bench/run.py

## bench-peers: the benchmark with LiteLLM's proxy added (pinned, in a cached venv)
bench-peers: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || (sudo -n apt-get install -y -q wrk || apt-get install -y -q wrk)
	@command -v hey >/dev/null || (sudo -n apt-get install -y -q hey || apt-get install -y -q hey)
	$(BIN)/python bench/run.py --peers

## bench-ledger: per-request cost and /admin/usage time with 5,000,000 events in the ledger
bench-ledger: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || (sudo -n apt-get install -y -q wrk || apt-get install -y -q wrk)
	$(BIN)/python bench/ledger_scale.py

## soak: 10 minutes of mixed load and chaos clients: RSS, fds and event-loop tasks flat, ledger exact
soak: $(VENV)/.installed-dev
	@command -v wrk >/dev/null || (sudo -n apt-get install -y -q wrk || apt-get install -y -q wrk)
	$(BIN)/python bench/soak.py

## bench-soak: the same as soak (its earlier name)
bench-soak: soak

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
