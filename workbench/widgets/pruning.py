"""Pruning and skipping panel: choose r (or a share) and a method, see what is kept, lost and saved.

Wiring only; the work is done by :mod:`workbench.pruning`:

0. *calibration* — the workbench default (each document chunked, chunks padded into batches) or
   ``"lu2024"``, Lu et al.'s code's stream of fixed blocks (:mod:`workbench.pruning.presets`); each
   choice keeps its own :class:`~workbench.pruning.Pruner` and layer caches.
1. *Prune* — :meth:`~workbench.pruning.Pruner.prune` with the chosen ``r`` and method (layer caches
   are captured on the first run and reused); the kept/pruned map and the loss per layer (the chosen
   method next to the frequency and random baselines at the same ``r``) appear.
2. *Calibrate β* — :func:`~workbench.pruning.calibrate_skipping` on the calibration texts; the β-scale
   slider rescales every threshold and the skip-rate plot follows without running the model.
3. *Evaluate* — held-out perplexity per domain and expert calls per token: original, pruned, and
   the original with skipping (:func:`~workbench.pruning.compare`), on the first *docs per domain*
   evaluation rows of every domain (a sample across domains, not the first rows of the list).
4. *Save checkpoint* writes the pruned model (plain-transformers loadable, with β when ticked); the
   export bar writes the tables (CSV) and figures.

Results the notebook already computed can be handed in (``result=``, ``baselines=``, ``skipping=``,
``quality=``): the panel starts from them, their figures drawn, its controls set to match.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets.pruning import PruningPanel
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> texts = ["The quick brown fox jumps over the lazy dog.", "def add(a, b): return a + b"]
    >>> panel = PruningPanel(lm, texts, [{"text": "12 + 34 = 46", "label": "arith"}], folder=tempfile.mkdtemp())
    >>> panel.keep.value = 6
    >>> panel.run().keep
    6
    >>> panel.share.value
    0.25
    >>> round(panel.calibrate().beta[0], 3) > 0
    True
    >>> panel.evaluate().condition.unique().tolist()
    ['original', 'enumerate r=6', 'skipping (β × 1.00)']
    >>> panel.preset.value = "lu2024"
    >>> panel.run().settings["units"].startswith("lu2024")
    True
"""

from __future__ import annotations

import html

import ipywidgets as W

from workbench import pruning
from workbench.widgets._figures import placeholder as _placeholder
from workbench.widgets._figures import set_figure as _set_figure
from workbench.widgets._figures import shown_in
from workbench.widgets.export_bar import ExportBar

NARROW = {"description_width": "90px"}


def sample_per_domain(rows, per_domain: int) -> list:
    """The first ``per_domain`` rows of every domain (``row["label"]``), domains in order of first
    appearance: a sample across domains of a list that may be sorted by domain.

    Example:
        >>> rows = [{"text": t, "label": l} for t, l in zip("abcdef", "xxxyyz")]
        >>> [r["text"] for r in sample_per_domain(rows, 2)]
        ['a', 'b', 'd', 'e', 'f']
    """
    taken: dict = {}
    out = []
    for row in rows:
        label = row.get("label", "") if isinstance(row, dict) else ""
        if taken.get(label, 0) < per_domain:
            taken[label] = taken.get(label, 0) + 1
            out.append(row)
    return out


class PruningPanel(W.VBox):
    """Expert pruning and dynamic skipping on one model.

    Args:
        lm: the unpruned :class:`~workbench.loading.MoEModel` (with a tokenizer).
        calibration: calibration texts (or ``{"text"}`` rows).
        evaluation: labelled held-out rows ``[{"text", "label"}]`` for perplexity per domain.
        pruner: a ready :class:`~workbench.pruning.Pruner` (its caches are reused); default: built here.
        preset: the initial calibration: None (the workbench default) or ``"lu2024"`` (ignored when
            ``pruner`` is given: its own preset is the initial one).
        max_tokens: tokens per evaluation document.
        folder: where the export bar and the checkpoint button write.
        eval_per_domain: initial *docs per domain* of Evaluate (default: about 18 documents in all,
            spread evenly over the domains of ``evaluation``).
        result: a :class:`~workbench.pruning.PruningResult` already computed on ``lm``: shown at once,
            the controls set to its ``r``, method and seed.
        baselines: the results to draw beside it in the loss plot (default: the frequency and random
            baselines at the same ``r``, computed from ``pruner`` when one is given).
        skipping: a :class:`~workbench.pruning.SkipCalibration` already computed on ``lm``.
        quality: a :func:`~workbench.pruning.compare` table already computed: shown at once.

    Attributes:
        result: the last :class:`~workbench.pruning.PruningResult`; ``baselines``: the frequency and
        random results at the same ``r``; ``calibration``: the last
        :class:`~workbench.pruning.SkipCalibration`; ``evaluation_table``: the last perplexity table.
    """

    def __init__(self, lm, calibration, evaluation=None, *, pruner=None, max_tokens: int = 256,
                 folder="exports", preset=None, eval_per_domain: int | None = None, result=None,
                 baselines=None, skipping=None, quality=None):
        self.lm, self.evaluation_rows, self.max_tokens = lm, list(evaluation or []), max_tokens
        given_pruner = pruner is not None
        self.pruner = pruner or pruning.Pruner(lm, calibration, progress=False, preset=preset)
        self.texts = self.pruner.texts
        first = self.pruner.preset_name or (None if self.pruner.preset is None else "given")
        self._pruners = {first: self.pruner}
        options = [("workbench: each document chunked, padded", None),
                   ("lu2024: Lu et al.'s stream of fixed blocks", "lu2024")]
        if first == "given":
            options.append((f"the given pruner's blocks ({self.pruner.preset})", "given"))
        self.preset = W.Dropdown(options=options, value=first, description="calibration", style=NARROW,
                                 layout=W.Layout(width="420px"))
        self.result = self.calibration = self.evaluation_table = self.pruned = None
        self.baselines: list = []
        keeps = self.pruner.groups.valid_keeps()
        if not keeps:
            raise pruning.PruningConstraintError("this model's expert groups leave no valid number of experts to keep")
        default = max(keeps) if 3 * lm.num_experts // 4 not in keeps else 3 * lm.num_experts // 4
        self.keep = W.SelectionSlider(options=keeps, value=default, description="keep r", style=NARROW,
                                      continuous_update=False)
        self.share = W.FloatSlider(value=1 - default / lm.num_experts, min=0.0, max=1 - min(keeps) / lm.num_experts,
                                   step=1 / lm.num_experts, description="share pruned", style=NARROW,
                                   readout_format=".0%", continuous_update=False)
        self.method = W.Dropdown(options=list(pruning.METHODS), value="enumerate", description="method",
                                 style=NARROW)
        self.progressive = W.Checkbox(value=False, description="progressive")
        self.seed = W.IntText(value=0, description="seed", style=NARROW, layout=W.Layout(width="160px"))
        self.run_button = W.Button(description="Prune", icon="scissors", button_style="primary")
        self.kept_slot = _placeholder("press Prune: the experts each layer keeps")
        self.loss_slot = _placeholder("press Prune: the loss per layer against the baselines")
        self.table = W.HTML()
        self.calibrate_button = W.Button(description="Calibrate β", icon="sliders")
        self.beta_scale = W.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05, description="β scale", style=NARROW,
                                        continuous_update=False)
        self.skip_slot = _placeholder("press Calibrate β: thresholds and skip rates per layer")
        self.evaluate_button = W.Button(description="Evaluate", icon="bar-chart", button_style="warning")
        domains = self.domains()
        most = max(domains.values(), default=1)
        per_domain = eval_per_domain or max(1, 18 // max(len(domains), 1))
        self.eval_docs = W.BoundedIntText(value=min(per_domain, most), min=1, max=most, description="docs per domain",
                                          style={"description_width": "110px"}, layout=W.Layout(width="200px"))
        self.eval_note = W.HTML(value=self._domain_note())
        self.ppl_slot = _placeholder("press Evaluate: held-out perplexity per domain")
        self.ppl_table = W.HTML()
        self.checkpoint = W.Text(value=f"{folder}/pruned_checkpoint", description="checkpoint", style=NARROW,
                                 layout=W.Layout(width="420px"))
        self.with_beta = W.Checkbox(value=False, description="with β (calibrated on the pruned model)")
        self.save_button = W.Button(description="Save checkpoint", icon="save")
        self.status = W.HTML()
        self.export_bar = ExportBar(self.export_items, folder=folder, prefix="pruning_")

        self.keep.observe(self._keep_changed, names="value")
        self.share.observe(self._share_changed, names="value")
        self.beta_scale.observe(lambda _c: self._show_skipping(), names="value")
        self.run_button.on_click(lambda _b: self._safe(self.run))
        self.calibrate_button.on_click(lambda _b: self._safe(self.calibrate))
        self.evaluate_button.on_click(lambda _b: self._safe(self.evaluate))
        self.save_button.on_click(lambda _b: self._safe(self.save_checkpoint))
        # the notebook's results go into the figures before the box is built: the box opens their
        # comms, and a figure's first message should already hold what it shows
        if result is not None:
            if baselines is None:
                baselines = self._baselines(result) if given_pruner else []
            self.show_result(result, baselines)
        if skipping is not None:
            self.calibration = skipping
            self._show_skipping()
        if quality is not None:
            self.show_evaluation(quality)
        super().__init__([
            self.preset, W.HBox([self.keep, self.share]),
            W.HBox([self.method, self.progressive, self.seed, self.run_button]),
            self.kept_slot, self.loss_slot, self.table,
            W.HBox([self.calibrate_button, self.beta_scale]), self.skip_slot,
            W.HBox([self.evaluate_button, self.eval_docs, self.eval_note]), self.ppl_slot, self.ppl_table,
            W.HBox([self.checkpoint, self.with_beta, self.save_button]), self.status, self.export_bar])

    # -- figures (each slot shows a new widget per redraw: see FigureSlot) ---------------
    kept_fig = shown_in("kept_slot", "The experts each layer keeps (``go.FigureWidget``).")

    loss_fig = shown_in("loss_slot", "The loss per layer against the baselines.")

    skip_fig = shown_in("skip_slot", "Skipping thresholds and skip rates per layer.")

    ppl_fig = shown_in("ppl_slot", "Held-out perplexity per domain.")

    # -- evaluation sample ---------------------------------------------------------------
    def domains(self) -> dict:
        """``{domain: number of evaluation rows}``, in order of first appearance."""
        out: dict = {}
        for row in self.evaluation_rows:
            label = row.get("label", "") if isinstance(row, dict) else ""
            out[label] = out.get(label, 0) + 1
        return out

    def evaluation_sample(self) -> list:
        """The rows Evaluate uses: the first *docs per domain* rows of every domain."""
        return sample_per_domain(self.evaluation_rows, int(self.eval_docs.value))

    def _domain_note(self) -> str:
        domains = self.domains()
        if len(domains) == 1:
            return (f"<small style='color:#D55E00'>the evaluation rows hold one domain ({html.escape(str(next(iter(domains))))}"
                    "): pass rows of several domains to compare them</small>")
        return f"<small>{len(domains)} domains</small>" if domains else ""

    # -- control links -------------------------------------------------------------------
    def _keep_changed(self, change) -> None:
        share = 1 - change["new"] / self.lm.num_experts
        if abs(self.share.value - share) > 1e-9:
            self.share.value = share

    def _share_changed(self, change) -> None:
        want = pruning.keep_count(self.lm.num_experts, share=change["new"])
        nearest = min(self.keep.options, key=lambda r: (abs(r - want), r))
        if nearest != self.keep.value:
            self.keep.value = nearest

    def _safe(self, fn) -> None:
        try:
            self.status.value = ""
            fn()
        except Exception as err:  # shown in the panel; the buttons must keep working
            self.status.value = (f"<span style='color:#D55E00'>{html.escape(type(err).__name__)}: "
                                 f"{html.escape(str(err))}</span>")

    def _current_pruner(self):
        """The pruner of the chosen calibration (built, and its caches captured, on first use)."""
        key = self.preset.value
        if key not in self._pruners:
            self._pruners[key] = pruning.Pruner(self.lm, self.texts, progress=False, preset=key)
        self.pruner = self._pruners[key]
        return self.pruner

    # -- actions -------------------------------------------------------------------------
    def run(self):
        """Prune with the current controls; returns the :class:`~workbench.pruning.PruningResult`."""
        self._current_pruner()
        keep, seed = int(self.keep.value), int(self.seed.value)
        self.result = self.pruner.prune(keep=keep, method=self.method.value, seed=seed,
                                        progressive=bool(self.progressive.value))
        self.baselines = [self.pruner.prune(keep=keep, method=m, seed=seed) for m in ("frequency", "random")
                          if m != self.method.value or self.progressive.value]
        self.show_result(self.result, self.baselines)
        return self.result

    def _baselines(self, result) -> list:
        """The frequency and random results at the result's ``r`` (those it is not itself)."""
        seed = int(result.settings.get("seed", self.seed.value) or 0)
        return [self.pruner.prune(keep=result.keep, method=m, seed=seed) for m in ("frequency", "random")
                if m != result.method or result.progressive]

    def show_result(self, result, baselines=()) -> None:
        """Show a pruning result (kept map, loss per layer beside ``baselines``, table) and set the
        controls to its ``r``, method and seed."""
        if result.fingerprint != self.lm.fingerprint:
            raise ValueError(f"this result was computed on another model ({result.model}); the panel's model is "
                             f"{self.lm.name}")
        self.result, self.baselines, self.pruned = result, list(baselines), None
        if result.keep in self.keep.options:
            self.keep.value = result.keep
        if result.method in self.method.options:
            self.method.value = result.method
        self.progressive.value = bool(result.progressive)
        if isinstance(result.settings.get("seed"), int):
            self.seed.value = result.settings["seed"]
        _set_figure(self.kept_slot, result.plot())
        _set_figure(self.loss_slot, pruning.loss_plot([result, *self.baselines]))
        frame = result.to_dataframe()[["layer", "search", "kept", "loss", "relative_loss", "evaluated", "seconds"]]
        units = result.settings.get("units") or self.pruner.describe_units()
        self.table.value = (f"<p>calibration: {html.escape(str(units))}</p>"
                            + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}"))

    def calibrate(self):
        """Calibrate skipping thresholds on the calibration texts (original model)."""
        with pruning.saved_skipping_off(self.lm):
            self.calibration = pruning.calibrate_skipping(self.lm, self.texts, progress=False,
                                                          preset=self._current_pruner().preset)
        self._show_skipping()
        return self.calibration

    def _show_skipping(self) -> None:
        if self.calibration is not None:
            _set_figure(self.skip_slot, self.calibration.plot(float(self.beta_scale.value)))

    def evaluate(self):
        """Perplexity per domain and expert calls: original, pruned, original with skipping."""
        if not self.evaluation_rows:
            raise ValueError("give evaluation rows ([{'text', 'label'}]) to measure perplexity")
        conditions = {"original": (self.lm, [])}
        if self.result is not None:
            if self.pruned is None:
                self.pruned = self.result.apply(self.lm)
            conditions[self.result.label] = (self.pruned, [])
        if self.calibration is not None:
            scale = float(self.beta_scale.value)
            conditions[f"skipping (β × {scale:.2f})"] = (self.lm, [self.calibration.spec(scale)])
        with pruning.saved_skipping_off(self.lm):
            table = pruning.compare(conditions, self.evaluation_sample(), max_tokens=self.max_tokens)
        self.show_evaluation(table)
        return self.evaluation_table

    def show_evaluation(self, table) -> None:
        """Show a :func:`~workbench.pruning.compare` table: perplexity per domain, calls per token."""
        self.evaluation_table = table
        _set_figure(self.ppl_slot, pruning.ppl_plot(table[table.domain != "mean"]))
        wide = pruning.ppl_table(table)
        calls = table[table.domain == "mean"].set_index("condition").calls_per_token
        self.ppl_table.value = (wide.to_html(float_format=lambda v: f"{v:.2f}")
                                + "<p>expert calls per token (all MoE layers): "
                                + ", ".join(f"{html.escape(str(k))}: {v:.2f}" for k, v in calls.items()) + "</p>")

    def save_checkpoint(self, folder=None):
        """Write the pruned checkpoint (and β, when ticked) to the checkpoint folder; returns the path."""
        if self.result is None:
            raise ValueError("prune first (press Prune)")
        skip = None
        if self.with_beta.value:
            skip = pruning.calibrate_skipping(self.result.apply(self.lm), self.texts, progress=False,
                                              preset=self.pruner.preset)
        out = self.result.save_checkpoint(self.lm, folder or self.checkpoint.value, skip=skip)
        self.status.value = f"wrote the pruned checkpoint to {html.escape(str(out))}"
        return out

    def export_items(self) -> dict:
        """What the export bar writes: tables and figures that exist so far."""
        items = {}
        if self.result is not None:
            items["layers"] = self.result.to_dataframe()
            items["kept_map"] = self.result.plot()
            items["loss"] = pruning.loss_plot([self.result, *self.baselines])
        if self.calibration is not None:
            items["skipping"] = self.calibration.to_dataframe(float(self.beta_scale.value))
            items["skipping_plot"] = self.calibration.plot(float(self.beta_scale.value))
        if self.evaluation_table is not None:
            items["perplexity"] = self.evaluation_table
            items["perplexity_plot"] = pruning.ppl_plot(self.evaluation_table[self.evaluation_table.domain != "mean"])
        return items
