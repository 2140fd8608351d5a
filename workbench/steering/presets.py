"""Method presets: one argument that sets ranking, mechanism and experiment to a paper's definitions.

=============  ==============================================  ==============================================
               ``"workbench"`` (the default)                   ``"steermoe"`` (Fayyaz et al., 2025)
=============  ==============================================  ==============================================
score          Welch's t of per-prompt activation rates, with  risk difference of activation rates pooled over
               a permutation p and BH q (MoTE's fTRI plus a    all tokens of each set (activated = in the
               test)                                           token's top-k)
ranking        ``t``, largest first                            ``risk_diff``: positive = set A's experts,
                                                               negative = set B's, by magnitude
off            :class:`workbench.Mask` (score -inf: never      :class:`workbench.Offset` ``off=``: the token's
               chosen, the next-best takes the slot)           min log-probability - 0.01
on             :class:`workbench.Offset` ``on=`` (max + 0.01,  the same
               softmax -> top-k -> renormalise)
intervention   off and on separately, MoTE's conditions        set B's experts on and set A's off in *one*
               ``top_off`` / ``random_off`` / ``top_on``       edit: ``switch`` / ``random_switch``
=============  ==============================================  ==============================================

Why our default differs from the paper: Welch's t weighs the spread between prompts (an expert that a
few long prompts use heavily does not outrank one that every prompt uses a little more) and comes with
a p-value, so the ranking can be trusted or rejected; the pooled risk difference has neither, and lets
long prompts count more. On the demo model the two rank almost alike (see ``docs/methods_steering.md``).
Switching off by -inf and by min - 0.01 choose the same experts unless fewer than ``k`` experts are
left, so ``top_off`` stays comparable with MoTE, whose design (experts off vs as many random experts
off) is the controlled experiment we report by default.

The SteerMoE definitions follow the reference code, adobe-research/SteerMoE at commit 0c7e6b5:
scoring in ``custom_steering.ipynb`` (cell 12, ``calc_risk_diff``: top-k by ``argsort`` of the
softmax, ``a / (a + d)`` per set, difference), selection in ``src/utils.py`` lines 90-125
(``steer_moe``: sort by ``|risk_diff|``, the first ``num_pos_experts`` positive and
``num_neg_experts`` negative ones, positive ones set to +1 only while the layer has fewer than ``k``,
``reverse_effect`` flips the sign), steering in ``src/modeling_vllm/qwen3_moe.py`` lines 158-164.

Example:
    >>> from workbench.steering.presets import get_preset
    >>> get_preset("steermoe").conditions
    ('baseline', 'switch', 'random_switch')
    >>> get_preset("workbench").rank_by
    't'
"""

from __future__ import annotations

from dataclasses import dataclass

from workbench.steering.steer import fit_to_k


#: experts activated by ``switch`` when only a count of deactivated ones is given (see docs/methods_steering.md)
DEFAULT_ACTIVATE = 4


@dataclass(frozen=True)
class Preset:
    """A named method: how experts are ranked and steered, and which conditions are compared.

    Attributes:
        name: the preset's name.
        rank_by: the contrast column experts are ranked by (``"t"`` or ``"risk_diff"``).
        conditions: the experiment's conditions (see :data:`~workbench.steering.experiment.CONDITIONS`).
        combined: steer by one combined on + off intervention (:func:`~workbench.steering.switch`).
        margin: the score offset of :class:`workbench.Offset`.
        summary: one line for reports.
    """

    name: str
    rank_by: str
    conditions: tuple
    combined: bool
    margin: float = 0.01
    summary: str = ""


PRESETS = {
    "workbench": Preset(
        "workbench", "t", ("baseline", "top_off", "random_off", "top_on"), combined=False,
        summary="Welch t of per-prompt rates (permutation p); off = Mask (next best), on = Offset; "
                "MoTE's top-N off vs N random off"),
    "steermoe": Preset(
        "steermoe", "risk_diff", ("baseline", "switch", "random_switch"), combined=True,
        summary="risk difference of pooled token activation rates; set B's experts activated and set A's "
                "deactivated in one Offset (log-softmax max + 0.01 / min - 0.01, softmax -> top-k -> renorm); "
                "vs as many random experts"),
}


def get_preset(name: str | Preset | None) -> Preset:
    """The :class:`Preset` called ``name`` (None = ``"workbench"``); the error lists the known ones."""
    if isinstance(name, Preset):
        return name
    name = "workbench" if name is None else str(name).lower()
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


def select_steermoe(contrast, activate: int, deactivate: int, k: int, toward: str = "b", by: str = "risk_diff"
                    ) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """SteerMoE's choice of experts from a contrast's risk differences.

    Toward set B (the default, the reference's ``reverse_effect=1`` when A is the behaviour to
    leave): the ``activate`` experts with the most negative risk difference are activated, keeping
    at most ``k`` per layer in ranked order (the rest are dropped, not replaced, as in the
    reference), and the ``deactivate`` experts with the most positive one are deactivated. Toward
    set A the signs swap.

    Args:
        contrast: an :class:`~workbench.steering.contrast.ExpertContrast` (its ``risk_diff`` column).
        activate: how many experts to activate (before the ``k`` per layer limit).
        deactivate: how many to deactivate.
        k: the model's experts per token.
        toward: ``"b"`` or ``"a"``.
        by: the contrast column to rank by (the reference's ``"risk_diff"``).

    Returns:
        ``(on, off)``: ``(layer, expert)`` pairs, best-ranked first; fewer when fewer experts have
        the needed sign.
    """
    if toward not in ("a", "b"):
        raise ValueError(f"toward must be 'a' or 'b', got {toward!r}")
    if activate < 0 or deactivate < 0:
        raise ValueError(f"activate and deactivate must be >= 0, got {activate} and {deactivate}")
    away = "a" if toward == "b" else "b"
    from workbench.steering.contrast import RankedExperts

    on = fit_to_k(contrast.top(activate, direction=toward, by=by), k) if activate else []
    off = list(contrast.top(deactivate, direction=away, by=by)) if deactivate else []
    stamp = getattr(contrast, "fingerprint", None)  # steering them on another model is then refused
    return RankedExperts(on, fingerprint=stamp), RankedExperts(off, fingerprint=stamp)
