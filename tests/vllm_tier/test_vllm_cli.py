"""``python -m workbench record --backend vllm`` writes the store the transformers backend writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import workbench as wb

from engine_checks import TEXTS, assert_same_trace

pytestmark = pytest.mark.slow


def test_record_cli_vllm_equals_transformers(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t.replace("\n", " ") for t in TEXTS) + "\n")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    common = ["record", "--model", "demo", "--texts", str(texts), "--batch-size", "2", "--quiet"]
    for backend in ("vllm", "transformers"):
        run = subprocess.run([sys.executable, "-m", "workbench", *common, "--backend", backend,
                              "--out", str(tmp_path / backend), *(["--max-model-len", "512"] * (backend == "vllm"))],
                             capture_output=True, text=True, env=env, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        assert f"written to {tmp_path / backend}" in run.stdout
    got, want = wb.open_trace(tmp_path / "vllm"), wb.open_trace(tmp_path / "transformers")
    assert got.fingerprint == want.fingerprint
    assert got.meta["model"] == want.meta["model"]
    assert_same_trace(got.materialize(), want.materialize(), rtol=2 ** -10)


def test_record_cli_refuses_vllm_options_for_an_unsupported_family(tmp_path):
    from workbench.testing import tiny_model

    model, tokenizer = tiny_model("jetmoe")
    model.save_pretrained(tmp_path / "jet")
    tokenizer.save_pretrained(tmp_path / "jet")
    (tmp_path / "t.txt").write_text("hello world\n")
    run = subprocess.run([sys.executable, "-m", "workbench", "record", "--backend", "vllm", "--model",
                          str(tmp_path / "jet"), "--texts", str(tmp_path / "t.txt"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "does not route 'jetmoe'" in run.stderr and "transformers backend" in run.stderr
