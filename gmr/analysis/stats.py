"""Summary statistics over seeds: the sample standard deviation and the 90% t-interval.

The interval is the two-sided 90% Student-t confidence interval of the mean of ``n``
independent values: ``mean +- t_{0.95, n-1} * std(ddof=1) / sqrt(n)``, the quantile from
``scipy.stats.t`` for every ``n >= 2``.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats


def t_quantile90(df: float) -> float:
  """The Student-t quantile of a two-sided 90% interval: ``scipy.stats.t.ppf(0.95, df)``.

  ``df``: degrees of freedom (``n - 1`` for a mean of ``n`` values), a positive int or float.
  Returns a Python float (e.g. 2.919986 for ``df=2``, 2.131847 for ``df=4``, -> 1.644854 as
  ``df`` grows). Raises ``ValueError`` for ``df <= 0`` or a non-finite ``df`` (scipy would
  return nan)."""
  if not (math.isfinite(df) and df > 0):
    raise ValueError(f"degrees of freedom must be a positive finite number, got {df}")
  return float(_scipy_stats.t.ppf(0.95, df))


def sample_std(values: Sequence[float]) -> float:
  """Sample standard deviation (``ddof=1``) of ``n`` values, as a Python float; 0.0 for
  ``n < 2`` (one seed has no spread to report).

  ``values``: a 1-D sequence or array of ``n`` numbers (any real dtype; computed in float64).
  A nan among them gives nan. Raises ``TypeError`` if ``values`` has no length."""
  if len(values) < 2:
    return 0.0
  return float(np.std(np.asarray(values, np.float64), ddof=1))


def interval90(values: Sequence[float]) -> float:
  """Half-width of the two-sided 90% t-interval of the mean of ``values``.

  ``values``: a 1-D sequence or array of ``n`` numbers (any real dtype; computed in float64).
  Returns ``t_quantile90(n - 1) * std(values, ddof=1) / sqrt(n)`` as a Python float, nan for
  ``n < 2`` (no interval from one value) and for values holding a nan. Raises ``TypeError``
  if ``values`` has no length."""
  n = len(values)
  if n < 2:
    return float("nan")
  std = float(np.std(np.asarray(values, np.float64), ddof=1))
  return t_quantile90(n - 1) * std / math.sqrt(n)
