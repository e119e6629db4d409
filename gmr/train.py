"""Training a run: its setup (network, method, optimizer), its initial state (fresh, or the
backbone of another run: :func:`init_from`), and the loop that runs the schedule
(:mod:`gmr.schedule`) of steps (:mod:`gmr.step`), evaluates (:mod:`gmr.evaluate`), keeps the
best evaluation by ``select_by`` (:func:`update_best`), records the allocation history and
reports events.
"""

from __future__ import annotations

import time
from typing import Callable, List, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from gmr import allocation as A
from gmr import methods as methods_lib
from gmr import models
from gmr import ops
from gmr import optim
from gmr.config import ConfigError
from gmr.data.suite import TaskSuite
from gmr.evaluate import SplitEvaluation, make_evaluator
from gmr.schedule import (BatchSampler, call_boundaries, evaluated_splits, history_at,
                          make_mesh, make_run_steps, on_eval_grid, replicate, round_orders)
from gmr.step import Setup, TrainState, make_keys


def resolve_combine(config) -> str:
  """``combine="auto"``: what the authors' code does, sum for shared bottom, mean otherwise."""
  if config.combine == "auto":
    return methods_lib.method_class(config.method).default_combine
  return config.combine


def make_setup(config, suite: TaskSuite) -> Setup:
  """The network, method and optimizer of ``config`` for ``suite``."""
  return build_setup(config, suite.num_tasks, suite.head_dims, int(suite.train.x.shape[-1]),
                     suite.loss, float(suite.x_scale))


def build_setup(config, num_tasks: int, head_dims, input_dim: int, loss: str = "xent",
                x_scale: float = 1.0) -> Setup:
  """:func:`make_setup` from the suite's shape alone (no data)."""
  arch = models.from_config(config, num_tasks, head_dims, input_dim)
  if arch.head_dims is not None and len(arch.head_dims) != num_tasks:
    raise ConfigError("arch", f"{config.arch!r} has {len(arch.head_dims)} heads "
                                  f"for {num_tasks} tasks", "match the suite's tasks")
  method = methods_lib.build(config.method, config, num_tasks, arch.layer_sizes)
  net = models.MultiTaskNet(arch, resolve_combine(config), ops.Compute(
      config.fused, config.conv_impl, config.layout, config.conv_dtype))
  tx = optim.make_optimizer(config, num_tasks, method)
  return Setup(net, arch, method, tx, loss, float(x_scale), num_tasks)


def check_structure(config, num_tasks: int, head_dims, input_dim: int) -> Setup:
  """Build the network, the method and the optimizer state abstractly (``jax.eval_shape``:
  shapes only, no compute, no data), so a structure that cannot work fails before data is
  prepared. Returns the setup it built (loss ``"xent"``, ``x_scale`` 1: a run takes it on
  with the suite's, :func:`setup_for`).

  Raises :class:`~gmr.config.ConfigError`: ``num_rounds`` whose steps overflow the int32 step
  counter, the method's own (``fixed_allocation``, ``taps_layers``, ...), or one naming
  ``arch_kwargs`` (``arch`` when it is empty) for any
  failure of the architecture (e.g. GroupNorm with channels not divisible by its groups)."""
  steps = int(config.num_rounds) * int(num_tasks)
  if steps > np.iinfo(np.int32).max:  # TrainState.step, the temperature's clock
    raise ConfigError(
        "num_rounds", f"{config.num_rounds} rounds of {num_tasks} tasks are {steps} steps, more "
        f"than the int32 step counter holds ({np.iinfo(np.int32).max})",
        f"use --config.num_rounds <= {np.iinfo(np.int32).max // num_tasks}")
  try:
    setup = build_setup(config, num_tasks, head_dims, input_dim)
    jax.eval_shape(lambda k: init_state(setup, k), jax.random.key(0))
  except ConfigError:
    raise
  except Exception as e:  # pylint: disable=broad-except  (any failure of the user's structure)
    kw = dict(config.arch_kwargs)
    msg = (str(e).splitlines() or [""])[0][:200]
    raise ConfigError(
        "arch_kwargs" if kw else "arch",
        f"the {config.arch!r} network{' with ' + str(kw) if kw else ''} cannot be built for "
        f"{num_tasks} tasks ({type(e).__name__}: {msg})",
        "change these fields (e.g. GroupNorm needs filters divisible by its groups)") from None
  return setup


def setup_for(setup: Setup, config, suite: TaskSuite) -> Setup:
  """``setup`` (built before the data from the suite's description: :func:`check_structure`)
  for ``suite``: the same network, method and optimizer with the suite's loss and input scale
  when the suite has the shape it was built for (tasks, head sizes, input channels), else
  :func:`make_setup` (a suite whose head sizes only its data knows, e.g. Omniglot's characters
  per alphabet)."""
  arch = models.from_config(config, suite.num_tasks, suite.head_dims,
                            int(suite.train.x.shape[-1]))  # the spec alone: data, no modules
  if arch != setup.arch or suite.num_tasks != setup.num_tasks:
    return make_setup(config, suite)
  return setup._replace(loss=suite.loss, x_scale=float(suite.x_scale))


def init_state(setup: Setup, key) -> TrainState:
  k_model, k_alloc, k_drop = jax.random.split(key, 3)
  x = jnp.zeros((1,) + setup.arch.input_shape, jnp.float32)
  rows = [jnp.ones((c,), jnp.float32) for c in setup.arch.layer_sizes]
  # jitted: eager init runs (and compiles) every op of the network one by one
  init = jax.jit(lambda k1, k2: setup.net.init({"params": k1, "dropout": k2}, x, rows, 0))
  model = init(k_model, k_drop)["params"]
  params = {"model": model, "alloc": setup.method.init(k_alloc, model)}
  return TrainState(jnp.zeros((), jnp.int32), params, setup.tx.init(params))


# ----------------------------------------------------------------------------- init_from
class InitFromError(ValueError):
  """``init_from`` names a run whose checkpoint cannot start this one."""


def init_from(setup: Setup, state: TrainState, backbone: dict, source: str = "the source run"
              ) -> TrainState:
  """Start from the backbone of another run (fine-tuning): every model parameter but the task
  heads is copied from ``backbone`` (the source run's network parameters, nested dicts of
  arrays: :func:`gmr.checkpoint.source_model_params`); the heads stay freshly initialised
  (new tasks), the method's own parameters too; the optimizer starts afresh. ``source``
  names the source in messages.

  Raises :class:`InitFromError` when the backbone's parameters are not exactly this network's
  (one missing, one more, or one shaped otherwise: another architecture)."""
  src = traverse_util.flatten_dict(backbone)
  ours = traverse_util.flatten_dict(state.params["model"])
  extra = sorted("/".join(p) for p in src if "heads" not in p and p not in ours)
  if extra:
    raise InitFromError(f"init_from: {source} has parameters this network lacks ({extra[0]}"
                        + (f" and {len(extra) - 1} more" if len(extra) > 1 else "")
                        + "); the source run must use the same architecture (arch and "
                        "arch_kwargs)")
  new = {}
  for p, v in ours.items():
    if "heads" in p:
      new[p] = v
      continue
    if p not in src:
      raise InitFromError(f"init_from: {source} has no parameter {'/'.join(p)}; the source run "
                          "must use the same architecture (arch and arch_kwargs)")
    if tuple(src[p].shape) != tuple(v.shape):
      raise InitFromError(f"init_from: {'/'.join(p)} is {tuple(src[p].shape)} in {source} but "
                          f"{tuple(v.shape)} here; use the same architecture as the source run")
    new[p] = jnp.asarray(src[p], v.dtype)
  params = dict(state.params, model=traverse_util.unflatten_dict(new))
  return TrainState(state.step, params, setup.tx.init(params))


# ----------------------------------------------------------------------------- select_by
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


def update_best(config, r: int, evaluation: dict, best: Optional[dict],
                final_best: Optional[dict]):
  """``(best, final_best)`` after the evaluation of round ``r`` under ``config.select_by``.

  ``best`` (``{"value", "round", "evaluation", "new"}``; ``new``: set by this round, so its
  checkpoint is saved as the best) competes among rounds on the ``eval_every`` grid only;
  the end of a run off that grid goes to ``final_best`` (it is the best of this schedule,
  never of a longer one that continues it). Raises ``ValueError`` when ``select_by`` names
  no number of the evaluation."""
  select_by = config.select_by
  try:
    v = metric_value(evaluation, select_by)
  except KeyError:
    raise ValueError(f"select_by: {select_by!r} is not in the evaluation "
                     f"(keys {sorted(evaluation)}); e.g. 'validation.accuracy.mean'") from None
  if not on_eval_grid(config, r):  # the end of this schedule, not of a longer one
    if better(v, (best or {}).get("value"), select_by):
      final_best = {"value": v, "round": r, "evaluation": evaluation, "new": False}
    best = dict(best, new=False) if best else None
  elif better(v, (best or {}).get("value"), select_by):
    best = {"value": v, "round": r, "evaluation": evaluation, "new": True}
  else:
    best = dict(best, new=False)
  return best, final_best


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



class _Loop:
  """What one call of :func:`train` holds fixed (keys, device pools, the compiled calls, the
  evaluators) and the loop's jobs, one method each; ``pending``, ``wall`` and ``steady`` are
  its running records between log lines."""

  def __init__(self, config, suite: TaskSuite, setup: Setup, on_event, on_progress,
               log_carry: Optional[dict], backbone: Optional[dict] = None):
    self.config, self.suite, self.setup, self.backbone = config, suite, setup, backbone
    self.on_event, self.on_progress = on_event, on_progress
    self.keys = make_keys(config.seed)
    self.names, self.num_tasks, self.total = suite.task_names, suite.num_tasks, int(config.num_rounds)
    self.mesh = make_mesh(config)
    if self.mesh is not None and config.batch_size % self.mesh.size:
      raise ValueError(f"batch_size={config.batch_size} does not split over data_parallel="
                       f"{self.mesh.size} devices; use a multiple of {self.mesh.size}")
    self.run_steps = make_run_steps(setup, config, self.mesh)
    self.sampler = BatchSampler(self.keys.batch, suite.train, config.batch_size)
    self.boundaries = call_boundaries(config)
    self.eval_now = {"split": "", "t0": 0.0}
    evaluator = make_evaluator(setup, bool(config.eval_sample), self._on_eval_task)
    put = (lambda a: replicate(a, self.mesh)) if self.mesh is not None else jax.device_put
    self.pools = (put(suite.train.x), put(suite.train.y),
                  None if suite.train.index is None else put(suite.train.index))
    splits = {"test": suite.test, "validation": suite.validation}
    self.evaluations = {k: SplitEvaluation(setup, evaluator, v, config.eval_batch_size,
                                           self.names, put)
                        for k, v in splits.items() if v is not None}
    self.compiled = {}  # shapes of the training call -> its program, compiled apart (timed)
    self.penalties = jax.jit(lambda alloc: jax.vmap(
        lambda t: setup.method.penalty_terms(alloc, t))(jnp.arange(self.num_tasks)))
    self.pending: List = []  # (tasks, losses) host arrays since the last log
    if log_carry and log_carry.get("tasks"):
      self.pending.append((np.asarray(log_carry["tasks"], np.int32),
                           np.asarray(log_carry["losses"], np.float32)))
    # wall seconds since the last log line, by job: the device steps (with the host preparing
    # the next chunk's batches meanwhile), the allocation history, evaluation, on_chunk
    self.wall = dict.fromkeys(("steps", "history", "eval", "checkpoint"), 0.0)
    self.steady = {"seconds": 0.0, "steps": 0, "eval_s": 0.0}  # device steps, no compilation
    self.t_start = time.time()

  def initial_state(self, state: Optional[TrainState]) -> TrainState:
    """A fresh state (or ``init_from``'s backbone), or a copy of the caller's ``state``: the
    compiled steps donate their input state, and the caller's arrays must stay readable."""
    if state is None:
      state = init_state(self.setup, self.keys.init)
      if self.config.init_from:
        if self.backbone is None:
          raise InitFromError(f"init_from: {self.config.init_from} is set but no backbone was "
                              "given; pass train(..., backbone=gmr.checkpoint."
                              "source_model_params(config.init_from))")
        state = init_from(self.setup, state, self.backbone, self.config.init_from)
    else:
      state = jax.tree_util.tree_map(jnp.copy, state)
    return replicate(state, self.mesh)

  def next_boundary(self, r: int) -> Optional[int]:
    return next((b for b in self.boundaries if b > r), None)

  def batches(self, a: int, b: Optional[int]):
    """Task and example indices of rounds ``a..b`` (host side; prepared while the device
    runs); ``None`` past the end."""
    if b is None:
      return None
    if self.config.schedule == "joint":  # every task every round, in task order
      orders = np.tile(np.arange(self.num_tasks, dtype=np.int32), (b - a, 1))
    else:
      orders = round_orders(self.keys.order, a, b - a, self.num_tasks)
    return self.sampler.round_robin(orders, a)

  def run_chunk(self, state: TrainState, r: int, nxt: int, ahead):
    """Rounds ``r..nxt`` as one device call; returns ``(state, the next chunk's batches)``.
    Raises :class:`NonFiniteError` at the first non-finite loss, parameter or moment."""
    tasks, idx = ahead
    prev_step = int(state.step)
    x_pool, y_pool, x_index = self.pools
    args = (state, x_pool, y_pool, tasks, idx, self.keys.step, x_index)
    shapes = (tasks.shape, idx.shape)
    if shapes not in self.compiled:
      t_c = time.time()
      self.compiled[shapes] = self.run_steps.lower(*args).compile()
      self.on_progress("compiled", {"seconds": time.time() - t_c, "rounds": nxt - r})
    t_run = time.time()
    state, losses = self.compiled[shapes](*args)
    # dispatch is asynchronous: build the next chunk's batches before waiting for this one
    ahead = self.batches(nxt, self.next_boundary(nxt))
    ls = np.asarray(losses)
    if not np.all(np.isfinite(ls)):
      bad = int(np.argmax(~np.isfinite(ls)))
      raise NonFiniteError(prev_step + bad, self.names[int(tasks[bad])], "loss")
    if not bool(_all_finite((state.params, state.opt_state))):  # all a checkpoint keeps
      raise NonFiniteError(int(state.step) - 1, self.names[int(tasks[-1])],
                           "parameter or optimizer state")
    self.pending.append((tasks, ls))
    self.steady["seconds"] += time.time() - t_run
    self.steady["steps"] += len(tasks)
    return state, ahead

  def penalty_report(self, state: TrainState) -> dict:
    """Every task's auxiliary terms at the current parameters (``{}`` for a method without)."""
    terms = jax.device_get(self.penalties(state.params["alloc"]))
    return {k: dict({n: float(v[i]) for i, n in enumerate(self.names)}, mean=float(np.mean(v)))
            for k, v in terms.items()}

  def log(self, state: TrainState, r: int) -> None:
    """The log event of round ``r``: training losses since the last one, rate, ETA."""
    tk = np.concatenate([p[0] for p in self.pending])
    la = np.concatenate([p[1] for p in self.pending])
    now = time.time()
    rate = self.steady["steps"] / max(self.steady["seconds"], 1e-9)
    e = int(self.config.eval_every or 0)  # evaluations after r: the eval_every grid and the end
    evals_left = (r < self.total) + (((self.total - 1) // e - r // e) if e else 0)
    eta = ((self.total - r) * self.num_tasks / max(rate, 1e-9)
           + evals_left * self.steady["eval_s"])
    per_task = {n: float(la[tk == i].mean()) for i, n in enumerate(self.names) if np.any(tk == i)}
    self.on_event(Event("log", {
        "round": r, "step": int(state.step), "train_loss": per_task,
        "train_loss_mean": float(np.mean(list(per_task.values()))),
        **({"temperature": float(A.temperature(int(state.step), self.config.t_init,
                                               self.config.t_min))}
           if self.setup.method.has_temperature else {}),
        "penalty": self.penalty_report(state),
        "steps_per_s": rate, "eta_s": eta,
        "elapsed_s": now - self.t_start,
        "wall_s": {k: round(v, 3) for k, v in self.wall.items()}}))
    self.pending = []
    self.wall = dict.fromkeys(self.wall, 0.0)

  def record_history(self, state: TrainState, r: int) -> None:
    t0 = time.time()
    record = self.setup.method.history(state.params["alloc"])
    if any(record.values()):
      self.on_event(Event("alloc", {"round": r, "step": int(state.step), **record}))
    self.wall["history"] += time.time() - t0

  def _on_eval_task(self, task) -> None:
    t = int(task)
    self.on_progress("eval_task", {"split": self.eval_now["split"], "task": t,
                                   "of": self.num_tasks, "name": self.names[t],
                                   "elapsed_s": time.time() - self.eval_now["t0"]})

  def evaluate_splits(self, state: TrainState, r: int) -> dict:
    """The evaluation of round ``r``: ``{split: {metric: {task..., "mean"}}}``."""
    out = {}
    for k, ev in self.evaluations.items():
      if k in evaluated_splits(self.config, r):
        self.eval_now.update(split=k, t0=time.time())
        out[k] = ev(state.params, self.keys.eval)
        self.on_progress("eval_done", {"split": k, "round": r,
                                       "seconds": time.time() - self.eval_now["t0"],
                                       **{m: out[k][m]["mean"] for m in out[k]}})
    return out

  def evaluate(self, state: TrainState, r: int) -> dict:
    """:meth:`evaluate_splits`, timed and reported as an eval event."""
    t0 = time.time()
    evaluation = self.evaluate_splits(state, r)
    dt = time.time() - t0
    self.steady["eval_s"] = dt
    self.wall["eval"] += dt
    self.on_event(Event("eval", {"round": r, "step": int(state.step), **evaluation,
                                 "wall_s": round(dt, 3)}))
    return evaluation

  def checkpoint(self, on_chunk: Callable, r: int, state: TrainState, best, evaluated: bool):
    t0 = time.time()
    carry = {"tasks": [int(t) for p in self.pending for t in p[0]],
             "losses": [float(v) for p in self.pending for v in p[1]]}
    on_chunk(r, state, best, evaluated, carry)
    self.wall["checkpoint"] += time.time() - t0


def train(config, suite: TaskSuite, on_event: Optional[Callable[[Event], None]] = None,
          state: Optional[TrainState] = None, start_round: int = 0,
          on_chunk: Optional[Callable] = None, best: Optional[dict] = None,
          log_carry: Optional[dict] = None,
          on_progress: Optional[Callable[[str, dict], None]] = None,
          setup: Optional[Setup] = None, backbone: Optional[dict] = None):
  """Run the round-robin schedule for ``config.num_rounds`` rounds.

  Calls ``on_event`` with ``Event("log", ...)`` every ``log_every`` rounds (training loss per
  task since the last one, the temperature for a method that has one (``has_temperature``),
  the method's penalty terms per task at this round) and
  ``Event("eval", ...)`` every ``eval_every`` rounds and at the end: the test split, and the
  validation split (if the suite has one) at the end and, when ``select_by`` ranks by it, at
  every evaluation. Log events carry ``wall_s``: seconds since the previous log line spent in
  the steps, the allocation history, evaluation and ``on_chunk`` (checkpoints).
  After every device call, checks that the losses and parameters are finite (raising
  :class:`NonFiniteError` naming the step and task) and calls
  ``on_chunk(round, state, best, evaluated, log_carry)``; rounds where it is called are the same
  whatever ``start_round`` is (:func:`gmr.schedule.call_boundaries`), so a resumed run replays
  exactly the same device calls.

  With ``config.select_by`` (e.g. ``"validation.accuracy.mean"``), ``best`` tracks the
  evaluation with the best value: ``{"value", "round", "evaluation"}``
  (:func:`update_best`).
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
  already (the run builds it once); ``state``: the state to continue (default: a fresh one,
  or, with ``config.init_from``, a fresh one on ``backbone``: the source run's network
  parameters, :func:`gmr.checkpoint.source_model_params`; see :func:`init_from`); it is
  copied, not consumed, so the caller may use it after.
  Returns ``(setup, state, final, best)``; ``final`` is the last evaluation.
  """
  loop = _Loop(config, suite, setup or make_setup(config, suite),
               on_event or (lambda e: None), on_progress or (lambda kind, data: None), log_carry,
               backbone)
  state = loop.initial_state(state)
  r, total = start_round, loop.total
  final_best, last_eval = None, None  # final_best: the end of a run off the eval grid
  nxt = loop.next_boundary(r) or total
  ahead = loop.batches(r, nxt) if r < total else None
  while r < total:
    t0 = time.time()
    state, ahead = loop.run_chunk(state, r, nxt, ahead)
    r, nxt = nxt, loop.next_boundary(nxt)
    loop.wall["steps"] += time.time() - t0
    if (config.log_every and r % config.log_every == 0) or r == total:
      loop.log(state, r)
    if history_at(config, r) and state.params["alloc"]:
      loop.record_history(state, r)
    evaluated = bool(evaluated_splits(config, r))
    if evaluated:
      last_eval = loop.evaluate(state, r)
      if config.select_by:
        best, final_best = update_best(config, r, last_eval, best, final_best)
    if on_chunk is not None:
      loop.checkpoint(on_chunk, r, state, best, evaluated)
  if last_eval is None:
    last_eval = loop.evaluate_splits(state, r)
  return loop.setup, state, last_eval, final_best or best
