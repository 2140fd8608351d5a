"""The MoEE embedder: four kinds of text embedding from one forward pass of an MoE model.

Kinds (:data:`KINDS`):

* ``"hs"`` — the final hidden state at the last real token, ``[N, H]``;
* ``"rw"`` — the router outputs at the last real token of every chosen MoE layer, concatenated,
  ``[N, L*E]`` (unit: see :mod:`workbench.embeddings.extract`);
* ``"concat"`` — ``[z(HS), z(RW)]``, each part standardised with statistics fitted once on a
  reference set (:meth:`MoEEmbedder.fit`) and saved with the embedder, ``[N, H + L*E]``;
* ``"sum"`` — one vector per text, ``[HS/|HS|, √α · RW/|RW|]``, whose dot product is the MoEE sum
  similarity ``cos(HS) + α · cos(RW)``, ``[N, H + L*E]``.

Similarity (:meth:`MoEEmbedder.similarity`) is the cosine for ``hs``, ``rw`` and ``concat`` and the
sum similarity (a dot product of the sum vectors) for ``sum``.

``preset="moee"`` reproduces the reference code instead of these defaults
(:mod:`workbench.embeddings.preset`): its prompt rewriting and quoted plain template, its RW unit
(raw logits; softmax scores for DeepSeek), and z-scoring within each batch of ``zscore_batch`` (64)
consecutive texts: ``hs`` raw, ``rw`` z-scored, ``concat`` = z([HS, RW]), ``sum`` = the cosines of
z(HS) and z(RW) summed. Vectors then depend on the texts embedded together, as in the reference.

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.embeddings import MoEEmbedder
    >>> emb = MoEEmbedder(wb.wrap(*tiny_model("olmoe")), template="prompteol")
    >>> emb.embed(["a cat sat", "def f(x): pass"], kind="sum", alpha=0.5).shape
    (2, 48)
    >>> emb = emb.fit(["some reference text", "another one", "12 + 34 = 46"])
    >>> emb.embed(["a cat sat"], kind="concat").shape
    (1, 48)
    >>> paper = MoEEmbedder(wb.wrap(*tiny_model("olmoe")), preset="moee")
    >>> paper.config.unit, paper.config.template
    ('logits', '"{text}"')
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from workbench.embeddings.extract import PADDING_SIDES, UNITS, EmbeddingParts, extract, unit_description
from workbench.embeddings.preset import ZSCORE_BATCH, batch_zscore, check_preset, reference_unit, resolve_moee_template
from workbench.embeddings.similarity import Standardizer, check_alpha, cosine_matrix, sum_vectors
from workbench.embeddings.templates import resolve_template

KINDS = ("hs", "rw", "concat", "sum")
SCHEMA_VERSION = 1
CONFIG_FILE = "embedder.json"
STATS_FILE = "stats.safetensors"


@dataclass
class EmbedderConfig:
    """How an :class:`MoEEmbedder` embeds (all fields are saved with it)."""

    template: str = "{text}"
    unit: str = "probs"
    layers: list[int] | None = None
    alpha: float = 1.0
    batch_size: int = 8
    padding_side: str = "right"
    max_length: int | None = None
    truncation: str = "left"
    preset: str | None = None
    zscore_batch: int = ZSCORE_BATCH


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown embedding kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


class MoEEmbedder:
    """Text embeddings from an MoE model's final hidden state and routing (MoEE).

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        template: ``"none"``, ``"prompteol"`` or a custom ``{text}`` string.
        unit: RW unit: ``"probs"`` (default), ``"logits"`` or ``"weights"``
            (see :mod:`workbench.embeddings.extract`); the preset's unit under a preset.
        layers: MoE decoder-layer indices for RW (default: all).
        alpha: default weight of RW in the sum similarity.
        batch_size, padding_side, max_length, truncation: how texts are batched
            (see :func:`~workbench.embeddings.extract.extract`); results do not depend on them.
        preset: None (the workbench default) or ``"moee"``, the reference code's prompts, unit and
            per-batch standardisation (:mod:`workbench.embeddings.preset`).
        zscore_batch: texts per standardisation batch under the preset (the reference's 64).
    """

    def __init__(self, lm, *, template: str | None = "none", unit: str | None = None, layers=None,
                 alpha: float = 1.0, batch_size: int = 8, padding_side: str = "right",
                 max_length: int | None = None, truncation: str = "left", preset: str | None = None,
                 zscore_batch: int = ZSCORE_BATCH):
        check_preset(preset)
        if unit is None:
            unit = reference_unit(lm) if preset == "moee" else "probs"
        if int(zscore_batch) < 1:
            raise ValueError(f"zscore_batch must be at least 1, got {zscore_batch}")
        if unit not in UNITS:
            raise ValueError(f"unknown RW unit {unit!r}; choose one of {', '.join(UNITS)}")
        if padding_side not in PADDING_SIDES:
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        layers = list(lm.moe_layers) if layers is None else sorted(int(x) for x in layers)
        bad = [x for x in layers if x not in lm.moe_layers]
        if bad or not layers:
            raise ValueError(f"layers {bad or '[]'} are not MoE layers; choose among {lm.moe_layers}")
        self.lm = lm
        template = resolve_moee_template(template) if preset == "moee" else resolve_template(template)
        self.config = EmbedderConfig(template, unit, layers, check_alpha(alpha), int(batch_size), padding_side,
                                     max_length, truncation, preset, int(zscore_batch))
        self.hs_stats = Standardizer()
        self.rw_stats = Standardizer()
        self.reference_size = 0

    # -- describing ----------------------------------------------------------------------
    @property
    def fitted(self) -> bool:
        """Whether ``kind="concat"`` can be computed: standardisation statistics are present, or the
        preset standardises each batch itself."""
        return self.config.preset is not None or (self.hs_stats.fitted and self.rw_stats.fitted)

    def dims(self, kind: str) -> int:
        """Vector length of ``kind``."""
        hs, rw = self.lm.config.hidden_size, len(self.config.layers) * self.lm.num_experts
        return {"hs": hs, "rw": rw, "concat": hs + rw, "sum": hs + rw}[check_kind(kind)]

    def describe(self) -> str:
        """One line: model, template, RW unit and layers."""
        c = self.config
        if c.preset is not None:
            fitted = f"per batch of {c.zscore_batch} texts ({c.preset} preset: the reference code's)"
        else:
            fitted = f"fitted on {self.reference_size} texts" if self.fitted else "not fitted"
        prompts = " with the reference's rewriting" if c.preset is not None else ""
        return (f"MoEE on {self.lm.adapter.name} (E={self.lm.num_experts}): template {c.template!r}{prompts}; "
                f"RW = {unit_description(self.lm.rule, c.unit)} at layers {c.layers}; alpha={c.alpha:g}; "
                f"standardisation {fitted}")

    def __repr__(self) -> str:
        return f"MoEEmbedder({self.describe()})"

    # -- computing -----------------------------------------------------------------------
    def parts(self, texts, progress: bool = False, batch_size: int | None = None) -> EmbeddingParts:
        """HS ``[N, H]`` and RW ``[N, L*E]`` of ``texts`` (one forward pass per batch)."""
        c = self.config
        return extract(self.lm, texts, template=c.template, unit=c.unit, layers=c.layers,
                       batch_size=batch_size or c.batch_size, padding_side=c.padding_side, max_length=c.max_length,
                       truncation=c.truncation, progress=progress, preprocess=c.preset)

    def fit(self, texts, progress: bool = False) -> "MoEEmbedder":
        """Fit the standardisation statistics of HS and RW on reference ``texts`` (at least 2).

        The statistics are then fixed: a text's ``concat`` vector never depends on the texts
        embedded with it. Returns ``self``.
        """
        parts = texts if isinstance(texts, EmbeddingParts) else self.parts(texts, progress=progress)
        self._check_parts(parts)
        self.hs_stats = Standardizer().fit(parts.hs)
        self.rw_stats = Standardizer().fit(parts.rw)
        self.reference_size = len(parts)
        return self

    def vectors(self, parts: EmbeddingParts, kind: str = "sum", alpha: float | None = None) -> np.ndarray:
        """``[N, D]`` float32 vectors of ``kind`` from precomputed :meth:`parts` (under the preset,
        standardised in batches of consecutive rows: pass the parts of one ``encode`` call)."""
        check_kind(kind)
        self._check_parts(parts)
        if self.config.preset is not None:
            return self._preset_vectors(parts, kind, self.config.alpha if alpha is None else alpha)
        if kind == "hs":
            return parts.hs.astype(np.float32)
        if kind == "rw":
            return parts.rw.astype(np.float32)
        if kind == "sum":
            return sum_vectors(parts.hs, parts.rw, self.config.alpha if alpha is None else alpha)
        self._require_fitted()
        return np.concatenate([self.hs_stats.transform(parts.hs), self.rw_stats.transform(parts.rw)], axis=1)

    def _preset_vectors(self, parts: EmbeddingParts, kind: str, alpha: float) -> np.ndarray:
        """The reference's vectors (``moee.py`` lines 223-241): HS raw, the rest z-scored per batch."""
        size = self.config.zscore_batch
        if kind == "hs":
            return parts.hs.astype(np.float32)
        if kind == "rw":
            return batch_zscore(parts.rw, size)
        if kind == "concat":
            return batch_zscore(np.concatenate([parts.hs, parts.rw], axis=1), size)
        return sum_vectors(batch_zscore(parts.hs, size), batch_zscore(parts.rw, size), alpha)

    def embed(self, texts, kind: str = "sum", alpha: float | None = None, progress: bool = False,
              batch_size: int | None = None) -> np.ndarray:
        """``[N, D]`` float32 embeddings of ``texts`` in input order (see :data:`KINDS`)."""
        check_kind(kind)
        if kind == "concat":
            self._require_fitted()
        return self.vectors(self.parts(texts, progress=progress, batch_size=batch_size), kind, alpha)

    def similarity(self, a: EmbeddingParts, b: EmbeddingParts | None = None, kind: str = "sum",
                   alpha: float | None = None) -> np.ndarray:
        """``[Na, Nb]`` similarities: cosine for hs/rw/concat, ``cos(HS) + α·cos(RW)`` for sum."""
        va = self.vectors(a, kind, alpha)
        vb = va if b is None else self.vectors(b, kind, alpha)
        if kind == "sum":
            return va.astype(np.float64) @ vb.astype(np.float64).T
        return cosine_matrix(va, vb)

    def _require_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("kind='concat' needs standardisation statistics: call embedder.fit(reference_texts) "
                               "or load a fitted embedder (MoEEmbedder.load)")

    def _check_parts(self, parts: EmbeddingParts) -> None:
        c = self.config
        if len(parts) and (parts.unit != c.unit or list(parts.layers) != list(c.layers)
                           or parts.template != c.template or parts.meta.get("preprocess", c.preset) != c.preset):
            raise ValueError(f"these parts were computed with unit={parts.unit!r}, layers={parts.layers}, "
                             f"template={parts.template!r}, preset={parts.meta.get('preprocess')!r}; this embedder "
                             f"uses unit={c.unit!r}, layers={c.layers}, template={c.template!r}, preset={c.preset!r}")

    # -- saving --------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the configuration (JSON) and standardisation statistics (safetensors) to a folder."""
        from safetensors.numpy import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        info = {"schema_version": SCHEMA_VERSION, "config": asdict(self.config),
                "fingerprint": self.lm.fingerprint, "model": self.lm.name,
                "reference_size": self.reference_size, "fitted": self.hs_stats.fitted and self.rw_stats.fitted}
        (path / CONFIG_FILE).write_text(json.dumps(info, indent=2))
        if info["fitted"]:
            save_file({"hs_mean": self.hs_stats.mean, "hs_std": self.hs_stats.std,
                       "rw_mean": self.rw_stats.mean, "rw_std": self.rw_stats.std}, str(path / STATS_FILE))
        return path

    @classmethod
    def load(cls, path, lm) -> "MoEEmbedder":
        """An embedder saved with :meth:`save`, for the same model ``lm`` (checked by fingerprint)."""
        from safetensors.numpy import load_file

        path = Path(path)
        if not (path / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{path} holds no saved embedder ({CONFIG_FILE} is missing)")
        info = json.loads((path / CONFIG_FILE).read_text())
        if info.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"{path} was saved with schema version {info.get('schema_version')}, "
                             f"this workbench reads version {SCHEMA_VERSION}")
        if info["fingerprint"] != lm.fingerprint:
            raise ValueError(f"{path} was fitted on model {info['model']!r} (fingerprint {info['fingerprint']}), "
                             f"not on this one ({lm.fingerprint}); fit a new embedder for this model")
        emb = cls(lm, **info["config"])
        if info.get("fitted"):
            stats = load_file(str(path / STATS_FILE))
            emb.hs_stats = Standardizer(stats["hs_mean"], stats["hs_std"])
            emb.rw_stats = Standardizer(stats["rw_mean"], stats["rw_std"])
            emb.reference_size = int(info.get("reference_size", 0))
        return emb
