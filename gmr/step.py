"""The pure training step: the train state, a task batch's objective and one update
(round-robin: one task batch per update), and the joint step (``schedule="joint"``, not the
paper's): one update on all T task batches at once, vmapped over tasks, each task with its own
sampled allocation, dropout and penalty; the gradient is the sum of the T task-batch
gradients.

All randomness comes from explicit keys: the Gumbel noise and dropout of step ``s`` are
``fold_in(k_step, s)``; :func:`make_keys` derives every key of a run from ``config.seed``.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from gmr import allocation as A
from gmr import methods as methods_lib
from gmr import models


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array  # task-batch updates so far (one round over T tasks adds T)
  params: dict     # {"model": ..., "alloc": ...}
  opt_state: optax.OptState


class Keys(NamedTuple):
  init: jax.Array
  order: jax.Array
  batch: jax.Array
  step: jax.Array
  eval: jax.Array
  data: jax.Array


def make_keys(seed: int) -> Keys:
  return Keys(*jax.random.split(jax.random.key(seed), 6))


# ----------------------------------------------------------------------------- losses
def task_loss(kind: str, out, y):
  """Per-example loss and (for classification) correctness: ``[B]``, ``[B]``."""
  if y.shape != out.shape[:-1]:  # at trace time: a [B, 1] target would broadcast to [B, B]
    raise ValueError(f"targets of shape {y.shape} for outputs {out.shape}; give one target per "
                     "example, shape [B]")
  if kind == "mse":
    pred = out[..., 0]
    return jnp.square(pred - y), jnp.zeros_like(pred)
  if kind == "xent":
    loss = optax.softmax_cross_entropy_with_integer_labels(out, y)
    return loss, (jnp.argmax(out, -1) == y).astype(jnp.float32)
  raise ValueError(f"unknown loss {kind!r}")


# ----------------------------------------------------------------------------- setup
class Setup(NamedTuple):
  """Everything static about a run: network, method, optimizer and the suite's facts."""
  net: models.MultiTaskNet
  arch: models.Architecture
  method: methods_lib.Method
  tx: optax.GradientTransformation
  loss: str
  x_scale: float
  num_tasks: int


def _select_task_rows(new, old, task, num_tasks, row_keys=("heads",)):
  """Keep ``old`` except row ``task`` for leaves under ``row_keys`` (the heads and the
  method's ``task_row_keys``, e.g. TAPS's per-task deltas and scores) with a leading task
  axis."""
  def sel(path, n, o):
    if (any(getattr(p, "key", None) in row_keys for p in path) and n.ndim
        and n.shape[0] == num_tasks):
      mask = (jnp.arange(num_tasks) == task).reshape((-1,) + (1,) * (n.ndim - 1))
      return jnp.where(mask, n, o)
    return n
  return jax.tree_util.tree_map_with_path(sel, new, old)


def network_input(setup: Setup, x) -> jax.Array:
  """The network's input from a batch as its suite stores it (uint8 images, float features):
  float32 times the suite's ``x_scale`` (1/255 for images). Every path applies it exactly once,
  here: the training steps (hand-written loops included) and the evaluator."""
  return jnp.asarray(x).astype(jnp.float32) * setup.x_scale


def task_objective(setup: Setup, params, x, y, task, key, temperature):
  """``(objective, task_loss)`` of one task batch ``x`` (as the suite stores it, see
  :func:`network_input`): the loss under a sampled allocation (and the method's adapted
  weights) plus the method's penalty. ``key`` gives the Gumbel noise and the dropout."""
  k_alloc, k_drop = jax.random.split(key)
  rows = setup.method.train_rows(params["alloc"], k_alloc, task, temperature)
  model = setup.method.adapt(params["model"], params["alloc"], task)
  out = setup.net.apply({"params": model}, network_input(setup, x), rows, task, train=True,
                        rngs={"dropout": k_drop})
  loss = task_loss(setup.loss, out, y)[0].mean()
  return loss + setup.method.penalty(params["alloc"], task), loss


def _apply_gradients(setup: Setup, state: TrainState, grads):
  updates, opt_state = setup.tx.update(grads, state.opt_state, state.params)
  return optax.apply_updates(state.params, updates), opt_state


def make_train_step(setup: Setup, config) -> Callable:
  """``step(state, x, y, task, key) -> (state, task_loss)`` for one task batch (pure); ``x``
  as the suite stores it (scaled by :func:`network_input`)."""
  t_init, t_min = float(config.t_init), float(config.t_min)
  sparse_heads = bool(config.sparse_head_updates)
  row_keys = ("heads",) + tuple(setup.method.task_row_keys)

  def step(state: TrainState, x, y, task, key):
    temperature = A.temperature(state.step, t_init, t_min)
    (_, loss), grads = jax.value_and_grad(task_objective, argnums=1, has_aux=True)(
        setup, state.params, x, y, task, key, temperature)
    params, opt_state = _apply_gradients(setup, state, grads)
    if sparse_heads:
      # Heads of other tasks get no gradient in the authors' code and so are not touched
      # (TF skips variables without a gradient); keep their weights and Adam moments.
      params = _select_task_rows(params, state.params, task, setup.num_tasks, row_keys)
      opt_state = _select_task_rows(opt_state, state.opt_state, task, setup.num_tasks, row_keys)
    return TrainState(state.step + 1, params, opt_state), loss

  return step


def make_joint_step(setup: Setup, config) -> Callable:
  """``step(state, x [T, B, ...], y [T, B], key) -> (state, task_losses [T])``: one update on
  one batch of every task (the ``joint`` schedule; pure)."""
  t_init, t_min = float(config.t_init), float(config.t_min)
  num_tasks = setup.num_tasks

  def step(state: TrainState, x, y, key):
    temperature = A.temperature(state.step, t_init, t_min)

    def loss_fn(params):
      one = lambda t, xt, yt, k: task_objective(setup, params, xt, yt, t, k, temperature)
      total, losses = jax.vmap(one)(jnp.arange(num_tasks), x, y,
                                    jax.random.split(key, num_tasks))
      return total.sum(), losses

    (_, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = _apply_gradients(setup, state, grads)
    return TrainState(state.step + num_tasks, params, opt_state), losses

  return step
