"""Training a run: its setup (network, method, optimizer), its initial state (or one taken
from another run's backbone), and the loop that runs the schedule (:mod:`gmr.schedule`) of
steps (:mod:`gmr.step`), evaluates (:mod:`gmr.evaluate`), records the allocation history and
reports events. The names of those modules are re-exported here.
"""

from __future__ import annotations

import json
import os
import time
from typing import Callable, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gmr import allocation as A
from gmr import checkpoint as checkpoint_lib
from gmr import methods as methods_lib
from gmr import models
from gmr import ops
from gmr.data.suite import TaskSuite
from gmr.optim import make_optimizer
from gmr.evaluate import (EvalPlan, SplitEvaluation, allocation_summary, eval_plan, evaluate,
                          make_evaluator)
from gmr.schedule import (BatchSampler, make_mesh, make_run_steps, num_data_devices, pad_crop,
                          replicate, round_orders)
from gmr.step import (Keys, Setup, TrainState, make_joint_step, make_keys, make_train_step,
                      network_input, task_loss, task_objective)

__all__ = [  # this module's own, and those of the modules it is made of
    "Event", "InitFromError", "NonFiniteError", "build_setup", "check_structure", "init_from",
    "init_state", "make_setup", "resolve_combine", "source_checkpoint", "source_model_params",
    "train", "better", "metric_value", "on_eval_grid", "history_at", "evaluated_splits",
    "EvalPlan", "SplitEvaluation", "allocation_summary", "eval_plan", "evaluate",
    "make_evaluator", "BatchSampler", "make_mesh", "make_run_steps", "num_data_devices",
    "pad_crop", "replicate", "round_orders", "Keys", "Setup", "TrainState", "make_joint_step",
    "make_keys", "make_train_step", "network_input", "task_loss", "task_objective"]


def resolve_combine(config) -> str:
  """``combine="auto"``: what the authors' code does, sum for shared bottom, mean otherwise."""
  if config.combine == "auto":
    return methods_lib.METHODS[config.method].default_combine
  return config.combine


def make_setup(config, suite: TaskSuite) -> Setup:
  """The network, method and optimizer of ``config`` for ``suite``."""
  return build_setup(config, suite.num_tasks, suite.head_dims, int(suite.train.x.shape[-1]),
                     suite.loss, float(suite.x_scale))


def build_setup(config, num_tasks: int, head_dims, input_dim: int, loss: str = "xent",
                x_scale: float = 1.0) -> Setup:
  """:func:`make_setup` from the suite's shape alone (no data)."""
  kwargs = dict(num_tasks=num_tasks, head_dims=tuple(head_dims), dropout=config.dropout,
                input_dim=int(input_dim))
  kwargs.update(config.arch_kwargs)
  arch = models.build(config.arch, **kwargs)
  if arch.head_dims is not None and len(arch.head_dims) != num_tasks:
    raise methods_lib.ConfigError("arch", f"{config.arch!r} has {len(arch.head_dims)} heads "
                                  f"for {num_tasks} tasks", "match the suite's tasks")
  method = methods_lib.build(config.method, config, num_tasks, arch.layer_sizes)
  net = models.MultiTaskNet(arch, resolve_combine(config), ops.Compute(
      config.fused, config.conv_impl, config.layout, config.conv_dtype))
  tx = make_optimizer(config, num_tasks)
  return Setup(net, arch, method, tx, loss, float(x_scale), num_tasks)


def check_structure(config, num_tasks: int, head_dims, input_dim: int) -> None:
  """Build the network, the method and the optimizer state abstractly (``jax.eval_shape``:
  shapes only, no compute, no data), so a structure that cannot work fails before data is
  prepared.

  Raises :class:`~gmr.methods.ConfigError`: the method's own (``fixed_allocation``,
  ``taps_layers``, ...), or one naming ``arch_kwargs`` (``arch`` when it is empty) for any
  failure of the architecture (e.g. GroupNorm with channels not divisible by its groups)."""
  try:
    setup = build_setup(config, num_tasks, head_dims, input_dim)
    jax.eval_shape(lambda k: init_state(setup, k), jax.random.key(0))
  except methods_lib.ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any failure of the user's structure)
    kw = dict(config.arch_kwargs)
    msg = (str(e).splitlines() or [""])[0][:200]
    raise methods_lib.ConfigError(
        "arch_kwargs" if kw else "arch",
        f"the {config.arch!r} network{' with ' + str(kw) if kw else ''} cannot be built for "
        f"{num_tasks} tasks ({type(e).__name__}: {msg})",
        "change these fields (e.g. GroupNorm needs filters divisible by its groups)") from None


def init_state(setup: Setup, key) -> TrainState:
  k_model, k_alloc, k_drop = jax.random.split(key, 3)
  x = jnp.zeros((1,) + setup.arch.input_shape, jnp.float32)
  rows = [jnp.ones((c,), jnp.float32) for c in setup.arch.layer_sizes]
  # jitted: eager init runs (and compiles) every op of the network one by one
  init = jax.jit(lambda k1, k2: setup.net.init({"params": k1, "dropout": k2}, x, rows, 0))
  model = init(k_model, k_drop)["params"]
  params = {"model": model, "alloc": setup.method.init(k_alloc, model)}
  return TrainState(jnp.zeros((), jnp.int32), params, setup.tx.init(params))


class InitFromError(ValueError):
  """``init_from`` names a run whose checkpoint cannot start this one."""


def source_checkpoint(workdir: str) -> str:
  """The checkpoint a finished run's numbers come from (``results.json``'s ``checkpoint``)."""
  res = os.path.join(workdir, "results.json")
  if not os.path.exists(res):
    raise InitFromError(f"init_from: {workdir} has no results.json (not a finished gmr run); "
                        "finish the source run first or point init_from at its workdir")
  with open(res) as f:
    path = json.load(f).get("checkpoint", "")
  if not path or not os.path.isdir(path):
    raise InitFromError(f"init_from: the checkpoint {path!r} named by {res} is missing; "
                        "rerun the source run with --fresh")
  return path


def source_model_params(workdir: str) -> dict:
  """The network parameters (numpy) of the checkpoint a finished run's numbers come from."""
  return checkpoint_lib.read_state(source_checkpoint(workdir))["params"]["model"]


def init_from(setup: Setup, state: TrainState, workdir: str) -> TrainState:
  """Start from the backbone of another run (fine-tuning): every model parameter but the task
  heads is copied from the checkpoint its results come from; the heads stay freshly
  initialised (new tasks), the method's own parameters too; the optimizer starts afresh."""
  src = traverse_util.flatten_dict(source_model_params(workdir))
  ours = traverse_util.flatten_dict(state.params["model"])
  new = {}
  for p, v in ours.items():
    if "heads" in p:
      new[p] = v
      continue
    if p not in src:
      raise InitFromError(f"init_from: {workdir} has no parameter {'/'.join(p)}; the source run "
                          "must use the same architecture (arch and arch_kwargs)")
    if tuple(src[p].shape) != tuple(v.shape):
      raise InitFromError(f"init_from: {'/'.join(p)} is {tuple(src[p].shape)} in {workdir} but "
                          f"{tuple(v.shape)} here; use the same architecture as the source run")
    new[p] = jnp.asarray(src[p], v.dtype)
  params = dict(state.params, model=traverse_util.unflatten_dict(new))
  return TrainState(state.step, params, setup.tx.init(params))


# ----------------------------------------------------------------------------- loop
class Event(NamedTuple):
  kind: str  # "log", "eval" or "alloc" (method.history(): P(on), TAPS scores; alloc_history_every)
  data: dict


class NonFiniteError(FloatingPointError):
  """A non-finite loss or parameter; ``step`` and ``task`` name where it first appeared."""

  def __init__(self, step: int, task: str, what: str, detail: str = ""):
    self.step, self.task, self.what = step, task, what
    super().__init__(f"non-finite {what} at step {step} (task {task})"
                     + (f"; {detail}" if detail else ""))


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves))


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


def metric_value(evaluation: dict, path: str) -> float:
  """``metric_value(ev, "validation.accuracy.mean")``: a number inside an evaluation."""
  v = evaluation
  for p in path.split("."):
    v = v[p]
  return float(v)


def better(a: float, b: Optional[float], path: str) -> bool:
  """Is ``a`` better than ``b`` for metric ``path`` (losses: lower; others: higher)?"""
  if b is None:
    return True
  return a < b if ".loss." in f".{path}." else a > b


def train(config, suite: TaskSuite, on_event: Optional[Callable[[Event], None]] = None,
          state: Optional[TrainState] = None, start_round: int = 0,
          on_chunk: Optional[Callable] = None, best: Optional[dict] = None,
          log_carry: Optional[dict] = None,
          on_progress: Optional[Callable[[str, dict], None]] = None,
          setup: Optional[Setup] = None):
  """Run the round-robin schedule for ``config.num_rounds`` rounds.

  Calls ``on_event`` with ``Event("log", ...)`` every ``log_every`` rounds (training loss per
  task since the last one, temperature, the method's penalty terms per task at this round) and
  ``Event("eval", ...)`` every ``eval_every`` rounds and at the end: the test split, and the
  validation split (if the suite has one) at the end and, when ``select_by`` ranks by it, at
  every evaluation. Log events carry ``wall_s``: seconds since the previous log line spent in
  the steps, the allocation history, evaluation and ``on_chunk`` (checkpoints).
  After every device call, checks that the losses and parameters are finite (raising
  :class:`NonFiniteError` naming the step and task) and calls
  ``on_chunk(round, state, best, evaluated, log_carry)``; rounds where it is called are the same
  whatever ``start_round`` is (multiples of log_every, eval_every, checkpoint_every and
  rounds_per_call), so a resumed run replays exactly the same device calls.

  With ``config.select_by`` (e.g. ``"validation.accuracy.mean"``), ``best`` tracks the
  evaluation with the best value: ``{"value", "round", "evaluation"}``.
  ``log_carry`` (``{"tasks": [...], "losses": [...]}``, JSON-able) holds the training losses
  since the last log line; a run resumed with the carry its checkpoint saved writes the same
  log lines as one that never stopped.
  ``on_progress(kind, data)`` gets what a person watching wants and metrics.jsonl does not
  keep: ``("compiled", {"seconds", "rounds"})`` when a new shape of the training call has been
  compiled, ``("eval_task", {"split", "task", "of", "name", "elapsed_s"})`` as an evaluation
  reaches each task, and ``("eval_done", {"split"..., "round", "seconds"})``. Log events'
  ``steps_per_s`` is the steady-state rate (device time of the steps, compilation excluded)
  and ``eta_s`` the remaining steps at that rate plus the remaining evaluations at the last
  evaluation's duration.
  ``setup``: :func:`make_setup` of ``config`` and ``suite`` when the caller has built it
  already (the run builds it once).
  Returns ``(setup, state, final, best)``; ``final`` is the last evaluation.
  """
  on_event = on_event or (lambda e: None)
  on_progress = on_progress or (lambda kind, data: None)
  keys = make_keys(config.seed)
  setup = setup or make_setup(config, suite)
  if state is None:
    state = init_state(setup, keys.init)
    if config.init_from:
      state = init_from(setup, state, config.init_from)
  mesh = make_mesh(config)
  if mesh is not None and config.batch_size % mesh.size:
    raise ValueError(f"batch_size={config.batch_size} does not split over data_parallel="
                     f"{mesh.size} devices; use a multiple of {mesh.size}")
  state = replicate(state, mesh)
  run_steps = make_run_steps(setup, config, mesh)
  joint = config.schedule == "joint"
  sampler = BatchSampler(keys.batch, suite.train, config.batch_size)
  eval_now = {"split": "", "t0": 0.0}

  def on_task(task):
    t = int(task)
    on_progress("eval_task", {"split": eval_now["split"], "task": t, "of": suite.num_tasks,
                              "name": suite.task_names[t],
                              "elapsed_s": time.time() - eval_now["t0"]})
  evaluator = make_evaluator(setup, bool(config.eval_sample), on_task)
  put = (lambda a: replicate(a, mesh)) if mesh is not None else jax.device_put
  x_pool, y_pool = put(suite.train.x), put(suite.train.y)
  x_index = None if suite.train.index is None else put(suite.train.index)
  t_count, names = suite.num_tasks, suite.task_names
  total = int(config.num_rounds)
  chunk = max(1, int(config.rounds_per_call))
  boundaries = {total}
  history_every = int(config.alloc_history_every)
  for every in (config.log_every, config.eval_every, config.checkpoint_every, chunk,
                history_every):
    if every:
      boundaries.update(range(every, total, every))
  boundaries = sorted(boundaries)
  select_by = config.select_by or ""

  eval_splits = {"test": suite.test, "validation": suite.validation}
  eval_splits = {k: SplitEvaluation(setup, evaluator, v, config.eval_batch_size, names, put)
                 for k, v in eval_splits.items() if v is not None}

  def do_eval(r):
    out = {}
    for k, ev in eval_splits.items():
      if k in evaluated_splits(config, r):
        eval_now.update(split=k, t0=time.time())
        out[k] = ev(state.params, keys.eval)
        on_progress("eval_done", {"split": k, "round": r, "seconds": time.time() - eval_now["t0"],
                                  **{m: out[k][m]["mean"] for m in out[k]}})
    return out

  compiled = {}  # shapes of the training call -> its program, compiled apart (timed)

  @jax.jit
  def penalties(alloc):  # every task's auxiliary terms at the current parameters
    return jax.vmap(lambda t: setup.method.penalty_terms(alloc, t))(jnp.arange(t_count))

  def penalty_report():
    terms = jax.device_get(penalties(state.params["alloc"]))  # {} for a method without terms
    return {k: dict({n: float(v[i]) for i, n in enumerate(names)}, mean=float(np.mean(v)))
            for k, v in terms.items()}

  def chunk_batches(a, b):
    """Task and example indices of rounds ``a..b`` (host side; prepared while the device runs)."""
    if joint:  # every task every round, in task order
      orders = np.tile(np.arange(t_count, dtype=np.int32), (b - a, 1))
    else:
      orders = round_orders(keys.order, a, b - a, t_count)
    return sampler.round_robin(orders, a)

  r = start_round
  final_best = None  # the end-of-run evaluation when it is off the eval grid and the best
  pending: List = []  # (tasks, losses) host arrays since the last log
  if log_carry and log_carry.get("tasks"):
    pending.append((np.asarray(log_carry["tasks"], np.int32),
                    np.asarray(log_carry["losses"], np.float32)))
  # wall seconds since the last log line, by job: the device steps (with the host preparing the
  # next chunk's batches meanwhile), the allocation history, evaluation, and on_chunk (checkpoints)
  wall = dict.fromkeys(("steps", "history", "eval", "checkpoint"), 0.0)
  t_start = time.time()
  steady = {"seconds": 0.0, "steps": 0, "eval_s": 0.0}  # device steps without compilation
  last_eval = None
  nxt = next((b for b in boundaries if b > r), total)
  ahead = chunk_batches(r, nxt) if r < total else None
  while r < total:
    t0 = time.time()
    tasks, idx = ahead
    prev_step = int(state.step)
    args = (state, x_pool, y_pool, tasks, idx, keys.step, x_index)
    if (tasks.shape, idx.shape) not in compiled:
      t_c = time.time()
      compiled[(tasks.shape, idx.shape)] = run_steps.lower(*args).compile()
      on_progress("compiled", {"seconds": time.time() - t_c, "rounds": nxt - r})
    t_run = time.time()
    state, losses = compiled[(tasks.shape, idx.shape)](*args)
    # dispatch is asynchronous: build the next chunk's batches before waiting for this one
    after = next((b for b in boundaries if b > nxt), None)
    ahead = chunk_batches(nxt, after) if after is not None else None
    ls = np.asarray(losses)
    if not np.all(np.isfinite(ls)):
      bad = int(np.argmax(~np.isfinite(ls)))
      raise NonFiniteError(prev_step + bad, names[int(tasks[bad])], "loss")
    if not bool(_all_finite((state.params, state.opt_state))):  # all a checkpoint keeps
      raise NonFiniteError(int(state.step) - 1, names[int(tasks[-1])],
                           "parameter or optimizer state")
    pending.append((tasks, ls))
    steady["seconds"] += time.time() - t_run
    steady["steps"] += len(tasks)
    r, nxt = nxt, after
    wall["steps"] += time.time() - t0
    if (config.log_every and r % config.log_every == 0) or r == total:
      tk = np.concatenate([p[0] for p in pending])
      la = np.concatenate([p[1] for p in pending])
      now = time.time()
      rate = steady["steps"] / max(steady["seconds"], 1e-9)
      e = int(config.eval_every or 0)  # evaluations after r: the eval_every grid and the end
      evals_left = (r < total) + (((total - 1) // e - r // e) if e else 0)
      eta = (total - r) * t_count / max(rate, 1e-9) + evals_left * steady["eval_s"]
      per_task = {n: float(la[tk == i].mean()) for i, n in enumerate(names) if np.any(tk == i)}
      on_event(Event("log", {
          "round": r, "step": int(state.step), "train_loss": per_task,
          "train_loss_mean": float(np.mean(list(per_task.values()))),
          "temperature": float(A.temperature(int(state.step), config.t_init, config.t_min)),
          "penalty": penalty_report(),
          "steps_per_s": rate, "eta_s": eta,
          "elapsed_s": now - t_start, "wall_s": {k: round(v, 3) for k, v in wall.items()}}))
      pending = []
      wall = dict.fromkeys(wall, 0.0)
    if history_at(config, r) and state.params["alloc"]:
      t0 = time.time()
      record = setup.method.history(state.params["alloc"])
      if any(record.values()):
        on_event(Event("alloc", {"round": r, "step": int(state.step), **record}))
      wall["history"] += time.time() - t0
    evaluated = False
    if evaluated_splits(config, r):
      t0 = time.time()
      last_eval = do_eval(r)
      evaluated = True
      dt = time.time() - t0
      steady["eval_s"] = dt
      wall["eval"] += dt
      on_event(Event("eval", {"round": r, "step": int(state.step), **last_eval,
                              "wall_s": round(dt, 3)}))
      if select_by:
        try:
          v = metric_value(last_eval, select_by)
        except KeyError:
          raise ValueError(f"select_by: {select_by!r} is not in the evaluation "
                           f"(keys {sorted(last_eval)}); e.g. 'validation.accuracy.mean'") from None
        if not on_eval_grid(config, r):  # the end of this schedule, not of a longer one
          if better(v, (best or {}).get("value"), select_by):
            final_best = {"value": v, "round": r, "evaluation": last_eval, "new": False}
          best = dict(best, new=False) if best else None
        elif better(v, (best or {}).get("value"), select_by):
          best = {"value": v, "round": r, "evaluation": last_eval, "new": True}
        else:
          best = dict(best, new=False)
    if on_chunk is not None:
      t0 = time.time()
      carry = {"tasks": [int(t) for p in pending for t in p[0]],
               "losses": [float(v) for p in pending for v in p[1]]}
      on_chunk(r, state, best, evaluated, carry)
      wall["checkpoint"] += time.time() - t0
  if last_eval is None:
    last_eval = do_eval(r)
  return setup, state, last_eval, final_best or best
