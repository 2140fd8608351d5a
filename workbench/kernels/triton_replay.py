"""Triton path of :func:`~workbench.kernels.grouped.grouped_experts`: a two-kernel grouped GEMM.

Schedule (torch, on the device, no host synchronisation): every ``(token, slot)`` pair that needs
work is sorted by expert (pairs of empty or zero-weight slots go to a tail that no tile covers), and
each expert with ``n`` pairs gets ``ceil(n / BM)`` row tiles. Experts with no pair get no tile, so
pruned and unused experts cost nothing. The grid is launched for the largest possible number of
tiles; programs past the real count return at once.

* ``_up`` — per tile and block of ``I`` columns: gathers the tile's token rows of ``x`` straight from
  memory (the row gather is fused into the GEMM's loads), multiplies by the expert's gate and up views
  (any strides: concatenated, interleaved, transposed or separate tensors), adds biases, applies the
  GLU (SiLU/GELU/ReLU, or GPT-OSS's clamped GLU) and stores ``h`` in sorted-pair order.
* ``_down`` — per tile and block of ``H`` columns: ``h @ down[e]`` plus bias, times the routing weight
  in the epilogue, stored at the pair's own row of a ``[T*k, H]`` buffer; slots are summed afterwards
  in float32 (deterministic, no atomics).

Llama-4 (``scale_input``) multiplies the gate/up accumulators by the weight instead (exact: the
projection is linear and has no bias there).

Kernels are defined on first use, never at import, so ``TRITON_INTERPRET=1`` set before the first
call runs them on CPU tensors (tests do this in a subprocess; the interpreter has no bfloat16).

Example:
    >>> from workbench.kernels.grouped import grouped_experts
    >>> # grouped_experts(x_cuda, ew, idx, w, backend="triton")  # needs CUDA (or TRITON_INTERPRET=1)
"""

from __future__ import annotations

import functools

import torch

from workbench.kernels.grouped import ACTIVATIONS, ExpertWeights, check_routing


@functools.lru_cache(maxsize=None)
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def _up(x_ptr, sx0, sx1, pairs_ptr, w_ptr, t_exp_ptr, t_start_ptr, t_end_ptr, n_tiles_ptr,
            g_ptr, sg0, sg1, sg2, u_ptr, su0, su1, su2, gb_ptr, sgb0, sgb1, ub_ptr, sub0, sub1,
            h_ptr, sh0, sh1, H, I, K_SLOTS, alpha, limit,
            ACT: tl.constexpr, SCALE_INPUT: tl.constexpr, HAS_GB: tl.constexpr, HAS_UB: tl.constexpr,
            IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        tile = tl.program_id(0)
        if tile < tl.load(n_tiles_ptr):
            e = tl.load(t_exp_ptr + tile).to(tl.int64)
            start = tl.load(t_start_ptr + tile)
            end = tl.load(t_end_ptr + tile)
            rm = start + tl.arange(0, BM)
            mrow = rm < end
            pair = tl.load(pairs_ptr + rm, mask=mrow, other=0).to(tl.int64)
            tok = pair // K_SLOTS
            rn = tl.program_id(1) * BN + tl.arange(0, BN)
            mn = rn < I
            rk = tl.arange(0, BK)
            acc_g = tl.zeros((BM, BN), dtype=tl.float32)
            acc_u = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, H, BK):
                kk = k0 + rk
                mk = kk < H
                a = tl.load(x_ptr + tok[:, None] * sx0 + kk[None, :] * sx1, mask=mrow[:, None] & mk[None, :], other=0.0)
                bmask = mk[:, None] & mn[None, :]
                bg = tl.load(g_ptr + e * sg0 + kk[:, None] * sg1 + rn[None, :] * sg2, mask=bmask, other=0.0)
                bu = tl.load(u_ptr + e * su0 + kk[:, None] * su1 + rn[None, :] * su2, mask=bmask, other=0.0)
                a = a.to(bg.dtype)
                if IEEE:
                    acc_g = tl.dot(a, bg, acc_g, input_precision="ieee")
                    acc_u = tl.dot(a, bu, acc_u, input_precision="ieee")
                else:
                    acc_g = tl.dot(a, bg, acc_g)
                    acc_u = tl.dot(a, bu, acc_u)
            if SCALE_INPUT:
                pw = tl.load(w_ptr + pair, mask=mrow, other=0.0).to(tl.float32)
                acc_g = acc_g * pw[:, None]
                acc_u = acc_u * pw[:, None]
            if HAS_GB:
                acc_g += tl.load(gb_ptr + e * sgb0 + rn * sgb1, mask=mn, other=0.0).to(tl.float32)[None, :]
            if HAS_UB:
                acc_u += tl.load(ub_ptr + e * sub0 + rn * sub1, mask=mn, other=0.0).to(tl.float32)[None, :]
            # the GLU, inlined (kernels are closures, so they cannot call other jit functions by name)
            if ACT == 0:  # silu
                h = acc_g * tl.sigmoid(acc_g) * acc_u
            elif ACT == 1:  # gelu (erf)
                h = 0.5 * acc_g * (1.0 + tl.erf(acc_g * 0.7071067811865476)) * acc_u
            elif ACT == 2:  # gelu (tanh approximation): 0.5 g (1 + tanh(y)) = g sigmoid(2y)
                y2 = 1.5957691216057308 * (acc_g + 0.044715 * acc_g * acc_g * acc_g)
                h = acc_g * tl.sigmoid(y2) * acc_u
            elif ACT == 3:  # relu
                h = tl.maximum(acc_g, 0.0) * acc_u
            else:  # GPT-OSS clamped GLU
                gc = tl.minimum(acc_g, limit)
                uc = tl.minimum(tl.maximum(acc_u, -limit), limit)
                h = (uc + 1.0) * (gc * tl.sigmoid(gc * alpha))
            tl.store(h_ptr + rm[:, None] * sh0 + rn[None, :] * sh1, h.to(h_ptr.dtype.element_ty),
                     mask=mrow[:, None] & mn[None, :])

    @triton.jit
    def _down(h_ptr, sh0, sh1, pairs_ptr, w_ptr, t_exp_ptr, t_start_ptr, t_end_ptr, n_tiles_ptr,
              d_ptr, sd0, sd1, sd2, db_ptr, sdb0, sdb1, y_ptr, sy0, sy1, H, I,
              SCALE_INPUT: tl.constexpr, HAS_DB: tl.constexpr, IEEE: tl.constexpr,
              BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        tile = tl.program_id(0)
        if tile < tl.load(n_tiles_ptr):
            e = tl.load(t_exp_ptr + tile).to(tl.int64)
            start = tl.load(t_start_ptr + tile)
            end = tl.load(t_end_ptr + tile)
            rm = start + tl.arange(0, BM)
            mrow = rm < end
            pair = tl.load(pairs_ptr + rm, mask=mrow, other=0).to(tl.int64)
            rn = tl.program_id(1) * BN + tl.arange(0, BN)
            mn = rn < H
            rk = tl.arange(0, BK)
            acc = tl.zeros((BM, BN), dtype=tl.float32)
            for k0 in range(0, I, BK):
                kk = k0 + rk
                mk = kk < I
                a = tl.load(h_ptr + rm[:, None] * sh0 + kk[None, :] * sh1, mask=mrow[:, None] & mk[None, :], other=0.0)
                b = tl.load(d_ptr + e * sd0 + kk[:, None] * sd1 + rn[None, :] * sd2,
                            mask=mk[:, None] & mn[None, :], other=0.0)
                a = a.to(b.dtype)
                if IEEE:
                    acc = tl.dot(a, b, acc, input_precision="ieee")
                else:
                    acc = tl.dot(a, b, acc)
            if HAS_DB:
                acc += tl.load(db_ptr + e * sdb0 + rn * sdb1, mask=mn, other=0.0).to(tl.float32)[None, :]
            if not SCALE_INPUT:
                pw = tl.load(w_ptr + pair, mask=mrow, other=0.0).to(tl.float32)
                acc = acc * pw[:, None]
            tl.store(y_ptr + pair[:, None] * sy0 + rn[None, :] * sy1, acc.to(y_ptr.dtype.element_ty),
                     mask=mrow[:, None] & mn[None, :])

    return _up, _down


def _pow2(n: int, lo: int, hi: int) -> int:
    p = lo
    while p < n and p < hi:
        p *= 2
    return p


def tile_schedule(ew: ExpertWeights, idx, w, valid, block_m: int):
    """Device-side schedule: sorted pairs, per-tile expert/row range, tile count (no host sync).

    Returns ``(pairs [S], tile_expert [n_max], tile_start, tile_end, n_tiles [1])`` with
    ``S = T * k`` and ``n_max = ceil(S / BM) + E`` (an upper bound of the number of tiles).
    """
    num_experts = ew.num_experts
    dev = idx.device
    s = idx.numel()
    keep = valid.reshape(-1)
    if not (ew.scale_input and ew.has_bias):
        keep = keep & (w.reshape(-1) != 0)
    key = torch.where(keep, idx.reshape(-1).long(), torch.full((s,), num_experts, dtype=torch.long, device=dev))
    key_sorted, pairs = torch.sort(key, stable=True)
    counts = torch.zeros(num_experts + 1, dtype=torch.long, device=dev)
    counts.scatter_add_(0, key_sorted, torch.ones_like(key_sorted))
    counts = counts[:num_experts]
    tiles = (counts + block_m - 1) // block_m
    tile_cum = torch.cumsum(tiles, 0)
    row_start = torch.cumsum(counts, 0) - counts
    n_max = (s + block_m - 1) // block_m + num_experts
    tile_ids = torch.arange(n_max, device=dev)
    t_exp = torch.searchsorted(tile_cum, tile_ids, right=True).clamp(max=num_experts - 1)
    first = tile_cum[t_exp] - tiles[t_exp]
    t_start = row_start[t_exp] + (tile_ids - first) * block_m
    t_end = row_start[t_exp] + counts[t_exp]
    n_tiles = tile_cum[-1:].to(torch.int32)
    return (pairs.to(torch.int32), t_exp.to(torch.int32), t_start.to(torch.int32), t_end.to(torch.int32),
            n_tiles)


def _config(avg_rows: float, interpreting: bool):
    if interpreting:
        return dict(BM=16, BN=32, BK=32), {}
    bm = _pow2(int(avg_rows), 16, 64)
    return dict(BM=bm, BN=64, BK=64), dict(num_warps=4, num_stages=3)


def _dummy(dev):
    return torch.zeros(1, 1, device=dev)


def grouped_experts_triton(x: torch.Tensor, ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor,
                           valid: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """Triton path of :func:`~workbench.kernels.grouped.grouped_experts` (CUDA, or the interpreter)."""
    from workbench.kernels.dispatch import triton_interpreting

    valid = check_routing(x, ew, idx, w, valid)
    if ew.dtype == torch.bfloat16 and x.device.type == "cpu":
        raise ValueError("Triton's CPU interpreter does not support bfloat16; use float32/float16 or backend='torch'")
    up, down = _kernels()
    num_tokens, k = idx.shape
    s, big_h, big_i = num_tokens * k, ew.hidden, ew.intermediate
    dev = x.device
    blocks, launch = _config(s / max(1, ew.num_experts), triton_interpreting() or dev.type == "cpu")
    pairs, t_exp, t_start, t_end, n_tiles = tile_schedule(ew, idx, w, valid, blocks["BM"])
    n_max = t_exp.numel()
    flat_w = w.reshape(-1).float().contiguous()
    h = torch.empty(max(s, 1), big_i, dtype=ew.dtype, device=dev)
    y = torch.zeros(s, big_h, dtype=torch.float32 if reduce else x.dtype, device=dev)
    ieee = ew.dtype == torch.float32
    dummy = _dummy(dev)
    gb = ew.gate_bias if ew.gate_bias is not None else dummy
    ub = ew.up_bias if ew.up_bias is not None else dummy
    db = ew.down_bias if ew.down_bias is not None else dummy
    if n_max and s:
        up[(n_max, -(-big_i // blocks["BN"]))](
            x, x.stride(0), x.stride(1), pairs, flat_w, t_exp, t_start, t_end, n_tiles,
            ew.gate, *ew.gate.stride(), ew.up, *ew.up.stride(), gb, gb.stride(0), gb.stride(1),
            ub, ub.stride(0), ub.stride(1), h, h.stride(0), h.stride(1), big_h, big_i, k,
            float(ew.alpha), float(ew.limit),
            ACT=ACTIVATIONS.index(ew.act), SCALE_INPUT=ew.scale_input, HAS_GB=ew.gate_bias is not None,
            HAS_UB=ew.up_bias is not None, IEEE=ieee, **blocks, **launch)
        down[(n_max, -(-big_h // blocks["BN"]))](
            h, h.stride(0), h.stride(1), pairs, flat_w, t_exp, t_start, t_end, n_tiles,
            ew.down, *ew.down.stride(), db, db.stride(0), db.stride(1), y, y.stride(0), y.stride(1),
            big_h, big_i, SCALE_INPUT=ew.scale_input, HAS_DB=ew.down_bias is not None, IEEE=ieee,
            **blocks, **launch)
    y = y.view(num_tokens, k, big_h)
    return y.sum(dim=1).to(x.dtype) if reduce else y
