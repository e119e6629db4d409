"""Config validation before any compute: each problem is one ``ConfigError(field, what, fix)``."""

from __future__ import annotations

import json
import math
import os

import jax

from gmr import components as comp
from gmr import data
from gmr import methods
from gmr import models
from gmr import schedule
from gmr.config import ConfigError, NETWORK_FIELDS, check_bool as _bool, check_choice as _choice
from gmr.config import check_number as _num
from gmr.evaluate import METRICS


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
  _finite_everywhere(c)
  _ints_in_range(c)
  methods.method_class(c.method)
  data.suite_record(c)
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
  if c.data_parallel > jax.device_count():  # global across hosts under jax.distributed
    raise ConfigError("data_parallel", f"{c.data_parallel} devices asked, {jax.device_count()} "
                      "visible", "use --config.data_parallel=0 for all of them, or fewer")
  devices = schedule.num_data_devices(c)  # 0 = all devices
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
    for f in NETWORK_FIELDS:
      theirs = source[f] if f in source else None
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
  methods.method_class(c.method).check_config(c)  # the method's own fields
  if c.budget_lambda > 0 and c.budget >= 1.0:
    raise ConfigError("budget", "is 1.0 (no constraint) while budget_lambda > 0",
                      "give the allowed active fraction in (0, 1), e.g. --config.budget=0.75")
  if c.t_min > c.t_init:
    raise ConfigError("t_min", f"{c.t_min} exceeds t_init={c.t_init}",
                      "the temperature anneals from t_init down to t_min")


def _suite_groups(c) -> None:
  """The suite's own options and groups (``data.*``, ``synthetic.*``): its record's checks
  (:func:`gmr.data.check_options`)."""
  data.check_options(c)


def _selection(c) -> None:
  """``select_by`` names a number the suite's evaluation reports: a split it has, a metric of
  its loss, one of its tasks or ``mean`` (:func:`gmr.data.evaluation_spec`)."""
  if not c.select_by:
    return
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
