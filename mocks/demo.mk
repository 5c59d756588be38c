# `make demo` and `make dev`; included from the top-level Makefile (`include mocks/demo.mk`),
# which defines VENV/STAMP (the venv, one pip resolve), `apt-missing` and the `ui` build.
#
#   make demo                        fresh clone -> mocks + sample agent recorded -> API :8000, UI :3000
#   make demo DEMO_ARGS="--runs 12"  any `tracelab demo` flag (--no-serve, --home DIR, --port …)
#   make dev                         the whole system in Docker: docker compose up --build
#
# The demo records in embedded mode into its own home ($TRACELAB_HOME/demo, default
# ~/.tracelab/demo): no Redis, no browser, so of the system packages it needs only Node.js/npm
# for the web UI build (`make install` and `make test` install redis-server and chromium too).
.PHONY: demo demo-deps dev

DEMO_ARGS ?=
DEMO_DEPS := npm:nodejs,npm

demo: $(STAMP) demo-deps ui
	$(VENV)/bin/tracelab demo $(DEMO_ARGS)

demo-deps:
	$(call apt-missing,$(DEMO_DEPS))

dev:
	docker compose up --build
