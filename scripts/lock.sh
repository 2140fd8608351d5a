#!/usr/bin/env bash
# Writes constraints.txt: the exact versions of every package in the main environment (.venv) that
# `make install` then installs, so CI and a fresh machine get what the suite last passed on. The
# published coverage matrix (workbench/families/coverage.csv) is computed on the transformers pinned
# here; after a bump, run `python -m workbench families --write` and commit both.
#
# Usage: bash scripts/lock.sh [VENV]   (torch is left out: TORCH_SPEC in the Makefile picks its build)
set -euo pipefail
VENV=${1:-.venv}
{
  echo "# Written by scripts/lock.sh from a passing $VENV: the versions \`make install\` installs (pip -c)."
  echo "# Bump: upgrade in $VENV, run the tests, \`python -m workbench families --write\`, then this script."
  "$VENV/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|moe-workbench)([=@ ]|$)'
} > constraints.txt
echo "written: constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
