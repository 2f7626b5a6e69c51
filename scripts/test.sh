#!/usr/bin/env bash
# Set up and run hitl's tests: a virtualenv in .venv with hitl and its test tools, then pytest.
# Lint (ruff) and types (mypy --strict) first. Unit tests need nothing else; PostgreSQL is installed if
# missing (as root, from Debian's packages); integration and acceptance tests start their own embedded Redis server,
# Celery worker and beat processes. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
# PostgreSQL for the tests that run on it (they start their own throwaway server from these binaries).
if ! command -v pg_ctl >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL (Debian packages)..."
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    echo "PostgreSQL not found: its tests will be skipped (install the postgresql package to run them)" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
echo "ruff and mypy..."
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
