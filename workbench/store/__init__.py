"""Traces at corpus scale: a sharded Parquet store, opened lazily, queried with DuckDB.

=====================================  ==========================================================
``wb.record(lm, texts, out=DIR)``      writes a store batch by batch (resumable; see ``writer``)
:func:`open_trace`                     opens one or several store folders as one lazy trace
:class:`StoredTrace`                   select / iter_batches / slots / sql / materialize / counts
:func:`convert_trace`                  writes an in-memory or old saved trace as a store
=====================================  ==========================================================

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> d = tempfile.mkdtemp()
    >>> stored = wb.record(lm, ["hello world", "def f(x):"], labels=["en", "code"], out=d, progress=False)
    >>> wb.open_trace(d).num_docs
    2
"""

from workbench.store.convert import convert_trace, write_store
from workbench.store.files import StoreBusyError
from workbench.store.layout import StoreError
from workbench.store.stored import StoredTrace, open_trace

__all__ = ["StoreBusyError", "StoreError", "StoredTrace", "convert_trace", "open_trace", "write_store"]
