# `make demo` and `make dev`; included from the top-level Makefile (`include mocks/demo.mk`),
# which defines VENV/PY and the `install` target (venv, one pip resolve, redis-server, the UI).
#
#   make demo                        fresh clone -> mocks + sample agent recorded -> API :8000, UI :3000
#   make demo DEMO_ARGS="--runs 12"  any `tracelab demo` flag (--no-serve, --home DIR, --port …)
#   make dev                         the whole system in Docker: docker compose up --build
.PHONY: demo dev

DEMO_ARGS ?=

demo: install
	$(VENV)/bin/tracelab demo $(DEMO_ARGS)

dev:
	docker compose up --build
