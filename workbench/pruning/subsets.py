"""Which sets of experts may be dropped: sizes, expert groups, enumeration.

Keeping ``r`` of ``E`` experts in a layer drops ``E - r`` of them; every drop set is a sorted tuple of
expert ids. Families with *group-limited* routing (DeepSeek-V2/V3, GLM-4-MoE: ``n_group`` groups of
``E / n_group`` consecutive experts, a token draws experts from its ``topk_group`` best groups) can
only be pruned to a checkpoint that routes the same way if every group keeps the same number of
experts (the pruned config then has groups of ``r / n_group``). :class:`Groups` says what is allowed,
refuses what is not with a message that names valid ``r``, and enumerates the allowed drop sets.
When ``topk_group == n_group`` every group is always eligible, so groups do not constrain anything:
any drop set is allowed and the pruned config uses one group.

Example:
    >>> from workbench.kernels import RoutingRule
    >>> from workbench.pruning.subsets import Groups
    >>> g = Groups.of(RoutingRule("sigmoid", n_group=2, topk_group=1, group_score="top2sum"), 8, top_k=2)
    >>> g.count(keep=6), g.drop_sets(keep=6)[:3]
    (16, [(0, 4), (0, 5), (0, 6)])
    >>> Groups.of(RoutingRule("softmax"), 16, top_k=2).count(keep=12)
    1820
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass


class PruningConstraintError(ValueError):
    """The requested number of kept experts cannot give a valid pruned model of this family."""


@dataclass(frozen=True)
class Groups:
    """Expert-group layout of a layer.

    Attributes:
        num_experts: ``E``.
        top_k: experts per token, ``k``.
        n_group: groups that constrain pruning (1 = none).
        topk_group: groups a token may draw from.
        group_score: ``"max"`` or ``"top2sum"`` (the latter needs two experts per group).
        free_groups: the model has groups, but ``topk_group == n_group`` so they do not constrain;
            the pruned config sets ``n_group = topk_group = 1``.
    """

    num_experts: int
    top_k: int
    n_group: int = 1
    topk_group: int = 1
    group_score: str = "max"
    free_groups: bool = False

    @classmethod
    def of(cls, rule, num_experts: int, top_k: int) -> Groups:
        """The layout implied by a :class:`~workbench.kernels.RoutingRule`."""
        n, tg = int(rule.n_group), int(rule.topk_group)
        if n > 1 and tg >= n:
            return cls(num_experts, top_k, 1, 1, rule.group_score, free_groups=True)
        return cls(num_experts, top_k, n, tg, rule.group_score)

    @property
    def size(self) -> int:
        """Experts per group in the unpruned layer."""
        return self.num_experts // self.n_group

    def group_of(self, expert: int) -> int:
        return int(expert) // self.size

    def valid_keeps(self) -> list[int]:
        """Every ``r`` with ``k <= r < E`` that this layout allows."""
        return [r for r in range(self.top_k, self.num_experts) if self._problem(r) is None]

    def _problem(self, keep: int) -> str | None:
        e, k = self.num_experts, self.top_k
        if not k <= keep <= e:
            return f"keep must be between k={k} (every token needs k experts) and E={e}, got {keep}"
        if self.n_group == 1:
            return None
        if keep % self.n_group:
            return f"this model routes within {self.n_group} expert groups, so keep must be a multiple of {self.n_group}"
        per = keep // self.n_group
        if self.group_score == "top2sum" and per < 2:
            return "groups are scored by their two best experts, so every group must keep at least 2"
        if self.topk_group * per < k:
            return f"a token draws from {self.topk_group} group(s) of {per} kept experts, fewer than k={k}"
        return None

    def check(self, keep: int) -> None:
        """Raise :class:`PruningConstraintError` (naming the valid choices) if ``keep`` is not allowed."""
        problem = self._problem(int(keep))
        if problem is not None:
            valid = self.valid_keeps()
            hint = (f"valid choices: {', '.join(map(str, valid))}" if valid else
                    "no pruning keeps this model's routing valid; it cannot be pruned to a checkpoint")
            raise PruningConstraintError(f"cannot keep {keep} of {self.num_experts} experts: {problem}; {hint}")

    def drop_budget(self, keep: int) -> dict[int, int]:
        """``{group: experts to drop}`` (one entry, group 0, without groups)."""
        drop = self.num_experts - keep
        if self.n_group == 1:
            return {0: drop}
        return {g: drop // self.n_group for g in range(self.n_group)}

    def count(self, keep: int) -> int:
        """Number of allowed drop sets."""
        self.check(keep)
        if self.n_group == 1:
            return math.comb(self.num_experts, self.num_experts - keep)
        per_drop = (self.num_experts - keep) // self.n_group
        return math.comb(self.size, per_drop) ** self.n_group

    def iter_drop_sets(self, keep: int):
        """Every allowed drop set, as sorted tuples, in lexicographic order."""
        self.check(keep)
        drop = self.num_experts - keep
        if self.n_group == 1:
            yield from itertools.combinations(range(self.num_experts), drop)
            return
        per_drop = drop // self.n_group
        per_group = [list(itertools.combinations(range(g * self.size, (g + 1) * self.size), per_drop))
                     for g in range(self.n_group)]
        for parts in itertools.product(*per_group):
            yield tuple(e for part in parts for e in part)

    def drop_sets(self, keep: int) -> list[tuple[int, ...]]:
        """:meth:`iter_drop_sets` as a list."""
        return list(self.iter_drop_sets(keep))

    def can_extend(self, dropped: tuple[int, ...], expert: int, keep: int) -> bool:
        """Whether ``expert`` may join ``dropped`` on the way to a valid drop set of ``keep``."""
        if expert in dropped:
            return False
        if self.n_group == 1:
            return len(dropped) < self.num_experts - keep
        g = self.group_of(expert)
        used = sum(1 for e in dropped if self.group_of(e) == g)
        return used < self.drop_budget(keep)[g]

    def pick(self, order, keep: int) -> tuple[int, ...]:
        """The first experts of ``order`` (best candidates to drop first) that fill a valid drop set."""
        self.check(keep)
        dropped: tuple[int, ...] = ()
        for e in order:
            if len(dropped) == self.num_experts - keep:
                break
            if self.can_extend(dropped, int(e), keep):
                dropped = tuple(sorted(dropped + (int(e),)))
        return dropped
