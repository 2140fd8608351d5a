"""Tensor parallelism on the CPU: two worker processes (vLLM's multiprocessing executor, each rank
bound to its own core) record and edit exactly what the transformers backend computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.probes.continuation import greedy_tails

from engine_checks import TEXTS

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="two tensor-parallel ranks need two cores")]


def test_tensor_parallel_two_workers_equal_transformers():
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="1", VLLM_CPU_OMP_THREADS_BIND="0|1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, str(Path(__file__).parent / "tensor_parallel_run.py"), "2"],
                         capture_output=True, text=True, env=env, timeout=800)
    lines = [x for x in run.stdout.splitlines() if x.startswith("RESULT ")]
    assert run.returncode == 0 and lines, (run.stdout + run.stderr)[-4000:]
    got = json.loads(lines[-1][len("RESULT "):])
    lm = wb.load("demo", dtype=torch.float32)
    want = wb.record(lm, TEXTS, progress=False)
    spec = wb.Mask({1: [0, 1, 2, 3]})
    with wb.edit(lm, spec):
        want_edited = wb.record(lm, TEXTS, progress=False)
        want_gen = greedy_tails(lm, [lm.tokenizer("Once upon a time")["input_ids"]], 6, 0)
    assert np.array_equal(np.asarray(got["plain_idx"]), want.topk_idx)
    assert np.abs(np.asarray(got["plain_w"]) - want.topk_w).max() < 1e-5
    assert np.array_equal(np.asarray(got["edited_idx"]), want_edited.topk_idx)
    assert got["generated"] == want_gen
    assert got["installed"] == [0, 0]  # both ranks restored
