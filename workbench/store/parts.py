"""Opening store folders: manifests, shard lists and documents, checked before anything is read.

A :class:`Part` is one store folder as the trace sees it: its manifest, finished shards, documents and
vocabulary, and the offsets that renumber its tokens and documents after the folders before it.
Several parts of one model (recorded by several processes or machines) make one trace; nothing is
copied.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.store.parts import open_parts
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> _ = wb.record(lm, ["one text", "another"], labels=["a", 1], out=d, progress=False)
    >>> [p.labels for p in open_parts([d])]
    [['a', 1]]
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from workbench.store.layout import DOCS_FILE, VOCAB_FILE, StoreError, read_manifest
from workbench.store.writer import read_journal
from workbench.trace import TraceMismatchError


@dataclass
class Part:
    """One store folder (see the module docstring)."""

    folder: Path
    manifest: dict
    shards: list
    labels: list
    tokens_per_doc: np.ndarray
    token_text: dict = field(default_factory=dict)
    t_offset: int = 0
    doc_offset: int = 0

    @property
    def num_tokens(self) -> int:
        return int(sum(s["tokens"] for s in self.shards))

    @property
    def num_docs(self) -> int:
        return len(self.labels)

    def shard_path(self, shard: dict) -> Path:
        return self.folder / shard["file"]


def _open_part(folder: Path, partial: bool) -> Part:
    manifest = read_manifest(folder)
    if manifest.get("complete"):
        shards = list(manifest["shards"])
    elif partial:
        shards = read_journal(folder)
    else:
        done = read_journal(folder)
        raise StoreError(
            f"the recording in {folder} is not finished ({len(done)} shard(s), "
            f"{sum(s['tokens'] for s in done)} tokens so far); resume it by running the same "
            "wb.record(..., out=...) again, or open what is there with wb.open_trace(path, partial=True)")
    for s in shards:
        path = folder / s["file"]
        if not path.is_file():
            raise StoreError(f"{path} is listed in {folder}/manifest.json but missing; the store is incomplete "
                             "(copy the file back or record again)")
        if path.stat().st_size != s["bytes"]:
            raise StoreError(f"{path} has {path.stat().st_size} bytes but the manifest says {s['bytes']}: it was "
                             "changed or truncated after the recording; record it again")
    docs = _read_table(folder / DOCS_FILE)
    labels = [json.loads(x) for x in docs.column("label_json").to_pylist()]
    tokens_per_doc = docs.column("tokens").to_numpy()
    if len(labels) != manifest.get("num_docs", len(labels)):
        raise StoreError(f"{folder / DOCS_FILE} has {len(labels)} documents but the manifest says "
                         f"{manifest.get('num_docs')}; labels must be one per document")
    if partial and not manifest.get("complete"):
        covered = shards[-1]["docs"][1] + 1 if shards else 0
        labels, tokens_per_doc = labels[:covered], tokens_per_doc[:covered]
    elif int(tokens_per_doc.sum()) != sum(s["tokens"] for s in shards):
        raise StoreError(f"{folder}: the documents hold {int(tokens_per_doc.sum())} tokens but the shards "
                         f"{sum(s['tokens'] for s in shards)}; the store is inconsistent, record it again")
    text = {}
    if (folder / VOCAB_FILE).is_file():
        vocab = _read_table(folder / VOCAB_FILE)
        text = dict(zip(vocab.column("token_id").to_pylist(), vocab.column("text").to_pylist()))
    return Part(folder, manifest, shards, labels, tokens_per_doc, text)


def _read_table(path: Path):
    if not path.is_file():
        raise StoreError(f"{path} is missing; the store is incomplete (record it again)")
    try:
        return pq.read_table(str(path))
    except Exception as err:  # pyarrow raises several types for damaged files
        raise StoreError(f"{path} cannot be read ({err}); the store is damaged") from None


def open_parts(paths, partial: bool = False) -> list[Part]:
    """Open store folders as consecutive parts of one trace (checks they are of the same model)."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("give at least one store folder")
    parts = [_open_part(p, partial) for p in paths]
    first = parts[0].manifest
    t_off = doc_off = 0
    for part in parts:
        m = part.manifest
        for key in ("fingerprint", "layers", "num_experts"):
            if m.get(key) != first.get(key):
                raise TraceMismatchError(
                    f"{part.folder} was recorded with {key} = {m.get(key)!r} but {parts[0].folder} with "
                    f"{first.get(key)!r}; only recordings of the same model and layers open as one trace")
        if bool(m.get("scores")) != bool(first.get("scores")):
            raise ValueError(f"{part.folder} and {parts[0].folder} differ in whether router scores were kept; "
                             "open them separately")
        part.t_offset, part.doc_offset = t_off, doc_off
        t_off += part.num_tokens
        doc_off += part.num_docs
    return parts
