# packdist: every target creates .venv and installs what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# pytest's temporary folders in the checkout, emptied at each run (see tests/conftest.py)
PYTEST_TMP := --basetemp=$(CURDIR)/.pytest-tmp

install: $(STAMP) system-deps

.PHONY: install test demo lint typecheck unit integration lab bench clean system-deps mutation

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# System tools the tests and benchmarks use (iproute2 for lab tests, rsync as an anchor,
# chromium for the dashboard's browser test: Playwright drives /usr/bin/chromium, it never
# downloads a browser of its own; tcpdump for the lab test that reads a capture of the
# cables for the package's bytes in clear; PostgreSQL for the second store: each test session starts
# a throwaway cluster of its own, so Debian's own cluster is not needed; systemd-analyze
# checks the units in deploy/). Installed when
# missing if we are root with apt-get; otherwise what is missing is said, with why, and the
# tiers needing it are skipped (failed under CI=true: see tests/conftest.py).
SYSTEM_TOOLS := ip:iproute2 rsync:rsync zstd:zstd /usr/bin/chromium:chromium tcpdump:tcpdump \
	/usr/lib/postgresql/15/bin/initdb:postgresql systemd-analyze:systemd

system-deps:
	@missing=""; \
	for pair in $(SYSTEM_TOOLS); do \
	  tool=$${pair%%:*}; pkg=$${pair#*:}; \
	  case $$tool in /*) [ -x $$tool ] ;; *) command -v $$tool >/dev/null ;; esac \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
	  echo "system-deps: not root, cannot install:$$missing (tests needing them are skipped)"; \
	elif ! command -v apt-get >/dev/null; then \
	  echo "system-deps: no apt-get here, cannot install:$$missing (tests needing them are skipped)"; \
	else \
	  echo "system-deps: installing$$missing"; \
	  if ! (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) >/tmp/packdist-apt.log 2>&1; then \
	    echo "system-deps: apt-get failed (see /tmp/packdist-apt.log); tests needing$$missing are skipped"; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check packdist tests $(wildcard bench)
	$(BIN)/ruff format --check packdist tests $(wildcard bench)
	$(BIN)/lint-imports  # the layers, and the agent and the site apart (pyproject.toml)

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -q -rs -n 2 $(PYTEST_TMP) tests/unit

integration: $(STAMP) system-deps
	$(BIN)/pytest -q -rs $(PYTEST_TMP) tests/integration

lab: $(STAMP) system-deps
	$(BIN)/pytest -q -rs $(PYTEST_TMP) tests/lab

# The unit tier runs on both cores (CPU-bound, its tests share nothing); the tiers of real
# processes and cables one test at a time (their loose timings, the lab's one set of
# namespaces). Two runs, one after the other, in the same folder of temporary files.
test: $(STAMP) system-deps lint typecheck
	$(BIN)/pytest -q -rs -n 2 $(PYTEST_TMP) tests/unit
	$(BIN)/pytest -q -rs --durations=15 $(PYTEST_TMP) tests/integration tests/lab

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

# the demo needs only packdist itself: no test tools, no system packages
DEMO_STAMP := $(VENV)/.runtime
$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(DEMO_STAMP)

demo: $(DEMO_STAMP)
	$(BIN)/python -m packdist.demo

# The benchmarks' own anchors, installed the same way (as root, with apt-get) only for
# `make bench`: the chunk stores `bench import` compares packdist with (skipped if missing).
BENCH_TOOLS := restic:restic casync:casync

bench: $(STAMP)
	@$(MAKE) --no-print-directory system-deps SYSTEM_TOOLS="$(SYSTEM_TOOLS) $(BENCH_TOOLS)"
	@# compiled bytecode, as an installed package has it (pip compiles at install; an
	@# editable install under PYTHONDONTWRITEBYTECODE=1 never would): 40 ms per command
	$(BIN)/python -m compileall -q packdist bench
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
