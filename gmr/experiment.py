"""Running one experiment into a workdir (the I/O edge): restore or start, train, write
``metrics.jsonl``, checkpoints and ``results.json`` (what the files are and when a workdir
takes a run: :mod:`gmr.workdir`).

``run(config, workdir)`` is what ``python -m experiments.main`` calls; notebooks can call
``gmr.train.train(config, suite)`` directly and skip the files.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import List, NamedTuple, Optional

import jax
import jax.numpy as jnp

from gmr import checkpoint as checkpoint_lib
from gmr import config as config_schema
from gmr import data as data_lib
from gmr import evaluate
from gmr import logs
from gmr import schedule
from gmr import step
from gmr import optim as optim_lib
from gmr import train as train_lib
from gmr import validate
from gmr import workdir as workdir_lib
from gmr.config import ConfigError
from gmr.workdir import WorkdirError, WriteFailure, read_changes, run_identity


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written."""


def use_compilation_cache(where: str) -> Optional[str]:
  """Turn on JAX's persistent compilation cache (a second run of the same shapes reads its
  compiled programs instead of compiling them; the programs, and so the numbers, are the same).

  ``where``: ``"auto"`` (the folder JAX was already given, e.g. by ``JAX_COMPILATION_CACHE_DIR``,
  else ``$XDG_CACHE_HOME/gmr/jax``, default ``~/.cache/gmr/jax``), a folder, or ``""`` (leave
  JAX as it is). Returns the folder in use (``None``: none)."""
  current = jax.config.jax_compilation_cache_dir
  if not where:
    return current
  if where == "auto":
    if current:
      return current
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    where = os.path.join(base, "gmr", "jax")
  where = os.path.abspath(os.path.expanduser(where))
  if where != current:
    jax.config.update("jax_compilation_cache_dir", where)
    # every program (JAX's default skips those compiling in under a second: a run's small ones)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    try:  # a process that compiled before the folder was set starts using it now
      from jax._src import compilation_cache  # pylint: disable=g-import-not-at-top
      compilation_cache.reset_cache()
    except (ImportError, AttributeError):
      pass
  return where


def run(config, workdir: str, quiet: bool = False, stream=None, fresh: bool = False,
        extend: bool = False, change_optimizer: bool = False,
        accept_environment_change: bool = False) -> dict:
  """Train and evaluate ``config`` into ``workdir`` (see :func:`_run`), holding the workdir's
  lock: a second process on the same workdir is refused with :class:`WorkdirError`.

  Before anything is written or computed: the config is validated, the network's structure
  built abstractly and the data files checked (raising :class:`gmr.config.ConfigError`,
  :class:`gmr.data.raw.DataError` or :class:`WorkdirError`). A run that continues in another
  environment (x64, matmul precision, PRNG, XLA flags, backend: :func:`gmr.workdir.environment`)
  is refused with :class:`WorkdirError` unless ``accept_environment_change``."""
  validate.validate(config)
  use_compilation_cache(config.compilation_cache_dir)  # before anything compiles
  built = built_config(config, workdir)  # read once: the fixed_allocation_from source
  setup = train_lib.check_structure(built, *data_lib.describe(config))
  data_lib.check_data_available(config)
  workdir_lib.make_workdir(workdir)
  args = (quiet, stream, fresh, extend, change_optimizer, accept_environment_change,
          (built, setup))
  with machine_failures(workdir):
    if jax.process_index() != 0:
      return _run(config, workdir, *args)
    with open(os.path.join(workdir, ".lock"), "w") as lock:
      try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        raise WorkdirError(f"{workdir}: another gmr process is running in it; wait for it to "
                           "end, or use another --workdir") from None
      return _run(config, workdir, *args)


def fixed_allocation_source(config, workdir: str) -> str:
  """The workdir ``config.fixed_allocation_from`` names for a run in ``workdir``: ``{seed}``
  replaced by the run's seed, a relative path taken from ``workdir``."""
  path = config.fixed_allocation_from.replace("{seed}", str(config.seed))
  return os.path.normpath(os.path.join(workdir, path))


def built_config(config, workdir: str):
  """The config the network and method are built from: ``config`` itself, or, with
  ``fixed_allocation_from``, a copy whose ``fixed_allocation`` is that finished run's final
  greedy allocation (``results.json``'s ``allocations``). ``config.json`` and the run's
  identity keep the path, not the matrices.

  Raises :class:`ConfigError` (``fixed_allocation_from``) for a source that is not a finished
  run, or whose network (:data:`gmr.config.NETWORK_FIELDS`) differs from this run's."""
  if not config.fixed_allocation_from:
    return config
  src = fixed_allocation_source(config, workdir)
  fix = "finish that run first, or point --config.fixed_allocation_from at a finished run"
  try:
    with open(os.path.join(src, "results.json")) as f:
      res = json.load(f)
    with open(os.path.join(src, "config.json")) as f:
      src_config = json.load(f)
  except (OSError, ValueError):
    raise ConfigError("fixed_allocation_from", f"{src} is not a finished run (no readable "
                      "results.json and config.json)", fix) from None
  mats = res.get("allocations") or {}
  if not mats:
    raise ConfigError("fixed_allocation_from", f"{src}/results.json has no allocations",
                      "point it at a run of a method with an allocation (e.g. gumbel_matrix)")
  mine = workdir_lib.config_json(config)
  for f in config_schema.NETWORK_FIELDS:
    if src_config.get(f) != mine.get(f):
      raise ConfigError("fixed_allocation_from", f"{src} was trained with {f}="
                        f"{src_config.get(f)!r}, this run has {f}={mine.get(f)!r}",
                        f"set --config.{f} as in that run")
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.fixed_allocation = [mats[k] for k in sorted(mats, key=lambda k: int(k.rsplit("_", 1)[1]))]
  return out


class _QuietLibraryWriteErrors(logging.Filter):
  """Drops the error records orbax logs from its writer threads: the same failure reaches the
  run as an exception, reported in one line (:func:`gmr.workdir.write_failure`)."""

  def filter(self, record):
    return not (record.levelno >= logging.ERROR and "orbax" in record.pathname)


@contextlib.contextmanager
def machine_failures(workdir: str):
  """A write the machine refuses (full disk, read-only or removed workdir, ...) anywhere in
  the run becomes one :class:`WorkdirError` line naming the path and the fix; the checkpoints
  written before it stay (orbax renames a complete checkpoint into place). Library threads'
  reports of the same failure (orbax's error log and asyncio callbacks, tensorboardX's writer
  thread) are held while the run goes on, and shown only when the run did not fail on a
  write."""
  quiet = _QuietLibraryWriteErrors()
  absl_logger = logging.getLogger("absl")
  absl_logger.addFilter(quiet)
  prev_hook, prev_unraisable = threading.excepthook, sys.unraisablehook
  # other threads' exceptions, and those raised where nothing can catch them (asyncio
  # callbacks of orbax's writers): shown at the end unless the run failed on a write
  held, held_unraisable = [], []
  threading.excepthook, sys.unraisablehook = held.append, held_unraisable.append
  failed_write = False
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except  (classified; others re-raised)
    err = workdir_lib.write_failure(e, workdir)
    if err is None:
      raise
    failed_write = True
    raise err from None
  finally:
    threading.excepthook, sys.unraisablehook = prev_hook, prev_unraisable
    absl_logger.removeFilter(quiet)
    if not failed_write:
      for args in held:
        prev_hook(args)
      for args in held_unraisable:
        prev_unraisable(args)


class _Start(NamedTuple):
  """Where a run starts: from scratch (``resumed_from`` None) or a checkpoint."""
  state: Optional[step.TrainState]
  round: int
  best: Optional[dict]
  resumed_from: Optional[int]
  wall_before: float  # training seconds of the earlier starts
  log_carry: Optional[dict]
  changes: List[dict]  # the optimizer changes, with the round of a change made now
  reset: Optional[List[str]]  # continued under a changed optimizer: moments started afresh


def _run(config, workdir: str, quiet: bool = False, stream=None, fresh: bool = False,
         extend: bool = False, change_optimizer: bool = False,
         accept_environment_change: bool = False, built=None) -> dict:
  """Train and evaluate ``config``; write everything under ``workdir``; return results.

  Rerunning on an interrupted workdir resumes from its last checkpoint (bit-exact on CPU);
  a finished workdir returns its results without training; a workdir of another config is
  refused (``fresh=True`` moves the old run to ``previous_<n>/``), except that ``extend=True``
  continues a run of fewer ``num_rounds`` (same config otherwise) from its last checkpoint:
  the same numbers as one run of this length (nothing else depends on ``num_rounds``), and
  ``change_optimizer=True`` continues it from its last intact checkpoint under other
  :data:`gmr.optim.OPTIMIZER_FIELDS` values (a diverged run with a lower learning rate):
  parameters, step and the optimizer's moments carry over, the change and its round are
  recorded in ``optimizer_changes.jsonl`` and ``results.json``; every other change is refused.
  SIGTERM writes a checkpoint and raises :class:`Preempted`. ``built``: ``(config,
  setup)`` as :func:`run` built them before the data (:func:`built_config`, then
  :func:`gmr.train.setup_for`).
  """
  member = Member(config, workdir, quiet, stream, built)
  done = member.prepare(fresh, extend, change_optimizer, accept_environment_change)
  if done is not None:
    return done
  suite = member.load_suite()
  member.start(suite)
  try:
    with member.saver.on_sigterm():
      try:
        (out,) = train_lib.train_population([member.lane()], suite, setup=member.setup)
      except train_lib.NonFiniteError as e:
        raise member.saver.non_finite(e) from None
  finally:
    member.close()
  return member.finish(out)


class Member:
  """One run's side of the workdir, in the order a run takes it: :meth:`prepare` the workdir
  (or find it finished), :meth:`load_suite`, :meth:`start` (restore its checkpoint, open its
  event files), :meth:`lane` (what :func:`gmr.train.train_population` trains), :meth:`close`
  and :meth:`finish` (``results.json``). :func:`run` is one member; a population
  (:mod:`gmr.population`) is several, trained by one program. ``population``: ``{"member":
  i, "size": P}`` for a member of a population (recorded in its environment and results)."""

  def __init__(self, config, workdir: str, quiet: bool = False, stream=None, built=None,
               population: Optional[dict] = None):
    self.config, self.workdir, self.built, self.population = config, workdir, built, population
    self.stream = stream or sys.stdout
    # multi-host: process 0 owns the workdir's files; every process trains and checkpoints
    self.primary = jax.process_index() == 0
    self.quiet = quiet or not self.primary
    self.had_config = os.path.exists(os.path.join(workdir, "config.json"))
    self.suite = self.setup = self.start_ = self.saver = self.tb = self.mf = self.ckpt = None
    self.t0 = 0.0

  def prepare(self, fresh=False, extend=False, change_optimizer=False,
              accept_environment_change=False) -> Optional[dict]:
    """The workdir ready for this run (:func:`gmr.workdir.prepare`); its results if it is
    finished (said on the stream), else ``None``."""
    config, workdir = self.config, self.workdir
    done = (workdir_lib.prepare(config, workdir, fresh, extend, change_optimizer,
                                accept_environment_change, self.population)
            if self.primary else None)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      multihost_utils.sync_global_devices("gmr: workdir prepared")
      if not self.primary:
        done = workdir_lib.finished_results(config, workdir)
    if done is not None and not self.quiet:
      self.stream.write(f"already finished: {workdir}/results.json (nothing to do)\n")
    return done

  def undo_prepare(self) -> None:
    """Remove what :meth:`prepare` wrote in a workdir that held no run (a refusal after it
    leaves the workdir as it was)."""
    if self.primary and not self.had_config:
      for name in ("config.json", workdir_lib.ENVIRONMENT_FILE):
        if os.path.exists(os.path.join(self.workdir, name)):
          os.remove(os.path.join(self.workdir, name))

  def load_suite(self, suite=None):
    """The run's suite (``suite`` when the caller loaded it), checked against the batch size:
    what only the data tells is refused as bad input, leaving the workdir as it was."""
    config, workdir = self.config, self.workdir
    t_data = time.time()
    suite = data_lib.load_suite(config) if suite is None else suite
    try:
      schedule.check_batch_size(suite.train, int(config.batch_size))
    except ConfigError:
      self.undo_prepare()
      raise
    if not self.quiet:
      who = (f"member {self.population['member']} of {self.population['size']}, "
             if self.population else "")
      self.stream.write(f"gmr: {config.method} on {config.suite} ({suite.num_tasks} tasks), "
                        f"{config.num_rounds} rounds x batch {config.batch_size}, {who}seed "
                        f"{config.seed}, {jax.default_backend()} -> {workdir}\n")
      if time.time() - t_data > 1.0:
        self.stream.write(f"data ready in {time.time() - t_data:.1f}s\n")
      self.stream.flush()
    self.suite = suite
    return suite

  def start(self, suite, setup=None) -> None:
    """Restore the newest intact checkpoint (or start afresh), leave the workdir as that
    checkpoint left it, and open the event files. ``setup``: the network, method and optimizer
    built for this config and suite (default: the one :func:`run` built before the data, taken
    on for the suite)."""
    config, workdir, stream = self.config, self.workdir, self.stream
    self.ckpt = ckpt = checkpoint_lib.Checkpoints(workdir, keep=int(config.keep_checkpoints))
    built = self.built
    if setup is None:
      setup = (train_lib.make_setup(built_config(config, workdir), suite) if built is None else
               train_lib.setup_for(built[1], built[0], suite))
    self.setup = setup
    start = _restore(config, workdir, suite, setup, ckpt, self.primary and not self.had_config)
    if start.reset is not None and self.primary:  # continued under a changed optimizer
      workdir_lib.write_changes(workdir, start.changes)
    if not self.quiet:
      _report_start(start, ckpt, stream)
      if config.init_from and start.resumed_from is None:
        own = (" and the method's own parameters" if setup.method.learned else "")
        stream.write(f"backbone from {checkpoint_lib.source_checkpoint(config.init_from)}"
                     + (f", frozen (only the heads{own} learn)" if config.freeze_backbone
                        else ", trained further") + "\n")
    # the workdir as the checkpoint we start from left it: what a killed run wrote after it
    # (metric lines, best checkpoints) goes, and is written again, identical
    ckpt.keep_best_only((start.best or {}).get("round"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if self.primary:
      workdir_lib.truncate_metrics(metrics_path, start.round, config)
    self.t0 = time.time()
    self.start_ = start
    self.saver = _Saver(config, ckpt, start, self.t0, workdir)
    self.tb = logs.TensorBoard(workdir if self.primary else None)
    self.tb.hparams(workdir_lib.config_json(config))
    self.mf = open(metrics_path if self.primary else os.devnull, "a")

  def lane(self, on_chunk=None) -> train_lib.Lane:
    """What :func:`gmr.train.train_population` trains for this run (``on_chunk``: default the
    saver's, which ends the run on SIGTERM)."""
    config, start = self.config, self.start_
    return train_lib.Lane(
        config, _event_writer(self.mf, self.tb, config, self.suite,
                              None if self.quiet else self.stream),
        start.state, start.round, on_chunk or self.saver.on_chunk, start.best, start.log_carry,
        None if self.quiet else logs.ProgressLines(self.stream),
        (checkpoint_lib.source_model_params(config.init_from)
         if config.init_from and start.state is None else None))

  def close(self) -> None:
    for f in (self.mf, self.tb, self.ckpt):
      if f is not None:
        f.close()
    self.mf = self.tb = None

  def finish(self, out) -> dict:
    """Write ``results.json`` of the trained run (``out``: :func:`gmr.train.train`'s)."""
    config, workdir, start = self.config, self.workdir, self.start_
    setup, state, final, best = out
    wall = start.wall_before + time.time() - self.t0  # summed over every start of a resumed run
    results = _results(config, workdir, self.suite, setup, state, final, best, self.ckpt, start,
                       start.changes, wall)
    if self.population:
      results["population"] = dict(self.population)
    if self.primary:
      self.saver.check_workdir()
      workdir_lib.write_json_atomic(os.path.join(workdir, "results.json"), results)
    if not self.quiet:
      acc = results["final"].get("accuracy", {}).get("mean")
      self.stream.write(f"done in {wall:.1f}s: test loss {results['final']['loss']['mean']:.4f}"
                        + (f", accuracy {acc:.4f}" if acc is not None else "")
                        + f", active {results['active_fraction']:.2%} -> {workdir}/results.json\n")
    return results


def _restore(config, workdir: str, suite, setup, ckpt, written_now: bool) -> _Start:
  """The newest intact checkpoint of this run (or of the run before a recorded optimizer
  change, whose moments then carry over), or a start from scratch. ``written_now``: the
  ``config.json`` in the workdir was written by this start (removed again when a checkpoint
  of another run is found)."""
  changes = read_changes(workdir)
  if ckpt.latest_round() is None:
    return _Start(None, 0, None, None, 0.0, None, changes, None)
  like = train_lib.init_state(setup, step.make_keys(config.seed).init)
  identity = run_identity(config)
  earlier = workdir_lib.earlier_configs(config, changes)  # identity -> config, before each

  def accept(step, meta):  # before its state is read: another run's shapes are no damage
    if meta.get("run_identity", identity) not in earlier:
      if written_now:
        os.remove(os.path.join(workdir, "config.json"))
      raise WorkdirError(f"{workdir}: checkpoint {ckpt.last_dir}/{step} belongs to another "
                         "run (its config differs from this one; config.json was changed or "
                         "removed); use another --workdir, or --fresh to move it aside")

  def like_for(meta):
    c = earlier[meta.get("run_identity", identity)]
    return like if c is config else train_lib.init_state(
        train_lib.make_setup(built_config(c, workdir), suite), step.make_keys(c.seed).init)
  found = ckpt.restore_latest_intact(
      like_for, lambda line: print(line, file=sys.stderr, flush=True), accept)
  if found is None:
    return _Start(None, 0, None, None, 0.0, None, changes, None)
  last, restored, meta = found
  state = jax.tree_util.tree_map(jnp.asarray, restored)  # a TrainState, like ``like``
  start = int(meta["round"])
  reset = None
  if meta.get("run_identity", identity) != identity:  # continued under a changed optimizer
    opt_state, reset = optim_lib.carry_over_state(state.opt_state, like.opt_state)
    state = state.replace(opt_state=opt_state)
    changes = [dict(c, round=start) if c["round"] is None else c for c in changes]
  return _Start(state, start, meta.get("best"), last, float(meta.get("wall_time_s", 0.0)),
                meta.get("log_carry"), changes, list(reset) if reset is not None else None)


def _report_start(start: _Start, ckpt, stream) -> None:
  if start.reset is not None:
    stream.write(f"optimizer changed at round {start.round}: " + "; ".join(
        f"{k} {a} -> {b}" for c in start.changes if c["round"] == start.round
        for k, (a, b) in c["changed"].items())
        + (f" (state started afresh for: {', '.join(start.reset)})" if start.reset else "")
        + "\n")
  if start.resumed_from is not None:
    stream.write(f"resuming from {ckpt.last_dir}/{start.resumed_from} (round {start.round})\n")


@contextlib.contextmanager
def sigterm_noted(note):
  """A context in which SIGTERM calls ``note(signum)`` (in the main thread only; elsewhere
  signals cannot be caught) instead of ending the process."""
  prev = None
  if threading.current_thread() is threading.main_thread():
    prev = signal.signal(signal.SIGTERM, lambda signum, frame: note(signum))
  try:
    yield
  finally:
    if prev is not None:
      signal.signal(signal.SIGTERM, prev)


class _Saver:
  """Checkpoints as the loop asks (``on_chunk``): regular ones every ``checkpoint_every``
  rounds and at the end, the best one by ``select_by``, and one when SIGTERM arrived (then
  :class:`Preempted` ends the run)."""

  def __init__(self, config, ckpt, start: _Start, t0: float, workdir: str):
    self.config, self.ckpt, self.start, self.t0 = config, ckpt, start, t0
    self.identity = run_identity(config)
    self.signal = None
    self.good_round = start.resumed_from  # the last checkpoint written (or resumed from)
    self.workdir = workdir
    self.folder = self._folder()

  def _folder(self):
    st = os.stat(self.workdir)
    return st.st_dev, st.st_ino

  def check_workdir(self) -> None:
    """Raise :class:`WorkdirError` when the workdir was removed (or replaced) since the run
    started: appends to its open files would go nowhere, and a checkpoint saved now would
    recreate the folder without the run's other files."""
    try:
      same = self._folder() == self.folder
    except OSError:
      same = False
    if not same:
      raise WriteFailure(f"{self.workdir}: was removed while the run was going on (its files "
                         "are gone); rerun the same command to start again, or restore the "
                         "workdir (launch.park restore) and rerun to resume")

  def on_sigterm(self):
    """A context in which SIGTERM is noted (:func:`sigterm_noted`) and acted on after the
    current device call."""
    return sigterm_noted(lambda signum: setattr(self, "signal", signum))

  def on_chunk(self, r, st, best_now, evaluated, carry):
    """:meth:`save_chunk`, then :class:`Preempted` if SIGTERM arrived."""
    self.save_chunk(r, st, best_now, evaluated, carry)
    self.stop_if_signalled(r)

  def stop_if_signalled(self, r: int) -> None:
    if self.signal is not None:
      raise Preempted(f"stopped by signal {self.signal} at round {r}; checkpoint "
                      f"{self.ckpt.last_dir}/{r} written; rerun the same command to resume")

  def save_chunk(self, r, st, best_now, evaluated, carry):
    """The checkpoints due after round ``r``: the best one, the regular one (every
    ``checkpoint_every`` rounds, at the end, and when SIGTERM arrived)."""
    self.check_workdir()
    every = int(self.config.checkpoint_every)
    meta = {"round": r, "best": {k: v for k, v in (best_now or {}).items() if k != "new"} or None,
            "wall_time_s": self.start.wall_before + time.time() - self.t0, "log_carry": carry,
            "run_identity": self.identity}
    if best_now and best_now.get("new") and evaluated:
      meta["best"]["checkpoint"] = self.ckpt.save(r, st, meta, best=True)
    if (every and r % every == 0) or r == self.config.num_rounds or self.signal is not None:
      self.ckpt.save(r, st, meta)
      self.ckpt.keep_best_only((best_now or {}).get("round"))
      self.good_round = r

  def non_finite(self, e: train_lib.NonFiniteError) -> train_lib.NonFiniteError:
    """``e`` with what the workdir keeps and how to continue."""
    good = self.good_round
    where = (f"the last good checkpoint ({self.ckpt.last_dir}/{good}) is kept"
             if good is not None else "no checkpoint had been written yet")
    how = ("continue from it with a lower learning rate or clipping: rerun with e.g. "
           "--config.learning_rate=<lower> or --config.clip_norm=1 and --change_optimizer"
           if good is not None else "lower the learning rate or enable clip_norm")
    return train_lib.NonFiniteError(e.step, e.task, e.what, f"{where}; {how}")


def _event_writer(mf, tb, config, suite, stream):
  """``on_event`` of a run: each event a line of ``metrics.jsonl`` (``mf``), TensorBoard
  scalars, and a progress line on ``stream`` (``None``: quiet). The temperature (only a method
  that has one logs it) goes where the log event has it."""
  def on_event(ev):
    workdir_lib.append_line(mf, {"kind": ev.kind, **ev.data})
    if ev.kind == "log":
      train = {"loss": ev.data["train_loss"], "steps_per_s": ev.data["steps_per_s"],
               "penalty": ev.data["penalty"]}
      if "temperature" in ev.data:
        train["temperature"] = ev.data["temperature"]
      tb.scalars(ev.data["step"], "train", train)
      if stream is not None:
        logs.progress_line(ev.data, config.num_rounds, stream)
    elif ev.kind == "alloc":
      tb.allocation(ev.data["step"], ev.data, suite.task_names)
    else:
      tb.scalars(ev.data["step"], "eval", {k: v for k, v in ev.data.items()
                                           if k in ("test", "validation")})
  return on_event


def _environment_record(workdir: str) -> dict:
  """``results.json``'s ``environment`` (:func:`gmr.workdir.environment` of the run's last
  start) and, when a start accepted another environment, ``environment_changes``."""
  rec = workdir_lib.read_environment(workdir)
  out = {"environment": rec["environment"]}
  if rec["changes"]:
    out["environment_changes"] = rec["changes"]
  return out


def _results(config, workdir: str, suite, setup, state, final, best, ckpt, start: _Start,
             changes, wall: float) -> dict:
  """``results.json``: the final (or ``select_by``'s best) test numbers, the learned
  allocation, where the numbers' checkpoint is, how the run was made."""
  results = {
      "method": config.method,
      "seed": config.seed,
      "suite": config.suite,
      "arch": config.arch,
      "tasks": list(suite.task_names),
      "task_groups": suite.info.get("groups"),
      "task_clusters": suite.info.get("clusters"),
      "rounds": int(config.num_rounds),
      "steps": int(state.step),
      "wall_time_s": wall,
      "resumed_from_round": start.round if start.resumed_from is not None else None,
      "final": final["test"],
      "checkpoint": os.path.join(ckpt.last_dir, str(int(config.num_rounds))),
      "backend": jax.default_backend(),
      "code": workdir_lib.code_version(),
      **_environment_record(workdir),
      **evaluate.allocation_summary(setup, state.params, suite.task_names),
  }
  if config.fixed_allocation_from:
    results["fixed_allocation_from"] = fixed_allocation_source(config, workdir)
  if config.init_from:
    results["init_from"] = {"workdir": config.init_from, "frozen": bool(config.freeze_backbone),
                            "checkpoint": checkpoint_lib.source_checkpoint(config.init_from)}
  if changes:
    results["optimizer_changes"] = [{"round": c["round"], "changed": c["changed"]}
                                    for c in changes]
  if "validation" in final:
    results["final_validation"] = final["validation"]
  if best is not None:  # the reported numbers are those of the best checkpoint
    results["last"] = results["final"]
    results["final"] = best["evaluation"]["test"]
    results["final_validation"] = best["evaluation"].get("validation")
    results["selected_by"] = {"metric": config.select_by, "value": best["value"],
                              "round": best["round"]}
    if schedule.on_eval_grid(config, best["round"]):  # else: the last round's own state
      results["checkpoint"] = best.get("checkpoint") or os.path.join(
          ckpt.best_dir, str(best["round"]))
      best_state, _ = checkpoint_lib.load(workdir, state, best=True)
      results.update(evaluate.allocation_summary(
          setup, jax.tree_util.tree_map(jnp.asarray, best_state).params, suite.task_names))
  return results
