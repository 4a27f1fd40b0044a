# packdist: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

install: $(STAMP)

.PHONY: install test demo lint typecheck unit integration lab bench clean system-deps

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

demo: $(STAMP)
	$(BIN)/python -m packdist.demo

bench: $(STAMP) system-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
