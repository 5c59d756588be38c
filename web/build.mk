# The web UI's build, included from the top-level Makefile (`include web/build.mk`).
# `make ui` runs `npm ci` when package.json/package-lock.json changed and `npm run build`
# (tsc + vite, output in tracelab/server/static/) when any web source changed; the stamps
# make both no-ops otherwise. Deleting tracelab/server/static/ forces a rebuild.
WEB_DIR := web
WEB_STATIC := tracelab/server/static
WEB_DEPS_STAMP := $(WEB_DIR)/node_modules/.tracelab-npm-ci
WEB_BUILD_STAMP := $(WEB_STATIC)/.build-stamp
WEB_SOURCES := $(shell find $(WEB_DIR)/src -type f 2>/dev/null) $(WEB_DIR)/index.html \
	$(WEB_DIR)/vite.config.ts $(WEB_DIR)/tsconfig.json $(WEB_DIR)/package.json

.PHONY: ui

ui: $(WEB_BUILD_STAMP)

$(WEB_DEPS_STAMP): $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json
	cd $(WEB_DIR) && npm ci --no-audit --no-fund
	touch $@

$(WEB_BUILD_STAMP): $(WEB_DEPS_STAMP) $(WEB_SOURCES)
	cd $(WEB_DIR) && npm run build
	touch $@
