"""How allocations are produced, by name: a registry of methods.

A method turns its (possibly empty) trainable allocation parameters into one allocation row
per routed layer for a given task, at training time (maybe sampled) and at evaluation time.
Adding a method = one new class with ``@register("name")``.

A method's own trainable parameters live in ``params["alloc"]`` (the key kept so that every
existing checkpoint restores): Gumbel-Matrix's logits as ``{"layer_<l>": [T, C_l]}``, TAPS's
per-task deltas and scores as ``{"taps": ...}``; methods that learn nothing have ``{}``.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gmr import allocation as A
from gmr import config as config_schema
from gmr import data
from gmr import models
from gmr import taps as taps_lib
from gmr.config import ConfigError

METHODS: Dict[str, type] = {}


def register(name):
  def deco(cls):
    cls.name = name
    METHODS[name] = cls
    return cls
  return deco


def method_class(name: str) -> type:
  """The class registered as ``name``. Raises :class:`ConfigError` (``method``) for an
  unknown name."""
  if name not in METHODS:
    raise ConfigError("method", f"unknown method {name!r}", f"choose one of {sorted(METHODS)}")
  return METHODS[name]


def build(name: str, config, num_tasks: int, layer_sizes: Sequence[int]):
  """Instantiate the method ``name`` for a network with ``layer_sizes`` components per layer.
  Raises :class:`ConfigError` for an unknown name or a wrong field of the method."""
  return method_class(name)(config, num_tasks, tuple(layer_sizes))


def _layer_key(l: int) -> str:
  return f"layer_{l}"


class Method:
  """Base class: a fixed allocation given by :meth:`matrices` (no learned parameters).

  Besides the allocation, a method owns what the rest of gmr needs to know about it:

  * ``has_temperature``: whether its allocation is sampled at a Gumbel-Softmax temperature
    (only then do progress lines and TensorBoard show the temperature);
  * ``default_combine``: how a layer combines its active components under ``combine="auto"``
    (the authors' code: "mean", or "sum" for the shared bottom);
  * ``task_row_keys``: subtrees of ``params["alloc"]`` whose leaves have a leading task axis
    (one row per task: only the trained task's row changes in its step, like the heads);
  * :meth:`check_config`: its config fields, checked before anything is built;
  * :meth:`learning_rate` and :meth:`param_labels`: its parameters' optimizer groups;
  * :meth:`penalty_terms` (named, logged), :meth:`summary` and :meth:`history`.

  How its finished runs are read (task embeddings, a table row's own numbers) is not here but
  in :mod:`gmr.analysis.readers`, by the method's name: the analysis needs no JAX.
  """
  name = "?"
  learned = False
  has_temperature = False
  default_combine = "mean"
  task_row_keys: Sequence[str] = ()

  @classmethod
  def check_config(cls, config) -> None:
    """Raise :class:`ConfigError` for a wrong value of a field this method reads (called by
    :func:`gmr.validate.validate`, before data or compute)."""
    del config

  @classmethod
  def learning_rate(cls, config, num_tasks: int) -> float:
    """The learning rate of ``params["alloc"]`` (the ``"alloc"`` optimizer group): absolute
    ``alloc_learning_rate`` if set, else ``alloc_lr_multiplier`` (default: the number of tasks,
    section V-B) x ``learning_rate``."""
    if config.alloc_learning_rate is not None:
      return float(config.alloc_learning_rate)
    mult = config.alloc_lr_multiplier
    return float(config.learning_rate) * (num_tasks if mult is None else float(mult))

  @classmethod
  def param_labels(cls, alloc_labels):
    """The optimizer group of every leaf of ``params["alloc"]``, given the tree with every leaf
    labelled ``"alloc"``; the groups are :func:`gmr.optim.make_optimizer`'s ("alloc" or
    "scores")."""
    return alloc_labels

  def __init__(self, config, num_tasks: int, layer_sizes: Sequence[int]):
    self.config, self.num_tasks, self.layer_sizes = config, num_tasks, tuple(layer_sizes)
    self._fixed = [jnp.asarray(m, jnp.float32) for m in self.matrices_fixed()]

  # -- to override
  def matrices_fixed(self) -> List[np.ndarray]:
    raise NotImplementedError

  def init(self, key, model_params=None) -> Dict[str, jax.Array]:
    """Trainable allocation parameters (``model_params``: the freshly initialised network,
    for methods whose parameters mirror it, e.g. TAPS)."""
    del key, model_params
    return {}

  def adapt(self, model_params, alloc_params, task):
    """The network parameters task ``task`` computes with (identity but for TAPS)."""
    del alloc_params, task
    return model_params

  def summary(self, alloc_params, task_names) -> Dict:
    """Method-specific numbers for results.json (``{}`` for most methods)."""
    del alloc_params, task_names
    return {}

  def train_rows(self, alloc_params, key, task, temperature) -> List[jax.Array]:
    """Allocation rows ``[C_l]`` for one training batch of ``task``."""
    del alloc_params, key, temperature
    return [m[task] for m in self._fixed]

  def eval_rows(self, alloc_params, task, key=None, sample=False, temperature=0.5):
    """Allocation rows for evaluation (greedy unless ``sample``)."""
    del alloc_params, key, sample, temperature
    return [m[task] for m in self._fixed]

  def penalty_terms(self, alloc_params, task) -> Dict[str, jax.Array]:
    """The auxiliary losses of one task batch by name (``{}``: none), float32 scalars; the
    trainer logs them next to the loss (metrics.jsonl, TensorBoard)."""
    del alloc_params, task
    return {}

  def penalty(self, alloc_params, task):
    """Auxiliary loss for one task batch: the sum of :meth:`penalty_terms` (in their order)."""
    terms = list(self.penalty_terms(alloc_params, task).values())
    if not terms:
      return jnp.zeros((), jnp.float32)
    out = terms[0]
    for t in terms[1:]:
      out = out + t
    return out

  def probabilities(self, alloc_params) -> List[jax.Array]:
    """P(on) per layer, ``[tasks, C_l]`` (0/1 for fixed methods)."""
    del alloc_params
    return list(self._fixed)

  def history(self, alloc_params) -> Dict:
    """What the allocation history records (``alloc_history_every``): P(on) per layer,
    ``{"probabilities": {"layer_<l>": [tasks][C_l]}}``."""
    return {"probabilities": {f"layer_{l}": np.round(np.asarray(p), 5).tolist()
                              for l, p in enumerate(self.probabilities(alloc_params))}}

  def matrices(self, alloc_params) -> List[np.ndarray]:
    """Greedy binary allocation per layer, ``[tasks, C_l]``."""
    return [np.asarray(p >= 0.5, np.int32) for p in self.probabilities(alloc_params)]


@register("shared_bottom")
class SharedBottom(Method):
  """Every task uses every component; under ``combine="auto"`` their outputs are summed, as in
  the authors' code."""
  default_combine = "sum"

  def matrices_fixed(self):
    return [np.ones((self.num_tasks, c), np.float32) for c in self.layer_sizes]


@register("no_sharing")
class NoSharing(Method):
  """Task i uses component i (needs #components == #tasks). With
  ``no_sharing_components_per_task = k`` task i uses components i, i + T, ..., i + (k-1) T,
  which needs #components == k * #tasks (the transfer experiment: 2 tasks, 4 components)."""

  @classmethod
  def check_config(cls, config) -> None:
    """Every routed layer has ``no_sharing_components_per_task`` x #tasks components (the
    layer sizes of the network ``config`` builds, from the suite's shape alone; a network
    that cannot be built at all is reported by :func:`gmr.train.check_structure`)."""
    try:
      t, head_dims, input_dim = data.describe(config)
      sizes = models.from_config(config, t, head_dims, input_dim).layer_sizes
    except Exception:  # pylint: disable=broad-except  (reported with the structure's checks)
      return
    k = config.no_sharing_components_per_task
    for n in sizes:
      if n != k * t:
        raise ConfigError("no_sharing_components_per_task", f"{t} tasks x {k} components != "
                          f"{n} components per layer of {config.arch!r}",
                          f"set it to {n // t}" if n % t == 0 and n // t else
                          "use another method or architecture")

  def matrices_fixed(self):
    k = int(self.config.no_sharing_components_per_task)
    out = []
    for l, c in enumerate(self.layer_sizes):
      if c != k * self.num_tasks:
        raise ConfigError(
            "method", f"no_sharing needs #components == {k} x #tasks, but layer {l} has {c} "
            f"components for {self.num_tasks} tasks",
            "pick an architecture with one component per task, or set "
            "no_sharing_components_per_task")
      m = np.zeros((self.num_tasks, c), np.float32)
      for t in range(self.num_tasks):
        m[t, t::self.num_tasks] = 1.0
      out.append(m)
    return out


@register("fixed")
class Fixed(Method):
  """Any given binary matrix: ``config.fixed_allocation`` is one ``[tasks, C]`` nested list
  used for every layer, or a list of them, one per layer."""

  @classmethod
  def check_config(cls, config) -> None:
    if not isinstance(config.fixed_allocation_from, str):
      raise ConfigError("fixed_allocation_from", f"must be a workdir path, got "
                        f"{config.fixed_allocation_from!r}", "give a finished run's workdir or ''")
    if config.fixed_allocation is None and not config.fixed_allocation_from:
      raise ConfigError("fixed_allocation", "is required by method 'fixed'",
                        "give a [tasks x components] 0/1 matrix (or one per routed layer), or "
                        "--config.fixed_allocation_from=<workdir of a finished run>")
    if config.fixed_allocation is not None and config.fixed_allocation_from:
      raise ConfigError("fixed_allocation_from", "is set together with fixed_allocation",
                        "give one of the two")

  def matrices_fixed(self):
    raw = self.config.fixed_allocation
    if raw is None:
      raise ConfigError("fixed_allocation", "is not set for method 'fixed'",
                        "give a [tasks x components] 0/1 nested list (or one per layer)")
    one_for_all = np.ndim(raw[0][0]) == 0  # [[0, 1], ...] rather than [[[0, 1], ...], ...]
    arr = [np.asarray(m, np.float32) for m in ([raw] * len(self.layer_sizes) if one_for_all else raw)]
    if len(arr) != len(self.layer_sizes):
      raise ConfigError("fixed_allocation", f"has {len(arr)} matrices for "
                        f"{len(self.layer_sizes)} routed layers", "give one per layer or one for all")
    for l, (m, c) in enumerate(zip(arr, self.layer_sizes)):
      if m.shape != (self.num_tasks, c) or not np.all((m == 0) | (m == 1)):
        raise ConfigError("fixed_allocation", f"layer {l} must be a 0/1 matrix of shape "
                          f"({self.num_tasks}, {c}), got shape {m.shape}",
                          "fix the nested list")
    return arr


@register("gumbel_matrix")
class GumbelMatrix(Method):
  """Learned allocations: straight-through Gumbel-Softmax samples of factorised Bernoullis."""
  learned = True
  has_temperature = True

  def matrices_fixed(self):
    return []

  def init(self, key, model_params=None):
    del key, model_params
    p = self.config.p_init
    return {_layer_key(l): A.init_logits(p, self.num_tasks, c)
            for l, c in enumerate(self.layer_sizes)}

  def _logits(self, alloc_params):
    return [alloc_params[_layer_key(l)] for l in range(len(self.layer_sizes))]

  def train_rows(self, alloc_params, key, task, temperature):
    keys = jax.random.split(key, len(self.layer_sizes))
    return [A.sample(k, lg[task], temperature) for k, lg in zip(keys, self._logits(alloc_params))]

  def eval_rows(self, alloc_params, task, key=None, sample=False, temperature=0.5):
    if sample:
      return self.train_rows(jax.lax.stop_gradient(alloc_params), key, task, temperature)
    return [A.greedy(lg[task]) for lg in self._logits(alloc_params)]

  def penalty_terms(self, alloc_params, task):
    """``budget``: ``lambda * max(0, e_c - b)`` (section III-D); ``entropy`` when
    ``entropy_penalty`` > 0: its weight times the mean entropy of the task's allocation."""
    logits = self._logits(alloc_params)
    c = self.config
    out = {"budget": A.budget_penalty(A.expected_active_fraction(logits, task), c.budget,
                                      c.budget_lambda)}
    if c.entropy_penalty:
      total = sum(self.layer_sizes)
      out["entropy"] = c.entropy_penalty * sum(A.entropy(lg[task]).sum() for lg in logits) / total
    return out

  def probabilities(self, alloc_params):
    return [A.probabilities(lg) for lg in self._logits(alloc_params)]


@register("taps")
class TAPS(SharedBottom):
  """Task Adaptive Parameter Sharing (:mod:`gmr.taps`) on the shared-bottom network: every task
  uses every component; each backbone kernel gets a per-task delta switched on by a
  thresholded score, with an L1 penalty on the scores. Parameters: ``alloc["taps"]``.

  Config: ``taps_tau``, ``taps_score_init``, ``taps_lambda``, ``taps_layers`` (fnmatch patterns
  of adaptable kernels; empty = all), ``taps_task_norm`` (per-task GroupNorm parameters).
  With ``freeze_backbone`` (fine-tuning mode) only the deltas, scores and heads learn."""
  learned = True
  task_row_keys = ("taps",)

  @classmethod
  def check_config(cls, config) -> None:
    """TAPS's fields: ``taps_tau``, ``taps_score_init``, ``taps_lambda``, the learning rates,
    ``taps_task_norm`` and ``taps_layers``."""
    check = config_schema.check_number
    check(config, "taps_tau", 0, fix="give the score threshold, >= 0, e.g. 0.1 (a negative one "
          "makes every layer task-specific)")
    check(config, "taps_score_init", fix="give the initial score, e.g. 0.15 (above taps_tau: "
          "every layer starts task-specific)")
    check(config, "taps_lambda", 0, fix="give the sparsity weight, >= 0")
    for f in ("taps_learning_rate", "taps_score_learning_rate"):
      if config[f] is not None:
        check(config, f, 0, lo_open=True)
    config_schema.check_bool(config, "taps_task_norm")
    layers = config.taps_layers
    if not isinstance(layers, (list, tuple)) or not all(isinstance(p, str) for p in layers):
      raise ConfigError("taps_layers", f"must be a list of fnmatch patterns, got {layers!r}",
                        "e.g. ['layer_1/*', 'layer_2/*'], or [] for every kernel")

  @classmethod
  def learning_rate(cls, config, num_tasks: int) -> float:
    """Deltas (and scores, unless ``taps_score_learning_rate``): ``taps_learning_rate``, or the
    weights' ``learning_rate`` when unset, as in the authors' code (one optimizer)."""
    del num_tasks
    lr = config.taps_learning_rate
    return float(config.learning_rate if lr is None else lr)

  @classmethod
  def param_labels(cls, alloc_labels):
    """The scores get their own optimizer group, ``"scores"`` (``taps_score_optimizer``)."""
    taps = dict(alloc_labels["taps"])
    taps["scores"] = jax.tree.map(lambda _: "scores", taps["scores"])
    return dict(alloc_labels, taps=taps)

  def init(self, key, model_params=None):
    del key
    if model_params is None:
      raise ValueError("taps needs the network's parameters to build its deltas")
    c = self.config
    params = taps_lib.init(model_params, self.num_tasks, tuple(c.taps_layers or ()),
                           float(c.taps_score_init),
                           bool(c.taps_task_norm))
    if not taps_lib.adaptable_paths(model_params, tuple(c.taps_layers or ())):
      raise ConfigError("taps_layers", f"matches no kernel of the network (patterns "
                        f"{list(c.taps_layers)})",
                        "use fnmatch patterns like 'layer_1/*' or leave it empty for all")
    return {"taps": params}

  def adapt(self, model_params, alloc_params, task):
    return taps_lib.adapt(model_params, alloc_params["taps"], task, self._tau)

  @property
  def _tau(self):
    return float(self.config.taps_tau)

  def penalty_terms(self, alloc_params, task):
    """``taps_l1``: the sparsity term ``lambda / L * sum |s|`` of the task's scores."""
    return {"taps_l1": taps_lib.penalty(alloc_params["taps"], task,
                                        float(self.config.taps_lambda))}

  def summary(self, alloc_params, task_names):
    return {"taps": taps_lib.summary(alloc_params["taps"], task_names, self._tau)}

  def history(self, alloc_params):
    """TAPS's history is its scores (a task's layer is task-specific while its score >= tau):
    ``{"taps_scores": {"<layer path>": [tasks]}, "taps_tau": tau}``."""
    scores = taps_lib.task_scores_all(alloc_params["taps"])
    return {"taps_scores": {name: np.round(np.asarray(s), 5).tolist() for name, s in scores.items()},
            "taps_tau": self._tau}
