"""The project's one confidence interval of a mean: Student t with n − 1 degrees of freedom.

It lives here, under sweeps/ (numpy and scipy only), so that landscape/ and analysis/ share it without either
importing the other: results flow one way, conf → sweeps → landscape / analysis.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
from scipy import stats


class MeanCI(NamedTuple):
    """Mean, sample std (ddof = 1), the interval's ends and the number of finite values behind them."""

    mean: float
    std: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        """Half-width of the interval: NaN below two values (one value says nothing about the spread)."""
        return (self.hi - self.lo) / 2


def mean_ci(x: Iterable[float] | np.ndarray, level: float = 0.95) -> MeanCI:
    """Student-t interval of the mean of the finite values of x (NaN and ±inf are dropped, and not counted).

    n = 0: everything NaN. n = 1: the mean, std and interval NaN — never a zero-width interval. With the 2–5 samples
    of a landscape's directions or a recipe's seeds the t quantile matters: for n = 2 it is 12.7, not 1.96.
    """
    v = np.asarray(list(x) if not isinstance(x, np.ndarray) else x, dtype=float).ravel()
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return MeanCI(np.nan, np.nan, np.nan, np.nan, 0)
    mean = float(v.mean())
    if n < 2:
        return MeanCI(mean, np.nan, np.nan, np.nan, 1)
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / np.sqrt(n)
    return MeanCI(mean, std, mean - half, mean + half, n)
