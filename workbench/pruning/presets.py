"""Calibration presets of pruning and skipping: how calibration text becomes forward batches.

**The workbench default** (``preset=None``): every document is tokenised on its own and cut into
chunks of at most ``max_length`` tokens; ``batch_size`` chunks, right-padded, make one forward batch
and one term of ``L(S) = Σ_b ‖Z_b − Ẑ_b‖_F``. Documents never share a sequence (no token attends to
an unrelated document, positions start at 0 as at inference), every calibration token is used, and
nothing depends on a shuffle.

**preset="lu2024"** — Lu et al.'s code (Lucky-Lance/Expert_Sparsity at 16067c0,
``data/build.py`` ``build_calib_loader``), reproduced exactly by :func:`stream_blocks`:

1. the documents are shuffled with ``seed`` (``Dataset.shuffle(seed=42)``, lines 50-51: numpy's
   ``default_rng(seed).permutation``) and the first ``blocks * 16`` kept;
2. each is tokenised with the tokenizer's own special tokens (``tokenize_function``, line 65);
3. ``group_texts`` (lines 79-95), run by ``datasets.map(batched=True)`` on groups of 1,000
   documents (its default ``batch_size``), joins each group into one stream and cuts it into
   blocks of ``block_size`` tokens, dropping the remainder; a group shorter than one block is kept
   whole, as one shorter block (lines 86-87 floor only when ``total_length >= block_size``);
4. the first ``blocks`` blocks are kept (lines 101-103); ``block_size`` is the tokenizer's
   ``model_max_length`` capped at ``--max_block_size`` 2048 (lines 40-47); the loader batches 8
   blocks, in order, without padding (lines 105-113; ``main.py`` line 38, ``--batch_size 8``).

The reference asserts that the corpus yields more than ``blocks`` blocks (line 102); here a smaller corpus
uses the blocks it has (:attr:`StreamBlocks.blocks` is a maximum, and the count is reported). Blocks
longer than the model's context run as the reference would run them, with a warning.

The loss, the search and the skipping statistic are the same under both (``model/wrapper.py``
lines 45-52 and 109-125: dropped logits at ``-inf`` before the softmax, top-k, renormalise,
``Σ_b ‖Z_b − Ẑ_b‖_F`` in float64 over the loader's batches; ``method/dynamic_skipping.py`` lines
49-56: the median of ``w₂ / w₁`` of the sorted softmax): the presets differ only in the calibration
units, and on the same documents that is enough to change the kept set.

Example:
    >>> from workbench.testing import tiny_tokenizer
    >>> from workbench.pruning.presets import StreamBlocks, stream_blocks
    >>> texts = ["The quick brown fox jumps over the lazy dog."] * 3 + ["def add(a, b): return a + b"]
    >>> blocks = stream_blocks(tiny_tokenizer(), texts, StreamBlocks(block_size=8, blocks=4))
    >>> [len(b) for b in blocks]
    [8, 8, 8, 8]
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StreamBlocks:
    """Lu et al.'s calibration: shuffle, join, cut fixed blocks (see the module docstring).

    Args:
        seed: seed of the document shuffle (the reference's ``--seed`` default, 42).
        blocks: most blocks kept (``--n_blocks_for_stat``, 128); ``blocks * docs_per_block``
            documents are drawn before tokenising.
        block_size: tokens per block (None: the tokenizer's ``model_max_length``, at most 2048).
        batch_size: blocks per forward batch and per Frobenius-norm term (``--batch_size``, 8).
        docs_per_block: documents drawn per wanted block (16 in the reference).
        map_batch: documents joined into one stream before cutting (``datasets.map``'s 1,000).
    """

    seed: int = 42
    blocks: int = 128
    block_size: int | None = None
    batch_size: int = 8
    docs_per_block: int = 16
    map_batch: int = 1000

    def __post_init__(self):
        for name in ("blocks", "batch_size", "docs_per_block", "map_batch"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"StreamBlocks: {name} must be at least 1, got {getattr(self, name)}")
        if self.block_size is not None and int(self.block_size) < 1:
            raise ValueError(f"StreamBlocks: block_size must be at least 1 token, got {self.block_size}")

    def size(self, tokenizer) -> int:
        """The block length: ``block_size``, else ``min(tokenizer.model_max_length, 2048)``."""
        if self.block_size is not None:
            return int(self.block_size)
        return int(min(getattr(tokenizer, "model_max_length", 2048) or 2048, 2048))


#: named presets of :class:`~workbench.pruning.Pruner` and :func:`~workbench.pruning.calibrate_skipping`
PRESETS = {"lu2024": StreamBlocks()}


def resolve_preset(preset) -> StreamBlocks | None:
    """None, a :class:`StreamBlocks`, or the one a name of :data:`PRESETS` stands for.

    Raises:
        ValueError: for an unknown name (the message lists the names).
    """
    if preset is None or isinstance(preset, StreamBlocks):
        return preset
    if isinstance(preset, str) and preset in PRESETS:
        return PRESETS[preset]
    raise ValueError(f"unknown calibration preset {preset!r}; choose None (the workbench default: documents "
                     f"chunked and padded), one of {', '.join(map(repr, PRESETS))}, or a StreamBlocks(...)")


def stream_blocks(tokenizer, texts, spec: StreamBlocks = PRESETS["lu2024"]) -> list[list[int]]:
    """The calibration blocks of Lu et al.'s code for ``texts``, in the order the loader yields them.

    Args:
        tokenizer: the model's tokenizer (its own special tokens are added, as the reference does).
        texts: calibration documents (strings).
        spec: the settings (:class:`StreamBlocks`).

    Returns:
        Up to ``spec.blocks`` lists of token ids, each ``spec.size(tokenizer)`` long (a stream group
        shorter than one block gives one shorter block).
    """
    texts = list(texts)
    if not texts:
        raise ValueError("no calibration texts given")
    order = np.random.default_rng(spec.seed).permutation(len(texts))
    chosen = [texts[i] for i in order[: min(spec.blocks * spec.docs_per_block, len(texts))]]
    size = spec.size(tokenizer)
    blocks: list[list[int]] = []
    for start in range(0, len(chosen), spec.map_batch):
        group = chosen[start:start + spec.map_batch]
        stream = list(itertools.chain.from_iterable(tokenizer(t)["input_ids"] for t in group))
        total = (len(stream) // size) * size if len(stream) >= size else len(stream)
        blocks.extend(stream[i:i + size] for i in range(0, total, size))
    return [b for b in blocks if b][: spec.blocks]


def block_units(lm, texts, spec: StreamBlocks) -> list[tuple[int, int, list[int]]]:
    """``(block, 0, ids)`` calibration units of the stream blocks (each block its own sequence).

    Warns when the blocks are longer than the model's context (the reference would run them).
    """
    blocks = stream_blocks(lm.tokenizer, texts, spec)
    context = getattr(lm.config, "max_position_embeddings", None)
    size = spec.size(lm.tokenizer)
    if isinstance(context, int) and size > context:
        warnings.warn(f"calibration blocks of {size} tokens run past the model's context of {context} positions, "
                      f"as the reference code would run them; pass preset=StreamBlocks(block_size={context}) "
                      "to stay within it", stacklevel=3)
    return [(i, 0, ids) for i, ids in enumerate(blocks)]


def default_units(lm, texts, max_length: int) -> list[tuple[int, int, list[int]]]:
    """``(document, start, ids)`` chunks of at most ``max_length`` tokens, document by document."""
    from workbench.replay.capture import _units

    return _units(lm, list(texts), int(max_length), True)
