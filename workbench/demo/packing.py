"""Token streams per domain and the sampler that packs training sequences from them.

Each domain's documents are tokenised and concatenated as ``<|bos|> doc <|eos|> <|bos|> doc ...``;
a training sequence is a window of ``seq_len + 1`` tokens from ONE domain's stream, so every
sequence is single-domain (which lets experts specialise by domain).
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.demo.corpus import read_jsonl

# Share of training sequences per domain (arithmetic gets a large share so sums are learnt).
DOMAIN_WEIGHTS = {
    "code": 0.12, "english": 0.12, "german": 0.10, "french": 0.10, "spanish": 0.10,
    "italian": 0.10, "dialog": 0.04, "arithmetic": 0.24, "data": 0.08,
}


def domain_streams(jsonl_path, tokenizer) -> dict[str, np.ndarray]:
    """Tokenise a corpus split into one int32 token stream per domain label.

    Example:
        >>> import tempfile, pathlib, json
        >>> from transformers import AutoTokenizer
        >>> from workbench.demo import CHECKPOINT_DIR
        >>> tok = AutoTokenizer.from_pretrained(CHECKPOINT_DIR)
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "t.jsonl"
        >>> _ = p.write_text(json.dumps({"text": "1 + 2 = 3", "label": "arithmetic"}) + "\\n")
        >>> domain_streams(p, tok)["arithmetic"].tolist()[0] == tok.bos_token_id
        True
    """
    rows = read_jsonl(jsonl_path)
    by_domain: dict[str, list[str]] = {}
    for row in rows:
        by_domain.setdefault(row["label"], []).append(row["text"])
    streams = {}
    for domain, texts in by_domain.items():
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        parts = [np.array([tokenizer.bos_token_id, *seq, tokenizer.eos_token_id], dtype=np.int32)
                 for seq in ids]
        streams[domain] = np.concatenate(parts)
    return streams


class PackedSampler:
    """Draw batches of single-domain windows ``(batch, seq_len + 1)`` with a seeded generator.

    Example:
        >>> s = PackedSampler({"a": np.arange(100), "b": np.arange(100, 200)}, seq_len=8, seed=0,
        ...                   weights={"a": 1.0, "b": 1.0})
        >>> tokens, domains = s.batch(4)
        >>> tokens.shape, len(domains)
        (torch.Size([4, 9]), 4)
    """

    def __init__(self, streams: dict[str, np.ndarray], seq_len: int, seed: int,
                 weights: dict[str, float] | None = None):
        weights = weights or DOMAIN_WEIGHTS
        self.domains = [d for d in streams if weights.get(d, 0) > 0 and len(streams[d]) > seq_len + 1]
        w = np.array([weights[d] for d in self.domains], dtype=np.float64)
        self.probs = w / w.sum()
        self.streams, self.seq_len = streams, seq_len
        self.rng = np.random.default_rng(seed)

    def batch(self, batch_size: int) -> tuple[torch.Tensor, list[str]]:
        picks = self.rng.choice(len(self.domains), size=batch_size, p=self.probs)
        rows, names = [], []
        for i in picks:
            stream = self.streams[self.domains[i]]
            start = int(self.rng.integers(0, len(stream) - self.seq_len - 1))
            rows.append(stream[start:start + self.seq_len + 1])
            names.append(self.domains[i])
        return torch.from_numpy(np.stack(rows).astype(np.int64)), names


def eval_windows(streams: dict[str, np.ndarray], seq_len: int, per_domain: int
                 ) -> dict[str, torch.Tensor]:
    """Fixed, evenly spaced evaluation windows ``(n, seq_len + 1)`` per domain (deterministic).

    Example:
        >>> w = eval_windows({"a": np.arange(100)}, seq_len=9, per_domain=3)
        >>> w["a"].shape, w["a"][1, 0].item()
        (torch.Size([3, 10]), 45)
    """
    out = {}
    for domain, stream in streams.items():
        n_fit = len(stream) // (seq_len + 1)
        if n_fit == 0:
            continue
        starts = np.linspace(0, (n_fit - 1) * (seq_len + 1), min(per_domain, n_fit)).astype(int)
        out[domain] = torch.from_numpy(
            np.stack([stream[s:s + seq_len + 1] for s in starts]).astype(np.int64))
    return out
