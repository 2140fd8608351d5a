"""Offline evaluation of text embeddings on labelled documents: domain classification, clustering
and a retrieval task built from the documents themselves.

* **classification** — accuracy of a logistic regression on L2-normalised vectors (C chosen by an
  inner cross-validation), stratified 5-fold cross-validated (scikit-learn);
* **clustering** — V-measure of k-means (k = number of labels) on L2-normalised vectors;
* **retrieval** — each document is cut at the whitespace nearest its middle; the first half is the
  query, the second half the one relevant target among all second halves. Recall@1, recall@10 and
  MRR, ranking by the method's similarity (cosine; the sum similarity for MoEE sum).

:func:`compare` runs HS, RW, MoEE concat, MoEE sum over a grid of α and, when installed, the
MiniLM anchor, and returns one table. :func:`agreement` says how closely two embedders' pairwise
similarities follow each other (e.g. the workbench default against ``preset="moee"``, the
reference code's definitions). Needs scikit-learn (``dev`` extra).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> from workbench.embeddings.evaluate import compare
    >>> from workbench.embeddings.samples import sample_texts
    >>> texts, labels = sample_texts()
    >>> table = compare(MoEEmbedder(wb.wrap(*tiny_model("qwen3_moe"))), texts, labels, alphas=[1.0], anchor=None)
    >>> table.method.tolist()
    ['HS', 'RW', 'MoEE concat', 'MoEE sum α=1']
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from workbench.embeddings.similarity import cosine_matrix, l2_normalize

COLUMNS = ["method", "dims", "accuracy", "v_measure", "recall@1", "recall@10", "mrr"]


def split_halves(texts, min_words: int = 8):
    """``(queries, targets, kept)``: each text cut at the whitespace nearest its middle.

    Texts with fewer than ``min_words`` words are left out; ``kept`` are the indices of the others.
    """
    queries, targets, kept = [], [], []
    for i, text in enumerate(texts):
        if len(text.split()) < min_words:
            continue
        middle = len(text) // 2
        spaces = [j for j, ch in enumerate(text) if ch.isspace()]
        cut = min(spaces, key=lambda j: abs(j - middle))
        first, second = text[:cut].strip(), text[cut:].strip()
        if first and second:
            queries.append(first)
            targets.append(second)
            kept.append(i)
    return queries, targets, kept


def classification_accuracy(x, labels, folds: int = 5, seed: int = 0, Cs=(1.0, 10.0, 100.0)) -> float:
    """Mean cross-validated accuracy of a logistic regression on L2-normalised ``x [N, D]``.

    The regularisation strength is chosen among ``Cs`` by an inner 3-fold cross-validation on each
    training fold (unit vectors need a weak penalty; one fixed C would favour some kinds).
    """
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    labels = np.asarray(labels)
    smallest = min(np.unique(labels, return_counts=True)[1])
    folds = int(min(folds, smallest))
    if folds < 2:
        raise ValueError("classification needs at least 2 texts of every label")
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    inner = min(3, folds)
    clf = (LogisticRegressionCV(Cs=list(Cs), cv=inner, max_iter=2000) if len(Cs) > 1 and smallest >= 2 * inner
           else LogisticRegression(C=float(Cs[0]), max_iter=2000))
    with warnings.catch_warnings():  # scikit-learn's notices about future defaults of attributes we do not read
        warnings.simplefilter("ignore", FutureWarning)
        return float(cross_val_score(clf, l2_normalize(x), labels, cv=cv).mean())


def clustering_vmeasure(x, labels, seed: int = 0) -> float:
    """V-measure of k-means (k = number of labels) on L2-normalised ``x [N, D]``."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import v_measure_score

    k = len(set(labels))
    pred = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(l2_normalize(x).astype(np.float64))
    return float(v_measure_score(labels, pred))


def retrieval_metrics(sim, ks=(1, 10)) -> dict[str, float]:
    """Recall@k and MRR for a ``[N, N]`` query-by-target similarity whose relevant target is the diagonal."""
    sim = np.asarray(sim, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square [N, N] similarity, got shape {sim.shape}")
    own = np.diagonal(sim)[:, None]
    rank = (sim > own).sum(axis=1) + 1  # ties count in the query's favour
    out = {f"recall@{k}": float((rank <= k).mean()) for k in ks}
    out["mrr"] = float((1.0 / rank).mean())
    return out


def score(docs, queries, targets, labels, *, dot: bool = False, seed: int = 0) -> dict[str, float]:
    """All metrics of one method from its document, query and target vectors.

    Args:
        docs: ``[N, D]`` vectors of the labelled documents.
        queries, targets: ``[M, D]`` vectors of the first and second halves.
        labels: ``N`` labels.
        dot: rank by dot product (MoEE sum vectors) instead of cosine.
    """
    sim = (queries.astype(np.float64) @ targets.astype(np.float64).T) if dot else cosine_matrix(queries, targets)
    return {"dims": int(docs.shape[1]), "accuracy": classification_accuracy(docs, labels, seed=seed),
            "v_measure": clustering_vmeasure(docs, labels, seed=seed), **retrieval_metrics(sim)}


def compare(embedder, texts, labels, *, alphas=(0.1, 0.3, 1.0, 3.0, 10.0), anchor="auto", reference=None,
            progress: bool = False, seed: int = 0) -> pd.DataFrame:
    """HS, RW, MoEE concat, MoEE sum (each α) and the MiniLM anchor on the three tasks.

    Args:
        embedder: a :class:`~workbench.embeddings.MoEEmbedder`. If it is not fitted, its
            standardisation is fitted on ``reference`` texts, or else on ``texts`` themselves
            (unsupervised: labels are not used).
        texts, labels: the labelled documents.
        alphas: α grid for MoEE sum.
        anchor: ``"auto"`` (MiniLM when installed, else a message), None (leave out), or any object
            with a sentence-transformers ``encode(texts) -> [N, D]``.
        progress: show progress bars.

    Returns:
        A DataFrame with columns :data:`COLUMNS` (one row per method); ``attrs["notes"]`` lists
        what was fitted and skipped.
    """
    texts, labels = list(texts), list(labels)
    if len(texts) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(texts)} texts: give one label per text")
    queries, targets, _ = split_halves(texts)
    if len(queries) < 2:
        raise ValueError("the retrieval task needs at least 2 texts of 8 words or more")
    notes = []
    docs_p = embedder.parts(texts, progress=progress)
    q_p, t_p = embedder.parts(queries, progress=progress), embedder.parts(targets, progress=progress)
    if not embedder.fitted:
        embedder.fit(reference if reference is not None else docs_p, progress=progress)
        source = "the reference texts" if reference is not None else "the evaluated documents"
        notes.append(f"standardisation fitted on {source} ({embedder.reference_size} texts, no labels)")
    rows = []
    methods = [("HS", "hs", None), ("RW", "rw", None), ("MoEE concat", "concat", None)]
    methods += [(f"MoEE sum α={a:g}", "sum", float(a)) for a in alphas]
    for name, kind, alpha in methods:
        vec = [embedder.vectors(p, kind, alpha) for p in (docs_p, q_p, t_p)]
        rows.append({"method": name, **score(*vec, labels, dot=kind == "sum", seed=seed)})
    if anchor == "auto":
        from workbench.embeddings.anchor import ANCHOR_NAME, MISSING, anchor_available, load_anchor

        anchor = load_anchor() if anchor_available() else None
        if anchor is None:
            notes.append(f"{ANCHOR_NAME} left out: {MISSING}")
    if anchor is not None:
        vec = [np.asarray(anchor.encode(list(t), batch_size=32, show_progress_bar=progress), dtype=np.float32)
               for t in (texts, queries, targets)]
        rows.append({"method": "all-MiniLM-L6-v2 (anchor)", **score(*vec, labels, seed=seed)})
    table = pd.DataFrame(rows, columns=COLUMNS)
    notes.append(f"{len(texts)} documents, {len(set(labels))} labels, {len(queries)} retrieval pairs; "
                 f"{embedder.describe()}")
    table.attrs["notes"] = notes
    return table


def agreement(a, b, texts, kinds=("rw", "concat", "sum"), alpha: float = 1.0, progress: bool = False) -> pd.DataFrame:
    """Pearson correlation of two embedders' pairwise similarities over ``texts``, per kind.

    Args:
        a, b: :class:`~workbench.embeddings.MoEEmbedder` (fitted, or a preset, for ``concat``).
        texts: the texts (all pairs ``i < j`` are compared).
        kinds: the kinds to compare.
        alpha: RW weight of ``sum``.
        progress: a progress bar while each embedder reads the texts.

    Returns:
        One row per kind: ``kind``, ``pearson``, ``pairs``.

    Example:
        >>> import workbench as wb
        >>> from workbench.testing import tiny_model
        >>> from workbench.embeddings import MoEEmbedder
        >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
        >>> texts = ["a cat", "a dog", "def f(x): pass", "12 + 34 = 46"]
        >>> table = agreement(MoEEmbedder(lm).fit(texts), MoEEmbedder(lm), texts, kinds=["hs"])
        >>> table.pearson.round(6).tolist()
        [1.0]
    """
    pa, pb = a.parts(texts, progress=progress), b.parts(texts, progress=progress)
    upper = np.triu_indices(len(texts), k=1)
    rows = []
    for kind in kinds:
        x = a.similarity(pa, kind=kind, alpha=alpha)[upper]
        y = b.similarity(pb, kind=kind, alpha=alpha)[upper]
        rows.append({"kind": kind, "pearson": float(np.corrcoef(x, y)[0, 1]), "pairs": int(x.size)})
    return pd.DataFrame(rows)


def format_table(table: pd.DataFrame) -> list[str]:
    """The comparison table as text lines (for RESULTS.md and printing), notes last."""
    lines = table.to_string(index=False, float_format=lambda v: f"{v:.3f}").splitlines()
    return lines + [""] + [f"note: {n}" for n in table.attrs.get("notes", [])]
