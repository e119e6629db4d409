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


def make_init(setup: Setup) -> Callable:
  """``init(key) -> TrainState``: :func:`init_state` with the network's initialisation
  compiled once, for every key it is called with (a population's members)."""
  x = jnp.zeros((1,) + setup.arch.input_shape, jnp.float32)
  rows = [jnp.ones((c,), jnp.float32) for c in setup.arch.layer_sizes]
  # jitted: eager init runs (and compiles) every op of the network one by one
  net_init = jax.jit(lambda k1, k2: setup.net.init({"params": k1, "dropout": k2}, x, rows, 0))

  def init(key) -> TrainState:
    k_model, k_alloc, k_drop = jax.random.split(key, 3)
    model = net_init(k_model, k_drop)["params"]
    params = {"model": model, "alloc": setup.method.init(k_alloc, model)}
    return TrainState(jnp.zeros((), jnp.int32), params, setup.tx.init(params))
  return init


def init_state(setup: Setup, key) -> TrainState:
  """A fresh train state: the network's parameters from ``key``, the method's own parameters
  (allocation logits, TAPS scores) and the optimizer's state."""
  return make_init(setup)(key)


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



class _Device:
  """What the members of one program share: the compiled training call (vmapped over members
  for a population), the suites' pools and evaluation splits on the device (one copy for all
  members when they read the same data, else one per member, stacked) and the small jitted
  helpers. ``eval_lane`` is the member being evaluated (its ``_on_eval_task`` gets the
  evaluator's progress)."""

  def __init__(self, config, suites, setup: Setup, population: bool):
    self.population = population
    self.member_data = len(suites) > 1
    self.init = make_init(setup)
    self.mesh = None if population else make_mesh(config)
    if self.mesh is not None and config.batch_size % self.mesh.size:
      raise ValueError(f"batch_size={config.batch_size} does not split over data_parallel="
                       f"{self.mesh.size} devices; use a multiple of {self.mesh.size}")
    self.run_steps = make_run_steps(setup, config, self.mesh, population, self.member_data)
    self.eval_lane = None
    evaluator = make_evaluator(setup, bool(config.eval_sample),
                               lambda t: self.eval_lane._on_eval_task(t))  # pylint: disable=protected-access
    put = (lambda a: replicate(a, self.mesh)) if self.mesh is not None else jax.device_put

    def pools(splits):
      if len(splits) == 1:
        return (put(splits[0].x), put(splits[0].y),
                None if splits[0].index is None else put(splits[0].index))
      return (put(np.stack([s.x for s in splits])), put(np.stack([s.y for s in splits])),
              None if splits[0].index is None else put(np.stack([s.index for s in splits])))
    self.pools = pools([s.train for s in suites])
    self.evaluations = [
        {k: SplitEvaluation(setup, evaluator, getattr(s, k), config.eval_batch_size,
                            s.task_names, put)
         for k in ("test", "validation") if getattr(s, k) is not None} for s in suites]
    self.compiled = {}  # shapes of the training call -> its program, compiled apart (timed)
    num_tasks = suites[0].num_tasks
    self.penalties = jax.jit(lambda alloc: jax.vmap(
        lambda t: setup.method.penalty_terms(alloc, t))(jnp.arange(num_tasks)))
    self.finite = jax.jit(jax.vmap(_all_finite)) if population else _all_finite
    self.member = jax.jit(lambda p, i: jax.tree_util.tree_map(lambda a: a[i], p))
    self.place = jax.jit(lambda p, i, m: jax.tree_util.tree_map(lambda a, b: a.at[i].set(b), p, m),
                         donate_argnums=(0,))

  def evaluations_of(self, i: int) -> dict:
    """Member ``i``'s split evaluations (``{split: SplitEvaluation}``)."""
    return self.evaluations[i if self.member_data else 0]


class _Loop:
  """What one member of :func:`train_population` holds fixed (keys, its batches) and its jobs,
  one method each; ``pending``, ``wall`` and ``steady`` are its running records between log
  lines."""

  def __init__(self, config, suite: TaskSuite, setup: Setup, device: _Device, index: int,
               on_event, on_progress, log_carry: Optional[dict], backbone: Optional[dict] = None):
    self.config, self.suite, self.setup, self.backbone = config, suite, setup, backbone
    self.device, self.index = device, index
    self.on_event, self.on_progress = on_event, on_progress
    self.keys = make_keys(config.seed)
    self.names, self.num_tasks, self.total = suite.task_names, suite.num_tasks, int(config.num_rounds)
    self.sampler = BatchSampler(self.keys.batch, suite.train, config.batch_size)
    self.boundaries = call_boundaries(config)
    self.eval_now = {"split": "", "t0": 0.0}
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
      state = self.device.init(self.keys.init)
      if self.config.init_from:
        if self.backbone is None:
          raise InitFromError(f"init_from: {self.config.init_from} is set but no backbone was "
                              "given; pass train(..., backbone=gmr.checkpoint."
                              "source_model_params(config.init_from))")
        state = init_from(self.setup, state, self.backbone, self.config.init_from)
    else:
      state = jax.tree_util.tree_map(jnp.copy, state)
    return replicate(state, self.device.mesh)

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

  def check_chunk(self, tasks, ls, finite: bool, prev_step: int, step: int) -> None:
    """Raise :class:`NonFiniteError` at the first non-finite loss of the chunk (``ls``), or
    when a parameter or moment is not finite (``finite`` False); else keep the losses."""
    if not np.all(np.isfinite(ls)):
      bad = int(np.argmax(~np.isfinite(ls)))
      raise NonFiniteError(prev_step + bad, self.names[int(tasks[bad])], "loss")
    if not finite:  # all a checkpoint keeps
      raise NonFiniteError(step - 1, self.names[int(tasks[-1])], "parameter or optimizer state")
    self.pending.append((tasks, ls))

  def penalty_report(self, state: TrainState) -> dict:
    """Every task's auxiliary terms at the current parameters (``{}`` for a method without)."""
    terms = jax.device_get(self.device.penalties(state.params["alloc"]))
    return {k: dict({n: float(v[i]) for i, n in enumerate(self.names)}, mean=float(np.mean(v)))
            for k, v in terms.items()}

  def log(self, state: TrainState, r: int) -> None:
    """The log event of round ``r``: training losses since the last one, rate, ETA."""
    tk = np.concatenate([p[0] for p in self.pending])
    la = np.concatenate([p[1] for p in self.pending])
    now = time.time()
    rate = self.steady["steps"] / max(self.steady["seconds"], 1e-9)
    e = int(self.config.eval_every or 0)  # evaluations after r: the eval_every grid and the end
    evals_left = (r < self.total) + (max(0, (self.total - 1) // e - r // e) if e else 0)
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
    self.device.eval_lane = self
    for k, ev in self.device.evaluations_of(self.index).items():
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
  lane = Lane(config, on_event, state, start_round, on_chunk, best, log_carry, on_progress,
              backbone)
  return train_population([lane], suite, setup=setup)[0]


class Lane(NamedTuple):
  """One member of :func:`train_population`: what :func:`train` takes for one run (its
  config, callbacks, the state and round it starts from, its best so far and log carry)."""
  config: object
  on_event: Optional[Callable[[Event], None]] = None
  state: Optional[TrainState] = None
  start_round: int = 0
  on_chunk: Optional[Callable] = None
  best: Optional[dict] = None
  log_carry: Optional[dict] = None
  on_progress: Optional[Callable[[str, dict], None]] = None
  backbone: Optional[dict] = None
  placeholder: bool = False  # a finished member keeping its slot: never trains, no output


def stack_states(states):
  """Member states stacked on a new leading axis (a population's state)."""
  return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *states)


def train_population(lanes, suite, setup: Optional[Setup] = None,
                     on_diverge: Optional[Callable[[int, NonFiniteError], None]] = None,
                     after_chunk: Optional[Callable[[int], None]] = None) -> list:
  """:func:`train` for several runs at once: ``lanes`` (:class:`Lane`), members of one config
  that differ only in ``seed`` (:mod:`gmr.population` checks), trained by one compiled
  program, ``jax.vmap`` over a leading member axis, with the suite's pools and evaluation
  splits on the device once. One lane is :func:`train` itself (no vmap). ``suite``: the
  :class:`TaskSuite` every member reads, or one per lane (data generated from each member's
  seed: stacked on the device, one copy per member).

  Every member draws exactly what its own run draws (keys from its seed, task orders,
  batches, Gumbel noise, dropout) and gets its own events, evaluations, ``select_by`` and
  ``on_chunk`` calls, at the same rounds as its run. Members may start at different rounds
  (resumed from their own checkpoints, :func:`gmr.schedule.call_boundaries` rounds): the
  program starts at the earliest, and a member joins when the program reaches its round; until
  then (and after a member has diverged) its slot computes values nobody reads, which change
  no other member's numbers (each member's arithmetic reads only its own slot).

  A member whose loss or parameters become non-finite: with ``on_diverge``, it gets
  ``on_diverge(i, error)`` and stops (no more events or ``on_chunk``) while the others go on;
  without, :class:`NonFiniteError` is raised. ``after_chunk(round)`` is called after every
  device call, once every member's ``on_chunk`` has run (a population stops on SIGTERM there,
  with every member checkpointed).

  Returns one ``(setup, state, final, best)`` per lane (as :func:`train`), ``None`` for a
  member that diverged.
  """
  config = lanes[0].config
  suites = list(suite) if isinstance(suite, (list, tuple)) else [suite]
  if len(suites) not in (1, len(lanes)):
    raise ValueError(f"{len(suites)} suites for {len(lanes)} members; give one, or one each")
  setup = setup or make_setup(config, suites[0])
  population = len(lanes) > 1
  device = _Device(config, suites, setup, population)
  loops = [_Loop(ln.config, suites[i % len(suites)], setup, device, i,
                 ln.on_event or (lambda e: None), ln.on_progress or (lambda kind, data: None),
                 ln.log_carry, ln.backbone) for i, ln in enumerate(lanes)]
  states = [lp.initial_state(ln.state) for lp, ln in zip(loops, lanes)]
  total = loops[0].total
  starts = [min(int(ln.start_round), total) for ln in lanes]
  waiting = {i for i, s in enumerate(starts) if s < total}
  live, diverged = set(), set()  # members training now (joined, not diverged); stopped
  bests = [ln.best for ln in lanes]
  final_bests, last_evals = [None] * len(lanes), [None] * len(lanes)
  r = min((starts[i] for i in waiting), default=total)
  pstate = stack_states(states) if population else states[0]
  nxt = loops[0].next_boundary(r) or total
  aheads = [lp.batches(r, nxt) if r < total else None for lp in loops]
  while r < total:
    for i in sorted(waiting):
      if starts[i] == r:  # joins now, from its own state
        waiting.discard(i)
        live.add(i)
        if population:
          pstate = device.place(pstate, i, states[i])
    t0 = time.time()
    chunk = _run_chunk(device, loops, pstate, r, nxt, aheads)
    pstate, aheads = chunk.state, chunk.ahead
    r, nxt = nxt, loops[0].next_boundary(nxt)
    for i in sorted(live):
      lp = loops[i]
      try:
        lp.check_chunk(chunk.tasks[i], chunk.losses[i], bool(chunk.finite[i]),
                       int(chunk.before[i]), int(chunk.after[i]))
      except NonFiniteError as e:
        if on_diverge is None:
          raise
        live.discard(i)
        diverged.add(i)
        on_diverge(i, e)
        continue
      state = device.member(pstate, i) if population else pstate
      lp.wall["steps"] += time.time() - t0
      lp.steady["seconds"] += chunk.seconds
      lp.steady["steps"] += len(chunk.tasks[i])
      cfg = lp.config
      if (cfg.log_every and r % cfg.log_every == 0) or r == total:
        lp.log(state, r)
      if history_at(cfg, r) and state.params["alloc"]:
        lp.record_history(state, r)
      evaluated = bool(evaluated_splits(cfg, r))
      if evaluated:
        last_evals[i] = lp.evaluate(state, r)
        if cfg.select_by:
          bests[i], final_bests[i] = update_best(cfg, r, last_evals[i], bests[i],
                                                 final_bests[i])
      if lanes[i].on_chunk is not None:
        lp.checkpoint(lanes[i].on_chunk, r, state, bests[i], evaluated)
    if after_chunk is not None:
      after_chunk(r)
  out = []
  for i, lp in enumerate(loops):
    if i in diverged or lanes[i].placeholder:
      out.append(None)
      continue
    state = (device.member(pstate, i) if population else pstate) if starts[i] < total else states[i]
    if last_evals[i] is None:
      last_evals[i] = lp.evaluate_splits(state, total)
    out.append((setup, state, last_evals[i], final_bests[i] or bests[i]))
  return out


class _Chunk(NamedTuple):
  """What one device call gave, per member (a leading member axis also for one run)."""
  state: TrainState   # the program's state (stacked for a population)
  losses: np.ndarray  # [P, steps] the task-batch losses
  finite: np.ndarray  # [P] every parameter and moment finite
  tasks: np.ndarray   # [P, steps] the task of each step
  before: np.ndarray  # [P] the step counter before the call
  after: np.ndarray   # [P] and after it
  seconds: float      # device time of the call (and the host's next batches meanwhile)
  ahead: list         # the next call's batches, per member


def _run_chunk(device: _Device, loops, pstate, r: int, nxt: int, aheads) -> _Chunk:
  """Rounds ``r..nxt`` of every member as one device call."""
  if device.population:
    tasks = np.stack([a[0] for a in aheads])
    idx = np.stack([a[1] for a in aheads])
    step_key = jnp.stack([lp.keys.step for lp in loops])
  else:
    (tasks, idx), step_key = aheads[0], loops[0].keys.step
  before = np.asarray(pstate.step)
  x_pool, y_pool, x_index = device.pools
  args = (pstate, x_pool, y_pool, tasks, idx, step_key, x_index)
  shapes = (tasks.shape, idx.shape)
  if shapes not in device.compiled:
    t_c = time.time()
    device.compiled[shapes] = device.run_steps.lower(*args).compile()
    loops[0].on_progress("compiled", {"seconds": time.time() - t_c, "rounds": nxt - r})
  t_run = time.time()
  pstate, losses = device.compiled[shapes](*args)
  # dispatch is asynchronous: build the next chunk's batches before waiting for this one
  nxt_b = loops[0].next_boundary(nxt)
  ahead = [lp.batches(nxt, nxt_b) for lp in loops]
  per_member = lambda a: a if device.population else a[None]
  return _Chunk(pstate, per_member(np.asarray(losses)),
                per_member(np.asarray(device.finite((pstate.params, pstate.opt_state)))),
                per_member(tasks), per_member(before), per_member(np.asarray(pstate.step)),
                time.time() - t_run, ahead)
