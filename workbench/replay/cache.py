"""Layer caches: what replay and recombine need from one MoE layer, saved without pickle.

A :class:`LayerCache` holds, for ``T`` calibration tokens of one MoE layer: the block inputs
``x [T, H]``, the router logits ``[T, E]`` (float32), the block outputs ``y [T, H]``, the
routing-independent part ``shared [T, H]`` (shared experts with their gates and block-level biases;
zeros for families without), the model's own routing ``topk_idx``/``topk_w [T, k]``, and optionally
every candidate expert's own output ``expert_out [T, C, H]`` (weight 1) with ``candidates [T, C]``
(None when ``C = E`` and column ``c`` is expert ``c``). Token ids, documents and positions say where
each row came from. :class:`LayerCaches` is a set of layers kept in memory or in a folder, one
safetensors file per layer, loaded one layer at a time.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.replay import capture
    >>> lm = wb.wrap(*tiny_model("qwen2_moe"))
    >>> caches = capture(lm, ["the quick brown fox"], layers=[0], progress=False)
    >>> caches[0]
    LayerCache(layer 0 of qwen2_moe: T=..., H=32, E=8, k=2, experts cached: all 8, ...)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from workbench.kernels.rules import RoutingRule
from workbench.trace import TraceMismatchError

SCHEMA_VERSION = 1
MANIFEST = "caches.json"
_TENSORS = ("x", "logits", "y", "shared", "topk_idx", "topk_w", "expert_out", "candidates", "token_ids",
            "doc", "pos", "bias")


def layer_file(layer: int) -> str:
    return f"layer_{layer:03d}.safetensors"


def estimate_bytes(num_tokens: int, hidden: int, num_experts: int, top_k: int, columns: int,
                   itemsize: int) -> int:
    """Bytes of one layer's cache (``columns`` cached expert outputs per token, 0 for none)."""
    per_token = (3 * hidden * itemsize + num_experts * 4 + top_k * 12 + 24
                 + columns * hidden * itemsize + (columns * 8 if 0 < columns < num_experts else 0))
    return num_tokens * per_token


def human(nbytes: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if nbytes < 1024 or unit == "TB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return ""


@dataclass
class LayerCache:
    """One MoE layer's cached inputs, router logits, outputs and (optionally) expert outputs."""

    layer: int
    x: torch.Tensor
    logits: torch.Tensor
    y: torch.Tensor
    shared: torch.Tensor
    topk_idx: torch.Tensor
    topk_w: torch.Tensor
    token_ids: torch.Tensor
    doc: torch.Tensor
    pos: torch.Tensor
    meta: dict = field(default_factory=dict)
    expert_out: torch.Tensor | None = None
    candidates: torch.Tensor | None = None
    bias: torch.Tensor | None = None

    # -- facts -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        return int(self.x.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.x.shape[1])

    @property
    def num_experts(self) -> int:
        return int(self.logits.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.meta.get("top_k", self.topk_idx.shape[1]))

    @property
    def rule(self) -> RoutingRule:
        """The family's routing rule, as recorded at capture."""
        return RoutingRule(**self.meta["rule"])

    @property
    def scale_input(self) -> bool:
        """Routing weights scale expert inputs (Llama-4): recombine is then not exact and refuses."""
        return bool(self.meta.get("scale_input", False))

    @property
    def columns(self) -> int:
        """Cached expert outputs per token (0 = none)."""
        return 0 if self.expert_out is None else int(self.expert_out.shape[1])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._tensors().values())

    def check_model(self, lm) -> None:
        """Raise :class:`~workbench.TraceMismatchError` if the cache was captured on another model."""
        if self.meta.get("fingerprint") != lm.fingerprint:
            raise TraceMismatchError(
                f"this layer cache was captured on model {self.meta.get('fingerprint')} "
                f"({self.meta.get('model', '?')}), not on {lm.fingerprint}; capture it again on this model")
        if self.layer not in lm.moe_layers:
            raise ValueError(f"layer {self.layer} is not an MoE layer of this model; MoE layers: {lm.moe_layers}")

    def __repr__(self) -> str:
        cached = ("none" if self.expert_out is None else
                  f"all {self.columns}" if self.candidates is None else f"top-{self.columns} per token")
        return (f"LayerCache(layer {self.layer} of {self.meta.get('family', '?')}: T={self.num_tokens}, "
                f"H={self.hidden}, E={self.num_experts}, k={self.top_k}, experts cached: {cached}, "
                f"{human(self.nbytes)})")

    # -- saving ------------------------------------------------------------------------------
    def _tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name) for name in _TENSORS if getattr(self, name) is not None}

    def save(self, path) -> Path:
        """Write one safetensors file (tensors plus JSON metadata in its header; no pickle)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self._tensors().items()}
        meta = dict(self.meta, layer=self.layer, schema_version=SCHEMA_VERSION)
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp), metadata={"workbench_layer_cache": json.dumps(meta)})
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "LayerCache":
        """Read a file written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no layer cache at {path}")
        with safe_open(str(path), framework="pt", device=str(device)) as f:
            header = (f.metadata() or {}).get("workbench_layer_cache")
            if header is None:
                raise ValueError(f"{path} is a safetensors file but not a workbench layer cache")
            meta = json.loads(header)
            if meta.get("schema_version", 0) > SCHEMA_VERSION:
                raise ValueError(f"{path} was written by a newer workbench (schema {meta['schema_version']})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layer = int(meta.pop("layer"))
        meta.pop("schema_version", None)
        return cls(layer=layer, meta=meta, **tensors)


class LayerCaches:
    """Caches of several layers: in memory, or in a folder (one file per layer, loaded on access).

    Index it by decoder-layer id: ``caches[3]`` is a :class:`LayerCache`.
    """

    def __init__(self, layers, folder=None, items: dict | None = None, meta: dict | None = None):
        self.layers = [int(x) for x in layers]
        self.folder = None if folder is None else Path(folder)
        self._items = dict(items or {})
        self.meta = dict(meta or {})

    def __getitem__(self, layer: int) -> LayerCache:
        layer = int(layer)
        if layer not in self.layers:
            raise KeyError(f"layer {layer} is not cached; cached layers: {self.layers}")
        if layer in self._items:
            return self._items[layer]
        return LayerCache.load(self.folder / layer_file(layer))

    def __iter__(self):
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def save(self, folder) -> Path:
        """Write every layer and a manifest into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for layer in self.layers:
            if self.folder is None or self.folder.resolve() != folder.resolve():
                self[layer].save(folder / layer_file(layer))
        (folder / MANIFEST).write_text(json.dumps({"schema_version": SCHEMA_VERSION, "layers": self.layers,
                                                   "meta": self.meta}, indent=1))
        return folder

    @classmethod
    def load(cls, folder) -> "LayerCaches":
        """Open a folder written by :func:`~workbench.replay.capture` or :meth:`save`."""
        folder = Path(folder)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder} holds no layer caches (no {MANIFEST})")
        manifest = json.loads((folder / MANIFEST).read_text())
        return cls(manifest["layers"], folder=folder, meta=manifest.get("meta"))

    def __repr__(self) -> str:
        where = f"in {self.folder}" if self.folder is not None and not self._items else "in memory"
        return f"LayerCaches(layers={self.layers}, {where})"


def rule_dict(rule: RoutingRule) -> dict:
    return asdict(rule)
