"""Gumbel-Matrix allocation math as pure functions (Maziarz et al., section III).

Every routed layer owns one logits array ``logits: [tasks, components, 2]`` where index 0
is "connected" and index 1 "not connected" (the convention of the authors' code). Nothing
here needs Flax; all randomness comes from explicit ``jax.random`` keys.

Notebook use::

    import jax
    from gmr import allocation as A
    logits = A.init_logits(0.5, num_tasks=4, num_components=4)
    z = A.sample(jax.random.key(0), logits, temperature=1.0)   # [4, 4] of exact 0/1
    A.probabilities(logits)                                     # P(on), [4, 4]
    A.greedy(logits)                                            # P(on) >= 0.5
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

# The authors' code adds this to the uniform draw (and to -log u) to keep the logs finite.
GUMBEL_EPS = 1e-20


def init_logits(p_init, num_tasks: int, num_components: int) -> jax.Array:
  """Two complementary logits ``log([p, 1 - p])`` per (task, component).

  Args:
    p_init: probability of "connected" in (0, 1): a scalar or an array broadcastable to
      ``[num_tasks, num_components]`` (to encode a prior per task or component).
  Returns:
    ``[num_tasks, num_components, 2]`` float32 logits.
  """
  if not isinstance(p_init, jax.core.Tracer):  # checked on the host (also under tracing)
    p_host = np.asarray(p_init, np.float32)
    if not np.all((p_host > 0) & (p_host < 1)):
      raise ValueError(f"p_init must lie in (0, 1), got {p_init!r}")
  p = jnp.broadcast_to(jnp.asarray(p_init, jnp.float32), (num_tasks, num_components))
  return jnp.stack([jnp.log(p), jnp.log1p(-p)], axis=-1)


def probabilities(logits: jax.Array) -> jax.Array:
  """P(connected) = softmax(logits)[..., 0]; ``[..., 2] -> [...]``."""
  return jax.nn.softmax(logits, axis=-1)[..., 0]


def gumbel_noise(key: jax.Array, shape: Sequence[int]) -> jax.Array:
  """``g = -log(-log(u + eps) + eps)`` with ``u ~ U(0, 1)``, as in the authors' code."""
  u = jax.random.uniform(key, shape, jnp.float32)
  return -jnp.log(-jnp.log(u + GUMBEL_EPS) + GUMBEL_EPS)


def check_temperature(temperature, name: str = "temperature") -> None:
  """Raise ``ValueError`` unless a concrete ``temperature`` is finite and > 0 (0 gives NaN
  samples, a negative one silently flips them). A traced value (inside ``jit``) is not
  checked: the trainer's temperatures come from a validated schedule (``t_min > 0``)."""
  if isinstance(temperature, jax.core.Tracer):
    return
  t = np.asarray(temperature, np.float64)
  if not np.all(np.isfinite(t) & (t > 0)):
    raise ValueError(f"{name} must be a finite number > 0, got {temperature!r}")


def sample_soft(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
  """Relaxed sample: ``softmax((logits + g) / temperature)[..., 0]``; ``[..., 2] -> [...]``.
  Raises ``ValueError`` for a concrete temperature <= 0 or not finite."""
  check_temperature(temperature)
  g = gumbel_noise(key, logits.shape)
  return jax.nn.softmax((logits + g) / temperature, axis=-1)[..., 0]


def sample(key: jax.Array, logits: jax.Array, temperature) -> jax.Array:
  """Straight-through Gumbel-Softmax binary sample, one per entry of ``logits[..., :]``.

  Forward: the exact hard value (0. or 1.), i.e. ``argmax(logits + g)``. Backward: the
  gradient of the soft relaxation ``softmax((logits + g) / temperature)[..., 0]``.
  Call it once per (task batch) to get one sample per (task, component) per batch.

  Args:
    key: PRNG key.
    logits: ``[..., 2]`` (typically ``[tasks, components, 2]`` or one task's ``[components, 2]``).
    temperature: positive scalar.
  Returns:
    ``[...]`` float32 with values in {0., 1.}.
  Raises:
    ValueError: a concrete temperature that is not a finite number > 0.
  """
  check_temperature(temperature)
  g = gumbel_noise(key, logits.shape)
  y = (logits + g) / temperature
  soft = jax.nn.softmax(y, axis=-1)[..., 0]
  hard = (y[..., 0] >= y[..., 1]).astype(soft.dtype)
  return soft + jax.lax.stop_gradient(hard - soft)


def greedy(logits: jax.Array) -> jax.Array:
  """Maximum-likelihood allocation for evaluation: 1. iff P(on) >= 0.5; ``[..., 2] -> [...]``."""
  return (probabilities(logits) >= 0.5).astype(jnp.float32)


def temperature(step, t_init: float = 50.0, t_min: float = 0.5):
  """Annealed temperature ``max(t_min, t_init / sqrt(step + 1))``.

  ``step`` counts task-batch updates (one round over T tasks adds T), as in the authors' code.
  Raises ``ValueError`` if a concrete ``t_init`` or ``t_min`` is not a finite number > 0.
  """
  check_temperature(t_init, "t_init")
  check_temperature(t_min, "t_min")
  return jnp.maximum(t_min, t_init / jnp.sqrt(jnp.asarray(step, jnp.float32) + 1.0))


def expected_active_fraction(logits_per_layer: Sequence[jax.Array], task=None) -> jax.Array:
  """Expected fraction of active connections ``e_c`` (section III-D).

  The mean of P(on) over all components of all layers (a component-weighted mean, so a
  layer with more components counts more), for one task (``task`` an int or traced int)
  or, when ``task`` is None, for every task: ``[tasks]``.
  """
  total = sum(int(l.shape[-2]) for l in logits_per_layer)
  if task is None:
    return sum(probabilities(l).sum(-1) for l in logits_per_layer) / total
  return sum(probabilities(l[task]).sum() for l in logits_per_layer) / total


def budget_penalty(active_fraction, budget: float, strength: float):
  """``lambda * max(0, e_c - b)``: zero at or below the budget, linear above."""
  return strength * jnp.maximum(0.0, active_fraction - budget)


def entropy(logits: jax.Array) -> jax.Array:
  """Bernoulli entropy (nats) of each allocation variable; ``[..., 2] -> [...]``."""
  logp = jax.nn.log_softmax(logits, axis=-1)
  return -(jnp.exp(logp) * logp).sum(-1)


def active_fraction_of(allocations: Sequence[np.ndarray]) -> float:
  """Fraction of ones over a list of binary ``[tasks, components]`` matrices."""
  ones = sum(float(np.sum(a)) for a in allocations)
  total = sum(float(np.size(a)) for a in allocations)
  return ones / total
