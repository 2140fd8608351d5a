"""The batch jobs behind ``python -m workbench prune`` and ``python -m workbench skip``.

* :func:`prune_job` — prune ``--model`` to ``--keep`` experts per layer with ``--method`` and write the
  pruned checkpoint (weights, config, tokenizer; loads with plain transformers) and ``pruning.csv``
  (one row per layer: kept and dropped experts, loss, search used) into ``--out``; optionally also
  calibrate skipping thresholds on the pruned model and save them in its config.
* :func:`skip_job` — calibrate per-layer thresholds and write the model with them in its config
  (``workbench.load`` re-applies them) and ``skipping.csv``.

Calibration text: a ``.txt``/``.jsonl`` file, or by default the calibration part of the demo's
held-out documents (:func:`~workbench.pruning.calibration.demo_split`), cut into units by the
workbench default (documents chunked and padded) or by ``preset="lu2024"`` (Lu et al.'s stream of
fixed blocks; :mod:`workbench.pruning.presets`).

Example:
    >>> from workbench.pruning.jobs import calibration_texts
    >>> len(calibration_texts(None, per_domain=2)) >= 16
    True
"""

from __future__ import annotations

from pathlib import Path

from workbench.pruning.calibration import demo_split, texts_of


def calibration_texts(path, per_domain: int = 16, sample: int | None = None, seed: int = 0) -> list[str]:
    """Texts of ``path`` (``.txt`` one a line, or ``.jsonl``), else the demo calibration split."""
    if path:
        from workbench.jsonl import read_texts

        texts, _ = read_texts(path)
    else:
        cal, _ = demo_split(per_domain, 0, seed=seed)
        texts = texts_of(cal)
    texts = [t for t in texts if t.strip()]
    if sample is not None:
        texts = texts[:sample]
    if not texts:
        raise ValueError("no calibration texts: give --texts FILE with non-empty lines")
    return texts


def prune_job(lm, texts, out, *, keep=None, share=None, method="enumerate", progressive=False, seed=0,
              batch_size=None, max_length=None, max_subsets=None, beam_width=1, skip=False, progress=True,
              preset=None):
    """Prune, write the checkpoint and ``pruning.csv`` to ``out``; returns the :class:`PruningResult`."""
    from workbench.pruning.pruner import MAX_SUBSETS, Pruner
    from workbench.pruning.skipping import calibrate_skipping

    pruner = Pruner(lm, texts, batch_size=batch_size, max_length=max_length,
                    max_subsets=max_subsets or MAX_SUBSETS, beam_width=beam_width, progress=progress, preset=preset)
    result = pruner.prune(keep, share=share, method=method, seed=seed, progressive=progressive)
    cal = None
    if skip:
        cal = calibrate_skipping(result.apply(lm), texts, batch_size=batch_size, max_length=max_length,
                                 progress=progress, preset=preset)
    result.save_checkpoint(lm, out, skip=cal, progress=progress)
    if cal is not None:
        cal.save(Path(out) / "skipping.csv")
    return result


def skip_job(lm, texts, out, *, scale=1.0, batch_size=None, max_length=None, progress=True, preset=None):
    """Calibrate thresholds, write the model with them and ``skipping.csv`` to ``out``."""
    from workbench.pruning.skipping import calibrate_skipping, check_scale, saved_skipping_off

    check_scale(scale)  # before the calibration runs, not after
    with saved_skipping_off(lm):
        cal = calibrate_skipping(lm, texts, batch_size=batch_size, max_length=max_length, progress=progress,
                                 preset=preset)
    cal.save_checkpoint(lm, out, scale=scale, progress=progress)
    return cal
