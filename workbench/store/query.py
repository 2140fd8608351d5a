"""DuckDB over a store: SQL views a researcher can query directly, reading the Parquet shards in place.

Views (one connection per opened selection, made on first use):

- ``routing(t, doc, pos, token_id, label, layer, rank, expert, weight)``: one row per used slot;
  ``layer`` is the decoder-layer index, ``rank`` 0 the heaviest slot. A ``WHERE layer = ...`` reads
  only that layer's columns.
- ``tokens(t, doc, pos, token_id, label)``, ``docs(doc, label, tokens)``, ``vocab(token_id, text)``.

Token and document numbers are those of the trace (renumbered across folders and selections). DuckDB
runs with a memory limit and spills larger work to a temporary folder, so a query over a corpus does
not need the corpus in memory.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> trace = wb.record(lm, ["one text", "another"], labels=["a", "b"], out=d, progress=False)
    >>> df = trace.sql("SELECT label, count(*) AS n FROM routing GROUP BY label ORDER BY label").df()
    >>> df.label.tolist(), int(df.n.sum()) == trace.num_tokens * len(trace.layers) * trace.k
    (['a', 'b'], True)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa

#: DuckDB's memory limit for queries over a store (larger work spills to disk).
MEMORY_LIMIT = "1GB"


def _files(part) -> str:
    paths = ", ".join("'" + str(part.shard_path(s)).replace("'", "''") + "'" for s in part.shards)
    return f"read_parquet([{paths}])"


def _routing_branch(part, layer: int) -> str:
    e, w = f"e_{layer}", f"w_{layer}"
    return (f"SELECT t + {part.t_offset} AS gt, doc + {part.doc_offset} AS gdoc, pos, token_id, "
            f"{int(layer)} AS layer, unnest(range(len({e}))) AS rank, unnest({e}) AS expert, "
            f"unnest({w}) AS weight FROM {_files(part)}")


def connection(trace):
    """The DuckDB connection of ``trace`` (a :class:`~workbench.store.stored.StoredTrace`), made once."""
    import duckdb

    cached = getattr(trace, "_duckdb", None)
    if cached is not None:
        return cached
    spill = Path(tempfile.gettempdir()) / f"workbench-duckdb-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # made if needed
    con = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "temp_directory": str(spill)})
    weakref.finalize(con, shutil.rmtree, spill, True)
    parts = [p for p in trace._base.parts if p.shards]
    labels = trace.doc_labels
    con.register("docs_arrow", pa.table({
        "doc": pa.array(np.arange(len(labels), dtype=np.int64)),
        "label": pa.array([None if x is None else str(x) for x in labels], type=pa.string()),
        "tokens": pa.array(np.bincount(trace.doc, minlength=len(labels)).astype(np.int64)
                           if trace._keep is not None else
                           np.concatenate([p.tokens_per_doc for p in trace._base.parts]).astype(np.int64))}))
    text = trace.token_text
    con.register("vocab_arrow", pa.table({"token_id": pa.array(sorted(text), type=pa.int64()),
                                          "text": pa.array([text[i] for i in sorted(text)], type=pa.string())}))
    con.execute("CREATE VIEW docs AS SELECT * FROM docs_arrow")
    con.execute("CREATE VIEW vocab AS SELECT * FROM vocab_arrow")
    if trace._keep is None:
        renumber, t_expr, doc_expr = "", "gt", "gdoc"
    else:
        con.register("keep_t", pa.table({"gt": pa.array(trace._keep),
                                         "t": pa.array(np.arange(len(trace._keep), dtype=np.int64))}))
        con.register("keep_doc", pa.table({"gdoc": pa.array(trace._kept_docs().astype(np.int64)),
                                           "doc": pa.array(np.arange(trace.num_docs, dtype=np.int64))}))
        renumber = " JOIN keep_t USING (gt) JOIN keep_doc USING (gdoc)"
        t_expr, doc_expr = "keep_t.t", "keep_doc.doc"
    if not parts:
        con.execute("CREATE VIEW tokens AS SELECT NULL::BIGINT AS t, NULL::BIGINT AS doc, NULL::INTEGER AS pos, "
                    "NULL::INTEGER AS token_id, NULL::VARCHAR AS label WHERE false")
        con.execute("CREATE VIEW slots_raw AS SELECT NULL::INTEGER AS layer, NULL::BIGINT AS rank, "
                    "NULL::SMALLINT AS expert, NULL::INTEGER AS token_id WHERE false")
        con.execute("CREATE VIEW tokens_raw AS SELECT NULL::INTEGER AS token_id WHERE false")
        con.execute("CREATE VIEW routing AS SELECT NULL::BIGINT AS t, NULL::BIGINT AS doc, NULL::INTEGER AS pos, "
                    "NULL::INTEGER AS token_id, NULL::VARCHAR AS label, NULL::INTEGER AS layer, "
                    "NULL::BIGINT AS rank, NULL::SMALLINT AS expert, NULL::FLOAT AS weight WHERE false")
        trace._duckdb = con
        return con
    tokens = " UNION ALL ".join(
        f"SELECT t + {p.t_offset} AS gt, doc + {p.doc_offset} AS gdoc, pos, token_id FROM {_files(p)}"
        for p in parts)
    con.execute(f"CREATE VIEW tokens AS SELECT {t_expr} AS t, {doc_expr} AS doc, pos, token_id, docs.label "
                f"FROM ({tokens}) base{renumber} JOIN docs ON docs.doc = {doc_expr}")
    branches = " UNION ALL ".join(_routing_branch(p, layer) for p in parts for layer in trace.layers)
    semi = "" if trace._keep is None else " SEMI JOIN keep_t USING (gt)"
    con.execute(f"CREATE VIEW slots_raw AS SELECT layer, rank, expert, token_id FROM ({branches}) base{semi} "
                "WHERE expert >= 0")
    con.execute(f"CREATE VIEW tokens_raw AS SELECT token_id FROM ({tokens}) base{semi}")
    con.execute(f"CREATE VIEW routing AS SELECT {t_expr} AS t, {doc_expr} AS doc, pos, token_id, docs.label, "
                f"layer, rank, expert, weight FROM ({branches}) base{renumber} "
                f"JOIN docs ON docs.doc = {doc_expr} WHERE expert >= 0")
    trace._duckdb = con
    return con
