"""Shared fixtures: tiny real models of every supported family (built from configs, no downloads)."""

from __future__ import annotations

import functools
import importlib.util
import os

import pytest
import torch

#: the vLLM tier runs in its own environment (.venv-vllm): scripts/run-tests.sh runs it there
collect_ignore = [] if importlib.util.find_spec("vllm") else ["vllm_tier"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@functools.lru_cache(maxsize=None)
def _tiny(family: str):
    import workbench as wb
    from workbench.testing import tiny_model

    return wb.wrap(*tiny_model(family))


@pytest.fixture
def tiny():
    """``tiny(family)`` -> a cached MoEModel. Tests must leave it unedited (edits are scoped)."""
    return _tiny


TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
         "Der schnelle braune Fuchs springt.", "12 + 34 = 46"]


@pytest.fixture
def texts():
    return list(TEXTS)
