"""A population: several runs of one config that differ only in their seed, trained by one
compiled program (``jax.vmap`` over a leading member axis), each written to its own ordinary
workdir. On an accelerator a step's time barely grows with the number of members until the
device is busy, so a sweep over seeds costs about one run; on a CPU each core is better used
by a run of its own (``results/population_benchmark.md``).

  python -m experiments.main --config=experiments/configs/four_mnists.py:gumbel_matrix \\
      --seeds=0-9 --workdir='runs/four_mnists/gumbel_matrix/seed_{seed}'
  python -m launch.sweep ... --seeds=0-9 --population=10

or from Python, :func:`run_population`. What a member promises is what its run promises:

* **Its own randomness.** Every key of member ``i`` comes from its own seed (task order,
  batches, Gumbel noise, dropout, initialisation), exactly as its separate run draws them.
* **Its numbers.** A member equals its separate run up to float rounding: XLA's batched
  kernels may sum in another order than one run's (measured on CPU: losses within 1e-6
  relative, parameters within 1e-5 after tens of steps; ``tests/test_population.py`` holds
  every method and schedule to these). The same population on the same machine is
  reproducible bit for bit, and a member's numbers do not depend on the other members'
  values. A member's workdir records ``{"member": i, "size": P}`` in its environment and
  ``results.json``; continuing it as a run of its own (or in another population) is refused
  like any change of environment unless ``--accept_environment_change``.
* **Its files.** ``config.json``, ``metrics.jsonl``, ``results.json``, the allocation
  history, TensorBoard and checkpoints in its workdir, as a run writes them, so
  ``launch.tables``, ``launch.aggregate``, ``experiments.report`` and ``launch.progress``
  read them unchanged.
* **Resume.** Each member checkpoints in its own workdir. A rerun resumes every member from
  its own newest checkpoint: the program starts at the earliest member's round and the others
  join as it reaches theirs (a kill between two members' checkpoints leaves them one interval
  apart), so a population killed at any moment and rerun ends identical to one never stopped.
  Finished members keep their slot (the program's shape stays that of the population) and are
  not written again. SIGTERM checkpoints every member, then ends with :class:`Preempted`.
* **Divergence.** A member whose loss or parameters become non-finite is stopped and
  reported (the divergence message, its last good checkpoint kept, as for a run) while the
  others go on; its slot keeps computing values nobody reads. :func:`run_population` returns
  its error in its place; the command line exits with status 1.
* **Memory.** The suite's pools and evaluation splits are on the device once for all members
  (one copy per member only for generated data drawn from each seed). A population that
  would not fit is refused in one line before compiling (:func:`estimate_memory`), naming the
  largest size that fits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from typing import List, NamedTuple, Optional, Sequence

import jax
import numpy as np

from gmr import config as config_schema
from gmr import data as data_lib
from gmr import experiment
from gmr import train as train_lib
from gmr import validate
from gmr import workdir as workdir_lib
from gmr.config import ConfigError
from gmr.step import Setup
from gmr.workdir import WorkdirError


def member_configs(config, seeds: Sequence[int]) -> list:
  """One config per seed: ``config`` with ``seed`` set (each a locked copy)."""
  out = []
  for s in seeds:
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.seed = int(s)
    c.lock()
    out.append(c)
  return out


def member_workdir(template: str, config) -> str:
  """A member's workdir from ``template``: ``{seed}`` replaced by its seed."""
  return template.replace("{seed}", str(config.seed))


def check_members(configs, workdirs) -> None:
  """Raise :class:`ConfigError` (``population``) unless ``configs`` can be one population:
  at least one member, every config equal but for :data:`gmr.config.POPULATION_FIELDS`, no
  seed twice, one workdir each, all distinct, and nothing that gives members different
  networks (a ``fixed_allocation_from`` per seed) or needs several processes."""
  if not configs:
    raise ConfigError("population", "has no members", "give at least one seed")
  if len(workdirs) != len(configs):
    raise ConfigError("population", f"{len(configs)} members but {len(workdirs)} workdirs",
                      "give one workdir per member")
  base = workdir_lib.config_json(configs[0])
  for i, c in enumerate(configs[1:], 1):
    diff = [f for f in workdir_lib.config_diff(base, workdir_lib.config_json(c))
            if f.split(".")[0] not in config_schema.POPULATION_FIELDS]
    if diff:
      raise ConfigError("population", f"member {i} differs from member 0 in {diff[0]} (members "
                        f"may differ only in {', '.join(config_schema.POPULATION_FIELDS)})",
                        "run configs that differ otherwise as separate programs")
  seeds = [int(c.seed) for c in configs]
  if len(set(seeds)) != len(seeds):
    dup = next(s for s in seeds if seeds.count(s) > 1)
    raise ConfigError("population", f"seed {dup} is given twice", "give each seed once")
  real = [os.path.realpath(w) for w in workdirs]
  if len(set(real)) != len(real):
    shared = next(w for w, r in zip(workdirs, real) if real.count(r) > 1)
    raise ConfigError("population", f"members share the workdir {shared}",
                      "give each member its own workdir, e.g. --workdir='runs/x/seed_{seed}'")
  why = unsupported(configs[0])
  if why and len(configs) > 1:
    raise ConfigError("population", f"{why}, so each member would have another network",
                      "run these seeds as separate runs (launch.sweep without --population)")
  if jax.process_count() > 1:
    raise ConfigError("population", "runs in one process on one device",
                      "run it without --coordinator_address")


def unsupported(config) -> Optional[str]:
  """Why seeds of ``config`` cannot share one program (``None``: they can)."""
  if "{seed}" in config.fixed_allocation_from:
    return "fixed_allocation_from names a source per seed"
  return None


# ----------------------------------------------------------------------------- memory
class MemoryEstimate(NamedTuple):
  """Bytes a population needs on its device (an estimate from the shapes, before compiling)."""
  per_member: int  # train state, its gradient and update, and the step's intermediate values
  shared: int      # the pools and evaluation splits on the device (per member when drawn
                   # from each seed: counted in per_member then)
  available: int   # the device's memory (a CPU: this machine's)

  def fits(self, size: int) -> bool:
    return self.shared + size * self.per_member <= 0.9 * self.available

  def largest(self) -> int:
    return max(0, int((0.9 * self.available - self.shared) // max(self.per_member, 1)))


def device_memory() -> int:
  """Bytes of the default device's memory (``bytes_limit``), or of this machine for a CPU."""
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (a backend without statistics)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _bytes(tree) -> int:
  return int(sum(np.prod(a.shape) * np.dtype(a.dtype).itemsize
                 for a in jax.tree_util.tree_leaves(tree)))


def _suite_bytes(suite) -> int:
  return sum(_bytes([s.x, s.y] + ([s.index] if s.index is not None else []))
             for s in (suite.train, suite.test, suite.validation) if s is not None)


def estimate_memory(setup: Setup, config, suite, member_data: bool,
                    available: Optional[int] = None) -> MemoryEstimate:
  """What a population of ``config`` on ``suite`` needs per member and shared, from the
  shapes: the train state (parameters and optimizer moments) three times (the state, its
  gradient-sized update and the new state), plus every intermediate value of one task-batch
  step, read from its jaxpr (an upper bound: XLA frees and reuses buffers). ``member_data``:
  each member has its own copy of the data. ``available``: the device's bytes (default
  :func:`device_memory`)."""
  from gmr.step import make_train_step  # pylint: disable=g-import-not-at-top
  state = jax.eval_shape(lambda k: train_lib.init_state(setup, k), jax.random.key(0))
  b = int(config.batch_size)
  x = jax.ShapeDtypeStruct((b,) + tuple(suite.train.x.shape[1:]), suite.train.x.dtype)
  y = jax.ShapeDtypeStruct((b,) + tuple(suite.train.y.shape[1:]), suite.train.y.dtype)
  step = make_train_step(setup, config)
  jaxpr = jax.make_jaxpr(step)(state, x, y, 0, jax.random.key(0))
  inter = 0

  def walk(jx):
    nonlocal inter
    for eqn in jx.eqns:
      for v in eqn.outvars:
        aval = getattr(v, "aval", None)
        if hasattr(aval, "shape") and hasattr(aval, "dtype"):
          try:
            inter += int(np.prod(aval.shape)) * np.dtype(aval.dtype).itemsize
          except TypeError:  # key types
            pass
      for p in eqn.params.values():  # nested programs (pjit, custom derivatives, ...)
        sub = getattr(p, "jaxpr", p)
        if hasattr(sub, "eqns"):
          walk(sub)
  walk(jaxpr.jaxpr)
  data = _suite_bytes(suite)
  per = 3 * _bytes(state) + inter + (data if member_data else 0)
  return MemoryEstimate(int(per), 0 if member_data else int(data),
                        device_memory() if available is None else int(available))


def check_memory(estimate: MemoryEstimate, size: int) -> None:
  """Raise :class:`ConfigError` (``population``) when ``size`` members would not fit."""
  if estimate.fits(size):
    return
  gib = lambda n: f"{n / 2 ** 30:.2f} GiB"
  need = estimate.shared + size * estimate.per_member
  raise ConfigError(
      "population", f"{size} members need about {gib(need)} ({gib(estimate.per_member)} per "
      f"member + {gib(estimate.shared)} of data), more than 90% of the device's "
      f"{gib(estimate.available)}",
      f"run at most {estimate.largest()} members per program (launch.sweep --population="
      f"{max(1, estimate.largest())})")


# ----------------------------------------------------------------------------- running
class _Prefixed:
  """A stream whose every line starts with ``prefix`` (a member's lines among the others')."""

  def __init__(self, stream, prefix: str):
    self.stream, self.prefix, self.at_start = stream, prefix, True

  def write(self, text: str) -> None:
    out = []
    for part in text.splitlines(keepends=True):
      out.append((self.prefix if self.at_start else "") + part)
      self.at_start = part.endswith("\n")
    self.stream.write("".join(out))

  def flush(self) -> None:
    self.stream.flush()


def run_population(configs, workdirs: Sequence[str], quiet: bool = False, stream=None,
                   fresh: bool = False, accept_environment_change: bool = False,
                   memory_bytes: Optional[int] = None) -> List:
  """Train ``configs`` (members of one population: :func:`check_members`) as one program,
  member ``i`` into ``workdirs[i]``, as :func:`gmr.experiment.run` trains one (see the module
  docstring for what holds). Returns per member its results (a dict, as ``run`` returns) or,
  for a member that diverged, its :class:`gmr.train.NonFiniteError`.

  Before anything is written: every config is validated, the members checked, the network
  built abstractly and the data files checked (:class:`ConfigError`,
  :class:`gmr.data.raw.DataError`, :class:`WorkdirError`); after the data is read and before
  anything compiles, the memory (:func:`check_memory`, ``memory_bytes``: the device's, by
  default :func:`device_memory`). Raises :class:`gmr.experiment.Preempted` on SIGTERM (every
  member checkpointed)."""
  stream = stream or sys.stdout
  for c in configs:
    validate.validate(c)
  check_members(configs, workdirs)
  experiment.use_compilation_cache(configs[0].compilation_cache_dir)
  built = experiment.built_config(configs[0], workdirs[0])
  setup = train_lib.check_structure(built, *data_lib.describe(configs[0]))
  data_lib.check_data_available(configs[0])
  for wd in workdirs:
    workdir_lib.make_workdir(wd)
  size = len(configs)
  with contextlib.ExitStack() as locks:
    for wd in workdirs:  # a write the machine refuses: one line naming that member's workdir
      locks.enter_context(experiment.machine_failures(wd))
    for wd in workdirs:
      lock = locks.enter_context(open(os.path.join(wd, ".lock"), "w"))
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise WorkdirError(f"{wd}: another gmr process is running in it; wait for it to end, "
                           "or use other workdirs") from None
    members = [experiment.Member(c, wd, quiet,
                                 _Prefixed(stream, f"[seed {c.seed}] ") if size > 1 else stream,
                                 (built, setup), {"member": i, "size": size})
               for i, (c, wd) in enumerate(zip(configs, workdirs))]
    results: List = [m.prepare(fresh, False, False, accept_environment_change) for m in members]
    todo = [i for i, r in enumerate(results) if r is None]
    if not todo:
      return results
    shared = data_lib.same_data_for_seeds(configs[0])
    suites = [data_lib.load_suite(configs[0])] if shared else [
        data_lib.load_suite(c) for c in configs]
    try:
      for i in todo:
        members[i].load_suite(suites[0] if shared else suites[i])
      setup = train_lib.setup_for(setup, built, suites[0])
      if size > 1:
        check_memory(estimate_memory(setup, built, suites[0], not shared, memory_bytes), size)
    except ConfigError:
      for i in todo:
        members[i].undo_prepare()
      raise
    lanes = []
    try:
      for i, m in enumerate(members):
        if i in todo:
          m.start(m.suite, setup)
          lanes.append(m.lane(on_chunk=m.saver.save_chunk))
        else:  # finished: keeps its slot (the program's shape), never joins, writes nothing
          lanes.append(train_lib.Lane(configs[i], start_round=int(configs[i].num_rounds),
                                      placeholder=True))
      savers = [members[i].saver for i in todo]
      errors = {}

      def on_diverge(lane: int, e: train_lib.NonFiniteError) -> None:
        err = members[lane].saver.non_finite(e)
        errors[lane] = err
        print(f"error: {workdirs[lane]}: training diverged: {err}", file=sys.stderr, flush=True)

      def after_chunk(r: int) -> None:
        if savers[0].signal is not None:
          raise experiment.Preempted(
              f"stopped by signal {savers[0].signal} at round {r}; every member's checkpoint "
              "written; rerun the same command to resume")

      def note(signum: int) -> None:  # every member checkpoints after the device call
        for s in savers:
          s.signal = signum

      with experiment.sigterm_noted(note):
        outs = train_lib.train_population(lanes, suites if not shared else suites[0],
                                          setup=setup, on_diverge=on_diverge,
                                          after_chunk=after_chunk)
    finally:
      for m in members:
        m.close()
    for i in todo:
      results[i] = errors[i] if i in errors else members[i].finish(outs[i])
    return results
