"""What the vLLM tier compares: the same texts, and traces equal to the transformers backend's."""

from __future__ import annotations

import numpy as np

TEXTS = ["The quick brown fox jumps over the lazy dog.", "def add(a, b):\n    return a + b",
         "Der schnelle braune Fuchs springt.", "12 + 34 = 46"]


def assert_same_trace(got, want, *, rtol: float = 1e-4, positions=None) -> None:
    """Ids exact and weights to ``rtol`` (relative to the token's largest weight), same tokens, docs
    and positions; ``positions`` restricts the comparison to those token positions."""
    assert got.layers == want.layers and got.num_experts == want.num_experts
    assert np.array_equal(got.doc, want.doc) and np.array_equal(got.pos, want.pos)
    assert np.array_equal(got.token_ids, want.token_ids)
    sel = slice(None) if positions is None else np.isin(want.pos, positions)
    gi, wi = got.topk_idx[:, sel], want.topk_idx[:, sel]
    assert gi.shape == wi.shape and gi.size > 0
    assert np.array_equal(gi, wi), f"{(gi != wi).any(-1).sum()} token-layers route differently"
    scale = np.maximum(np.abs(want.topk_w[:, sel]).max(-1, keepdims=True), 1e-12)
    err = np.abs(got.topk_w[:, sel] - want.topk_w[:, sel]) / scale
    assert err.max() <= rtol, f"weights differ by {err.max():.2e} (relative)"
