"""Recombine: layer outputs and reconstruction losses from cached per-expert outputs.

With every candidate expert's output ``Y [T, C, H]`` cached (weight 1, before routing weights), the
routed output of any routing restricted to the candidates is a gather and a weighted sum:
``out_r[t] = shared[t] + sum_j w_r[t, j] * Y[t, pos(idx_r[t, j])]``. The reconstruction loss against
the cached output is the Frobenius norm ``||out_r - y||_F`` (not squared), accumulated in float64.

For the loss alone there is a faster exact form: with per-token Gram matrices
``G_t = Y_t Y_t^T [C, C]``, ``c_t = Y_t (shared_t - y_t)`` and ``n_t = ||shared_t - y_t||^2`` (all
float64, computed once), ``loss_r^2 = sum_t (w^T G_t w + 2 w . c_t + n_t)`` over each token's ``k``
slots: ``O(R T k^2)`` instead of ``O(R T k H)``. Given the unedited routing as ``base``, only the
(routing, token) rows that differ from it are computed; the others reuse the base's per-token error.

Example:
    >>> import torch
    >>> from workbench.kernels.plans import PlanDecisions
    >>> from workbench.kernels.recombine import recombine_torch
    >>> Y = torch.randn(3, 4, 8)                  # T=3 tokens, C=E=4 experts, H=8
    >>> idx = torch.tensor([[[0, 1]] * 3])        # R=1 plan
    >>> d = PlanDecisions(idx, torch.full((1, 3, 2), 0.5), torch.ones(1, 3, 2, dtype=torch.bool))
    >>> target = 0.5 * (Y[:, 0] + Y[:, 1])
    >>> out, loss = recombine_torch(Y, None, d, None, target)
    >>> float(loss[0]) < 1e-6, tuple(out.shape)
    (True, (1, 3, 8))
"""

from __future__ import annotations

import torch

# elements of the largest temporary per chunk of plans
CHUNK_ELEMENTS = 1 << 24
# "auto" uses the Gram form only while its per-token matrices stay below this size
GRAM_BYTES = 2 * 2 ** 30


class OutsideCacheError(ValueError):
    """A routing needs an expert whose output is not in the cache."""


def slot_lookup(cand: torch.Tensor | None, num_tokens: int, num_cols: int, num_experts: int,
                device) -> torch.Tensor:
    """``[T, E]`` column of each expert in each token's candidate list (-1 = not cached)."""
    if cand is None:
        return torch.arange(num_cols, device=device).expand(num_tokens, num_cols)
    lookup = torch.full((num_tokens, num_experts), -1, dtype=torch.long, device=device)
    cols = torch.arange(cand.shape[1], device=device).expand(num_tokens, -1)
    return lookup.scatter_(1, cand.long(), cols)


def positions(decisions, cand, num_cols: int) -> torch.Tensor:
    """``[R, T, k]`` cache column of every slot; raises :class:`OutsideCacheError` for a valid slot
    whose expert is not cached (the message names the routing, token and expert)."""
    r, t, k = decisions.idx.shape
    idx = decisions.idx.long()
    if cand is None:
        pos = torch.where(idx < num_cols, idx, torch.full_like(idx, -1))
    else:
        num_experts = max(int(cand.max()), int(idx.max())) + 1
        lookup = slot_lookup(cand, t, num_cols, num_experts, idx.device)
        pos = lookup.gather(1, idx.permute(1, 0, 2).reshape(t, r * k)).view(t, r, k).permute(1, 0, 2)
    missing = decisions.valid & (pos < 0)
    if bool(missing.any()):
        plans = missing.flatten(1).any(dim=1).nonzero().squeeze(1).tolist()
        p0, t0, j0 = (int(v) for v in missing.nonzero()[0])
        raise OutsideCacheError(
            f"{len(plans)} routing(s) (e.g. #{plans[0]}) need experts outside the cached candidates "
            f"(#{p0} sends token {t0} to expert {int(idx[p0, t0, j0])}, which is not among its "
            f"{num_cols} cached experts). Capture the cache with candidates='all' or a larger C, "
            "or use replay(), which recomputes experts from the model's weights.")
    return pos.clamp_min(0)


def _chunks(r: int, per_plan: int):
    step = max(1, CHUNK_ELEMENTS // max(1, per_plan))
    for s in range(0, r, step):
        yield slice(s, min(r, s + step))


def _outputs(Y, pos, w):
    """``[Rc, T, H]`` float32 routed outputs for one chunk of plans."""
    rc, t, k = pos.shape
    c = Y.shape[1]
    Yf = Y.float()
    if c <= max(32, 4 * k):  # dense weights and one batched matmul per token
        dense = torch.zeros(t, rc, c, dtype=torch.float32, device=Y.device)
        dense.scatter_add_(2, pos.permute(1, 0, 2), w.permute(1, 0, 2))
        return torch.bmm(dense, Yf).permute(1, 0, 2)
    tok = torch.arange(t, device=Y.device)[None, :]
    out = w[:, :, 0, None] * Yf[tok, pos[:, :, 0]]
    for j in range(1, k):
        out += w[:, :, j, None] * Yf[tok, pos[:, :, j]]
    return out


def _gram(Y, shared, target):
    """Per-token ``G [T, C, C]``, ``c [T, C]`` and ``n [T]`` (float64)."""
    Y64 = Y.double()
    base = -target.double() if shared is None else shared.double() - target.double()
    G = torch.bmm(Y64, Y64.transpose(1, 2))
    c = torch.bmm(Y64, base.unsqueeze(2)).squeeze(2)
    return G, c, (base * base).sum(dim=1)


def _gram_rows(G, c, n, toks, pos, w):
    """Squared error of rows ``(token toks[i], slots pos[i] / w[i])``: ``[N]`` float64."""
    cols, k = G.shape[1], pos.shape[1]
    out = torch.empty(toks.shape[0], dtype=torch.float64, device=G.device)
    step = max(1, CHUNK_ELEMENTS // (k * k + k))
    for s in range(0, toks.shape[0], step):
        t, p, w64 = toks[s:s + step], pos[s:s + step], w[s:s + step].double()
        lin = p[:, :, None] * cols + p[:, None, :]
        Gpp = G.reshape(G.shape[0], cols * cols)[t[:, None, None], lin]
        quad = torch.einsum("ni,nij,nj->n", w64, Gpp, w64)
        cross = (w64 * c[t[:, None], p]).sum(dim=1)
        out[s:s + step] = quad + 2 * cross + n[t]
    return out


def _gram_losses(gram, pos, w, base):
    """``[R]`` losses; rows equal to ``base`` (the unedited routing) reuse its per-token errors."""
    G, c, n = gram
    r, t, k = pos.shape
    dev = G.device
    if base is None or base[0].shape[1] != k:
        rows = torch.arange(r * t, device=dev)
        err = _gram_rows(G, c, n, rows % t, pos.reshape(-1, k), w.reshape(-1, k))
        return err.view(r, t).sum(dim=1).clamp_min(0).sqrt()
    base_pos, base_w = base
    tok = torch.arange(t, device=dev)
    per_token = _gram_rows(G, c, n, tok, base_pos, base_w)
    changed = ((pos != base_pos) & (w != 0)) | (w != base_w)
    plan_i, tok_i = changed.any(dim=2).nonzero(as_tuple=True)
    delta = _gram_rows(G, c, n, tok_i, pos[plan_i, tok_i], w[plan_i, tok_i]) - per_token[tok_i]
    total = per_token.sum().expand(r).clone().index_add_(0, plan_i, delta)
    return total.clamp_min(0).sqrt()


def _one(d, cand_rows, cols):
    """Cache columns ``[N, k]`` and weights of a ``[N, k]`` Decision (rows of tokens with ``cand_rows``)."""
    from workbench.kernels.plans import PlanDecisions

    pos = positions(PlanDecisions(d.idx[None], d.w[None], d.valid[None]), cand_rows, cols)[0]
    return pos, torch.where(d.valid, d.w.float(), torch.zeros_like(d.w, dtype=torch.float32))


def _sparse_gram_losses(gram, sparse, decisions, cand, cols, r):
    """Losses from the sparse form of many masks: base rows once, each distinct changed row once."""
    G, c, n = gram
    base, rows, row_tok = sparse["base"], sparse["rows"], sparse["row_tok"]
    try:
        base_pos, base_w = _one(base, cand, cols)
        row_pos, row_w = _one(rows, None if cand is None else cand[row_tok], cols)
    except OutsideCacheError:
        positions(decisions, cand, cols)  # raises again, naming the routing and token
        raise
    tok = torch.arange(G.shape[0], device=G.device)
    per_token = _gram_rows(G, c, n, tok, base_pos, base_w)
    per_row = _gram_rows(G, c, n, row_tok, row_pos, row_w)
    delta = per_row[sparse["row_i"]] - per_token[sparse["tok_i"]]
    total = per_token.sum().expand(r).clone().index_add_(0, sparse["plan_i"], delta)
    return total.clamp_min(0).sqrt()


def recombine_torch(Y: torch.Tensor, cand: torch.Tensor | None, decisions, shared: torch.Tensor | None,
                    target: torch.Tensor | None, outputs: bool = True, loss: bool = True,
                    method: str = "auto", base=None):
    """Outputs and/or losses of ``R`` routings from cached per-expert outputs (torch path).

    Args:
        Y: ``[T, C, H]`` per-expert outputs (weight 1).
        cand: ``[T, C]`` expert id of each column, or None when column ``c`` is expert ``c``.
        decisions: :class:`~workbench.kernels.plans.PlanDecisions` ``[R, T, k]``; when it carries its
            sparse form (many expert masks), losses are computed per distinct changed row.
        shared: ``[T, H]`` routing-independent part of the block output, or None.
        target: ``[T, H]`` cached block output (needed for ``loss``).
        outputs: return ``[R, T, H]`` float32 outputs.
        loss: return ``[R]`` float64 Frobenius norms ``||out_r - target||``.
        method: ``"gram"``, ``"direct"`` or ``"auto"`` (Gram when only losses are asked for many plans
            and the ``[T, C, C]`` float64 Gram matrices fit in 2 GiB).
        base: optional unedited routing (a :class:`~workbench.kernels.Decision` ``[T, k]``); with the
            Gram method, rows equal to it reuse its per-token errors (much less work for masks).

    Returns:
        ``(outputs or None, loss or None)``.
    """
    if method not in ("auto", "gram", "direct"):
        raise ValueError(f"method must be 'auto', 'gram' or 'direct', got {method!r}")
    if loss and target is None:
        raise ValueError("the loss needs the cached block output (target)")
    r, t, k = decisions.shape
    cols, h = Y.shape[1], Y.shape[2]
    if Y.shape[0] != t:
        raise ValueError(f"Y has {Y.shape[0]} tokens but the routings have {t}")
    if method == "auto":
        small = t * cols * cols * 8 <= GRAM_BYTES
        method = "gram" if (not outputs and r * k >= cols and small) else "direct"
    sparse = getattr(decisions, "sparse", None)
    if loss and not outputs and method == "gram" and sparse is not None:
        return None, _sparse_gram_losses(_gram(Y, shared, target), sparse, decisions, cand, cols, r)
    pos = positions(decisions, cand, cols)
    w = torch.where(decisions.valid, decisions.w.float(), torch.zeros_like(decisions.w, dtype=torch.float32))
    out_all = torch.empty(r, t, h, dtype=torch.float32, device=Y.device) if outputs else None
    losses = None
    if loss and method == "gram":
        base_pw = None if base is None else _one(base, cand, cols)
        losses = _gram_losses(_gram(Y, shared, target), pos, w, base_pw)
    if outputs or (loss and losses is None):
        direct = torch.empty(r, dtype=torch.float64, device=Y.device) if loss and losses is None else None
        for sl in _chunks(r, t * h):
            out = _outputs(Y, pos[sl], w[sl])
            if shared is not None:
                out = out + shared.float()
            if outputs:
                out_all[sl] = out
            if direct is not None:
                diff = out - target.float()
                direct[sl] = torch.linalg.vector_norm(diff, dim=(1, 2), dtype=torch.float64)
        losses = direct if direct is not None else losses
    return out_all, losses
