"""Synthetic regression tasks with controlled relatedness (appendix A1, after Ma et al. [8]).

For unit vectors ``u`` (mutually orthogonal), a task with weight ``w`` labels ``x ~ N(0, I_d)``
as ``y = w.x + sum_{i=1..m} sin(alpha_i w.x + beta_i) + eps`` with ``alpha_i = i``,
``beta_i = (i - 1)^2``.

Noise: the paper writes ``eps ~ N(0, 0.01)``. We read 0.01 as the *standard deviation*,
because the authors' public generator (google-research ``learning_parameter_allocation``)
draws ``np.random.normal(scale=noise_std)`` with ``noise_std=0.01``. Under the usual
``N(mu, sigma^2)`` notation it would be a variance (std 0.1): set ``noise_std=0.1`` for that.
Either way the noise is small next to the signal (variance about 4).

Every draw and array here is float32 whatever ``jax_enable_x64`` says, so a seed gives the same
data in every process.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gmr import config as config_schema
from gmr.data.suite import Split, TaskSuite

# appendix A1's constants: the defaults of the config's ``synthetic`` group, their one home
_A1 = config_schema.synthetic_defaults()


def orthonormal_vectors(key, d: int, k: int) -> np.ndarray:
  """``k`` mutually orthogonal unit vectors in R^d, ``[k, d]`` (QR of a Gaussian matrix)."""
  q, _ = np.linalg.qr(np.asarray(jax.random.normal(key, (d, k), jnp.float32), np.float64))
  return q.T.astype(np.float32)


def pair_weights(u1, u2, rho: float, c: float = _A1.c):
  """Eq. (1): ``w1 = c u1``, ``w2 = c (rho u1 + sqrt(1 - rho^2) u2)``."""
  return c * u1, c * (rho * u1 + np.sqrt(1.0 - rho ** 2) * u2)


def labels(key, x, w, m: int = _A1.m, noise_std: float = _A1.noise_std):
  """Eqs. (2)-(3): ``y = w.x + sum_i sin(i w.x + (i-1)^2) + eps``; ``x: [N, d] -> [N]``."""
  z = jnp.asarray(x, jnp.float32) @ jnp.asarray(w, jnp.float32)
  i = jnp.arange(1, m + 1, dtype=jnp.float32)
  y = z + jnp.sin(z[:, None] * i + (i - 1.0) ** 2).sum(-1)
  return np.asarray(y + noise_std * jax.random.normal(key, z.shape, jnp.float32), np.float32)


def make_suite(key, weights: Sequence[np.ndarray], num_train: int, num_test: int,
               m: int = _A1.m, noise_std: float = _A1.noise_std, shared_inputs: bool = True,
               name: str = "synthetic", task_names=None) -> TaskSuite:
  """A regression suite with one task per weight vector.

  With ``shared_inputs`` every task labels the same inputs (as in A1, where one ``x`` gets
  labels for both tasks); each task still draws its own noise and its own batch order.
  """
  t = len(weights)
  kx, kn = jax.random.split(key)
  splits = []
  for s, n in enumerate((num_train, num_test)):
    kxs = jax.random.split(jax.random.fold_in(kx, s), t)
    kns = jax.random.split(jax.random.fold_in(kn, s), t)
    d = int(np.shape(weights[0])[0])
    xs, ys = [], []
    for i, w in enumerate(weights):
      x = np.asarray(jax.random.normal(kxs[0 if shared_inputs else i], (n, d), jnp.float32))
      xs.append(x)
      ys.append(labels(kns[i], x, w, m, noise_std))
    splits.append(Split.from_tasks(xs, ys))
  names = tuple(task_names or [f"task{i}" for i in range(t)])
  return TaskSuite(name, names, "mse", (1,) * t, splits[0], splits[1])


TRANSFER_TASKS = ("task0", "task1")


def pairs_task_names(num_pairs: int) -> Tuple[str, ...]:
  """``pair<p>_a``, ``pair<p>_b`` for p = 0 .. num_pairs - 1: the tasks of :func:`pairs_suite`."""
  return tuple(f"pair{p}_{i}" for p in range(num_pairs) for i in "ab")


def transfer_suite(key, rho: float, d=_A1.d, c=_A1.c, m=_A1.m, noise_std=_A1.noise_std,
                   num_train=_A1.num_train, num_test=_A1.num_test) -> TaskSuite:
  """Section II: two tasks of relatedness ``rho``."""
  ku, kd = jax.random.split(key)
  u1, u2 = orthonormal_vectors(ku, d, 2)
  return make_suite(kd, pair_weights(u1, u2, rho, c), num_train, num_test, m, noise_std,
                    name="transfer", task_names=TRANSFER_TASKS)


def pairs_suite(key, d=_A1.d, c=_A1.c, m=_A1.m, noise_std=_A1.noise_std,
                num_train=_A1.num_train, num_test=_A1.num_test,
                num_pairs=_A1.num_pairs) -> TaskSuite:
  """Appendix A3: ``num_pairs`` pairs of tasks, equal up to noise within a pair (rho = 1),
  unrelated across pairs (orthogonal weights, rho = 0). Tasks are ordered pair by pair."""
  ku, kd = jax.random.split(key)
  us = orthonormal_vectors(ku, d, num_pairs)
  weights = [c * us[p] for p in range(num_pairs) for _ in range(2)]
  suite = make_suite(kd, weights, num_train, num_test, m, noise_std, name="synthetic",
                     task_names=pairs_task_names(num_pairs))
  suite.info["groups"] = [[2 * p, 2 * p + 1] for p in range(num_pairs)]
  return suite
