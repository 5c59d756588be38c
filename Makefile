# One command for each job a newcomer has: `make demo`, `make test` (and `make install`, `make dev`).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test fuzz system-deps clean

.DEFAULT_GOAL := install
include web/build.mk
include mocks/demo.mk

install: $(STAMP) system-deps ui

# Every extra in one resolve (see README, "Dependencies"): re-run when pyproject changes.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m pip download -q --no-deps -d $(VENV)/wheels "$$(grep -o 'redis\[hiredis\]>=[0-9.]*' pyproject.toml | sed 's/\[hiredis\]>=/==/')"
	touch $(STAMP)

# From Debian's packages when missing, as `command:package,package` pairs: redis-server (tests
# start their own on a free port), Node.js with npm (the TypeScript SDK, the web UI build),
# chromium (browser tests; never a browser download) and curl (proxy and replay tests).
# `make demo` needs only npm (DEMO_DEPS in mocks/demo.mk): it records in embedded mode,
# without Redis or a browser.
SYSTEM_DEPS := redis-server:redis-server npm:nodejs,npm chromium:chromium curl:curl
APT_INSTALL := env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq
define apt-missing
	@missing=""; \
	for pair in $(1); do \
	  command -v "$${pair%%:*}" >/dev/null || missing="$$missing $${pair#*:}"; \
	done; \
	missing="$${missing//,/ }"; \
	if [ -n "$$missing" ]; then \
	  echo "installing from Debian's packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO $(APT_INSTALL) $$missing >/dev/null; \
	fi
endef

system-deps:
	$(call apt-missing,$(SYSTEM_DEPS))

# On both cores (pytest-xdist; TEST_WORKERS=1 for one). `--dist loadfile`: each test file runs
# whole on one worker, so a module-scoped fixture (a served store, a browser, the TS SDK's build,
# which `npm test` deletes and rebuilds) is set up once and never shared between workers.
# (`loadgroup` is no alternative: with pytest 9 its xdist_group marks are silently ignored.)
# The web UI is built by `install` before pytest starts.
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=15

# Schemathesis (default checks) against `tracelab serve` over real data, with and without a
# token: tests/test_api_fuzz.py with more examples and a fresh seed (FUZZ_EXAMPLES, FUZZ_SEED).
FUZZ_EXAMPLES ?= 100
fuzz: install
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$${FUZZ_SEED:-$$RANDOM$$RANDOM} \
	  $(PY) -m pytest -q tests/test_api_fuzz.py -p no:cacheprovider

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache web/node_modules $(WEB_STATIC)
