"""Paired statistics of a results table: Student's t interval of a row's paired Δ mIoU and the table's resolution.

For a row with n seeds paired with the baseline, d_i = row mIoU - baseline mIoU (points) on seed i:

    mean d, sample std s (n - 1), 95% interval  mean ± t(0.975, n - 1) · s / √n

and the row "resolves" (is marked) when that interval excludes zero. The table's resolution pools the paired
variances of every compared row (s_pooled² = Σ (n_r - 1) s_r² / Σ (n_r - 1), on Σ (n_r - 1) degrees of freedom)
and states, at a number of pairs n, the half-width t(0.975, df) · s_pooled / √n: a paired difference smaller than
it cannot be told from zero by a row with n pairs. It also gives the true difference such a row would detect with
80% power, (t(0.975, df) + t(0.80, df)) · s_pooled / √n.

NumPy for the moments, scipy.stats for the t quantile. scipy is a development dependency (requirements-dev.txt),
not a runtime one: it is imported only when an interval is computed, and its absence is a one-line
:class:`SegKDError` (the table scripts print it) rather than a traceback.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Optional

import numpy as np

from util.errors import SegKDError

MISSING_SCIPY = "paired intervals need scipy: pip install scipy (requirements-dev.txt)"


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` (> 0) degrees of freedom, 0 < p < 1: ``scipy.stats.t.ppf``."""
    if not 0.0 < p < 1.0 or df <= 0:
        raise ValueError(f"t_quantile: need 0 < p < 1 and df > 0, got p={p}, df={df}")
    try:
        from scipy import stats
    except ImportError:
        raise SegKDError(MISSING_SCIPY) from None
    return float(stats.t.ppf(p, df))


def paired_interval(diffs: Sequence[float], level: float = 0.95) -> dict[str, Optional[float]]:
    """Mean, sample std, the ``level`` t interval (None with fewer than 2 pairs), the count of pairs above zero and
    whether the interval excludes zero, for paired differences ``diffs`` (points)."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    mean = float(d.mean()) if n else None
    above = int((d > 0).sum())
    if n < 2:
        return {"mean": mean, "std": None, "low": None, "high": None, "above": above, "excludes_zero": None}
    std = float(d.std(ddof=1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    return {"mean": mean, "std": std, "low": low, "high": high, "above": above,
            "excludes_zero": bool(low > 0 or high < 0)}


def paired_p_value(diffs: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of the paired t test that the mean of ``diffs`` is zero (None with fewer than 2 pairs);
    it is below 1 - level exactly when :func:`paired_interval`'s interval excludes zero. All pairs equal: 0 if
    they are not zero, else 1."""
    d = np.asarray(diffs, dtype=np.float64)
    n = len(d)
    if n < 2:
        return None
    mean, std = float(d.mean()), float(d.std(ddof=1))
    if std == 0.0:
        return 0.0 if mean != 0.0 else 1.0
    try:
        from scipy import stats
    except ImportError:
        raise SegKDError(MISSING_SCIPY) from None
    return float(2.0 * stats.t.sf(abs(mean) / (std / math.sqrt(n)), n - 1))


def holm(p_values: dict[str, float], alpha: float = 0.05) -> set[str]:
    """Holm's step-down over a family of tests: the names whose hypothesis is rejected with family-wise error at
    most ``alpha``. The k-th smallest p-value (k = 0, 1, ...) is compared with alpha / (m - k); the first that is
    not below it, and every larger one, is kept."""
    m, rejected = len(p_values), set()
    for k, (name, p) in enumerate(sorted(p_values.items(), key=lambda item: (item[1], item[0]))):
        if p >= alpha / (m - k):
            break
        rejected.add(name)
    return rejected


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[Optional[float], int]:
    """(pooled sample std of the groups' paired differences, its degrees of freedom Σ (n - 1)); groups of fewer
    than two values add nothing. (None, 0) when no group has two."""
    used = [np.asarray(g, dtype=np.float64) for g in groups if len(g) > 1]
    df = sum(len(g) - 1 for g in used)
    if df == 0:
        return None, 0
    ss = sum(float(((g - g.mean()) ** 2).sum()) for g in used)
    return math.sqrt(ss / df), df


def resolution(std: float, df: int, n: int, level: float = 0.95, power: float = 0.80) -> tuple[float, float]:
    """(half-width of the ``level`` interval of a row with ``n`` pairs, the true difference it detects with
    ``power``) for a paired std ``std`` known on ``df`` degrees of freedom."""
    t_level = t_quantile(0.5 + level / 2.0, df)
    return t_level * std / math.sqrt(n), (t_level + t_quantile(power, df)) * std / math.sqrt(n)
