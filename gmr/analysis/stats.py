"""Summary statistics over seeds: the sample standard deviation, the 90% t-interval, and the
difference of two rows with its 90% and 95% intervals (Welch, and paired by seed).

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


def difference90(a: Sequence[float], b: Sequence[float], seeds_a: Sequence[int] = (),
                 seeds_b: Sequence[int] = ()) -> dict:
  """The difference ``mean(a) - mean(b)`` of two rows' per-seed values with its two-sided 90%
  intervals.

  ``welch_ci90`` / ``welch_ci95`` / ``welch_p``: Welch's unequal-variance t-intervals and
  two-sided p-value (``scipy.stats.ttest_ind(a, b, equal_var=False)``), valid without
  pairing. With ``seeds_a`` / ``seeds_b`` (the seed of each value), the seeds both rows have
  are paired (in gmr, runs of one seed see the same task order and batches): ``paired_n``,
  ``paired_delta``, ``paired_ci90``, ``paired_ci95``, ``paired_p`` from
  ``scipy.stats.ttest_rel``. Values are Python floats (``[lo, hi]`` lists; nan where fewer
  than two values, or two pairs, exist).
  Raises ``ValueError`` when ``seeds_a`` / ``seeds_b`` are given with other lengths than
  ``a`` / ``b``."""
  a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
  nan = float("nan")
  out = {"n_a": int(a64.size), "n_b": int(b64.size),
         "delta": float(a64.mean() - b64.mean()) if a64.size and b64.size else nan,
         "welch_ci90": [nan, nan], "welch_ci95": [nan, nan], "welch_p": nan}
  if a64.size >= 2 and b64.size >= 2:
    res = _scipy_stats.ttest_ind(a64, b64, equal_var=False)
    out.update(welch_ci90=_ci(res, 0.90), welch_ci95=_ci(res, 0.95), welch_p=float(res.pvalue))
  if len(seeds_a) or len(seeds_b):
    if len(seeds_a) != a64.size or len(seeds_b) != b64.size:
      raise ValueError(f"seeds: {len(seeds_a)} and {len(seeds_b)} seeds for {a64.size} and "
                       f"{b64.size} values")
    common = sorted(set(int(s) for s in seeds_a) & set(int(s) for s in seeds_b))
    pa = np.array([a64[list(seeds_a).index(s)] for s in common])
    pb = np.array([b64[list(seeds_b).index(s)] for s in common])
    out.update(paired_n=len(common),
               paired_delta=float((pa - pb).mean()) if common else nan,
               paired_ci90=[nan, nan], paired_ci95=[nan, nan], paired_p=nan)
    if len(common) >= 2:
      res = _scipy_stats.ttest_rel(pa, pb)
      out.update(paired_ci90=_ci(res, 0.90), paired_ci95=_ci(res, 0.95),
                 paired_p=float(res.pvalue))
  return out


def _ci(res, level: float) -> list:
  ci = res.confidence_interval(level)
  return [float(ci.low), float(ci.high)]


def holm(pvalues: Sequence[float]) -> list:
  """Holm's step-down adjustment of ``m`` two-sided p-values for a family-wise error rate:
  sorted ascending, the k-th (from 0) is multiplied by ``m - k``, made non-decreasing and
  capped at 1; returned in the input order as Python floats. A nan stays nan and does not
  count in ``m``. (Holm, "A simple sequentially rejective multiple test procedure", 1979.)"""
  p = np.asarray(pvalues, np.float64)
  out = np.full(p.shape, np.nan)
  idx = [i for i in np.argsort(p) if np.isfinite(p[i])]
  m, running = len(idx), 0.0
  for k, i in enumerate(idx):
    running = max(running, min(1.0, (m - k) * p[i]))
    out[i] = running
  return [float(v) for v in out]


def share_of_gain(part: Sequence[float], whole: Sequence[float], n_resamples: int = 10000,
                  seed: int = 0) -> dict:
  """The share ``mean(part) / mean(whole)`` of a gain carried by one of its parts, with 90% and
  95% intervals from a paired bootstrap over seeds (``scipy.stats.bootstrap``, BCa, the seeds
  resampled together, ``n_resamples`` with a fixed ``seed``).

  ``part`` and ``whole``: per-seed differences of the same seeds, in the same order (e.g. the
  mean-combining shared bottom minus the summing one, and Gumbel-Matrix minus the summing
  one). Returns ``{"share", "ci90": [lo, hi], "ci95": [lo, hi], "n"}`` (nan intervals for
  fewer than 3 seeds). Raises ``ValueError`` for sequences of different lengths."""
  a, b = np.asarray(part, np.float64), np.asarray(whole, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"part and whole: {a.size} and {b.size} values; give one per seed each")
  nan = float("nan")
  out = {"share": float(a.mean() / b.mean()) if a.size else nan, "ci90": [nan, nan],
         "ci95": [nan, nan], "n": int(a.size)}
  if a.size >= 3:
    for level, key in ((0.90, "ci90"), (0.95, "ci95")):
      res = _scipy_stats.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis) / y.mean(axis),
                                   paired=True, vectorized=True, confidence_level=level,
                                   n_resamples=n_resamples, method="BCa",
                                   random_state=np.random.default_rng(seed))
      out[key] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
  return out
