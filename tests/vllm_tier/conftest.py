"""The vLLM tier: run in the second environment (``.venv-vllm``, made by ``scripts/vllm-env.sh``)
with ``.venv-vllm/bin/python -m pytest tests/vllm_tier`` (``scripts/run-tests.sh`` does). The engine runs
in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); engines are made one at a time and closed
after their module, so their memory is returned before the next one starts."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm", reason="the vLLM tier needs .venv-vllm (bash scripts/vllm-env.sh)")
