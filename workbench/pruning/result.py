"""The result of pruning a model: which experts each layer keeps, with the losses that chose them.

A :class:`PruningResult` has one :class:`~workbench.pruning.search.LayerChoice` per MoE layer. It
converts to a tidy table (one row per layer), saves as ``pruning.csv`` + ``pruning.json`` (no
pickle) and loads back, gives the equivalent routing edit on the unpruned model (:meth:`mask`),
builds the pruned model (:meth:`apply`) and writes the pruned checkpoint (:meth:`save_checkpoint`).

Example:
    >>> from workbench.pruning.result import PruningResult
    >>> from workbench.pruning.search import LayerChoice
    >>> res = PruningResult("toy", "0" * 16, num_experts=4, top_k=1, keep=2, method="frequency",
    ...                     layers=[LayerChoice(0, (1, 3), (0, 2), loss=1.5, norm=3.0, search="frequency")])
    >>> res.kept, res.mask()
    ({0: [0, 2]}, Mask(layers=(0,), rows=None, experts={0: (1, 3)}, mode='next_best'))
    >>> res.to_dataframe()[["layer", "kept", "dropped", "loss", "relative_loss"]].to_dict("records")
    [{'layer': 0, 'kept': '0 2', 'dropped': '1 3', 'loss': 1.5, 'relative_loss': 0.5}]
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from workbench.pruning.search import LayerChoice

SCHEMA_VERSION = 1
CSV_FILE = "pruning.csv"
JSON_FILE = "pruning.json"


def _ids(values) -> str:
    return " ".join(str(int(v)) for v in values)


@dataclass
class PruningResult:
    """Which experts every MoE layer keeps, and why.

    Attributes:
        model: name of the pruned model's source.
        fingerprint: the unpruned model's fingerprint (a result is refused by another model).
        num_experts: ``E`` before pruning.
        top_k: ``k``.
        keep: ``r``, experts kept per layer.
        method: ``"enumerate"``, ``"beam"``, ``"greedy"``, ``"frequency"`` or ``"random"``.
        layers: one :class:`~workbench.pruning.search.LayerChoice` per MoE layer.
        progressive: inputs re-collected after earlier layers were pruned.
        settings: calibration and search settings (batch size, tokens, seed, switch-over size, ...).
    """

    model: str
    fingerprint: str
    num_experts: int
    top_k: int
    keep: int
    method: str
    layers: list[LayerChoice]
    progressive: bool = False
    settings: dict = field(default_factory=dict)

    # -- views ---------------------------------------------------------------------------
    @property
    def kept(self) -> dict[int, list[int]]:
        """``{layer: kept expert ids}``."""
        return {c.layer: [int(e) for e in c.kept] for c in self.layers}

    @property
    def dropped(self) -> dict[int, list[int]]:
        """``{layer: dropped expert ids}``."""
        return {c.layer: [int(e) for e in c.dropped] for c in self.layers}

    @property
    def label(self) -> str:
        return f"{self.method}{' (progressive)' if self.progressive else ''} r={self.keep}"

    @property
    def total_loss(self) -> float:
        return float(sum(c.loss for c in self.layers))

    def to_dataframe(self) -> pd.DataFrame:
        """One row per layer: method, search used, kept and dropped experts, loss, relative loss, cost."""
        rows = [{"layer": c.layer, "method": self.method, "progressive": self.progressive, "keep": self.keep,
                 "search": c.search, "kept": _ids(c.kept), "dropped": _ids(c.dropped), "loss": c.loss,
                 "relative_loss": c.relative_loss, "evaluated": c.evaluated, "candidates": c.candidates,
                 "seconds": round(c.seconds, 3), "note": c.note} for c in self.layers]
        return pd.DataFrame(rows)

    def mask(self):
        """The routing edit that makes the unpruned model route like the pruned one."""
        from workbench.probes.edits import Mask

        return Mask({layer: ids for layer, ids in self.dropped.items() if ids})

    def check_model(self, lm) -> None:
        """Refuse a model other than the one this result was computed on."""
        from workbench.trace import TraceMismatchError

        if lm.fingerprint != self.fingerprint:
            raise TraceMismatchError(f"this pruning result was computed on model {self.fingerprint} ({self.model}), "
                                     f"not on {lm.fingerprint}; run the pruning on this model")

    # -- applying ------------------------------------------------------------------------
    def apply(self, lm):
        """The pruned :class:`~workbench.loading.MoEModel` (the original is left as it is)."""
        from workbench.pruning.slicing import prune_model

        self.check_model(lm)
        meta = {"method": self.method, "progressive": self.progressive,
                "losses": {str(c.layer): c.loss for c in self.layers}}
        return prune_model(lm, self.kept, meta=meta)

    def save_checkpoint(self, lm, out, *, skip=None, progress: bool = True) -> Path:
        """Write the pruned checkpoint (weights, config, tokenizer) and this result's CSV/JSON to ``out``.

        Args:
            lm: the unpruned model this result belongs to.
            out: checkpoint folder.
            skip: optional :class:`~workbench.pruning.skipping.SkipCalibration` of the *pruned* model,
                whose thresholds are saved in the config.
            progress: a ``tqdm.auto`` bar while the checkpoint is written.
        """
        from workbench.pruning.slicing import save_pruned

        pruned = self.apply(lm)
        if skip is not None:
            skip.check_model(pruned)
            skip.write_config(pruned.model.config)
        out = save_pruned(pruned, out, progress=progress)
        self.save(out)
        return out

    # -- saving --------------------------------------------------------------------------
    def save(self, folder) -> Path:
        """Write ``pruning.csv`` (one row per layer) and ``pruning.json`` (everything) into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.to_dataframe().to_csv(folder / CSV_FILE, index=False, float_format="%.9g")
        data = asdict(self)
        data["schema_version"] = SCHEMA_VERSION
        (folder / JSON_FILE).write_text(json.dumps(data, indent=1, default=float))
        return folder

    @classmethod
    def load(cls, folder) -> PruningResult:
        """Read a result written by :meth:`save`."""
        path = Path(folder) / JSON_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {JSON_FILE} in {folder}: save a PruningResult there first")
        data = json.loads(path.read_text())
        if data.pop("schema_version", 0) > SCHEMA_VERSION:
            raise ValueError(f"{path} was written by a newer workbench")
        layers = [LayerChoice(**dict(c, dropped=tuple(c["dropped"]), kept=tuple(c["kept"]))) for c in data.pop("layers")]
        return cls(layers=layers, **data)

    def plot(self):
        """Kept/pruned map, layer x expert (see :func:`workbench.pruning.plots.kept_map`)."""
        from workbench.pruning.plots import kept_map

        return kept_map(self)

    def __repr__(self) -> str:
        losses = ", ".join(f"L{c.layer}: {c.loss:.4g}" for c in self.layers)
        searches = sorted({c.search for c in self.layers})
        return (f"PruningResult({self.label} of E={self.num_experts} on {self.model}; search: {'/'.join(searches)}; "
                f"losses {losses})")
