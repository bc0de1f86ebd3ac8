# medguard — the two commands a newcomer needs are `make demo` and `make test`; both install first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
UV := $(VENV)/bin/uv
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed-stamp
NATIVE := storage_security/crypto/.native-stamp

# All local state stays under the project's working directory, never in ~.
export MEDGUARD_HOME ?= $(CURDIR)/.medguard
export AIRFLOW_HOME ?= $(MEDGUARD_HOME)/airflow
export GX_ANALYTICS_ENABLED := False
export SPARK_LOCAL_IP ?= 127.0.0.1

.PHONY: help install java chromium infra-tools demo test test-fast bench lint audit lock clean

help:
	@echo "make demo   install everything and run the end-to-end job on embedded defaults"
	@echo "make test   install everything and run the test suite"
	@echo "make test-fast  install everything and run the unit tests only (no Spark, Vault, Airflow or subprocess)"
	@echo "make bench  run the benchmarks (prints one line per figure)"
	@echo "make lint   ruff"
	@echo "make lock   re-resolve requirements.in into requirements.lock"
	@echo "make audit  check requirements.lock against the advisory database (pip-audit; fails when unreachable)"

install: $(STAMP) $(NATIVE)

$(STAMP): requirements.lock pyproject.toml
	@$(MAKE) --no-print-directory java
	@$(MAKE) --no-print-directory chromium
	@$(MAKE) --no-print-directory infra-tools
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@test -x $(UV) || $(PY) -m pip install --quiet "uv==$(UV_VERSION)"
	$(UV) pip install --python $(PY) --require-hashes --compile-bytecode -r requirements.lock
	$(UV) pip install --python $(PY) --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# The native bulk AES-GCM/SHA-256 helpers (storage_security/crypto/_native_build.py): gcc and OpenSSL's headers.
# Where they cannot be had, the build says so in one line and medguard seals cells through cryptography instead.
$(NATIVE): storage_security/crypto/_native_build.py $(STAMP)
	@if ! { command -v gcc >/dev/null && [ -f /usr/include/openssl/evp.h ]; } && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing gcc and libssl-dev to build the native AES-GCM helpers"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc libssl-dev >/dev/null; } \
		|| echo "warning: gcc/libssl-dev did not install" >&2; \
	fi
	$(PY) -m storage_security.crypto._native_build
	@touch $@

# Spark 4 needs Java 17 or newer.
java:
	@major=$$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1); \
	if [ -n "$$major" ] && [ "$$major" -ge 17 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing a Java 17 runtime (openjdk-17-jre-headless) for Spark"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless; \
	else \
		echo "medguard needs Java 17+ for Spark and found '$${major:-none}': install openjdk-17-jre-headless (or any JDK 17+) and put java on PATH" >&2; \
		exit 1; \
	fi

# Headless Chromium renders the model card to PNG/PDF (a test looks at the render) and psql is one of the real
# clients the pgwire tests use; both optional outside root (their tests then skip, saying why).
chromium:
	@if ! command -v psql >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null; } \
		|| echo "warning: postgresql-client did not install; the psql test will be skipped" >&2; \
	fi
	@if command -v chromium >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing headless Chromium (Debian's chromium) to render model cards"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || echo "warning: chromium did not install; the model-card render test will be skipped" >&2; \
	else \
		echo "note: chromium not found; model cards stay HTML and their render test is skipped (install Debian's chromium)" >&2; \
	fi

# docker-compose (Debian's 1.29, no daemon needed) and shellcheck lint infra/ in tests/infra; both optional outside
# root (those checks then skip, saying why).
infra-tools:
	@if command -v docker-compose >/dev/null && command -v shellcheck >/dev/null; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing docker-compose and shellcheck to lint infra/"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose shellcheck >/dev/null; } || echo "warning: docker-compose/shellcheck did not install; their infra lint tests will be skipped" >&2; \
	else \
		echo "note: docker-compose or shellcheck not found; their infra lint tests are skipped (install Debian's docker-compose and shellcheck)" >&2; \
	fi

# `make demo PATIENTS=N` picks the population size (default: the CLI's `medguard demo --patients`).
demo: install
	$(VENV)/bin/medguard demo $(if $(PATIENTS),--patients $(PATIENTS))

test: install
	$(PY) -m pytest

# The unit tier (tests/conftest.py assigns every test one of unit, integration, e2e).
test-fast: install
	$(PY) -m pytest -m unit

bench: install
	$(PY) bench/run.py

lint: install
	$(VENV)/bin/ruff check .

# Exit 0 only when every pin was checked and none is vulnerable; 1: vulnerable pins; 2: the advisory database
# could not be reached (or some pins were not checked), so nothing is reported clean.
AUDIT_SERVICE ?= pypi
audit: install
	$(PY) infra/audit_lock.py requirements.lock --service $(AUDIT_SERVICE)

lock:
	$(UV) pip compile requirements.in --python-version 3.11 --generate-hashes -q -o requirements.lock

clean:
	rm -rf $(VENV) .medguard .pytest_cache
