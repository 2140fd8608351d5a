"""Layer-wise expert pruning (Lu et al.): capture each layer once, then prune to any ``r`` quickly.

A :class:`Pruner` runs the unpruned model over calibration text once and keeps, for every MoE layer,
a layer cache with every expert's output (:func:`workbench.replay.capture`). Each call of
:meth:`Pruner.prune` then chooses the experts to drop layer by layer from those caches:

* ``"enumerate"`` — the argmin of ``L(S)`` over every allowed drop set while their number is at most
  ``max_subsets`` (the switch-over size); above it, beam search on the same loss (``beam_width``;
  1 = greedy elimination). Each layer's row says which search ran and why.
* ``"beam"`` / ``"greedy"`` — the search regardless of size.
* ``"frequency"`` — drop the least frequently routed experts; ``"random"`` — drop random experts
  (``seed``). Their losses are scored the same way, for comparison.
* ``progressive=True`` — each layer's inputs are re-collected with the earlier layers already
  pruned (the target outputs stay the unpruned model's).

Calibration units (``preset``): by default each document is chunked and the chunks padded into
batches; ``preset="lu2024"`` cuts Lu et al.'s stream of fixed blocks instead (shuffled, joined,
remainder dropped), exactly as their code does (:mod:`workbench.pruning.presets`).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.pruning import Pruner
    >>> lm = wb.wrap(*tiny_model("olmoe"))
    >>> pruner = Pruner(lm, ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a"],
    ...                 progress=False)
    >>> res = pruner.prune(keep=6)
    >>> res.keep, [len(v) for v in res.kept.values()], res.to_dataframe().search.tolist()
    (6, [6, 6], ['enumerate', 'enumerate'])
    >>> pruner.prune(keep=6, method="frequency").total_loss >= res.total_loss
    True
    >>> lu = Pruner(lm, ["The quick brown fox jumps over the lazy dog."] * 60, preset="lu2024", progress=False)
    >>> lu.prune(keep=6).settings["units"]   # shuffled, joined, cut into blocks of the tokenizer's 256 tokens
    'lu2024: 2 block(s) of 256 tokens, 512 tokens in all'
"""

from __future__ import annotations

import math
import random
import time

import torch
from tqdm.auto import tqdm

from workbench.pruning.calibration import texts_of
from workbench.pruning.loss import LossScorer
from workbench.pruning.presets import PRESETS, block_units, default_units, resolve_preset
from workbench.pruning.result import PruningResult
from workbench.pruning.search import (
    LayerChoice,
    beam_search,
    enumerate_search,
    frequency_drop,
    random_drop,
    routed_counts,
)
from workbench.pruning.skipping import saved_skipping_off
from workbench.pruning.subsets import Groups

METHODS = ("enumerate", "beam", "greedy", "frequency", "random")
#: default switch-over size: enumerate while a layer has at most this many drop sets
MAX_SUBSETS = 20_000


def keep_count(num_experts: int, keep: int | None = None, share: float | None = None) -> int:
    """``r`` from either ``keep`` (experts kept) or ``share`` (fraction of experts pruned, rounded).

    Example:
        >>> keep_count(16, share=0.25), keep_count(16, keep=12)
        (12, 12)
    """
    if (keep is None) == (share is None):
        raise ValueError("give exactly one of keep= (experts to keep per layer) or share= (fraction to prune)")
    if share is not None:
        if not 0 <= share < 1:
            raise ValueError(f"share must be in [0, 1), got {share}")
        return num_experts - int(round(share * num_experts))
    return int(keep)


class Pruner:
    """Prunes one model's experts from layer caches captured once over calibration text.

    Args:
        lm: the unpruned :class:`~workbench.loading.MoEModel` (with a tokenizer).
        texts: calibration texts (strings, or rows with a ``"text"``).
        batch_size: chunks per calibration batch: the capture's forward batch and the unit whose
            Frobenius norms are summed (default 8; the preset's under a preset).
        max_length: chunk length in tokens (default: the model's context, at most 2048); not with
            a preset, whose blocks have their own length.
        preset: None (the workbench default: each document chunked, chunks padded into batches),
            ``"lu2024"`` (Lu et al.'s stream of fixed 2,048-token blocks, seed 42) or a
            :class:`~workbench.pruning.presets.StreamBlocks` with other settings.
        max_subsets: switch-over size: ``"enumerate"`` searches exhaustively while a layer has at
            most this many allowed drop sets, else by beam search.
        beam_width: width of that beam search (1 = greedy elimination).
        cache_dir: keep the layer caches on disk there (one layer in memory at a time).
        progress: progress bars and a size estimate.
        backend: recombine backend (None: the default).
    """

    def __init__(self, lm, texts, *, batch_size: int | None = None, max_length: int | None = None,
                 max_subsets: int = MAX_SUBSETS, beam_width: int = 1, cache_dir=None, progress: bool = True,
                 backend: str | None = None, preset=None):
        if lm.tokenizer is None:
            raise ValueError("pruning needs the model's tokenizer; pass one to wb.wrap(model, tokenizer)")
        self.lm, self.texts = lm, texts_of(texts)
        if not self.texts:
            raise ValueError("no calibration texts given")
        self.preset = resolve_preset(preset)
        self.preset_name = next((k for k, v in PRESETS.items() if v == self.preset and preset == k), None)
        if self.preset is not None and (max_length is not None or cache_dir is not None):
            raise ValueError("a calibration preset cuts its own blocks and keeps the caches in memory: drop "
                             "max_length=/cache_dir=, or set the block length with preset=StreamBlocks(block_size=N)")
        if batch_size is None:
            batch_size = 8 if self.preset is None else self.preset.batch_size
        if batch_size < 1 or max_subsets < 1 or beam_width < 1:
            raise ValueError("batch_size, max_subsets and beam_width must all be at least 1")
        self.batch_size, self.max_length = int(batch_size), max_length
        self.max_subsets, self.beam_width = int(max_subsets), int(beam_width)
        self.cache_dir, self.progress, self.backend = cache_dir, progress, backend
        self.groups = Groups.of(lm.rule, lm.num_experts, lm.top_k)
        self._caches = None
        self._units = None
        self._scorers: dict[int, LossScorer] = {}

    # -- calibration ---------------------------------------------------------------------
    @property
    def units(self) -> list:
        """The calibration units ``(unit, start, ids)``: document chunks, or the preset's blocks."""
        if self._units is None:
            from workbench.replay.capture import chunk_length

            self._units = (default_units(self.lm, self.texts, chunk_length(self.lm, self.max_length))
                           if self.preset is None else block_units(self.lm, self.texts, self.preset))
            if not self._units:
                raise ValueError("the calibration texts gave no tokens")
        return self._units

    def describe_units(self) -> str:
        """One line: how the calibration text was cut (e.g. ``'lu2024: 8 block(s) of 2048 tokens, ...'``)."""
        if self.preset is None:
            return f"documents chunked and padded ({len(self.units)} chunks)"
        name = self.preset_name or repr(self.preset)
        total = sum(len(u[2]) for u in self.units)
        return (f"{name}: {len(self.units)} block(s) of {self.preset.size(self.lm.tokenizer)} tokens, "
                f"{total} tokens in all")

    @property
    def caches(self):
        """The layer caches (captured on first use)."""
        if self._caches is None:
            with saved_skipping_off(self.lm):
                if self.preset is None:
                    from workbench.replay import capture

                    self._caches = capture(self.lm, self.texts, candidates="all", batch_size=self.batch_size,
                                           max_length=self.max_length, out=self.cache_dir, progress=self.progress,
                                           backend=self.backend)
                else:
                    from workbench.pruning.unit_capture import capture_units

                    self._caches = capture_units(self.lm, self.units, batch_size=self.batch_size,
                                                 progress=self.progress, backend=self.backend,
                                                 texts=len(self.texts))
        return self._caches

    def scorer(self, layer: int) -> LossScorer:
        """The loss of drop sets of ``layer`` (see :class:`~workbench.pruning.loss.LossScorer`)."""
        if layer not in self._scorers:
            if self.cache_dir is not None:  # caches on disk: hold one layer in memory at a time
                self._scorers.clear()
            self._scorers[layer] = LossScorer(self.lm, self.caches[layer], self.batch_size, self.backend)
        return self._scorers[layer]

    def counts(self, layer: int):
        """``[E]`` how often the unpruned model routes calibration tokens to each expert."""
        return routed_counts(self.caches[layer].topk_idx, self.lm.num_experts)

    @property
    def num_tokens(self) -> int:
        return self.caches[self.lm.moe_layers[0]].num_tokens

    # -- pruning -------------------------------------------------------------------------
    def _choose(self, layer, keep, method, scorer, rng) -> LayerChoice:
        groups, total = self.groups, self.groups.count(keep)
        start = time.perf_counter()
        note, evaluated = "", 1
        if method in ("enumerate", "beam", "greedy"):
            if method == "enumerate" and total <= self.max_subsets:
                dropped, loss, evaluated = enumerate_search(scorer, groups, keep)
                search, note = "enumerate", f"all {total:,} drop sets"
            else:
                width = 1 if method == "greedy" else self.beam_width
                dropped, loss, evaluated = beam_search(scorer, groups, keep, width)
                search = "greedy" if width == 1 else "beam"
                note = (f"{total:,} drop sets > max_subsets={self.max_subsets:,}, so " if method == "enumerate"
                        else "") + (f"beam search, width {width}" if width > 1 else "greedy elimination")
        elif method == "frequency":
            dropped, search = frequency_drop(self.counts(layer), groups, keep), "frequency"
            loss = float(scorer([dropped])[0])
            note = "least frequently routed on the calibration tokens"
        else:
            dropped, search = random_drop(groups, keep, rng), "random"
            loss = float(scorer([dropped])[0])
        kept = tuple(e for e in range(self.lm.num_experts) if e not in dropped)
        return LayerChoice(layer, tuple(dropped), kept, loss, scorer.norm, search, evaluated, total,
                           time.perf_counter() - start, note)

    def prune(self, keep: int | None = None, *, share: float | None = None, method: str = "enumerate",
              seed: int = 0, progressive: bool = False, layers=None) -> PruningResult:
        """Choose the experts every MoE layer keeps.

        Args:
            keep: experts kept per layer, ``r`` (or give ``share``).
            share: fraction of each layer's experts to prune (rounded to whole experts).
            method: one of :data:`METHODS`.
            seed: seed of ``"random"``.
            progressive: re-collect each layer's inputs after the earlier layers are pruned.
            layers: restrict to some MoE layers (the result then cannot be saved as a checkpoint).

        Returns:
            A :class:`~workbench.pruning.result.PruningResult`.
        """
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        if progressive and method in ("frequency", "random"):
            raise ValueError("progressive re-collects inputs for the loss-based searches; use it with "
                             "method='enumerate', 'beam' or 'greedy'")
        keep = keep_count(self.lm.num_experts, keep, share)
        self.groups.check(keep)
        layers = list(self.lm.moe_layers) if layers is None else [int(x) for x in layers]
        rng = random.Random(seed)
        choices, dropped = [], {}
        _ = self.caches  # captured first, under its own progress bar
        bar = tqdm(layers, desc=f"{method} r={keep}", unit="layer", disable=not self.progress)
        for layer in bar:
            scorer = self.scorer(layer)
            if progressive and any(dropped.values()):
                scorer = LossScorer(self.lm, self._progressive_cache(layer, dropped), self.batch_size, self.backend)
            choice = self._choose(layer, keep, method, scorer, rng)
            choices.append(choice)
            dropped[layer] = list(choice.dropped)
            bar.set_postfix_str(f"layer {layer}: loss {choice.loss:.4g} ({choice.search})")
        cache0 = self.caches[layers[0]]
        settings = {"seed": seed, "batch_size": self.batch_size, "batches": self.scorer(layers[0]).num_batches,
                    "max_length": cache0.meta.get("max_length"), "tokens": cache0.num_tokens,
                    "texts": len(self.texts), "max_subsets": self.max_subsets, "beam_width": self.beam_width,
                    "units": self.describe_units()}
        return PruningResult(self.lm.name, self.lm.fingerprint, self.lm.num_experts, self.lm.top_k, keep, method,
                             choices, progressive, settings)

    @torch.no_grad()
    def _progressive_cache(self, layer: int, dropped: dict):
        """``layer``'s cache with inputs from the model with earlier layers pruned, targets unchanged."""
        from workbench.probes.edits import Mask, edit
        from workbench.replay.cache import LayerCache
        from workbench.replay.capture import _run_layer, expert_columns, pad_id, shared_part

        base = self.caches[layer]
        lm = self.lm
        with saved_skipping_off(lm), edit(lm, Mask({k: v for k, v in dropped.items() if v})):
            got = _run_layer(lm, layer, self.units, self.batch_size, pad_id(lm), None)
        if got["x"].shape[0] != base.num_tokens:
            raise RuntimeError("the progressive pass saw a different number of tokens than the capture")
        outputs, cand = expert_columns(lm, layer, got["x"], got["logits"], lm.num_experts, self.backend)
        return LayerCache(layer, got["x"], got["logits"], base.y, shared_part(lm, layer, got["x"]), got["idx"],
                          got["w"], base.token_ids, base.doc, base.pos, dict(base.meta), expert_out=outputs,
                          candidates=cand, bias=base.bias)

    def compare(self, keeps, methods=("enumerate", "frequency", "random"), seed: int = 0) -> list[PruningResult]:
        """One result per ``(keep, method)``."""
        return [self.prune(keep=r, method=m, seed=seed) for r in keeps for m in methods]

    def __repr__(self) -> str:
        n = "not yet captured" if self._caches is None else f"{self.num_tokens} tokens"
        units = "" if self._units is None else f"{self.describe_units()}, "
        return (f"Pruner({self.lm.adapter.name}, E={self.lm.num_experts}, k={self.lm.top_k}; {len(self.texts)} "
                f"calibration texts, {units}{n}; batch_size={self.batch_size}, max_subsets={self.max_subsets:,})")


def prune(lm, texts, keep: int | None = None, *, share: float | None = None, method: str = "enumerate",
          seed: int = 0, progressive: bool = False, **kwargs) -> PruningResult:
    """One-shot pruning: ``Pruner(lm, texts, **kwargs).prune(...)``."""
    return Pruner(lm, texts, **kwargs).prune(keep, share=share, method=method, seed=seed, progressive=progressive)


def drop_set_count(num_experts: int, keep: int) -> int:
    """``C(E, E - r)``."""
    return math.comb(num_experts, num_experts - keep)
