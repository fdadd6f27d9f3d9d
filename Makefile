# The two commands of the README: `make run` and `make test`. Everything else supports them.
# Needs only Python 3.11 and pip (and apt, once tests need Debian packages).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: setup run test audit bench stop-db clean

# Debian packages the tests and benchmarks need, installed when missing (as root, or via sudo).
APT_GET := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get
define ensure_debian_package # $(1): a command it provides, $(2): the package
	@command -v $(1) >/dev/null || $(APT_GET) install -y $(2) || { $(APT_GET) update && $(APT_GET) install -y $(2); }
endef

setup: $(INSTALLED)

# Re-installs only when pyproject.toml changes; safe to run again and again.
$(INSTALLED): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python 3.11+ is required"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

run: setup
	DEBUG=$${DEBUG:-true} $(BIN)/python manage.py runportal

# The browser tests drive Debian's chromium with Playwright (no browser is downloaded).
test: setup
	$(call ensure_debian_package,chromium,chromium)
	SECRET_KEY=collectstatic-only $(BIN)/python manage.py collectstatic --noinput --verbosity 0
	$(BIN)/python -m pytest

# Known vulnerabilities of the installed dependencies (pip-audit --strict), from PyPI's advisory
# data or else OSV's. Fails when neither answers, so an audit that checked nothing never passes;
# CI runs it with AUDIT_IF_UNREACHABLE=skip, which says so in one line and goes on.
AUDIT_IF_UNREACHABLE ?= fail
audit: setup
	$(BIN)/python scripts/audit.py --if-unreachable $(AUDIT_IF_UNREACHABLE)

# The ingest benchmark's load generator is wrk (a Debian package), installed when missing.
bench: setup
	$(call ensure_debian_package,wrk,wrk)
	@# Every benchmark runs even when one misses a goal; the target fails at the end if any did.
	@status=0; for bench in sync drain ingest latency pages metrics retention chaos; do \
		$(BIN)/python benchmarks/$$bench.py || status=1; done; exit $$status

stop-db: setup
	$(BIN)/python manage.py embedded_db stop

clean: stop-db
	rm -rf $(VENV) .data
