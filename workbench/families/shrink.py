"""Tiny configs of any transformers model type, made from the type's own config class.

:func:`tiny_config_for` takes the config class that transformers registers for a ``model_type``,
reads its defaults and builds it again with every size it knows by name shrunk (widths, depths,
head counts, expert counts, LoRA ranks, state sizes), in the config and in each nested sub-config.
Rebuilding through the constructor lets the class derive its per-layer lists for the new depth and
validate the result. The depth grows from :data:`LAYERS` until the per-layer lists show every kind
of layer the default config has (e.g. one attention layer among linear-attention ones), at most
:data:`MAX_LAYERS`. Relations between sizes (multi-head attention, MLA head sizes, Mamba widths,
expert groups, RoPE sections), widths that follow a hidden size and special token ids are kept
consistent. Nothing is downloaded. Types whose defaults need more than this get a small override in
:data:`workbench.families.overrides.OVERRIDES`.

Example:
    >>> from workbench.families.shrink import tiny_config_for
    >>> cfg = tiny_config_for("mixtral")
    >>> cfg.hidden_size, cfg.num_hidden_layers, cfg.num_local_experts, cfg.num_experts_per_tok
    (64, 2, 8, 2)
    >>> tiny_config_for("qwen3_next").layer_types  # one full-attention layer every 4 layers
    ['linear_attention', 'linear_attention', 'linear_attention', 'full_attention']
"""

from __future__ import annotations

import copy
import dataclasses

HIDDEN, LAYERS, MAX_LAYERS, HEADS, KV_HEADS, HEAD_DIM, FFN, EXPERTS, TOP_K = 64, 2, 8, 4, 2, 16, 32, 8, 2

#: names of the depth attributes; they take the depth being tried
DEPTHS = ("num_hidden_layers", "num_layers", "n_layers", "n_layer", "num_decoder_layers", "encoder_layers",
          "decoder_layers")

#: attribute name -> tiny value (an int attribute, or each int of a list attribute, is capped at it)
SIZES: dict[str, int] = {
    # widths
    "hidden_size": HIDDEN, "d_model": HIDDEN, "n_embd": HIDDEN, "dim": HIDDEN, "embed_dim": HIDDEN,
    "hidden_sizes": HIDDEN, "intermediate_size": FFN, "moe_intermediate_size": FFN // 2,
    "shared_expert_intermediate_size": FFN, "ffn_hidden_size": FFN, "d_ff": FFN, "ffn_dim": FFN,
    "encoder_ffn_dim": FFN, "decoder_ffn_dim": FFN, "intermediate_size_mlp": FFN,
    "expert_intermediate_size": FFN // 2, "moe_ffn_hidden_size": FFN // 2, "shared_intermediate_size": FFN,
    "dense_intermediate_size": FFN, "d_kv": HEAD_DIM, "expert_ffn_hidden_size": FFN // 2,
    "ffn_intermediate_size": FFN, "hidden_size_per_layer_input": 16,
    # attention
    "num_attention_heads": HEADS, "n_heads": HEADS, "n_head": HEADS, "encoder_attention_heads": HEADS,
    "decoder_attention_heads": HEADS, "num_heads": HEADS,
    "num_key_value_heads": KV_HEADS, "kv_n_heads": KV_HEADS, "num_kv_heads": KV_HEADS,
    "head_dim": HEAD_DIM, "kv_channels": HEAD_DIM, "attention_head_dim": HEAD_DIM,
    "kv_lora_rank": 16, "q_lora_rank": 24, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
    "v_head_dim": HEAD_DIM, "qk_head_dim": 16, "index_head_dim": 16, "index_n_heads": 2, "index_topk": 8,
    "index_kpool": 4, "num_global_key_value_heads": KV_HEADS, "global_head_dim": HEAD_DIM,
    "swa_head_dim": HEAD_DIM, "swa_num_attention_heads": HEADS, "swa_num_key_value_heads": KV_HEADS,
    "o_lora_rank": 16, "o_groups": 2, "hc_lowrank": 16,
    # experts
    "num_experts": EXPERTS, "num_local_experts": EXPERTS, "n_routed_experts": EXPERTS,
    "moe_num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "num_experts_per_token": TOP_K,
    "moe_top_k": TOP_K, "moe_topk": TOP_K, "moe_k": TOP_K, "top_k": TOP_K, "n_shared_experts": 1,
    "num_shared_experts": 1, "moe_num_shared_experts": 1, "zero_expert_num": 2, "expert_capacity": 64,
    # which layers are dense, sparse, attention, ...: small counts, periods and offsets put every kind early
    "first_k_dense_replace": 1, "num_dense_layers": 1, "moe_layer_start_index": 1,
    "decoder_sparse_step": 2, "encoder_sparse_step": 2, "interleave_moe_layer_step": 2,
    "num_sparse_encoder_layers": 1, "num_sparse_decoder_layers": 1,
    "attn_layer_period": 2, "attn_layer_offset": 1, "expert_layer_period": 2, "expert_layer_offset": 1,
    "full_attention_interval": 2, "global_attn_every_n_layers": 2, "sliding_window_pattern": 2,
    "no_rope_layer_interval": 2, "layer_group_size": 2, "n_layers_per_attn_res_block": 2,
    # linear attention / state-space mixers
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_key_head_dim": 8,
    "linear_value_head_dim": 8, "linear_head_dim": 8, "linear_num_heads": 4, "mamba_n_heads": 4,
    "mamba_d_head": 8, "mamba_head_dim": 8, "mamba_d_state": 8, "ssm_state_size": 8, "mamba_n_groups": 1,
    "n_groups": 1, "state_size": 8, "mamba_expand": 2, "mamba_d_conv": 4, "mamba_dt_rank": 8, "time_step_rank": 8,
    # misc
    "vocab_size": 512, "vocab_size_per_layer_input": 512, "unpadded_vocab_size": 512, "mel_vocab_size": 16,
    "sliding_window": 32, "attention_chunk_size": 64, "max_position_embeddings": 512, "max_window_layers": LAYERS,
    "decoder_dim": HIDDEN, "num_code_groups": 4, "num_quantizers": 4,
    **dict.fromkeys(DEPTHS, LAYERS),
}

#: name suffix -> tiny value, for names :data:`SIZES` lacks (e.g. the widths of adapters and projectors)
SUFFIX_SIZES = {"_hidden_size": HIDDEN, "_hidden_dim": HIDDEN, "_out_dim": HIDDEN, "_output_dim": HIDDEN,
                "_input_dim": HIDDEN, "_channels": HIDDEN, "_intermediate_size": FFN, "mlp_dim": FFN}
#: MoE sizes that default configs may leave unset (``None``): they get these tiny values
UNSET_MOE_SIZES = {"num_experts": EXPERTS, "n_routed_experts": EXPERTS, "num_local_experts": EXPERTS,
                   "num_experts_per_tok": TOP_K, "top_k_experts": TOP_K, "moe_intermediate_size": FFN // 2,
                   "n_shared_experts": 1}
#: lists of layer indices (not one entry per layer): indices past the depth are dropped
LAYER_INDEX_LISTS = ("mlp_only_layers", "moe_layers", "full_attn_idxs", "ple_layer_ids", "local_layer_ids")
#: int attributes named ``*{suffix}`` that equal a hidden size of the config tree are widths that follow it
WIDTH_SUFFIXES = ("_dim", "_size", "_channels", "_width")
#: ... unless their name has one of these parts
NOT_WIDTHS = ("vocab", "patch", "image", "window", "position", "kernel", "chunk", "block", "conv", "stride",
              "cache", "group", "bucket", "spatial", "merge", "temporal", "token", "length", "layers")


def _is_config(value) -> bool:
    from transformers import PretrainedConfig

    return isinstance(value, PretrainedConfig)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_token_name(name: str) -> bool:
    return name.endswith(("token_id", "token_ids", "token_index"))


def sub_configs(config) -> list:
    """The sub-configs (``text_config``, ``vision_config``, ...) nested directly in ``config``."""
    return [v for v in vars(config).values() if _is_config(v)]


def _walk(config):
    yield config
    for sub in sub_configs(config):
        yield from _walk(sub)


def depth_of(config) -> int | None:
    """The number of layers of ``config`` (its first depth attribute), if it has one."""
    depths = [vars(config).get(n) for n in DEPTHS] + [getattr(config, "num_hidden_layers", None)]
    return next((d for d in depths if _is_int(d)), None)


class _Names:
    """The attribute names of a config class: constructor fields, and ``attribute_map`` aliases."""

    def __init__(self, cls):
        self.fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        self.aliases = dict(cls.attribute_map)  # alias -> stored name

    def stored(self, name: str) -> str:
        """The name under which the attribute is stored (in ``vars(config)``)."""
        return self.aliases.get(name, name)

    def equivalent(self, name: str) -> list[str]:
        """``name`` as stored, then its aliases."""
        stored = self.stored(name)
        return [stored] + sorted(a for a, s in self.aliases.items() if s == stored)

    def field(self, name: str) -> str | None:
        """The constructor field of attribute ``name``, if any."""
        return next((n for n in self.equivalent(name) if n in self.fields), None)

    def lookup(self, table: dict, name: str):
        """The entry of ``table`` for ``name`` or one of its aliases."""
        return next((table[n] for n in self.equivalent(name) if n in table), None)


@dataclasses.dataclass
class _Tree:
    """What shrinking one config needs to know about the whole default config tree."""

    widths: set[int]  # hidden sizes of the configs in the tree
    tokens: dict[int, int]  # special token id past the tiny vocabulary -> a distinct id at its top

    @classmethod
    def of(cls, default) -> _Tree:
        configs = list(_walk(default))
        widths = {v for c in configs for n in ("hidden_size", "d_model", "embed_dim", "n_embd")
                  if _is_int(v := vars(c).get(n)) and v > HIDDEN}
        vocabs = [min(v, SIZES["vocab_size"]) for c in configs if _is_int(v := vars(c).get("vocab_size"))]
        vocab = min(vocabs, default=SIZES["vocab_size"])
        ids = sorted({i for c in configs for n, v in vars(c).items() if _is_token_name(n)
                      for i in (v if isinstance(v, (list, tuple)) else [v]) if _is_int(i) and i >= vocab})
        return cls(widths, {i: vocab - 1 - k for k, i in enumerate(ids)})

    def shrunk(self, names: _Names, name: str, value):
        """The tiny value of attribute ``name`` (``value`` itself when unchanged)."""
        size = names.lookup(SIZES, name.removesuffix("_per_layer"))
        if size is None:
            size = next((v for suffix, v in SUFFIX_SIZES.items() if name.endswith(suffix)), None)
        if _is_int(value) and size is not None:
            return min(value, size)
        if isinstance(value, (list, tuple)) and size is not None:
            return type(value)(min(v, size) if _is_int(v) else v for v in value)
        if _is_token_name(name):
            if isinstance(value, (list, tuple)):
                return type(value)(self.tokens.get(v, v) for v in value)
            return self.tokens.get(value, value)
        if (_is_int(value) and value in self.widths and name.endswith(WIDTH_SUFFIXES)
                and not any(part in name for part in NOT_WIDTHS)):
            return HIDDEN
        return value


def default_config(model_type: str):
    """The config class transformers registers for ``model_type``, with its defaults."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[model_type]()


def tiny_config_for(model_type: str):
    """A tiny config of ``model_type`` (its own config class, shrunk)."""
    return shrink(default_config(model_type))


def shrink(default, layers: int = LAYERS):
    """A tiny config of the class of ``default`` (a config instance), sub-configs shrunk too.

    Args:
        default: the config to shrink (not modified).
        layers: the smallest depth tried.
    """
    return _shrink(default, layers, _Tree.of(default))


def _shrink(default, layers: int, tree: _Tree):
    from workbench.families.overrides import OVERRIDES

    subs = {name: _shrink(value, layers, tree) for name, value in vars(default).items() if _is_config(value)}
    names, old = _Names(type(default)), vars(default)
    own = _derived_lists(default, names)
    depth = depth_of(default)
    for tried in range(layers, max(min(depth or 0, MAX_LAYERS), layers) + 1):
        kwargs = _tiny_kwargs(default, names, tried, tree, own) | copy.deepcopy(subs)
        override = OVERRIDES.get(default.model_type)
        if callable(override):
            override(kwargs, default)
        elif override:
            kwargs.update(copy.deepcopy(override))
        _keep_consistent(kwargs, names, old)
        for i, layer in kwargs.get("per_layer_config", {}).items():
            _keep_consistent(layer, names, old | default._heterogeneity_spec.per_layer_overrides[i], kwargs)
        config = type(default)(**kwargs)
        if _has_every_kind(config, default, names, tree):
            break
    for name, value in old.items():  # extras that are no field (e.g. set by a parent config)
        if name not in vars(config) and not name.startswith("_"):
            setattr(config, name, tree.shrunk(names, name, value))
    return config


def _derived_lists(default, names: _Names) -> set[str]:
    """Names of the lists of ``default`` that its class derives (from its other fields) as they are.

    Those are left out of the kwargs so that the class derives them for the tiny sizes and depth;
    other lists (given to ``default`` by its parent, or literal defaults) are truncated instead.
    """
    try:
        fresh = vars(type(default)())
    except Exception:  # a class that cannot be built bare derives nothing we can rely on
        return set()
    depth = depth_of(default)
    per_layer = {name for name, value in vars(default).items()
                 if isinstance(value, (list, tuple, str)) and value and len(value) == depth}
    return {name for name in per_layer | (set(LAYER_INDEX_LISTS) & set(vars(default)))
            if (field := names.field(name)) and names.fields[field].default is None
            and fresh.get(name) == vars(default)[name]}


def _tiny_kwargs(default, names: _Names, depth: int, tree: _Tree, derived: set[str]) -> dict:
    """Constructor kwargs of a tiny ``default`` with ``depth`` layers (sub-configs left out)."""
    old_depth = depth_of(default)
    kwargs = {}
    for name, value in vars(default).items():
        field = names.field(name)
        if field is None or _is_config(value) or name in derived:
            continue
        if name in DEPTHS and _is_int(value):
            kwargs[field] = min(value, depth)
        elif isinstance(value, (list, tuple, str)) and value and len(value) == old_depth:  # one entry per layer
            kwargs[field] = value[:depth] if isinstance(value, str) else type(value)(
                tree.shrunk(names, name, v) for v in value[:depth])
        elif name in LAYER_INDEX_LISTS and isinstance(value, (list, tuple)):
            kwargs[field] = type(value)(i for i in value if i < depth)
        elif value is None and names.lookup(UNSET_MOE_SIZES, name) is not None:
            kwargs[field] = names.lookup(UNSET_MOE_SIZES, name)
        else:
            kwargs[field] = tree.shrunk(names, name, value)
    if default.is_heterogeneous:
        kwargs["per_layer_config"] = {i: {k: tree.shrunk(names, k, v) for k, v in layer.items()}
                                      for i, layer in default._heterogeneity_spec.per_layer_overrides.items()
                                      if i < depth}
    return kwargs


def _keep_consistent(kwargs: dict, names: _Names, old: dict, outer: dict | None = None) -> None:
    """Keep the relations between sizes that the default config (values ``old``) has, in place.

    ``outer`` are the kwargs of the config that ``kwargs`` are per-layer overrides of.
    """

    def get(name):
        key = names.field(name) or name
        return kwargs.get(key, (outer or {}).get(key, old.get(names.stored(name))))

    def put(name, value):
        kwargs[names.field(name) or name] = value

    def ints(*attrs):
        return all(_is_int(get(a)) for a in attrs)

    def tied(a, b):  # equal in the default config
        return ints(a, b) and old.get(names.stored(a)) == old.get(names.stored(b))

    if tied("head_dim", "qk_rope_head_dim"):
        put("head_dim", get("qk_rope_head_dim"))  # MLA: the rotary part has head_dim
    if ints("qk_head_dim", "qk_nope_head_dim", "qk_rope_head_dim"):
        put("qk_head_dim", get("qk_nope_head_dim") + get("qk_rope_head_dim"))
    if tied("num_key_value_heads", "num_attention_heads"):
        put("num_key_value_heads", get("num_attention_heads"))  # multi-head attention stays so
    mamba = [old.get(n) for n in ("mamba_n_heads", "mamba_d_head", "mamba_expand", "hidden_size")]
    if ints("mamba_n_heads", "mamba_d_head", "mamba_expand") and mamba[0] * mamba[1] == mamba[2] * mamba[3]:
        put("mamba_d_head", get("mamba_expand") * get("hidden_size") // get("mamba_n_heads"))  # heads span it
    counts = ("n_routed_experts", "num_experts", "num_local_experts", "moe_num_experts")
    experts = next((get(n) for n in counts if _is_int(get(n))), None)
    if experts and _is_int(get("n_group")) and get("n_group") > 1:  # expert groups divide the experts
        put("n_group", 4 if experts % 4 == 0 else 1)
        if _is_int(get("topk_group")):
            put("topk_group", min(get("topk_group"), max(get("n_group") // 2, 1)))
    head_dim = get("head_dim") if ints("head_dim") else None
    if head_dim is None and ints("hidden_size", "num_attention_heads"):
        head_dim = get("hidden_size") // get("num_attention_heads")
    if isinstance(get("rope_parameters"), dict) and head_dim:
        put("rope_parameters", _tiny_rope(get("rope_parameters"), head_dim))


def _tiny_rope(rope: dict, head_dim: int) -> dict:
    """``rope`` with its multimodal sections rescaled to the rotary half of ``head_dim``."""
    if rope and all(isinstance(v, dict) for v in rope.values()):  # one entry per layer type
        return {k: _tiny_rope(v, head_dim) for k, v in rope.items()}
    sections = rope.get("mrope_section")
    if not sections:
        return rope
    half = int(head_dim * rope.get("partial_rotary_factor", 1.0)) // 2
    scaled = [s * half // sum(sections) for s in sections]
    for i in range(half - sum(scaled)):
        scaled[i % len(scaled)] += 1
    return {**rope, "mrope_section": scaled}


def _has_every_kind(config, default, names: _Names, tree: _Tree) -> bool:
    """Whether each per-layer list of ``config`` holds every value that of ``default`` holds.

    Lists of more than 4 distinct values (e.g. layer indices) do not count.
    """
    old_depth = depth_of(default)
    for name, value in vars(default).items():
        if isinstance(value, (list, tuple, str)) and value and len(value) == old_depth:
            kinds = {repr(tree.shrunk(names, name, v)) for v in value}
            if len(kinds) <= 4 and not kinds <= {repr(v) for v in vars(config).get(name) or ()}:
                return False
    return True
