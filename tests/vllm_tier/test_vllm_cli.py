"""``python -m workbench record --backend vllm`` writes the store the transformers backend writes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import workbench as wb
from workbench.cli import main

from engine_checks import TEXTS, assert_same_trace

pytestmark = pytest.mark.slow


def test_record_cli_vllm_equals_transformers(tmp_path):
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(t.replace("\n", " ") for t in TEXTS) + "\n")
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0")
    common = ["record", "--model", "demo", "--texts", str(texts), "--batch-size", "2", "--quiet"]
    run = subprocess.run([sys.executable, "-m", "workbench", *common, "--backend", "vllm", "--out",
                          str(tmp_path / "vllm"), "--max-model-len", "512"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"written to {tmp_path / 'vllm'}" in run.stdout
    assert main([*common, "--backend", "transformers", "--out", str(tmp_path / "transformers")]) == 0  # in-process
    got, want = wb.open_trace(tmp_path / "vllm"), wb.open_trace(tmp_path / "transformers")
    assert got.fingerprint == want.fingerprint
    assert got.meta["model"] == want.meta["model"]
    assert_same_trace(got.materialize(), want.materialize(), rtol=2 ** -10)


def test_record_cli_refuses_vllm_options_for_an_unsupported_family(tmp_path, capsys):
    from workbench.testing import save_tiny_model

    save_tiny_model("jetmoe", tmp_path / "jet")
    (tmp_path / "t.txt").write_text("hello world\n")
    code = main(["record", "--backend", "vllm", "--model", str(tmp_path / "jet"), "--texts", str(tmp_path / "t.txt"),
                 "--out", str(tmp_path / "o")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after progress bars and warnings
    assert code == 2 and last.startswith("error: "), last  # one line, no traceback
    assert "does not route 'jetmoe'" in last and "transformers backend" in last
