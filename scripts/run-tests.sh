#!/usr/bin/env bash
# The whole test suite: the main tier in the main environment, then the vLLM tier in .venv-vllm
# (made by scripts/vllm-env.sh; skip it with WB_SKIP_VLLM=1). Exit status is the first failure's;
# "no tests collected" (5) counts as a failure.
set -u
PY=${1:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
mkdir -p tests/artifacts
status=0
"$PY" -m pytest -q -ra --timeout=900 --durations=15 "${@:2}" || status=$?
if [[ "${WB_SKIP_VLLM:-0}" != 1 && $# -le 1 ]]; then
  echo "== vLLM tier ($VLLM_PY) =="
  VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VLLM_PY" -m pytest -q -ra --timeout=900 -p no:cacheprovider tests/vllm_tier \
    || { rc=$?; [[ $status == 0 ]] && status=$rc; }
fi
exit $status
