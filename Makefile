PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test redis-server lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP) $@

demo: $(STAMP)
	$(BIN)/blueshift-import run sample_data/customers.csv --mock --rate 50 --overwrite \
		--rejects demo-output/rejects.csv --dead-letter demo-output/dead-letter.jsonl \
		--report demo-output/report.json; \
	status=$$?; [ $$status -le 1 ] || exit $$status

test: $(TEST_STAMP) redis-server
	$(BIN)/python -m pytest -q

# The tests start a real Redis server of their own (--shared-limit): install it where missing.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
redis-server:
	@command -v redis-server >/dev/null || { \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server; }

lint: $(TEST_STAMP)
	$(BIN)/ruff check importer tests benchmarks
	$(BIN)/ruff format --check importer tests benchmarks
	$(BIN)/mypy importer

format: $(TEST_STAMP)
	$(BIN)/ruff format importer tests benchmarks
	$(BIN)/ruff check --fix importer tests benchmarks

# Other modes: make bench BENCH_ARGS="--rows 15000 --rate 5" (see benchmarks/README.md).
BENCH_ARGS ?= --rows 20000 --uncapped

bench: $(TEST_STAMP)
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo-output .pytest_cache build *.egg-info
