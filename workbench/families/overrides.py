"""Per-type fixes of the tiny configs made by :mod:`workbench.families.shrink`.

:data:`OVERRIDES` maps a config's ``model_type`` to what its tiny config needs on top of the generic
shrinking: a dict merged into the constructor kwargs, or a function ``fix(kwargs, default)`` that
edits them in place (``default`` is the default config; sub-configs in ``kwargs`` are already tiny
config instances). Sizes are then kept consistent as for any config (e.g. RoPE sections are
rescaled to the head size). Sub-configs are shrunk with the override of their own ``model_type``,
so fixing ``foo_text`` also fixes the ``text_config`` of ``foo``.

Most fixes switch experts on (types whose defaults are dense), fill values the modeling code needs
but the defaults leave unset, or add attributes the modeling code reads but the config class does
not define.
"""

from __future__ import annotations


def _mrope(*sections: int):
    """A fix adding the multimodal RoPE sections the modeling code assumes when the config has none."""

    def fix(kwargs: dict, default) -> None:
        kwargs["rope_parameters"] = {"mrope_section": list(sections), **default.rope_parameters}

    return fix


def _dbrx(kwargs: dict, default) -> None:
    # the attention reads ``attn_config.rope_theta``, which the attention config does not define
    kwargs["attn_config"].rope_theta = default.rope_parameters["rope_theta"]
    kwargs["attn_config"].clip_qkv = 8.0  # the attention clamps to it, even when None


def _qwen3_omni_moe(kwargs: dict, default) -> None:
    # the talker reads ``spatial_merge_size``, which its config does not define
    kwargs["talker_config"].spatial_merge_size = default.thinker_config.vision_config.spatial_merge_size


OVERRIDES: dict[str, object] = {
    "dbrx": _dbrx,
    "deepseek_ocr2_text": {"mlp_layer_types": ["dense", "sparse"]},  # unset by default, but required
    "doge": {"is_moe": True, "num_experts": 16},  # dense by default; product-key experts: a square count
    "dots3_note_vision_encoder": {"pyramid_num_routed": [-1, 8]},  # experts from layer 25 on by default
    "ernie4_5_vl_moe_text": _mrope(22, 22, 20),
    "gemma4_text": {"enable_moe_block": True},  # dense by default
    "glm4v_moe_text": _mrope(8, 12, 12),
    "granitemoehybrid": {"layer_types": ["linear_attention", "full_attention"]},  # no attention by default
    "hunyuan_v1_moe": {"head_dim": 16, "num_experts": 8, "moe_topk": 2},  # head_dim None, 1 expert by default
    # index layouts are derived from the depth when unset; the indexer has at most 2 heads per key head here
    "kolibri1_1": {"index_layers": None, "kv_source_layers": None, "index_num_heads": 2},
    "lfm2_moe": {"layer_types": ["conv", "full_attention"]},  # unset by default, but required
    "qwen3_omni_moe": _qwen3_omni_moe,
    "qwen3_omni_moe_talker_text": {"shared_expert_intermediate_size": 32},  # read, but not a field
    "qwen4_exp_text": {"indexer_n_heads": 2, "indexer_kv_heads": 1, "indexer_head_dim": 16, "indexer_budget": 8,
                       "indexer_compress_ratio": 2},  # unset by default, but required
    "step3p5": {"moe_layers_enum": "1", "sliding_window": 32},  # dense layers 0-2 by default
    "vitpose_backbone": {"num_experts": 2, "part_features": 16},  # ViTPose+: an expert MLP per dataset index
}
