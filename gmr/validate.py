"""Config validation before any compute: each problem is one ``ConfigError(field, what, fix)``."""

from __future__ import annotations

import math

from gmr import components as comp
from gmr.methods import METHODS, ConfigError


def _num(c, field, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, fix="",
         name=None):
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


# Integers gmr hands to jax are int32 (jax's default without x64: keys, step counters, indices);
# a larger value would wrap around or alias another (seed 2**32 is seed 0's key).
INT_MIN, INT_MAX = -(2 ** 31), 2 ** 31 - 1


def _ints_in_range(c, prefix="") -> None:
  """Every integer field, nested ones included, fits in int32."""
  for k, v in c.items():
    if hasattr(v, "items"):
      _ints_in_range(v, f"{prefix}{k}.")
    elif isinstance(v, int) and not isinstance(v, bool) and not INT_MIN <= v <= INT_MAX:
      raise ConfigError(f"{prefix}{k}", f"{v} is outside the 32-bit integers jax computes with "
                        f"([{INT_MIN}, {INT_MAX}])", f"set --config.{prefix}{k} to a smaller value")


def _finite_everywhere(c, prefix="") -> None:
  """Every float field, nested ones included and whatever the method, is finite."""
  for k, v in c.items():
    if hasattr(v, "items"):
      _finite_everywhere(v, f"{prefix}{k}.")
    elif isinstance(v, float) and not math.isfinite(v):
      raise ConfigError(f"{prefix}{k}", f"must be a finite number, got {v!r}",
                        f"set --config.{prefix}{k}=<number>")


def validate(c) -> None:
  """Raise :class:`ConfigError` for the first wrong field of ``c`` (the checks run in this
  order: names and the run's counts, optimizer and allocation, computation and devices,
  bookkeeping, fine-tuning, the method's own fields and relations, the suite's groups, the
  number ``select_by`` names in the suite's evaluation)."""
  for check in (_names_and_run, _optimizer_and_allocation, _compute, _bookkeeping, _fine_tuning,
                _relations, _suite_groups, _selection):
    check(c)


def _names_and_run(c) -> None:
  """Names (method, suite, architecture) and the run's counts."""
  from gmr import data, models  # lazy: keep this module light
  _finite_everywhere(c)
  _ints_in_range(c)
  if c.method not in METHODS:
    raise ConfigError("method", f"unknown method {c.method!r}", f"choose one of {sorted(METHODS)}")
  if c.suite not in data.SUITES:
    raise ConfigError("suite", f"unknown suite {c.suite!r}", f"choose one of {sorted(data.SUITES)}")
  if c.arch not in models.ARCHITECTURES:
    raise ConfigError("arch", f"unknown architecture {c.arch!r}",
                      f"choose one of {sorted(models.ARCHITECTURES)}")
  _num(c, "seed", 0, integer=True)
  for f in ("num_rounds", "batch_size", "eval_batch_size", "rounds_per_call"):
    _num(c, f, 1, integer=True)
  for f in ("eval_every", "log_every"):
    _num(c, f, 0, integer=True)


def _optimizer_and_allocation(c) -> None:
  """The optimizer's and the allocation's numbers."""
  _num(c, "learning_rate", 0, lo_open=True)
  if c.alloc_learning_rate is not None:
    _num(c, "alloc_learning_rate", 0, lo_open=True)
  if c.alloc_lr_multiplier is not None:
    _num(c, "alloc_lr_multiplier", 0, lo_open=True)
  _num(c, "p_init", 0, 1, lo_open=True, hi_open=True,
       fix="give a probability strictly between 0 and 1, e.g. --config.p_init=0.5")
  _num(c, "t_init", 0, lo_open=True, fix="temperatures must be positive")
  _num(c, "t_min", 0, lo_open=True, fix="temperatures must be positive")
  _num(c, "budget", 0, 1, lo_open=True, fix="give the allowed active fraction in (0, 1]")
  _num(c, "budget_lambda", 0)
  _num(c, "entropy_penalty", 0)
  _num(c, "l2", 0)
  _num(c, "clip_norm", 0, fix="use 0 to disable clipping")
  _num(c, "dropout", 0, 1, hi_open=True)
  for f in ("adam_b1", "adam_b2"):
    _num(c, f, 0, 1, hi_open=True)
  _num(c, "adam_eps", 0, lo_open=True)


def _compute(c) -> None:
  """How the network computes, and on how many devices."""
  if c.combine not in ("mean", "sum", "auto"):
    raise ConfigError("combine", f"unknown mode {c.combine!r}", "use 'mean', 'sum' or 'auto'")
  if c.conv_impl not in ("auto", "xla", "patches"):
    raise ConfigError("conv_impl", f"unknown {c.conv_impl!r}", "use 'auto', 'xla' or 'patches'")
  if c.layout not in ("auto",) + comp.LAYOUTS:
    raise ConfigError("layout", f"unknown {c.layout!r}", "use 'auto', 'nhwc' or 'cnhw'")
  if c.conv_dtype not in comp.CONV_DTYPES:
    raise ConfigError("conv_dtype", f"unknown {c.conv_dtype!r}",
                      "use " + " or ".join(repr(d) for d in comp.CONV_DTYPES))
  _num(c, "no_sharing_components_per_task", 1, integer=True)
  _choice(c, "schedule", ("round_robin", "joint"))
  _num(c, "data_parallel", 0, integer=True, fix="give a device count, or 0 for all devices")
  import jax  # the device count (global across hosts once jax.distributed is initialised)
  if c.data_parallel > jax.device_count():
    raise ConfigError("data_parallel", f"{c.data_parallel} devices asked, {jax.device_count()} "
                      "visible", "use --config.data_parallel=0 for all of them, or fewer")
  from gmr.train import num_data_devices  # 0 = all devices
  devices = num_data_devices(c)
  if devices > 1 and c.batch_size % devices:
    raise ConfigError("batch_size", f"{c.batch_size} does not split over data_parallel="
                      f"{c.data_parallel} ({devices} devices)", f"use a multiple of {devices}")


def _bookkeeping(c) -> None:
  """Augmentation, checkpoints, history, switches, paths and selection."""
  _choice(c, "augment", ("", "pad_crop"))
  _num(c, "augment_pad", 0, integer=True)
  _num(c, "checkpoint_every", 0, integer=True, fix="use 0 to checkpoint only at the end")
  _num(c, "keep_checkpoints", 1, integer=True)
  _num(c, "alloc_history_every", 0, integer=True, fix="use 0 to record no history")
  _bool(c, "fused")
  _bool(c, "eval_sample")
  _bool(c, "sparse_head_updates")
  _bool(c, "download")
  _bool(c, "accept_noncanonical_data")
  _choice(c, "taps_score_optimizer", ("adam", "sgd"))
  for f in ("data_dir", "tfds_dir", "compilation_cache_dir"):
    if not isinstance(c[f], str):
      raise ConfigError(f, f"must be a path string, got {c[f]!r}", f"set --config.{f}=<dir>")
  sel = c.select_by
  if sel:
    parts = sel.split(".")
    if len(parts) != 3 or parts[0] not in ("validation", "test") or parts[1] not in ("loss", "accuracy"):
      raise ConfigError("select_by", f"{sel!r} is not <split>.<metric>.<task or mean>",
                        "e.g. --config.select_by=validation.accuracy.mean, or '' for the last")
  if c.data_seed is not None:
    _num(c, "data_seed", 0, integer=True)


def _fine_tuning(c) -> None:
  """Fine-tuning from another run."""
  _bool(c, "freeze_backbone")
  init_from = c.init_from
  if not isinstance(init_from, str):
    raise ConfigError("init_from", f"must be a workdir path, got {init_from!r}",
                      "set --config.init_from=<workdir of a finished run> or ''")
  if init_from:
    import json  # pylint: disable=g-import-not-at-top
    import os  # pylint: disable=g-import-not-at-top
    from gmr import config as config_schema  # pylint: disable=g-import-not-at-top
    if not os.path.exists(os.path.join(init_from, "results.json")):
      raise ConfigError("init_from", f"{init_from} has no results.json (not a finished run)",
                        "finish the source run first, or fix the path")
    try:
      with open(os.path.join(init_from, "config.json")) as f:
        source = json.load(f)
    except (OSError, ValueError):
      raise ConfigError("init_from", f"{init_from}/config.json cannot be read (not a gmr "
                        "workdir)", "point init_from at a finished gmr run's workdir") from None
    mine = c.to_dict()
    for f in config_schema.NETWORK_FIELDS:
      theirs = source.get(f)
      ours = mine[f].to_dict() if hasattr(mine[f], "to_dict") else mine[f]
      if theirs != ours:
        raise ConfigError("init_from", f"{init_from} was trained with {f}={theirs!r}, this run "
                          f"has {f}={ours!r}; its backbone does not fit this network",
                          f"set --config.{f} as in the source run, or start from a run of "
                          "this network")
  if c.freeze_backbone and not init_from:
    raise ConfigError("freeze_backbone", "is true but init_from is empty (a frozen random "
                      "backbone)", "set --config.init_from=<source run> or freeze_backbone=false")


def _relations(c) -> None:
  """The method's own fields, and fields that constrain each other."""
  METHODS[c.method].check_config(c)  # the method's own fields
  if c.budget_lambda > 0 and c.budget >= 1.0:
    raise ConfigError("budget", "is 1.0 (no constraint) while budget_lambda > 0",
                      "give the allowed active fraction in (0, 1), e.g. --config.budget=0.75")
  if c.t_min > c.t_init:
    raise ConfigError("t_min", f"{c.t_min} exceeds t_init={c.t_init}",
                      "the temperature anneals from t_init down to t_min")


def _suite_groups(c) -> None:
  """The suite's own groups: ``synthetic.*`` and ``data.*``."""
  syn = c.get("synthetic", None)
  if syn is not None:  # appendix A1's generator
    for f in ("d", "m", "num_train", "num_test", "num_pairs"):
      if f in syn:
        _num(syn, f, 1, integer=True, name=f"synthetic.{f}")
    if "c" in syn:
      _num(syn, "c", name="synthetic.c")
    if "noise_std" in syn:
      _num(syn, "noise_std", 0, name="synthetic.noise_std")
    _synthetic_fits(c, syn)
  data = c.get("data", None)
  if data is not None:
    if "rotate_k" in data and data.rotate_k not in (-3, -2, -1, 1, 2, 3):
      raise ConfigError("data.rotate_k", f"must be a non-zero multiple of 90 degrees in "
                        f"-3..3, got {data.rotate_k!r}", "use -1 (clockwise) or 1")
    if c.suite == "mnist_family":
      from gmr.data import real  # pylint: disable=g-import-not-at-top
      names = [t.strip() for t in str(data.get("tasks", "mnist")).split(",") if t.strip()]
      bad = [t for t in names if t not in real.FAMILY]
      if bad or not names:
        raise ConfigError("data.tasks", f"unknown task(s) {bad or names}",
                          f"give a comma-separated list of {sorted(real.FAMILY)}")
    if "max_examples" in data:
      _num(data, "max_examples", 0, integer=True, fix="use 0 for all examples", name="data.max_examples")
    if "validation_fraction" in data:
      _num(data, "validation_fraction", 0, 1, hi_open=True, name="data.validation_fraction")
    if data.get("alphabets") is not None:
      from gmr.data import real  # pylint: disable=g-import-not-at-top
      bad = [a for a in data.alphabets if not isinstance(a, str)]
      if bad or not data.alphabets:
        raise ConfigError("data.alphabets", f"must be a non-empty list of names, got "
                          f"{data.alphabets!r}", f"e.g. {list(real.OMNIGLOT20[:2])}")


def _synthetic_fits(c, syn) -> None:
  """The generated suite fits in this machine's memory: its float32 inputs and labels, about
  three times over while they are drawn (the draw, its host copy, the labels' work)."""
  import os  # pylint: disable=g-import-not-at-top
  if not all(f in syn for f in ("num_train", "num_test", "d")):
    return
  tasks = 2 * int(syn.get("num_pairs", 1)) if c.suite == "synthetic_pairs" else 2
  n = int(syn.num_train) + int(syn.num_test)
  need = 3 * 4 * n * (int(syn.d) + tasks)
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return
  if need > have:
    field = "synthetic.d" if int(syn.d) > 128 and int(syn.d) * 1000 > n else "synthetic.num_train"
    raise ConfigError(field, f"the generated data would take {need / 2**30:.1f} GiB while it is "
                      f"drawn, this machine has {have / 2**30:.1f} GiB",
                      "use fewer examples (synthetic.num_train) or fewer features (synthetic.d)")


def _selection(c) -> None:
  """``select_by`` names a number the suite's evaluation reports: a split it has, a metric of
  its loss, one of its tasks or ``mean`` (:func:`gmr.data.evaluation_spec`)."""
  if not c.select_by:
    return
  from gmr import data  # pylint: disable=g-import-not-at-top
  from gmr.evaluate import METRICS  # pylint: disable=g-import-not-at-top
  split, metric, task = c.select_by.split(".")
  splits, loss, names = data.evaluation_spec(c)
  fix = f"e.g. --config.select_by={splits[-1]}.{METRICS[loss][-1]}.mean, or '' for the last round"
  if split not in splits:
    raise ConfigError("select_by", f"suite {c.suite!r} has no {split} split (it has "
                      f"{', '.join(splits)})", fix)
  if metric not in METRICS[loss]:
    raise ConfigError("select_by", f"suite {c.suite!r} reports no {metric} (its loss {loss!r} "
                      f"gives {', '.join(METRICS[loss])})", fix)
  if task != "mean" and task not in names:
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise ConfigError("select_by", f"suite {c.suite!r} has no task {task!r} (tasks: {shown})",
                      "name one of its tasks or 'mean'")


def check_taps_fields(c):
  """TAPS's fields (:meth:`gmr.methods.TAPS.check_config`)."""
  _num(c, "taps_tau", 0, fix="give the score threshold, >= 0, e.g. 0.1 (a negative one makes "
       "every layer task-specific)")
  _num(c, "taps_score_init", fix="give the initial score, e.g. 0.15 (above taps_tau: every "
       "layer starts task-specific)")
  _num(c, "taps_lambda", 0, fix="give the sparsity weight, >= 0")
  if c.taps_learning_rate is not None:
    _num(c, "taps_learning_rate", 0, lo_open=True)
  _bool(c, "taps_task_norm")
  if c.taps_score_learning_rate is not None:
    _num(c, "taps_score_learning_rate", 0, lo_open=True)
  layers = c.taps_layers
  if not isinstance(layers, (list, tuple)) or not all(isinstance(p, str) for p in layers):
    raise ConfigError("taps_layers", f"must be a list of fnmatch patterns, got {layers!r}",
                      "e.g. ['layer_1/*', 'layer_2/*'], or [] for every kernel")


def _choice(c, field, options):
  if c[field] not in options:
    raise ConfigError(field, f"unknown value {c[field]!r}", f"choose one of {list(options)}")


def _bool(c, field):
  if not isinstance(c[field], bool):
    raise ConfigError(field, f"must be true or false, got {c[field]!r}",
                      f"set --config.{field}=true or false")


