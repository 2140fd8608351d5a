"""The plain SCMoE reference: two forward passes per step, two KV caches, batch 1 each.

This is how the paper's code runs it (about 2x the cost of greedy). It exists so that the batched
decoder in :mod:`workbench.contrast.decode` can be checked against an obvious implementation: with
greedy choice both give identical tokens.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.contrast import generate, generate_two_pass
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> a = generate(lm, "The quick brown", max_new_tokens=6)
    >>> b = generate_two_pass(lm, "The quick brown", max_new_tokens=6)
    >>> a.token_ids == b.token_ids
    True
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from workbench.contrast.decode import TOP_KEPT, StepLog, Stopper, _forward, encode_prompt
from workbench.contrast.presets import EosBan, resolve
from workbench.contrast.result import Generation
from workbench.contrast.scoring import WEAK_FLOOR, check_params, choose, contrast_scores
from workbench.contrast.weak import describe, weak_spec
from workbench.probes.edits import edit


@torch.inference_mode()
def generate_two_pass(lm, prompt: str, *, beta: float = 0.5, alpha: float = 0.1, weak="rank2",
                      max_new_tokens: int = 64, stop: Sequence[str] | str | None = None,
                      sample: bool = False, temperature: float = 1.0, seed: int | None = None,
                      bos: bool | None = None, eos: str | None = None, preset: str | None = None,
                      top: int = TOP_KEPT) -> Generation:
    """SCMoE decoding with a separate strong pass and weak pass per step.

    Arguments as :func:`workbench.contrast.generate`; returns ``method="scmoe-two-pass"``.
    """
    check_params(alpha, beta)
    bos_mode, eos_mode = resolve(preset, bos, eos)
    spec = weak_spec(weak, lm)
    stopper = Stopper(lm, max_new_tokens, stop, eos=eos_mode == "stop")
    prompt_ids = encode_prompt(lm, prompt, bos_mode == "prepend")
    ban = EosBan(lm, prompt_ids.device) if eos_mode == "ban" else None
    generator = torch.Generator(device="cpu").manual_seed(seed) if sample and seed is not None else None
    log, out_ids = StepLog(top), []
    start = time.perf_counter()
    step_ids, strong_cache, weak_cache = prompt_ids, None, None
    while True:
        strong, strong_cache = _forward(lm, step_ids, strong_cache)
        with edit(lm, spec):
            weak, weak_cache = _forward(lm, step_ids, weak_cache)
        score = contrast_scores(strong[0], weak[0], alpha, beta)
        if ban is not None:
            ban(score)
        token = choose(score.unsqueeze(0).cpu(), sample, temperature, generator)[0] if sample else score.argmax()
        log.add(token, torch.log_softmax(strong[0], -1), torch.log_softmax(weak[0], -1).clamp_min(WEAK_FLOOR),
                score)
        out_ids.append(int(token))
        if stopper.done(out_ids):
            break
        step_ids = torch.full((1, 1), out_ids[-1], dtype=torch.long, device=prompt_ids.device)
    seconds = time.perf_counter() - start
    return Generation(prompt, "scmoe-two-pass", out_ids, stopper.text(out_ids), stopper.reason, seconds,
                      weak=describe(spec), alpha=alpha, beta=beta, sample=sample, steps=log.tensors(),
                      tokenizer=lm.tokenizer)
