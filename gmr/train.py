"""Training: train state, the pure task-batch step, the round-robin schedule run many steps per
device call (``lax.scan``), and greedy evaluation.

Round-robin (the paper's schedule): each round shuffles the task order, then each task takes
one batch and one optimizer step. All randomness derives from ``config.seed`` by explicit
keys, and every random choice is a pure function of (key, round or step), so a run is
reproducible bit for bit and can be resumed from any round:

* round ``r``'s task order: ``permutation(fold_in(k_order, r), T)``;
* task ``t``'s ``r``-th batch: slice ``r % E`` of ``permutation(fold_in(fold_in(k_batch, t), r // E))``
  where ``E = n_t // batch_size`` batches per epoch (the remainder of an epoch is dropped);
* the Gumbel noise and dropout of step ``s``: ``fold_in(k_step, s)``.

``schedule="joint"`` (not the paper's): each round is one update on all T task batches at
once (vmapped over tasks, each task with its own sampled allocation, dropout and penalty);
the gradient is the sum of the T task-batch gradients. Task t's batch of round r is the same
batch as in round-robin, and ``state.step`` still counts task batches (+T per round), so the
temperature schedule is the same function of the round. What differs: round-robin makes T
sequential updates per round, each seeing the parameters the previous task left (T times
the shared-parameter updates); joint makes one update from the same starting point.

``data_parallel=N`` splits every batch over N local devices (``jax.sharding``: parameters
replicated, the batch axis sharded, XLA inserts the gradient all-reduce); per-example math is
unchanged, so results equal one device's up to float summation order.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, Dict, List, NamedTuple, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from gmr import allocation as A
from gmr import checkpoint as checkpoint_lib
from gmr import methods as methods_lib
from gmr import models
from gmr.data.suite import Split, TaskSuite
from gmr.optim import make_optimizer


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
  net = models.MultiTaskNet(arch, resolve_combine(config), config.fused, config.conv_impl,
                            config.layout, config.conv_dtype)
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


# ----------------------------------------------------------------------------- step
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


def make_run_steps(setup: Setup, config, mesh=None) -> Callable:
  """Jitted ``run(state, x_pool, y_pool, tasks [S], idx [S, B], step_key) -> (state, losses [S])``.

  Runs S task-batch steps in one device call. The batch of step ``i`` is gathered on device
  from the example pools with ``idx[i]`` (slots; images through ``x_index`` when given); its
  randomness is ``fold_in(step_key, state.step)``. With ``schedule="joint"`` the S steps are
  S / T rounds in task order (``tasks`` = 0..T-1 repeated); each round is one update.
  With ``mesh`` (see :func:`make_mesh`) the batch axis is split over its devices.
  """
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

  @functools.partial(jax.jit, **jit_kw)
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

  return run


def pad_crop(x, key, pad: int):
  """Zero-pad ``[B, H, W, C]`` by ``pad`` on each side and crop a random ``H x W`` window per
  example (the 40-task benchmark's augmentation; no flips)."""
  b, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offs = jax.random.randint(key, (b, 2), 0, 2 * pad + 1)
  crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1]))
  return jax.vmap(crop)(xp, offs)


# ----------------------------------------------------------------------------- schedule
@functools.partial(jax.jit, static_argnums=(2,))
def _orders(key, rounds, num_tasks):
  return jax.vmap(lambda r: jax.random.permutation(jax.random.fold_in(key, r), num_tasks))(rounds)


def round_orders(key, first_round: int, num_rounds: int, num_tasks: int) -> np.ndarray:
  """Task order of each round, ``[num_rounds, T]`` (a fresh permutation per round)."""
  return np.asarray(_orders(key, jnp.arange(first_round, first_round + num_rounds), num_tasks))


class BatchSampler:
  """Epoch-wise shuffled batches per task, as a pure function of (key, task, round)."""

  def __init__(self, key, split: Split, batch_size: int):
    self.key, self.split, self.batch_size = key, split, batch_size
    for t, n in enumerate(split.sizes):
      if n < batch_size:
        raise ValueError(f"task {t} has {n} training examples, fewer than batch_size={batch_size}")
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


# ----------------------------------------------------------------------------- evaluation
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
    if self.setup.loss == "xent":
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
          on_progress: Optional[Callable[[str, dict], None]] = None):
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
  Returns ``(setup, state, final, best)``; ``final`` is the last evaluation.
  """
  on_event = on_event or (lambda e: None)
  on_progress = on_progress or (lambda kind, data: None)
  keys = make_keys(config.seed)
  setup = make_setup(config, suite)
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
  t_start, t_log, r_log = time.time(), time.time(), r
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
      pending, t_log, r_log = [], now, r
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
