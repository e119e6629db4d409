"""Task suites by name: ``load_suite(config)`` builds the suite a config asks for."""

from __future__ import annotations

import os

import jax

from gmr.data import real, synthetic
from gmr.data.suite import Split, TaskSuite

SUITES = {}


def register(name):
  def deco(fn):
    SUITES[name] = fn
    return fn
  return deco


@register("transfer")
def _transfer(config, key):
  s = config.synthetic
  return synthetic.transfer_suite(key, config.rho, s.d, s.c, s.m, s.noise_std, s.num_train,
                                  s.num_test)


@register("synthetic_pairs")
def _pairs(config, key):
  s = config.synthetic
  return synthetic.pairs_suite(key, s.d, s.c, s.m, s.noise_std, s.num_train, s.num_test,
                               s.num_pairs)


def _data_options(config) -> dict:
  """The fields real-data suites read: data_dir, tfds_dir, download and ``config.data.*``."""
  opts = {k: config[k] for k in ("data_dir", "tfds_dir", "download", "accept_noncanonical_data")}
  opts.update(dict(config.get("data", {}) or {}))
  return opts


@register("four_mnists")
def _four_mnists(config, key):
  del key
  return real.four_mnists(_data_options(config))


@register("mnist_family")
def _mnist_family(config, key):
  del key
  return real.mnist_family(_data_options(config))


@register("omniglot20")
def _omniglot20(config, key):
  del key
  return real.omniglot20(_data_options(config))


@register("clusters40")
def _clusters40(config, key):
  del key
  return real.clusters40(_data_options(config))


@register("clusters40_offline")
def _clusters40_offline(config, key):
  del key
  return real.clusters40(_data_options(config), offline=True)


def describe(config):
  """``(num_tasks, head_dims, input_dim)`` of the suite ``config`` asks for, without its data:
  what the network is built from (``input_dim``: the features of a synthetic example, the
  channels of an image). Head sizes that only the data knows (Omniglot's characters per
  alphabet) are given as 2: enough to build the network's structure, which they do not
  change."""
  opts = _data_options(config)
  name = config.suite
  if name in ("synthetic_pairs", "transfer"):
    t = 2 * int(config.synthetic.num_pairs) if name == "synthetic_pairs" else 2
    return t, (1,) * t, int(config.synthetic.d)
  if name == "four_mnists":
    return 4, (10,) * 4, 1
  if name == "mnist_family":
    t = len([n for n in str(opts.get("tasks", "mnist")).split(",") if n.strip()])
    return t, (10,) * t, 1
  alphabets = len(opts.get("alphabets") or real.OMNIGLOT20)
  if name == "omniglot20":
    return alphabets, (2,) * alphabets, 1
  if name == "clusters40":
    return 40, (5,) * 20 + (9,) * 20, 3
  if name == "clusters40_offline":
    return alphabets + 20, (2,) * alphabets + (9,) * 20, 3
  raise ValueError(f"suite: no description of suite {name!r}")


def evaluation_spec(config) -> tuple:
  """``(splits, loss, task_names)`` of the suite ``config`` asks for, without its data: the
  splits an evaluation covers (``("test",)`` or ``("test", "validation")``), the loss
  (``"xent"``: loss and accuracy are reported; ``"mse"``: loss) and the tasks in order. What
  ``select_by`` may name (:func:`gmr.validate.validate`). Raises ``ValueError`` for an
  unknown suite or ``data.tasks``."""
  name = config.suite
  opts = _data_options(config)
  if name == "synthetic_pairs":
    return ("test",), "mse", synthetic.pairs_task_names(int(config.synthetic.num_pairs))
  if name == "transfer":
    return ("test",), "mse", synthetic.TRANSFER_TASKS
  if name == "four_mnists":
    return ("test",), "xent", real.FOUR_MNISTS_TASKS
  if name == "mnist_family":
    return ("test",), "xent", real.family_tasks(opts)
  if name == "omniglot20":
    return ("test", "validation"), "xent", real.omniglot_alphabets(opts)
  if name in ("clusters40", "clusters40_offline"):
    return ("test", "validation"), "xent", real.clusters40_tasks(opts, name.endswith("offline"))
  raise ValueError(f"suite: no description of suite {name!r}")


def task_clusters(config):
  """The true task clusters of the suite ``config`` asks for, without its data (what a built
  suite's ``info["clusters"]`` holds): ``{cluster: [task indices]}`` for the section V-C suites,
  ``None`` for every other suite (any name). Reads only ``suite`` and ``data.alphabets``, so
  the config of a run made before other fields existed will do (a ``config.json`` read as a
  dict included). Raises ``KeyError`` for a mapping without ``suite``."""
  name = config["suite"]
  if name not in ("clusters40", "clusters40_offline"):
    return None
  return real.clusters_by_source(real.clusters40_tasks(dict(config.get("data") or {}),
                                                       name.endswith("offline")))


def datasets_needed(config) -> tuple:
  """The prepared datasets (TFDS builder names) the suite of ``config`` reads (``()``: none)."""
  name = config.suite
  if name == "four_mnists":
    return ("gmr_mnist",)
  if name == "mnist_family":
    tasks = [t.strip() for t in str(_data_options(config).get("tasks", "mnist")).split(",")]
    return tuple(sorted({real.FAMILY[t][0] for t in tasks if t in real.FAMILY}))
  if name == "omniglot20":
    return ("gmr_omniglot",)
  if name in ("clusters40", "clusters40_offline"):
    first = "gmr_omniglot" if name.endswith("offline") else "gmr_cifar100"
    return (first, "gmr_mnist", "gmr_fashion_mnist")
  return ()


def check_data_available(config) -> None:
  """Before anything is printed or computed: the data directory is set and holds every raw
  file the suite needs (unless ``download`` may fetch it). Raises
  :class:`gmr.data.raw.DataError` naming the first missing one (or ``data_dir: not set``)."""
  from gmr.data import raw, tfds_builders  # pylint: disable=g-import-not-at-top
  needed = datasets_needed(config)
  if not needed:
    return
  data_dir = raw.resolve_data_dir(_data_options(config).get("data_dir", ""))
  if config.download:
    return
  for name in needed:
    for rel in tfds_builders.BUILDERS[name].raw_files():
      raw._check_or_fetch(os.path.join(data_dir, rel), rel, raw.URLS[rel.split("/")[0]],  # pylint: disable=protected-access
                          download=False)


def load_suite(config) -> TaskSuite:
  """The suite named ``config.suite``; synthetic data is drawn from ``config.data_seed``
  (or ``config.seed`` when unset)."""
  if config.suite not in SUITES:
    raise ValueError(f"suite: unknown suite {config.suite!r}; choose one of {sorted(SUITES)}")
  seed = config.data_seed
  key = jax.random.fold_in(jax.random.key(config.seed if seed is None else seed), 7)
  return SUITES[config.suite](config, key)


__all__ = ["Split", "TaskSuite", "load_suite", "describe", "evaluation_spec", "SUITES"]
