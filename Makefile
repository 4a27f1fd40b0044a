# packdist: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

install: $(STAMP)

.PHONY: install test demo lint typecheck unit integration lab bench clean system-deps mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System tools the tests and benchmarks use (iproute2 for lab tests, rsync as an anchor,
# chromium for the dashboard's browser test: Playwright drives /usr/bin/chromium, it never
# downloads a browser of its own; PostgreSQL for the second store: each test session starts
# a throwaway cluster of its own, so Debian's own cluster is not needed).
system-deps:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=""; \
	  command -v ip >/dev/null || missing="$$missing iproute2"; \
	  command -v rsync >/dev/null || missing="$$missing rsync"; \
	  command -v zstd >/dev/null || missing="$$missing zstd"; \
	  [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	  [ -x /usr/lib/postgresql/15/bin/initdb ] || missing="$$missing postgresql"; \
	  if [ -n "$$missing" ]; then \
	    echo "installing system packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/dev/null; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check packdist tests $(wildcard bench)
	$(BIN)/ruff format --check packdist tests $(wildcard bench)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: $(STAMP) system-deps
	$(BIN)/pytest -q tests/integration

lab: $(STAMP) system-deps
	$(BIN)/pytest -q tests/lab

test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q tests

# Mutation testing (not part of `make test`): mutmut mutates the rules (states.py, retry.py),
# the despooler and the service layer one change at a time, and runs the unit tests that
# cover each mutant against it ([tool.mutmut] in pyproject.toml; docs/testing.md). A fresh
# run each time, with a fixed hypothesis seed and fewer state-machine examples so that a
# verdict does not depend on the draw; `$(BIN)/mutmut results` then lists the survivors.
MUTATION_ENV := PACKDIST_HYPOTHESIS_SEED=0 PACKDIST_MACHINE_EXAMPLES=15 PACKDIST_DRIVE_TIMEOUT=5 \
	TMPDIR=$(CURDIR)/.mutmut-cache/tmp
mutation: $(STAMP)
	rm -rf mutants .mutmut-cache
	mkdir -p .mutmut-cache/tmp
	$(MUTATION_ENV) $(BIN)/mutmut run --max-children 2 > .mutmut-cache/run.log 2>&1 \
	  || { tail -c 3000 .mutmut-cache/run.log; exit 1; }
	$(BIN)/python -m tests.mutation_score

demo: $(STAMP)
	$(BIN)/python -m packdist.demo

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
