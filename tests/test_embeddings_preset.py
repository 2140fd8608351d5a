"""preset="moee" against a small re-implementation of the MoEE reference code (tianyi-lab/MoE-Embedding,
moee.py `encode` and the STS evaluator): its prompt rewriting, left padding with pad id 0, the raw
router logits at the last token, z-scoring per encode batch, and MoEE (sum) as a sum of cosines."""

import copy

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.embeddings import MoEEmbedder
from workbench.embeddings.preset import moee_prompt, reference_unit

TEXTS = ['He said "hello" to the_team', "Der schnelle braune Fuchs springt!", "def add(a, b): return a + b",
         "12 + 34 = 46", "The quick brown fox jumps over the lazy dog", "'quoted'", "What is this?",
         "snake_case_name = 3", "Le renard brun saute.", "A second sentence about a dog"]
OTHER = ["The dog sleeps", "Der Hund schläft.", "def sub(a, b): return a - b", "20 + 30 = 50",
         "A fox jumps", "\"double\"", "Who is that?", "camelCaseName = 4", "Le chien dort", "A cat"]


def reference_prompt(s, template):
    """moee.py lines 195-208, written out."""
    sent = " ".join(s.split(" "))
    if len(sent) > 0 and sent[-1] not in ".?!\"'":
        sent += "."
    sent = sent.replace('"', "'")
    prompt = {"none": '"*sent 0*"', "prompteol": 'This sentence : "*sent 0*" means in one word:"'}[template]
    return prompt.replace("*sent 0*", sent).replace("_", " ").strip()


@torch.no_grad()
def reference_encode(lm, sentences, template, batch_size):
    """moee.py `encode`: left padding with pad id 0, last-token HS and router logits of every MoE layer,
    z-scored per batch (emb_info='MoEE'); returns (HS raw, z(HS), z(RW))."""
    tok = copy.deepcopy(lm.tokenizer)
    tok.pad_token_id, tok.padding_side = 0, "left"
    layers = lm.adapter.decoder_layers(lm.model)
    seen = {}
    hooks = [layers[i].mlp.gate.register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[0]))
             for i in lm.moe_layers]
    raw, z_hs, z_rw = [], [], []
    try:
        for s in range(0, len(sentences), batch_size):
            prompts = [reference_prompt(x, template) for x in sentences[s:s + batch_size]]
            inputs = tok(prompts, padding=True, return_tensors="pt")
            out = lm.model(**inputs, output_hidden_states=True)
            b, t = inputs["input_ids"].shape
            hs = out.hidden_states[-1][:, -1, :]
            rw = torch.cat([seen[i].reshape(b, t, -1)[:, -1, :] for i in lm.moe_layers], dim=1)
            raw.append(hs)
            z_hs.append((hs - hs.mean(0, keepdim=True)) / (hs.std(0, keepdim=True) + 1e-8))
            z_rw.append((rw - rw.mean(0, keepdim=True)) / (rw.std(0, keepdim=True) + 1e-8))
    finally:
        for h in hooks:
            h.remove()
    return [torch.nan_to_num(torch.cat(x), nan=0.0).numpy() for x in (raw, z_hs, z_rw)]


def _cos_rows(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


@pytest.fixture(scope="module")
def demo():
    return wb.load("demo")


def test_prompts_follow_the_reference():
    for text in TEXTS + OTHER:
        for template in ("none", "prompteol"):
            assert moee_prompt(text, template) == reference_prompt(text, template)


@pytest.mark.parametrize("template", ["none", "prompteol"])
def test_preset_vectors_and_sum_similarity_equal_the_reference(demo, template):
    emb = MoEEmbedder(demo, template=template, preset="moee", zscore_batch=4)
    assert emb.config.unit == reference_unit(demo) == "logits"
    raw, z_hs, z_rw = reference_encode(demo, TEXTS, template, batch_size=4)
    parts = emb.parts(TEXTS)
    np.testing.assert_allclose(emb.vectors(parts, "hs"), raw, rtol=1e-4, atol=1e-4)
    assert _cos_rows(emb.vectors(parts, "rw"), z_rw).min() > 0.99999
    concat = emb.vectors(parts, "concat")
    assert concat.shape[1] == raw.shape[1] + z_rw.shape[1]
    # MoEE (sum), as the STS evaluator scores pairs: cos(z(HS_a), z(HS_b)) + w * cos(z(RW_a), z(RW_b))
    _, z_hs2, z_rw2 = reference_encode(demo, OTHER, template, batch_size=4)
    want = _cos_rows(z_hs, z_hs2) + 0.5 * _cos_rows(z_rw, z_rw2)
    got = np.diagonal(emb.similarity(parts, emb.parts(OTHER), kind="sum", alpha=0.5))
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_default_differs_from_the_preset_and_says_why(demo):
    default, paper = MoEEmbedder(demo), MoEEmbedder(demo, preset="moee")
    assert default.config.unit == "probs" and default.config.template == "{text}"
    assert "per batch of 64 texts" in paper.describe() and "fitted" not in paper.describe()
    a = default.similarity(default.fit(TEXTS).parts(TEXTS), kind="sum")
    b = paper.similarity(paper.parts(TEXTS), kind="sum")
    assert not np.allclose(a, b, atol=1e-2)
    with pytest.raises(ValueError, match="'moee'"):
        MoEEmbedder(demo, preset="paper")


def test_preset_embedder_saves_and_loads(demo, tmp_path):
    emb = MoEEmbedder(demo, template="prompteol", preset="moee", zscore_batch=5)
    back = MoEEmbedder.load(emb.save(tmp_path / "moee"), demo)
    assert back.config == emb.config
    np.testing.assert_array_equal(back.embed(TEXTS, kind="concat"), emb.embed(TEXTS, kind="concat"))


def test_explorer_switches_to_the_preset(tiny, tmp_path):
    from workbench.widgets.embeddings import EmbeddingExplorer

    lm = tiny("olmoe")
    ex = EmbeddingExplorer(MoEEmbedder(lm, template="prompteol"), TEXTS, folder=tmp_path)
    before = np.array(ex.heatmap_fig.data[0].z)
    ex.preset.value = "moee"
    paper = MoEEmbedder(lm, template="prompteol", preset="moee")
    want = paper.similarity(paper.parts(TEXTS), kind="sum", alpha=ex.alpha.value)
    np.testing.assert_allclose(np.array(ex.heatmap_fig.data[0].z, dtype=float), want, atol=1e-5)
    assert "moee preset" in ex.title.value and not np.allclose(before, want, atol=1e-3)
