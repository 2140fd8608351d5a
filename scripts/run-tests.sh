#!/usr/bin/env bash
# The whole test suite: the main tier in the main environment and, beside it, the vLLM tier in
# .venv-vllm (made by scripts/vllm-env.sh; skip it with WB_SKIP_VLLM=1). The vLLM tier runs at the
# same time as the main tier (its log is printed after the main tier's): the main tier's browser
# tests leave a core idle much of the time. Exit status is the first failure's; "no tests
# collected" (5) counts as a failure. Extra arguments go to the main tier's pytest (and leave the
# vLLM tier out).
set -u
PY=${1:-.venv/bin/python}
VLLM_PY=${VLLM_PY:-.venv-vllm/bin/python}
mkdir -p tests/artifacts
status=0
vllm_pid=""
VLLM_LOG=tests/artifacts/vllm_tier.log
if [[ "${WB_SKIP_VLLM:-0}" != 1 && $# -le 1 ]]; then
  VLLM_ENABLE_V1_MULTIPROCESSING=0 "$VLLM_PY" -m pytest -q -ra --timeout=900 --durations=8 -p no:cacheprovider \
    --basetemp="$(mktemp -d)/vllm-tier" tests/vllm_tier > "$VLLM_LOG" 2>&1 &
  vllm_pid=$!
fi
# one pytest-xdist worker per core, at most 4 (WB_TEST_WORKERS=1: none); a module's tests stay
# in one worker (tests/conftest.py schedules by module), so its fixtures are built once
WORKERS=${WB_TEST_WORKERS:-$(( $(nproc) < 4 ? $(nproc) : 4 ))}
PARALLEL=()
if [[ "$WORKERS" -gt 1 ]]; then PARALLEL=(-n "$WORKERS"); fi
"$PY" -m pytest -q -ra --timeout=900 --durations=15 "${PARALLEL[@]}" "${@:2}" || status=$?
if [[ -n "$vllm_pid" ]]; then
  wait "$vllm_pid"; rc=$?
  echo "== vLLM tier ($VLLM_PY; log: $VLLM_LOG) =="
  cat "$VLLM_LOG"
  if [[ $rc != 0 && $status == 0 ]]; then status=$rc; fi
fi
exit $status
