"""Replay of routed experts: tokens grouped by expert, one GEMM pair per active expert.

:class:`ExpertWeights` describes any family's expert weights as strided *views* in one layout (no
copies): ``gate`` and ``up`` ``[E, H, I]`` (so that ``x @ gate[e]`` is the gate projection),
``down`` ``[E, I, H]``, optional biases, the activation, and whether routing weights scale the
expert's output (every family but Llama-4) or its input (Llama-4).

:func:`grouped_experts` is the operation: ``x [T, H]`` with routing ``idx``/``w``/``valid``
``[T, k]`` -> ``[T, H]`` (weighted sum over slots) or ``[T, k, H]`` (per slot). Empty slots and
zero-weight slots cost nothing, and experts that receive no token are never touched.

Example:
    >>> import torch
    >>> from workbench.kernels.grouped import ExpertWeights, grouped_experts
    >>> g = torch.Generator().manual_seed(0)
    >>> E, H, I = 4, 8, 6
    >>> ew = ExpertWeights(gate=torch.randn(E, H, I, generator=g), up=torch.randn(E, H, I, generator=g),
    ...                    down=torch.randn(E, I, H, generator=g))
    >>> x = torch.randn(5, H, generator=g)
    >>> idx = torch.tensor([[0, 1]] * 5); w = torch.full((5, 2), 0.5)
    >>> grouped_experts(x, ew, idx, w).shape
    torch.Size([5, 8])
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu", "gpt_oss")


@dataclass(frozen=True, eq=False)
class ExpertWeights:
    """A layer's routed experts in one layout (strided views of the model's own parameters).

    Attributes:
        gate: ``[E, H, I]``; the gate projection of expert ``e`` is ``x @ gate[e]``.
        up: ``[E, H, I]``; the up projection.
        down: ``[E, I, H]``; the down projection ``h @ down[e]``.
        gate_bias: ``[E, I]`` or None.
        up_bias: ``[E, I]`` or None.
        down_bias: ``[E, H]`` or None.
        act: one of :data:`ACTIVATIONS`. ``"gpt_oss"`` is GPT-OSS's clamped GLU
            ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha * g)`` with ``g = min(gate, limit)``;
            the others are ``act(gate) * up``.
        act_fn: the model's own activation module, used by the torch path when given (exactness);
            kernels use ``act``.
        alpha: GPT-OSS GLU slope.
        limit: GPT-OSS clamp limit.
        scale_input: routing weights scale each expert's input (Llama-4) instead of its output.
        source: a short description of where the views come from.
    """

    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    gate_bias: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    down_bias: torch.Tensor | None = None
    act: str = "silu"
    act_fn: Callable | None = None
    alpha: float = 1.702
    limit: float = 7.0
    scale_input: bool = False
    source: str = ""

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        e, h, i = self.gate.shape
        if tuple(self.up.shape) != (e, h, i):
            raise ValueError(f"up must be [E, H, I] = {(e, h, i)} like gate, got {tuple(self.up.shape)}")
        if tuple(self.down.shape) != (e, i, h):
            raise ValueError(f"down must be [E, I, H] = {(e, i, h)}, got {tuple(self.down.shape)}")
        for name, want in (("gate_bias", (e, i)), ("up_bias", (e, i)), ("down_bias", (e, h))):
            b = getattr(self, name)
            if b is not None and tuple(b.shape) != want:
                raise ValueError(f"{name} must be {want}, got {tuple(b.shape)}")

    @property
    def num_experts(self) -> int:
        return int(self.gate.shape[0])

    @property
    def hidden(self) -> int:
        return int(self.gate.shape[1])

    @property
    def intermediate(self) -> int:
        return int(self.gate.shape[2])

    @property
    def has_bias(self) -> bool:
        return any(b is not None for b in (self.gate_bias, self.up_bias, self.down_bias))

    @property
    def dtype(self) -> torch.dtype:
        return self.gate.dtype


def activate(ew: ExpertWeights, g: torch.Tensor, u: torch.Tensor, use_module: bool = True) -> torch.Tensor:
    """The GLU of ``ew`` on gate/up projections (any shape); the model's ``act_fn`` when allowed."""
    if ew.act == "gpt_oss":
        g = g.clamp(max=ew.limit)
        u = u.clamp(min=-ew.limit, max=ew.limit)
        return (u + 1) * (g * torch.sigmoid(g * ew.alpha))
    if use_module and ew.act_fn is not None:
        return ew.act_fn(g) * u
    if ew.act == "silu":
        a = g * torch.sigmoid(g)
    elif ew.act == "gelu":
        a = 0.5 * g * (1.0 + torch.erf(g / math.sqrt(2.0)))
    elif ew.act == "gelu_tanh":
        a = 0.5 * g * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (g + 0.044715 * g ** 3)))
    else:
        a = torch.relu(g)
    return a * u


def check_routing(x: torch.Tensor, ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor,
                  valid: torch.Tensor | None) -> torch.Tensor:
    """Validate shapes and expert ids; return ``valid`` (all True when None)."""
    if x.ndim != 2 or x.shape[1] != ew.hidden:
        raise ValueError(f"x must be [T, H={ew.hidden}], got {tuple(x.shape)}")
    if idx.ndim != 2 or idx.shape[0] != x.shape[0] or tuple(w.shape) != tuple(idx.shape):
        raise ValueError(f"idx and w must both be [T={x.shape[0]}, k], got {tuple(idx.shape)} and {tuple(w.shape)}")
    valid = torch.ones_like(idx, dtype=torch.bool) if valid is None else valid.bool()
    if tuple(valid.shape) != tuple(idx.shape):
        raise ValueError(f"valid must be {tuple(idx.shape)}, got {tuple(valid.shape)}")
    live = idx[valid]
    if live.numel() and (int(live.min()) < 0 or int(live.max()) >= ew.num_experts):
        raise ValueError(f"expert ids must be in 0..{ew.num_experts - 1} in valid slots; "
                         f"got {int(live.min())}..{int(live.max())}")
    return valid


def schedule(ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor, valid: torch.Tensor):
    """The ``(token, slot)`` pairs that need work, grouped by expert.

    Returns:
        ``(pairs, experts, counts)``: ``pairs [S']`` flat pair ids ``t * k + j`` sorted by expert
        (stable), ``experts [S']`` their expert ids, ``counts [E]`` pairs per expert. A pair is dropped
        when its slot is empty, or when its weight is 0 and dropping it is exact (output scaling, or
        input scaling without biases).
    """
    flat_e = idx.reshape(-1).long()
    keep = valid.reshape(-1)
    if not (ew.scale_input and ew.has_bias):
        keep = keep & (w.reshape(-1) != 0)
    pairs = keep.nonzero().squeeze(1)
    experts, order = torch.sort(flat_e[pairs], stable=True)
    pairs = pairs[order]
    counts = torch.bincount(experts, minlength=ew.num_experts)
    return pairs, experts, counts


def grouped_experts_torch(x: torch.Tensor, ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor,
                          valid: torch.Tensor | None = None, reduce: bool = True) -> torch.Tensor:
    """Torch path of :func:`grouped_experts`: a loop over the experts that receive tokens."""
    valid = check_routing(x, ew, idx, w, valid)
    num_tokens, k = idx.shape
    pairs, _, counts = schedule(ew, idx, w, valid)
    flat_w = w.reshape(-1)
    out = torch.zeros(num_tokens * k, ew.hidden, dtype=torch.float32 if reduce else x.dtype, device=x.device)
    start = 0
    for e, n in enumerate(counts.tolist()):
        if n == 0:
            continue
        p = pairs[start:start + n]
        start += n
        rows = x[p // k].to(ew.dtype)
        pw = flat_w[p, None]
        if ew.scale_input:
            rows = rows * pw.to(rows.dtype)
        g = rows @ ew.gate[e]
        u = rows @ ew.up[e]
        if ew.gate_bias is not None:
            g = g + ew.gate_bias[e]
        if ew.up_bias is not None:
            u = u + ew.up_bias[e]
        y = activate(ew, g, u) @ ew.down[e]
        if ew.down_bias is not None:
            y = y + ew.down_bias[e]
        if not ew.scale_input:
            y = y * pw.to(y.dtype)
        out[p] = y.to(out.dtype)
    out = out.view(num_tokens, k, ew.hidden)
    return out.sum(dim=1).to(x.dtype) if reduce else out


def grouped_experts(x: torch.Tensor, ew: ExpertWeights, idx: torch.Tensor, w: torch.Tensor,
                    valid: torch.Tensor | None = None, *, reduce: bool = True,
                    backend: str | None = None) -> torch.Tensor:
    """Run the routed experts of one layer under a routing.

    Args:
        x: ``[T, H]`` MoE-block inputs.
        ew: the layer's :class:`ExpertWeights`.
        idx: ``[T, k]`` expert ids.
        w: ``[T, k]`` routing weights.
        valid: ``[T, k]`` bool, False for empty slots (None = all valid).
        reduce: sum the weighted slot outputs to ``[T, H]``; False returns ``[T, k, H]`` (each slot's
            weighted output; zeros in dropped slots).
        backend: ``"reference"``, ``"torch"``, ``"triton"`` or None (see :mod:`~workbench.kernels.dispatch`).

    Returns:
        ``[T, H]`` (or ``[T, k, H]``) in ``x``'s dtype (slots summed in float32).
    """
    from workbench.kernels.dispatch import resolve

    _, fn = resolve("grouped_experts", backend, x.device)
    return fn(x, ew, idx, w, valid, reduce)
