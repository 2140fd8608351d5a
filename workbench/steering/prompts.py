"""Prompt sets: the first few tokens of labelled documents, e.g. the demo's held-out corpus.

Example:
    >>> from workbench.testing import tiny_tokenizer
    >>> from workbench.steering.prompts import prompt_sets
    >>> rows = [{"text": "Der schnelle braune Fuchs springt über den Hund.", "label": "german"},
    ...         {"text": "The quick brown fox jumps over the lazy dog.", "label": "english"}]
    >>> sets = prompt_sets(rows, tiny_tokenizer(), ["german", "english"], prompt_tokens=3, min_tokens=4)
    >>> {k: len(v) for k, v in sets.items()}
    {'german': 1, 'english': 1}
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from workbench.jsonl import read_jsonl


def read_jsonl_texts(path) -> list[dict]:
    """``[{"text", "label"?}, ...]`` from a JSONL file; says which line is wrong."""
    return read_jsonl(path, required=("text",), strings=("text",), what="texts")


def cut_prompt(text: str, tokenizer, prompt_tokens: int) -> str:
    """The text of the first ``prompt_tokens`` tokens of ``text`` (no special tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:prompt_tokens]
    return tokenizer.decode(ids)


class PromptList(list):
    """Prompts (a list of strings) that also know which document each was cut from: ``groups``.

    Several prompts of one document are not independent; the experiment's intervals resample
    documents, not prompts, when it is given these groups.
    """

    def __init__(self, prompts=(), groups=None):
        super().__init__(prompts)
        self.groups = list(range(len(self))) if groups is None else [int(g) for g in groups]
        if len(self.groups) != len(self):
            raise ValueError(f"{len(self)} prompts but {len(self.groups)} groups")


def prompt_sets(rows: Sequence[dict], tokenizer, labels: Sequence[str], per_set: int | None = None,
                prompt_tokens: int = 16, seed: int = 0, min_tokens: int | None = None, windows: int = 1,
                stride: int | None = None) -> dict[str, PromptList]:
    """``{label: [prompt, ...]}``: prompts cut from the documents of each label.

    Args:
        rows: ``{"text", "label"}`` dicts.
        tokenizer: the model's tokenizer (prompts are cut in its tokens).
        labels: the labels to keep, in order.
        per_set: documents per label (a seeded sample; None = all).
        prompt_tokens: tokens per prompt.
        seed: sampling seed.
        min_tokens: skip documents shorter than this (default ``prompt_tokens + 8``, so that a
            continuation exists to compare with).
        windows: prompts per document: windows start at tokens ``0, stride, 2 * stride, ...`` while
            ``min_tokens`` tokens from the start remain in the document (more prompts from the same
            documents: more power, at the cost of prompts that start mid-sentence).
        stride: tokens between window starts (default ``3 * prompt_tokens``).

    Returns:
        ``{label: PromptList}``; each list's ``groups`` numbers the document of each prompt.
    """
    min_tokens = prompt_tokens + 8 if min_tokens is None else min_tokens
    if windows < 1:
        raise ValueError(f"windows must be at least 1, got {windows}")
    stride = 3 * prompt_tokens if stride is None else int(stride)
    known = sorted({str(r.get("label")) for r in rows})
    out = {}
    for label in labels:
        docs = [r["text"] for r in rows if str(r.get("label")) == label]
        if not docs:
            raise ValueError(f"no documents labelled {label!r}; labels present: {known}")
        encoded = [(d, tokenizer(d, add_special_tokens=False)["input_ids"]) for d in docs]
        encoded = [(d, ids) for d, ids in encoded if len(ids) >= min_tokens]
        if per_set is not None and len(encoded) > per_set:
            encoded = random.Random(seed).sample(encoded, per_set)
        prompts, groups = [], []
        for g, (_, ids) in enumerate(encoded):
            for w in range(windows):
                start = w * stride
                if w and start + min_tokens > len(ids):
                    break
                prompt = tokenizer.decode(ids[start:start + prompt_tokens])
                if prompt.strip():
                    prompts.append(prompt)
                    groups.append(g)
        out[label] = PromptList(prompts, groups)
    return out


FALLBACK_ROWS = [{"text": t, "label": label} for label, texts in {
    "german": ["Der Hund ist nicht in dem Haus, aber die Katze ist hier und wir sind auch da.",
               "Die Kinder spielen auf der Straße und im Park, denn das Wetter ist heute schön.",
               "Wir fahren morgen mit dem Zug nach Berlin, weil meine Mutter dort wohnt.",
               "Ich habe das Buch gelesen, aber es war mir zu lang und auch nicht sehr gut.",
               "Am Abend sitzen wir zusammen am Tisch und sprechen über den Tag."],
    "english": ["The dog is not in the house, but the cat is here and we are there too.",
                "The children play in the street and in the park, because the weather is nice today.",
                "Tomorrow we take the train to London, because my mother lives there.",
                "I have read the book, but it was too long for me and not very good either.",
                "In the evening we sit together at the table and talk about the day."],
    "code": ["def add(a, b):\n    return a + b\n\nprint(add(1, 2))",
             "for i in range(10):\n    if i % 2 == 0:\n        print(i)",
             "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y",
             "import os\npaths = [p for p in os.listdir('.') if p.endswith('.py')]",
             "def mean(xs):\n    return sum(xs) / len(xs) if xs else 0.0"],
}.items() for t in texts]


def demo_rows(labels: Sequence[str] | None = None, fallback: bool = False) -> list[dict]:
    """The demo's held-out documents (optionally only some labels).

    Args:
        labels: keep only these labels.
        fallback: when the held-out file is absent, return a few built-in German, English and code
            sentences (:data:`FALLBACK_ROWS`) with a printed note instead of raising.
    """
    from workbench.demo import DATA_DIR

    path = DATA_DIR / "heldout.jsonl"
    if path.is_file():
        rows = read_jsonl_texts(path)
    elif fallback:
        print(f"NOTE: {path} is not in this installation; using a few built-in sentences")
        rows = list(FALLBACK_ROWS)
    else:
        raise FileNotFoundError(f"{path} is not in this installation; use your own prompt sets")
    return rows if labels is None else [r for r in rows if r.get("label") in set(labels)]
