"""Config validation before any compute: each problem is one ``ConfigError(field, what, fix)``."""

from __future__ import annotations

from gmr.methods import METHODS, ConfigError


def _num(c, field, lo=None, hi=None, lo_open=False, hi_open=False, integer=False, fix=""):
  v = c.get(field)
  ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
  if isinstance(v, bool) or not ok_type:
    raise ConfigError(field, f"must be {'an integer' if integer else 'a number'}, got {v!r}",
                      fix or f"set --config.{field}=<number>")
  if lo is not None and (v <= lo if lo_open else v < lo):
    raise ConfigError(field, f"must be {'>' if lo_open else '>='} {lo}, got {v}",
                      fix or f"set --config.{field} to a larger value")
  if hi is not None and (v >= hi if hi_open else v > hi):
    raise ConfigError(field, f"must be {'<' if hi_open else '<='} {hi}, got {v}",
                      fix or f"set --config.{field} to a smaller value")


def validate(c) -> None:
  """Raise :class:`ConfigError` for the first wrong field of ``c``."""
  from gmr import data, models  # lazy: keep this module light
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
  if c.combine not in ("mean", "sum"):
    raise ConfigError("combine", f"unknown mode {c.combine!r}", "use 'mean' or 'sum'")
  if c.conv_impl not in ("auto", "xla", "patches"):
    raise ConfigError("conv_impl", f"unknown {c.conv_impl!r}", "use 'auto', 'xla' or 'patches'")
  _num(c, "no_sharing_components_per_task", 1, integer=True)
