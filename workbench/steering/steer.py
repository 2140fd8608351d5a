"""Steering: switch experts off or on while the model generates.

Experts are given as ``(layer, expert)`` pairs (what :meth:`ExpertContrast.top` returns) or as a
``{layer: [expert, ...]}`` mapping. ``"off"`` is :class:`workbench.Mask` with either semantics —
``mode="next_best"`` (the next-best expert takes the slot) or ``mode="empty"`` (the slot stays
empty, the other weights are rescaled). ``"on"`` is, by default, :class:`workbench.Offset`:
SteerMoE's score offset (the expert gets the token's best log-probability + 0.01, then the family's
own softmax -> top-k -> renormalise), so the weights stay those the family's rule gives; with a
``weight`` (or ``on_mechanism="force"``) it is :class:`workbench.Force` instead, which puts the
expert into the lowest slot with that weight and does not renormalise (the old default). At most
``k`` experts fit per layer; :func:`fit_to_k` keeps the best-ranked ones.

:func:`switch` activates some experts and deactivates others in one intervention (SteerMoE's
combined steering); :func:`random_switch` draws a control of the same counts.

Generation is greedy by default and batches prompts of equal token length, so no padding ever
enters a forward pass.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.steering import compare
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> table = compare(lm, ["The quick brown", "Der schnelle"], [(0, 1), (1, 2)], max_new_tokens=4)
    >>> list(table.columns)
    ['prompt', 'baseline', 'steered']
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

ACTIONS = ("off", "on")
ON_MECHANISMS = ("offset", "force")


def as_pairs(experts) -> list[tuple[int, int]]:
    """``(layer, expert)`` pairs from pairs or a ``{layer: [expert]}`` mapping (order kept)."""
    if isinstance(experts, Mapping):
        return [(int(layer), int(e)) for layer, es in experts.items()
                for e in (es if isinstance(es, Sequence) else [es])]
    pairs = []
    for item in experts:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise TypeError(f"expected (layer, expert) pairs or {{layer: [expert]}}, got item {item!r}")
        pairs.append((int(item[0]), int(item[1])))
    return pairs


def as_layer_map(experts) -> dict[int, list[int]]:
    """``{layer: [expert, ...]}`` from pairs or a mapping (no duplicates, order kept)."""
    out: dict[int, list[int]] = {}
    for layer, e in as_pairs(experts):
        if e not in out.setdefault(layer, []):
            out[layer].append(e)
    return out


def fit_to_k(experts, k: int) -> list[tuple[int, int]]:
    """Keep at most ``k`` experts per layer, the first ones given (i.e. the best-ranked)."""
    kept, per_layer = [], {}
    for layer, e in as_pairs(experts):
        if per_layer.get(layer, 0) < k:
            kept.append((layer, e))
            per_layer[layer] = per_layer.get(layer, 0) + 1
    return kept


def _check_fingerprint(lm, experts) -> None:
    ranked_on = getattr(experts, "fingerprint", None)
    if ranked_on is not None and ranked_on != lm.fingerprint:
        from workbench.trace import TraceMismatchError
        raise TraceMismatchError(f"these experts were ranked on another model (fingerprint {ranked_on}); this "
                                 f"model is {lm.fingerprint}: rank them again on it (steering.find_experts)")


def _check_fit(lm, layer_map, what: str) -> None:
    crowded = {layer: es for layer, es in layer_map.items() if len(es) > lm.top_k}
    if crowded:
        raise ValueError(f"cannot {what} {max(map(len, crowded.values()))} experts in k={lm.top_k} slots "
                         f"at layer(s) {sorted(crowded)}; keep the best-ranked with fit_to_k(experts, lm.top_k)")


def steering_specs(lm, experts, action: str = "off", mode: str = "next_best", weight: float | None = None,
                   on_mechanism: str | None = None):
    """The edit specs that steer ``experts``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        experts: ``(layer, expert)`` pairs or ``{layer: [expert]}``.
        action: ``"off"`` or ``"on"``.
        mode: for ``"off"``: ``"next_best"`` or ``"empty"``.
        weight: for ``"on"`` with ``"force"``: routing weight of a forced expert (None = the token's
            top-1 weight). Giving a weight chooses ``"force"``.
        on_mechanism: for ``"on"``: ``"offset"`` (:class:`workbench.Offset`, the default) or
            ``"force"`` (:class:`workbench.Force`: into a slot, no renormalisation); None =
            ``"force"`` when ``weight`` is given, else ``"offset"``.

    Returns:
        A list of specs for :func:`workbench.edit` (empty when ``experts`` is empty).
    """
    import workbench as wb

    if action not in ACTIONS:
        raise ValueError(f"action must be 'off' or 'on', got {action!r}")
    if on_mechanism is None:
        on_mechanism = "offset" if weight is None else "force"
    if on_mechanism not in ON_MECHANISMS:
        raise ValueError(f"on_mechanism must be one of {ON_MECHANISMS}, got {on_mechanism!r}")
    if on_mechanism == "offset" and weight is not None:
        raise ValueError("a weight applies only to on_mechanism='force'; the offset mechanism takes its weights "
                         "from the family's own normalisation (drop weight=, or use on_mechanism='force')")
    _check_fingerprint(lm, experts)
    layer_map = as_layer_map(experts)
    if not layer_map:
        return []
    if action == "off":
        return [wb.Mask(layer_map, mode=mode)]
    _check_fit(lm, layer_map, "force" if on_mechanism == "force" else "activate")
    if on_mechanism == "force":
        return [wb.Force(layer_map, weight=weight)]
    return [wb.Offset(on=layer_map)]


def switch_specs(lm, on=(), off=(), margin: float = 0.01):
    """The one :class:`workbench.Offset` that activates ``on`` and deactivates ``off`` (SteerMoE).

    Args:
        lm: a :class:`~workbench.loading.MoEModel`.
        on: ``(layer, expert)`` pairs (or ``{layer: [expert]}``) to activate, at most ``k`` per layer.
        off: pairs to deactivate.
        margin: the score offset beyond the token's extremes.

    Returns:
        ``[Offset]``, or ``[]`` when both are empty.
    """
    import workbench as wb

    _check_fingerprint(lm, on)
    _check_fingerprint(lm, off)
    on_map, off_map = as_layer_map(on), as_layer_map(off)
    both = sorted(set(as_pairs(on_map)) & set(as_pairs(off_map)))
    if both:
        raise ValueError(f"experts {both} are both to activate and to deactivate; give each one side")
    if not on_map and not off_map:
        return []
    _check_fit(lm, on_map, "activate")
    return [wb.Offset(on=on_map, off=off_map, margin=margin)]


@contextlib.contextmanager
def switch(lm, on=(), off=(), margin: float = 0.01):
    """Context manager: ``on`` activated and ``off`` deactivated in one intervention (SteerMoE).

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> from workbench.steering import switch
        >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
        >>> with switch(lm, on=[(0, 3)], off=[(0, 4), (1, 2)]):
        ...     trace = wb.record(lm, ["hello there"], progress=False)
        >>> bool((trace.topk_idx[0] == 3).any(axis=-1).all()), bool((trace.topk_idx[0] == 4).any())
        (True, False)
    """
    specs = switch_specs(lm, on, off, margin)
    if not specs:
        yield None
        return
    import workbench as wb

    with wb.edit(lm, *specs) as frame:
        yield frame


@contextlib.contextmanager
def steer(lm, experts, action: str = "off", mode: str = "next_best", weight: float | None = None,
          on_mechanism: str | None = None):
    """Context manager: the model with ``experts`` switched off or on (no-op when empty).

    Arguments as :func:`steering_specs`.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> from workbench.steering import steer
        >>> lm = wb.wrap(*tiny_model("mixtral"))
        >>> with steer(lm, [(0, 3)], "on", weight=0.5):
        ...     trace = wb.record(lm, ["hello"], progress=False)
        >>> bool((trace.topk_idx[0] == 3).any(axis=-1).all())
        True
    """
    specs = steering_specs(lm, experts, action, mode, weight, on_mechanism)
    if not specs:
        yield None
        return
    import workbench as wb

    with wb.edit(lm, *specs) as frame:
        yield frame


def _length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [ids[s:s + batch_size] for n in sorted(groups) for ids in [groups[n]]
            for s in range(0, len(ids), batch_size)]


@torch.no_grad()
def generate(lm, prompts: Sequence[str], max_new_tokens: int = 24, *, batch_size: int = 8,
             do_sample: bool = False, temperature: float = 1.0, seed: int = 0,
             add_special_tokens: bool = True, progress: bool = False, **hf_options) -> list[str]:
    """Continue each prompt; returns the continuations only (special tokens dropped).

    Active edits (e.g. inside :func:`steer`) apply. Greedy unless ``do_sample``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        prompts: the prompts.
        max_new_tokens: tokens to generate per prompt.
        batch_size: prompts per ``generate`` call (only prompts of equal length share a batch).
        do_sample, temperature, seed: sampling options (seeded per batch).
        add_special_tokens: let the tokenizer add e.g. BOS.
        progress: show a progress bar.
        **hf_options: passed to transformers' ``generate`` (e.g. ``repetition_penalty=1.3``).
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string (wrap it: [prompt])")
    encoded = [lm.tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"] for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} produced no tokens; give it some text")
        lm.check_context(len(ids), max_new_tokens, what=f"prompt {i}")
    pad = lm.tokenizer.pad_token_id
    pad = lm.tokenizer.eos_token_id if pad is None else pad
    out: list[str] = [""] * len(encoded)
    batches = _length_batches([len(x) for x in encoded], batch_size)
    for n, rows in enumerate(tqdm(batches, desc="generating", disable=not progress)):
        ids = torch.tensor([encoded[i] for i in rows], device=lm.device)
        if do_sample:
            torch.manual_seed(seed + n)
        options = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if do_sample else \
            dict(do_sample=False, temperature=None, top_k=None, top_p=None)
        result = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                   max_new_tokens=max_new_tokens, pad_token_id=pad, **options, **hf_options)
        for row, i in enumerate(rows):
            new = result[row, ids.shape[1]:].tolist()
            out[i] = lm.tokenizer.decode(new, skip_special_tokens=True)
    return out


def compare(lm, prompts: Sequence[str], experts, action: str = "off", mode: str = "next_best",
            weight: float | None = None, max_new_tokens: int = 24, on_mechanism: str | None = None,
            activate=None, **options) -> pd.DataFrame:
    """Continuations with and without steering, side by side.

    ``activate`` (pairs) switches to SteerMoE's combined steering: ``activate`` on and ``experts``
    off in one :func:`switch` (``action``, ``mode`` and ``weight`` are then not used).

    Returns:
        DataFrame with columns ``prompt``, ``baseline``, ``steered``.
    """
    prompts = list(prompts)
    base = generate(lm, prompts, max_new_tokens, **options)
    context = switch(lm, activate, experts) if activate is not None else \
        steer(lm, experts, action, mode, weight, on_mechanism)
    with context:
        steered = generate(lm, prompts, max_new_tokens, **options)
    return pd.DataFrame({"prompt": prompts, "baseline": base, "steered": steered})


def random_experts(lm, n: int, seed: int = 0, exclude=()) -> list[tuple[int, int]]:
    """``n`` distinct ``(layer, expert)`` pairs drawn uniformly from all MoE layers, minus ``exclude``."""
    excluded = set(as_pairs(exclude))
    pool = [(layer, e) for layer in lm.moe_layers for e in range(lm.num_experts) if (layer, e) not in excluded]
    if n > len(pool):
        raise ValueError(f"cannot draw {n} random experts from {len(pool)} candidates")
    picks = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(picks.tolist())]


def random_switch(lm, n_on: int, n_off: int, seed: int = 0, exclude=()) -> tuple[list, list]:
    """A control for :func:`switch`: ``n_on`` random experts to activate (at most ``k`` per layer)
    and ``n_off`` others to deactivate, drawn uniformly from all MoE layers minus ``exclude``.

    Returns:
        ``(on_pairs, off_pairs)``, disjoint.
    """
    excluded = set(as_pairs(exclude))
    pool = [(layer, e) for layer in lm.moe_layers for e in range(lm.num_experts) if (layer, e) not in excluded]
    if n_on + n_off > len(pool):
        raise ValueError(f"cannot draw {n_on} + {n_off} random experts from {len(pool)} candidates")
    order = np.random.default_rng(seed).permutation(len(pool)).tolist()
    on, per_layer = [], {}
    for i in order:
        if len(on) == n_on:
            break
        layer = pool[i][0]
        if per_layer.get(layer, 0) < lm.top_k:
            on.append(pool[i])
            per_layer[layer] = per_layer.get(layer, 0) + 1
    if len(on) < n_on:
        raise ValueError(f"cannot place {n_on} activated experts at k={lm.top_k} per layer in "
                         f"{len(lm.moe_layers)} layers")
    taken = set(on)
    off = [pool[i] for i in order if pool[i] not in taken][:n_off]
    return sorted(on), sorted(off)
