"""Synthetic domains of the demo corpus: two-digit arithmetic and structured records.

Arithmetic is written plainly, ``37 + 45 = 82``, one problem a line; the tokenizer splits digits
one by one. A seeded set of held-out two-digit problems (:func:`heldout_problems`) never appears in
any training or validation document.
"""

from __future__ import annotations

import json
import random

ARITH_OPERANDS = range(0, 100)
HELDOUT_SEED = 1234
N_HELDOUT = 300

_FIRST = ["Anna", "Ben", "Chloé", "David", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas",
          "Kira", "Luca", "Mia", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara"]
_LAST = ["Schmidt", "Martin", "García", "Rossi", "Smith", "Dubois", "Müller", "López", "Bianchi",
         "Brown", "Novak", "Jensen", "Silva", "Kowalski", "Ward"]
_CITIES = ["Berlin", "Paris", "Madrid", "Rome", "London", "Vienna", "Lyon", "Milan", "Seville",
           "Hamburg", "Dublin", "Porto", "Zurich", "Oslo", "Prague"]
_PRODUCTS = ["laptop", "keyboard", "monitor", "chair", "lamp", "desk", "phone", "cable", "mouse",
             "printer", "router", "speaker", "camera", "tablet", "headset"]
_STATUS = ["active", "pending", "closed", "shipped", "cancelled"]


def heldout_problems(n: int = N_HELDOUT, seed: int = HELDOUT_SEED) -> list[tuple[int, int]]:
    """The reserved two-digit problems ``(a, b)`` with ``10 <= a, b <= 99``, never trained on.

    Example:
        >>> probs = heldout_problems()
        >>> len(probs), all(10 <= a <= 99 and 10 <= b <= 99 for a, b in probs)
        (300, True)
    """
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    return sorted(random.Random(seed).sample(pairs, n))


def format_problem(a: int, b: int) -> str:
    """``'37 + 45 = 82'``.

    Example:
        >>> format_problem(37, 45)
        '37 + 45 = 82'
    """
    return f"{a} + {b} = {a + b}"


def arithmetic_documents(n_docs: int, seed: int, lines_per_doc: int = 24) -> list[tuple[str, str]]:
    """Documents of additions with operands 0-99, excluding :func:`heldout_problems`.

    Two thirds of the lines use two two-digit operands; the rest mix in one-digit operands.

    Example:
        >>> docs = arithmetic_documents(2, seed=0, lines_per_doc=3)
        >>> len(docs), docs[0][1].count("\\n")
        (2, 2)
    """
    rng = random.Random(seed)
    banned = set(heldout_problems())
    docs = []
    for d in range(n_docs):
        lines = []
        while len(lines) < lines_per_doc:
            if rng.random() < 2 / 3:
                a, b = rng.randint(10, 99), rng.randint(10, 99)
            else:
                a, b = rng.choice(ARITH_OPERANDS), rng.choice(ARITH_OPERANDS)
            if (a, b) not in banned:
                lines.append(format_problem(a, b))
        docs.append((f"arithmetic/{seed}/{d}", "\n".join(lines)))
    return docs


def _record(rng: random.Random, i: int) -> dict:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    return {
        "id": i,
        "name": f"{first} {last}",
        "email": f"{first.lower()}.{last.lower()}@example.org",
        "city": rng.choice(_CITIES),
        "age": rng.randint(18, 90),
        "orders": [{"product": rng.choice(_PRODUCTS), "qty": rng.randint(1, 9),
                    "price": round(rng.uniform(2, 900), 2)} for _ in range(rng.randint(0, 3))],
        "status": rng.choice(_STATUS),
    }


def _csv_table(rng: random.Random, start: int) -> str:
    rows = ["id,product,city,quantity,unit_price,status"]
    for i in range(rng.randint(6, 20)):
        rows.append(",".join([str(start + i), rng.choice(_PRODUCTS), rng.choice(_CITIES),
                              str(rng.randint(1, 50)), f"{rng.uniform(1, 500):.2f}",
                              rng.choice(_STATUS)]))
    return "\n".join(rows)


def data_documents(n_docs: int, seed: int) -> list[tuple[str, str]]:
    """Structured-data documents: JSON objects (compact or indented), JSON lines, CSV tables.

    Example:
        >>> docs = data_documents(3, seed=0)
        >>> [d[0] for d in docs]
        ['data/0/0', 'data/0/1', 'data/0/2']
    """
    rng = random.Random(seed)
    docs = []
    for d in range(n_docs):
        kind = d % 3
        start = rng.randint(1, 9000)
        if kind == 0:
            text = json.dumps(_record(rng, start), indent=2, ensure_ascii=False)
        elif kind == 1:
            text = "\n".join(json.dumps(_record(rng, start + j), ensure_ascii=False)
                             for j in range(rng.randint(2, 5)))
        else:
            text = _csv_table(rng, start)
        docs.append((f"data/{seed}/{d}", text))
    return docs
