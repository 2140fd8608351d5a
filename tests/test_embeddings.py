"""MoEE embeddings on tiny real models: RW against the recorded routing, the sum formula and its
exported vectors, batch independence with left and right padding, standardisation, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import workbench as wb
from workbench.embeddings import MoEEmbedder, Standardizer, cosine_matrix, extract, sum_similarity, sum_vectors
from workbench.testing import FAMILIES

MIXED = ["The quick brown fox jumps over the lazy dog and keeps on running far away.",
         "12 + 34 = 46", "def add(a, b):\n    return a + b", "Der Fuchs."]


def _last_rows(trace):
    """Token row of each document's last token in a trace."""
    return [int(np.flatnonzero(trace.doc == d)[np.argmax(trace.pos[trace.doc == d])]) for d in np.unique(trace.doc)]


@pytest.mark.parametrize("family", FAMILIES)
def test_rw_logits_equal_recorded_router_output_at_last_token(tiny, texts, family):
    lm = tiny(family)
    parts = extract(lm, texts, unit="logits", batch_size=3)
    trace = wb.record(lm, texts, scores=True, progress=False)
    last = _last_rows(trace)
    recorded = trace.scores[:, last, :].astype(np.float32).transpose(1, 0, 2)  # [N, L, E]
    assert parts.layers == list(trace.layers)
    scale = np.abs(recorded).max()
    np.testing.assert_allclose(parts.rw_by_layer(), recorded, rtol=2e-3, atol=2e-3 * scale)


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe", "llama4_text"])
def test_rw_weights_unit_is_the_recorded_routing_at_last_token(tiny, texts, family):
    lm = tiny(family)
    parts = extract(lm, texts, unit="weights", padding_side="left")
    trace = wb.record(lm, texts, progress=False)
    last = _last_rows(trace)
    dense = np.zeros((len(texts), len(trace.layers), lm.num_experts), dtype=np.float32)
    for n, row in enumerate(last):
        for li in range(len(trace.layers)):
            for e, w in zip(trace.topk_idx[li, row], trace.topk_w[li, row]):
                if e >= 0:
                    dense[n, li, e] += w
    np.testing.assert_allclose(parts.rw_by_layer(), dense, atol=1e-5)


@pytest.mark.parametrize("family", ["qwen3_moe", "deepseek_v3", "llama4_text"])
def test_probs_unit_follows_the_family_scoring(tiny, texts, family):
    lm = tiny(family)
    logits = extract(lm, texts, unit="logits").rw_by_layer()
    probs = extract(lm, texts, unit="probs").rw_by_layer()
    if lm.rule.scoring in ("sigmoid", "topk_sigmoid"):
        expected = torch.sigmoid(torch.from_numpy(logits)).numpy()
    else:
        expected = torch.softmax(torch.from_numpy(logits), dim=-1).numpy()
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_layer_subset_keeps_only_those_layers(tiny, texts):
    lm = tiny("deepseek_v2")
    full = extract(lm, texts, unit="logits")
    one = extract(lm, texts, unit="logits", layers=[lm.moe_layers[-1]])
    assert one.rw.shape == (len(texts), lm.num_experts)
    np.testing.assert_allclose(one.rw, full.rw_by_layer()[:, -1], atol=1e-5)
    with pytest.raises(ValueError, match="not an MoE layer"):
        extract(lm, texts, layers=[0])  # layer 0 of deepseek_v2 is dense


@pytest.mark.parametrize("family", ["mixtral", "qwen2_moe", "deepseek_v3", "gpt_oss", "dbrx", "jetmoe"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_embedding_does_not_depend_on_the_batch(tiny, family, side):
    lm = tiny(family)
    emb = MoEEmbedder(lm, template="prompteol", padding_side=side, batch_size=4)
    in_batch = emb.parts(MIXED)
    emb.fit(in_batch)
    alone = [emb.parts([t]) for t in MIXED]
    for kind in ("hs", "rw", "concat", "sum"):
        together = emb.vectors(in_batch, kind)
        # the vector of a text is a function of that text's parts alone (exact, no batch statistics)
        one_by_one = np.concatenate([emb.vectors(in_batch.take([i]), kind) for i in range(len(MIXED))])
        np.testing.assert_array_equal(together, one_by_one, err_msg=f"{family} {side} {kind}")
        separate = np.concatenate([emb.vectors(p, kind) for p in alone])
        if kind == "concat":
            # z = (x - mean) / std divides float32 forward noise (~1e-7) by the reference std, which on
            # a tiny random model is as small as 1e-5 in some RW dims: compare in the input's units
            scale = np.concatenate([emb.hs_stats.std, emb.rw_stats.std]).astype(np.float32)
            together, separate = together * scale, separate * scale
        np.testing.assert_allclose(together, separate, rtol=1e-4, atol=1e-4, err_msg=f"{family} {side} {kind}")
    other = MoEEmbedder(lm, template="prompteol", padding_side="left" if side == "right" else "right", batch_size=3)
    np.testing.assert_allclose(in_batch.rw, other.parts(MIXED).rw, rtol=1e-4, atol=1e-4)


def test_standardisation_uses_fitted_statistics_not_the_batch(tiny):
    emb = MoEEmbedder(tiny("olmoe")).fit(MIXED)
    first = emb.embed(MIXED[:1], kind="concat")
    with_others = emb.embed(MIXED[:1] + ["a completely different text, 99 + 1 = 100"], kind="concat")[:1]
    np.testing.assert_allclose(first, with_others, rtol=1e-4, atol=1e-4)
    parts = emb.parts(MIXED)
    z = emb.vectors(parts, "concat")
    assert np.allclose(z.mean(axis=0), 0, atol=1e-4)  # fitted on exactly these texts
    np.testing.assert_allclose(z[:, : parts.hs.shape[1]], (parts.hs - parts.hs.mean(0)) / parts.hs.std(0), atol=1e-3)


def test_concat_without_fit_says_what_to_do(tiny):
    with pytest.raises(RuntimeError, match="fit"):
        MoEEmbedder(tiny("mixtral")).embed(MIXED, kind="concat")


def test_sum_similarity_is_the_formula_and_the_exported_dot_product(tiny):
    emb = MoEEmbedder(tiny("qwen3_moe"), unit="logits")
    a, b = emb.parts(MIXED), emb.parts(["another text", "12 + 1 = 13"])
    for alpha in (0.0, 0.5, 1.0, 3.0):
        expected = cosine_matrix(a.hs, b.hs) + alpha * cosine_matrix(a.rw, b.rw)
        np.testing.assert_allclose(sum_similarity(a.hs, a.rw, b.hs, b.rw, alpha), expected, atol=1e-10)
        np.testing.assert_allclose(emb.similarity(a, b, kind="sum", alpha=alpha), expected, atol=1e-5)
        va, vb = emb.vectors(a, "sum", alpha), emb.vectors(b, "sum", alpha)
        np.testing.assert_allclose(va @ vb.T, expected, atol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(va, axis=1), np.sqrt(1 + alpha), atol=1e-5)
    v = sum_vectors(a.hs, a.rw, 2.0)
    assert v.dtype == np.float32 and v.shape == (len(MIXED), a.hs.shape[1] + a.rw.shape[1])
    with pytest.raises(ValueError, match="alpha"):
        sum_vectors(a.hs, a.rw, -1.0)


def test_templates_change_the_input(tiny):
    lm = tiny("mixtral")
    plain = MoEEmbedder(lm).embed(MIXED, kind="hs")
    eol = MoEEmbedder(lm, template="prompteol").embed(MIXED, kind="hs")
    custom = MoEEmbedder(lm, template='This sentence : "{text}" means in one word:"').embed(MIXED, kind="hs")
    assert not np.allclose(plain, eol)
    np.testing.assert_allclose(eol, custom, atol=1e-6)
    with pytest.raises(ValueError, match="placeholder"):
        MoEEmbedder(lm, template="no placeholder")


def test_save_and_load_round_trip_without_pickle(tiny, tmp_path):
    lm = tiny("glm4_moe")
    emb = MoEEmbedder(lm, template="prompteol", unit="logits", alpha=0.3).fit(MIXED)
    emb.save(tmp_path / "emb")
    assert sorted(p.name for p in (tmp_path / "emb").iterdir()) == ["embedder.json", "stats.safetensors"]
    back = MoEEmbedder.load(tmp_path / "emb", lm)
    assert back.config == emb.config and back.reference_size == len(MIXED)
    for kind in ("concat", "sum"):
        np.testing.assert_allclose(back.embed(MIXED[:2], kind=kind), emb.embed(MIXED[:2], kind=kind), atol=1e-6)
    with pytest.raises(ValueError, match="fingerprint"):
        MoEEmbedder.load(tmp_path / "emb", tiny("qwen3_moe"))


def test_standardizer_rejects_too_few_rows_and_wrong_width():
    with pytest.raises(ValueError, match="at least 2"):
        Standardizer().fit(np.ones((1, 3)))
    z = Standardizer().fit(np.random.default_rng(0).normal(size=(5, 3)))
    with pytest.raises(ValueError, match="3 dimensions"):
        z.transform(np.ones((2, 4)))


def test_bad_input_errors(tiny):
    emb = MoEEmbedder(tiny("mixtral"))
    with pytest.raises(TypeError, match="list of strings"):
        emb.embed("one string")
    with pytest.raises(ValueError, match="empty"):
        emb.embed(["ok", "  "])
    with pytest.raises(ValueError, match="kind"):
        emb.embed(["ok"], kind="mean")
    with pytest.raises(ValueError, match="unit"):
        MoEEmbedder(tiny("mixtral"), unit="percent")
