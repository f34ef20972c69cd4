"""Paired statistics of a results table: Student's t interval of a row's paired Δ mIoU and the table's resolution.

For a row with n seeds paired with the baseline, d_i = row mIoU - baseline mIoU (points) on seed i:

    mean d, sample std s (n - 1), 95% interval  mean ± t(0.975, n - 1) · s / √n

and the row "resolves" (is marked) when that interval excludes zero. The table's resolution pools the paired
variances of every compared row (s_pooled² = Σ (n_r - 1) s_r² / Σ (n_r - 1), on Σ (n_r - 1) degrees of freedom)
and states, at a number of pairs n, the half-width t(0.975, df) · s_pooled / √n: a paired difference smaller than
it cannot be told from zero by a row with n pairs. It also gives the true difference such a row would detect with
80% power, (t(0.975, df) + t(0.80, df)) · s_pooled / √n.

Only the standard library and NumPy: the t quantile is the inverse, by bisection, of the t distribution's CDF
through the regularised incomplete beta function (its continued fraction, Numerical Recipes' ``betacf``);
tests/test_paired_stats.py holds it to scipy and the intervals to hand-computed values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional


def _betacf(a: float, b: float, x: float, iters: int = 300, eps: float = 1e-15) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, iters + 1):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (> 0) degrees of freedom, 0 < p < 1 (bisection to 1e-12)."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    while hi - lo > 1e-12 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return 0.5 * (lo + hi)


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> dict[str, Optional[float]]:
    """Mean, sample std, the ``level`` t interval (None with fewer than 2 pairs), the count of pairs above zero and
    whether the interval excludes zero, for paired differences ``diffs`` (points)."""
    n = len(diffs)
    mean = sum(diffs) / n if n else None
    above = sum(1 for d in diffs if d > 0)
    if n < 2:
        return {"mean": mean, "std": None, "low": None, "high": None, "above": above, "excludes_zero": None}
    std = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"mean": mean, "std": std, "low": low, "high": high, "above": above,
            "excludes_zero": bool(low > 0 or high < 0)}


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[Optional[float], int]:
    """(pooled sample std of the groups' paired differences, its degrees of freedom Σ (n - 1)); groups of fewer
    than two values add nothing. (None, 0) when no group has two."""
    df = sum(len(g) - 1 for g in groups if len(g) > 1)
    if df == 0:
        return None, 0
    ss = 0.0
    for g in groups:
        if len(g) > 1:
            m = sum(g) / len(g)
            ss += sum((d - m) ** 2 for d in g)
    return math.sqrt(ss / df), df


def resolution(std: float, df: int, n: int, level: float = 0.95, power: float = 0.80) -> tuple[float, float]:
    """(half-width of the ``level`` interval of a row with ``n`` pairs, the true difference it detects with
    ``power``) for a paired std ``std`` known on ``df`` degrees of freedom."""
    t_level = t_quantile(0.5 + level / 2.0, df)
    return t_level * std / math.sqrt(n), (t_level + t_quantile(power, df)) * std / math.sqrt(n)
