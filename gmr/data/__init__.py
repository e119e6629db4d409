"""Task suites by name: one :class:`Suite` record per suite, and ``load_suite(config)``.

A suite's record holds everything gmr needs to know about it before its data exists: how to
build it, its options (``config.data.*``) with their defaults, the network's shape
(``describe``), what an evaluation covers (``evaluation``: splits, loss, task names), its known
task clusters, the prepared datasets it reads and its options' checks. The built-in suites
have every entry; a suite registered by a user (:func:`register`, e.g. from a config file of
their own) may give only ``build``: what is missing is read from the suite built once, during
validation (the ``describe`` and ``evaluation`` of the built :class:`TaskSuite`; the run then
trains on that same build), so the validation, the command line, sweeps, tables and the
report treat it like a built-in one. ``config.data`` keys a suite's record does not declare
are refused only for a suite that declares options::

  from gmr import data

  @data.register("user_pairs")
  def build(config, key):            # -> gmr.data.TaskSuite
    ...
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Dict, Optional, Tuple

import jax

from gmr import config as config_schema
from gmr.config import ConfigError
from gmr.data import real, synthetic
from gmr.data.suite import Split, TaskSuite

# the top-level fields every real-data suite reads besides its own options
_FILE_FIELDS = ("data_dir", "tfds_dir", "download", "accept_noncanonical_data")


@dataclasses.dataclass(frozen=True)
class Suite:
  """What gmr knows about one suite. Every callable takes the run's config (``ConfigDict``).

  ``build(config, key) -> TaskSuite``: the suite (``key``: a PRNG key for generated data).
  ``options``: ``((name, default, one-line doc), ...)`` of ``config.data.*``; what the suite
  reads is ``config.data`` completed by these (:func:`options`).
  ``describe(config) -> (num_tasks, head_dims, input_dim)`` without the data (head sizes only
  the data knows may be given as 2: they do not change the network's structure).
  ``evaluation(config) -> (splits, loss, task_names)``: the splits an evaluation covers
  (``("test",)`` or ``("test", "validation")``) and the loss (``"xent"``: loss and accuracy;
  ``"mse"``: loss).
  ``clusters(options) -> {cluster: [task indices]} | None``: the true task clusters (section
  V-C), from the completed options (a dict) alone.
  ``datasets(config) -> (TFDS builder names, ...)``: the prepared datasets it reads.
  ``check(config)``: raises :class:`gmr.config.ConfigError` for a wrong option.
  ``seeded``: ``build`` draws the data from ``key`` (generated data: each ``seed`` its own,
  unless ``data_seed`` is set); ``False``: every seed reads the same data (a population of
  seeds then shares one copy on the device, :func:`same_data_for_seeds`).
  ``None`` entries of a user's suite are read from a build (``describe``, ``evaluation``) or
  mean "none" (``clusters``, ``datasets``, ``check``)."""
  name: str
  build: Callable
  options: Tuple = ()
  describe: Optional[Callable] = None
  evaluation: Optional[Callable] = None
  clusters: Optional[Callable] = None
  datasets: Optional[Callable] = None
  check: Optional[Callable] = None
  seeded: bool = True


SUITES: Dict[str, Suite] = {}


def register(name: str, **record):
  """Decorator: register ``build(config, key) -> TaskSuite`` as suite ``name`` (the other
  :class:`Suite` entries as keyword arguments). A name registered again is replaced."""
  def deco(fn):
    SUITES[name] = Suite(name, fn, **record)
    return fn
  return deco


def suite_record(config) -> Suite:
  """The :class:`Suite` of ``config.suite``. Raises :class:`ConfigError` (``suite``) for an
  unknown one."""
  if config.suite not in SUITES:
    raise ConfigError("suite", f"unknown suite {config.suite!r}",
                      f"choose one of {sorted(SUITES)}, or register one (gmr.data.register)")
  return SUITES[config.suite]


def options(config) -> dict:
  """What a suite reads besides its generator's fields: ``data_dir``, ``tfds_dir``,
  ``download``, ``accept_noncanonical_data`` and its options, ``config.data`` completed by
  the option defaults of its record (a plain dict)."""
  out = {k: config[k] for k in _FILE_FIELDS}
  rec = SUITES.get(config.suite)
  out.update({name: default for name, default, _ in (rec.options if rec else ())})
  if "data" in config and config.data is not None:
    out.update(config.data.to_dict() if hasattr(config.data, "to_dict") else dict(config.data))
  return out


_BUILT: Dict[str, TaskSuite] = {}  # a user's suite built to read its description: config -> suite


def _built_once(config) -> TaskSuite:
  """A user's suite, built once per config to read what its record does not give (kept for
  :func:`load_suite`, which takes it; one at a time)."""
  key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
  if key not in _BUILT:
    _BUILT.clear()  # one at a time: a suite may be large
    _BUILT[key] = _build(config)
  return _BUILT[key]


def describe(config) -> Tuple[int, tuple, int]:
  """``(num_tasks, head_dims, input_dim)`` of the suite ``config`` asks for, without its data
  for a built-in suite (``input_dim``: the features of a synthetic example, the channels of an
  image): what the network is built from. Raises :class:`ConfigError` (``suite``)."""
  rec = suite_record(config)
  if rec.describe is not None:
    return rec.describe(config)
  s = _built_once(config)
  return s.num_tasks, tuple(s.head_dims), int(s.train.x.shape[-1])


def evaluation_spec(config) -> tuple:
  """``(splits, loss, task_names)`` of the suite ``config`` asks for (:class:`Suite`'s
  ``evaluation``): what ``select_by`` may name (:func:`gmr.validate.validate`). Raises
  :class:`ConfigError` for an unknown suite or a wrong option (``data.tasks``)."""
  rec = suite_record(config)
  if rec.evaluation is not None:
    return rec.evaluation(config)
  s = _built_once(config)
  splits = ("test",) + (("validation",) if s.validation is not None else ())
  return splits, s.loss, tuple(s.task_names)


def task_clusters(config):
  """The true task clusters of the suite ``config`` asks for, without its data (what a built
  suite's ``info["clusters"]`` holds): ``{cluster: [task indices]}``, or ``None`` for a suite
  without known clusters or not registered in this process. ``config``: a ``ConfigDict`` or a
  stored ``config.json`` dict (a run made before other fields existed will do). Raises
  ``KeyError`` for a mapping without ``suite``."""
  rec = SUITES.get(config["suite"])
  if rec is None or rec.clusters is None:
    return None
  opts = {name: default for name, default, _ in rec.options}
  data = config["data"] if "data" in config else None
  if data is not None:
    opts.update(data.to_dict() if hasattr(data, "to_dict") else dict(data))
  return rec.clusters(opts)


def datasets_needed(config) -> tuple:
  """The prepared datasets (TFDS builder names) the suite of ``config`` reads (``()``: none)."""
  rec = suite_record(config)
  return tuple(rec.datasets(config)) if rec.datasets is not None else ()


def check_options(config) -> None:
  """Raise :class:`ConfigError` for a wrong option of the suite of ``config``: an option its
  record does not define (``data.<name>``), or its record's own checks."""
  rec = suite_record(config)
  if rec.options and "data" in config and config.data is not None:
    known = {name for name, _, _ in rec.options}
    for k in config.data.keys():
      if k not in known:
        raise ConfigError(f"data.{k}", f"suite {config.suite!r} has no option {k!r}",
                          f"use one of {sorted(known)}")
  if rec.check is not None:
    rec.check(config)


def check_data_available(config) -> None:
  """Before anything is printed or computed: the data directory is set and holds every raw
  file the suite needs (unless ``download`` may fetch it). Raises
  :class:`gmr.data.raw.DataError` naming the first missing one (or ``data_dir: not set``)."""
  from gmr.data import raw, tfds_builders  # pylint: disable=g-import-not-at-top
  needed = datasets_needed(config)
  if not needed or config.download:
    return
  data_dir = raw.resolve_data_dir(config.data_dir)
  for name in needed:
    for rel in tfds_builders.BUILDERS[name].raw_files():
      raw._check_or_fetch(os.path.join(data_dir, rel), rel, raw.URLS[rel.split("/")[0]],  # pylint: disable=protected-access
                          download=False)


def _build(config) -> TaskSuite:
  seed = config.data_seed
  key = jax.random.fold_in(jax.random.key(config.seed if seed is None else seed), 7)
  return suite_record(config).build(config, key)


def same_data_for_seeds(config) -> bool:
  """Whether runs of ``config`` that differ only in ``seed`` read the same data: the suite's
  build ignores its key (:class:`Suite`'s ``seeded``) or ``data_seed`` fixes it."""
  return not suite_record(config).seeded or config.data_seed is not None


def load_suite(config) -> TaskSuite:
  """The suite named ``config.suite``; synthetic data is drawn from ``config.data_seed``
  (or ``config.seed`` when unset). Raises :class:`ConfigError` (``suite``) for an unknown
  suite."""
  key = json.dumps(config.to_dict(), sort_keys=True, default=repr)
  built = _BUILT.pop(key, None)  # a user's suite built to read its description
  _BUILT.clear()  # one for another config is not kept
  return built if built is not None else _build(config)


# ----------------------------------------------------------------------------- built-in suites
def _check_synthetic(config) -> None:
  """``synthetic.*``: appendix A1's generator (and ``rho`` for the transfer suite), and that
  the generated data fits in this machine's memory: its float32 inputs and labels, about
  three times over while they are drawn (the draw, its host copy, the labels' work)."""
  for group in ("synthetic",) + (("rho",) if config.suite == "transfer" else ()):
    if group not in config:
      raise ConfigError(group, f"is required by suite {config.suite!r}",
                        "start from its experiment config (experiments/configs/)")
  if config.suite == "transfer":
    config_schema.check_number(config, "rho", -1, 1, fix="give the tasks' similarity in [-1, 1]")
  syn = config.synthetic
  for f in ("d", "m", "num_train", "num_test", "num_pairs"):
    config_schema.check_number(syn, f, 1, integer=True, name=f"synthetic.{f}")
  config_schema.check_number(syn, "c", name="synthetic.c")
  config_schema.check_number(syn, "noise_std", 0, name="synthetic.noise_std")
  n = int(syn.num_train) + int(syn.num_test)
  need = 3 * 4 * n * (int(syn.d) + _num_synthetic_tasks(config))
  try:
    have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
  except (ValueError, OSError, AttributeError):
    return
  if need > have:
    field = "synthetic.d" if int(syn.d) > 128 and int(syn.d) * 1000 > n else "synthetic.num_train"
    raise ConfigError(field, f"the generated data would take {need / 2**30:.1f} GiB while it is "
                      f"drawn, this machine has {have / 2**30:.1f} GiB",
                      "use fewer examples (synthetic.num_train) or fewer features (synthetic.d)")


def _num_synthetic_tasks(config) -> int:
  return 2 * int(config.synthetic.num_pairs) if config.suite == "synthetic_pairs" else 2


def _check_rotate_k(config) -> None:
  k = options(config)["rotate_k"]
  if k not in (-3, -2, -1, 1, 2, 3):
    raise ConfigError("data.rotate_k", f"must be a non-zero multiple of 90 degrees in -3..3, "
                      f"got {k!r}", "use -1 (clockwise) or 1")


def _check_max_examples(config) -> None:
  config_schema.check_number(options(config), "max_examples", 0, integer=True,
                             fix="use 0 for all examples", name="data.max_examples")


def _check_alphabets(config) -> None:
  alphabets = options(config)["alphabets"]
  if alphabets is not None:
    bad = [a for a in alphabets if not isinstance(a, str)]
    if bad or not alphabets:
      raise ConfigError("data.alphabets", f"must be a non-empty list of names, got "
                        f"{alphabets!r}", f"e.g. {list(real.OMNIGLOT20[:2])}")


def _check_four_mnists(config) -> None:
  _check_rotate_k(config)
  _check_max_examples(config)


def _check_family(config) -> None:
  names = [t.strip() for t in str(options(config)["tasks"]).split(",") if t.strip()]
  bad = [t for t in names if t not in real.FAMILY]
  if bad or not names:
    raise ConfigError("data.tasks", f"unknown task(s) {bad or names}",
                      f"give a comma-separated list of {sorted(real.FAMILY)}")
  _check_rotate_k(config)
  _check_max_examples(config)


def _check_clusters(config) -> None:
  opts = options(config)
  config_schema.check_number(opts, "validation_fraction", 0, 1, hi_open=True,
                             name="data.validation_fraction")
  config_schema.check_number(opts, "split_seed", 0, integer=True, name="data.split_seed")
  _check_max_examples(config)
  _check_alphabets(config)


def _register_builtins() -> None:
  opts = config_schema._suite_option_fields()  # pylint: disable=protected-access

  register(
      "transfer",
      describe=lambda c: (2, (1, 1), int(c.synthetic.d)),
      evaluation=lambda c: (("test",), "mse", synthetic.TRANSFER_TASKS),
      check=_check_synthetic)(
          lambda c, key: synthetic.transfer_suite(
              key, c.rho, c.synthetic.d, c.synthetic.c, c.synthetic.m, c.synthetic.noise_std,
              c.synthetic.num_train, c.synthetic.num_test))

  register(
      "synthetic_pairs",
      describe=lambda c: (_num_synthetic_tasks(c), (1,) * _num_synthetic_tasks(c),
                          int(c.synthetic.d)),
      evaluation=lambda c: (("test",), "mse",
                            synthetic.pairs_task_names(int(c.synthetic.num_pairs))),
      check=_check_synthetic)(
          lambda c, key: synthetic.pairs_suite(
              key, c.synthetic.d, c.synthetic.c, c.synthetic.m, c.synthetic.noise_std,
              c.synthetic.num_train, c.synthetic.num_test, c.synthetic.num_pairs))

  register(
      "four_mnists", options=opts["four_mnists"], seeded=False,
      describe=lambda c: (4, (10,) * 4, 1),
      evaluation=lambda c: (("test",), "xent", real.FOUR_MNISTS_TASKS),
      datasets=lambda c: ("gmr_mnist",), check=_check_four_mnists)(
          lambda c, key: real.four_mnists(options(c)))

  def family_describe(c):
    t = len(real.family_tasks(options(c)))
    return t, (10,) * t, 1

  register(
      "mnist_family", options=opts["mnist_family"], seeded=False, describe=family_describe,
      evaluation=lambda c: (("test",), "xent", real.family_tasks(options(c))),
      datasets=lambda c: tuple(sorted({real.FAMILY[t][0] for t in real.family_tasks(options(c))})),
      check=_check_family)(
          lambda c, key: real.mnist_family(options(c)))

  def omniglot_describe(c):
    n = len(real.omniglot_alphabets(options(c)))
    return n, (2,) * n, 1

  register(
      "omniglot20", options=opts["omniglot20"], seeded=False, describe=omniglot_describe,
      evaluation=lambda c: (("test", "validation"), "xent",
                            real.omniglot_alphabets(options(c))),
      datasets=lambda c: ("gmr_omniglot",), check=_check_alphabets)(
          lambda c, key: real.omniglot20(options(c)))

  for offline in (False, True):
    name = "clusters40_offline" if offline else "clusters40"

    def clusters_describe(c, offline=offline):
      if not offline:
        return 40, (5,) * 20 + (9,) * 20, 3
      n = len(real.omniglot_alphabets(options(c)))
      return n + 20, (2,) * n + (9,) * 20, 3

    register(
        name, options=opts[name], seeded=False, describe=clusters_describe,
        evaluation=lambda c, offline=offline: (("test", "validation"), "xent",
                                               real.clusters40_tasks(options(c), offline)),
        clusters=lambda o, offline=offline: real.clusters_by_source(
            real.clusters40_tasks(o, offline)),
        datasets=lambda c, offline=offline: (
            "gmr_omniglot" if offline else "gmr_cifar100", "gmr_mnist", "gmr_fashion_mnist"),
        check=_check_clusters)(
            lambda c, key, offline=offline: real.clusters40(options(c), offline=offline))


_register_builtins()

__all__ = ["Split", "TaskSuite", "Suite", "SUITES", "register", "suite_record", "options",
           "load_suite", "same_data_for_seeds", "describe", "evaluation_spec", "task_clusters", "datasets_needed",
           "check_options", "check_data_available"]
