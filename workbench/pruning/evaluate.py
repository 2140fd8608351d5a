"""Evaluating pruned and skipping models: held-out perplexity per domain, expert calls, speed.

:func:`perplexity` runs labelled documents through a model (under optional edits, e.g. a skip
threshold) and returns, per domain, the mean next-token loss, the perplexity and the expert calls per
token actually routed (counted at the router seam, so skipped slots are not counted).
:func:`compare` does that for several models/conditions and returns one wide table; :func:`speed`
times forward passes side by side.

Documents are fed as ``<bos> text <eos>`` when the tokenizer has both tokens (the demo's training
format), cut to ``max_tokens``.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.pruning.evaluate import perplexity
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> rows = [{"text": "The quick brown fox jumps.", "label": "en"}, {"text": "def f(x): return x", "label": "code"}]
    >>> table = perplexity(lm, rows)
    >>> table.domain.tolist(), table.calls_per_token.tolist()
    (['code', 'en'], [4.0, 4.0])
    >>> with wb.edit(lm, wb.Skip(1.0)):
    ...     float(perplexity(lm, rows).calls_per_token.max()) < 4
    True
"""

from __future__ import annotations

import time
from contextlib import ExitStack

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F


def document_ids(tokenizer, text: str, max_tokens: int = 512) -> list[int]:
    """``<bos> text <eos>`` ids (or the tokenizer's own special tokens when it lacks them), cut."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and eos is not None:
        ids = [bos, *tokenizer(text, add_special_tokens=False)["input_ids"], eos]
    else:
        ids = tokenizer(text)["input_ids"]
    return ids[:max_tokens]


@torch.no_grad()
def perplexity(lm, rows, *, edits=(), max_tokens: int = 512, batch_size: int = 8) -> pd.DataFrame:
    """Per-domain held-out loss, perplexity and routed expert calls per token.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        rows: ``[{"text": ..., "label": ...}]`` (label = domain).
        edits: edit specs applied during the pass (e.g. a ``wb.Skip``).
        max_tokens: tokens per document at most.
        batch_size: documents per forward pass.

    Returns:
        One row per domain (sorted): ``domain``, ``docs``, ``tokens`` (predicted), ``loss`` (nats per
        token), ``ppl``, ``calls_per_token`` (expert calls summed over MoE layers).
    """
    from workbench.probes.edits import edit

    docs = [(r.get("label"), document_ids(lm.tokenizer, r["text"], max_tokens)) for r in rows]
    docs = [(label, ids) for label, ids in docs if len(ids) >= 2]
    if not docs:
        raise ValueError("no document with at least two tokens to evaluate on")
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    acc: dict = {}
    now: dict = {}

    def listener(layer, logits, decision):  # expert calls of each batch row, padding excluded
        per_token = decision.valid.sum(dim=1).reshape(now["mask"].shape).cpu() * now["mask"]
        now["calls"] += per_token.sum(dim=1)

    with ExitStack() as stack:
        if edits:
            stack.enter_context(edit(lm, *edits))
        lm.probes.add_listener(listener)
        stack.callback(lm.probes.remove_listener, listener)
        for s in range(0, len(docs), batch_size):
            batch = docs[s:s + batch_size]
            width = max(len(ids) for _, ids in batch)
            ids = torch.full((len(batch), width), pad, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (_, d) in enumerate(batch):
                ids[row, :len(d)], mask[row, :len(d)] = torch.tensor(d), 1
            now["mask"], now["calls"] = mask, torch.zeros(len(batch), dtype=torch.long)
            logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False).logits
            nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(logits.device),
                                  reduction="none").cpu()
            target = mask[:, 1:].bool()
            for row, (label, d) in enumerate(batch):
                a = acc.setdefault(label, {"docs": 0, "tokens": 0, "nll": 0.0, "seen": 0, "calls": 0})
                a["docs"] += 1
                a["tokens"] += int(target[row].sum())
                a["nll"] += float(nll[row][target[row]].double().sum())
                a["seen"] += len(d)
                a["calls"] += int(now["calls"][row])
    out = [{"domain": label, "docs": a["docs"], "tokens": a["tokens"], "loss": a["nll"] / a["tokens"],
            "ppl": float(np.exp(a["nll"] / a["tokens"])), "calls_per_token": a["calls"] / a["seen"]}
           for label, a in acc.items()]
    return pd.DataFrame(out).sort_values("domain", key=lambda c: c.astype(str)).reset_index(drop=True)


def compare(conditions: dict, rows, *, max_tokens: int = 512, batch_size: int = 8,
            progress: bool = False) -> pd.DataFrame:
    """Perplexity per domain under several conditions, side by side.

    Args:
        conditions: ``{name: lm}`` or ``{name: (lm, [edit specs])}``.
        rows: labelled documents.
        progress: a progress bar over the conditions.

    Returns:
        Long table: ``condition``, ``domain``, ``ppl``, ``loss``, ``calls_per_token``, ``tokens``; plus
        one ``domain="mean"`` row per condition (mean of the domains' perplexities and calls).
    """
    from tqdm.auto import tqdm

    parts = []
    for name, cond in tqdm(list(conditions.items()), desc="perplexity", disable=not progress):
        lm, specs = (cond if isinstance(cond, tuple) else (cond, ()))
        table = perplexity(lm, rows, edits=tuple(specs or ()), max_tokens=max_tokens, batch_size=batch_size)
        mean = {"domain": "mean", "docs": int(table.docs.sum()), "tokens": int(table.tokens.sum()),
                "loss": float(table.loss.mean()), "ppl": float(table.ppl.mean()),
                "calls_per_token": float(table.calls_per_token.mean())}
        table = pd.concat([table, pd.DataFrame([mean])], ignore_index=True)
        table.insert(0, "condition", name)
        parts.append(table)
    return pd.concat(parts, ignore_index=True)


def ppl_table(long: pd.DataFrame) -> pd.DataFrame:
    """The perplexities of :func:`compare` as domain x condition (``mean`` last)."""
    wide = long.pivot(index="domain", columns="condition", values="ppl")
    order = [d for d in wide.index if d != "mean"] + (["mean"] if "mean" in wide.index else [])
    return wide.loc[order, list(dict.fromkeys(long.condition))]


def expert_parameters(lm) -> int:
    """Parameters of the routed experts and routers of all MoE layers."""
    total = 0
    for layer in lm.moe_layers:
        for module in (lm.experts(layer), lm.router(layer)):
            total += sum(p.numel() for p in module.parameters())
    return total


@torch.no_grad()
def speed(conditions: dict, *, tokens: int = 512, batch: int = 1, repeats: int = 5, seed: int = 0) -> pd.DataFrame:
    """Forward-pass time of several conditions on the same random tokens, interleaved.

    Args:
        conditions: ``{name: lm}`` or ``{name: (lm, [edit specs])}``; the first is the baseline.
        tokens: sequence length; ``batch``: sequences per pass.
        repeats: timed rounds (each condition once per round, in turn; the best time is kept).
        seed: seed of the random token ids.

    Returns:
        ``condition``, ``seconds`` (best), ``median_seconds``, ``speedup`` (baseline time / time).
    """
    from workbench.probes.edits import edit

    names = list(conditions)
    first = conditions[names[0]]
    vocab = int((first[0] if isinstance(first, tuple) else first).model.config.get_text_config().vocab_size)
    ids = torch.randint(3, vocab, (batch, tokens), generator=torch.Generator().manual_seed(seed))
    times = {n: [] for n in names}

    def run(cond):
        lm, specs = cond if isinstance(cond, tuple) else (cond, ())
        with ExitStack() as stack:
            if specs:
                stack.enter_context(edit(lm, *specs))
            start = time.perf_counter()
            lm.model(input_ids=ids.to(lm.device), use_cache=False)
            return time.perf_counter() - start

    for n in names:  # warm-up
        run(conditions[n])
    for _ in range(repeats):
        for n in names:
            times[n].append(run(conditions[n]))
    base = min(times[names[0]])
    return pd.DataFrame([{"condition": n, "seconds": min(times[n]), "median_seconds": float(np.median(times[n])),
                          "speedup": base / min(times[n])} for n in names])
