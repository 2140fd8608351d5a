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
#: under pytest-xdist (scripts/run-tests.sh runs one worker per core) each worker keeps to one thread
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(max(1, min(2, (os.cpu_count() or 1) // WORKERS)))

#: Modules that must run in one worker, in this order: a notebook that ran in JupyterLab
#: (test_browser) is not run again by papermill (test_notebooks) in the same process.
SAME_WORKER = {"test_browser.py": "notebooks", "test_notebooks.py": "notebooks"}

if importlib.util.find_spec("xdist"):
    def pytest_xdist_make_scheduler(config, log):
        """Under pytest-xdist: one module's tests run in one worker (its module-scoped fixtures, a
        tiny model, the families matrix or a JupyterLab server, are built once), and the modules of
        :data:`SAME_WORKER` share a worker."""
        from xdist.scheduler import LoadScopeScheduling

        class ByModule(LoadScopeScheduling):
            def _split_scope(self, nodeid):
                module = nodeid.split("::", 1)[0]
                return SAME_WORKER.get(module.rsplit("/", 1)[-1], module)

        return ByModule(config, log)


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
