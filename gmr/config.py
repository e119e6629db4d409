"""The one schema of a run's config: every field, its default, its type and a one-line doc.

``defaults()`` is where each constant of the papers and of gmr has its one default; the
experiment configs (``experiments/configs/*.py``) start from it and only override, and library
code reads fields directly (``config.<field>``), never with a fallback of its own. The options
of the built-in suites (``config.data.*``) have theirs in :data:`SUITE_OPTIONS`
(:func:`suite_options`). A wrong value is one :class:`ConfigError`; the field checks every
layer of gmr shares are :func:`check_number`, :func:`check_bool` and :func:`check_choice`
(the whole validation: :func:`gmr.validate.validate`). A workdir written before a field
existed is read with that field's value of the time: :data:`UPGRADES`.

This module imports no JAX: the command line, the analysis and the tables read it.
"""

from __future__ import annotations

import math

from ml_collections import config_dict


class ConfigError(ValueError):
  """A config value is wrong; ``field`` names it (``data.tasks`` for a nested one), the message
  says how to fix it: ``<field>: <what>; <fix>``."""

  def __init__(self, field: str, problem: str, fix: str):
    super().__init__(f"{field}: {problem}; {fix}")
    self.field, self.problem, self.fix = field, problem, fix


def check_number(c, field, lo=None, hi=None, lo_open=False, hi_open=False, integer=False,
                 fix="", name=None) -> None:
  """Raise :class:`ConfigError` unless ``c[field]`` is a finite number (an ``int`` when
  ``integer``; never a bool) in ``[lo, hi]`` (``lo_open`` / ``hi_open``: the open bound).
  ``name``: the field's name in the message (``data.max_examples`` for a nested one);
  ``fix``: the message's fix (default: how to set it)."""
  v = c[field]
  field = name or field
  ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
  if isinstance(v, bool) or not ok_type:
    raise ConfigError(field, f"must be {'an integer' if integer else 'a number'}, got {v!r}",
                      fix or f"set --config.{field}=<number>")
  if not math.isfinite(v):
    raise ConfigError(field, f"must be a finite number, got {v!r}",
                      fix or f"set --config.{field}=<number>")
  if lo is not None and (v <= lo if lo_open else v < lo):
    raise ConfigError(field, f"must be {'>' if lo_open else '>='} {lo}, got {v}",
                      fix or f"set --config.{field} to a larger value")
  if hi is not None and (v >= hi if hi_open else v > hi):
    raise ConfigError(field, f"must be {'<' if hi_open else '<='} {hi}, got {v}",
                      fix or f"set --config.{field} to a smaller value")


def check_bool(c, field, name=None) -> None:
  """Raise :class:`ConfigError` unless ``c[field]`` is ``True`` or ``False``."""
  if not isinstance(c[field], bool):
    raise ConfigError(name or field, f"must be true or false, got {c[field]!r}",
                      f"set --config.{name or field}=true or false")


def check_choice(c, field, options, name=None) -> None:
  """Raise :class:`ConfigError` unless ``c[field]`` is one of ``options``."""
  if c[field] not in options:
    raise ConfigError(name or field, f"unknown value {c[field]!r}",
                      f"choose one of {list(options)}")

# Fields that only one suite reads, defined by the configs of that suite (not by defaults()):
# ``data`` (real-data suites' options), ``synthetic`` (appendix A1's generator, see
# synthetic_defaults()) and ``rho`` (the transfer experiment's task similarity).
SUITE_FIELDS = ("data", "synthetic", "rho")

# Fields that define the network's parameters: a run that starts from another run's backbone
# (``init_from``) must have the same values (compared before any compute).
NETWORK_FIELDS = ("arch", "arch_kwargs")
# fields in which the members of a population (one program, gmr.population) may differ
POPULATION_FIELDS = ("seed",)

# Fields added after runs were made: the value that reproduces a run made before (its stored
# config.json lacks the field). Compared by gmr.experiment when a workdir is resumed.
UPGRADES = {"schedule": "round_robin", "data_parallel": 1, "layout": "auto",
            "conv_dtype": "float32", "accept_noncanonical_data": False,
            "fixed_allocation_from": ""}


def _fields():
  """``(name, default, one-line doc)`` of every field of :func:`defaults`, in order (built per
  call: placeholders, lists and nested dicts are fresh objects)."""
  placeholder = config_dict.placeholder
  return (
      # --- run
      ("seed", 0, "seed of the initialization, the task order and the batches"),
      ("data_seed", placeholder(int), "seed of generated (synthetic) data; None: `seed`"),
      ("method", "gumbel_matrix",
       "gumbel_matrix | shared_bottom | no_sharing | fixed | taps (gmr/methods.py)"),
      ("suite", "", "task suite: the tasks and their data (gmr/data/)"),
      ("arch", "", "architecture of the network (gmr/models.py)"),
      ("arch_kwargs", config_dict.ConfigDict(), "the architecture's own options"),
      ("data_dir", "", "raw files laid out like ../shared/datasets; \"\" = $GMR_DATA_DIR"),
      ("tfds_dir", "", "prepared TFDS datasets; \"\" = $GMR_TFDS_DIR or ~/tensorflow_datasets"),
      ("download", False, "fetch missing raw files from their canonical locations (checked)"),
      ("accept_noncanonical_data", False,
       "use raw files whose digest is not the published one"),
      ("num_rounds", 1000, "rounds of training; one round = one batch (and one update) per task"),
      ("batch_size", 16, "examples per task batch"),
      ("eval_every", 0, "rounds between evaluations; 0 = only at the end"),
      ("log_every", 100, "rounds between progress lines"),
      ("rounds_per_call", 100, "rounds run in one device call (lax.scan)"),
      ("compilation_cache_dir", "auto",
       "JAX's persistent compilation cache: auto = $XDG_CACHE_HOME/gmr/jax (~/.cache/gmr/jax) "
       "or the folder JAX was already given; a path; \"\" = off (changes no number, not part "
       "of a run's identity)"),
      ("schedule", "round_robin",
       "round_robin (the paper: T sequential task-batch updates per round) | joint (one "
       "update on all T task batches per round, vmapped over tasks; gmr/train.py)"),
      ("data_parallel", 1,
       "local devices each batch is split over; 0 = all (results equal 1's)"),
      ("eval_batch_size", 1000, "examples per evaluation batch"),
      ("augment", "", "\"\" | pad_crop (pad by augment_pad, random crop back; the 40-task "
       "benchmark)"),
      ("augment_pad", 4, "pixels of padding of pad_crop"),
      ("alloc_history_every", 100,
       "rounds between records of P(on) per (layer, task, component) in metrics.jsonl; 0 = off"),
      ("checkpoint_every", 0, "rounds between checkpoints; 0 = only at the end (and on SIGTERM)"),
      ("keep_checkpoints", 2, "last N checkpoints kept (plus the best one when select_by is set)"),
      ("select_by", "", "e.g. validation.accuracy.mean: report the best evaluation's test "
       "numbers"),
      ("eval_sample", False, "sample allocations at evaluation instead of greedy (section III-C)"),
      # --- model
      ("combine", "mean",
       "mean | sum of active outputs | auto (sum for shared_bottom, else mean)"),
      ("dropout", 0.0, "dropout rate"),
      ("fused", True, "components of one kind as one batched op"),
      ("conv_impl", "auto", "auto (patches on CPU, xla elsewhere) | xla | patches"),
      ("layout", "auto",
       "image tensors inside the network: auto (cnhw on CPU, nhwc elsewhere) | nhwc | cnhw"),
      ("conv_dtype", "float32",
       "convolutions' multiplies: float32 | bfloat16 (f32 accumulation and params)"),
      # --- optimizer
      ("learning_rate", 1e-3, "Adam's learning rate of the weights"),
      ("alloc_learning_rate", placeholder(float),
       "absolute learning rate of the allocation logits; overrides alloc_lr_multiplier"),
      ("alloc_lr_multiplier", placeholder(float),
       "logits' rate = multiplier x learning_rate; None: the number of tasks (section V-B)"),
      ("adam_b1", 0.9, "Adam's beta1"),
      ("adam_b2", 0.999, "Adam's beta2"),
      ("adam_eps", 1e-8, "Adam's epsilon (TF1 Adam uses 1e-8)"),
      ("l2", 0.0, "L2 weight decay of the weights"),
      ("clip_norm", 0.0, "global gradient norm clipping; 0 = off"),
      ("sparse_head_updates", False,
       "true: the heads of tasks not in the batch keep their weights and Adam moments; false "
       "(the authors' code): they get a zero gradient and Adam's momentum still moves them"),
      # --- Gumbel-Matrix
      ("p_init", 0.5, "initial P(on) of every connection"),
      ("t_init", 50.0, "initial Gumbel-softmax temperature (annealed to t_min)"),
      ("t_min", 0.5, "final Gumbel-softmax temperature"),
      ("budget", 1.0, "budget: the fraction of active connections the penalty allows"),
      ("budget_lambda", 0.0, "weight of the budget penalty; 0 = off"),
      ("entropy_penalty", 0.0, "weight of the allocation-entropy penalty; 0 = off"),
      # --- TAPS (Wallingford et al.; defaults of the authors' code)
      ("taps_tau", 0.1, "TAPS: a layer is task-specific iff its score >= tau (the authors' code)"),
      ("taps_score_init", 0.15, "TAPS: initial score of every layer (the authors' code)"),
      ("taps_lambda", 1.0, "TAPS sparsity weight: lambda / L * sum |s| per task batch"),
      ("taps_layers", [],
       "TAPS: fnmatch patterns of adaptable kernels (layer_1/*); [] = all of the backbone"),
      ("taps_task_norm", False, "TAPS: per-task GroupNorm scale/offset deltas"),
      ("taps_learning_rate", placeholder(float), "TAPS deltas' learning rate; None = learning_rate"),
      ("taps_score_optimizer", "sgd",
       "sgd (momentum adam_b1) | adam for the TAPS scores (with Adam the L1 term alone moves "
       "every score by ~lr per step; docs/running.md, \"TAPS in detail\")"),
      ("taps_score_learning_rate", placeholder(float),
       "TAPS scores' learning rate; None = the deltas' rate"),
      # --- fine-tuning
      ("init_from", "", "workdir of a finished run: start from its backbone (heads stay fresh)"),
      ("freeze_backbone", False, "only heads (and TAPS deltas/scores) learn"),
      # --- baselines
      ("no_sharing_components_per_task", 1, "no_sharing: components per task in each layer"),
      ("fixed_allocation", placeholder(list),
       "fixed: the allocation, one 0/1 row per task (per layer)"),
      ("fixed_allocation_from", "",
       "fixed: the final greedy allocation of this finished run's workdir (relative to this "
       "run's workdir; {seed} is this run's seed), instead of fixed_allocation"),
  )


def _synthetic_fields():
  """``(name, default, one-line doc)`` of every field of :func:`synthetic_defaults`."""
  return (
      ("d", 128, "input dimension (appendix A1)"),
      ("c", 1.0, "scale of the task functions (appendix A1)"),
      ("m", 6, "terms of each task function (appendix A1)"),
      ("noise_std", 0.01,
       "label noise N(0, 0.01) read as a standard deviation, as in the authors' generator"),
      ("num_train", 100000,
       "training examples per task (not given in the paper; 3000 x 64 examples seen are < 2 "
       "passes, close to the fresh-data regime; 10k overfits badly)"),
      ("num_test", 2000, "test examples per task"),
      ("num_pairs", 2, "pairs of related tasks"),
  )


_MAX_EXAMPLES = ("max_examples", 0, "0 = all; >0 keeps the first N examples of each split "
                 "(smoke runs)")
_ROTATE_K = ("rotate_k", -1, "np.rot90 k of the rotated tasks: -1 = 90 degrees clockwise (the "
             "paper); the authors' tf.image.rot90(k=1) is counter-clockwise")
_ALPHABETS = ("alphabets", config_dict.placeholder(list),
              "Omniglot alphabets, one task each; None = the 20 of the paper")


def _suite_option_fields():
  """``{suite: ((name, default, one-line doc), ...)}``: the options (``config.data.*``) of each
  built-in suite that has any (built per call: placeholders are fresh objects)."""
  clusters = (("validation_fraction", 0.2,
               "per class, the share of each train split held out for validation"),
              ("split_seed", 0, "seed of that hold-out"), _MAX_EXAMPLES, _ALPHABETS)
  return {
      "four_mnists": (_ROTATE_K, _MAX_EXAMPLES),
      "mnist_family": (("tasks", "mnist", "comma-separated: mnist | mnist_rot | fashion"),
                       _ROTATE_K, _MAX_EXAMPLES),
      "omniglot20": (_ALPHABETS,),
      "clusters40": clusters,
      "clusters40_offline": clusters,
  }


SUITE_OPTIONS = tuple(_suite_option_fields())  # the built-in suites with options of their own


def suite_options(suite: str) -> config_dict.ConfigDict:
  """The options of built-in ``suite`` with their defaults (an empty ConfigDict for a suite
  without options, or one :mod:`gmr.data` does not define: a user's suite brings its own).
  What ``config.data`` starts from; the suite reads ``config.data`` completed by these."""
  return _build(_suite_option_fields().get(suite, ()))


def _build(fields) -> config_dict.ConfigDict:
  c = config_dict.ConfigDict()
  for name, default, _ in fields:
    c[name] = default
  return c


def defaults() -> config_dict.ConfigDict:
  """Every field of a run with its one default (experiment configs start here and only
  override); each field's doc is :func:`docs`. Types are the defaults' (ml_collections checks
  them on assignment; ``placeholder`` fields are optional values of that type)."""
  return _build(_fields())


def synthetic_defaults() -> config_dict.ConfigDict:
  """Appendix A1 constants: d=128, c=1, m=6, alpha_i=i, beta_i=(i-1)^2, noise N(0, 0.01)."""
  return _build(_synthetic_fields())


def docs() -> dict:
  """``{field: one-line doc}`` of every field of :func:`defaults`, of
  :func:`synthetic_defaults` as ``synthetic.<field>`` and of the built-in suites' options as
  ``data.<field>``."""
  out = {name: doc for name, _, doc in _fields()}
  out.update({f"synthetic.{name}": doc for name, _, doc in _synthetic_fields()})
  for fields in _suite_option_fields().values():
    out.update({f"data.{name}": doc for name, _, doc in fields})
  return out
