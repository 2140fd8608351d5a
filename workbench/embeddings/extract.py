"""One forward pass per batch that reads, at each text's last real token, the final hidden state
(HS) and the router output of every chosen MoE layer (RW).

Router outputs come from the probe listener (``fn(layer, logits[B*S, E], decision)``), reshaped to
``[B, S, E]``; the last real token of each row is found from the attention mask, so left and right
padding give the same vectors. Position ids are computed from the mask, so a left-padded text sees
the same positions as when it is alone. Texts are batched longest first to waste little padding;
the result is returned in input order and does not depend on the batching.

Prompts: ``template`` wraps each text (:mod:`workbench.embeddings.templates`); with
``preprocess="moee"`` the text is first rewritten as the MoEE reference code does (a final ``"."``,
``"`` to ``'``, ``_`` to a space, stripped; :func:`workbench.embeddings.preset.moee_prompt`).

RW units (``unit``):

* ``"probs"`` (default) — the router's scores as probabilities: softmax over all ``E`` experts for
  softmax-scored families (Mixtral, Qwen-MoE, OLMoE, DeepSeek-V2, DBRX, and also GPT-OSS, Granite,
  JetMoE and PhiMoE, whose own rule softmaxes only the kept experts); for sigmoid-scored families
  (DeepSeek-V3, GLM-4-MoE, Llama-4) the independent per-expert sigmoid of each logit, without the
  selection bias (each in (0, 1), not summing to one).
* ``"logits"`` — the raw router logits.
* ``"weights"`` — the routing weights the model actually applied, as a dense ``[E]`` vector with
  zeros for unselected experts (after renormalisation, scaling and any active ``wb.edit``).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings.extract import extract
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> parts = extract(lm, ["a short text", "and a somewhat longer one"])
    >>> parts.hs.shape, parts.rw.shape, parts.rw_by_layer().shape
    ((2, 32), (2, 16), (2, 2, 8))
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from workbench.embeddings.templates import apply_template, resolve_template

UNITS = ("probs", "logits", "weights")
PADDING_SIDES = ("right", "left")


def unit_description(rule, unit: str) -> str:
    """What the RW numbers are for a family's routing rule and a unit."""
    if unit == "logits":
        return "raw router logits"
    if unit == "weights":
        return "applied routing weights (dense, 0 for unselected experts)"
    if rule.scoring in ("sigmoid", "topk_sigmoid"):
        return "per-expert sigmoid of the router logits (independent, without selection bias)"
    return "softmax of the router logits over all experts"


def router_features(logits: torch.Tensor, decision, rule, unit: str) -> torch.Tensor:
    """``[T, E]`` float32 RW features of one router call in ``unit`` (see the module docstring)."""
    if unit == "logits":
        return logits.float()
    if unit == "probs":
        if rule.scoring in ("sigmoid", "topk_sigmoid"):
            return torch.sigmoid(logits.float())
        return torch.softmax(logits.float(), dim=-1)
    if unit == "weights":
        dense = torch.zeros(logits.shape, dtype=torch.float32, device=logits.device)
        w = torch.where(decision.valid, decision.w.float(), torch.zeros_like(decision.w, dtype=torch.float32))
        return dense.scatter_add_(1, decision.idx.long(), w)
    raise ValueError(f"unknown RW unit {unit!r}; choose one of {', '.join(UNITS)}")


@dataclass
class EmbeddingParts:
    """HS and RW of ``N`` texts at their last real token.

    Attributes:
        hs: ``[N, H]`` float32 final hidden states (after the model's final norm).
        rw: ``[N, L*E]`` float32 router outputs, layer-major (layer ``i``'s experts at ``i*E:(i+1)*E``).
        layers: the ``L`` decoder-layer indices in ``rw``.
        num_experts: ``E``.
        unit: the RW unit (see :data:`UNITS`).
        template: the template string the texts were wrapped in.
    """

    hs: np.ndarray
    rw: np.ndarray
    layers: list[int]
    num_experts: int
    unit: str
    template: str = "{text}"
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.hs.shape[0])

    def rw_by_layer(self) -> np.ndarray:
        """RW as ``[N, L, E]``."""
        return self.rw.reshape(len(self), len(self.layers), self.num_experts)

    def take(self, rows) -> "EmbeddingParts":
        """The parts of some texts (``rows``: indices or a boolean mask)."""
        return EmbeddingParts(self.hs[rows], self.rw[rows], list(self.layers), self.num_experts, self.unit,
                              self.template, dict(self.meta))


def check_texts(texts) -> list[str]:
    """``texts`` as a list of non-empty strings, or a clear error."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text to embed")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {i} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(f"text {i} is empty; remove it or give it content")
    return texts


def prompt_of(text: str, template: str, preprocess: str | None = None) -> str:
    """The prompt a text is embedded as: ``template`` applied, after the preset's rewriting."""
    if preprocess is None:
        return apply_template(text, template)
    if preprocess == "moee":
        from workbench.embeddings.preset import moee_prompt

        return moee_prompt(text, template)
    raise ValueError(f"unknown preprocess {preprocess!r}; use None or 'moee'")


def _token_ids(lm, texts, template, max_length: int, truncation: str, preprocess=None) -> list[list[int]]:
    out = []
    for i, text in enumerate(texts):
        ids = list(lm.tokenizer(prompt_of(text, template, preprocess), verbose=False)["input_ids"])
        if len(ids) > max_length:
            if truncation == "error":
                raise ValueError(f"text {i} has {len(ids)} tokens, more than max_length={max_length}; "
                                 "shorten it or pass truncation='left' or 'right'")
            ids = ids[-max_length:] if truncation == "left" else ids[:max_length]
        out.append(ids)
    return out


def pad_batch(seqs: list[list[int]], pad_id: int, side: str):
    """``(input_ids, attention_mask, position_ids)``, each ``[B, S]`` long, padded on ``side``."""
    if side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids, mask, positions


def last_real_index(mask: torch.Tensor) -> torch.Tensor:
    """``[B]`` index of each row's last real (mask = 1) token in ``mask [B, S]``, any padding side."""
    width = mask.shape[1]
    return (width - 1 - mask.flip(-1).to(torch.long).argmax(dim=-1)).long()


def decoder_of(lm) -> torch.nn.Module:
    """The decoder stack of the CausalLM (the module holding the decoder layers and final norm)."""
    path = lm.adapter.stacks[-1][0].rsplit(".", 1)  # the last stack: the decoder of an encoder-decoder
    return lm.model.get_submodule(path[0]) if len(path) == 2 else lm.model


class _LastToken:
    """Listener that keeps, per layer, the RW features of each row's last real token."""

    def __init__(self, lm, layers, unit):
        self.lm, self.layers, self.unit = lm, set(layers), unit
        self.shape, self.last = None, None
        self.rows: dict[int, torch.Tensor] = {}

    def __call__(self, layer, logits, decision):
        if layer not in self.layers:
            return
        batch, seq = self.shape
        if logits.shape[0] != batch * seq:
            raise RuntimeError(f"layer {layer}'s router saw {logits.shape[0]} tokens, expected {batch}x{seq}")
        feats = router_features(logits, decision, self.lm.rule, self.unit).view(batch, seq, -1)
        self.rows[layer] = feats[torch.arange(batch, device=feats.device), self.last.to(feats.device)]


@torch.no_grad()
def extract(lm, texts, *, template: str | None = "none", unit: str = "probs", layers=None,
            batch_size: int = 8, padding_side: str = "right", max_length: int | None = None,
            truncation: str = "left", progress: bool = False, preprocess: str | None = None) -> EmbeddingParts:
    """HS and RW of every text at its last real token.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        texts: list of N strings.
        template: ``"none"``, ``"prompteol"`` or a custom ``{text}`` string.
        unit: RW unit, one of :data:`UNITS` (see the module docstring).
        layers: MoE decoder-layer indices for RW (default: all MoE layers).
        batch_size: texts per forward pass.
        padding_side: ``"right"`` or ``"left"`` (both give the same vectors).
        max_length: longest input in tokens (default: the model's context, at most 2048).
        truncation: for longer inputs keep the ``"left"``-truncated end (default: the last token
            still sees the end of the text and the template), the ``"right"``-truncated start, or
            raise (``"error"``).
        progress: show a progress bar.
        preprocess: None, or ``"moee"`` to rewrite each text as the MoEE reference code does.

    Returns:
        :class:`EmbeddingParts` with ``hs [N, H]`` and ``rw [N, L*E]``.
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    texts = check_texts(texts)
    template = resolve_template(template)
    if unit not in UNITS:
        raise ValueError(f"unknown RW unit {unit!r}; choose one of {', '.join(UNITS)}")
    if truncation not in ("left", "right", "error"):
        raise ValueError(f"truncation must be 'left', 'right' or 'error', got {truncation!r}")
    if padding_side not in PADDING_SIDES:
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    layers = list(lm.moe_layers) if layers is None else sorted(int(x) for x in layers)
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    if not layers:
        raise ValueError("layers is empty: choose at least one MoE layer")
    if max_length is None:
        from workbench.probes.record import _default_max_length

        max_length = _default_max_length(lm)
    seqs = _token_ids(lm, texts, template, int(max_length), truncation, preprocess)
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))
    decoder, device = decoder_of(lm), lm.device
    hs_out = np.zeros((len(seqs), lm.config.hidden_size), dtype=np.float32)
    rw_out = np.zeros((len(seqs), len(layers) * lm.num_experts), dtype=np.float32)
    listener = _LastToken(lm, layers, unit)
    lm.probes.add_listener(listener)
    try:
        for start in tqdm(range(0, len(order), batch_size), desc="embedding", disable=not progress):
            rows = order[start:start + batch_size]
            ids, mask, pos = pad_batch([seqs[i] for i in rows], pad_id, padding_side)
            listener.shape, listener.last, listener.rows = tuple(ids.shape), last_real_index(mask), {}
            out = decoder(input_ids=ids.to(device), attention_mask=mask.to(device),
                          position_ids=pos.to(device), use_cache=False)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            last = listener.last.to(hidden.device)
            hs_out[rows] = hidden[torch.arange(len(rows), device=hidden.device), last].float().cpu().numpy()
            missing = [layer for layer in layers if layer not in listener.rows]
            if missing:
                raise RuntimeError(f"the routers of layers {missing} were not called during the forward pass")
            rw_out[rows] = torch.cat([listener.rows[layer] for layer in layers], dim=-1).cpu().numpy()
    finally:
        lm.probes.remove_listener(listener)
    return EmbeddingParts(hs_out, rw_out, layers, lm.num_experts, unit, template,
                          {"padding_side": padding_side, "max_length": int(max_length), "preprocess": preprocess})
