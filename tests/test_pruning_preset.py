"""preset="lu2024" against a small re-implementation of Lu et al.'s code (Lucky-Lance/Expert_Sparsity):
the calibration stream (shuffle with an explicit seed, join, cut fixed blocks, drop the remainder),
layer-wise enumeration on those blocks, and the skipping median."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import workbench as wb
from workbench import pruning
from workbench.pruning.presets import StreamBlocks, stream_blocks
from workbench.testing import tiny_model

WORDS = ("the quick brown fox jumps over the lazy dog der schnelle braune fuchs springt def add a b "
         "return le renard brun saute 12 34 46").split()


def corpus(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(3, 30)))) for _ in range(n)]


def reference_blocks(tokenizer, texts, seed, block_size, n_blocks, per_block=16, map_batch=1000):
    """data/build.py, written out: shuffle, select, tokenise, group_texts per map batch, select."""
    order = np.random.default_rng(seed).permutation(len(texts))
    docs = [texts[i] for i in order][: min(n_blocks * per_block, len(texts))]
    ids = [tokenizer(t)["input_ids"] for t in docs]
    blocks = []
    for g in range(0, len(ids), map_batch):
        stream = [t for doc in ids[g:g + map_batch] for t in doc]
        total = len(stream)
        if total >= block_size:
            total = (total // block_size) * block_size      # the remainder is dropped
        blocks += [stream[i:i + block_size] for i in range(0, total, block_size)]
    return blocks[:n_blocks]


@pytest.mark.parametrize("spec", [StreamBlocks(seed=7, block_size=16, blocks=10, docs_per_block=3),
                                  StreamBlocks(seed=42, block_size=24, blocks=100, map_batch=7),
                                  StreamBlocks(seed=1, block_size=500, blocks=4)])  # a short stream: one short block
def test_stream_blocks_equal_the_reference(spec):
    tok = tiny_model("mixtral")[1]
    texts = corpus()
    want = reference_blocks(tok, texts, spec.seed, spec.block_size, spec.blocks, spec.docs_per_block, spec.map_batch)
    assert stream_blocks(tok, texts, spec) == want and want
    # the seed is explicit: another seed gives other blocks
    assert stream_blocks(tok, texts, StreamBlocks(seed=spec.seed + 1, block_size=spec.block_size,
                                                  blocks=spec.blocks, docs_per_block=spec.docs_per_block,
                                                  map_batch=spec.map_batch)) != want or len(want) == 1


def test_named_preset_is_the_reference_default():
    tok = tiny_model("mixtral")[1]
    texts = corpus(400)
    assert pruning.PRESETS["lu2024"] == StreamBlocks(seed=42, blocks=128, batch_size=8)
    assert stream_blocks(tok, texts) == reference_blocks(tok, texts, 42, min(tok.model_max_length, 2048), 128)


@torch.no_grad()
def reference_prune(model, blocks, keep, batch_size):
    """model/wrapper.py, written out: cache X, Z of every MoE block per loader batch; for every drop set
    route with the dropped logits at -inf, softmax, top-k, renormalise, run the experts; keep the argmin
    of sum over batches of ||Z - Z_hat||_F (float64)."""
    layers = model.model.layers
    cache = {i: [] for i in range(len(layers))}
    hooks = [layer.mlp.register_forward_hook(lambda m, a, out, i=i: cache[i].append(
        (a[0].reshape(-1, a[0].shape[-1]), out.reshape(-1, out.shape[-1])))) for i, layer in enumerate(layers)]
    try:
        for s in range(0, len(blocks), batch_size):
            model(input_ids=torch.tensor(blocks[s:s + batch_size]))
    finally:
        for h in hooks:
            h.remove()
    kept, losses = {}, {}
    for i, layer in enumerate(layers):
        moe, e = layer.mlp, model.config.num_local_experts
        best = None
        for dropped in itertools.combinations(range(e), e - keep):
            loss = 0.0
            for x, z in cache[i]:
                logits = F.linear(x, moe.gate.weight)
                logits[:, list(dropped)] = -float("inf")
                w = F.softmax(logits, dim=1, dtype=torch.float)
                w, idx = torch.topk(w, model.config.num_experts_per_tok, dim=-1)
                w /= w.sum(dim=-1, keepdim=True)
                z_hat = moe.experts(x, idx, w.to(x.dtype))
                loss += torch.norm(z.double() - z_hat.double()).item()
            if best is None or loss < best[0]:
                best = (loss, dropped)
        losses[i] = best[0]
        kept[i] = [x for x in range(e) if x not in best[1]]
    return kept, losses


def test_pruning_preset_equals_the_reference_enumeration():
    model, tok = tiny_model("mixtral")
    lm = wb.wrap(model, tok)
    spec = StreamBlocks(seed=3, block_size=32, blocks=12, batch_size=4)
    texts = corpus(120)
    blocks = reference_blocks(tok, texts, 3, 32, 12)
    assert len(blocks) == 12 and all(len(b) == 32 for b in blocks)
    want_kept, want_loss = reference_prune(model, blocks, keep=5, batch_size=4)
    got = pruning.Pruner(lm, texts, preset=spec, progress=False).prune(keep=5)
    assert got.kept == want_kept
    for layer, choice in zip(got.kept, got.layers):
        assert choice.loss == pytest.approx(want_loss[layer], rel=1e-5)
    # the default cuts other units from the same documents (each document alone, padded)
    default = pruning.Pruner(lm, texts, batch_size=4, progress=False)
    assert default.num_tokens == sum(len(tok(t)["input_ids"]) for t in texts) != 12 * 32


def test_skipping_preset_equals_the_reference_median():
    """method/dynamic_skipping.py: softmax of every block token's router logits, sorted, w2 / w1, median."""
    model, tok = tiny_model("mixtral")
    lm = wb.wrap(model, tok)
    spec = StreamBlocks(seed=5, block_size=32, blocks=6, batch_size=2)
    texts = corpus(90)
    blocks = reference_blocks(tok, texts, 5, 32, 6)
    ratios = {i: [] for i in range(model.config.num_hidden_layers)}
    hooks = [layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: ratios[i].extend(
        (lambda s: (s[:, 1] / s[:, 0]).tolist())(torch.sort(F.softmax(out[0].float(), -1), -1, descending=True)[0])))
        for i, layer in enumerate(model.model.layers)]
    try:
        with torch.no_grad():
            for s in range(0, len(blocks), 2):
                model(input_ids=torch.tensor(blocks[s:s + 2]))
    finally:
        for h in hooks:
            h.remove()
    cal = pruning.calibrate_skipping(lm, texts, preset=spec, progress=False)
    for layer, values in ratios.items():
        assert cal.beta[layer] == pytest.approx(float(np.median(values)), rel=1e-6)
    assert cal.num_tokens == 6 * 32


def test_preset_errors_say_what_to_do(tiny):
    lm = tiny("mixtral")
    with pytest.raises(ValueError, match="lu2024"):
        pruning.Pruner(lm, corpus(5), preset="lu")
    with pytest.raises(ValueError, match="StreamBlocks"):
        pruning.Pruner(lm, corpus(5), preset="lu2024", max_length=64)
    with pytest.warns(UserWarning, match="context"):
        pruning.Pruner(lm, corpus(50), preset=StreamBlocks(block_size=300), progress=False).units
