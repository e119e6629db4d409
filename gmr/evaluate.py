"""Evaluation: every task of a split as one device call (a ``lax.scan`` over the split's
batches, gathered on the device), greedy allocations unless ``eval_sample``, and the summary
of the learned allocation."""

from __future__ import annotations

from typing import Callable, Dict, NamedTuple, Optional

import jax
import numpy as np

from gmr import allocation as A
from gmr.data.suite import Split
from gmr.step import Setup, network_input, task_loss


class EvalPlan(NamedTuple):
  """Every evaluation batch of one split, all tasks, in task order (host arrays).

  ``tasks [N]`` and ``batch [N]`` (int32): the task of batch ``n`` and its index within that
  task (the key of sampled evaluation is ``fold_in(fold_in(key, task), batch)``);
  ``idx [N, B]`` (int32): slots of the split (padding slots repeat the task's first slot);
  ``mask [N, B]`` (float32): 1 for real examples, 0 for padding. Each task's examples are
  covered once, in order, by ``ceil(n_t / B)`` batches."""
  tasks: np.ndarray
  batch: np.ndarray
  idx: np.ndarray
  mask: np.ndarray


def eval_plan(split: Split, batch_size: int) -> EvalPlan:
  """The batches that evaluate ``split`` at ``batch_size`` (capped at the largest task, so no
  batch is padded beyond it)."""
  b = min(int(batch_size), max(split.sizes))
  tasks, batch, idx, mask = [], [], [], []
  for t, (o, n) in enumerate(zip(split.offsets, split.sizes)):
    nb = -(-n // b)
    slots = o + np.arange(nb * b).reshape(nb, b)
    mask.append((slots < o + n).astype(np.float32))
    idx.append(np.where(slots < o + n, slots, o).astype(np.int32))
    tasks.append(np.full(nb, t, np.int32))
    batch.append(np.arange(nb, dtype=np.int32))
  return EvalPlan(*(np.concatenate(a) for a in (tasks, batch, idx, mask)))


def make_evaluator(setup: Setup, sample: bool,
                   on_task: Optional[Callable[[int], None]] = None) -> Callable:
  """Jitted ``evaluator(params, x_pool, y_pool, x_index, tasks, batch, idx, mask, key)
  -> (loss_sums [N], correct_sums [N])`` (float32): one device call for a whole
  :class:`EvalPlan`, a ``lax.scan`` over its batches gathering each from the split's pools on
  the device. Greedy allocations unless ``sample`` (section III-C: sampled, key per batch).
  ``on_task(task)`` (host) is called as each task's first batch is reached (progress of a long
  evaluation; the numbers are the same with or without it)."""

  def report(task, i):
    if on_task is not None:
      jax.lax.cond(i == 0, lambda t: jax.debug.callback(on_task, t), lambda t: None, task)

  @jax.jit
  def evaluator(params, x_pool, y_pool, x_index, tasks, batch, idx, mask, key):
    def body(_, inp):
      task, i, ix, m = inp
      report(task, i)
      rows = ix if x_index is None else x_index[ix]
      x = network_input(setup, x_pool[rows])
      k = jax.random.fold_in(jax.random.fold_in(key, task), i)
      out_rows = setup.method.eval_rows(params["alloc"], task, k, sample)
      model = setup.method.adapt(params["model"], params["alloc"], task)
      out = setup.net.apply({"params": model}, x, out_rows, task, train=False)
      loss, correct = task_loss(setup.loss, out, y_pool[ix])
      return None, ((loss * m).sum(), (correct * m).sum())
    _, sums = jax.lax.scan(body, None, (tasks, batch, idx, mask))
    return sums
  return evaluator


METRICS = {"xent": ("loss", "accuracy"), "mse": ("loss",)}  # what an evaluation reports, by loss


class SplitEvaluation:
  """One split put on the device once, with its :class:`EvalPlan`; ``__call__(params, key)``
  gives the mean loss (and accuracy for classification) per task and over tasks."""

  def __init__(self, setup: Setup, evaluator, split: Split, batch_size: int, task_names,
               put=jax.device_put):
    self.setup, self.evaluator, self.names = setup, evaluator, tuple(task_names)
    self.sizes = split.sizes
    self.plan = eval_plan(split, batch_size)
    self.pools = (put(split.x), put(split.y), None if split.index is None else put(split.index))
    self.plan_dev = tuple(put(a) for a in self.plan)

  def __call__(self, params, key) -> Dict[str, Dict[str, float]]:
    l, c = (np.asarray(a, np.float64) for a in self.evaluator(params, *self.pools,
                                                               *self.plan_dev, key))
    # per-task sums over batches in order, on the host in float64
    tot_l = np.zeros(len(self.names))
    tot_c = np.zeros(len(self.names))
    np.add.at(tot_l, self.plan.tasks, l)
    np.add.at(tot_c, self.plan.tasks, c)
    n = np.asarray(self.sizes, np.float64)
    loss = {name: float(v) for name, v in zip(self.names, tot_l / n)}
    out = {"loss": dict(loss, mean=float(np.mean(list(loss.values()))))}
    if "accuracy" in METRICS[self.setup.loss]:
      acc = {name: float(v) for name, v in zip(self.names, tot_c / n)}
      out["accuracy"] = dict(acc, mean=float(np.mean(list(acc.values()))))
    return out


def evaluate(setup: Setup, params, split: Split, batch_size: int, key, task_names,
             sample: bool = False) -> Dict[str, Dict[str, float]]:
  """Mean loss (and accuracy for classification) per task and over tasks on ``split``
  (``{"loss": {task: float, "mean": float}, "accuracy": {...}}``). For repeated evaluation
  of one split build a :class:`SplitEvaluation` once (it keeps the split on the device)."""
  return SplitEvaluation(setup, make_evaluator(setup, sample), split, batch_size,
                         task_names)(params, key)


def allocation_summary(setup: Setup, params, task_names) -> Dict:
  """Greedy allocation matrices per routed layer, their active fraction and P(on)."""
  mats = setup.method.matrices(params["alloc"])
  probs = [np.asarray(p) for p in setup.method.probabilities(params["alloc"])]
  return {
      "allocations": {f"layer_{l}": m.tolist() for l, m in enumerate(mats)},
      "active_fraction": A.active_fraction_of(mats),
      "probabilities": {f"layer_{l}": np.round(p, 6).tolist() for l, p in enumerate(probs)},
      **setup.method.summary(params["alloc"], task_names),
  }
