"""Finding a model's MoE blocks from its module tree, for families without an adapter file.

Every MoE in transformers 5 has blocks of one shape: a router child (``gate`` or ``router``) and an
``experts`` child, called as ``_, w, idx = router(x)`` then ``experts(x, idx, w)``. :func:`find_structure`
walks ``model.named_modules()`` for such blocks and reads where they sit: the layer stack(s) they
belong to (a decoder, or an encoder and a decoder), the block's path inside a layer, the router and
experts attributes, shared experts, and candidate selection-bias tensors. How the router turns
logits into ``(idx, w)`` is identified separately (:mod:`workbench.adapters.identify`).

Example:
    >>> from workbench.testing import tiny_model
    >>> model, _ = tiny_model("qwen3_moe")
    >>> s = find_structure(model)
    >>> s.stacks, s.block_attrs, s.router_attr, s.num_experts
    (('model.layers',), ('mlp',), 'gate', 8)
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch

ROUTER_NAMES = ("router", "gate")
SHARED_NAMES = ("shared_experts", "shared_expert", "shared_mlp")
EXPERT_WEIGHTS = ("gate_up_proj", "down_proj", "up_proj", "w1")


class DiscoveryError(ValueError):
    """The model's MoE blocks could not be found or understood."""


@dataclass(frozen=True)
class Structure:
    """Where a model's MoE blocks are.

    Attributes:
        stacks: dotted paths of the layer lists holding MoE blocks, in execution order
            (``("model.layers",)``; ``("encoder.block", "decoder.block")`` for encoder-decoders).
        block_attrs: the block's path inside a layer, one per stack.
        router_attr: the router child of a block.
        experts_attr: the experts child of a block.
        num_experts: experts in the experts module (routed experts that compute).
        shared_expert_attrs: block children that run for every token.
        bias_candidates: block-relative paths of ``[E]`` tensors that may be a selection bias.
        scale_tensors: block-relative paths of the router's per-expert ``[E]`` scales (Gemma-4);
            identification perturbs them too, so that a rule that ignores them is not taken.
    """

    stacks: tuple[str, ...]
    block_attrs: tuple[str, ...]
    router_attr: str
    experts_attr: str
    num_experts: int
    shared_expert_attrs: tuple[str, ...]
    bias_candidates: tuple[str, ...]
    scale_tensors: tuple[str, ...] = ()


def router_child(block: torch.nn.Module) -> str | None:
    """The name of a block's router child, or None when the block has none."""
    children = dict(block.named_children())
    if "experts" not in children:
        return None
    for name in ROUTER_NAMES:
        if name in children and not isinstance(children[name], (torch.nn.Linear, torch.nn.ModuleList)):
            return name
    for name, child in children.items():
        if type(child).__name__.endswith(("Router", "Gate")) and name != "experts":
            return name
    return None


def expert_count(experts: torch.nn.Module) -> int:
    """Experts held by an experts module (fused ``[E, ...]`` tensors or a list of modules)."""
    for attr in ("num_routed_experts", "num_experts", "num_local_experts", "n_routed_experts"):
        value = getattr(experts, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    for attr in EXPERT_WEIGHTS:
        tensor = getattr(experts, attr, None)
        if isinstance(tensor, torch.Tensor) and tensor.dim() == 3:
            return int(tensor.shape[0])
    if isinstance(experts, (torch.nn.ModuleList, torch.nn.ModuleDict)):
        return len(experts)
    raise DiscoveryError(f"cannot tell how many experts {type(experts).__name__} holds")


def _split(name: str) -> tuple[str, str]:
    """``"model.layers.3.mlp"`` -> ``("model.layers", "mlp")``: the layer list and the path inside a layer."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i]), ".".join(parts[i + 1:])
    raise DiscoveryError(f"MoE block {name!r} is not inside a list of layers")


NON_TEXT = ("vision", "visual", "audio", "image", "video")


def _text_blocks(blocks):
    """The blocks that route text tokens: a vision or audio tower's MoE blocks are left out when the
    model has others, and a layer with a text and a vision mixture (Ernie-4.5-VL) keeps the text one."""
    def non_text(name: str) -> bool:
        return any(word in name for word in NON_TEXT)
    text = [b for b in blocks if not non_text(b[0])]
    return text or blocks


def _bias_candidates(block: torch.nn.Module, router_attr: str, width: int) -> tuple[str, ...]:
    found = []
    for prefix, module in (("", block), (router_attr + ".", block.get_submodule(router_attr))):
        tensors = list(module.named_buffers()) + list(module.named_parameters())
        for name, tensor in tensors:
            full = prefix + name
            leaf = name.rsplit(".", 1)[-1]
            if prefix == "" and (name.startswith(router_attr + ".") or "." in name):
                continue  # the block's own tensors only; the router's are listed with its prefix
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            if isinstance(owner, torch.nn.Linear):
                continue  # a linear layer's own bias is part of the logits, not a selection bias
            if "bias" in leaf and tensor.numel() == width and full not in found:
                found.append(full)
    return tuple(found)


def find_structure(model: torch.nn.Module) -> Structure:
    """The :class:`Structure` of a transformers MoE model.

    Raises:
        DiscoveryError: when the model has no block with a router and an ``experts`` child, or
            its blocks disagree on their router attribute.
    """
    blocks = [(name, module, router_child(module)) for name, module in model.named_modules()]
    blocks = [(name, module, r) for name, module, r in blocks if r is not None]
    if not blocks:
        raise DiscoveryError(
            f"{type(model).__name__} has no MoE block that transformers' MoE convention describes (a module "
            "with a router child named 'gate'/'router' and an 'experts' child)")
    routers = {r for _, _, r in blocks}
    if len(routers) > 1:
        raise DiscoveryError(f"{type(model).__name__}'s MoE blocks name their router differently: {sorted(routers)}")
    blocks = _text_blocks(blocks)
    stacks: dict[str, str] = {}
    for name, _, _ in blocks:
        stack, attr = _split(name)
        if stacks.setdefault(stack, attr) != attr:
            raise DiscoveryError(f"MoE blocks of {stack!r} sit at different paths ({stacks[stack]!r}, {attr!r})")
    learned = [b for b in blocks if not is_hash_router(b[1].get_submodule(b[2]))]
    name, block, router_attr = (learned or blocks)[0]
    experts = block.get_submodule("experts")
    num_experts = expert_count(experts)
    router = block.get_submodule(router_attr)
    width = _router_width(router, num_experts)
    shared = tuple(n for n in SHARED_NAMES if isinstance(getattr(block, n, None), torch.nn.Module))
    return Structure(stacks=tuple(stacks), block_attrs=tuple(stacks.values()), router_attr=router_attr,
                     experts_attr="experts", num_experts=num_experts, shared_expert_attrs=shared,
                     bias_candidates=_bias_candidates(block, router_attr, width),
                     scale_tensors=tuple(f"{router_attr}.{n}" for n, t in list(router.named_parameters())
                                         + list(router.named_buffers())
                                         if "scale" in n.rsplit(".", 1)[-1] and t.numel() == width))


def _router_width(router: torch.nn.Module, num_experts: int) -> int:
    """Columns of the router's logits: the experts, plus any zero/null experts the router scores."""
    weight = getattr(router, "weight", None)
    if weight is None:
        weight = next((p for n, p in router.named_parameters() if n.endswith("weight") and p.dim() == 2), None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else num_experts


def _forward_params(module: torch.nn.Module) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return ()


def is_hash_router(router: torch.nn.Module) -> bool:
    """Whether a router picks experts by token id (DeepSeek-V4's first layers)."""
    return "input_ids" in _forward_params(router)


EXPERT_COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts", "num_experts_per_tok")


def config_mentions_experts(config, depth: int = 0) -> bool:
    """Whether a config (or a nested sub-config) declares routed experts: a cheap test made before
    loading any weights, so that a dense checkpoint is refused at once."""
    for name in EXPERT_COUNT_ATTRS:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return True
    ffn = getattr(config, "ffn_config", None)
    if ffn is not None and getattr(ffn, "moe_num_experts", None):
        return True
    from transformers import PretrainedConfig

    return depth < 2 and any(config_mentions_experts(v, depth + 1) for v in vars(config).values()
                             if isinstance(v, PretrainedConfig))
