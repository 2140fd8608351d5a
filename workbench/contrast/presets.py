"""Paper presets of self-contrast decoding: how prompts are tokenised and what happens at EOS.

The contrast itself (:mod:`workbench.contrast.scoring`) is the paper's and its code's: the score
``(1+β)·z_s − β·z_w`` on the plausible set ``z_s ≥ log α + max z_s`` (the reference computes it on
raw logits, we on log-probabilities: each row differs by a constant, so the argmax and the
softmax are the same), ``α = 0.1``, ``β = 0.5``, temperature 1, the weak routing one expert by rank
with weight 1. Two definitions around it differ, and :data:`PRESETS` names them:

* **the workbench default** (``preset=None``): the tokenizer's BOS is put first when the tokenizer
  does not add it itself (the demo model was trained with it; a prompt without it is out of
  distribution), and decoding stops at an end-of-sequence token (any EOS id of the generation
  config, the config or the tokenizer): a model that has finished is not made to go on.
* ``preset="scmoe"`` — the reference code (DavidFanzz/SCMoE at 857fad7): prompts are tokenised with
  the tokenizer's own special tokens and nothing else (``generate.py`` lines 222-224,
  ``add_special_tokens=True``), and the tokenizer's EOS (its pad token when it has none,
  ``generate.py`` lines 127-131) is **banned** at every SCMoE step, ``cdlogits[:, eos] = -inf``
  (``decodingmethod/moe_utils.py`` lines 72-73, taken because ``--early_stop`` is off by default,
  ``generate.py`` line 79), so SCMoE runs until a stop string or ``max_new_tokens``. The greedy
  baseline of that code is ``model.generate(do_sample=False)`` (``generate.py`` lines 228-235),
  which does stop at EOS: under the preset :func:`~workbench.contrast.generate_greedy` keeps
  stopping at EOS and only changes the prompt's tokens.

Explicit ``bos=`` and ``eos=`` arguments of the decoders override the preset's.

Example:
    >>> from workbench.contrast.presets import resolve
    >>> resolve(None), resolve("scmoe"), resolve("scmoe", contrast=False), resolve("scmoe", eos="stop")
    (('prepend', 'stop'), ('tokenizer', 'ban'), ('tokenizer', 'stop'), ('tokenizer', 'stop'))
"""

from __future__ import annotations

import torch

#: preset name -> what it sets: ``bos`` ("prepend" / "tokenizer") and ``eos`` for SCMoE ("stop" / "ban")
PRESETS = {"scmoe": {"bos": "tokenizer", "eos": "ban"}}
EOS_MODES = ("stop", "ban")


def resolve(preset: str | None, bos: bool | None = None, eos: str | None = None,
            contrast: bool = True) -> tuple[str, str]:
    """``(bos, eos)`` handling of one decoder call.

    Args:
        preset: None (the workbench default) or a name of :data:`PRESETS`.
        bos: explicit override: True = put the tokenizer's BOS first, False = the tokenizer's own
            special tokens only.
        eos: explicit override: ``"stop"`` or ``"ban"``.
        contrast: False for the greedy baseline, which stops at EOS under every preset (the
            reference's greedy is ``model.generate``).

    Returns:
        ``("prepend" | "tokenizer", "stop" | "ban")``.

    Raises:
        ValueError: for an unknown preset or EOS mode (the message lists the choices).
    """
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose None (the workbench default) or one of "
                         f"{', '.join(map(repr, PRESETS))}")
    if eos is not None and eos not in EOS_MODES:
        raise ValueError(f"eos must be 'stop' (end at an end-of-sequence token) or 'ban' (never emit it, "
                         f"as the SCMoE code does); got {eos!r}")
    chosen = PRESETS.get(preset, {"bos": "prepend", "eos": "stop"})
    bos_mode = chosen["bos"] if bos is None else ("prepend" if bos else "tokenizer")
    eos_mode = eos or (chosen["eos"] if contrast else "stop")
    return bos_mode, eos_mode


def banned_ids(lm) -> list[int]:
    """The ids the reference bans: the tokenizer's EOS, else its pad token (none without either)."""
    tok = lm.tokenizer
    for value in (getattr(tok, "eos_token_id", None), getattr(tok, "pad_token_id", None)):
        if value is not None:
            return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    return []


class EosBan:
    """Sets the banned ids' scores to ``-inf`` in place (one ``index_fill_`` per step).

    Args:
        lm: the model (its tokenizer names the ids).
        device: where the scores live.
    """

    def __init__(self, lm, device):
        ids = banned_ids(lm)
        self.ids = torch.tensor(ids, dtype=torch.long, device=device) if ids else None

    def __call__(self, score: torch.Tensor) -> torch.Tensor:
        """``score [..., V]`` with the banned ids at ``-inf`` (in place; returned for chaining)."""
        if self.ids is not None:
            score.index_fill_(-1, self.ids, float("-inf"))
        return score
