#!/usr/bin/env bash
# Set up and run hitl's tests: a virtualenv in .venv with hitl and its test tools, then pytest.
# Lint (ruff), types (mypy --strict) and the docs site (mkdocs build --strict) first.
# Unit tests need nothing else; PostgreSQL, RabbitMQ and Chromium
# are installed if missing (as root, from Debian's packages); integration and acceptance tests start their own embedded Redis server,
# Celery worker and beat processes. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# PostgreSQL for the tests that run on it (they start their own throwaway server from these binaries), and
# Chromium for the inbox's browser test (driven by Playwright's Python package, pointed at the system browser).
missing=()
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  missing+=(postgresql)
fi
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
  missing+=(chromium)
fi
# RabbitMQ for the pipeline tests on amqp:// (they start their own throwaway node from these scripts).
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  missing+=(rabbitmq-server)
fi
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (Debian packages)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not found: ${missing[*]}; the tests that need them are skipped (install the Debian packages to run them)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,postgres,docs]'
echo "ruff and mypy..."
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
echo "import contracts (lint-imports)..."
# The layers of hitl/ and what may import what: [tool.importlinter] in pyproject.toml.
.venv/bin/lint-imports --no-cache > /dev/null || .venv/bin/lint-imports --no-cache
echo "docs (mkdocs build --strict)..."
# The reference pages are generated from the code (docstrings, the click group, the settings, the OpenAPI schema):
# a missing docstring, a broken link or an example file that moved fails here. NO_MKDOCS_2_WARNING: no banner.
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --quiet
# Most tests wait on real processes (worker, beat, redis, PostgreSQL), so two pytest workers overlap the waiting;
# a module's tests stay together on one worker (its stack is started once). HITL_TEST_WORKERS=0 runs in-process.
exec .venv/bin/python -m pytest -n "${HITL_TEST_WORKERS:-2}" --dist loadscope "$@"
