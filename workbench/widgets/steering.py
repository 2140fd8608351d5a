"""Expert steering panel: choose two prompt sets, rank experts, toggle them, compare, measure.

Wiring only; the work is done by :mod:`workbench.steering`:

1. *Rank* — :func:`~workbench.steering.find_experts` on set A vs set B; the ranked table (layer,
   expert, effect, p, q) and the contrast heatmap appear.
2. Choose experts (the top-N slider preselects the best-ranked; edit the selection freely), the
   action (off with either semantics, or on with a weight).
3. *Generate* — the prompt's continuation with and without steering, side by side.
4. *Run experiment* — baseline / top-N off / N random off per seed / top-N on, with a progress bar;
   the bar chart and summary appear.
5. The export bar writes the tables (CSV) and figures (HTML/PNG/SVG).

The *method* dropdown is the preset (:mod:`workbench.steering.presets`): ``workbench`` ranks by
Welch's t and runs MoTE's conditions; ``steermoe`` ranks by risk difference, preselects set B's
experts to switch on (the *activate* slider) beside set A's to switch off, steers them in one edit
and runs SteerMoE's switch vs random switch.

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets.steering import SteeringPanel
    >>> lm = wb.wrap(*tiny_model("qwen3_moe"))
    >>> sets = {"de": ["Der Hund ist", "Die Katze ist"], "en": ["The dog is", "The cat is"]}
    >>> panel = SteeringPanel(lm, sets, max_new_tokens=3, permutations=50, folder=tempfile.mkdtemp())
    >>> panel.rank().a
    ['de']
    >>> panel.top_n.value = 2
    >>> len(panel.experts.value)
    2
    >>> panel.seeds.value = 1
    >>> panel.run_experiment().table.condition.tolist()
    ['baseline', 'top_off', 'random_off', 'top_on']
    >>> panel.preset.value = "steermoe"
    >>> panel.run_experiment().table.condition.tolist()
    ['baseline', 'switch', 'random_switch']
"""

from __future__ import annotations

import html
from contextlib import contextmanager

import ipywidgets as W

from workbench import steering
from workbench.steering.plot import outline_shapes
from workbench.widgets._figures import placeholder, set_figure, shown_in
from workbench.widgets.export_bar import ExportBar

REST = "(all other sets)"
NARROW = {"description_width": "110px"}


def _table_html(frame, limit: int = 20) -> str:
    rows = "".join(
        f"<tr><td>{r.rank}</td><td>{r.layer}</td><td>{r.expert}</td><td>{r.effect:+.2f}</td>"
        f"<td>{r.t:+.2f}</td><td>{r.p:.3g}</td><td>{r.q:.3g}</td><td>{r.risk_diff:+.3f}</td></tr>"
        for r in frame.head(limit).itertuples())
    return ("<table style='font-family:monospace;border-collapse:collapse'><tr><th>rank</th><th>layer</th>"
            "<th>expert</th><th>effect (d)</th><th>t</th><th>p</th><th>q</th><th>risk diff</th></tr>"
            + rows + "</table>")


def _comparison_html(table) -> str:
    cell = "style='vertical-align:top;padding:4px 8px;white-space:pre-wrap;font-family:monospace'"
    rows = "".join(f"<tr><td {cell}>{html.escape(r.prompt)}</td><td {cell}>{html.escape(r.baseline)}</td>"
                   f"<td {cell}>{html.escape(r.steered)}</td></tr>" for r in table.itertuples())
    return f"<table><tr><th>prompt</th><th>without steering</th><th>steered</th></tr>{rows}</table>"


class SteeringPanel(W.VBox):
    """MoTE-style steering on labelled prompt sets.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        sets: ``{name: [prompt, ...]}``, two or more sets.
        a, b: initial set names (default: the first set against all the others).
        behaviour: what the experiment measures (a callable or built-in name); default: a character
            n-gram classifier of set A vs set B prompts.
        max_new_tokens: tokens per continuation.
        permutations: shuffles of the permutation test.
        folder: where the export bar writes.
        contrast: an :class:`~workbench.steering.ExpertContrast` already computed (e.g. by
            :func:`~workbench.steering.find_experts` in the notebook): the panel starts from it, its
            table, heatmap and top-N selection shown; its sets become set A and set B.
        experiment: a :class:`~workbench.steering.SteeringExperiment` already run: its bar chart and
            summary are shown at once.

    Attributes:
        contrast: the last :class:`~workbench.steering.ExpertContrast`; ``experiment``: the last
        :class:`~workbench.steering.SteeringExperiment`; ``comparison``: the last side-by-side table.
    """

    def __init__(self, lm, sets: dict, a: str | None = None, b: str | None = None, behaviour=None,
                 max_new_tokens: int = 24, permutations: int = 1000, folder="exports", contrast=None,
                 experiment=None):
        if not isinstance(sets, dict) or len(sets) < 2:
            raise ValueError("SteeringPanel needs {name: [prompt, ...]} with at least two sets")
        self.lm, self.sets, self.behaviour = lm, {str(k): list(v) for k, v in sets.items()}, behaviour
        self.permutations = permutations
        self.contrast = self.experiment = self.comparison = None
        self._outline_held = False  # see _holding_outline
        names = list(self.sets)
        if contrast is not None:
            a, b = self._sets_of(contrast, a, b)
        self.set_a = W.Dropdown(options=names, value=a or names[0], description="set A", style=NARROW)
        self.set_b = W.Dropdown(options=[REST] + names, value=b or REST, description="set B", style=NARROW)
        self.measure = W.Dropdown(options=["count", "weight"], value="count", description="activation",
                                  style=NARROW)
        self.preset = W.Dropdown(options=[("workbench (Welch t, MoTE)", "workbench"),
                                          ("SteerMoE (risk diff, on + off)", "steermoe")],
                                 value="workbench", description="method", style=NARROW)
        self.activate = W.SelectMultiple(options=[], description="switch on", rows=4, style=NARROW,
                                         layout=W.Layout(width="420px"))
        self.activate_n = W.IntSlider(value=steering.presets.DEFAULT_ACTIVATE, min=0,
                                      max=len(lm.moe_layers) * lm.top_k, description="activate",
                                      continuous_update=False, style=NARROW)
        self.rank_button = W.Button(description="Rank experts", icon="sort-amount-desc", button_style="primary")
        self.table = W.HTML(value="<i>press Rank experts</i>")
        self.heatmap_slot = placeholder("press Rank experts: the layer × expert contrast of set A against set B")
        self.top_n = W.IntSlider(value=0, min=0, max=len(lm.moe_layers) * lm.num_experts // 2,
                                 description="top-N", continuous_update=False, style=NARROW)
        self.experts = W.SelectMultiple(options=[], description="experts", rows=8, style=NARROW,
                                        layout=W.Layout(width="420px"))
        self.action = W.ToggleButtons(options=[("switch off", "off"), ("force on", "on")], value="off")
        self.mode = W.Dropdown(options=[("next best takes the slot", "next_best"), ("slot stays empty", "empty")],
                               value="next_best", description="off semantics", style=NARROW)
        self.weight = W.BoundedFloatText(value=0.0, min=0.0, max=1.0, step=0.05,
                                         description="force weight (0 = offset)", style={"description_width": "150px"})
        self.prompt = W.Textarea(value=self.sets[self.set_a.value][0], description="prompt", style=NARROW,
                                 layout=W.Layout(width="98%", height="60px"))
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=128, description="new tokens",
                                          continuous_update=False, style=NARROW)
        self.generate_button = W.Button(description="Generate", icon="play")
        self.output = W.HTML(value="")
        self.seeds = W.IntSlider(value=3, min=1, max=10, description="random seeds", style=NARROW)
        self.run_button = W.Button(description="Run experiment", icon="flask", button_style="warning")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="", layout=W.Layout(width="300px"))
        self.experiment_slot = placeholder("press Run experiment: the behaviour rate per condition")
        self.summary = W.HTML(value="")
        self.status = W.HTML(value="")
        self.export_bar = ExportBar(self.export_items, folder=folder, prefix="steering_")

        self.rank_button.on_click(lambda _b: self._safe(self.rank))
        self.generate_button.on_click(lambda _b: self._safe(self.generate))
        self.run_button.on_click(lambda _b: self._safe(self.run_experiment))
        self.top_n.observe(self._select_top, names="value")
        self.activate_n.observe(self._select_top, names="value")
        self.experts.observe(self._outline, names="value")
        self.activate.observe(self._outline, names="value")
        self.preset.observe(lambda _ch: self._select_top() if self.contrast is not None else self._outline(),
                            names="value")
        self.set_a.observe(lambda ch: setattr(self.prompt, "value", self.sets[ch["new"]][0]), names="value")
        # results first, then the box (it opens the figures' comms with what they show)
        if contrast is not None:
            self.show_contrast(contrast)
        if experiment is not None:
            self.show_experiment(experiment)
        super().__init__([
            W.HBox([self.set_a, self.set_b, self.measure, self.preset, self.rank_button]), self.table,
            self.heatmap_slot,
            W.HBox([W.VBox([self.top_n, self.action, self.mode, self.weight]), self.experts]),
            W.HBox([self.activate_n, self.activate]),
            self.prompt, W.HBox([self.max_new_tokens, self.generate_button]), self.output,
            W.HBox([self.seeds, self.run_button, self.progress]), self.experiment_slot, self.summary,
            self.status, self.export_bar])

    heatmap = shown_in("heatmap_slot", "The layer × expert contrast of set A against set B, selected "
                                       "experts outlined (``go.FigureWidget``).")
    experiment_fig = shown_in("experiment_slot", "The behaviour rate per condition of the last experiment.")

    def _sets_of(self, contrast, a, b):
        """Set A and set B of a computed contrast, as this panel's dropdown values."""
        names = list(self.sets)
        if len(contrast.a) != 1 or contrast.a[0] not in names:
            raise ValueError(f"the contrast's set A {contrast.a} is not one of the panel's sets {names}")
        a = contrast.a[0]
        rest = sorted(n for n in names if n != a)
        if sorted(contrast.b) == rest and len(rest) > 1:
            b = REST
        elif len(contrast.b) == 1 and contrast.b[0] in names:
            b = contrast.b[0]
        else:
            raise ValueError(f"the contrast's set B {contrast.b} is neither one of the panel's sets nor all "
                             f"the others {rest}")
        return a, b

    # -- actions -------------------------------------------------------------------------
    def _safe(self, fn) -> None:
        try:
            self.status.value = ""
            fn()
        except Exception as err:  # shown in the panel; the button must keep working
            self.status.value = f"<span style='color:#D55E00'>{html.escape(type(err).__name__)}: " \
                                f"{html.escape(str(err))}</span>"

    def _b_sets(self):
        return None if self.set_b.value == REST else self.set_b.value

    def rank(self):
        """Rank the experts of set A against set B; fills the table, heatmap and expert list."""
        if self.set_b.value == self.set_a.value:
            raise ValueError("choose two different sets")
        self.contrast = steering.find_experts(self.lm, self.sets, a=self.set_a.value, b=self._b_sets(),
                                              measure=self.measure.value, permutations=self.permutations)
        self.show_contrast(self.contrast)
        return self.contrast

    def show_contrast(self, contrast) -> None:
        """Show a computed contrast: table, heatmap, expert lists, top-N preselected and outlined."""
        self.contrast = contrast
        if getattr(contrast, "measure", None) in self.measure.options and self.measure.value != contrast.measure:
            self.measure.value = contrast.measure
        self.activate.options = [(f"L{r.layer}/E{r.expert}  rd={r.risk_diff:+.3f}", (int(r.layer), int(r.expert)))
                                 for r in contrast.table.sort_values("risk_diff", kind="mergesort").itertuples()
                                 if r.risk_diff < 0]
        table = contrast.table
        self.table.value = _table_html(table)
        with self._holding_outline():
            self.experts.options = [(f"L{r.layer}/E{r.expert}  d={r.effect:+.2f}  p={r.p:.3g}  rd={r.risk_diff:+.3f}",
                                     (int(r.layer), int(r.expert))) for r in table.itertuples()]
            if self.top_n.value == 0:
                self.top_n.value = min(10, self.top_n.max)
            else:
                self._select_top()
        self._outline(base=contrast.plot())

    def show_experiment(self, experiment) -> None:
        """Show a finished experiment: the bar chart and the summary."""
        self.experiment = experiment
        set_figure(self.experiment_slot, experiment.plot())
        self.summary.value = "<pre>" + html.escape("\n".join(experiment.report_lines())) + "</pre>"

    @contextmanager
    def _holding_outline(self):
        """Selection changes inside redraw the heatmap not once each but once after (by the caller):
        each redraw sends a whole new figure to the browser."""
        before, self._outline_held = self._outline_held, True
        try:
            yield
        finally:
            self._outline_held = before

    def _outline(self, _change=None, *, base=None) -> None:
        """Outline the selected experts (and, for SteerMoE, those switched on) on the heatmap, or on
        ``base`` (a new contrast's figure), shown in its place."""
        if self.contrast is None or self._outline_held:
            return
        on = self.activated if self.preset.value == "steermoe" else []
        shapes = outline_shapes(self.contrast.layers, self.selected, on)
        if base is not None:
            base.layout.shapes = shapes
            set_figure(self.heatmap_slot, base)
            return
        with self.heatmap_slot.edit() as fig:
            fig.layout.shapes = shapes

    def _select_top(self, _change=None) -> None:
        """Preselect the top-N (by the method's ranking) and, for SteerMoE, set B's experts to switch on."""
        if self.contrast is None:
            return
        by = steering.get_preset(self.preset.value).rank_by
        with self._holding_outline():
            self.experts.value = tuple(self.contrast.top(self.top_n.value, by=by)) if self.top_n.value else ()
            on, _ = steering.select_steermoe(self.contrast, self.activate_n.value, 0, self.lm.top_k)
            self.activate.value = tuple(on)
        self._outline()

    @property
    def selected(self) -> list[tuple[int, int]]:
        """The chosen ``(layer, expert)`` pairs, best first by the method's ranking."""
        chosen = set(self.experts.value)
        pairs = [v for _, v in self.experts.options if v in chosen]
        if self.contrast is None:
            return pairs
        by = steering.get_preset(self.preset.value).rank_by
        order = self.contrast.table.sort_values(by, ascending=False, kind="mergesort")
        rank = {(int(r.layer), int(r.expert)): i for i, r in enumerate(order.itertuples())}
        return sorted(pairs, key=lambda p: rank.get(p, len(rank)))

    @property
    def activated(self) -> list[tuple[int, int]]:
        """For the SteerMoE method: the experts to switch on (at most ``k`` per layer)."""
        chosen = set(self.activate.value)
        return steering.fit_to_k([v for _, v in self.activate.options if v in chosen], self.lm.top_k)

    def _steer_kwargs(self) -> dict:
        weight = float(self.weight.value) or None
        experts = self.selected
        if self.preset.value == "steermoe":  # one edit: set B's experts on, the selected ones off
            return dict(experts=experts, activate=self.activated)
        if self.action.value == "on":
            experts = steering.fit_to_k(experts, self.lm.top_k)
        return dict(experts=experts, action=self.action.value, mode=self.mode.value, weight=weight)

    def generate(self):
        """Continue the prompt with and without the current steering; returns the table."""
        prompts = [p for p in self.prompt.value.split("\n") if p.strip()]
        if not prompts:
            raise ValueError("write a prompt first")
        self.comparison = steering.compare(self.lm, prompts, max_new_tokens=int(self.max_new_tokens.value),
                                           **self._steer_kwargs())
        self.output.value = _comparison_html(self.comparison)
        return self.comparison

    def run_experiment(self):
        """The controlled experiment on set A's prompts with the selected experts as top-N."""
        if self.contrast is None:
            self.rank()
        top = self.selected
        if not top:
            raise ValueError("select at least one expert (or set top-N)")
        a = self.set_a.value
        b_names = [n for n in self.sets if n != a] if self._b_sets() is None else [self._b_sets()]
        b_prompts = [p for n in b_names for p in self.sets[n]]
        behaviour = self.behaviour or steering.set_behaviour(self.sets[a], b_prompts, name=f"classified as {a}")

        def tick(done, total, _condition):
            self.progress.max, self.progress.value = total, done

        options = {}
        if self.preset.value == "steermoe":
            if not self.activated:
                raise ValueError("the SteerMoE method switches set B's experts on: raise 'activate' or pick some")
            options = dict(preset="steermoe", activate=self.activated)
        self.experiment = steering.run_experiment(
            self.lm, self.sets[a], top, behaviour, seeds=range(int(self.seeds.value)), mode=self.mode.value,
            on_weight=float(self.weight.value) or None, max_new_tokens=int(self.max_new_tokens.value),
            quality={"+".join(b_names): b_prompts}, progress=False, callback=tick, **options)
        self.show_experiment(self.experiment)
        return self.experiment

    def export_items(self) -> dict:
        """What the export bar writes: tables and figures that exist so far."""
        items = {}
        if self.contrast is not None:
            items["experts"] = self.contrast.table
            items["contrast"] = self.contrast.plot()
        if self.comparison is not None:
            items["comparison"] = self.comparison
        if self.experiment is not None:
            items["experiment"] = self.experiment.table
            items["summary"] = self.experiment.summary()
            items["experiment_plot"] = self.experiment.plot()
        return items
