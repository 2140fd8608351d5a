"""Commands killed with SIGKILL at random points lose nothing: run again, they finish exactly as an
uninterrupted run would have (the resume key, the manifest and atomic files at work, for real)."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import workbench as wb


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from workbench.testing import tiny_model
    root = tmp_path_factory.mktemp("kill")
    model, tokenizer = tiny_model("qwen3_moe")
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    texts = root / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": f"document {i} tells the fox story number {i} " * 3,
                                           "label": ["en", "code", 3][i % 3]}) for i in range(16)))
    return root


def _record(root, out, batch_size=1):
    return [sys.executable, "-m", "workbench", "record", "--model", str(root / "model"), "--texts",
            str(root / "texts.jsonl"), "--out", str(out), "--batch-size", str(batch_size), "--scores", "--quiet"]


def _shards_done(out) -> int:
    journal = out / "shards.jsonl"
    return journal.read_bytes().count(b"\n") if journal.exists() else 0


@pytest.mark.slow
def test_record_killed_at_random_points_resumes_exactly(setup):
    root = setup
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    full = root / "full"
    from workbench.cli import main

    assert main(_record(root, full)[3:]) == 0  # the uninterrupted run, in this process (same command)
    out = root / "killed"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(_record(root, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        start, before = time.time(), _shards_done(out)
        while proc.poll() is None and _shards_done(out) <= before and time.time() - start < 120:
            time.sleep(0.02)  # wait until this run is writing shards, then kill it somewhere in the middle
        time.sleep(rng.uniform(0.0, 0.4))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        if (out / "manifest.json").exists() and json.loads((out / "manifest.json").read_text()).get("complete"):
            break
    assert kills >= 1
    assert main(_record(root, out)[3:]) == 0  # resumes (takes over the dead run's lock)
    a, b = wb.open_trace(full).materialize(), wb.open_trace(out).materialize()
    for name in ("topk_idx", "topk_w", "token_ids", "doc", "pos", "scores"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    assert a.doc_labels == b.doc_labels and a.token_text == b.token_text
    assert not list(out.rglob(".tmp-*")) and not (out / ".lock").exists()
    files = sorted(p.name for p in (full / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == files
