# fdo-bootc: `make test` and `make demo` each create their own virtual environment.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench clean

# The demo needs only the services and the device client, not the test tools.
DEMO_STAMP = $(VENV)/.demo-installed

$(DEMO_STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[device,server]'
	touch $(DEMO_STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

## Lint, type-check and run the whole test suite.
test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# One test process per core (pytest-xdist); each test module stays in one process, so
# its shared fixtures (a started stack) are made once. PYTEST_WORKERS=0: no workers.
PYTEST_WORKERS ?= auto

pytest: $(STAMP)
	$(COMPILE)
	$(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

# The project's modules compiled before they run: where PYTHONDONTWRITEBYTECODE is set
# (as on the CI machine) every process would compile them from source again, a quarter of
# a second each time a service starts (an installed wheel is compiled when installed).
# `make bench` too: a worker that compiled its modules from source started up to 1.8 MB larger
# than an installed one (docs/benchmarks.md, issue 15, fourteenth round).
# `make bench` then drops the interpreter's shared libraries from the page cache: one that
# pip has just written is mapped in larger pieces, and every worker started up to 2.7 MB
# larger in the first run after a new virtual environment (bench/page_cache.py).
COMPILE = $(BIN)/python -m compileall -q -j0 fdo fdo_cli fdo_server transport device manufacturer rendezvous owner bench

## One kiosk's story over real HTTP with the real fdo commands: three services on
## SQLite, DI, hand-off, TO0, a group and revision, TO1 and TO2 with the bootc module,
## check-in, then a second revision rolled out to it. Prints a summary and exits 0.
demo: $(DEMO_STAMP)
	$(COMPILE)
	$(BIN)/python -m fdo_server.demo

## Throughput, p50/p99 latency and server CPU per operation of DI, TO0, TO1 and a full
## TO1+TO2 onboarding (P-256 and P-384), RSS per worker, idle CPU, the device client's
## peak RSS and wall time and TO0 at scale, each against its target, on SQLite and (when a
## server answers on 127.0.0.1:5432) PostgreSQL. Flags: `make bench BENCH_FLAGS=--quick`
## (a smoke run), or any of `bench/run.py --help`.
BENCH_FLAGS ?=

bench: $(STAMP)
	$(COMPILE)
	$(BIN)/python bench/page_cache.py
	$(BIN)/python bench/run.py $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache .hypothesis
