"""Export the held-out data that ships with the package, and read it back.

``python -m workbench.demo.heldout --corpus workbench/demo/_work/corpus`` writes to
:data:`~workbench.demo.DATA_DIR`:

* ``heldout.jsonl`` — ``{"text", "label"}`` per line, a few hundred documents drawn only from the
  corpus's validation split (each cut to at most ``MAX_CHARS`` characters at a line break);
* ``arith_heldout.jsonl`` — ``{"prompt": "37 + 45 =", "answer": "82"}`` for the reserved problems
  of :func:`~workbench.demo.synthetic.heldout_problems`, which no corpus document contains;
* ``unigram_counts.json`` — per-domain token counts of the TRAINING split under the demo
  tokenizer, the fitting data of the unigram baseline.
"""

from __future__ import annotations

import argparse
import json
import random
from collections import Counter
from pathlib import Path

from workbench.demo import CHECKPOINT_DIR, DATA_DIR
from workbench.demo.corpus import read_jsonl
from workbench.demo.synthetic import heldout_problems

DOCS_PER_DOMAIN = 40
MAX_CHARS = 1500


def _cut(text: str, max_chars: int = MAX_CHARS) -> str:
    if len(text) <= max_chars:
        return text
    cut = text.rfind("\n", 0, max_chars)
    return text[: cut if cut > max_chars // 2 else max_chars]


def export_heldout(corpus_dir: Path | str, out_dir: Path | str = DATA_DIR, seed: int = 0,
                   tokenizer_dir: Path | str = CHECKPOINT_DIR) -> dict[str, int]:
    """Write ``heldout.jsonl``, ``arith_heldout.jsonl`` and ``unigram_counts.json``.

    Returns:
        Number of held-out documents per domain.
    """
    from transformers import AutoTokenizer

    corpus_dir, out_dir = Path(corpus_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    val = read_jsonl(corpus_dir / "validation.jsonl")
    rng = random.Random(seed)
    by_domain: dict[str, list[dict]] = {}
    for row in val:
        by_domain.setdefault(row["label"], []).append(row)
    counts = {}
    with open(out_dir / "heldout.jsonl", "w", encoding="utf-8") as f:
        for domain, rows in by_domain.items():
            rows = [r for r in rows if len(r["text"]) >= 40]
            picked = rng.sample(rows, min(DOCS_PER_DOMAIN, len(rows)))
            counts[domain] = len(picked)
            for r in picked:
                f.write(json.dumps({"text": _cut(r["text"]), "label": domain},
                                   ensure_ascii=False) + "\n")
    with open(out_dir / "arith_heldout.jsonl", "w", encoding="utf-8") as f:
        for a, b in heldout_problems():
            f.write(json.dumps({"prompt": f"{a} + {b} =", "answer": str(a + b)}) + "\n")
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    train_counts: dict[str, Counter] = {}
    for row in read_jsonl(corpus_dir / "train.jsonl"):
        ids = tok(row["text"], add_special_tokens=False)["input_ids"]
        train_counts.setdefault(row["label"], Counter()).update([*ids, tok.eos_token_id])
    (out_dir / "unigram_counts.json").write_text(json.dumps({
        "vocab_size": len(tok),
        "note": "token counts of the training split per domain (eos counted once per document)",
        "domains": {d: {str(k): v for k, v in sorted(c.items())} for d, c in train_counts.items()},
    }))
    return counts


def load_heldout(data_dir: Path | str = DATA_DIR) -> list[dict]:
    """The shipped held-out documents, ``[{"text": ..., "label": ...}, ...]``.

    Example:
        >>> rows = load_heldout()
        >>> {"code", "arithmetic"} <= {r["label"] for r in rows}
        True
    """
    return read_jsonl(Path(data_dir) / "heldout.jsonl")


def load_arith_heldout(data_dir: Path | str = DATA_DIR) -> list[dict]:
    """The held-out two-digit sums, ``[{"prompt": "37 + 45 =", "answer": "82"}, ...]``.

    Example:
        >>> probs = load_arith_heldout()
        >>> len(probs) >= 200, probs[0]["prompt"].endswith("=")
        (True, True)
    """
    return read_jsonl(Path(data_dir) / "arith_heldout.jsonl")


def load_unigram_counts(data_dir: Path | str = DATA_DIR) -> dict:
    """Training-split token counts per domain: ``{"vocab_size": V, "domains": {d: {id: n}}}``.

    Example:
        >>> c = load_unigram_counts()
        >>> c["vocab_size"] > 0 and "english" in c["domains"]
        True
    """
    return json.loads((Path(data_dir) / "unigram_counts.json").read_text())


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m workbench.demo.heldout --corpus DIR [--out DIR]``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, required=True)
    p.add_argument("--out", type=Path, default=DATA_DIR)
    p.add_argument("--tokenizer", type=Path, default=CHECKPOINT_DIR)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    print(export_heldout(args.corpus, args.out, args.seed, args.tokenizer))


if __name__ == "__main__":
    main()
