"""The encoder protocols (mteb, sentence-transformers) and the ``embed`` command on a tiny checkpoint."""

from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import workbench as wb
from workbench.cli import main
from workbench.embeddings import MoEEmbedder, MTEBEncoder, SentenceEncoder
from workbench.testing import tiny_model

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
         "Der schnelle braune Fuchs springt.", "12 + 34 = 46", "a cat"]


def test_mteb_encoder_signature_matches_the_protocol():
    params = inspect.signature(MTEBEncoder.encode).parameters
    kw_only = {n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert list(params)[:2] == ["self", "inputs"]
    assert {"task_name", "task_metadata", "hf_split", "hf_subset", "prompt_type", "batch_size"} <= kw_only
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    for name in ("similarity", "similarity_pairwise"):
        assert callable(getattr(MTEBEncoder, name))
    assert hasattr(MTEBEncoder, "mteb_model_meta")  # mteb 2 swaps an encoder without it for an empty meta


@pytest.mark.parametrize("kind", ["sum", "hs", "concat"])
def test_mteb_encoder_reads_string_lists_and_dataloaders(tiny, kind):
    emb = MoEEmbedder(tiny("qwen3_moe"), alpha=0.7).fit(TEXTS)
    enc = MTEBEncoder(emb, kind=kind)
    v1 = enc.encode(TEXTS, task_name="Banking77Classification", prompt_type="query", batch_size=2)
    loader = DataLoader([{"text": t} for t in TEXTS], batch_size=2)  # batches {"text": [...]}, as mteb 2 passes
    v2 = enc.encode(loader, task_metadata=None, hf_split="test", hf_subset="default", prompt_type=None)
    assert isinstance(v1, np.ndarray) and v1.dtype == np.float32 and v1.shape == (len(TEXTS), emb.dims(kind))
    np.testing.assert_allclose(v1, v2, atol=1e-5)
    np.testing.assert_allclose(v1, emb.embed(TEXTS, kind=kind), atol=1e-5)
    sim = enc.similarity(v1, v1[:2])
    assert sim.shape == (len(TEXTS), 2)
    np.testing.assert_allclose(enc.similarity_pairwise(v1[:2], v1[:2]), np.diagonal(sim[:2]), atol=1e-5)
    if kind == "sum":
        np.testing.assert_allclose(sim, emb.similarity(emb.parts(TEXTS), emb.parts(TEXTS[:2]), "sum"), atol=1e-5)
    else:
        np.testing.assert_allclose(np.diagonal(sim[:2]), 1.0, atol=1e-5)
    assert enc.encode([], task_name="x").shape == (0, emb.dims(kind))


def test_sentence_encoder_follows_sentence_transformers(tiny):
    emb = MoEEmbedder(tiny("olmoe"))
    enc = SentenceEncoder(emb, kind="sum", alpha=2.0)
    full = enc.encode(TEXTS, batch_size=2)
    assert full.shape == (len(TEXTS), enc.get_sentence_embedding_dimension()) and full.dtype == np.float32
    one = enc.encode(TEXTS[0])
    assert one.shape == (full.shape[1],)
    np.testing.assert_allclose(one, full[0], atol=1e-5)
    normed = enc.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)
    tensor = enc.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(tensor, torch.Tensor) and tuple(tensor.shape) == full.shape
    rows = enc.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == len(TEXTS) and isinstance(rows[0], torch.Tensor)
    with pytest.raises(RuntimeError, match="fit"):
        SentenceEncoder(emb, kind="concat")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_ckpt")
    model, tok = tiny_model("qwen3_moe")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    texts = folder / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t, "label": str(i % 2)}) for i, t in enumerate(TEXTS)))
    reference = folder / "reference.txt"
    reference.write_text("one reference text\nanother reference line\n45 + 45 = 90\n")
    return folder, texts, reference


@pytest.mark.parametrize("kind", ["rw", "hs", "concat", "sum"])
def test_embed_command_writes_the_matrix_in_input_order(checkpoint, tmp_path, kind, capsys):
    folder, texts, _ = checkpoint
    out = tmp_path / f"{kind}.npy"
    assert main(["embed", "--model", str(folder), "--texts", str(texts), "--kind", kind, "--alpha", "0.5",
                 "--out", str(out), "--batch-size", "2", "--quiet"]) == 0
    matrix = np.load(out, allow_pickle=False)
    lm = wb.load(str(folder))
    emb = MoEEmbedder(lm, alpha=0.5)
    if kind == "concat":
        emb.fit(TEXTS)  # default: statistics of the input texts themselves
    assert matrix.dtype == np.float32 and matrix.shape == (len(TEXTS), emb.dims(kind))
    np.testing.assert_allclose(matrix, emb.embed(TEXTS, kind=kind), atol=1e-5)
    if kind == "sum":
        parts = emb.parts(TEXTS)
        np.testing.assert_allclose(matrix @ matrix.T, emb.similarity(parts, kind="sum", alpha=0.5), atol=1e-5)
    assert f"wrote {len(TEXTS)}x" in capsys.readouterr().out


def test_embed_command_reference_and_saved_embedder(checkpoint, tmp_path):
    folder, texts, reference = checkpoint
    out = tmp_path / "c.npy"
    assert main(["embed", "--model", str(folder), "--texts", str(texts), "--kind", "concat",
                 "--reference", str(reference), "--template", "prompteol", "--out", str(out), "--quiet"]) == 0
    lm = wb.load(str(folder))
    emb = MoEEmbedder(lm, template="prompteol").fit(reference.read_text().splitlines())
    np.testing.assert_allclose(np.load(out), emb.embed(TEXTS, kind="concat"), atol=1e-5)
    emb.save(tmp_path / "saved")
    out2 = tmp_path / "c2.npy"
    assert main(["embed", "--model", str(folder), "--texts", str(texts), "--kind", "concat",
                 "--embedder", str(tmp_path / "saved"), "--out", str(out2), "--quiet"]) == 0
    np.testing.assert_allclose(np.load(out2), np.load(out), atol=1e-6)


def test_embed_command_errors_are_clear(checkpoint, tmp_path, capsys):
    folder, texts, _ = checkpoint
    assert main(["embed", "--model", str(folder), "--texts", str(texts), "--out", str(tmp_path / "x.csv"),
                 "--quiet"]) == 2
    assert ".npy" in capsys.readouterr().err
