"""The shipped demo checkpoint loads offline with plain transformers and fits its limits."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from workbench.demo import CHECKPOINT_DIR, checkpoint_available  # noqa: E402
from workbench.demo.export import MAX_BYTES, check_checkpoint  # noqa: E402

pytestmark = pytest.mark.skipif(not checkpoint_available(), reason="demo checkpoint not built")


@pytest.fixture(scope="module")
def model():
    return AutoModelForCausalLM.from_pretrained(CHECKPOINT_DIR, local_files_only=True).eval()


def test_plain_transformers_load_gives_an_all_moe_qwen3(model):
    cfg = model.config
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and cfg.model_type == "qwen3_moe"
    assert cfg.mlp_only_layers == [] and cfg.decoder_sparse_step == 1
    assert cfg.output_router_logits is False and cfg.router_aux_loss_coef > 0
    assert cfg.norm_topk_prob is True and cfg.tie_word_embeddings is True
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    for layer in model.model.layers:
        assert type(layer.mlp).__name__ == "Qwen3MoeSparseMoeBlock"
        assert layer.mlp.experts.gate_up_proj.shape[0] == cfg.num_experts


def test_weights_are_bf16_and_small():
    info = check_checkpoint(CHECKPOINT_DIR)
    assert info["dtypes"] == {"BF16"} and info["bytes"] <= MAX_BYTES


def test_gate_seam_returns_logits_weights_indices(model):
    tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
    seen = []
    hook = model.model.layers[1].mlp.gate.register_forward_hook(lambda m, i, o: seen.append(o))
    try:
        with torch.no_grad():
            model(**tok("print('hello')", return_tensors="pt"))
    finally:
        hook.remove()
    logits, weights, idx = seen[0]
    k = model.config.num_experts_per_tok
    assert logits.shape[-1] == model.config.num_experts and idx.shape[-1] == k
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[0]), atol=1e-5)


def test_forward_of_512_tokens_gives_finite_next_token_distributions(model):
    """A 512-token prompt fits the context and gives finite, normalised predictions at every position
    (its speed is measured side by side in benchmarks/demo_forward.py, not here)."""
    assert model.config.max_position_embeddings >= 512
    ids = torch.randint(3, model.config.vocab_size, (1, 512), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits
    assert logits.shape == (1, 512, model.config.vocab_size)
    assert torch.isfinite(logits).all()
    total = torch.log_softmax(logits.float(), dim=-1).exp().sum(-1)
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)
