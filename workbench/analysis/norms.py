"""Expert output norms versus the router's ranking ("A Closer Look into MoE in LLMs", Lo et al. 2024).

The question: does the router choose the experts whose outputs are largest? For some texts the
MoE-block inputs ``x`` of each layer are captured with a forward pre-hook on ``lm.block(layer)``;
*every* routed expert is run on them (:func:`~workbench.probes.expert_outputs.expert_outputs`),
and two rankings of the ``E`` experts are compared per token: by the L2 norm of the expert's output
``‖Y_e(x)‖`` (rank 0 = largest), and by the router (rank 0 = its first choice).

The router's ranking is by the family's *selection* score (:func:`workbench.kernels.scores`): for
sigmoid families (DeepSeek-V3, GLM-4-MoE) that includes the per-expert selection bias, which decides
which experts are chosen but not their weights. Ranking by weights or raw logits there would be
wrong.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.analysis import expert_output_norms, norm_rank_table
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> norms = expert_output_norms(lm, ["The quick brown fox"], progress=False)
    >>> sorted(norms.columns)[:4], len(norms) == 2 * norms.t.nunique() * lm.num_experts
    (['chosen', 'doc', 'expert', 'label'], True)
    >>> table = norm_rank_table(norms)
    >>> table.groupby(["layer", "router_rank"]).share.sum().round(6).unique().tolist()
    [1.0]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.kernels import scores as selection_scores
from workbench.probes.expert_outputs import expert_outputs


class _Capture:
    """Block inputs (pre-hook) and router logits/decisions (probe listener) of one forward pass."""

    def __init__(self, lm, layers):
        self.lm, self.layers = lm, list(layers)
        self.x: dict[int, torch.Tensor] = {}
        self.logits: dict[int, torch.Tensor] = {}
        self.idx: dict[int, torch.Tensor] = {}
        self.handles = []

    def __enter__(self):
        for layer in self.layers:
            def pre_hook(module, args, kwargs, layer=layer):
                hidden = args[0] if args else kwargs.get("hidden_states", next(iter(kwargs.values())))
                self.x[layer] = hidden.detach().reshape(-1, hidden.shape[-1])
            self.handles.append(self.lm.block(layer).register_forward_pre_hook(pre_hook, with_kwargs=True))
        self.lm.probes.add_listener(self)
        return self

    def __call__(self, layer, logits, decision):
        if layer in self.layers:
            self.logits[layer] = logits.detach()
            self.idx[layer] = torch.where(decision.valid, decision.idx, torch.full_like(decision.idx, -1))

    def __exit__(self, *exc):
        self.lm.probes.remove_listener(self)
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """``[T, E]`` rank of every entry within its row, 0 = largest (ties: lower expert id first)."""
    order = torch.argsort(-values.float(), dim=-1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(values.shape[1], device=values.device).expand_as(order).contiguous())
    return ranks


@torch.no_grad()
def expert_output_norms(lm, texts, labels=None, *, layers=None, max_tokens: int = 2048,
                        max_length: int = 256, batch_size: int = 8, chunk: int = 1024,
                        progress: bool = True) -> pd.DataFrame:
    """Every expert's output norm on recorded block inputs, with the router's rank of that expert.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        texts: list of strings.
        labels: optional label per text.
        layers: decoder-layer indices (default: every MoE layer).
        max_tokens: stop after this many tokens (cost grows as ``tokens × E`` expert calls per layer).
        max_length: texts are truncated to this many tokens.
        batch_size: texts per forward pass.
        chunk: tokens per :func:`expert_outputs` call (bounds memory at ``chunk × E × H``).
        progress: show a progress bar.

    Returns:
        One row per (layer, token, expert): ``layer``, ``t`` (token index in this run), ``doc``,
        ``pos``, ``token_id``, ``token``, ``label``, ``expert``, ``norm`` (L2 norm of the expert's
        output, float32), ``score`` (router selection score), ``router_rank``, ``norm_rank``
        (0 = first), ``chosen`` (the expert was in the token's actual top-k).
    """
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    texts = list(texts)
    if not texts:
        raise ValueError("texts is empty: give at least one text")
    labels = [None] * len(texts) if labels is None else list(labels)
    if len(labels) != len(texts):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    layers = list(lm.moe_layers) if layers is None else [int(x) for x in layers]
    for layer in layers:
        if layer not in lm.moe_layers:
            raise ValueError(f"layer {layer} is not an MoE layer; MoE layers: {lm.moe_layers}")
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    frames, seen = [], 0
    bar = tqdm(total=max_tokens, desc="expert norms", unit="tok", disable=not progress)
    for start in range(0, len(texts), batch_size):
        if seen >= max_tokens:
            break
        docs = list(range(start, min(start + batch_size, len(texts))))
        enc = [lm.tokenizer(texts[d])["input_ids"][:max_length] for d in docs]
        width = max(len(e) for e in enc)
        ids = torch.full((len(enc), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(enc), width), dtype=torch.long)
        for row, e in enumerate(enc):
            ids[row, :len(e)] = torch.tensor(e, dtype=torch.long)
            mask[row, :len(e)] = 1
        with _Capture(lm, layers) as cap:
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
        keep = mask.reshape(-1).bool()
        take = min(int(keep.sum()), max_tokens - seen)
        token_ids = ids.reshape(-1)[keep][:take].numpy()
        doc = np.repeat(docs, [len(e) for e in enc])[:take]
        pos = np.concatenate([np.arange(len(e)) for e in enc])[:take]
        for layer in layers:
            frames.append(_layer_frame(lm, layer, cap, keep, take, chunk, seen, token_ids, doc, pos,
                                       labels))
        seen += take
        bar.update(take)
    bar.close()
    return pd.concat(frames, ignore_index=True).sort_values(["layer", "t", "expert"], kind="stable") \
        .reset_index(drop=True)


def _layer_frame(lm, layer, cap, keep, take, chunk, seen, token_ids, doc, pos, labels):
    keep = keep.to(cap.x[layer].device)
    x = cap.x[layer][keep][:take]
    logits = cap.logits[layer][keep.to(cap.logits[layer].device)][:take]
    idx = cap.idx[layer][keep.to(cap.idx[layer].device)][:take]
    norms = torch.cat([expert_outputs(lm, layer, x[s:s + chunk]).float().norm(dim=-1)
                       for s in range(0, x.shape[0], chunk)])  # [T, E]
    bias = lm.selection_bias(layer)
    choice, _ = selection_scores(logits, lm.rule, None if bias is None else bias.to(logits.device))
    router_rank, norm_rank = _ranks(choice), _ranks(norms)
    num_experts = lm.num_experts
    chosen = torch.zeros((take, num_experts), dtype=torch.bool, device=idx.device)
    valid = idx >= 0
    chosen.scatter_(1, idx.clamp_min(0), valid)
    text = {int(t): lm.tokenizer.decode([int(t)]) for t in np.unique(token_ids)}
    def rep(a):
        return np.repeat(a, num_experts)

    return pd.DataFrame({
        "layer": layer, "t": rep(np.arange(seen, seen + take, dtype=np.int64)), "doc": rep(doc),
        "pos": rep(pos), "token_id": rep(token_ids.astype(np.int64)),
        "token": rep(np.array([text[int(t)] for t in token_ids], dtype=object)),
        "label": rep(np.array([labels[d] for d in doc], dtype=object)),
        "expert": np.tile(np.arange(num_experts, dtype=np.int64), take),
        "norm": norms.cpu().numpy().reshape(-1).astype(np.float32),
        "score": choice.float().cpu().numpy().reshape(-1),
        "router_rank": router_rank.cpu().numpy().reshape(-1).astype(np.int64),
        "norm_rank": norm_rank.cpu().numpy().reshape(-1).astype(np.int64),
        "chosen": chosen.cpu().numpy().reshape(-1)})


def norm_rank_table(norms: pd.DataFrame) -> pd.DataFrame:
    """Rank-vs-rank table: how often the router's rank-``r`` expert has output-norm rank ``n``.

    Args:
        norms: the output of :func:`expert_output_norms`.

    Returns:
        One row per (layer, router_rank, norm_rank), zeros included: ``count`` and ``share`` (of
        the router-rank row; each row sums to 1). If the router followed output norms, the mass would
        sit on the diagonal.
    """
    num_experts = int(norms.expert.max()) + 1
    frames = []
    for layer, sub in norms.groupby("layer", sort=True):
        flat = sub.router_rank.to_numpy() * num_experts + sub.norm_rank.to_numpy()
        table = np.bincount(flat, minlength=num_experts * num_experts).reshape(num_experts, num_experts)
        row = table.sum(axis=1, keepdims=True)
        share = np.divide(table, row, out=np.zeros(table.shape), where=row > 0)
        r, n = np.meshgrid(np.arange(num_experts), np.arange(num_experts), indexing="ij")
        frames.append(pd.DataFrame({"layer": int(layer), "router_rank": r.reshape(-1), "norm_rank": n.reshape(-1),
                                    "count": table.reshape(-1), "share": share.reshape(-1)}))
    return pd.concat(frames, ignore_index=True)


def norm_rank_summary(norms: pd.DataFrame) -> pd.DataFrame:
    """Per layer: ``top1_is_largest`` (share of tokens whose router-first expert has the largest
    output), ``chosen_in_top_k`` (share of chosen experts among the ``k`` largest outputs),
    ``spearman`` (mean per-token rank correlation between the two rankings), ``chance`` (``1/E``).
    """
    num_experts = int(norms.expert.max()) + 1
    rows = []
    for layer, sub in norms.groupby("layer", sort=True):
        r = sub.router_rank.to_numpy().reshape(-1, num_experts).astype(np.float64)
        n = sub.norm_rank.to_numpy().reshape(-1, num_experts).astype(np.float64)
        chosen = sub.chosen.to_numpy().reshape(-1, num_experts)
        k = max(int(chosen.sum(axis=1).max()), 1)
        top1 = (n[r == 0] == 0).mean()
        in_top = (n[chosen] < k).mean() if chosen.any() else np.nan
        d2 = ((r - n) ** 2).sum(axis=1)
        spearman = 1 - 6 * d2 / (num_experts * (num_experts ** 2 - 1)) if num_experts > 1 else np.ones(len(r))
        rows.append({"layer": int(layer), "tokens": len(r), "top1_is_largest": float(top1),
                     "chosen_in_top_k": float(in_top), "spearman": float(spearman.mean()),
                     "chance": 1.0 / num_experts})
    return pd.DataFrame(rows)


def expert_norm_stats(norms: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, expert): ``mean_norm``, ``median_norm``, ``chosen_mean_norm`` (when routed
    there), ``largest_share`` (share of tokens on which this expert's output is the largest),
    ``mean_router_rank``, ``chosen_share``."""
    grouped = norms.assign(largest=norms.norm_rank == 0,
                           chosen_norm=norms.norm.where(norms.chosen)).groupby(["layer", "expert"])
    return pd.DataFrame({
        "mean_norm": grouped.norm.mean(), "median_norm": grouped.norm.median(),
        "chosen_mean_norm": grouped.chosen_norm.mean(), "largest_share": grouped.largest.mean(),
        "mean_router_rank": grouped.router_rank.mean(), "chosen_share": grouped.chosen.mean(),
    }).reset_index()
