"""Measurements of the demo model: held-out loss, unigram baseline, routing shares, arithmetic.

Everything here works on any causal LM with Qwen3-MoE-style blocks (``model.model.layers[i].mlp
.gate`` returning ``(router_logits, top_k_weights, top_k_index)``) and plain forward hooks; the
model card (:mod:`workbench.demo.card`) and the tests call these functions.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F


def document_ids(tokenizer, text: str, max_tokens: int = 512) -> list[int]:
    """``<|bos|> text <|eos|>`` token ids, cut to ``max_tokens`` (the training format).

    Example:
        >>> from workbench.demo import load_demo
        >>> _, tok = load_demo()
        >>> ids = document_ids(tok, "12 + 3 = 15")
        >>> ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        True
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id][:max_tokens]


@torch.no_grad()
def profile_documents(model, tokenizer, rows: list[dict], max_tokens: int = 512) -> dict[str, dict]:
    """Held-out loss and routing of labelled documents, per domain, in one forward pass each.

    Args:
        model: A Qwen3-MoE-style causal LM.
        tokenizer: Its tokenizer.
        rows: ``[{"text": ..., "label": ...}]``.
        max_tokens: Cut each document to this many tokens.

    Returns:
        ``{domain: {"loss": nats/token, "tokens": predicted tokens, "counts": (layers, E) routed
        token counts, "shares": (layers, E) array}}`` where ``shares[l, e]`` is the share of the domain's tokens whose top-k at layer ``l``
        contains expert ``e`` (each row sums to k; uniform is k/E).

    Example:
        >>> from workbench.demo import load_demo
        >>> model, tok = load_demo()
        >>> p = profile_documents(model, tok, [{"text": "def f(x):\\n    return x", "label": "code"}])
        >>> p["code"]["shares"].shape
        (4, 16)
    """
    layers = model.model.layers
    n_experts = model.config.num_experts
    current: list[torch.Tensor] = []
    hooks = [layer.mlp.gate.register_forward_hook(
        lambda _m, _i, out: current.append(out[2].reshape(-1))) for layer in layers]
    acc = defaultdict(lambda: {"nll": 0.0, "tokens": 0, "routed": 0,
                               "counts": np.zeros((len(layers), n_experts))})
    try:
        for row in rows:
            ids = torch.tensor([document_ids(tokenizer, row["text"], max_tokens)])
            if ids.shape[1] < 2:
                continue
            current.clear()
            logits = model(input_ids=ids, use_cache=False).logits[0, :-1].float()
            a = acc[row["label"]]
            a["nll"] += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            a["tokens"] += ids.shape[1] - 1
            a["routed"] += ids.shape[1]
            for li, idx in enumerate(current):
                a["counts"][li] += np.bincount(idx.numpy(), minlength=n_experts)
    finally:
        for h in hooks:
            h.remove()
    return {d: {"loss": a["nll"] / a["tokens"], "tokens": a["tokens"], "counts": a["counts"],
                "shares": a["counts"] / a["routed"]} for d, a in acc.items()}


def slot_shares(profile: dict[str, dict]) -> np.ndarray:
    """Share of each layer's routing slots per expert, pooled over domains: ``(layers, E)``.

    Rows sum to 1; uniform is ``1/E``. An expert near 0 in some row is dead in that layer.

    Example:
        >>> slot_shares({"a": {"counts": np.array([[3.0, 1.0]])}}).tolist()
        [[0.75, 0.25]]
    """
    total = sum(p["counts"] for p in profile.values())
    return total / total.sum(axis=1, keepdims=True)


def unigram_losses(counts: dict, tokenizer, rows: list[dict], max_tokens: int = 512
                   ) -> dict[str, float]:
    """Loss (nats/token) of a per-domain unigram model on the same targets as the LM.

    The unigram model of a domain is its training-split token frequencies with add-one
    smoothing over the vocabulary (``counts`` as from ``load_unigram_counts()``).

    Example:
        >>> from workbench.demo import load_demo
        >>> from workbench.demo.heldout import load_unigram_counts
        >>> _, tok = load_demo()
        >>> u = unigram_losses(load_unigram_counts(), tok, [{"text": "1 + 1 = 2", "label": "arithmetic"}])
        >>> 0 < u["arithmetic"] < 10
        True
    """
    vocab = counts["vocab_size"]
    logp = {}
    for domain, c in counts["domains"].items():
        arr = np.ones(vocab)
        for k, v in c.items():
            arr[int(k)] += v
        logp[domain] = np.log(arr / arr.sum())
    nll, n = defaultdict(float), defaultdict(int)
    for row in rows:
        targets = document_ids(tokenizer, row["text"], max_tokens)[1:]
        nll[row["label"]] -= float(logp[row["label"]][targets].sum())
        n[row["label"]] += len(targets)
    return {d: nll[d] / n[d] for d in nll}


def parse_answer(text: str) -> str:
    """The first line of a generated continuation, stripped (``' 82\\n11 + 4'`` -> ``'82'``).

    Example:
        >>> parse_answer(" 82\\n11 + 4 = 15")
        '82'
    """
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def arithmetic_accuracy(model, tokenizer, problems: list[dict], batch_size: int = 100
                        ) -> tuple[float, list[str]]:
    """Exact-match accuracy of greedy answers to ``{"prompt", "answer"}`` problems.

    Prompts are fed as ``<|bos|> prompt``; prompts of equal token length are batched.

    Example:
        >>> from workbench.demo import load_demo
        >>> model, tok = load_demo()
        >>> acc, preds = arithmetic_accuracy(model, tok, [{"prompt": "20 + 30 =", "answer": "50"}])
        >>> 0.0 <= acc <= 1.0 and len(preds) == 1
        True
    """
    encoded = [[tokenizer.bos_token_id, *tokenizer(p["prompt"], add_special_tokens=False)["input_ids"]]
               for p in problems]
    preds: list[str | None] = [None] * len(problems)
    by_len = defaultdict(list)
    for i, ids in enumerate(encoded):
        by_len[len(ids)].append(i)
    for _, idxs in sorted(by_len.items()):
        for s in range(0, len(idxs), batch_size):
            chunk = idxs[s:s + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
            for i, row in zip(chunk, out[:, ids.shape[1]:]):
                preds[i] = parse_answer(tokenizer.decode(row, skip_special_tokens=True))
    correct = sum(p == q["answer"] for p, q in zip(preds, problems))
    return correct / max(1, len(problems)), [p or "" for p in preds]


@torch.no_grad()
def greedy_continuation(model, tokenizer, prompt: str, max_new_tokens: int = 40) -> str:
    """Greedy continuation of ``<|bos|> prompt`` (stops at ``<|eos|>``).

    Example:
        >>> from workbench.demo import load_demo
        >>> model, tok = load_demo()
        >>> isinstance(greedy_continuation(model, tok, "import os", max_new_tokens=4), str)
        True
    """
    ids = torch.tensor([[tokenizer.bos_token_id, *tokenizer(prompt, add_special_tokens=False)["input_ids"]]])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def forward_latency(model, n_tokens: int = 512, repeats: int = 5) -> float:
    """Median seconds of one forward pass over ``n_tokens`` random tokens (batch 1, no cache).

    Example:
        >>> from workbench.demo import load_demo
        >>> model, _ = load_demo()
        >>> forward_latency(model, n_tokens=16, repeats=1) > 0
        True
    """
    ids = torch.randint(3, model.config.vocab_size, (1, n_tokens),
                        generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, use_cache=False)  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        model(input_ids=ids, use_cache=False)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def top_experts(shares: np.ndarray, k: int = 3) -> list[tuple[int, float]]:
    """The ``k`` experts with the largest share in a ``(E,)`` share vector, largest first.

    Example:
        >>> top_experts(np.array([0.1, 0.5, 0.2]), k=2)
        [(1, 0.5), (2, 0.2)]
    """
    order = np.argsort(-shares, kind="stable")[:k]
    return [(int(e), float(shares[e])) for e in order]


def perplexity(loss: float) -> float:
    """``exp(loss)``.

    Example:
        >>> round(perplexity(0.0), 1)
        1.0
    """
    return math.exp(loss)
