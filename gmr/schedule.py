"""The schedule: which task trains on which batch when, run many steps per device call.

Round-robin (the paper's schedule): each round shuffles the task order, then each task takes
one batch and one optimizer step. Every random choice is a pure function of (key, round), so a
run is reproducible bit for bit and can be resumed from any round:

* round ``r``'s task order: ``permutation(fold_in(k_order, r), T)``;
* task ``t``'s ``r``-th batch: slice ``r % E`` of ``permutation(fold_in(fold_in(k_batch, t), r // E))``
  where ``E = n_t // batch_size`` batches per epoch (the remainder of an epoch is dropped).

:func:`make_run_steps` runs a chunk of rounds as one ``lax.scan`` with batches gathered on
the device from the suite's pools (and ``pad_crop`` augmentation). ``data_parallel=N`` splits
every batch over N local devices (``jax.sharding``: parameters replicated, the batch axis
sharded, XLA inserts the gradient all-reduce); per-example math is unchanged, so results equal
one device's up to float summation order.

When things happen is a function of the round alone (:func:`call_boundaries`,
:func:`evaluated_splits`, :func:`history_at`), so a resumed run makes the same device calls,
evaluations and records as one that never stopped.
"""

from __future__ import annotations

import functools
from typing import Callable, Dict, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gmr.data.suite import Split
from gmr.config import ConfigError
from gmr.step import Setup, make_joint_step, make_train_step


def num_data_devices(config) -> int:
  """Devices each batch is split over: ``config.data_parallel`` (0 = all devices)."""
  n = int(config.data_parallel)
  return n or jax.device_count()


def make_mesh(config) -> Optional[jax.sharding.Mesh]:
  """A 1-D ``("data",)`` mesh over the first ``data_parallel`` devices (``None`` for one)."""
  n = num_data_devices(config)
  if n == 1:
    return None
  if n > jax.device_count():
    raise ValueError(f"data_parallel={n} but only {jax.device_count()} devices are visible; "
                     "use --config.data_parallel=0 for all of them")
  return jax.sharding.Mesh(np.array(jax.devices()[:n]), ("data",))


def replicate(tree, mesh):
  """Put every leaf of ``tree`` on every device of ``mesh`` (identity without a mesh). Works
  across hosts: each process provides the (identical) full value."""
  if mesh is None:
    return tree
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def put(x):
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda i: x[i])
  return jax.tree_util.tree_map(put, tree)


def make_run_steps(setup: Setup, config, mesh=None, population: bool = False,
                   member_data: bool = False) -> Callable:
  """Jitted ``run(state, x_pool, y_pool, tasks [S], idx [S, B], step_key) -> (state, losses [S])``.

  Runs S task-batch steps in one device call. The batch of step ``i`` is gathered on device
  from the example pools with ``idx[i]`` (slots; images through ``x_index`` when given); its
  randomness is ``fold_in(step_key, state.step)``. With ``schedule="joint"`` the S steps are
  S / T rounds in task order (``tasks`` = 0..T-1 repeated); each round is one update.
  With ``mesh`` (see :func:`make_mesh`) the batch axis is split over its devices.

  ``population=True``: the same call for P runs at once (``jax.vmap`` over a leading member
  axis): ``state`` stacked ``[P, ...]``, ``tasks [P, S]``, ``idx [P, S, B]``, ``step_key
  [P]``, losses ``[P, S]``; the pools are shared (not copied per member), or, with
  ``member_data`` (generated data drawn from each member's seed), stacked ``[P, ...]``. Each member's
  arithmetic is its own run's; XLA's batched kernels may sum in another order, so a member
  equals its separate run up to float rounding (:mod:`gmr.population`).
  """
  if population and mesh is not None:
    raise ValueError("a population runs on one device; use --config.data_parallel=1")
  joint = config.schedule == "joint"
  step = make_joint_step(setup, config) if joint else make_train_step(setup, config)
  augment, pad = config.augment, int(config.augment_pad)
  num_tasks = setup.num_tasks

  def shard_batch(a, batch_axis):
    if mesh is None:
      return a
    spec = [None] * a.ndim
    spec[batch_axis] = "data"
    return jax.lax.with_sharding_constraint(
        a, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec)))

  def batch(st, ix, step_key, x_pool, y_pool, x_index):
    """The (augmented, sharded) batch at slots ``ix`` ([B] or [T, B]) and the step's key."""
    rows = ix if x_index is None else x_index[ix]
    x = x_pool[rows]  # as stored: the step scales it (zero padding commutes with the scale)
    key = jax.random.fold_in(step_key, st.step)
    if augment == "pad_crop":
      flat = x.reshape((-1,) + x.shape[ix.ndim:])
      x = pad_crop(flat, jax.random.fold_in(key, 7), pad).reshape(x.shape)
    b_axis = ix.ndim - 1
    return shard_batch(x, b_axis), shard_batch(y_pool[ix], b_axis), key

  jit_kw = dict(donate_argnums=(0,))
  if mesh is not None:
    jit_kw["out_shardings"] = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def run(state, x_pool, y_pool, tasks, idx, step_key, x_index=None):
    if joint:
      def body(st, ix):
        x, y, key = batch(st, ix, step_key, x_pool, y_pool, x_index)
        return step(st, x, y, key)
      idx_r = idx.reshape((-1, num_tasks) + idx.shape[1:])
      state, losses = jax.lax.scan(body, state, idx_r)
      return state, losses.reshape(-1)

    def body(st, inp):
      task, ix = inp
      x, y, key = batch(st, ix, step_key, x_pool, y_pool, x_index)
      return step(st, x, y, task, key)
    return jax.lax.scan(body, state, (tasks, idx))

  if population:
    d = 0 if member_data else None
    members = jax.vmap(run, in_axes=(0, d, d, 0, 0, 0, d))
    return jax.jit(lambda state, x_pool, y_pool, tasks, idx, step_key, x_index=None: members(
        state, x_pool, y_pool, tasks, idx, step_key, x_index), **jit_kw)
  return jax.jit(run, **jit_kw)


def pad_crop(x, key, pad: int):
  """Zero-pad ``[B, H, W, C]`` by ``pad`` on each side and crop a random ``H x W`` window per
  example (the 40-task benchmark's augmentation; no flips)."""
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offs = jax.random.randint(key, (b, 2), 0, 2 * pad + 1, jnp.int32)
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], jnp.int32(0)), (h, w, im.shape[-1]))
  return jax.vmap(crop)(xp, offs)


# ----------------------------------------------------------------------------- schedule
@functools.partial(jax.jit, static_argnums=(2,))
def _orders(key, rounds, num_tasks):
  return jax.vmap(lambda r: jax.random.permutation(jax.random.fold_in(key, r), num_tasks))(rounds)


def round_orders(key, first_round: int, num_rounds: int, num_tasks: int) -> np.ndarray:
  """Task order of each round, ``[num_rounds, T]`` (a fresh permutation per round)."""
  return np.asarray(_orders(key, jnp.arange(first_round, first_round + num_rounds), num_tasks))


def check_batch_size(split: Split, batch_size: int) -> None:
  """Raise :class:`~gmr.config.ConfigError` (``batch_size``) when a task of ``split`` has
  fewer examples than one batch."""
  for t, n in enumerate(split.sizes):
    if n < batch_size:
      raise ConfigError("batch_size", f"{batch_size} exceeds the {n} training examples of "
                        f"task {t}", f"use --config.batch_size <= {min(split.sizes)}")


class BatchSampler:
  """Epoch-wise shuffled batches per task, as a pure function of (key, task, round)."""

  def __init__(self, key, split: Split, batch_size: int):
    self.key, self.split, self.batch_size = key, split, batch_size
    check_batch_size(split, batch_size)
    self._cache: Dict = {}

  def _perm(self, task, epoch):
    k = (task, epoch)
    if k not in self._cache:
      if len(self._cache) > 4 * len(self.split.sizes):
        self._cache.clear()
      key = jax.random.fold_in(jax.random.fold_in(self.key, task), epoch)
      self._cache[k] = np.asarray(jax.random.permutation(key, self.split.sizes[task]))
    return self._cache[k]

  def task_indices(self, task: int, rounds: np.ndarray) -> np.ndarray:
    """Global pool indices of task ``task``'s batches at ``rounds``: ``[len(rounds), B]``."""
    b = self.batch_size
    per_epoch = self.split.sizes[task] // b
    out = np.empty((len(rounds), b), np.int32)
    epochs = rounds // per_epoch
    for e in np.unique(epochs):
      sel = epochs == e
      pos = (rounds[sel] % per_epoch)[:, None] * b + np.arange(b)
      out[sel] = self._perm(task, int(e))[pos]
    return out + self.split.offsets[task]

  def round_robin(self, orders: np.ndarray, first_round: int):
    """Flatten rounds ``first_round..`` with task ``orders [K, T]`` into steps:
    ``tasks [K*T]`` and ``idx [K*T, B]``."""
    k, t = orders.shape
    rounds = np.arange(first_round, first_round + k)
    per_task = np.stack([self.task_indices(i, rounds) for i in range(t)])  # [T, K, B]
    idx = per_task[orders, np.arange(k)[:, None]]  # [K, T, B]
    return orders.reshape(-1).astype(np.int32), idx.reshape(k * t, -1)


# ----------------------------------------------------------------------------- when
def call_boundaries(config) -> list:
  """The rounds (ascending, ending at ``num_rounds``) after which a device call ends: the
  multiples of ``log_every``, ``eval_every``, ``checkpoint_every``, ``rounds_per_call`` and
  ``alloc_history_every`` (0: none) and the last round. The same whatever round a run starts
  from, so a resumed run replays the same device calls."""
  total = int(config.num_rounds)
  boundaries = {total}
  for every in (config.log_every, config.eval_every, config.checkpoint_every,
                max(1, int(config.rounds_per_call)), int(config.alloc_history_every)):
    if every:
      boundaries.update(range(every, total, every))
  return sorted(boundaries)


def on_eval_grid(config, r: int) -> bool:
  """Round ``r`` is a multiple of ``eval_every``: evaluated in a run of any length."""
  return bool(config.eval_every) and r % config.eval_every == 0


def history_at(config, r: int) -> bool:
  """The allocation history is recorded after round ``r``: at multiples of
  ``alloc_history_every`` (0: off) and after the last round."""
  every = int(config.alloc_history_every)
  return bool(every) and (r % every == 0 or r == int(config.num_rounds))


def evaluated_splits(config, r: int) -> tuple:
  """The splits evaluated after round ``r`` (``()``: none), a function of the schedule alone.

  At multiples of ``eval_every``: the test split, and validation when ``select_by`` ranks by
  it; after the last round: every split. Only rounds on the ``eval_every`` grid compete for
  ``select_by`` beyond their own run's end, so a run continued with ``--extend`` selects as
  one run of its final length does. Splits a suite lacks are skipped by the caller."""
  if r == int(config.num_rounds):
    return ("test", "validation")
  if on_eval_grid(config, r):
    sel = (config.select_by or "").split(".", 1)[0]
    return ("test", "validation") if sel == "validation" else ("test",)
  return ()
