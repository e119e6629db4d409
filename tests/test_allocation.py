"""gmr.allocation: distributions, exact 0/1 forward, straight-through gradient, schedules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmr import allocation as A


def test_init_logits_scalar_and_array():
  lg = A.init_logits(0.97, 3, 5)
  assert lg.shape == (3, 5, 2)
  np.testing.assert_allclose(A.probabilities(lg), 0.97, rtol=1e-6)
  np.testing.assert_allclose(lg[..., 0], np.log(0.97), rtol=1e-5)
  np.testing.assert_allclose(lg[..., 1], np.log(0.03), rtol=1e-5)
  p = np.array([[0.1, 0.5, 0.9], [0.2, 0.3, 0.99]], np.float32)
  np.testing.assert_allclose(A.probabilities(A.init_logits(p, 2, 3)), p, rtol=1e-5)
  with pytest.raises(ValueError):
    A.init_logits(1.0, 2, 2)


def test_sample_frequency_matches_probability():
  p = np.array([[0.05, 0.3, 0.5, 0.8, 0.97]], np.float32)
  lg = A.init_logits(p, 1, 5)
  keys = jax.random.split(jax.random.key(0), 20000)
  z = jax.vmap(lambda k: A.sample(k, lg, 1.0))(keys)
  freq = np.asarray(z.mean(0))
  # binomial standard error <= 0.0036 at n = 20000
  np.testing.assert_allclose(freq, p, atol=0.015)


def test_sample_forward_is_exactly_binary_at_any_temperature():
  lg = A.init_logits(0.5, 4, 7)
  for t in (0.1, 1.0, 50.0):
    z = np.asarray(A.sample(jax.random.key(3), lg, t))
    assert set(np.unique(z)) <= {0.0, 1.0}
  # the hard value does not depend on temperature (same noise, same argmax)
  z1 = A.sample(jax.random.key(5), lg, 0.5)
  z2 = A.sample(jax.random.key(5), lg, 50.0)
  np.testing.assert_array_equal(z1, z2)


@pytest.mark.equivalence
def test_straight_through_gradient_equals_softmax_gradient():
  lg = A.init_logits(np.array([[0.2, 0.6, 0.9]]), 1, 3)
  w = jnp.array([1.0, -2.0, 0.5])
  key, temp = jax.random.key(7), 0.7
  g_st = jax.grad(lambda l: (A.sample(key, l, temp) * w).sum())(lg)
  g_soft = jax.grad(lambda l: (A.sample_soft(key, l, temp) * w).sum())(lg)
  np.testing.assert_allclose(g_st, g_soft, rtol=1e-6)
  # and the soft gradient is the analytic softmax derivative: d y0 / d l0 = y0 (1 - y0) / t
  y0 = A.sample_soft(key, lg, temp)
  np.testing.assert_allclose(g_soft[..., 0], w * y0 * (1 - y0) / temp, rtol=1e-5)
  np.testing.assert_allclose(g_soft[..., 1], -w * y0 * (1 - y0) / temp, rtol=1e-5)


def test_greedy_threshold_at_half():
  p = np.array([[0.49, 0.5, 0.51, 0.01, 0.99]], np.float32)
  g = A.greedy(A.init_logits(p, 1, 5))
  np.testing.assert_array_equal(g, [[0, 1, 1, 0, 1]])


def test_temperature_schedule():
  np.testing.assert_allclose(A.temperature(0), 50.0)
  np.testing.assert_allclose(A.temperature(3), 25.0)
  np.testing.assert_allclose(A.temperature(99), 5.0)
  np.testing.assert_allclose(A.temperature(9999), 0.5)
  np.testing.assert_allclose(A.temperature(10 ** 6), 0.5)  # clipped at t_min
  np.testing.assert_allclose(A.temperature(15, t_init=8.0, t_min=0.1), 2.0)


def test_budget_penalty_zero_below_and_linear_above():
  assert float(A.budget_penalty(0.5, 0.75, 1.0)) == 0.0
  assert float(A.budget_penalty(0.75, 0.75, 1.0)) == 0.0
  np.testing.assert_allclose(A.budget_penalty(0.85, 0.75, 1.0), 0.10, rtol=1e-6)
  np.testing.assert_allclose(A.budget_penalty(0.95, 0.75, 3.0), 0.60, rtol=1e-6)
  g = jax.grad(lambda e: A.budget_penalty(e, 0.75, 2.0))
  assert float(g(0.9)) == 2.0 and float(g(0.5)) == 0.0


def test_expected_active_fraction_is_component_weighted():
  l1 = A.init_logits(np.array([[0.2, 0.4], [1e-3, 1e-3]]), 2, 2)
  l2 = A.init_logits(np.array([[0.9, 0.9, 0.9, 0.9], [0.5, 0.5, 0.5, 0.5]]), 2, 4)
  np.testing.assert_allclose(A.expected_active_fraction([l1, l2], 0), (0.6 + 3.6) / 6, rtol=1e-5)
  np.testing.assert_allclose(A.expected_active_fraction([l1, l2]),
                             [(0.6 + 3.6) / 6, (0.002 + 2.0) / 6], rtol=1e-4)


def test_entropy():
  np.testing.assert_allclose(A.entropy(A.init_logits(0.5, 1, 1)), np.log(2), rtol=1e-6)
  assert float(A.entropy(A.init_logits(0.999, 1, 1))[0, 0]) < 0.01


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf"), np.float32(0.0),
                                 jnp.asarray(-0.5)])
def test_a_concrete_temperature_must_be_positive_and_finite(bad):
  """0 gave NaN samples and a negative temperature silently flipped them; every concrete
  temperature is checked where it enters (the samplers and the schedule's ends)."""
  lg = A.init_logits(0.5, 2, 3)
  for fn in (A.sample, A.sample_soft):
    with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
      fn(jax.random.key(0), lg, bad)
  with pytest.raises(ValueError, match="t_min must be a finite number > 0"):
    A.temperature(3, 50.0, bad)
  with pytest.raises(ValueError, match="t_init must be a finite number > 0"):
    A.temperature(3, bad, 0.5)


def test_a_traced_temperature_is_not_checked_and_samples_as_the_eager_call():
  lg = A.init_logits(0.3, 2, 3)
  eager = A.sample(jax.random.key(1), lg, 0.7)
  traced = jax.jit(A.sample)(jax.random.key(1), lg, 0.7)
  np.testing.assert_array_equal(eager, traced)
