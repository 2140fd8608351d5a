"""Identifying a model's routing rule on its own router, for MoE families without an adapter file.

:func:`identify` finds the MoE blocks (:func:`~workbench.adapters.discover.find_structure`), then runs
the model on a few random token ids three times — as it is, and twice with every candidate
selection-bias tensor replaced by random values (so a bias that is still zero in a fresh model shows
up) — and records, per MoE layer, the router's logits and the ``(idx, w)`` the experts received.
Every :class:`~workbench.kernels.RoutingRule` of a small grammar (softmax / sigmoid /
sqrt-softplus / top-k-then-softmax / top-k-then-sigmoid / probabilities / sparsemixer; with or
without each bias candidate; renormalised or not; expert groups from the router's own attributes)
is applied to the logits; a constant ratio between the model's weights and the rule's is taken as
the scaling factor. The first rule (simplest first) that reproduces every layer's indices exactly
and weights bit for bit is kept; a rule equal only to float rounding (≤ 1e-6 relative) is kept when
none is exact, and says so. Biases are restored exactly afterwards, whatever happens.

The result is an :class:`~workbench.adapters.Adapter` with ``origin="identified"``, cached per model
type and config, so identification runs once and adds nothing to later forward passes. Routing is
read and replaced at the experts call (``router_io="experts_call"``), or at the router's output
(``"logits_weights_indices"``) when the block changes the routing between the two (LongCat-Flash's
zero experts) and the router's own ``(logits, weights, indices)`` follow a rule.

Example:
    >>> from workbench.testing import tiny_model
    >>> from workbench.adapters.identify import identify
    >>> model, _ = tiny_model("qwen3_moe")
    >>> identify(model).rule(model.config).describe()
    'softmax -> top-k -> renormalise'
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from workbench.adapters.base import Adapter
from workbench.adapters.discover import DiscoveryError, Structure, _router_width, find_structure, is_hash_router
from workbench.kernels.routing import route
from workbench.kernels.rules import RoutingRule
from workbench.probes import seams

PROBE_SHAPE = (2, 24)
SCORING_ORDER = ("softmax", "sigmoid", "topk_softmax", "topk_sigmoid", "sqrtsoftplus", "probabilities")
GROUP_ATTRS = (("n_group", "num_group", "num_expert_group"), ("topk_group",))
EXPERT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOP_K_ATTRS = ("num_experts_per_tok", "moe_top_k", "top_k", "moe_k", "num_selected_experts")
JITTER_ATTRS = ("jitter_noise", "router_jitter_noise", "input_jitter_noise")
_CACHE: dict[str, Adapter] = {}


class IdentificationError(DiscoveryError):
    """No routing rule of the grammar reproduces the model's router."""


@dataclass
class LayerSample:
    """One MoE layer's router call during a probe pass: logits ``[T, E']``, and the ``[T, k]``
    indices and weights its experts received; ``bias`` maps bias candidates to their values."""

    layer: int
    logits: torch.Tensor
    idx: torch.Tensor
    w: torch.Tensor
    bias: dict
    router_idx: torch.Tensor | None = None
    router_w: torch.Tensor | None = None

    def at_router(self) -> "LayerSample":
        """This sample with the ``(idx, w)`` the router returned in place of the experts call's."""
        return LayerSample(self.layer, self.logits, self.router_idx, self.router_w, self.bias)


def identify(model: torch.nn.Module, *, use_cache: bool = True) -> Adapter:
    """The identified :class:`~workbench.adapters.Adapter` of a transformers MoE model.

    Raises:
        DiscoveryError: the model has no MoE block of the transformers convention.
        IdentificationError: no rule of the grammar reproduces its router (the message lists
            what was tried and how close the best candidate came).
    """
    key = cache_key(model)
    if use_cache and key in _CACHE:
        return _CACHE[key]
    structure = find_structure(model)
    samples, hashed, k = probe(model, structure)
    learned = [s for s in samples if s.layer not in hashed]
    if not learned:
        raise IdentificationError(f"every MoE layer of {type(model).__name__} routes by token id; nothing to identify")
    constants = _router_constants(model, structure)
    router_io = "experts_call"
    try:
        rule, bias_attr, how = _search(learned, k, constants)
    except IdentificationError:
        # a block may change the routing between its router and its experts (LongCat-Flash sends
        # its zero experts' slots to the experts with weight 0 and adds them itself): identify the
        # router's own (logits, weights, indices) and read and replace the routing there
        if not all(s.router_idx is not None for s in learned):
            raise
        rule, bias_attr, how = _search([s.at_router() for s in learned], k, constants)
        router_io = "logits_weights_indices"
        how += "; read at the router's output (the block changes the routing before its experts call)"
    config = model.config
    width = int(learned[0].logits.shape[1])
    notes = [how]
    if width > structure.num_experts:
        notes.append(f"experts {structure.num_experts}..{width - 1} are zero/null experts (their own id range)")
    if hashed:
        notes.append(f"{len(hashed)} layer(s) route by token id (hash routing): recorded, not editable")
    adapter = Adapter(
        name=config.model_type, model_types=(config.model_type,), rule=lambda c, r=rule: r,
        num_experts=_from_config(config, EXPERT_ATTRS, width), top_k=_from_config(config, TOP_K_ATTRS, k),
        layers_path=_one(structure.stacks),
        block_attr=_one(structure.block_attrs), router_attr=structure.router_attr,
        experts_attr=structure.experts_attr, router_io=router_io, selection_bias_attr=bias_attr,
        shared_expert_attrs=structure.shared_expert_attrs, text_config=lambda c: c.get_text_config(),
        router_output="probabilities" if rule.scoring == "probabilities" else "logits",
        notes="; ".join(notes), origin="identified")
    _CACHE[key] = adapter
    return adapter


def _from_config(config, names: tuple[str, ...], value: int):
    """``config -> value``: read from the config attribute that holds ``value`` (so a pruned config
    with fewer experts reads its own count), or the constant when no attribute does."""
    text = config.get_text_config()
    for name in names:
        if getattr(text, name, None) == value:
            return lambda c, name=name, value=value: int(getattr(c, name, value))
    return lambda c, value=value: value


def _one(values: tuple[str, ...]):
    return values[0] if len(values) == 1 else values


def cache_key(model: torch.nn.Module) -> str:
    """Model type, router class and a hash of the config: one identification per distinct routing."""
    config = model.config.to_dict()
    for noise in ("_name_or_path", "transformers_version", "dtype", "torch_dtype", "architectures",
                  "_attn_implementation", "_experts_implementation", "use_cache", "output_router_logits"):
        config.pop(noise, None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{model.config.model_type}:{type(model).__name__}:{digest}"


# -- probing ----------------------------------------------------------------------------------
def probe_inputs(model: torch.nn.Module, shape=PROBE_SHAPE, seed: int = 0) -> dict:
    """Random token ids for a forward pass (avoiding special and multimodal token ids)."""
    config = model.config
    vocab = int(config.get_text_config().vocab_size)
    special = set()
    for cfg in (config, config.get_text_config()):
        for name, value in vars(cfg).items():
            if name.endswith(("_token_id", "_token_index", "_id")) and isinstance(value, int):
                special.add(value)
    allowed = torch.tensor([t for t in range(3, min(vocab, 4096)) if t not in special])
    g = torch.Generator().manual_seed(seed)
    ids = allowed[torch.randint(len(allowed), shape, generator=g)]
    device = model.get_input_embeddings().weight.device
    inputs = {"input_ids": ids.to(device)}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids[:, : max(2, shape[1] // 2)].to(device)
    return inputs


def _moe_blocks(model: torch.nn.Module, structure: Structure) -> list[torch.nn.Module]:
    blocks = []
    for path, attr in zip(structure.stacks, structure.block_attrs):
        for layer in model.get_submodule(path):
            block = _get_or_none(layer, attr)
            blocks.append(block if block is not None and hasattr(block, structure.router_attr) else None)
    return blocks


def _get_or_none(module: torch.nn.Module, path: str):
    try:
        return module.get_submodule(path)
    except AttributeError:
        return None


def probe(model: torch.nn.Module, structure: Structure):
    """Three forward passes with recording hooks; returns ``(samples, hash layers, k)``.

    Pass 0 runs the model as it is; passes 1 and 2 first fill each bias candidate with random
    values (0.5 and 5 times a standard normal). Every tensor changed is restored exactly.
    """
    blocks = _moe_blocks(model, structure)
    layers = [i for i, b in enumerate(blocks) if b is not None]
    hashed = {i for i in layers if is_hash_router(blocks[i].get_submodule(structure.router_attr))}
    originals = {(i, name): blocks[i].get_submodule(name.rsplit(".", 1)[0]) if "." in name else blocks[i]
                 for i in layers if i not in hashed
                 for name in structure.bias_candidates + structure.scale_tensors}
    saved = {key: getattr(module, key[1].rsplit(".", 1)[-1]).detach().clone() for key, module in originals.items()}
    samples: list[LayerSample] = []
    g = torch.Generator().manual_seed(1234)
    was_training = model.training
    model.eval()
    try:
        for scale in (0.0, 0.5, 5.0):
            for (i, name), module in originals.items():
                tensor = getattr(module, name.rsplit(".", 1)[-1])
                with torch.no_grad():
                    noise = torch.randn(tensor.shape, generator=g) * scale
                    tensor.copy_(saved[(i, name)] + noise.to(tensor.device, tensor.dtype) if scale else saved[(i, name)])
            samples += _one_pass(model, structure, blocks, layers)
        base_k = {tuple(s.idx.shape[1:]) for s in samples}
        samples += _wider_pass(model, structure, blocks, layers)
    finally:
        with torch.no_grad():
            for key, module in originals.items():
                getattr(module, key[1].rsplit(".", 1)[-1]).copy_(saved[key])
        model.train(was_training)
    if not samples:
        raise DiscoveryError(f"the probe forward pass of {type(model).__name__} never called an MoE block's experts")
    if len(base_k) != 1:
        raise IdentificationError(f"MoE layers disagree on top-k: {sorted(base_k)}")
    return samples, hashed, int(samples[0].idx.shape[1])


def _wider_pass(model, structure: Structure, blocks, layers) -> list[LayerSample]:
    """One more pass with every router's ``top_k`` attribute doubled (where it has one): more
    slots tell apart rules that agree on the top few (expert groups, renormalisation)."""
    routers = [blocks[i].get_submodule(structure.router_attr) for i in layers]
    if not all(isinstance(getattr(r, "top_k", None), int) for r in routers):
        return []
    saved = [r.top_k for r in routers]
    try:
        for r in routers:
            r.top_k = min(2 * r.top_k, _router_width(r, structure.num_experts) // 2 or r.top_k)
        return _one_pass(model, structure, blocks, layers)
    except Exception:  # a block that cannot run other top-k: identify on the native passes only
        return []
    finally:
        for r, k in zip(routers, saved):
            r.top_k = k


def _one_pass(model, structure: Structure, blocks, layers) -> list[LayerSample]:
    got: dict[int, dict] = {}
    handles = []
    for i in layers:
        def on_router(module, args, out, i=i):
            logits = out[0] if isinstance(out, (tuple, list)) else out
            entry = got.setdefault(i, {})
            entry["logits"] = logits.detach().reshape(-1, logits.shape[-1]).float()
            if _is_weights_indices(out):
                entry["router"] = (out[2].detach().long(), out[1].detach())

        def on_experts(module, args, kwargs, i=i):
            got.setdefault(i, {})["call"] = list(seams.experts_call_args(args, kwargs))
        block = blocks[i]
        handles.append(block.get_submodule(structure.router_attr).register_forward_hook(on_router))
        handles.append(block.get_submodule(structure.experts_attr).register_forward_pre_hook(on_experts, with_kwargs=True))
    try:
        with torch.no_grad():
            model(**probe_inputs(model))
    finally:
        for h in handles:
            h.remove()
    samples = []
    for i, entry in sorted(got.items()):
        x, idx, w = (entry.get("call") or [None] * 3)
        if not (isinstance(idx, torch.Tensor) and isinstance(w, torch.Tensor) and idx.dim() == 2
                and not idx.is_floating_point() and w.shape == idx.shape and "logits" in entry):
            raise DiscoveryError(
                f"layer {i}: the experts are not called as experts(x, top_k_index [T, k], top_k_weights [T, k]) "
                f"(got {_describe(entry.get('call'))}); this block needs an adapter file")
        bias = {} if is_hash_router(blocks[i].get_submodule(structure.router_attr)) else \
            {name: _bias_value(blocks[i], name) for name in structure.bias_candidates}
        router_idx, router_w = entry.get("router", (None, None))
        samples.append(LayerSample(i, entry["logits"], idx.detach().long(), w.detach(), bias, router_idx, router_w))
    return samples


def _is_weights_indices(out) -> bool:
    """Whether a router returned ``(logits [T, E'], weights [T, k], indices [T, k], ...)``."""
    if not (isinstance(out, (tuple, list)) and len(out) >= 3
            and all(isinstance(t, torch.Tensor) for t in out[:3])):
        return False
    logits, w, idx = out[0], out[1], out[2]
    return (w.dim() == 2 and w.shape == idx.shape and w.is_floating_point() and not idx.is_floating_point()
            and logits.reshape(-1, logits.shape[-1]).shape[0] == idx.shape[0])


def _bias_value(block, name: str) -> torch.Tensor:
    return _tensor_at(block, name).detach().reshape(-1).float().clone()


def _tensor_at(module: torch.nn.Module, name: str) -> torch.Tensor:
    owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
    return getattr(owner, name.rsplit(".", 1)[-1])


def _describe(values) -> str:
    if values is None:
        return "no call"
    return ", ".join(f"{tuple(v.shape)} {v.dtype}" if isinstance(v, torch.Tensor) else type(v).__name__ for v in values)


# -- the search -------------------------------------------------------------------------------
def _router_constants(model, structure: Structure) -> dict:
    """Group sizes, jitter and float constants a router carries (the first MoE block's)."""
    block = next(b for b in _moe_blocks(model, structure) if b is not None)
    router = block.get_submodule(structure.router_attr)
    sources = [router, model.config.get_text_config()]
    found: dict = {"floats": set()}
    for source in sources:
        for names, key in ((GROUP_ATTRS[0], "n_group"), (GROUP_ATTRS[1], "topk_group"), (JITTER_ATTRS, "jitter")):
            for name in names:
                value = getattr(source, name, None)
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in found:
                    found[key] = value
        for name, value in vars(source).items():
            if isinstance(value, float) and value > 0:
                found["floats"].add(value)
    found["scales"] = [n for n, t in list(router.named_parameters()) + list(router.named_buffers())
                       if "scale" in n.rsplit(".", 1)[-1] and t.dim() == 1 and t.numel() > 1]
    return found


def _candidates(constants: dict, biases: tuple[str, ...]):
    groups = [(1, 1, "max")]
    n, t = constants.get("n_group"), constants.get("topk_group")
    if isinstance(n, int) and isinstance(t, int) and n > 1:
        groups += [(n, t, "max"), (n, t, "top2sum")]
    eps_values = (0.0,) + tuple(sorted({1e-6} | {v for v in constants["floats"] if v < 1e-3}))
    for scoring in SCORING_ORDER:
        for bias in (None,) + biases:
            for renormalize, eps in [(False, 0.0)] + [(True, e) for e in eps_values]:
                for n_group, topk_group, group_score in groups:
                    yield RoutingRule(scoring, renormalize=renormalize, renorm_eps=eps, n_group=n_group,
                                      topk_group=topk_group, group_score=group_score, biased=bias is not None), bias
    if "jitter" in constants:
        yield RoutingRule("sparsemixer", jitter_eps=float(constants["jitter"])), None


def _compare(rule: RoutingRule, samples, k: int, bias_attr):
    """``(ids match, [(model weights, rule weights)] per sample)``; slots sorted by expert id."""
    pairs = []
    for s in samples:
        bias = s.bias[bias_attr] if bias_attr else None
        if bias is not None and bias.numel() != s.logits.shape[1]:
            return False, None
        if rule.n_group > 1 and s.logits.shape[1] % rule.n_group:
            return False, None
        d = route(s.logits, rule, s.idx.shape[1], bias)
        model_sorted, order_m = torch.sort(s.idx, dim=1)
        ours_sorted, order_o = torch.sort(d.idx, dim=1)
        if not torch.equal(model_sorted, ours_sorted):
            return False, None
        w_model = s.w.float().gather(1, order_m)
        w_ours = d.w.to(s.w.dtype).float().gather(1, order_o)
        pairs.append((w_model, w_ours))
    return True, pairs


def _search(samples, k: int, constants: dict):
    """The first exact rule (simplest first); else the first equal to float rounding."""
    tried, near, close = 0, None, None
    biases = tuple(samples[0].bias)
    tokens = sum(s.idx.shape[0] for s in samples)
    for rule, bias_attr in _candidates(constants, biases):
        tried += 1
        ok, pairs = _compare(rule, samples, k, bias_attr)
        if not ok:
            continue
        # the scaling comes from the native top-k; the wider pass must agree up to a constant of its
        # own (a router may divide by its top_k, which the wider pass changed)
        native = [p for p, s in zip(pairs, samples) if s.idx.shape[1] == k]
        wider = [p for p, s in zip(pairs, samples) if s.idx.shape[1] != k]
        scaling = _scaling(native, constants["floats"])
        if scaling is None or (wider and _scaling(wider, set()) is None):
            near = near or rule
            continue
        if scaling != 1.0:
            rule = rule.with_(scaling=scaling)
            _, pairs = _compare(rule, samples, k, bias_attr)
            pairs = [p for p, s in zip(pairs, samples) if s.idx.shape[1] == k]
        else:
            pairs = native
        if all(torch.equal(a, b) for a, b in pairs):
            return rule, bias_attr, f"identified on the router: {rule.describe()}, exact on {tokens} tokens ({tried} rules tried)"
        err = max(float(((a - b).abs() / b.abs().clamp_min(1e-30)).max()) if a.numel() else 0.0 for a, b in pairs)
        if err <= 1e-6 and close is None:
            close = (rule, bias_attr, err)
    if close is not None:
        rule, bias_attr, err = close
        return rule, bias_attr, (f"identified on the router: {rule.describe()}, weights equal to {err:.1e} relative "
                                 f"(float rounding; no rule is bit-exact) on {tokens} tokens ({tried} rules tried)")
    hint = f"; the closest chose the same experts as {near.describe()} with other weights" if near else ""
    if constants.get("scales"):
        hint += (f"; the router multiplies weights by per-expert scales ({', '.join(constants['scales'])}), "
                 "which no rule of the grammar does")
    raise IdentificationError(
        f"no routing rule reproduces this router's (indices, weights) exactly: tried {tried} rules "
        f"({', '.join(SCORING_ORDER)}, sparsemixer; with/without selection bias {list(biases) or 'none found'}; "
        f"renormalised or not; expert groups {constants.get('n_group', 1)}){hint}")


def _scaling(pairs, constants) -> float | None:
    """The constant factor between the model's weights and the rule's (1.0 when none is needed);
    snapped to a router or config constant when one is within float32 rounding. None: no constant."""
    model_w = torch.cat([a.reshape(-1) for a, _ in pairs])
    ours = torch.cat([b.reshape(-1) for _, b in pairs])
    live = ours.abs() > 1e-12
    if not bool(live.any()):
        return 1.0 if torch.equal(model_w, ours) else None
    if not torch.equal(model_w[~live].abs() <= 1e-12, torch.ones_like(model_w[~live], dtype=torch.bool)):
        return None
    ratio = model_w[live].double() / ours[live].double()
    mean = float(ratio.mean())
    if float((ratio - mean).abs().max()) > 1e-5 * abs(mean):
        return None
    if abs(mean - 1.0) <= 1e-6:
        return 1.0
    for value in sorted(constants | {1.0 / k for k in range(2, 17)}):
        if abs(value - mean) <= 1e-5 * abs(mean):
            return float(value)
    return float(torch.tensor(mean, dtype=torch.float32))
