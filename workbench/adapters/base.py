"""What the workbench knows about an MoE family, as data, and the registry that holds it.

An :class:`Adapter` says where a family's MoE blocks are, which submodules are the router and the
experts, what the router call returns, and which :class:`~workbench.kernels.RoutingRule` it applies.
Supporting a new model whose routing follows a known rule takes one :func:`register` call.

Router return conventions (``router_io``):

* ``"logits_weights_indices"`` — ``router(x) -> (logits, top_k_weights, top_k_index)``
  (most families in transformers 5).
* ``"scores_logits"`` — ``router(x) -> (dense_scores [T, E], logits)``; unselected experts score 0
  (Llama-4).
* ``"experts_call"`` — ``router(x) -> logits`` (or a tuple whose first item is the logits); the
  routing is read and replaced where the block calls ``experts(x, top_k_index, top_k_weights)``, so
  the trace holds exactly what the experts received (DBRX, whose block picks the top-k itself, and
  every adapter identified by :mod:`workbench.adapters.identify`).
* ``"switch"`` — ``router(x) -> (one-hot dispatch mask [B, S, E], top-1 probability, logits)``;
  the block calls ``experts(x, mask [T, k, E], w [T, k])``; read and replaced at that call
  (Switch Transformers).
* ``"jetmoe"`` — ``router(x) -> (sorted_positions, token_index, gates, expert_sizes, logits)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from workbench.kernels.rules import RoutingRule

ROUTER_IO = ("logits_weights_indices", "scores_logits", "experts_call", "jetmoe", "switch")


@dataclass(frozen=True)
class Adapter:
    """One MoE family.

    Attributes:
        name: short family name (``"mixtral"``).
        model_types: ``config.model_type`` values served by this adapter.
        rule: ``config -> RoutingRule``.
        num_experts: ``config -> E`` (routed experts).
        top_k: ``config -> k``.
        layers_path: dotted path from the CausalLM to the decoder layers; a tuple of paths for
            models with several stacks (an encoder and a decoder), numbered one after the other.
        block_attr: attribute of a decoder layer that holds its MoE block (one per stack).
        router_attr: attribute of the block that is the router (dotted allowed).
        experts_attr: attribute of the block that holds the experts.
        router_io: what the router returns, one of :data:`ROUTER_IO`.
        router_output: the unit of the router's scores that a trace's ``scores`` hold: raw
            ``"logits"``, or ``"probabilities"`` for routers that return them (Gemma-4 style).
        selection_bias_attr: block-relative path of a per-expert selection bias, if any
            (``"gate.e_score_correction_bias"``).
        shared_expert_attrs: block attributes of shared (always-on) experts.
        text_config: ``config -> config`` for composite configs (Llama-4).
        notes: a sentence on anything a user should know.
        origin: ``"registered"`` (a family file) or ``"identified"`` (discovered from the module
            tree, the rule identified on the router itself; see :mod:`workbench.adapters.identify`).
    """

    name: str
    model_types: tuple[str, ...]
    rule: Callable[[object], RoutingRule]
    num_experts: Callable[[object], int]
    top_k: Callable[[object], int]
    layers_path: str | tuple[str, ...] = "model.layers"
    block_attr: str | tuple[str, ...] = "mlp"
    router_attr: str = "gate"
    experts_attr: str = "experts"
    router_io: str = "logits_weights_indices"
    router_output: str = "logits"
    selection_bias_attr: str | None = None
    shared_expert_attrs: tuple[str, ...] = ()
    text_config: Callable[[object], object] = field(default=lambda config: config)
    notes: str = ""
    origin: str = "registered"

    def __post_init__(self) -> None:
        if self.router_io not in ROUTER_IO:
            raise ValueError(f"router_io must be one of {ROUTER_IO}, got {self.router_io!r}")

    # -- locating modules -------------------------------------------------------------------
    @property
    def stacks(self) -> tuple[tuple[str, str], ...]:
        """``(layers path, block attribute)`` of each layer stack, in order."""
        paths = (self.layers_path,) if isinstance(self.layers_path, str) else tuple(self.layers_path)
        attrs = (self.block_attr,) * len(paths) if isinstance(self.block_attr, str) else tuple(self.block_attr)
        return tuple(zip(paths, attrs))

    def decoder_layers(self, model: torch.nn.Module):
        """The model's layers (a ModuleList; the stacks one after the other for several stacks)."""
        if isinstance(self.layers_path, str):
            return _get(model, self.layers_path)
        return [layer for path, _ in self.stacks for layer in _get(model, path)]

    def layer_names(self, model: torch.nn.Module) -> list[str]:
        """A name per layer: ``"3"``, or ``"encoder.3"`` / ``"decoder.0"`` for several stacks."""
        if isinstance(self.layers_path, str):
            return [str(i) for i in range(len(self.decoder_layers(model)))]
        return [f"{path.split('.')[0]}.{i}" for path, _ in self.stacks for i in range(len(_get(model, path)))]

    def block(self, layer: torch.nn.Module) -> torch.nn.Module | None:
        found = [_get(layer, attr, default=None) for attr in dict.fromkeys(a for _, a in self.stacks)]
        found = [b for b in found if b is not None]
        return next((b for b in found if self.is_moe_block(b)), found[0] if found else None)

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
        bias = _get(block, self.selection_bias_attr, default=None)
        return bias.reshape(-1) if isinstance(bias, torch.Tensor) else None

    def shared_experts(self, block: torch.nn.Module) -> list[torch.nn.Module]:
        return [m for m in (_get(block, a, default=None) for a in self.shared_expert_attrs) if m is not None]

    def describe(self, config) -> str:
        cfg = self.text_config(config)
        return (f"{self.name}: E={self.num_experts(cfg)}, k={self.top_k(cfg)}, "
                f"rule: {self.rule(cfg).describe()}")


def _get(obj, dotted: str, default=...):
    if dotted == "":  # the block is the decoder layer itself (Gemma-4)
        return obj
    for part in dotted.split("."):
        if part.isdigit():
            try:
                obj = obj[int(part)]
            except (IndexError, TypeError, KeyError):
                if default is ...:
                    raise
                return default
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


def registered_model_types() -> list[str]:
    """The ``config.model_type`` values served by an adapter file, sorted."""
    return sorted(_REGISTRY)


def supported_model_types() -> list[str]:
    """Every ``config.model_type`` the workbench records and edits exactly, sorted: the registered
    ones and those the coverage matrix (``python -m workbench families``) verified on the
    installed transformers' own configs."""
    from workbench.families.matrix import verified_model_types

    return sorted(set(_REGISTRY) | set(verified_model_types()))


class UnsupportedModelError(ValueError):
    """The model is not an MoE the workbench knows."""


def get_adapter(model_type_or_config) -> Adapter:
    """The registered adapter (a family file) for a ``config.model_type`` (or a config object).

    Models without one are served by :func:`adapter_for`, which identifies them.

    Raises:
        UnsupportedModelError: for a type without an adapter file, listing the supported ones.
    """
    model_type = getattr(model_type_or_config, "model_type", model_type_or_config)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    raise UnsupportedModelError(
        f"no adapter file for model_type {model_type!r}; wrap the model itself (wb.wrap / wb.load) to have "
        f"its routing identified. Supported model types: {', '.join(supported_model_types())}. A family "
        "that discovery cannot read can register an Adapter (see workbench.adapters.register)."
    )


def adapter_for(model: torch.nn.Module) -> Adapter:
    """The adapter of a loaded model: its family file when one is registered, else the adapter
    identified from its module tree and its own router (:func:`workbench.adapters.identify.identify`).

    Raises:
        UnsupportedModelError: for a dense model, or an MoE whose blocks or routing rule cannot be
            identified; the message says what was tried and lists the supported types.
    """
    from workbench.adapters.discover import DiscoveryError
    from workbench.adapters.identify import identify

    model_type = model.config.model_type
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    try:
        return identify(model)
    except DiscoveryError as err:
        raise UnsupportedModelError(
            f"{type(model).__name__} ({model_type}) is not an MoE the workbench can route: {err}. "
            f"Supported model types: {', '.join(supported_model_types())}.") from None
