# carebed — developer entry points. `make demo` and `make test` do all the set-up themselves.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck unit soak bench hil-sim deps deb clean catalog

$(STAMP): requirements-dev.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "carebed needs Python 3.11 or newer"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(STAMP)

deps: $(STAMP)
	scripts/install-system-deps

# The alarm desk (the platform's reference ingest) opens beside the terminal desk: URL printed.
demo: deps
	$(PY) -m hil.sim.demo --web-desk --ack-after 20

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

typecheck: $(STAMP)
	$(VENV)/bin/mypy

# The tests run on two workers (pytest-xdist): most of their time is spent waiting on brokers,
# daemons and devices, so two share two CPUs well. TEST_WORKERS=0 runs them in one process.
# Tests that depend on the machine's carebed user (the package's install, the doctor) share an
# xdist group, so that they never overlap.
TEST_WORKERS ?= 2
unit: deps
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup

test: lint typecheck unit

soak: deps
	rm -f .reliability.jsonl
	CAREBED_SOAK=1 CAREBED_RELIABILITY_LOG=$(CURDIR)/.reliability.jsonl $(PY) -m pytest -q -m "slow or reliability"
	$(PY) -m tests.support.reliability .reliability.jsonl docs/RELIABILITY.md

bench: deps
	$(PY) -m bench.run $(BENCH_ARGS)

# After changing a message marked with _(): merge it into the catalogs and compile them; then
# translate the new or fuzzy entries of gateway/locale/*/LC_MESSAGES/carebed.po and run it again.
catalog: $(STAMP)
	$(PY) -m tests.support.catalog update

hil-sim: deps
	$(PY) -m hil run --rig hil/rigs/sim.toml --junit hil-junit.xml --report hil-report.html

# dist/carebed_<version>_arm64.deb and _amd64.deb: install offline (docs/INSTALL.md). The first
# build downloads the wheels of requirements.lock from PyPI into ~/.cache/carebed/deb-wheels.
# DEB_ARGS="--arch arm64" builds one; DEB_ARGS="--version 0.1.0+1" sets the Debian version.
deb: $(STAMP)
	$(PY) packaging/build_deb.py --out dist $(DEB_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis
