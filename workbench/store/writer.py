"""Writing a store batch by batch, so that a recording can be killed at any point and resumed exactly.

The manifest is the single source of truth. ``manifest.json`` holds the header (model, layers, the
input key, ...) and, once the recording is finished, the full shard list with ``complete: true``.
While recording, each finished shard is appended as one fsync-ed line to ``shards.jsonl`` *after* its
file was renamed into place. On resume:

- a line that was cut off (no newline, not JSON) is dropped, and so is a shard whose file is missing
  or has another size;
- shard files that no line names (a kill between the rename and the append) are ignored and
  overwritten;
- temporaries are removed;
- recording restarts at the first unit no shard holds. Shard boundaries depend only on the units and
  the batch size kept in the manifest, so the resumed store equals the uninterrupted one.

Example:
    >>> import tempfile, numpy as np
    >>> from workbench.store.writer import StoreWriter
    >>> d = tempfile.mkdtemp()
    >>> w = StoreWriter(d, key="k1", header={"layers": [0], "num_experts": 4, "k": 1, "scores": False,
    ...                 "fingerprint": "x", "meta": {}, "batch_size": 1}, labels=["a"], tokens_per_doc=[2])
    >>> w.done_units, w.complete
    (0, False)
    >>> w.add_shard((0, 1), [0, 0], [0, 1], [5, 6], np.zeros((1, 2, 1), np.int16), np.ones((1, 2, 1)))
    >>> w.finish({5: "a", 6: "b"}); w.close()
    >>> StoreWriter(d, key="k1", header={}, labels=["a"], tokens_per_doc=[2]).complete
    True
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

from workbench.store.files import StoreLock, atomic_path, atomic_write_json, fsync_dir, remove_temporaries
from workbench.store.layout import (
    DOCS_FILE,
    FORMAT,
    MANIFEST,
    SHARDS_DIR,
    STORE_VERSION,
    VOCAB_FILE,
    StoreError,
    docs_table,
    read_manifest,
    shard_table,
    vocab_table,
    write_shard,
    write_table,
)

JOURNAL = "shards.jsonl"
OURS = {MANIFEST, JOURNAL, DOCS_FILE, VOCAB_FILE, SHARDS_DIR, ".lock", "aggregates"}


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_journal(folder: Path) -> list[dict]:
    """The shards a recording in progress has finished (cut-off or unusable lines dropped)."""
    path = Path(folder) / JOURNAL
    if not path.exists():
        return []
    shards = []
    for line in path.read_bytes().split(b"\n")[:-1]:  # the part after the last newline is incomplete
        try:
            entry = json.loads(line)
        except ValueError:
            break
        file = Path(folder) / entry.get("file", "")
        if not file.is_file() or file.stat().st_size != entry.get("bytes"):
            break
        shards.append(entry)
    return shards


class StoreWriter:
    """Holds the lock on ``folder`` and writes its manifest, documents, shards and vocabulary.

    Args:
        folder: the store folder (created; must be empty or hold a recording with the same ``key``).
        key: the input key (texts, labels, model and settings); a different key is refused.
        header: manifest fields (``fingerprint``, ``layers``, ``num_experts``, ``k``, ``scores``,
            ``meta``, ``batch_size``, ...). On resume the stored header wins.
        labels: one label per document; ``tokens_per_doc``: their token counts.
    """

    def __init__(self, folder, *, key: str, header: dict, labels, tokens_per_doc):
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise StoreError(f"{self.folder} is a file; give a folder for the store")
        self.lock = StoreLock(self.folder).acquire()
        try:
            self._open(key, header, labels, tokens_per_doc)
        except BaseException:
            self.lock.release()
            raise

    def _open(self, key, header, labels, tokens_per_doc) -> None:
        manifest_path = self.folder / MANIFEST
        remove_temporaries(self.folder)
        if manifest_path.exists():
            manifest = read_manifest(self.folder)
            if manifest.get("input_key") != key:
                raise StoreError(f"{self.folder} holds a recording of other texts, labels, model or settings; "
                                 "choose another folder, or delete this one to record again")
            self.manifest = manifest
        else:
            foreign = sorted(p.name for p in self.folder.iterdir() if p.name not in OURS)
            if foreign:
                raise StoreError(f"{self.folder} is not empty and holds no store (found {foreign[:5]}); "
                                 "choose an empty or new folder")
            self.manifest = dict(header, format=FORMAT, store_version=STORE_VERSION, store_id=uuid.uuid4().hex,
                                 input_key=key, num_docs=len(labels), complete=False, shards=[])
            atomic_write_json(manifest_path, self.manifest)
        if self.manifest.get("complete"):
            self.shards = list(self.manifest["shards"])
            (self.folder / JOURNAL).unlink(missing_ok=True)  # left by a writer killed after its final manifest
            return
        (self.folder / SHARDS_DIR).mkdir(exist_ok=True)
        remove_temporaries(self.folder / SHARDS_DIR)
        with atomic_path(self.folder / DOCS_FILE) as tmp:
            write_table(docs_table(labels, tokens_per_doc), tmp)
        self.shards = read_journal(self.folder)
        self._rewrite_journal()

    def _rewrite_journal(self) -> None:
        with atomic_path(self.folder / JOURNAL) as tmp:
            tmp.write_bytes(b"".join(json.dumps(s).encode() + b"\n" for s in self.shards))

    # -- state -----------------------------------------------------------------------------
    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def done_units(self) -> int:
        return self.shards[-1]["units"][1] if self.shards else 0

    @property
    def next_t(self) -> int:
        return self.shards[-1]["t0"] + self.shards[-1]["tokens"] if self.shards else 0

    @property
    def batch_size(self) -> int | None:
        return self.manifest.get("batch_size")

    # -- writing ---------------------------------------------------------------------------
    def add_shard(self, units, doc, pos, token_ids, idx, w, scores=None) -> None:
        """Write one batch (``idx``/``w`` ``[L, n, k]``, ``scores`` ``[L, n, E]``) as the next shard."""
        number = len(self.shards)
        rel = f"{SHARDS_DIR}/part-{number:06d}.parquet"
        t0 = self.next_t
        table = shard_table(t0, doc, pos, token_ids, self.manifest["layers"], idx, w, scores)
        with atomic_path(self.folder / rel) as tmp:
            write_shard(table, tmp, {"store_id": self.manifest["store_id"], "shard": number})
        path = self.folder / rel
        entry = {"file": rel, "shard": number, "units": [int(units[0]), int(units[1])], "t0": int(t0),
                 "tokens": int(len(token_ids)), "docs": [int(min(doc)), int(max(doc))],
                 "k": int(idx.shape[2]), "bytes": path.stat().st_size, "sha256": file_digest(path)}
        with open(self.folder / JOURNAL, "ab") as fh:
            fh.write(json.dumps(entry).encode() + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.shards.append(entry)

    def finish(self, token_text: dict) -> None:
        """Write the vocabulary and the final manifest (the recording is then complete)."""
        with atomic_path(self.folder / VOCAB_FILE) as tmp:
            write_table(vocab_table(token_text), tmp)
        k = max([s["k"] for s in self.shards] + [int(self.manifest.get("k", 1))])
        final = dict(self.manifest, k=k, shards=self.shards, complete=True,
                     num_tokens=self.next_t)
        atomic_write_json(self.folder / MANIFEST, final)
        self.manifest = final
        (self.folder / JOURNAL).unlink(missing_ok=True)
        fsync_dir(self.folder)

    def close(self) -> None:
        self.lock.release()
