#!/usr/bin/env bash
# Set up and run hitl's tests: a virtualenv in .venv with hitl and its test tools, then pytest.
# Lint (ruff) and types (mypy --strict) first. Unit tests need nothing else; integration and acceptance tests start their own embedded Redis server,
# Celery worker and beat processes. Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[dev,postgres]'
echo "ruff and mypy..."
.venv/bin/ruff check --quiet .
.venv/bin/ruff format --check --quiet .
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
