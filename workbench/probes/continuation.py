"""Greedy continuations appended to prompts before recording (``wb.record(..., max_new_tokens=N)``).

A recording with generated tokens is the recording of each prompt followed by its own greedy
continuation: the model is causal, so the routing of a generated token is the same whether it is
computed while decoding or in one pass over the finished sequence. Continuations are made batch by
batch with the same rows the recording uses, under the edits in force, so per-row edits (``rows=``)
apply to the same prompts in both phases. Generation never stops early (an end-of-sequence token is
kept and generation goes on), so every document gets exactly ``N`` new tokens.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def continue_units(lm, units, new_tokens: int, batch_size: int, pad_id: int, progress: bool = True):
    """``units`` (``(doc, start, ids)``, one per document) with ``new_tokens`` greedy tokens appended.

    Args:
        lm: a :class:`~workbench.loading.MoEModel`, or an engine model with ``generate``.
        units: one ``(doc, 0, prompt ids)`` per document.
        new_tokens: tokens to generate per document (> 0).
        batch_size: prompts per batch (the recording's).
        pad_id: the padding token id.
        progress: show a progress bar.

    Returns:
        The units with the continuations appended to their ids.
    """
    out = []
    bar = tqdm(total=len(units), desc="generating", unit="doc", disable=not progress)
    try:
        for start in range(0, len(units), batch_size):
            batch = units[start:start + batch_size]
            if hasattr(lm, "generate") and getattr(lm, "backend", None) == "vllm":
                made = lm.generate([list(u[2]) for u in batch], new_tokens, temperature=0.0, ignore_eos=True)
                tails = [g.token_ids for g in made]
            else:
                tails = greedy_tails(lm, [list(u[2]) for u in batch], new_tokens, pad_id)
            out += [(doc, begin, list(ids) + list(tail)) for (doc, begin, ids), tail in zip(batch, tails)]
            bar.update(len(batch))
    finally:
        bar.close()
    return out


@torch.no_grad()
def greedy_tails(lm, prompts: list[list[int]], new_tokens: int, pad_id: int) -> list[list[int]]:
    """Greedy continuations of right-padded ``prompts`` in one batch, by a full forward per step
    (no cache: the obvious computation, meant for short continuations).

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> lm = wb.wrap(*tiny_model("olmoe"))
        >>> [len(t) for t in greedy_tails(lm, [[1, 5, 6], [1, 7]], 3, pad_id=0)]
        [3, 3]
    """
    seqs = [list(p) for p in prompts]
    for _ in range(new_tokens):
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, s in enumerate(seqs):
            ids[row, :len(s)] = torch.tensor(s)
            mask[row, :len(s)] = 1
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False).logits
        last = torch.tensor([len(s) - 1 for s in seqs], device=logits.device)
        nxt = logits[torch.arange(len(seqs), device=logits.device), last].argmax(-1).tolist()
        for s, t in zip(seqs, nxt):
            s.append(int(t))
    return [s[len(p):] for s, p in zip(seqs, prompts)]
