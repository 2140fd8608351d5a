"""The self-contrast score of one decoding step (Shi et al., 2024; PAPERS.md §2).

With the strong and weak next-token logits ``z_s``, ``z_w`` of one step (temperature 1), both turned
into log-probabilities with a log-softmax (so the arbitrary constant shift of each logit vector does
not matter)::

    plausible = log p_s >= log(alpha) + max(log p_s)        # adaptive plausibility cut
    score     = (1 + beta) * log p_s - beta * log p_w        # on plausible tokens, -inf elsewhere

Greedy takes the argmax of ``score``; sampling draws from ``softmax(score / temperature)``.
``beta = 0`` gives the strong model's greedy choice exactly (its argmax is always plausible).

Infinite values: a token the strong model rules out (``log p_s = -inf``) is never plausible and
scores ``-inf``. A plausible token the weak model rules out (``log p_w = -inf``) would score
``+inf``; weak log-probabilities are clamped at :data:`WEAK_FLOOR` so that such a token gets the
largest finite bonus instead, and scores stay finite (no ``nan`` from ``0 * inf`` at ``beta = 0``).
"""

from __future__ import annotations

import math

import torch

WEAK_FLOOR = -1.0e4
"""Weak log-probabilities are clamped at this value (nats) before the contrast."""

_NEG_INF = torch.tensor(float("-inf"))  # a 0-dim operand is cheaper than a Python float in torch.where


def check_params(alpha: float, beta: float) -> None:
    """Raise a ``ValueError`` that says what to pass when ``alpha``/``beta`` are out of range."""
    if not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0 and not math.isnan(alpha)):
        raise ValueError(f"alpha is the plausibility cut-off, a probability ratio in [0, 1] "
                         f"(paper default 0.1); got {alpha!r}")
    if not (isinstance(beta, (int, float)) and beta >= 0.0 and math.isfinite(beta)):
        raise ValueError(f"beta is the contrast strength, a finite number >= 0 (paper default 0.5; "
                         f"0 = plain greedy); got {beta!r}")


def plausible_mask(logp_strong: torch.Tensor, alpha: float) -> torch.Tensor:
    """Tokens with ``p_s >= alpha * max p_s``.

    Args:
        logp_strong: ``[..., V]`` strong log-probabilities.
        alpha: cut-off ratio in ``[0, 1]``.

    Returns:
        ``[..., V]`` bool; always True at the strong argmax.
    """
    top = logp_strong.amax(dim=-1, keepdim=True)
    if alpha > 0:  # a finite threshold (the top log-probability is finite): -inf is never plausible
        return logp_strong >= top + math.log(alpha)
    # alpha = 0: the threshold is the lowest finite value, so that -inf is still not plausible
    return logp_strong >= torch.full_like(top, torch.finfo(logp_strong.dtype).min)


def contrast_scores(strong_logits: torch.Tensor, weak_logits: torch.Tensor, alpha: float = 0.1,
                    beta: float = 0.5) -> torch.Tensor:
    """SCMoE scores of every vocabulary entry.

    Args:
        strong_logits: ``[..., V]`` next-token logits under the strong (default) routing.
        weak_logits: ``[..., V]`` next-token logits under the weak routing.
        alpha: plausibility cut-off (default 0.1).
        beta: contrast strength (default 0.5).

    Returns:
        ``[..., V]`` float32 scores, ``-inf`` outside the plausible set.

    Example:
        >>> import torch
        >>> strong = torch.log(torch.tensor([0.50, 0.40, 0.04, 0.06]))
        >>> weak = torch.log(torch.tensor([0.70, 0.10, 0.10, 0.10]))
        >>> s = contrast_scores(strong, weak, alpha=0.1, beta=0.5)
        >>> int(s.argmax()), bool(torch.isinf(s[2]))  # token 1 wins; token 2 is cut
        (1, True)
    """
    check_params(alpha, beta)
    if strong_logits.shape != weak_logits.shape:
        raise ValueError(f"strong and weak logits differ in shape: {tuple(strong_logits.shape)} vs "
                         f"{tuple(weak_logits.shape)}")
    return scores_from_logprobs(torch.log_softmax(strong_logits.float(), dim=-1),
                                torch.log_softmax(weak_logits.float(), dim=-1), alpha, beta)


def scores_from_logprobs(logp_strong: torch.Tensor, logp_weak: torch.Tensor, alpha: float,
                         beta: float) -> torch.Tensor:
    """:func:`contrast_scores` on log-probabilities already computed (the decoders' fast path;
    parameters are not checked here)."""
    return scores_and_mask(logp_strong, logp_weak, alpha, beta)[0]


def scores_and_mask(logp_strong: torch.Tensor, logp_weak: torch.Tensor, alpha: float,
                    beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`scores_from_logprobs` and the :func:`plausible_mask` it applied."""
    logp_w = logp_weak.nan_to_num(nan=WEAK_FLOOR).clamp_min(WEAK_FLOOR)
    score = torch.lerp(logp_w, logp_strong, 1.0 + beta)  # = (1 + beta) * logp_s - beta * logp_w
    plausible = plausible_mask(logp_strong, alpha)
    return torch.where(plausible, score, _NEG_INF), plausible


def choose(scores: torch.Tensor, sample: bool = False, temperature: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids from ``[B, V]`` scores: argmax, or a draw from ``softmax(scores / temperature)``.

    Returns:
        ``[B]`` int64 token ids.
    """
    if not sample:
        return scores.argmax(dim=-1)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 for sampling, got {temperature}")
    probs = torch.softmax(scores.float() / temperature, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
