"""Small statistics for steering: Welch's t, risk differences, effect sizes with intervals,
permutation p-values, Wilson intervals.

Everything is vectorised over features (one feature = one (layer, expert) cell) and needs only
numpy; the Welch t-distribution p-value uses scipy when it is installed (a local import; the
``dev`` extra has it) and the permutation test needs nothing else.

Shapes: ``n_a``/``n_b`` prompts per set, ``F`` features.

Example:
    >>> import numpy as np
    >>> from workbench.steering.stats import welch_t, permutation_pvalues, wilson_interval
    >>> a = np.array([[1.0, 0.0], [1.2, 0.1], [0.9, 0.0]]); b = np.array([[0.0, 0.0], [0.1, 0.1], [0.2, 0.0]])
    >>> t, d = welch_t(a, b)
    >>> bool(t[0] > 5), float(t[1])
    (True, 0.0)
    >>> p = permutation_pvalues(a, b, permutations=200, seed=0)
    >>> bool(p[0] < 0.2), bool(p[1] > 0.5)
    (True, True)
    >>> [round(x, 3) for x in wilson_interval(8, 10)]
    [0.49, 0.943]
    >>> risk_difference([30, 5], 50, [10, 5], 40).round(3).tolist()
    [0.35, -0.025]
"""

from __future__ import annotations

import math

import numpy as np


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = x.shape[0]
    mean = x.mean(axis=0)
    var = x.var(axis=0, ddof=1) if n > 1 else np.zeros_like(mean)
    return mean, var


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with 0/0 = 0 and x/0 = ±inf (a difference with no spread at all)."""
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    num, den = np.broadcast_to(num, out.shape), np.broadcast_to(den, out.shape)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    out[~ok & (num != 0)] = np.sign(num[~ok & (num != 0)]) * np.inf
    return out


def _check(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if b.ndim == 1:
        b = b[:, None]
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected [n_a, F] and [n_b, F] arrays, got {a.shape} and {b.shape}")
    if a.shape[0] < 2 or b.shape[0] < 2:
        raise ValueError(f"each set needs at least 2 prompts to estimate its variance "
                         f"(got {a.shape[0]} and {b.shape[0]})")
    return a, b


def welch_t(a, b) -> tuple[np.ndarray, np.ndarray]:
    """Welch's t statistic and Cohen's d of ``mean(a) - mean(b)`` per feature.

    Args:
        a: ``[n_a, F]`` per-prompt values of set A.
        b: ``[n_b, F]`` per-prompt values of set B.

    Returns:
        ``(t [F], d [F])``; ``d`` divides the difference by ``sqrt((var_a + var_b) / 2)``. A feature
        with no spread in either set gets 0 when the means agree and ``±inf`` otherwise.
    """
    a, b = _check(a, b)
    (ma, va), (mb, vb) = _moments(a), _moments(b)
    diff = ma - mb
    t = _ratio(diff, np.sqrt(va / a.shape[0] + vb / b.shape[0]))
    d = _ratio(diff, np.sqrt((va + vb) / 2))
    return t, d


def welch_pvalues(a, b) -> np.ndarray:
    """Two-sided p-values of Welch's t-test per feature (needs scipy).

    Raises:
        ImportError: when scipy is missing (install it, or use :func:`permutation_pvalues`).
    """
    try:
        from scipy import stats
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("Welch p-values need scipy (pip install scipy), or use test='permutation', "
                          "which needs nothing else") from None
    a, b = _check(a, b)
    (_, va), (_, vb) = _moments(a), _moments(b)
    t, _ = welch_t(a, b)
    sa, sb = va / a.shape[0], vb / b.shape[0]
    den = sa ** 2 / (a.shape[0] - 1) + sb ** 2 / (b.shape[0] - 1)
    dof = np.where(den > 0, (sa + sb) ** 2 / np.where(den > 0, den, 1.0), 1.0)
    p = 2 * stats.t.sf(np.abs(t), dof)
    return np.where(np.isfinite(t), p, 0.0).clip(0, 1)


def permutation_pvalues(a, b, permutations: int = 1000, seed: int = 0) -> np.ndarray:
    """Two-sided permutation p-values of Welch's t per feature.

    The set labels of the ``n_a + n_b`` prompts are shuffled ``permutations`` times; the p-value is
    ``(1 + #{|t_perm| >= |t_obs|}) / (1 + permutations)`` (never 0).

    Args:
        a: ``[n_a, F]``.
        b: ``[n_b, F]``.
        permutations: number of shuffles.
        seed: random seed.

    Returns:
        ``[F]`` p-values in ``(0, 1]``.
    """
    a, b = _check(a, b)
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    t_obs, _ = welch_t(a, b)
    x = np.concatenate([a, b])
    n, n_a = x.shape[0], a.shape[0]
    rng = np.random.default_rng(seed)
    exceed = np.zeros(x.shape[1], dtype=np.int64)
    x2 = x ** 2
    for start in range(0, permutations, 256):
        size = min(256, permutations - start)
        order = np.argsort(rng.random((size, n)), axis=1)
        in_a = np.zeros((size, n))
        np.put_along_axis(in_a, order[:, :n_a], 1.0, axis=1)
        t_perm = _t_from_sums(in_a @ x, in_a @ x2, (1 - in_a) @ x, (1 - in_a) @ x2, n_a, n - n_a)
        exceed += (np.abs(t_perm) >= np.abs(t_obs)[None] - 1e-12).sum(axis=0)
    return (1 + exceed) / (1 + permutations)


def _t_from_sums(sa, qa, sb, qb, na: int, nb: int) -> np.ndarray:
    ma, mb = sa / na, sb / nb
    va = np.maximum(qa - na * ma ** 2, 0) / (na - 1)
    vb = np.maximum(qb - nb * mb ** 2, 0) / (nb - 1)
    return _ratio(ma - mb, np.sqrt(va / na + vb / nb))


def bh_adjust(p) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), same order as ``p``."""
    p = np.asarray(p, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1].clip(0, 1)
    out = np.empty_like(q)
    out[order] = q
    return out


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts ``b`` and ``c``.

    Pairs are the same prompt under two conditions; ``b`` = hit only under the first, ``c`` = hit
    only under the second. Under no difference each discordant pair is a fair coin.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def wilson_interval(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``hits / n``; ``(nan, nan)`` when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= hits <= n:
        raise ValueError(f"hits={hits} must be between 0 and n={n}")
    z = _normal_quantile(0.5 + confidence / 2)
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if hits == 0 else max(0.0, centre - half)
    high = 1.0 if hits == n else min(1.0, centre + half)
    return low, high


def _normal_quantile(q: float) -> float:
    """Inverse of the standard normal CDF by bisection on ``erf`` (exact enough for intervals)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def risk_difference(active_a, total_a, active_b, total_b) -> np.ndarray:
    """SteerMoE's score: activation rate in set A minus activation rate in set B, per feature.

    ``RD = a1 / N1 - a2 / N2`` with ``a`` the tokens (pooled over all prompts of a set) whose top-k
    contains the expert and ``N`` the tokens of the set (adobe-research/SteerMoE,
    ``custom_steering.ipynb``, ``calc_risk_diff``; ``a + d`` there is ``N`` here).

    Args:
        active_a: ``[F]`` activation counts of set A; ``total_a``: its number of tokens.
        active_b: ``[F]`` activation counts of set B; ``total_b``: its number of tokens.

    Returns:
        ``[F]`` float64 in ``[-1, 1]``.
    """
    if total_a <= 0 or total_b <= 0:
        raise ValueError(f"both sets need tokens (got {total_a} and {total_b})")
    a, b = np.asarray(active_a, dtype=np.float64), np.asarray(active_b, dtype=np.float64)
    return a / float(total_a) - b / float(total_b)


def paired_effect(first, second, confidence: float = 0.95, resamples: int = 4000, seed: int = 0,
                  groups=None) -> dict:
    """Effect size of condition ``first`` over ``second`` on the same items, with an interval.

    The effect is the mean over items of ``first - second`` (e.g. the change in the share of hits,
    in rate points); ``second`` may hold several runs (random controls, one column per seed), which
    are averaged per item. The interval is a percentile bootstrap that resamples both sources of
    chance: the items (or, given ``groups``, whole groups of items, e.g. the prompts cut from one
    document) and, when there are several, the runs of ``second`` (which random experts were drawn).
    The p-value is a two-sided sign-flip permutation test of the per-group mean differences (exact
    over all ``2**n`` flips for ``n <= 16`` groups); it treats the drawn runs as fixed.

    Args:
        first: ``[n]`` per-item values (hits as 0/1, or scores) under the first condition.
        second: ``[n]`` or ``[n, runs]`` values under the second.
        confidence: coverage of the interval.
        resamples: bootstrap resamples (and random sign flips for more than 16 groups).
        seed: random seed.
        groups: ``[n]`` group id of each item (None = every item its own group).

    Returns:
        ``{"effect", "ci_low", "ci_high", "p", "n", "groups", "runs"}``.

    Example:
        >>> r = paired_effect([1, 1, 1, 0, 1, 1, 1, 1], [0, 0, 1, 0, 0, 1, 0, 0])
        >>> r["effect"], r["ci_low"] > 0, round(r["p"], 3)
        (0.625, True, 0.062)
    """
    x = np.asarray(first, dtype=np.float64)
    y = np.asarray(second, dtype=np.float64)
    y = y.reshape(len(y), -1) if y.ndim == 1 else y
    if x.ndim != 1 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(f"expected [n] and [n] or [n, runs] values on the same items, got {x.shape} and {y.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    g = np.arange(len(x)) if groups is None else np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)
    if len(g) != len(x):
        raise ValueError(f"{len(x)} items but {len(g)} group ids")
    num_groups, runs = int(g.max()) + 1 if len(g) else 0, y.shape[1]
    if num_groups < 2:
        raise ValueError(f"a paired effect needs at least 2 items (groups), got {num_groups}")
    size = np.bincount(g, minlength=num_groups).astype(np.float64)
    sum_x = np.bincount(g, weights=x, minlength=num_groups)
    sum_y = np.stack([np.bincount(g, weights=y[:, j], minlength=num_groups) for j in range(runs)], axis=1)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, num_groups, size=(resamples, num_groups))
    weight = np.stack([np.bincount(row, minlength=num_groups) for row in pick])      # [B, G] group counts
    run_pick = rng.integers(0, runs, size=(resamples, runs)) if runs > 1 else np.zeros((resamples, 1), int)
    run_weight = np.stack([np.bincount(row, minlength=runs) for row in run_pick]) / run_pick.shape[1]
    items = weight @ size
    means = (weight @ sum_x - np.einsum("bg,gr,br->b", weight, sum_y, run_weight)) / items
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    d = (sum_x - sum_y.mean(axis=1))                      # per-group sums of the item differences
    effect = float(d.sum() / size.sum())
    if num_groups <= 16:
        signs = 1 - 2 * ((np.arange(2 ** num_groups)[:, None] >> np.arange(num_groups)) & 1)
        p = float((np.abs(signs @ d) >= abs(d.sum()) - 1e-9).mean())
    else:
        signs = rng.choice([-1.0, 1.0], size=(resamples, num_groups))
        p = float((1 + (np.abs(signs @ d) >= abs(d.sum()) - 1e-9).sum()) / (1 + resamples))
    return {"effect": effect, "ci_low": float(low), "ci_high": float(high), "p": p, "n": len(x),
            "groups": num_groups, "runs": runs}
