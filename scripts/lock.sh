#!/usr/bin/env bash
# Writes constraints.txt: the exact versions of every package in the main environment (.venv) that
# `make install` then installs, so CI and a fresh machine get what the suite last passed on. The
# published coverage matrix (workbench/families/coverage.csv) is computed on the transformers pinned
# here; after a bump, run `python -m workbench families --write` and commit both.
#
# It writes constraints-vllm.txt the same way from the vLLM environment (.venv-vllm,
# scripts/vllm-env.sh), when there is one.
#
# Usage: bash scripts/lock.sh [VENV] [VLLM_VENV]   (torch is left out: TORCH_SPEC picks its build)
set -euo pipefail
VENV=${1:-.venv}
VLLM_VENV=${2:-.venv-vllm}

lock() {  # lock VENV FILE WHAT BUMP
  {
    echo "# Written by scripts/lock.sh from a passing $1: the versions $3 installs (pip -c)."
    echo "# Bump: upgrade in $1, run the tests$4, then this script."
    "$1/bin/python" -m pip freeze --exclude-editable | grep -viE '^(torch|moe-workbench)([=@ ]|$)'
  } > "$2"
  echo "written: $2 ($(grep -vc '^#' "$2") packages)"
}
lock "$VENV" constraints.txt "\`make install\`" ", \`python -m workbench families --write\`"
if [[ -x "$VLLM_VENV/bin/python" ]]; then
  lock "$VLLM_VENV" constraints-vllm.txt "scripts/vllm-env.sh" " (the vLLM tier)"
fi
