"""Dynamic expert skipping (Lu et al.): per-layer thresholds calibrated on text, applied as an edit.

For each MoE layer, ``beta_l`` is the median over calibration tokens of ``w_i / w_1``: each
lower-ranked routing weight against the token's first (for ``k = 2`` just ``w_2 / w_1``; for
``k > 2`` the ratios of every lower rank are pooled). Weights and ranks are the family rule's own
(:func:`~workbench.kernels.route` on the router logits), exactly what the skip edit sees. The
calibration tokens come from documents chunked on their own (the default) or, with
``preset="lu2024"``, from Lu et al.'s stream of fixed blocks (:mod:`workbench.pruning.presets`; their
``method/dynamic_skipping.py`` takes the same median over every block token). At
inference ``wb.Skip(beta)`` empties slot ``i >= 1`` when ``w_i < beta_l * w_1`` and rescales the
remaining weights to the token's original total (renormalised families: to 1).

:class:`SkipCalibration` holds the thresholds and each calibration token's routing, so the share of
expert calls skipped can be read for any scaled threshold without running the model again. Its
thresholds are saved in a checkpoint's config (``workbench_skip_beta``); ``workbench.load`` re-applies
them as an edit that stays on (``lm.saved_skip``; :func:`saved_skipping_off` suspends it).

Example:
    >>> import workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.pruning.skipping import calibrate_skipping
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> cal = calibrate_skipping(lm, ["The quick brown fox jumps over the lazy dog."] * 3, progress=False)
    >>> sorted(cal.beta) == lm.moe_layers, all(0 < b <= 1 for b in cal.beta.values())
    (True, True)
    >>> with cal.apply(lm):
    ...     trace = wb.record(lm, ["The quick brown fox"], progress=False)
    >>> bool((trace.topk_idx[:, :, 1] == -1).any())
    True
"""

from __future__ import annotations

import contextlib
import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from workbench.kernels.routing import Decision, route, skip
from workbench.loading import SKIP_CONFIG_KEY as SKIP_KEY
from workbench.pruning.presets import block_units, default_units, resolve_preset
from workbench.replay.capture import chunk_length, pad_id, padded_batches


def check_scale(scale) -> float:
    """The threshold scale as a float, or a ValueError: it must be a finite number >= 0."""
    import math
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"scale must be a finite number >= 0 (it multiplies every threshold), got {scale!r}")
    return float(scale)


@contextlib.contextmanager
def saved_skipping_off(lm):
    """Suspend the skipping edit that ``workbench.load`` re-applied from a checkpoint, inside the block."""
    frame = getattr(lm, "saved_skip", None)
    if frame is None:
        yield
        return
    with lm.probes.suspend(frame):  # only in the calling context; other threads keep it
        yield


def calibration_units(lm, texts, preset=None, max_length: int | None = None) -> list:
    """``(unit, start, ids)`` calibration units: document chunks, or the preset's stream blocks."""
    if lm.tokenizer is None:
        raise ValueError("this model has no tokenizer; pass one to wb.wrap(model, tokenizer)")
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not one string (wrap it: [text])")
    spec = resolve_preset(preset)
    if spec is None:
        return default_units(lm, list(texts), chunk_length(lm, max_length))
    if max_length is not None:
        raise ValueError("a calibration preset cuts its own blocks: drop max_length=, or set the block length "
                         "with preset=StreamBlocks(block_size=N)")
    return block_units(lm, list(texts), spec)


@torch.no_grad()
def router_logits(lm, texts, *, batch_size: int = 8, max_length: int | None = None, progress: bool = True,
                  preset=None) -> dict[int, torch.Tensor]:
    """``{layer: [T, E] float32}`` router logits of every (non-padding) token of ``texts``, on the CPU."""
    units = calibration_units(lm, texts, preset, max_length)
    if not units:
        raise ValueError("no calibration text given")
    got: dict[int, list] = {layer: [] for layer in lm.moe_layers}
    seen: dict[int, torch.Tensor] = {}

    def listener(layer, logits, decision):
        seen[layer] = logits.detach()

    batches = padded_batches(units, batch_size, pad_id(lm))
    lm.probes.add_listener(listener)
    try:
        for ids, mask in tqdm(batches, total=-(-len(units) // batch_size), desc="calibrating", disable=not progress):
            seen.clear()
            lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False)
            keep = mask.reshape(-1).bool()
            for layer in lm.moe_layers:
                got[layer].append(seen[layer].float()[keep.to(seen[layer].device)].cpu())
    finally:
        lm.probes.remove_listener(listener)
    return {layer: torch.cat(parts) for layer, parts in got.items()}


def rank_ratios(d: Decision) -> torch.Tensor:
    """``[T, k - 1]`` float64 ratios ``w_i / w_1`` of a routing in rank order (0 where ``w_1 = 0``)."""
    w = torch.where(d.valid, d.w, torch.zeros_like(d.w)).double()
    first = w[:, :1]
    return torch.where(first > 0, w[:, 1:] / torch.where(first > 0, first, torch.ones_like(first)),
                       torch.zeros_like(w[:, 1:]))


def median_beta(ratios) -> float:
    """``numpy.median`` of all ratios (pooled over tokens and lower ranks)."""
    values = np.asarray(ratios, dtype=np.float64).ravel()
    if values.size == 0:
        raise ValueError("no routing-weight ratios: calibrate on some text, with k >= 2")
    return float(np.median(values))


def skipped_calls(d: Decision, beta: float) -> int:
    """Expert calls the skip edit removes from routing ``d`` at threshold ``beta`` (the kernel's own test)."""
    after = skip(d, float(beta))
    return int((d.valid & ~after.valid).sum())


@dataclass
class SkipCalibration:
    """Per-layer skipping thresholds and the calibration routing they came from.

    Attributes:
        model: the calibrated model's name; ``fingerprint``: its fingerprint.
        top_k: ``k``.
        beta: ``{layer: beta}`` (median ratio; clipped to 1).
        decisions: ``{layer: Decision [T, k]}`` of the calibration tokens (rank order, family rule).
    """

    model: str
    fingerprint: str
    top_k: int
    beta: dict
    decisions: dict = field(repr=False, default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(next(iter(self.decisions.values())).idx.shape[0]) if self.decisions else 0

    def thresholds(self, scale: float = 1.0) -> dict[int, float]:
        """``{layer: min(1, beta * scale)}``."""
        if scale < 0:
            raise ValueError(f"scale must be >= 0, got {scale}")
        return {layer: min(1.0, float(b) * float(scale)) for layer, b in self.beta.items()}

    def skip_rates(self, scale: float = 1.0) -> dict[int, float]:
        """Share of the calibration tokens' expert calls skipped per layer at ``beta * scale``."""
        out = {}
        for layer, beta in self.thresholds(scale).items():
            d = self.decisions[layer]
            out[layer] = skipped_calls(d, beta) / max(1, int(d.valid.sum()))
        return out

    def to_dataframe(self, scale: float = 1.0) -> pd.DataFrame:
        """One row per layer: ``beta``, ``threshold`` (scaled), ``skip_rate`` of expert calls, tokens."""
        rates = self.skip_rates(scale)
        th = self.thresholds(scale)
        return pd.DataFrame([{"layer": layer, "beta": self.beta[layer], "threshold": th[layer],
                              "skip_rate": rates[layer], "tokens": self.num_tokens} for layer in self.beta])

    def spec(self, scale: float = 1.0):
        """The ``wb.Skip`` edit spec with the (scaled) per-layer thresholds."""
        from workbench.probes.edits import Skip

        return Skip(self.thresholds(scale))

    def check_model(self, lm) -> None:
        from workbench.trace import TraceMismatchError

        if self.fingerprint not in (lm.fingerprint, _fingerprint_without_beta(lm)):
            raise TraceMismatchError(f"these thresholds were calibrated on model {self.fingerprint} ({self.model}), "
                                     f"not on {lm.fingerprint}; calibrate on this model")

    def apply(self, lm, scale: float = 1.0):
        """``with cal.apply(lm):`` the model skips experts (a :func:`workbench.edit` context)."""
        from workbench.probes.edits import edit

        self.check_model(lm)
        return edit(lm, self.spec(scale))

    def write_config(self, config, scale: float = 1.0) -> None:
        """Store the thresholds in a transformers config (``workbench_skip_beta``)."""
        setattr(config, SKIP_KEY, {str(layer): b for layer, b in self.thresholds(scale).items()})

    def save_checkpoint(self, lm, out, scale: float = 1.0, *, progress: bool = True) -> Path:
        """Write ``lm`` (weights, tokenizer) with the thresholds in its config, and ``skipping.csv``
        (``progress``: a ``tqdm.auto`` bar while the checkpoint is written)."""
        check_scale(scale)
        self.check_model(lm)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        from workbench.pruning.slicing import save_pruned

        config = lm.model.config
        before = getattr(config, SKIP_KEY, None)
        try:
            self.write_config(config, scale)
            save_pruned(lm, out, progress=progress)
        finally:
            if before is None:
                if hasattr(config, SKIP_KEY):
                    delattr(config, SKIP_KEY)
            else:
                setattr(config, SKIP_KEY, before)
        self.save(out / "skipping.csv", scale)
        return out

    def save(self, path, scale: float = 1.0) -> Path:
        """Write the per-layer table as CSV."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.to_dataframe(scale).to_csv(path, index=False, float_format="%.9g", quoting=csv.QUOTE_MINIMAL)
        return path

    def plot(self, scale: float = 1.0):
        """Thresholds and skip rates per layer (see :func:`workbench.pruning.plots.skip_plot`)."""
        from workbench.pruning.plots import skip_plot

        return skip_plot(self.to_dataframe(scale))

    def __repr__(self) -> str:
        rates = self.skip_rates()
        parts = ", ".join(f"L{layer}: beta={b:.3f} skips {rates[layer]:.0%}" for layer, b in self.beta.items())
        return f"SkipCalibration({self.model}, k={self.top_k}, {self.num_tokens} tokens; {parts})"


def _fingerprint_without_beta(lm) -> str:
    """The fingerprint ``lm`` would have without saved thresholds (they change the config)."""
    from workbench.loading import compute_fingerprint

    config = lm.model.config
    saved = getattr(config, SKIP_KEY, None)
    if saved is None:
        return lm.fingerprint
    try:
        delattr(config, SKIP_KEY)
        return compute_fingerprint(lm.model, lm.adapter, lm.moe_layers)
    finally:
        setattr(config, SKIP_KEY, saved)


def calibrate_skipping(lm, texts, *, batch_size: int | None = None, max_length: int | None = None,
                       progress: bool = True, preset=None) -> SkipCalibration:
    """Calibrate per-layer skipping thresholds ``beta_l`` on ``texts``.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer and ``k >= 2``.
        texts: calibration texts.
        batch_size: chunks per forward pass (default 8, or the preset's).
        max_length: chunk length in tokens (default: the model's context, at most 2048).
        progress: show a progress bar.
        preset: None (documents chunked), ``"lu2024"`` (Lu et al.'s stream of fixed blocks) or a
            :class:`~workbench.pruning.presets.StreamBlocks`.

    Returns:
        A :class:`SkipCalibration`; ``beta`` is ``numpy.median`` of the pooled ratios, clipped to 1
        (sigmoid families rank by a biased score, so a lower rank can carry a larger weight).
    """
    if lm.top_k < 2:
        raise ValueError(f"dynamic skipping drops lower-ranked experts; this model routes each token to k={lm.top_k} "
                         "expert, so there is nothing to skip")
    spec = resolve_preset(preset)
    if batch_size is None:
        batch_size = 8 if spec is None else spec.batch_size
    logits = router_logits(lm, texts, batch_size=batch_size, max_length=max_length, progress=progress, preset=spec)
    beta, decisions = {}, {}
    for layer, z in logits.items():
        bias = lm.selection_bias(layer)
        d = route(z, lm.rule, lm.top_k, None if bias is None else bias.detach().float().cpu())
        decisions[layer] = Decision(d.idx, d.w.float(), d.valid)
        beta[layer] = min(1.0, median_beta(rank_ratios(d).numpy()))
    return SkipCalibration(lm.name, _fingerprint_without_beta(lm), lm.top_k, beta, decisions)
