"""gmr.analysis.stats: the 90% t-interval's quantiles come from scipy.stats.t."""

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from gmr.analysis import stats

# the hand table gmr used before (two-sided 90% quantiles for df 1..30, 1.645 beyond), printed
# to 3 decimals
_OLD_T90 = [6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782,
            1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711,
            1.708, 1.706, 1.703, 1.701, 1.699, 1.697]


def test_t_quantile90_known_values():
  for df, t in ((1, 6.313752), (2, 2.919986), (4, 2.131847), (9, 1.833113), (30, 1.697261),
                (31, 1.695519), (1000, 1.646379)):
    assert stats.t_quantile90(df) == pytest.approx(t, abs=1e-6)
    assert stats.t_quantile90(df) == float(scipy_stats.t.ppf(0.95, df))
  assert stats.t_quantile90(1e9) == pytest.approx(1.644854, abs=1e-6)  # -> the normal's
  for df in (0, -1, float("nan"), float("inf")):
    with pytest.raises(ValueError, match="degrees of freedom"):
      stats.t_quantile90(df)


def test_t_quantile90_matches_the_old_table_to_its_precision():
  """n = 2..31 (df 1..30): the table's values are scipy's rounded to 3 decimals."""
  for df, t in enumerate(_OLD_T90, start=1):
    assert round(stats.t_quantile90(df), 3) == pytest.approx(t, abs=1e-9), df


def test_interval90_values():
  # [1, 3, 5]: std (ddof 1) = 2, n = 3 -> 2.919986 * 2 / sqrt(3)
  assert stats.interval90([1, 3, 5]) == pytest.approx(2.919986 * 2 / math.sqrt(3), rel=1e-6)
  assert stats.interval90(np.array([2.0, 4.0, 4.0, 4.0, 5.0])) == pytest.approx(
      2.131847 * np.std([2, 4, 4, 4, 5], ddof=1) / math.sqrt(5), rel=1e-6)
  assert math.isnan(stats.interval90([1.0])) and math.isnan(stats.interval90([]))
  assert stats.interval90([3.0, 3.0]) == 0.0
  assert math.isnan(stats.interval90([1.0, float("nan")]))
  # n = 32: the t quantile (df 31: 1.695519), not the normal's 1.645 (3% narrower)
  x = np.arange(32, dtype=np.float32)
  half = stats.interval90(x)
  assert half == pytest.approx(1.695519 * np.std(x.astype(np.float64), ddof=1) / math.sqrt(32),
                               rel=1e-6)
  assert half / (1.645 * np.std(x, ddof=1) / math.sqrt(32)) == pytest.approx(1.0307, abs=1e-4)
  assert isinstance(half, float)


def test_sample_std():
  assert stats.sample_std([1, 3, 5]) == 2.0
  assert stats.sample_std([7.0]) == 0.0 and stats.sample_std([]) == 0.0
  assert isinstance(stats.sample_std(np.array([1, 2], np.int32)), float)
