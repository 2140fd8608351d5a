#!/usr/bin/env bash
# The whole test suite. Exit status is pytest's; "no tests collected" (5) counts as a failure.
set -u
PY=${1:-.venv/bin/python}
mkdir -p tests/artifacts
exec "$PY" -m pytest -q -ra --timeout=900 "${@:2}"
