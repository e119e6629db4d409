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


@pytest.mark.parametrize("a,b", [
    ([97.1, 97.3, 96.9, 97.0, 97.2], [96.8, 97.0, 96.95, 96.7, 97.05]),
    ([0.2, 0.3, 0.25], [0.5, 0.45, 0.6, 0.52]),
    ([1.0, 2.0], [1.5, 1.5, 1.7])])
def test_difference90_is_welchs_and_the_paired_interval_by_hand(a, b):
  """Welch: delta +- t(0.95, df) * se with se^2 = va/na + vb/nb and the Welch-Satterthwaite
  df; paired by seed (values given in shuffled seed order): the t-interval of the per-seed
  differences over the common seeds."""
  from scipy import stats as st
  from gmr.analysis.stats import difference90
  a, b = np.asarray(a), np.asarray(b)
  na, nb = len(a), len(b)
  va, vb = a.var(ddof=1) / na, b.var(ddof=1) / nb
  se, df = np.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1))
  delta = a.mean() - b.mean()
  seeds_a = list(range(na))[::-1]  # a's values listed from the last seed down
  seeds_b = list(range(nb))
  d = difference90(a[::-1], b, seeds_a, seeds_b)
  assert d["n_a"] == na and d["n_b"] == nb and abs(d["delta"] - delta) < 1e-12
  half = st.t.ppf(0.95, df) * se
  np.testing.assert_allclose(d["welch_ci90"], [delta - half, delta + half], rtol=1e-10)
  np.testing.assert_allclose(d["welch_p"], 2 * st.t.sf(abs(delta) / se, df), rtol=1e-10)
  n = min(na, nb)
  diff = a[:n] - b[:n]  # seed s of a minus seed s of b
  ph = st.t.ppf(0.95, n - 1) * diff.std(ddof=1) / np.sqrt(n)
  assert d["paired_n"] == n and abs(d["paired_delta"] - diff.mean()) < 1e-12
  np.testing.assert_allclose(d["paired_ci90"], [diff.mean() - ph, diff.mean() + ph], rtol=1e-10)


def test_differences_of_collected_rows_and_their_table():
  from gmr.analysis import tables
  run = lambda seed, acc: {"seed": seed, "final": {"accuracy": {"mean": acc}, "loss": {"mean": 0}}}
  collected = {"gm": [run(0, 0.97), run(1, 0.98), run(2, 0.975)],
               "sb": [run(1, 0.96), run(0, 0.965), run(2, 0.962)]}
  rows = tables.differences(collected, [("gm", "sb"), ("gm", "missing")])
  assert len(rows) == 1 and rows[0]["a"] == "gm" and rows[0]["paired_n"] == 3
  np.testing.assert_allclose(rows[0]["delta"], 100 * (0.975 - 0.9623333333333334), rtol=1e-9)
  np.testing.assert_allclose(rows[0]["paired_delta"], 100 * np.mean([0.005, 0.02, 0.013]),
                             rtol=1e-9)
  md = tables.differences_markdown(rows)
  assert md.splitlines()[2].startswith("| gm - sb | +1.27 | [") and tables.differences_markdown([]) == ""
  from gmr.analysis.stats import difference90
  with pytest.raises(ValueError, match="seeds"):
    difference90([1, 2], [1, 2], [0], [0, 1])


def test_difference_has_95_percent_intervals_by_the_formula():
  a, b = [1.0, 2.0, 4.0, 3.5], [0.5, 1.0, 3.0, 3.6]
  d = np.subtract(a, b)
  half = scipy_stats.t.ppf(0.975, 3) * d.std(ddof=1) / np.sqrt(4)
  out = stats.difference90(a, b, [0, 1, 2, 3], [0, 1, 2, 3])
  np.testing.assert_allclose(out["paired_ci95"], [d.mean() - half, d.mean() + half], rtol=1e-12)
  assert out["paired_ci95"][0] < out["paired_ci90"][0] < out["paired_ci90"][1] < out["paired_ci95"][1]
  assert out["welch_ci95"][0] < out["welch_ci90"][0]


def test_holm_adjusts_step_down_and_keeps_the_order():
  assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
  out = stats.holm([0.02, float("nan")])
  assert out[0] == pytest.approx(0.02) and math.isnan(out[1])


def test_share_of_gain_is_the_ratio_of_means_with_bootstrap_intervals():
  rng = np.random.default_rng(1)
  whole = 0.6 + 0.2 * rng.standard_normal(20)
  part = 0.6 * whole + 0.05 * rng.standard_normal(20)
  out = stats.share_of_gain(part, whole, n_resamples=2000)
  assert out["share"] == pytest.approx(part.mean() / whole.mean())
  assert out["ci95"][0] < out["ci90"][0] < out["share"] < out["ci90"][1] < out["ci95"][1]
  assert 0.45 < out["ci95"][0] and out["ci95"][1] < 0.75
  assert stats.share_of_gain(part, whole, n_resamples=2000) == out  # a fixed seed
  with pytest.raises(ValueError):
    stats.share_of_gain([1.0], [1.0, 2.0])
