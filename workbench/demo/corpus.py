"""Build the labelled, balanced, multi-domain corpus the demo MoE is trained on.

Run ``python -m workbench.demo.corpus --out workbench/demo/_work/corpus --seed 0``. The output is
``train.jsonl`` and ``validation.jsonl`` (one ``{"id", "label", "source", "text"}`` per line) and
``manifest.json`` (sizes per domain, the sources used and their licences, sources that were
missing). The same seed and installed packages give the same corpus.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import warnings
from pathlib import Path

from workbench.demo.sources import SOURCES, SourceMissing, read_source
from workbench.demo.synthetic import arithmetic_documents, data_documents

DOMAINS = ("code", "english", "german", "french", "spanish", "italian", "dialog", "arithmetic",
           "data")
MAX_DOC_CHARS = 4000


def chunk_text(text: str, max_chars: int = MAX_DOC_CHARS) -> list[str]:
    """Split a long text at paragraph (else line) boundaries into pieces of at most ``max_chars``.

    Example:
        >>> chunk_text("aaaa\\n\\nbbbb\\n\\ncccc", max_chars=10)
        ['aaaa\\n\\nbbbb', 'cccc']
    """
    if len(text) <= max_chars:
        return [text]
    pieces, current = [], ""
    for para in text.split("\n\n"):
        while len(para) > max_chars:  # a huge paragraph: cut at a line break if there is one
            cut = para.rfind("\n", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            if current:
                pieces.append(current)
                current = ""
            pieces.append(para[:cut])
            para = para[cut:].lstrip("\n")
        if current and len(current) + 2 + len(para) > max_chars:
            pieces.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        pieces.append(current)
    return [p for p in pieces if p.strip()]


def _source_documents(name: str, seed: int, budget_chars: int) -> list[dict]:
    src = SOURCES[name]
    if name == "arithmetic":
        raw = arithmetic_documents(max(4, budget_chars // 300), seed)
    elif name == "records":
        raw = data_documents(max(6, budget_chars // 350), seed)
    else:
        raw = list(read_source(name))
    docs = []
    for doc_id, text in raw:
        for j, piece in enumerate(chunk_text(text)):
            docs.append({"id": f"{doc_id}#{j}", "label": src.domain, "source": name, "text": piece})
    random.Random(f"{seed}/{name}").shuffle(docs)
    return docs


def _balanced_take(per_source: list[list[dict]], budget_chars: int) -> list[dict]:
    """Round-robin over the sources' shuffled documents until the domain budget is spent."""
    taken, used, cursors = [], 0, [0] * len(per_source)
    while used < budget_chars and any(c < len(d) for c, d in zip(cursors, per_source)):
        for i, docs in enumerate(per_source):
            if cursors[i] < len(docs) and used < budget_chars:
                taken.append(docs[cursors[i]])
                used += len(docs[cursors[i]]["text"])
                cursors[i] += 1
    return taken


def build_corpus(out: Path | str, seed: int = 0, mb_per_domain: float = 2.0,
                 val_fraction: float = 0.05, domains: tuple[str, ...] = DOMAINS,
                 strict: bool = False) -> dict:
    """Build the corpus and write ``train.jsonl``, ``validation.jsonl`` and ``manifest.json``.

    Args:
        out: Output directory (created).
        seed: Seed for sampling, shuffling and the train/validation split.
        mb_per_domain: Size budget per domain in millions of characters.
        val_fraction: Share of each domain's documents (at least 2) held out for validation.
        domains: Which domains to build.
        strict: Raise :class:`~workbench.demo.sources.SourceMissing` instead of skipping a source
            whose package is absent.

    Returns:
        The manifest (also written to ``manifest.json``).

    Example:
        >>> import tempfile
        >>> m = build_corpus(tempfile.mkdtemp(), mb_per_domain=0.01, domains=("arithmetic",))
        >>> m["domains"]["arithmetic"]["train_docs"] > 0
        True
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    budget = int(mb_per_domain * 1e6)
    train, val, manifest = [], [], {"seed": seed, "mb_per_domain": mb_per_domain,
                                    "val_fraction": val_fraction, "domains": {}, "missing": {},
                                    "sources": {}}
    for domain in domains:
        names = [n for n, s in SOURCES.items() if s.domain == domain]
        per_source = []
        for name in names:
            try:
                per_source.append(_source_documents(name, seed, budget))
                manifest["sources"][name] = vars(SOURCES[name])
            except SourceMissing as err:
                if strict:
                    raise
                warnings.warn(f"skipping source {name}: {err}", stacklevel=2)
                manifest["missing"][name] = str(err)
        docs = _balanced_take(per_source, budget)
        random.Random(f"{seed}/split/{domain}").shuffle(docs)
        n_val = max(2, round(len(docs) * val_fraction)) if len(docs) >= 4 else 0
        val += docs[:n_val]
        train += docs[n_val:]
        manifest["domains"][domain] = {
            "train_docs": len(docs) - n_val, "validation_docs": n_val,
            "train_chars": sum(len(d["text"]) for d in docs[n_val:]),
            "validation_chars": sum(len(d["text"]) for d in docs[:n_val]),
            "sources": sorted({d["source"] for d in docs}),
        }
    for name, rows in (("train", train), ("validation", val)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    return manifest


def read_jsonl(path: Path | str) -> list[dict]:
    """Read a JSON-lines file into a list of dicts.

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.jsonl"
        >>> _ = p.write_text('{"a": 1}\\n')
        >>> read_jsonl(p)
        [{'a': 1}]
    """
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m workbench.demo.corpus --out DIR --seed 0 --mb-per-domain 2``."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mb-per-domain", type=float, default=2.0)
    p.add_argument("--strict", action="store_true", help="fail when a source package is missing")
    args = p.parse_args(argv)
    manifest = build_corpus(args.out, args.seed, args.mb_per_domain, strict=args.strict)
    for domain, info in manifest["domains"].items():
        print(f"{domain:11s} train {info['train_chars'] / 1e6:6.2f}M chars "
              f"({info['train_docs']} docs)  val {info['validation_docs']} docs  {info['sources']}")
    for name, why in manifest["missing"].items():
        print(f"MISSING {name}: {why}", file=sys.stderr)


if __name__ == "__main__":
    main()
