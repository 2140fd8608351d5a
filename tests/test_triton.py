"""Triton kernels, tested on CPU under Triton's interpreter in a separate process.

``TRITON_INTERPRET=1`` must be set before a process defines its first kernel, so these tests run
``python -m workbench.kernels.triton_check`` in a subprocess with it set (tiny shapes, float32 and
float16; the interpreter has no bfloat16). When the interpreter cannot run here at all, the tests
skip and say why; a kernel that runs but disagrees with the reference fails.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import textwrap

import pytest

from workbench.kernels.dispatch import triton_installed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = textwrap.dedent("""
    import torch, triton, triton.language as tl

    @triton.jit
    def add(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1.0, mask=offs < n)

    x = torch.arange(10.0)
    y = torch.empty(10)
    add[(1,)](x, y, 10, BLOCK=16)
    assert torch.equal(y, x + 1), y
    print("interpreter ok")
""")


def _run(args, timeout=600, interpret=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("TRITON_INTERPRET", None)
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


@functools.lru_cache(maxsize=1)
def _interpreter_problem() -> str | None:
    """None when Triton's interpreter runs a kernel on CPU tensors here, else the precise reason."""
    if not triton_installed():
        return "triton is not installed (pip install 'moe-workbench[triton]' or the dev extra)"
    proc = _run(["-c", PROBE], timeout=300)
    if proc.returncode != 0 or "interpreter ok" not in proc.stdout:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return f"Triton's interpreter (TRITON_INTERPRET=1) cannot run a kernel on CPU here: {tail[0]}"
    return None


@pytest.fixture
def interpreter():
    problem = _interpreter_problem()
    if problem:
        pytest.skip(problem)


def test_package_import_never_imports_triton():
    code = ("import sys, workbench, workbench.kernels, workbench.replay, workbench.kernels.triton_replay, "
            "workbench.kernels.triton_routing, workbench.kernels.triton_check; print('triton' in sys.modules)")
    proc = _run(["-c", code], interpret=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_routing_kernel_equals_reference_for_every_rule(interpreter):
    proc = _run(["-m", "workbench.kernels.triton_check", "--only", "routing"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout and proc.stdout.count("ok   routing") == 18


def test_grouped_kernel_and_model_invariants(interpreter):
    proc = _run(["-m", "workbench.kernels.triton_check", "--only", "grouped", "--only", "models",
                 "--families", "qwen2_moe,deepseek_v3,gpt_oss"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout
    assert proc.stdout.count("ok   grouped") == 28  # 7 cases x 2 dtypes x reduce / per slot
    assert "ok   model gpt_oss: own routing reproduces the cached output" in proc.stdout


@pytest.mark.slow
def test_model_invariants_on_more_families(interpreter):
    proc = _run(["-m", "workbench.kernels.triton_check", "--only", "models", "--families",
                 "llama4_text,dbrx,jetmoe,mixtral,phimoe"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 failed" in proc.stdout and proc.stdout.count("ok   model") == 10


def test_interpreter_refuses_bfloat16_clearly(interpreter):
    code = textwrap.dedent("""
        import torch
        from workbench.kernels.grouped import ExpertWeights, grouped_experts
        w = torch.zeros(2, 4, 3, dtype=torch.bfloat16)
        ew = ExpertWeights(w, w, torch.zeros(2, 3, 4, dtype=torch.bfloat16))
        try:
            grouped_experts(torch.zeros(2, 4, dtype=torch.bfloat16), ew, torch.zeros(2, 1, dtype=torch.long),
                            torch.ones(2, 1), backend="triton")
        except ValueError as err:
            print("refused:", err)
    """)
    proc = _run(["-c", code])
    assert "refused:" in proc.stdout and "bfloat16" in proc.stdout, proc.stdout + proc.stderr
