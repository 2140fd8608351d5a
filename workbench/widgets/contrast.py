"""Self-contrast decoding panel: prompt, beta and alpha sliders, weak routing, side-by-side outputs.

Press *Decode* (or call :meth:`ContrastPanel.run`) to decode the prompt greedily and with SCMoE
under the chosen preset (the workbench default, or ``"scmoe"``: the reference code's prompt tokens
and EOS ban, see :mod:`workbench.contrast.presets`);
the two outputs are shown side by side, the tokens where the contrast changed the choice are
highlighted, and hovering a token shows its strong/weak probabilities and contrast score. The
export bar writes the per-token explanation as CSV.

The ms/token figures compare warm runs: before the first timed decode of a preset and weak routing,
both methods decode two tokens untimed (the first forward passes of a model, and the first with a
weak routing's hooks, pay one-off costs that would otherwise be charged to whichever runs first).

Example:
    >>> import tempfile, workbench as wb
    >>> from workbench.testing import tiny_model
    >>> from workbench.widgets.contrast import ContrastPanel
    >>> lm = wb.wrap(*tiny_model("mixtral"))
    >>> panel = ContrastPanel(lm, prompt="12 + 34 =", max_new_tokens=4, folder=tempfile.mkdtemp())
    >>> panel.beta.value = 1.0
    >>> panel.weak.value = "top1"
    >>> panel.run().method
    'scmoe'
    >>> panel.preset.value = "scmoe"   # the paper code's definitions: no BOS added, EOS banned
    >>> lm.tokenizer.eos_token_id in panel.run().token_ids
    False
    >>> [p.name for p in panel.export_bar.export("csv")]
    ['scmoe_explanation.csv', 'greedy_explanation.csv']
"""

from __future__ import annotations

import html

import ipywidgets as W
import pandas as pd

from workbench.contrast.decode import generate, generate_greedy
from workbench.contrast.render import comparison_html
from workbench.contrast.weak import WEAK_CHOICES
from workbench.widgets.export_bar import ExportBar


class ContrastPanel(W.VBox):
    """Greedy versus SCMoE on one prompt, with the contrast of every token on hover.

    Args:
        lm: a :class:`~workbench.loading.MoEModel` with a tokenizer.
        prompt: initial prompt.
        beta, alpha: initial contrast strength and plausibility cut-off.
        weak: initial weak routing (a name of :data:`~workbench.contrast.WEAK_CHOICES`).
        max_new_tokens: tokens to generate per run.
        stop: stop string(s).
        preset: None (the workbench default) or ``"scmoe"`` (the reference code's definitions).
        folder: where the export bar writes.
    """

    def __init__(self, lm, prompt: str = "", beta: float = 0.5, alpha: float = 0.1, weak: str = "rank2",
                 max_new_tokens: int = 32, stop=None, preset: str | None = None, folder="exports"):
        self.lm = lm
        self.stop = stop
        self.greedy = None
        self.scmoe = None
        self._warm: set = set()
        choices = [c for c in WEAK_CHOICES if not (c == "rank2" and lm.num_experts < 3)]
        if weak not in choices:
            choices.append(weak)
        self.prompt = W.Textarea(value=prompt, description="prompt", layout=W.Layout(width="98%", height="70px"))
        self.beta = W.FloatSlider(value=beta, min=0.0, max=3.0, step=0.05, description="β (contrast)",
                                  continuous_update=False, style={"description_width": "90px"})
        self.alpha = W.FloatSlider(value=alpha, min=0.0, max=1.0, step=0.01, description="α (plausible)",
                                   continuous_update=False, style={"description_width": "90px"})
        self.weak = W.Dropdown(options=choices, value=weak, description="weak routing",
                               style={"description_width": "90px"})
        self.max_new_tokens = W.IntSlider(value=max_new_tokens, min=1, max=256, description="max tokens",
                                          continuous_update=False, style={"description_width": "90px"})
        self.preset = W.Dropdown(options=[("workbench: BOS first, stop at EOS", None),
                                          ("scmoe: the paper's code (tokenizer's tokens, EOS banned)", "scmoe")],
                                 value=preset, description="preset", style={"description_width": "90px"},
                                 layout=W.Layout(width="460px"))
        self.button = W.Button(description="Decode", icon="play", button_style="primary")
        self.output = W.HTML(value="<i>press Decode</i>")
        self.export_bar = ExportBar(self._tables, folder=folder)
        self.export_bar.format.value = "csv"
        self.button.on_click(lambda _b: self._safe_run())
        super().__init__([self.prompt, W.HBox([self.beta, self.alpha]),
                          W.HBox([self.weak, self.max_new_tokens, self.button]), self.preset, self.output,
                          self.export_bar])

    def run(self):
        """Decode the prompt greedily and with SCMoE under the current controls; returns the SCMoE
        :class:`~workbench.contrast.result.Generation`."""
        kwargs = {"max_new_tokens": int(self.max_new_tokens.value), "stop": self.stop, "preset": self.preset.value}
        self.warm_up()
        self.greedy = generate_greedy(self.lm, self.prompt.value, **kwargs)
        self.scmoe = generate(self.lm, self.prompt.value, beta=float(self.beta.value),
                              alpha=float(self.alpha.value), weak=self.weak.value, **kwargs)
        self.output.value = comparison_html(self.greedy, self.scmoe)
        return self.scmoe

    def warm_up(self) -> None:
        """Decode two tokens with each method, untimed, once per preset and weak routing."""
        key = (self.preset.value, self.weak.value)
        if key in self._warm:
            return
        kwargs = {"max_new_tokens": 2, "stop": None, "preset": self.preset.value}
        generate_greedy(self.lm, self.prompt.value, **kwargs)
        generate(self.lm, self.prompt.value, beta=float(self.beta.value), alpha=float(self.alpha.value),
                 weak=self.weak.value, **kwargs)
        self._warm.add(key)

    def _safe_run(self) -> None:
        try:
            self.run()
        except Exception as err:  # shown in the panel; the button must keep working
            self.output.value = f"<span style='color:#D55E00'>{html.escape(str(err))}</span>"

    def explanation(self) -> pd.DataFrame:
        """The SCMoE run's per-token explanation (run first)."""
        if self.scmoe is None:
            raise ValueError("nothing decoded yet: press Decode or call run() first")
        return self.scmoe.explain()

    def _tables(self) -> dict:
        if self.scmoe is None:
            raise ValueError("nothing decoded yet: press Decode or call run() first")
        return {"scmoe_explanation": self.scmoe.explain(), "greedy_explanation": self.greedy.explain()}
