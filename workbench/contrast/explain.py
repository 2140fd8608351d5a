"""Per-token explanation of a self-contrast decoding run, as a tidy DataFrame.

One row per generated token: the token chosen, what the strong routing alone would have chosen,
whether the contrast changed the choice, the chosen token's strong and weak probabilities and its
contrast score, how many tokens passed the plausibility cut, and the strong and weak top candidates
with their probabilities (``strong_1``, ``strong_1_p``, ..., ``weak_1``, ``weak_1_p``, ...).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.contrast import generate
    >>> lm = wb.wrap(*tiny_model("gpt_oss"))
    >>> df = generate(lm, "The quick brown fox", max_new_tokens=5, beta=1.0).explain(top=2)
    >>> len(df), bool((df.strong_1_p >= df.strong_2_p).all())
    (5, True)
    >>> df.changed.dtype.name
    'bool'
"""

from __future__ import annotations

import pandas as pd

BASE_COLUMNS = ["step", "token", "token_id", "strong_choice", "changed", "p_strong", "p_weak", "score",
                "n_plausible"]


def _token(tokenizer, token_id: int) -> str:
    return tokenizer.decode([int(token_id)]) if tokenizer is not None else str(int(token_id))


def explain(gen, top: int = 3) -> pd.DataFrame:
    """The per-token explanation of a :class:`~workbench.contrast.result.Generation`.

    Args:
        gen: a generation from :func:`~workbench.contrast.generate` (or the greedy/two-pass ones;
            for greedy the weak columns are missing values and ``changed`` is False).
        top: candidates listed per routing (at most the number kept while decoding, default 5).

    Returns:
        DataFrame with :data:`BASE_COLUMNS` then ``strong_i``, ``strong_i_p``, ``weak_i``,
        ``weak_i_p`` for ``i = 1..top``. Probabilities are of the temperature-1 distributions.
    """
    steps, tok = gen.steps, gen.tokenizer
    if gen.num_tokens and not steps:
        raise ValueError("this generation carries no per-step data; decode it again with top >= 1")
    kept = int(steps["strong_ids"].shape[1]) if steps else 0
    if not 1 <= top <= max(kept, 1):
        raise ValueError(f"top must be between 1 and {kept} (candidates kept while decoding); got {top}")
    has_weak = "weak_ids" in steps
    rows = []
    for i, token_id in enumerate(gen.token_ids):
        strong_ids, strong_p = steps["strong_ids"][i].tolist(), steps["strong_p"][i].tolist()
        row = {
            "step": i,
            "token": _token(tok, token_id),
            "token_id": int(token_id),
            "strong_choice": _token(tok, strong_ids[0]),
            "changed": int(token_id) != int(strong_ids[0]),
            "p_strong": float(steps["chosen_p_strong"][i]),
            "p_weak": float(steps["chosen_p_weak"][i]) if has_weak else float("nan"),
            "score": float(steps["chosen_score"][i]) if has_weak else float("nan"),
            "n_plausible": int(steps["n_plausible"][i]) if has_weak else None,
        }
        for j in range(top):
            row[f"strong_{j + 1}"] = _token(tok, strong_ids[j])
            row[f"strong_{j + 1}_p"] = float(strong_p[j])
        for j in range(top):
            row[f"weak_{j + 1}"] = _token(tok, steps["weak_ids"][i, j]) if has_weak else None
            row[f"weak_{j + 1}_p"] = float(steps["weak_p"][i, j]) if has_weak else float("nan")
        rows.append(row)
    columns = BASE_COLUMNS + [f"strong_{j + 1}{s}" for j in range(top) for s in ("", "_p")] + \
        [f"weak_{j + 1}{s}" for j in range(top) for s in ("", "_p")]
    df = pd.DataFrame(rows, columns=columns)
    df["changed"] = df["changed"].astype(bool)
    return df
