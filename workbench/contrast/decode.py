"""Self-contrast decoding (SCMoE) with both routings in one forward pass per step.

Row 0 of a batch of two runs the model's default (strong) routing, row 1 the weak routing (a
routing edit restricted to ``rows=[1]``). Both rows share one ``past_key_values`` of batch 2, so
each row keeps its own keys and values, and every step is a single forward call. The chosen token
is appended to both rows. :func:`workbench.contrast.reference.generate_two_pass` is the plain
reference (two passes, two caches); greedy tokens are identical (a batch of two and two batches of
one may round differently in the last bit, which could only matter at an exact tie).

Both rows also read the prompt under their own routing, so the prompt pass costs a batch of two.
Scores use the log-softmax of each row's temperature-1 logits (see :mod:`workbench.contrast.scoring`).

Prompt tokens and EOS: by default the tokenizer's BOS is put first and decoding stops at EOS;
``preset="scmoe"`` does what the paper's code does instead, the tokenizer's own special tokens only
and the EOS banned at every SCMoE step (see :mod:`workbench.contrast.presets` for the reference lines
and why the defaults differ).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.contrast import generate
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> g = generate(lm, "12 + 34 =", max_new_tokens=5, beta=0.5, weak="rank2")
    >>> g.method, g.num_tokens, g.stop_reason
    ('scmoe', 5, 'length')
    >>> not lm.probes.active  # the model is left as it was
    True
    >>> lm.tokenizer.eos_token_id in generate(lm, "12 + 34 =", max_new_tokens=5, preset="scmoe").token_ids
    False
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Sequence

import torch

from workbench.contrast.presets import EosBan, resolve
from workbench.contrast.result import Generation
from workbench.contrast.scoring import WEAK_FLOOR, check_params, choose, scores_and_mask
from workbench.contrast.weak import describe, on_row, weak_spec
from workbench.probes.edits import edit

TOP_KEPT = 5  # candidates per step kept for the explanation


def encode_prompt(lm, prompt: str, bos: bool = True) -> torch.Tensor:
    """``[1, P]`` prompt ids on the model's device; the tokenizer's BOS is put first when it has one
    and did not add it itself (as the demo model was trained)."""
    if lm.tokenizer is None:
        raise ValueError("this MoEModel has no tokenizer; wrap it with wb.wrap(model, tokenizer)")
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a string, got {type(prompt).__name__}")
    ids = list(lm.tokenizer(prompt)["input_ids"])
    bos_id = getattr(lm.tokenizer, "bos_token_id", None)
    if bos and bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [bos_id] + ids
    if not ids:
        raise ValueError("the prompt produced no tokens; give it some text")
    return torch.tensor([ids], dtype=torch.long, device=lm.device)


def eos_ids(lm) -> set[int]:
    """End-of-sequence ids of the model's generation config and its tokenizer."""
    found: set[int] = set()
    for source in (getattr(lm.model, "generation_config", None), lm.model.config, lm.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is None:
            continue
        found.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
    return found


class Stopper:
    """Decides after each token whether decoding ends: EOS, a stop string, or ``max_new_tokens``."""

    def __init__(self, lm, max_new_tokens: int, stop: Sequence[str] | str | None, eos: bool = True):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        self.stop = (stop,) if isinstance(stop, str) else tuple(stop or ())
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty strings, got {self.stop!r}")
        self.tokenizer = lm.tokenizer
        self.max_new_tokens = max_new_tokens
        self.eos = eos_ids(lm) if eos else set()
        self.reason = "length"

    def done(self, ids: list[int]) -> bool:
        if ids[-1] in self.eos:
            self.reason = "eos"
            return True
        if self.stop and any(s in self.tokenizer.decode(ids, skip_special_tokens=True) for s in self.stop):
            self.reason = "stop"
            return True
        return len(ids) >= self.max_new_tokens

    def text(self, ids: list[int]) -> str:
        """Decoded text, special tokens removed, cut before the first stop string."""
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        cuts = [text.find(s) for s in self.stop if s in text]
        return text[:min(cuts)] if cuts else text


class StepLog:
    """Per-step candidate data, kept as tensors (no host sync inside the loop).

    Log-probabilities are stored as they come and turned into probabilities once, in
    :meth:`tensors`; weak log-probabilities are clamped at :data:`WEAK_FLOOR` first (as the score
    does), which changes no probability (``exp(-1e4)`` is 0 in float32).
    """

    def __init__(self, top: int = TOP_KEPT):
        self.top = top
        self.rows: dict[str, list[torch.Tensor]] = {}

    def _append(self, entry: dict) -> None:
        for key, value in entry.items():
            self.rows.setdefault(key, []).append(value)

    def add(self, chosen: torch.Tensor, logp_s: torch.Tensor, logp_w: torch.Tensor | None = None,
            score: torch.Tensor | None = None) -> None:
        """One step from ``[V]`` strong (and weak) log-probabilities and the ``[V]`` scores."""
        n = min(self.top, logp_s.shape[-1])
        lp_s, ids_s = torch.topk(logp_s, n)
        entry = {"strong_ids": ids_s, "strong_p": lp_s, "chosen_p_strong": logp_s[chosen]}
        if logp_w is not None:
            lp_w, ids_w = torch.topk(logp_w, n)
            entry.update(weak_ids=ids_w, weak_p=lp_w, chosen_p_weak=logp_w[chosen],
                         chosen_score=score[chosen], n_plausible=torch.isfinite(score).sum())
        self._append(entry)

    def add_pair(self, chosen: torch.Tensor, logp: torch.Tensor, score: torch.Tensor,
                 plausible: torch.Tensor) -> None:
        """One SCMoE step from ``[2, V]`` log-probabilities (row 0 strong, row 1 weak), the scores
        and the plausible mask: the same entries as :meth:`add`, with one top-k for both rows
        (split into strong and weak in :meth:`tensors`)."""
        n = min(self.top, logp.shape[-1])
        lp, ids = torch.topk(logp, n)
        self._append({"pair_ids": ids, "pair_p": lp, "pair_chosen_p": logp[:, chosen],
                      "chosen_score": score[chosen], "n_plausible": plausible.count_nonzero()})

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {k: torch.stack(v).detach().cpu() for k, v in self.rows.items()}
        if "pair_ids" in out:
            ids, lp, at = out.pop("pair_ids"), out.pop("pair_p"), out.pop("pair_chosen_p")
            out.update(strong_ids=ids[:, 0], strong_p=lp[:, 0], chosen_p_strong=at[:, 0],
                       weak_ids=ids[:, 1], weak_p=lp[:, 1], chosen_p_weak=at[:, 1])
        for key in ("weak_p", "chosen_p_weak"):
            if key in out:
                out[key] = out[key].clamp_min(WEAK_FLOOR)
        for key in ("strong_p", "chosen_p_strong", "weak_p", "chosen_p_weak"):
            if key in out:
                out[key] = out[key].exp()
        return out


@functools.lru_cache(maxsize=None)
def _forward_kwargs(model_type: type) -> tuple[str, dict]:
    """The KV-cache argument of the model class's ``forward`` (``cache`` from transformers 5.2x on,
    ``past_key_values`` before; the old name is deprecated) and ``logits_to_keep=1`` where taken."""
    params = inspect.signature(model_type.forward).parameters
    name = "cache" if "cache" in params else "past_key_values"
    return name, ({"logits_to_keep": 1} if "logits_to_keep" in params else {})


def _forward(lm, ids: torch.Tensor, cache):
    """Last-position logits ``[B, V]`` and the updated cache."""
    name, extra = _forward_kwargs(type(lm.model))
    out = lm.model(input_ids=ids, use_cache=True, **{name: cache}, **extra)
    new_cache = out.get("cache") if out.get("cache") is not None else out.get("past_key_values")
    return out.logits[:, -1, :].float(), new_cache


@torch.inference_mode()
def generate(lm, prompt: str, *, beta: float = 0.5, alpha: float = 0.1, weak="rank2",
             max_new_tokens: int = 64, stop: Sequence[str] | str | None = None, sample: bool = False,
             temperature: float = 1.0, seed: int | None = None, bos: bool | None = None,
             eos: str | None = None, preset: str | None = None, top: int = TOP_KEPT) -> Generation:
    """SCMoE decoding, strong and weak routings batched into one forward pass per step.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        prompt: the prompt text.
        beta: contrast strength (``score = (1+beta)·log p_s − beta·log p_w``; default 0.5).
        alpha: plausibility cut-off (tokens with ``p_s >= alpha · max p_s``; default 0.1).
        weak: the weak routing: ``"rank2"`` (default), ``"rankN"``, ``"top1"``, ``"random"``,
            ``"random:SEED"`` or any routing spec (e.g. ``wb.KeepRank(1)``, ``wb.TopK(1)``).
        max_new_tokens: most tokens to generate.
        stop: stop string(s); the text is cut before the first one.
        sample: draw from ``softmax(score / temperature)`` instead of taking the argmax.
        temperature: sampling temperature.
        seed: seed of the sampling generator.
        bos: put the tokenizer's BOS first when the tokenizer does not (default True; the preset's
            when one is given).
        eos: ``"stop"`` (default: end at an EOS token) or ``"ban"`` (never choose it).
        preset: None (the workbench default) or ``"scmoe"``, the reference code's prompt tokens
            and EOS ban (:mod:`workbench.contrast.presets`).
        top: candidates per step kept for :meth:`Generation.explain`.

    Returns:
        A :class:`~workbench.contrast.result.Generation` with ``method="scmoe"``.
    """
    check_params(alpha, beta)
    bos_mode, eos_mode = resolve(preset, bos, eos)
    spec = weak_spec(weak, lm)
    stopper = Stopper(lm, max_new_tokens, stop, eos=eos_mode == "stop")
    prompt_ids = encode_prompt(lm, prompt, bos_mode == "prepend")
    ban = EosBan(lm, prompt_ids.device) if eos_mode == "ban" else None
    lm.check_context(prompt_ids.shape[-1], max_new_tokens)
    generator = torch.Generator(device="cpu").manual_seed(seed) if sample and seed is not None else None
    log, out_ids = StepLog(top), []
    start = time.perf_counter()
    with edit(lm, on_row(spec, 1)):
        step_ids, cache = prompt_ids.expand(2, -1), None
        while True:
            logits, cache = _forward(lm, step_ids, cache)
            logp = torch.log_softmax(logits, dim=-1)
            score, plausible = scores_and_mask(logp[0], logp[1], alpha, beta)
            if ban is not None:
                ban(score)
            token = choose(score.unsqueeze(0).cpu(), sample, temperature, generator)[0] if sample \
                else score.argmax()
            log.add_pair(token, logp, score, plausible)
            out_ids.append(int(token))
            if stopper.done(out_ids):
                break
            step_ids = torch.full((2, 1), out_ids[-1], dtype=torch.long, device=prompt_ids.device)
    seconds = time.perf_counter() - start
    return Generation(prompt, "scmoe", out_ids, stopper.text(out_ids), stopper.reason, seconds,
                      weak=describe(spec), alpha=alpha, beta=beta, sample=sample, steps=log.tensors(),
                      tokenizer=lm.tokenizer)


@torch.inference_mode()
def generate_greedy(lm, prompt: str, *, max_new_tokens: int = 64, stop: Sequence[str] | str | None = None,
                    sample: bool = False, temperature: float = 1.0, seed: int | None = None,
                    bos: bool | None = None, eos: str | None = None, preset: str | None = None,
                    top: int = TOP_KEPT) -> Generation:
    """Plain decoding with the model's own routing (batch 1): the baseline SCMoE is compared with.

    Same prompt handling, stopping and bookkeeping as :func:`generate`, so the two are comparable
    token for token and in time. Under ``preset="scmoe"`` it still stops at EOS, as the reference's
    greedy baseline (``model.generate``) does; ``eos="ban"`` bans it here too.
    """
    bos_mode, eos_mode = resolve(preset, bos, eos, contrast=False)
    stopper = Stopper(lm, max_new_tokens, stop, eos=eos_mode == "stop")
    prompt_ids = encode_prompt(lm, prompt, bos_mode == "prepend")
    ban = EosBan(lm, prompt_ids.device) if eos_mode == "ban" else None
    lm.check_context(prompt_ids.shape[-1], max_new_tokens)
    generator = torch.Generator(device="cpu").manual_seed(seed) if sample and seed is not None else None
    log, out_ids = StepLog(top), []
    start = time.perf_counter()
    step_ids, cache = prompt_ids, None
    while True:
        logits, cache = _forward(lm, step_ids, cache)
        logp = torch.log_softmax(logits[0], dim=-1)
        if ban is not None:
            ban(logp)
        token = choose(logp.unsqueeze(0).cpu(), sample, temperature, generator)[0] if sample else logp.argmax()
        log.add(token, logp)
        out_ids.append(int(token))
        if stopper.done(out_ids):
            break
        step_ids = torch.full((1, 1), out_ids[-1], dtype=torch.long, device=prompt_ids.device)
    seconds = time.perf_counter() - start
    return Generation(prompt, "greedy", out_ids, stopper.text(out_ids), stopper.reason, seconds,
                      sample=sample, steps=log.tensors(), tokenizer=lm.tokenizer)
