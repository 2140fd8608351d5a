"""A pruned model with fewer experts, in memory and as a checkpoint plain transformers can load.

Pruning layer ``l`` to the experts ``kept[l]`` (sorted; new expert ``i`` is old expert ``kept[l][i]``):

* every tensor of the router module whose first dimension is ``E`` loses the dropped rows: the
  router weight ``[E, H]``, a router bias (GPT-OSS) and the selection bias
  ``e_score_correction_bias`` (DeepSeek-V3, GLM-4-MoE);
* every tensor of the fused experts module loses the dropped experts: ``gate_up_proj``,
  ``down_proj`` and their biases (``[E, ...]``);
* the config's expert count (``num_experts`` / ``num_local_experts`` / ``n_routed_experts``) becomes
  ``r``; group-limited routing keeps ``n_group`` groups of ``r / n_group`` (the search only keeps
  balanced groups, see :mod:`workbench.pruning.subsets`), or one group when groups never constrained
  the choice (``topk_group == n_group``);
* shared experts, attention and everything else are untouched. The pruned model is built by its own
  transformers class from the pruned config, so it is exactly what ``from_pretrained`` rebuilds.

The pruned model routes like the unpruned one under ``wb.Mask(dropped)`` (scores of dropped experts
-inf before normalisation); the tests check logits both ways. Its config records the mapping to the
original experts under ``workbench_pruning``. Families whose experts are not stored as fused
``[E, ...]`` tensors (DBRX, JetMoE) are refused with a clear message.

Example:
    >>> import tempfile, torch, workbench as wb
    >>> from transformers import AutoModelForCausalLM
    >>> from workbench.testing import tiny_model
    >>> from workbench.pruning.slicing import prune_model, save_pruned
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> small = prune_model(lm, {0: [0, 2, 4, 6], 1: [1, 2, 3, 4]})
    >>> small.num_experts, tuple(small.experts(0).gate_up_proj.shape)
    (4, (4, 32, 32))
    >>> folder = save_pruned(small, tempfile.mkdtemp(), progress=False)
    >>> plain = AutoModelForCausalLM.from_pretrained(folder)
    >>> ids = torch.tensor([[1, 5, 9, 12]])
    >>> torch.allclose(plain(ids).logits, small.model(ids).logits)
    True
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from workbench.loading import SKIP_CONFIG_KEY
from workbench.pruning.subsets import Groups

#: config attributes that hold the number of routed experts, in the families the workbench knows
COUNT_ATTRS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
#: families whose experts are not fused [E, ...] tensors under the adapter's experts module
UNSUPPORTED = {"dbrx": "stores its experts as [E * I, H] matrices under ffn.experts.mlp",
               "jetmoe": "splits its experts over input_linear and output_linear outside one experts module"}
PRUNING_KEY = "workbench_pruning"


class UnsupportedPruning(NotImplementedError, ValueError):
    """The family's weights cannot be sliced into a pruned checkpoint."""


def check_supported(lm) -> None:
    """Raise :class:`UnsupportedPruning` for families whose checkpoints cannot be sliced."""
    if lm.adapter.name in UNSUPPORTED:
        raise UnsupportedPruning(
            f"{lm.adapter.name} {UNSUPPORTED[lm.adapter.name]}; pruned checkpoints are written for families with "
            "fused [E, ...] expert tensors (Mixtral, Qwen-MoE, OLMoE, DeepSeek, GLM-4-MoE, GPT-OSS, Granite-MoE, "
            "PhiMoE). The search and wb.Mask edits still work for this family: apply result.mask() instead.")
    from workbench.adapters.discover import router_child

    routed = {id(lm.block(layer)) for layer in lm.moe_layers}
    others = [n for n, m in lm.model.named_modules() if router_child(m) and id(m) not in routed]
    if others:
        raise UnsupportedPruning(
            f"this model has MoE blocks the workbench does not route (e.g. {others[0]}, a vision or modality "
            "mixture) that share the config's expert count; a pruned checkpoint would have to prune them too")
    devices = {str(d) for d in (getattr(lm.model, "hf_device_map", None) or {}).values()}
    if len(devices) > 1:
        raise UnsupportedPruning("this model is spread over several devices (device_map); load it on one device "
                                 "(or on the CPU) to build and save the pruned checkpoint")


def _module_names(lm) -> dict[str, int]:
    """``{qualified name of a router or experts module: layer}``."""
    wanted = {}
    for layer in lm.moe_layers:
        wanted[id(lm.router(layer))] = layer
        wanted[id(lm.experts(layer))] = layer
    return {name: wanted[id(m)] for name, m in lm.model.named_modules() if id(m) in wanted}


def check_kept(lm, kept: dict) -> dict[int, list[int]]:
    """Validate ``{layer: kept experts}``: every MoE layer, the same count, distinct valid ids."""
    kept = {int(layer): sorted(int(e) for e in experts) for layer, experts in dict(kept).items()}
    missing = [layer for layer in lm.moe_layers if layer not in kept]
    extra = [layer for layer in kept if layer not in lm.moe_layers]
    if missing or extra:
        raise ValueError(f"a pruned checkpoint needs kept experts for every MoE layer {lm.moe_layers} "
                         f"(the config has one expert count); missing {missing}, not MoE layers {extra}")
    sizes = {len(v) for v in kept.values()}
    if len(sizes) != 1:
        raise ValueError(f"every layer must keep the same number of experts (one config count), got {sorted(sizes)}")
    keep = sizes.pop()
    groups = Groups.of(lm.rule, lm.num_experts, lm.top_k)
    groups.check(keep)
    for layer, experts in kept.items():
        if len(set(experts)) != len(experts) or any(not 0 <= e < lm.num_experts for e in experts):
            raise ValueError(f"layer {layer}: kept experts must be distinct ids in 0..{lm.num_experts - 1}, got {experts}")
        if groups.n_group > 1:
            per = [sum(1 for e in experts if groups.group_of(e) == g) for g in range(groups.n_group)]
            if len(set(per)) != 1:
                raise ValueError(f"layer {layer}: every expert group must keep the same number of experts "
                                 f"(group-limited routing); kept per group: {per}")
    return kept


def pruned_config(lm, keep: int, meta: dict | None = None):
    """A copy of the model's config with ``keep`` routed experts (and valid groups)."""
    config = copy.deepcopy(lm.model.config)
    text = lm.adapter.text_config(config)
    for attr in COUNT_ATTRS:
        if hasattr(text, attr) and getattr(text, attr) == lm.num_experts:
            setattr(text, attr, int(keep))
    groups = Groups.of(lm.rule, lm.num_experts, lm.top_k)
    if groups.free_groups:
        text.n_group, text.topk_group = 1, 1
    if hasattr(config, SKIP_CONFIG_KEY):  # thresholds of the unpruned model do not carry over
        delattr(config, SKIP_CONFIG_KEY)
    if meta is not None:
        setattr(config, PRUNING_KEY, meta)
    if int(lm.adapter.num_experts(lm.adapter.text_config(config))) != keep:
        raise UnsupportedPruning(f"could not set the expert count of this {lm.adapter.name} config to {keep}; "
                                 f"none of {COUNT_ATTRS} holds it")
    return config


def _block_biases(lm) -> dict[str, int]:
    """``{state-dict name: layer}`` of selection biases held by the block itself rather than its
    router (AFMoE, LFM2-MoE, HunYuan, MiniMax-M2 pass them to the router as an argument)."""
    attr = lm.adapter.selection_bias_attr
    if not attr or attr.startswith(lm.adapter.router_attr + "."):
        return {}
    blocks = {id(lm.block(layer)): layer for layer in lm.moe_layers}
    return {f"{name}.{attr}" if name else attr: blocks[id(m)] for name, m in lm.model.named_modules() if id(m) in blocks}


def slice_state_dict(lm, kept: dict[int, list[int]]) -> dict[str, torch.Tensor]:
    """The model's state dict with the dropped experts' rows removed (other tensors shared, not copied)."""
    owners = _module_names(lm)
    biases = _block_biases(lm)
    e = lm.num_experts
    out, touched = {}, set()
    for name, tensor in lm.model.state_dict().items():
        if name in biases and tensor.shape[-1] == e:
            index = torch.tensor(kept[biases[name]], device=tensor.device)
            out[name] = tensor.index_select(tensor.ndim - 1, index).contiguous()
            continue
        prefix = next((p for p in owners if name.startswith(p + ".")), None)
        if prefix is None:
            out[name] = tensor
            continue
        layer = owners[prefix]
        if tensor.ndim >= 1 and tensor.shape[0] == e:
            index = torch.tensor(kept[layer], device=tensor.device)
            out[name] = tensor.index_select(0, index).contiguous()
            touched.add((layer, prefix))
        elif tensor.ndim > 1 and tensor.shape[-1] == e and tensor.numel() == e:  # a [1, E] bias (Ernie-4.5)
            index = torch.tensor(kept[layer], device=tensor.device)
            out[name] = tensor.index_select(tensor.ndim - 1, index).contiguous()
        elif prefix.endswith(lm.adapter.experts_attr) or tensor.ndim > 1:
            raise UnsupportedPruning(f"{name} has shape {tuple(tensor.shape)}: no dimension of E={e} experts first; "
                                     "the workbench cannot slice this layout")
        else:
            out[name] = tensor
    for layer in lm.moe_layers:
        if sum(1 for (l, _) in touched if l == layer) < 2:
            raise UnsupportedPruning(f"layer {layer}: found no [E, ...] tensors in both the router and the experts "
                                     "module; cannot slice this layout")
    return out


@torch.no_grad()
def prune_model(lm, kept: dict, *, meta: dict | None = None):
    """A new :class:`~workbench.loading.MoEModel` with only the ``kept`` experts of every MoE layer.

    The original model is not modified. Sliced expert tensors are new; every other tensor is shared
    with the original (no copy), so neither model should be trained in place afterwards.

    Args:
        lm: the unpruned :class:`~workbench.loading.MoEModel`.
        kept: ``{layer: [expert, ...]}`` for every MoE layer, the same number each.
        meta: extra JSON-able facts stored under ``config.workbench_pruning``.

    Raises:
        UnsupportedPruning: the family's weights cannot be sliced (DBRX, JetMoE) or the model spans
            several devices.
        PruningConstraintError: the count breaks the family's group-limited routing.
    """
    from workbench.loading import wrap

    check_supported(lm)
    kept = check_kept(lm, kept)
    keep = len(next(iter(kept.values())))
    info = {"source": lm.name, "source_fingerprint": lm.fingerprint, "num_experts_before": lm.num_experts,
            "kept": {str(layer): experts for layer, experts in kept.items()}}
    config = pruned_config(lm, keep, dict(info, **(meta or {})))
    state = slice_state_dict(lm, kept)
    with torch.device("meta"):
        model = type(lm.model)(config)
    model.load_state_dict(state, strict=True, assign=True)
    originals = dict(lm.model.named_buffers())
    for name, buf in list(model.named_buffers()):
        if buf.is_meta:  # non-persistent buffers (rotary tables) are not in the state dict
            owner, _, attr = name.rpartition(".")
            module = model.get_submodule(owner) if owner else model
            module._buffers[attr] = originals[name]
    still_meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if still_meta:
        raise UnsupportedPruning(f"the pruned model has tensors without values: {still_meta[:5]}")
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    if getattr(lm.model, "generation_config", None) is not None:  # base (non-generative) models have none
        model.generation_config = copy.deepcopy(lm.model.generation_config)
    model.eval()
    return wrap(model, lm.tokenizer, source=f"pruned {lm.source} (r={keep})")


def save_pruned(pruned_lm, out, tokenizer=None, *, progress: bool = True) -> Path:
    """Write a pruned model (and its tokenizer) as a safetensors checkpoint folder.

    ``AutoModelForCausalLM.from_pretrained(out)`` loads it without the workbench; ``workbench.load(out)``
    also re-applies dynamic-skipping thresholds saved in its config. ``progress`` shows a ``tqdm.auto``
    bar over the steps (weights, then tokenizer): writing a large model's shards takes minutes.
    """
    from tqdm.auto import tqdm

    from workbench.outputs import check_not_input

    out = Path(out)
    check_not_input(out, [pruned_lm.source, getattr(pruned_lm.model.config, "_name_or_path", None)])
    if out.is_dir() and any(out.glob("*.safetensors")) and not (out / ".moe-workbench").exists():
        raise FileExistsError(f"{out} already holds a checkpoint the workbench did not write; choose a new folder "
                              "(its shards would be mixed with the new ones)")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):  # shards of an earlier result of ours: never mixed with new ones
        old.unlink()
    tokenizer = tokenizer if tokenizer is not None else pruned_lm.tokenizer
    with tqdm(total=1 + (tokenizer is not None), desc=f"saving {out.name}", unit="step",
              disable=not progress) as bar:
        bar.set_postfix_str("weights")
        pruned_lm.model.save_pretrained(out, safe_serialization=True)
        (out / ".moe-workbench").write_text('{"written_by": "moe-workbench", "command": "checkpoint"}\n')
        bar.update()
        if tokenizer is not None:
            bar.set_postfix_str("tokenizer")
            tokenizer.save_pretrained(out)
            bar.update()
    return out
