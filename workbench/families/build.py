"""Tiny random models of every Mixture-of-Experts model type the installed transformers registers.

:func:`candidate_model_types` lists the model types that may have routed experts (found from their
modeling source and their default configs), :func:`build_tiny` builds one of them from
:func:`~workbench.families.shrink.tiny_config_for` with seeded random weights and decisive routers,
:func:`dummy_inputs` makes the kwargs of a forward pass and :func:`moe_block_names` lists the MoE
blocks of a built model. Nothing is downloaded.

Example:
    >>> import torch
    >>> from workbench.families.build import build_tiny, dummy_inputs, moe_block_names
    >>> model = build_tiny("mixtral")
    >>> moe_block_names(model)
    ['model.layers.0.mlp', 'model.layers.1.mlp']
    >>> with torch.no_grad():
    ...     logits = model(**dummy_inputs(model)).logits
    >>> tuple(logits.shape)
    (2, 7, 512)
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import pathlib
import re

import torch

from workbench.families.shrink import default_config, sub_configs, tiny_config_for

#: source patterns of a modeling file that has routed experts
EXPERTS_SOURCE = re.compile(r"self\.experts\s*=|class \w*Experts\b|SparseMLP")
#: config attributes holding the number of routed experts
EXPERT_COUNTS = ("num_experts", "n_routed_experts", "num_local_experts", "moe_num_experts")
#: auto mappings searched, in order, for the class to build
MAPPINGS = ("MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", "MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES",
            "MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES", "MODEL_MAPPING_NAMES")
#: class-name suffixes of MoE blocks (that hold a router child), and of routers
MOE_BLOCK_SUFFIXES = ("SparseMLP", "SparseMoeBlock", "MoeBlock", "MoE", "Moe")
ROUTER_NAMES = ("gate", "router")
#: names of per-expert selection biases (shape [E]) that are randomised to be observable
SELECTION_BIASES = ("e_score_correction_bias", "expert_bias", "selection_bias")


def _modeling_files(model_type: str) -> list[pathlib.Path]:
    from transformers.models.auto.configuration_auto import model_type_to_module_name

    import transformers.models

    folder = pathlib.Path(transformers.models.__file__).parent / model_type_to_module_name(model_type)
    return sorted(folder.glob("modeling_*.py"))


def _expert_count(config) -> int | None:
    """The largest expert count declared in ``config`` or one of its sub-configs, if any."""
    values = [vars(config).get(name) for name in EXPERT_COUNTS]
    ffn = vars(config).get("ffn_config")
    values.append(ffn.get("moe_num_experts") if isinstance(ffn, dict) else getattr(ffn, "moe_num_experts", None))
    values += [_expert_count(sub) for sub in sub_configs(config)]
    counts = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    return max(counts, default=None)


def _may_be_moe(model_type: str) -> bool:
    if any(EXPERTS_SOURCE.search(path.read_text()) for path in _modeling_files(model_type)):
        return True
    try:
        config = default_config(model_type)
    except Exception:  # a config class that cannot be built with its defaults says nothing
        return False
    return (_expert_count(config) or 0) > 1


@functools.cache
def candidate_model_types() -> list[str]:
    """Every model type registered in transformers that may have routed experts (cached).

    A type is a candidate when one of its modeling files defines or assigns experts, or when its
    default config (or a nested sub-config) declares more than one expert.
    """
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return [model_type for model_type in CONFIG_MAPPING_NAMES if _may_be_moe(model_type)]


def model_class_for(model_type: str) -> type:
    """The transformers class that :func:`build_tiny` builds for ``model_type``.

    The first hit in the causal-LM, image-text-to-text, seq2seq and base-model auto mappings; for
    sub-config types that no mapping lists, the PreTrainedModel subclass of the type's module whose
    ``config_class`` is the type's config class (``*ForCausalLM`` first, then
    ``*ForConditionalGeneration``, then ``*Model``, then any). Entries of composite types whose class
    is made for one of the type's sub-configs (e.g. the causal LM of a vision-language type, which
    is the ``*_text`` type's model) are skipped.

    Raises:
        LookupError: when no class is found.
    """
    import transformers
    from transformers.models.auto import modeling_auto

    config = default_config(model_type)
    config_class = type(config)
    parts = {type(sub) for sub in sub_configs(config)}
    for mapping in MAPPINGS:
        name = getattr(modeling_auto, mapping).get(model_type)
        name = name[0] if isinstance(name, (tuple, list)) else name
        if name and getattr(transformers, name).config_class not in parts:  # not a part (e.g. the text model)
            return getattr(transformers, name)
    module = importlib.import_module(config_class.__module__.replace(".configuration_", ".modeling_"))
    classes = [cls for _, cls in inspect.getmembers(module, inspect.isclass)
               if issubclass(cls, transformers.PreTrainedModel) and cls.config_class is config_class
               and not cls.__name__.endswith("PreTrainedModel")]
    for suffix in ("ForCausalLM", "ForConditionalGeneration", "Model", ""):
        hits = [cls for cls in classes if cls.__name__.endswith(suffix)]
        if hits:
            return hits[0]
    raise LookupError(f"no model class of {model_type!r} found in the auto mappings nor in {module.__name__}")


def _router_children(module: torch.nn.Module) -> list[torch.nn.Module]:
    return [child for name, child in module.named_children()
            if name in ROUTER_NAMES or "router" in name or type(child).__name__.endswith("Router")]


def _is_moe_block(module: torch.nn.Module) -> bool:
    if "experts" in dict(module.named_children()):
        return True
    return type(module).__name__.endswith(MOE_BLOCK_SUFFIXES) and bool(_router_children(module))


def _router_weight(router: torch.nn.Module) -> torch.nn.Parameter | None:
    """The weight that makes the router logits: its own, else that of its last linear layer."""
    if isinstance(getattr(router, "weight", None), torch.nn.Parameter):
        return router.weight
    linears = [m for m in router.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1].weight if linears else None


def _routers(model: torch.nn.Module):
    for module in model.modules():
        if _is_moe_block(module):
            yield from _router_children(module)
        elif type(module).__name__.endswith("Router"):
            yield module


#: a tiny model larger than this is refused before any weight is allocated
MAX_PARAMETERS = 40_000_000


def build_tiny(model_type: str, seed: int = 0, router_scale: float = 30.0) -> torch.nn.Module:
    """A tiny random model of ``model_type``, in eval mode, float32.

    Args:
        model_type: a key of transformers' ``CONFIG_MAPPING``.
        seed: torch seed for the weights (the same seed gives the same model).
        router_scale: router weights are multiplied by this so that routing is decisive.

    Returns:
        the model (of :func:`model_class_for`), built from :func:`tiny_config_for`. Tensors the
        model class leaves uninitialised, and zero-initialised router weights, are drawn from a
        normal of the config's ``initializer_range``; per-expert selection biases are set to small
        random values so that their effect is observable.
    """
    config = tiny_config_for(model_type)
    cls = model_class_for(model_type)
    with torch.device("meta"):  # count first: a size the shrinker missed must not exhaust memory
        size = sum(p.numel() for p in cls._from_config(config, dtype=torch.float32).parameters())
    if size > MAX_PARAMETERS:
        raise ValueError(f"the shrunk {model_type} config still has {size / 1e6:.0f} M parameters "
                         f"(limit {MAX_PARAMETERS / 1e6:.0f} M); a size attribute needs an override")
    torch.manual_seed(seed)
    with _nan_for_uninitialized():
        model = cls._from_config(config, dtype=torch.float32)
    model.eval()
    std = getattr(config.get_text_config(), "initializer_range", 0.02)
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    with torch.no_grad():
        for _, tensor in tensors:
            if tensor.is_floating_point() and tensor.isnan().any():  # left uninitialised by the class
                tensor.normal_(0.0, std)
        for weight in {id(w): w for w in map(_router_weight, _routers(model)) if w is not None}.values():
            if not weight.any():  # zero-initialised: every token would tie
                weight.normal_(0.0, std)
            weight.mul_(router_scale)
        for name, tensor in tensors:
            if name.rsplit(".", 1)[-1].endswith(SELECTION_BIASES) and tensor.dim() == 1:
                tensor.copy_(torch.randn(tensor.shape) * 0.05)
    return model


@contextlib.contextmanager
def _nan_for_uninitialized():
    """Fill fresh ``torch.empty`` memory with NaN, so that tensors a class never initialises show up."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def _special_token_ids(config) -> set[int]:
    ids = set()
    for name, value in vars(config).items():
        if name.endswith(("token_id", "token_index", "token_ids")):
            ids.update(v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, int))
    for sub in sub_configs(config):
        ids |= _special_token_ids(sub)
    return ids


def _takes_token_ids(model: torch.nn.Module) -> bool:
    try:
        return model.get_input_embeddings() is not None
    except (AttributeError, NotImplementedError):
        return False


def dummy_inputs(model: torch.nn.Module, batch: int = 2, length: int = 7, seed: int = 0) -> dict:
    """Kwargs of a forward pass of ``model``: random ``input_ids`` (and ``decoder_input_ids``).

    Ids are drawn from ``[3, vocab - 1)`` and avoid the config's special (e.g. image) token ids.
    A model without token embeddings (e.g. a talker fed by another model) gets random
    ``inputs_embeds`` instead.

    Raises:
        ValueError: for a model without a text vocabulary (e.g. a vision encoder).
    """
    config = model.config
    text = config.get_text_config()
    vocab = getattr(text, "vocab_size", None)
    if vocab is None:
        raise ValueError(f"{type(model).__name__} takes no text (its config has no vocab_size)")
    generator = torch.Generator().manual_seed(seed)
    if not _takes_token_ids(model):
        return {"inputs_embeds": torch.randn(batch, length, text.hidden_size, generator=generator)}
    allowed = torch.tensor(sorted(set(range(3, vocab - 1)) - _special_token_ids(config)))

    def ids():
        return allowed[torch.randint(len(allowed), (batch, length), generator=generator)]

    inputs = {"input_ids": ids()}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids()
    return inputs


def moe_block_names(model: torch.nn.Module) -> list[str]:
    """Qualified names of the MoE blocks of ``model``.

    A block is a module with a child named ``experts``, or one whose class name ends in a
    :data:`MOE_BLOCK_SUFFIXES` suffix and that holds a router child (named ``gate``, ``router`` or
    ``*router*``, or of a class named ``*Router``).
    """
    return [name for name, module in model.named_modules() if _is_moe_block(module)]
