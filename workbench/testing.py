"""Tiny real models of every supported family, built from configs in code (no downloads).

Used by the tests, the docstring examples and anyone who wants to try an edit without a checkpoint.
Weights are random (seeded); router weights are scaled up so that routing is decisive.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> lm.num_experts, lm.top_k, lm.moe_layers
    (8, 2, [0, 1])
"""

from __future__ import annotations

import functools

import torch

COMMON = dict(vocab_size=384, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
              eos_token_id=2, tie_word_embeddings=False)


def _configs() -> dict[str, tuple[str, dict]]:
    """family -> (transformers config class name, kwargs)."""
    moe = dict(num_experts_per_tok=2, intermediate_size=24)
    return {
        "mixtral": ("MixtralConfig", dict(COMMON, num_local_experts=8, **moe)),
        "qwen2_moe": ("Qwen2MoeConfig", dict(COMMON, num_experts=8, num_experts_per_tok=2,
                                             moe_intermediate_size=16, shared_expert_intermediate_size=24,
                                             intermediate_size=48, norm_topk_prob=False)),
        "qwen3_moe": ("Qwen3MoeConfig", dict(COMMON, num_experts=8, num_experts_per_tok=2,
                                             moe_intermediate_size=16, intermediate_size=48,
                                             norm_topk_prob=True, head_dim=8)),
        "olmoe": ("OlmoeConfig", dict(COMMON, num_experts=8, num_experts_per_tok=2, intermediate_size=16,
                                      norm_topk_prob=False)),
        "deepseek_v2": ("DeepseekV2Config", dict(COMMON, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
                                                 moe_intermediate_size=16, intermediate_size=48,
                                                 n_shared_experts=1, first_k_dense_replace=1,
                                                 num_hidden_layers=3, topk_method="group_limited_greedy",
                                                 n_group=4, topk_group=2, routed_scaling_factor=1.5,
                                                 kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
                                                 qk_nope_head_dim=4, v_head_dim=8, head_dim=4)),
        "deepseek_v3": ("DeepseekV3Config", dict(COMMON, num_key_value_heads=4, n_routed_experts=8, num_experts_per_tok=2,
                                                 moe_intermediate_size=16, intermediate_size=48,
                                                 n_shared_experts=1, first_k_dense_replace=1,
                                                 num_hidden_layers=3, n_group=4, topk_group=2,
                                                 routed_scaling_factor=2.5, norm_topk_prob=True,
                                                 kv_lora_rank=16, q_lora_rank=24, qk_rope_head_dim=4,
                                                 qk_nope_head_dim=4, v_head_dim=8, head_dim=4)),
        "glm4_moe": ("Glm4MoeConfig", dict(COMMON, n_routed_experts=8, num_experts_per_tok=2,
                                           moe_intermediate_size=16, intermediate_size=48,
                                           n_shared_experts=1, first_k_dense_replace=1, num_hidden_layers=3,
                                           n_group=2, topk_group=1, routed_scaling_factor=1.8,
                                           norm_topk_prob=True, head_dim=8)),
        "gpt_oss": ("GptOssConfig", dict(COMMON, num_local_experts=8, num_experts_per_tok=2,
                                         intermediate_size=16, head_dim=8, sliding_window=16,
                                         layer_types=["sliding_attention", "full_attention"],
                                         rope_parameters=dict(rope_type="default", rope_theta=10000.0))),
        "granitemoe": ("GraniteMoeConfig", dict(COMMON, num_local_experts=8, **moe)),
        "phimoe": ("PhimoeConfig", dict(COMMON, num_local_experts=8, **moe)),
        "llama4_text": ("Llama4TextConfig", dict(COMMON, num_local_experts=8, num_experts_per_tok=1,
                                                 intermediate_size=16, intermediate_size_mlp=48,
                                                 head_dim=8, moe_layers=[0, 1], attention_chunk_size=64)),
        "dbrx": ("DbrxConfig", dict(vocab_size=384, d_model=32, n_heads=4, n_layers=2, max_seq_len=256,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2,
                                    attn_config=dict(kv_n_heads=2, rope_theta=10000.0, clip_qkv=8.0),
                                    ffn_config=dict(ffn_hidden_size=24, moe_num_experts=8, moe_top_k=2,
                                                    moe_normalize_expert_weights=1.0))),
        "jetmoe": ("JetMoeConfig", dict(vocab_size=384, hidden_size=32, num_hidden_layers=2,
                                        num_key_value_heads=2, kv_channels=8, intermediate_size=16,
                                        num_local_experts=8, num_experts_per_tok=2, pad_token_id=0,
                                        bos_token_id=1, eos_token_id=2, max_position_embeddings=256)),
    }


FAMILIES = tuple(_configs())


def tiny_config(family: str):
    """A tiny transformers config of ``family`` (a key of :data:`FAMILIES`)."""
    import transformers

    configs = _configs()
    if family not in configs:
        raise KeyError(f"unknown tiny family {family!r}; known: {', '.join(configs)}")
    cls_name, kwargs = configs[family]
    return getattr(transformers, cls_name)(**kwargs)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A small byte-level BPE tokenizer trained in memory (vocabulary 384, ids 0-2 special)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    text = ("The quick brown fox jumps over the lazy dog. Der schnelle braune Fuchs springt. "
            "def add(a, b):\n    return a + b\n12 + 34 = 46. Le renard brun saute. ") * 20
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=384, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", model_max_length=256)


def tiny_model(family: str, seed: int = 0, router_scale: float = 30.0):
    """A tiny random model of ``family`` and the tiny tokenizer, in eval mode, float32.

    Args:
        family: a key of :data:`FAMILIES`.
        seed: torch seed for the weights.
        router_scale: router weights are multiplied by this so that routing is decisive.

    Returns:
        ``(model, tokenizer)``.
    """
    from transformers import AutoModelForCausalLM

    config = tiny_config(family)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(part in name for part in (".gate.weight", ".router.weight", ".router.layer.weight")):
                param.mul_(router_scale)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.05)
    return model, tiny_tokenizer()


def save_tiny_model(family: str, folder, seed: int = 0):
    """Save :func:`tiny_model` of ``family`` (safetensors weights, config, tokenizer) in ``folder``.

    Example:
        >>> import tempfile, workbench as wb
        >>> wb.load(save_tiny_model("olmoe", tempfile.mkdtemp())).top_k
        2
    """
    model, tokenizer = tiny_model(family, seed=seed)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


#: widths vLLM's CPU kernels accept (attention heads of 64, hidden 128), per family on top of the tiny config
_ENGINE_WIDTHS = dict(hidden_size=128, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256)
_ENGINE_EXTRA = {"qwen3_moe": dict(head_dim=64),
                 "deepseek_v2": dict(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64,
                                     head_dim=64),
                 "deepseek_v3": dict(kv_lora_rank=512, qk_rope_head_dim=64, qk_nope_head_dim=64, v_head_dim=64,
                                     head_dim=64, q_lora_rank=64, scoring_func="sigmoid", topk_method="noaux_tc")}
#: tiny families a vLLM engine runs (see tests/vllm)
ENGINE_FAMILIES = ("mixtral", "olmoe", "qwen2_moe", "qwen3_moe", "deepseek_v2", "deepseek_v3")


def save_tiny_checkpoint(family: str, path, seed: int = 0, router_scale: float = 30.0, **overrides):
    """Save a tiny random checkpoint of ``family`` (safetensors, config and the tiny tokenizer) whose
    widths a vLLM engine also runs, so both backends load the same files.

    Args:
        family: one of :data:`ENGINE_FAMILIES`.
        path: the folder to write.
        seed: torch seed for the weights.
        router_scale: router weights are multiplied by this so that routing is decisive.
        **overrides: config values to change (keys as ``config.to_dict()`` names them, e.g. ``num_local_experts=128``).

    Returns:
        ``path`` as a :class:`pathlib.Path`.

    Example:
        >>> import tempfile, workbench as wb
        >>> from workbench.testing import save_tiny_checkpoint
        >>> lm = wb.load(save_tiny_checkpoint("olmoe", tempfile.mkdtemp()))
        >>> lm.num_experts, lm.top_k
        (8, 2)
    """
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    if family not in ENGINE_FAMILIES:
        raise KeyError(f"no engine-sized tiny checkpoint for {family!r}; known: {', '.join(ENGINE_FAMILIES)}")
    config = tiny_config(family)
    values = config.to_dict()
    values.update(_ENGINE_WIDTHS, **_ENGINE_EXTRA.get(family, {}))
    values.update(overrides)
    values.pop("qk_head_dim", None)  # derived from the rope and nope widths
    config = type(config).from_dict(values)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".gate.weight" in name:
                param.mul_(router_scale)
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn_like(buf) * 0.05)
    path = Path(path)
    model.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path
