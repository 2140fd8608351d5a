"""What one decoding run returns: the tokens, the text, timing and per-step candidate data."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Generation:
    """One decoded continuation.

    Attributes:
        prompt: the prompt text.
        method: ``"greedy"``, ``"scmoe"`` (batched) or ``"scmoe-two-pass"`` (reference).
        token_ids: generated ids (an EOS that ended the run included).
        text: the generated text, special tokens removed, cut before the first stop string.
        stop_reason: ``"eos"``, ``"stop"`` (a stop string) or ``"length"`` (max_new_tokens).
        seconds: wall time of the decoding loop, prompt pass included (tokenisation excluded).
        weak: label of the weak routing (``None`` for greedy).
        alpha, beta: contrast parameters (``None`` for greedy).
        sample: whether tokens were sampled.
        steps: per-step tensors with ``N`` = number of generated tokens and ``n`` = candidates kept:
            ``strong_ids``/``strong_p`` ``[N, n]`` (the strong distribution's top candidates),
            ``weak_ids``/``weak_p`` ``[N, n]`` (absent for greedy), ``chosen_p_strong``,
            ``chosen_p_weak``, ``chosen_score`` ``[N]``, ``n_plausible`` ``[N]``.
    """

    prompt: str
    method: str
    token_ids: list[int]
    text: str
    stop_reason: str
    seconds: float
    weak: str | None = None
    alpha: float | None = None
    beta: float | None = None
    sample: bool = False
    steps: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    tokenizer: object = field(default=None, repr=False, compare=False)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def ms_per_token(self) -> float:
        """Milliseconds of decoding per generated token (prompt pass included)."""
        return 1000.0 * self.seconds / max(1, self.num_tokens)

    @property
    def changed(self) -> list[bool]:
        """Per generated token: did the contrast pick something other than the strong argmax?"""
        if "strong_ids" not in self.steps:
            return [False] * self.num_tokens
        top = self.steps["strong_ids"][:, 0].tolist()
        return [int(a) != int(b) for a, b in zip(self.token_ids, top)]

    def tokens(self) -> list[str]:
        """The generated tokens as strings (one per id, special tokens shown as themselves)."""
        if self.tokenizer is None:
            return [str(i) for i in self.token_ids]
        return [self.tokenizer.decode([i]) for i in self.token_ids]

    def explain(self, top: int = 3):
        """Per generated token: strong and weak top candidates and whether the contrast changed
        the choice. See :func:`workbench.contrast.explain.explain`."""
        from workbench.contrast.explain import explain

        return explain(self, top=top)

    def __str__(self) -> str:
        return self.text
