# Hybrid Payments suite. `make run` starts everything; `make test` installs what it needs and tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.synced
PYTEST_ARGS ?=
# make test's pytest-xdist workers (tests/conftest.py says which tests share one); 0 runs in one process.
TEST_WORKERS ?= 2

.PHONY: setup vendor openapi client run test test-unit test-integration test-e2e migrate downgrade load bench rollback backup restore import validate clean

setup: $(STAMP)

# The venv is rebuilt when the lock changes; uv installs exactly what uv.lock pins.
$(STAMP): pyproject.toml uv.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)
	UV_PROJECT_ENVIRONMENT=$(VENV) $(UV) sync --frozen --inexact --quiet
	@touch $(STAMP)

# Refresh the vendored front-end assets (docs pages, console) from npm at the versions pinned in vendor.json.
vendor: setup
	$(PY) -m tools.vendor

# Export each service's OpenAPI document from its create_app() into clients/openapi/ (commit them).
openapi: setup
	$(PY) -m tools.openapi

# The TypeScript client (clients/typescript): pinned packages, types regenerated from clients/openapi
# (fails when they differ from the committed ones, as CI does), type-checked and compiled.
client: openapi
	cd clients/typescript && npm ci --no-audit --no-fund && npm run generate
	git diff --exit-code -- clients/typescript/src/generated
	cd clients/typescript && npm run typecheck && npm run build

run: setup
	$(PY) -m tools.run

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) tests/unit tests/integration tests/e2e tests/load tests/fuzz $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-integration: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

migrate: setup
	$(PY) -m tools.migrate upgrade

downgrade: setup
	$(PY) -m tools.migrate downgrade

# The /route benchmark (`make bench --only route`) against `make run` (start it in another terminal first).
# LOAD_URL: the router to measure (default the router itself, http://127.0.0.1:8001;
# http://127.0.0.1:8000 goes through the dev gateway). LOAD_ARGS: any other bench flags.
load: setup
	$(PY) -m tests.load.bench --only route $(if $(LOAD_URL),--router-url '$(LOAD_URL)') $(LOAD_ARGS)

# Every benchmark of the money path against `make run` in one go: a table of figure, value, target,
# pass, and .run/bench-results.json (tests/load/README.md). BENCH_ARGS: e.g. --only route,pay,lag.
bench: setup
	$(PY) -m tests.load.bench $(BENCH_ARGS)

# Dump every service schema (and LEGACY_DSN's database when given), prove the dump restores, print where.
backup: setup
	$(PY) -m tools.backup backup $(if $(LEGACY_DSN),--legacy-dsn '$(LEGACY_DSN)')

# The database rollback: put a `make backup` dump back (refuses while the services are connected
# unless FORCE=1), then check the revisions and row counts against its manifest.
restore: setup
	@test -n "$(BACKUP)" || { echo "make restore BACKUP=<file written by make backup> [FORCE=1]" >&2; exit 2; }
	$(PY) -m tools.backup restore '$(BACKUP)' $(if $(FORCE),--force)

# Barbers back to centralized payments with fallback on, through the router's API (it must be up):
# make rollback BARBER=42, or make rollback ALL=1. ROLLBACK_ARGS: e.g. --dry-run, --router-url URL.
rollback: setup
	@test -n "$(BARBER)$(ALL)" || { echo "make rollback BARBER=<id> or make rollback ALL=1" >&2; exit 2; }
	$(PY) -m tools.rollback $(if $(BARBER),--barber $(BARBER)) $(if $(ALL),--all) $(ROLLBACK_ARGS)

# The BookedBarber V2 import: barber configs and payment history through the router's tables and outbox,
# resumable (run it again after a crash) and idempotent, then a reconciliation per barber (exit 1 on any
# difference). IMPORT_ARGS: e.g. --currency EUR, --analytics-timeout 0, --batch-size N.
import: setup
	@test -n "$(LEGACY_DSN)" || { echo "make import LEGACY_DSN=postgresql://user@host/bookedbarber" >&2; exit 2; }
	$(PY) -m tools.legacy_import --legacy-dsn '$(LEGACY_DSN)' $(IMPORT_ARGS)

# Post-migration checks against the running suite, one PASS/FAIL line each (exit 1 on any FAIL); VALIDATE_ARGS: flags.
validate: setup
	$(PY) -m tools.validate $(VALIDATE_ARGS)

clean:
	rm -rf .run .pytest_cache .hypothesis
