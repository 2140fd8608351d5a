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
   the original with skipping (:func:`~workbench.pruning.compare`).
4. *Save checkpoint* writes the pruned model (plain-transformers loadable, with β when ticked); the
   export bar writes the tables (CSV) and figures.

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
import plotly.graph_objects as go

from workbench import pruning
from workbench.widgets.export_bar import ExportBar

NARROW = {"description_width": "90px"}


#: what a placeholder sets, reset in the browser before its first real figure (a layout assignment
#: is sent as a relayout of the new keys only, so the placeholder's keys would otherwise stay)
_PLACEHOLDER_RESET = {"annotations": [], "height": None, "plot_bgcolor": None, "xaxis.visible": None,
                      "yaxis.visible": None}


def _placeholder(text: str) -> go.FigureWidget:
    """An empty figure that says which button fills it (instead of bare default axes)."""
    widget = go.FigureWidget(layout=go.Layout(
        height=160, xaxis={"visible": False}, yaxis={"visible": False}, plot_bgcolor="white",
        annotations=[{"text": text, "showarrow": False, "xref": "paper", "yref": "paper", "x": 0.5, "y": 0.5,
                      "font": {"size": 14, "color": "#555"}}]))
    widget._workbench_placeholder = True
    return widget


def _set_figure(widget: go.FigureWidget, fig: go.Figure) -> None:
    if getattr(widget, "_workbench_placeholder", False):
        widget.plotly_relayout(_PLACEHOLDER_RESET)
        widget._workbench_placeholder = False
    with widget.batch_update():
        widget.data = []
        widget.add_traces(fig.data)
        widget.layout = fig.layout


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

    Attributes:
        result: the last :class:`~workbench.pruning.PruningResult`; ``baselines``: the frequency and
        random results at the same ``r``; ``calibration``: the last
        :class:`~workbench.pruning.SkipCalibration`; ``evaluation_table``: the last perplexity table.
    """

    def __init__(self, lm, calibration, evaluation=None, *, pruner=None, max_tokens: int = 256,
                 folder="exports", preset=None):
        self.lm, self.evaluation_rows, self.max_tokens = lm, list(evaluation or []), max_tokens
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
        self.kept_fig = _placeholder("press Prune: the experts each layer keeps")
        self.loss_fig = _placeholder("press Prune: the loss per layer against the baselines")
        self.table = W.HTML()
        self.calibrate_button = W.Button(description="Calibrate β", icon="sliders")
        self.beta_scale = W.FloatSlider(value=1.0, min=0.0, max=3.0, step=0.05, description="β scale", style=NARROW,
                                        continuous_update=False)
        self.skip_fig = _placeholder("press Calibrate β: thresholds and skip rates per layer")
        self.evaluate_button = W.Button(description="Evaluate", icon="bar-chart", button_style="warning")
        self.ppl_fig = _placeholder("press Evaluate: held-out perplexity per domain")
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
        super().__init__([
            self.preset, W.HBox([self.keep, self.share]),
            W.HBox([self.method, self.progressive, self.seed, self.run_button]),
            self.kept_fig, self.loss_fig, self.table,
            W.HBox([self.calibrate_button, self.beta_scale]), self.skip_fig,
            self.evaluate_button, self.ppl_fig, self.ppl_table,
            W.HBox([self.checkpoint, self.with_beta, self.save_button]), self.status, self.export_bar])

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
        self.pruned = None
        _set_figure(self.kept_fig, self.result.plot())
        _set_figure(self.loss_fig, pruning.loss_plot([self.result, *self.baselines]))
        frame = self.result.to_dataframe()[["layer", "search", "kept", "loss", "relative_loss", "evaluated", "seconds"]]
        self.table.value = (f"<p>calibration: {html.escape(self.pruner.describe_units())}</p>"
                            + frame.to_html(index=False, float_format=lambda v: f"{v:.4g}"))
        return self.result

    def calibrate(self):
        """Calibrate skipping thresholds on the calibration texts (original model)."""
        with pruning.saved_skipping_off(self.lm):
            self.calibration = pruning.calibrate_skipping(self.lm, self.texts, progress=False,
                                                          preset=self._current_pruner().preset)
        self._show_skipping()
        return self.calibration

    def _show_skipping(self) -> None:
        if self.calibration is not None:
            _set_figure(self.skip_fig, self.calibration.plot(float(self.beta_scale.value)))

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
            self.evaluation_table = pruning.compare(conditions, self.evaluation_rows, max_tokens=self.max_tokens)
        _set_figure(self.ppl_fig, pruning.ppl_plot(self.evaluation_table[self.evaluation_table.domain != "mean"]))
        wide = pruning.ppl_table(self.evaluation_table)
        calls = self.evaluation_table[self.evaluation_table.domain == "mean"].set_index("condition").calls_per_token
        self.ppl_table.value = (wide.to_html(float_format=lambda v: f"{v:.2f}")
                                + "<p>expert calls per token (all MoE layers): "
                                + ", ".join(f"{html.escape(str(k))}: {v:.2f}" for k, v in calls.items()) + "</p>")
        return self.evaluation_table

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
