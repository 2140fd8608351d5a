"""Loading MoE checkpoints into a :class:`MoEModel` that knows its routing.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> lm
    MoEModel(qwen3_moe: E=8, k=2, rule: softmax -> top-k -> renormalise; moe_layers=[0, 1], fingerprint=...)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import torch

from workbench.adapters import Adapter, UnsupportedModelError, adapter_for, registered_model_types, supported_model_types
from workbench.adapters.discover import DiscoveryError, config_mentions_experts, expert_count, is_hash_router

#: config key of dynamic-skipping thresholds ``{layer: beta}`` saved with a checkpoint (workbench.pruning)
SKIP_CONFIG_KEY = "workbench_skip_beta"


class MoEModel:
    """A transformers MoE model with its tokenizer and what the workbench knows of its routing.

    Attributes:
        model: the transformers model (eval mode).
        tokenizer: its tokenizer (may be None for :func:`wrap` without one).
        adapter: the family :class:`~workbench.adapters.Adapter` (registered, or identified from
            the module tree and the router itself; see :func:`describe`).
        num_experts: experts per MoE layer that the router scores, ``E`` (ids ``0..E-1``).
        num_routed_experts: of those, experts that compute; ids from here to ``E - 1`` are
            zero/null experts (LongCat-Flash), recorded with their own ids.
        top_k: experts per token, ``k``.
        moe_layers: layer indices of the MoE blocks (encoder layers first, then decoder layers,
            for encoder-decoder models; ``layer_names`` says which).
        layer_names: ``{layer: name}`` (``"3"``, or ``"encoder.3"`` / ``"decoder.0"``).
        hash_layers: MoE layers whose router picks experts by token id: recorded, never edited.
        rule: the family's :class:`~workbench.kernels.RoutingRule`.
        fingerprint: a short hash of the config and router weights; traces carry it.
        source: where the model came from (path, hub id, ``"demo"`` or ``"memory"``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer=None, source: str = "memory"):
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            hint = f"; to load {model!r} by name or path use wb.load({model!r})" if isinstance(model, (str, os.PathLike)) \
                else ""
            raise TypeError(f"wrap takes a transformers model (a torch.nn.Module with a .config), got "
                            f"{type(model).__name__}{hint}")
        config = model.config
        _check_k(config)
        self.adapter: Adapter = adapter_for(model)
        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.config = self.adapter.text_config(config)
        self.num_experts = int(self.adapter.num_experts(self.config))
        self.top_k = int(self.adapter.top_k(self.config))
        self.rule = self.adapter.rule(self.config)
        if not 1 <= self.top_k <= self.num_experts:
            raise ValueError(f"the config asks for k={self.top_k} experts per token of E={self.num_experts}; k must "
                             "be between 1 and E (check num_experts_per_tok and the expert count in config.json)")
        self.moe_layers = self.adapter.moe_layers(model)
        names = self.adapter.layer_names(model)
        self.layer_names = {layer: names[layer] for layer in self.moe_layers}
        self.hash_layers = [layer for layer in self.moe_layers if is_hash_router(self.router(layer))]
        self.num_routed_experts = self.num_experts
        if self.moe_layers:
            try:
                self.num_routed_experts = min(self.num_experts, expert_count(self.experts(self.moe_layers[0])))
            except DiscoveryError:  # an experts module of a registered family that holds no count
                pass
        if not self.moe_layers:
            raise UnsupportedModelError(
                f"{type(model).__name__} ({config.model_type}) has no MoE layers: every decoder layer "
                "is dense. The workbench needs a model whose layers route tokens to experts.")
        self.fingerprint = compute_fingerprint(model, self.adapter, self.moe_layers)
        self._probes = None
        #: the skipping edit re-applied from thresholds saved in the config (None without them)
        self.saved_skip = None

    # -- modules -------------------------------------------------------------------------
    def block(self, layer: int) -> torch.nn.Module:
        """The MoE block of decoder layer ``layer``."""
        self._check_layer(layer)
        return self.adapter.block(self.adapter.decoder_layers(self.model)[layer])

    def router(self, layer: int) -> torch.nn.Module:
        return self.adapter.router(self.block(layer))

    def experts(self, layer: int) -> torch.nn.Module:
        return self.adapter.experts(self.block(layer))

    def selection_bias(self, layer: int) -> torch.Tensor | None:
        """The per-expert selection bias of a sigmoid-routed layer, else None."""
        return self.adapter.selection_bias(self.block(layer))

    def shared_experts(self, layer: int) -> list[torch.nn.Module]:
        return self.adapter.shared_experts(self.block(layer))

    def check_context(self, prompt_tokens: int, new_tokens: int = 0, what: str = "the prompt") -> None:
        """Refuse to run past the model's context (``max_position_embeddings``), saying by how much."""
        context = getattr(self.config, "max_position_embeddings", None)
        if isinstance(context, int) and prompt_tokens + new_tokens > context:
            raise ValueError(f"{what} has {prompt_tokens} tokens; with {new_tokens} new tokens that is "
                             f"{prompt_tokens + new_tokens}, more than the model's context of {context} positions. "
                             "Shorten it or generate fewer tokens")

    def _check_layer(self, layer: int) -> None:
        if layer not in self.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer of this model; MoE layers: {self.moe_layers}")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def probes(self):
        """The hook manager that carries recordings and edits (created on first use)."""
        if self._probes is None:
            from workbench.probes.hooks import ProbeManager

            self._probes = ProbeManager(self)
        return self._probes

    @property
    def name(self) -> str:
        return getattr(self.model.config, "_name_or_path", "") or self.source

    def __repr__(self) -> str:
        return (f"MoEModel({self.adapter.describe(self.config)}; moe_layers={self.moe_layers}, "
                f"fingerprint={self.fingerprint})")

    def describe(self) -> str:
        """How the workbench knows this model: the adapter's origin, the rule and how it was found.

        Example:
            >>> import workbench as wb
            >>> from workbench.testing import tiny_model
            >>> print(wb.wrap(*tiny_model("mixtral")).describe())  # doctest: +ELLIPSIS
            mixtral: E=8, k=2, rule: softmax -> top-k -> renormalise
              adapter: identified from the module tree (model.layers[i].mlp: gate -> experts)
              identified on the router: softmax -> top-k -> renormalise, exact on ... tokens (... rules tried)
              MoE layers: 2 of 2
        """
        a = self.adapter
        stacks = ", ".join(f"{path}[i].{attr}" for path, attr in a.stacks)
        lines = [a.describe(self.config),
                 f"  adapter: {'identified from the module tree' if a.origin == 'identified' else 'registered family file'}"
                 f" ({stacks}: {a.router_attr} -> {a.experts_attr})"]
        lines += [f"  {note}" for note in a.notes.split("; ") if note]
        lines.append(f"  MoE layers: {len(self.moe_layers)} of {len(a.decoder_layers(self.model))}")
        if self.hash_layers:
            lines.append(f"  hash-routed layers (by token id; edits refused): {self.hash_layers}")
        if self.num_routed_experts < self.num_experts:
            lines.append(f"  null experts (no compute): ids {self.num_routed_experts}..{self.num_experts - 1}")
        return "\n".join(lines)


def describe(lm: MoEModel) -> str:
    """How the workbench knows a wrapped model (see :meth:`MoEModel.describe`)."""
    return lm.describe()


def compute_fingerprint(model: torch.nn.Module, adapter: Adapter, moe_layers: list[int]) -> str:
    """A 16-hex-digit hash of the model's config and its router weights.

    Two models with the same architecture but different weights get different fingerprints, so a
    trace recorded on one is refused by the other.
    """
    h = hashlib.sha256(config_digest(model.config))
    layers = adapter.decoder_layers(model)
    for i in moe_layers:
        router = adapter.router(adapter.block(layers[i]))
        for name, tensor in sorted(router.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def config_digest(config) -> bytes:
    """The bytes of ``config`` that a fingerprint hashes: its dict without the keys that say how it
    was loaded rather than what the model is (path, versions, dtype, implementations)."""
    cfg = config.to_dict()
    for key in ("_name_or_path", "transformers_version", "torch_dtype", "dtype", "_attn_implementation",
                "_experts_implementation", "output_router_logits", "use_cache", "architectures"):
        cfg.pop(key, None)
    return json.dumps(cfg, sort_keys=True, default=str).encode()


def _check_k(config) -> None:
    """Refuse a config whose experts per token is not in 1..E, before its router is run."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    k = getattr(text, "num_experts_per_tok", None)
    counts = [getattr(text, name, None) for name in ("n_routed_experts", "num_local_experts", "num_experts",
                                                     "moe_num_experts")]
    num_experts = next((c for c in counts if isinstance(c, int) and not isinstance(c, bool)), None)
    if isinstance(k, int) and isinstance(num_experts, int) and not 1 <= k <= num_experts:
        raise ValueError(f"the config asks for k={k} experts per token of E={num_experts}; k must be between 1 "
                         "and E (check num_experts_per_tok and the expert count in config.json)")


def _looks_local(source: str) -> bool:
    """Whether ``source`` is meant as a path rather than a hub id (``org/name``)."""
    return (source.startswith((".", "/", "~")) or "\\" in source or source.count("/") > 1
            or source.endswith((".safetensors", ".json")))


def check_safetensors(path: Path) -> None:
    """Raise a ValueError naming ``path`` when it is not a complete safetensors file (e.g. truncated)."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if length < 2 or 8 + length > size:
                raise ValueError("header cut off")
            header = json.loads(fh.read(length))
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it is damaged or was not fully "
                         "downloaded: copy it again") from None
    if 8 + length + end > size:
        raise ValueError(f"{path} is truncated: it holds {size} bytes but its header needs {8 + length + end}; "
                         "copy or download it again")


def wrap(model: torch.nn.Module, tokenizer=None, source: str = "memory") -> MoEModel:
    """Wrap a transformers MoE model (and tokenizer) already in memory.

    Raises:
        UnsupportedModelError: for a dense model or an unknown family (lists the supported ones).

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> wb.wrap(*tiny_model("olmoe")).adapter.name
        'olmoe'
    """
    if isinstance(model, torch.nn.Module):
        model.eval()
    lm = MoEModel(model, tokenizer, source=source)
    restore_skipping(lm)
    return lm


def restore_skipping(lm: MoEModel) -> None:
    """Re-apply dynamic-skipping thresholds saved in the config (``workbench_skip_beta``) as an edit
    that stays active, held in ``lm.saved_skip``; ``workbench.pruning.saved_skipping_off(lm)``
    suspends it. Nothing happens for a config without thresholds."""
    saved = getattr(lm.model.config, SKIP_CONFIG_KEY, None)
    if not saved:
        return
    from workbench.probes.edits import Skip, edit

    lm.saved_skip = edit(lm, Skip({int(layer): float(beta) for layer, beta in dict(saved).items()}))
    lm.probes.push_base_edit(lm.saved_skip)  # model-wide: in force in every thread and task


def resolve_source(source: str | os.PathLike) -> tuple[str, str]:
    """``(label, path)`` of a source: the demo checkpoint's folder, a checked local checkpoint
    folder (safetensors weights present and complete), or a hub id as given.

    Raises:
        FileNotFoundError: for a missing demo checkpoint, a file, a folder without safetensors
            weights, or a path that does not exist (one line saying what to fix): a source that is not
            a local folder must be a hub id ``org/name`` whose ``org`` is not a local folder.
    """
    label = str(source)
    if not label.strip():
        raise ValueError('the source is empty: give "demo", a checkpoint folder, or a hub id')
    if label == "demo":
        from workbench.demo import CHECKPOINT_DIR, checkpoint_available

        if not checkpoint_available():
            raise FileNotFoundError(
                f"the demo checkpoint is not present in this installation ({CHECKPOINT_DIR}). "
                "Reinstall the package from a full clone, or pass a checkpoint folder.")
        path = str(CHECKPOINT_DIR)
    else:
        path = label
        local = Path(path).expanduser()
        if local.exists():
            path = str(local)
            if not local.is_dir():
                raise FileNotFoundError(f"{path} is a file; give the checkpoint folder that holds config.json "
                                        "and the .safetensors weights")
            if not any(local.glob("*.safetensors")) and not any(local.glob("*.safetensors.index.json")):
                raise FileNotFoundError(
                    f"{path} has no .safetensors weights; the workbench loads safetensors only "
                    "(convert .bin weights with transformers' save_pretrained(safe_serialization=True)).")
            for weights in sorted(local.glob("*.safetensors")):
                check_safetensors(weights)
        elif not _could_be_hub_id(label):
            raise FileNotFoundError(f"no checkpoint folder at {label}; pass \"demo\", an existing folder, or a "
                                    "hub id ('org/name')")
    return label, path


_HUB_ID = re.compile(r"^[\w\-.]+/[\w\-.]{1,96}$")


def _could_be_hub_id(source: str) -> bool:
    """Whether a source that is not a local folder can be a hub id of an MoE checkpoint: ``org/name``
    (every MoE checkpoint on the hub has an owner), not a path (``./x``, ``a/b/c``, ``x.json``), and
    not inside a local folder that exists (``checkpoints/typo`` is a mistyped path)."""
    if _looks_local(source) or not _HUB_ID.match(source) or "--" in source or ".." in source:
        return False
    return not Path(source.split("/")[0]).expanduser().is_dir()


def load_config(label: str, path: str, trust_remote_code: bool = False):
    """The checkpoint's transformers config, refused (before any weights are read) when it declares
    no routed experts."""
    from transformers import AutoConfig

    if not Path(path).expanduser().is_dir():
        from workbench.hub import unreachable_reason

        reason = unreachable_reason(str(path))
        if reason:
            raise FileNotFoundError(f"could not load {label!r}: no local folder of that name, it is not in the local "
                                    f"hub cache, and {reason}; download it where there is network (or give a "
                                    "local folder)")
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise FileNotFoundError(f"could not load {label!r}: no local folder of that name, and the Hugging Face "
                                f"hub has no such model or cannot be reached ({first})") from None
    if config.model_type not in registered_model_types() and not config_mentions_experts(config):
        raise UnsupportedModelError(
            f"{label} is a {config.model_type!r} model whose config declares no routed experts, so it is not "
            f"an MoE. Supported model types: {', '.join(supported_model_types())}.")
    return config


def load(source: str | os.PathLike = "demo", *, dtype: torch.dtype | str | None = None,
         device: str | torch.device | None = None, device_map=None, trust_remote_code: bool = False,
         backend: str = "transformers", **kwargs) -> MoEModel:
    """Load an MoE model and its tokenizer.

    Args:
        source: ``"demo"`` (the checkpoint shipped with the package), a local Hugging Face checkpoint
            folder, or a hub id (needs hub access).
        dtype: torch dtype (default: the checkpoint's).
        device: move the model there after loading (ignored with ``device_map``).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` for large models on GPUs).
        trust_remote_code: allow the checkpoint's own Python code. Off by default.
        backend: ``"transformers"`` (default), or ``"vllm"``: the model runs in a vLLM engine
            (:class:`workbench.engine.VLLMModel`; needs vLLM installed, see ``docs/vllm.md``),
            and ``kwargs`` are vLLM engine arguments (``tensor_parallel_size=2``, ...).
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained`` (or to ``vllm.LLM``).

    Only safetensors weights are loaded.

    Example:
        >>> import workbench as wb
        >>> lm = wb.load("demo")  # doctest: +SKIP
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if backend != "transformers":
        if backend != "vllm":
            raise ValueError(f"unknown backend {backend!r}; backends: 'transformers', 'vllm'")
        if device_map is not None or device is not None:
            raise ValueError("device and device_map are transformers options; a vLLM engine places the model "
                             "itself (pass engine arguments such as tensor_parallel_size=2)")
        from workbench.engine import load_vllm

        return load_vllm(source, dtype=dtype, trust_remote_code=trust_remote_code, **kwargs)
    label, path = resolve_source(source)
    load_config(label, path, trust_remote_code)
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True,
                                                     trust_remote_code=trust_remote_code, **kwargs)
    except RuntimeError as err:
        if "size mismatch" not in str(err) and "mismatched" not in str(err):
            raise
        raise ValueError(f"the weights of {label} do not match its config.json (e.g. the expert count or sizes "
                         f"differ from the checkpoint's tensors): {str(err).splitlines()[0][:300]}") from None
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    if device is not None and device_map is None:
        model.to(device)
    return wrap(model, tokenizer, source=label)
