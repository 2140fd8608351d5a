"""The routing of one engine router call under edits, for token batches flattened across requests.

A serving engine runs the tokens of many requests in one flat ``[T, E]`` batch of router logits,
each request a contiguous segment of its own length. :func:`engine_decide` is the engine-side
counterpart of :meth:`workbench.probes.hooks.ProbeManager.decide`: the same specs build the same
:class:`~workbench.kernels.routing.RoutingPlan` and the same family rule routes the logits
(:func:`~workbench.kernels.routing.apply_plan`); a spec with ``rows=`` applies to the tokens whose
request was given that row (the prompt's index in its ``generate`` / ``record`` call).

Example:
    >>> import torch
    >>> import workbench as wb
    >>> from workbench.engine.decide import RoutingFacts, engine_decide
    >>> from workbench.kernels import RoutingRule
    >>> from workbench.probes.seams import native_decision
    >>> facts = RoutingFacts(num_experts=4, top_k=2, rule=RoutingRule("softmax", renormalize=True),
    ...                      moe_layers=(0,), hash_layers=())
    >>> logits = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    >>> native = native_decision(torch.tensor([[0, 1], [3, 2]]), torch.tensor([[.7, .3], [.7, .3]]))
    >>> d, changed = engine_decide(facts, [(wb.Mask({0: [0]}, rows=[1]),)], 0, logits, native,
    ...                            rows=torch.tensor([0, 1]))
    >>> d.idx.tolist(), changed
    ([[0, 1], [3, 2]], True)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.kernels.routing import Decision, RoutingPlan, apply_plan
from workbench.kernels.rules import RoutingRule
from workbench.probes.hooks import _merge  # the hook manager's merge of per-group decisions


@dataclass(frozen=True)
class RoutingFacts:
    """What edit specs read of a model (``spec.validate`` / ``spec.update``), without the model.

    Attributes:
        num_experts: experts the router scores, ``E``.
        top_k: experts per token, ``k``.
        rule: the family's routing rule.
        moe_layers: decoder-layer indices of the MoE blocks.
        hash_layers: MoE layers routed by token id (never edited).
        num_routed_experts: experts that compute (null experts above); defaults to ``E``.
    """

    num_experts: int
    top_k: int
    rule: RoutingRule
    moe_layers: tuple
    hash_layers: tuple = ()
    num_routed_experts: int | None = None

    def selection_bias(self, layer: int):  # the engine passes its own bias tensor to engine_decide
        return None


def plan_for(facts: RoutingFacts, specs, layer: int) -> RoutingPlan:
    """The plan of ``specs`` (in order) for ``layer``, as the hook manager builds it."""
    plan = RoutingPlan(k=facts.top_k)
    for spec in specs:
        plan = spec.update(plan, layer, facts)
    return plan


def active_specs(facts: RoutingFacts, frames, layer: int) -> list:
    """The specs of ``frames`` (each a tuple of specs, outer first) that apply to ``layer``."""
    if layer in facts.hash_layers:
        return []
    return [s for specs in frames for s in specs if s.applies_to(layer)]


def engine_decide(facts: RoutingFacts, frames, layer: int, logits: torch.Tensor, native: Decision, *,
                  rows: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                  positions: torch.Tensor | None = None) -> tuple[Decision, bool]:
    """The routing of ``[T, E]`` ``logits`` under the edit ``frames``; ``changed`` False = native.

    Args:
        facts: the model's :class:`RoutingFacts`.
        frames: edit frames in force, each a tuple of specs (outer first).
        layer: the decoder layer.
        logits: ``[T, E]`` router logits of the call.
        native: the engine's own routing of these tokens.
        rows: ``[T]`` int, the row (prompt index) of each token's request, ``-1`` for tokens of
            requests without one; needed only by specs with ``rows=``.
        bias: the layer's ``[E]`` selection bias (sigmoid families), else None.
        positions: ``[T]`` int positions of the tokens in their sequences (for ``mode="random"``).

    Returns:
        ``(decision, changed)``.
    """
    specs = active_specs(facts, frames, layer)
    if not specs:
        return native, False
    if all(s.rows is None for s in specs):
        return apply_plan(logits, facts.rule, plan_for(facts, specs, layer), bias, positions), True
    if rows is None:
        raise ValueError("an edit with rows= needs the row of every token's request")
    groups: dict[tuple, list[int]] = {}
    for row in torch.unique(rows).tolist():
        key = tuple(i for i, s in enumerate(specs) if s.rows is None or row in s.rows)
        groups.setdefault(key, []).append(row)
    if len(groups) == 1 and not next(iter(groups)):
        return native, False
    parts = []
    for key, members in groups.items():
        mask = torch.isin(rows, torch.tensor(members, device=rows.device)).to(logits.device)
        if key:
            part = apply_plan(logits[mask], facts.rule, plan_for(facts, [specs[i] for i in key], layer), bias,
                              None if positions is None else positions[mask])
        else:
            part = Decision(native.idx[mask], native.w[mask], native.valid[mask])
        parts.append((mask, part))
    return _merge(parts, logits.shape[0]), True
