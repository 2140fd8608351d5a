"""What the workbench knows about an MoE family, as data, and the registry that holds it.

An :class:`Adapter` says where a family's MoE blocks are, which submodules are the router and the
experts, what the router call returns, and which :class:`~workbench.kernels.RoutingRule` it applies.
Supporting a new model whose routing follows a known rule takes one :func:`register` call.

Router return conventions (``router_io``):

* ``"logits_weights_indices"`` — ``router(x) -> (logits, top_k_weights, top_k_index)``
  (most families in transformers 5).
* ``"scores_logits"`` — ``router(x) -> (dense_scores [T, E], logits)``; unselected experts score 0
  (Llama-4).
* ``"logits_only"`` — ``router(x) -> logits``; the block picks the top-k itself and calls
  ``experts(x, top_k_index, top_k_weights)``; edits and recording use the experts call (DBRX).
* ``"jetmoe"`` — ``router(x) -> (sorted_positions, token_index, gates, expert_sizes, logits)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from workbench.kernels.rules import RoutingRule

ROUTER_IO = ("logits_weights_indices", "scores_logits", "logits_only", "jetmoe")


@dataclass(frozen=True)
class Adapter:
    """One MoE family.

    Attributes:
        name: short family name (``"mixtral"``).
        model_types: ``config.model_type`` values served by this adapter.
        rule: ``config -> RoutingRule``.
        num_experts: ``config -> E`` (routed experts).
        top_k: ``config -> k``.
        layers_path: dotted path from the CausalLM to the decoder layers.
        block_attr: attribute of a decoder layer that holds its MoE block.
        router_attr: attribute of the block that is the router (dotted allowed).
        experts_attr: attribute of the block that holds the experts.
        router_io: what the router returns, one of :data:`ROUTER_IO`.
        router_output: what the router's logits are: raw ``"logits"`` for every family so far.
        selection_bias_attr: router attribute holding a per-expert selection bias, if any.
        shared_expert_attrs: block attributes of shared (always-on) experts.
        text_config: ``config -> config`` for composite configs (Llama-4).
        notes: a sentence on anything a user should know.
    """

    name: str
    model_types: tuple[str, ...]
    rule: Callable[[object], RoutingRule]
    num_experts: Callable[[object], int]
    top_k: Callable[[object], int]
    layers_path: str = "model.layers"
    block_attr: str = "mlp"
    router_attr: str = "gate"
    experts_attr: str = "experts"
    router_io: str = "logits_weights_indices"
    router_output: str = "logits"
    selection_bias_attr: str | None = None
    shared_expert_attrs: tuple[str, ...] = ()
    text_config: Callable[[object], object] = field(default=lambda config: config)
    notes: str = ""

    def __post_init__(self) -> None:
        if self.router_io not in ROUTER_IO:
            raise ValueError(f"router_io must be one of {ROUTER_IO}, got {self.router_io!r}")

    # -- locating modules -------------------------------------------------------------------
    def decoder_layers(self, model: torch.nn.Module):
        """The model's decoder layers (a ModuleList)."""
        return _get(model, self.layers_path)

    def block(self, layer: torch.nn.Module) -> torch.nn.Module | None:
        return _get(layer, self.block_attr, default=None)

    def is_moe_block(self, block: torch.nn.Module | None) -> bool:
        return block is not None and _get(block, self.router_attr, default=None) is not None

    def moe_layers(self, model: torch.nn.Module) -> list[int]:
        """Indices of the decoder layers whose block is an MoE block."""
        return [i for i, layer in enumerate(self.decoder_layers(model)) if self.is_moe_block(self.block(layer))]

    def router(self, block: torch.nn.Module) -> torch.nn.Module:
        return _get(block, self.router_attr)

    def experts(self, block: torch.nn.Module) -> torch.nn.Module:
        return _get(block, self.experts_attr)

    def selection_bias(self, block: torch.nn.Module) -> torch.Tensor | None:
        if self.selection_bias_attr is None:
            return None
        return _get(self.router(block), self.selection_bias_attr, default=None)

    def shared_experts(self, block: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in (_get(block, a, default=None) for a in self.shared_expert_attrs) if m is not None]

    def describe(self, config) -> str:
        cfg = self.text_config(config)
        return (f"{self.name}: E={self.num_experts(cfg)}, k={self.top_k(cfg)}, "
                f"rule: {self.rule(cfg).describe()}")


def _get(obj, dotted: str, default=...):
    for part in dotted.split("."):
        if part.isdigit():
            obj = obj[int(part)]
            continue
        if not hasattr(obj, part):
            if default is ...:
                raise AttributeError(f"{type(obj).__name__} has no attribute {part!r} (path {dotted!r})")
            return default
        obj = getattr(obj, part)
    return obj


_REGISTRY: dict[str, Adapter] = {}


def register(adapter: Adapter, *, replace: bool = False) -> Adapter:
    """Add an adapter to the registry under each of its ``model_types``.

    Example:
        >>> from workbench.adapters import register, get_adapter, Adapter
        >>> from workbench.kernels import RoutingRule
        >>> mine = Adapter("my-moe", ("my_moe",), rule=lambda c: RoutingRule("softmax", renormalize=True),
        ...                num_experts=lambda c: c.num_local_experts, top_k=lambda c: c.num_experts_per_tok)
        >>> _ = register(mine)
        >>> get_adapter("my_moe").name
        'my-moe'
        >>> unregister("my_moe")
    """
    for mt in adapter.model_types:
        if mt in _REGISTRY and not replace:
            raise ValueError(f"model_type {mt!r} is already served by adapter {_REGISTRY[mt].name!r}; "
                             "pass replace=True to override it")
        _REGISTRY[mt] = adapter
    return adapter


def unregister(model_type: str) -> None:
    """Remove a model type from the registry."""
    _REGISTRY.pop(model_type, None)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` the workbench knows, sorted."""
    return sorted(_REGISTRY)


class UnsupportedModelError(ValueError):
    """The model is not an MoE the workbench knows."""


def get_adapter(model_type_or_config) -> Adapter:
    """The adapter for a ``config.model_type`` (or a config object).

    Raises:
        UnsupportedModelError: for an unknown family, listing the supported ones.
    """
    model_type = getattr(model_type_or_config, "model_type", model_type_or_config)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    raise UnsupportedModelError(
        f"no MoE adapter for model_type {model_type!r}. Supported model types: "
        f"{', '.join(supported_model_types())}. If the model is an MoE whose routing follows one of "
        "these rules, register an Adapter for it (see workbench.adapters.register)."
    )
