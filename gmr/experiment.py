"""Running one experiment into a workdir: config.json, metrics.jsonl, results.json (the I/O edge).

``run(config, workdir)`` is what ``python -m experiments.main`` calls; notebooks can call
``gmr.train.train(config, suite)`` directly and skip the files.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import sys
import threading
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from gmr import checkpoint as checkpoint_lib
from gmr import config as config_schema
from gmr import data as data_lib
from gmr import logs
from gmr import optim as optim_lib
from gmr import train as train_lib
from gmr import validate


def _jsonable(x):
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x


def write_json_atomic(path: str, obj) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(_jsonable(obj), f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


def append_line(f, obj) -> None:
  """One JSON line to the open file ``f``, flushed (a kill cuts at most this line)."""
  f.write(json.dumps(_jsonable(obj)) + "\n")
  f.flush()


class WorkdirError(Exception):
  """A workdir that cannot take this run: ``<workdir>: <problem>; <fix>``."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was written."""


# A workdir whose config.json lacks a field of :data:`gmr.config.UPGRADES`, while this run has it
# at that value, holds the same run (it resumes or counts as finished); any other value differs.
# ``layout`` only changes how the same function is computed (equal up to float rounding).
ADDED_FIELDS = config_schema.UPGRADES


# Fields that change how a run is computed or stored on this machine, never its numbers: they
# may differ between the starts of one run (not part of its identity).
MACHINE_FIELDS = ("compilation_cache_dir",)


def _config_diff(a: dict, b: dict, prefix="") -> list:
  """Dotted keys where the stored config ``a`` and this run's ``b`` differ."""
  keys = sorted(set(a) | set(b))
  out = []
  for k in keys:
    if not prefix and k in MACHINE_FIELDS:
      continue
    if not prefix and k not in a and k in ADDED_FIELDS and b.get(k) == ADDED_FIELDS[k]:
      continue
    va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
    if isinstance(va, dict) and isinstance(vb, dict):
      out += _config_diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}")
  return out


def _config_json(config) -> dict:
  """The config as ``config.json`` stores it (JSON types, sorted keys)."""
  return json.loads(json.dumps(_jsonable(config.to_dict()), sort_keys=True))


CHANGES_FILE = "optimizer_changes.jsonl"
_RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "checkpoints", "checkpoints_best",
              "tb", CHANGES_FILE)


def read_changes(workdir: str) -> list:
  """The optimizer changes recorded in ``workdir`` (``--change_optimizer``), oldest first: dicts
  ``{"round": <the checkpoint's round it continued from, None until then>, "changed":
  {field: [old, new]}, "from_identity": ..., "to_identity": ...}``."""
  path = os.path.join(workdir, CHANGES_FILE)
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue  # a line cut by a kill: its change was not made yet (config.json comes after)
  return out


def _write_changes(workdir: str, changes: list) -> None:
  path = os.path.join(workdir, CHANGES_FILE)
  with open(path + ".tmp", "w") as f:
    for c in changes:
      f.write(json.dumps(c, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)


def _change_optimizer(workdir: str, old: dict, cfg: dict, diff: list, extend: bool) -> None:
  """Record a continuation under other optimizer settings, or refuse any other change."""
  other = [k for k in diff if k not in optim_lib.OPTIMIZER_FIELDS and k != "num_rounds"]
  if other or ("num_rounds" in diff and not extend):
    shown = ", ".join((other or ["num_rounds"])[:5])
    raise WorkdirError(
        f"{workdir}: --change_optimizer continues a run under other optimizer settings only "
        f"({', '.join(optim_lib.OPTIMIZER_FIELDS)}); this config also differs in {shown}; "
        + ("add --extend to also continue it to more rounds" if not other else
           "use another --workdir, or --fresh to start again"))
  n_old, n_new = int(old.get("num_rounds", 0)), int(cfg["num_rounds"])
  done = os.path.join(workdir, "results.json")
  if n_new < n_old or (os.path.exists(done) and n_new == n_old):
    raise WorkdirError(f"{workdir}: the run is finished at num_rounds={n_old}; a changed "
                       "optimizer continues an unfinished run, or a finished one to more "
                       "rounds with --extend and a larger --config.num_rounds")
  if os.path.exists(done):
    os.replace(done, os.path.join(workdir, f"results_round_{n_old}.json"))
  rec = {"round": None, "changed": {k: [old.get(k), cfg.get(k)] for k in diff
                                    if k != "num_rounds"},
         "from_identity": _identity(old), "to_identity": _identity(cfg)}
  changes = read_changes(workdir)
  if not changes or {k: v for k, v in changes[-1].items() if k != "round"} != {
      k: v for k, v in rec.items() if k != "round"}:  # not already recorded by a killed start
    _write_changes(workdir, changes + [rec])
  write_json_atomic(os.path.join(workdir, "config.json"), cfg)


def _prepare_workdir(config, workdir: str, fresh: bool, extend: bool = False,
                     change_optimizer: bool = False):
  """Refuse a workdir holding another config (``fresh`` moves that run aside instead);
  return the finished results if this very run is already done. ``extend``: a run whose
  config differs only in a smaller ``num_rounds`` is continued to this ``num_rounds`` (its
  results file is kept as ``results_round_<n>.json``). ``change_optimizer``: a run whose
  config differs in :data:`gmr.optim.OPTIMIZER_FIELDS` (and, with ``extend``, a larger
  ``num_rounds``) is continued under the new settings; the change is recorded in
  ``optimizer_changes.jsonl``."""
  os.makedirs(workdir, exist_ok=True)
  cfg = _config_json(config)
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError):
      old = {"<unreadable config.json>": True}
    diff = _config_diff(old, cfg)
    if change_optimizer and diff and not fresh and diff != ["num_rounds"]:
      _change_optimizer(workdir, old, cfg, diff, extend)
      return None
    if diff == ["num_rounds"] and not fresh:
      n_old, n_new = int(old["num_rounds"]), int(cfg["num_rounds"])
      if not extend or n_new < n_old:
        how = ("pass --extend to continue it to this num_rounds" if n_new > n_old else
               "a run can be extended, never shortened")
        raise WorkdirError(f"{workdir}: holds a run of num_rounds={n_old} (this one: {n_new}); "
                           f"{how}, or use another --workdir, or --fresh to start again")
      done = os.path.join(workdir, "results.json")
      if os.path.exists(done):  # kept: the shorter run's numbers stay readable
        os.replace(done, os.path.join(workdir, f"results_round_{n_old}.json"))
      write_json_atomic(path, cfg)
      return None
    if diff and not fresh:
      shown = ", ".join(diff[:5]) + (" ..." if len(diff) > 5 else "")
      raise WorkdirError(f"{workdir}: holds a run with a different config (differs in {shown}); "
                         "use another --workdir, or pass --fresh to move that run to "
                         f"{workdir}/previous_<n>/ and start again")
    if diff or fresh:
      n = 0
      while os.path.exists(os.path.join(workdir, f"previous_{n}")):
        n += 1
      dest = os.path.join(workdir, f"previous_{n}")
      os.makedirs(dest)
      for name in _RUN_FILES:
        if os.path.exists(os.path.join(workdir, name)):
          os.replace(os.path.join(workdir, name), os.path.join(dest, name))
    elif os.path.exists(os.path.join(workdir, "results.json")):
      with open(os.path.join(workdir, "results.json")) as f:
        return json.load(f)
  write_json_atomic(path, cfg)
  return None


def _finished_results(config, workdir: str):
  """The results of ``workdir`` if it holds this very config, finished (else ``None``)."""
  cfg = _config_json(config)
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      same = not _config_diff(json.load(f), cfg)
    with open(os.path.join(workdir, "results.json")) as f:
      return json.load(f) if same else None
  except (OSError, json.JSONDecodeError):
    return None


def _truncate_metrics(path: str, last_round: int, config):
  """Drop metric lines after ``last_round`` (written after the checkpoint we resume from), and
  make an evaluation line at ``last_round`` what this schedule evaluates there (a shorter run
  continued with ``--extend`` evaluated every split at its end)."""
  if not os.path.exists(path):
    return
  keep = []
  splits = train_lib.evaluated_splits(config, last_round)
  with open(path) as f:
    for line in f:
      try:
        d = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill
      if d.get("round", 0) > last_round:
        continue
      if d.get("kind") == "alloc" and d["round"] == last_round and not train_lib.history_at(
          config, last_round):
        continue
      if d.get("kind") == "eval" and d["round"] == last_round:
        if not splits:
          continue
        d = {k: v for k, v in d.items() if k not in ("test", "validation") or k in splits}
        line = json.dumps(d) + "\n"
      keep.append(line)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(keep)
  os.replace(tmp, path)


def _earlier_configs(config, changes: list) -> dict:
  """``{run identity: config}`` of this run and of the run before each recorded optimizer
  change (the checkpoints a workdir may hold), undoing the changes newest first."""
  out, c = {run_identity(config): config}, config
  for rec in reversed(changes):
    c = c.copy_and_resolve_references()
    with c.unlocked():
      for k, (before, _) in rec["changed"].items():
        c[k] = before
    out.setdefault(rec["from_identity"], c)
  return out


def run_identity(config) -> str:
  """The identity of a run, saved in each of its checkpoints: a hash of its config without
  ``num_rounds`` (``--extend`` continues the same run) and without fields added later at the
  values that reproduce runs made before them (:data:`ADDED_FIELDS`)."""
  return _identity(_config_json(config))


def _identity(cfg: dict) -> str:
  cfg = dict(cfg)
  cfg.pop("num_rounds", None)
  for k in MACHINE_FIELDS:
    cfg.pop(k, None)
  for k, v in ADDED_FIELDS.items():
    if cfg.get(k) == v:
      cfg.pop(k)
  return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


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
        extend: bool = False, change_optimizer: bool = False) -> dict:
  """Train and evaluate ``config`` into ``workdir`` (see :func:`_run`), holding the workdir's
  lock: a second process on the same workdir is refused with :class:`WorkdirError`."""
  validate.validate(config)
  use_compilation_cache(config.compilation_cache_dir)  # before anything compiles
  train_lib.check_structure(config, *data_lib.describe(config))
  data_lib.check_data_available(config)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"{workdir}: is a file, not a directory; give a directory as --workdir")
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return _run(config, workdir, quiet, stream, fresh, extend, change_optimizer)
  with open(os.path.join(workdir, ".lock"), "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirError(f"{workdir}: another gmr process is running in it; wait for it to "
                         "end, or use another --workdir") from None
    return _run(config, workdir, quiet, stream, fresh, extend, change_optimizer)


def _run(config, workdir: str, quiet: bool = False, stream=None, fresh: bool = False,
         extend: bool = False, change_optimizer: bool = False) -> dict:
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
  SIGTERM writes a checkpoint and raises :class:`Preempted`.
  """
  stream = stream or sys.stdout
  # multi-host: process 0 owns the workdir's files; every process trains and checkpoints
  primary = jax.process_index() == 0
  quiet = quiet or not primary
  had_config = os.path.exists(os.path.join(workdir, "config.json"))
  done = _prepare_workdir(config, workdir, fresh, extend, change_optimizer) if primary else None
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("gmr: workdir prepared")
    if not primary:
      done = _finished_results(config, workdir)
  if done is not None:
    if not quiet:
      stream.write(f"already finished: {workdir}/results.json (nothing to do)\n")
    return done
  if not quiet:
    n_tasks = data_lib.describe(config)[0]
    stream.write(f"gmr: {config.method} on {config.suite} ({n_tasks} tasks), "
                 f"{config.num_rounds} rounds x batch {config.batch_size}, seed {config.seed}, "
                 f"{jax.default_backend()} -> {workdir}\n")
    stream.flush()
  t_data = time.time()
  suite = data_lib.load_suite(config)
  if not quiet and time.time() - t_data > 1.0:
    stream.write(f"data ready in {time.time() - t_data:.1f}s\n")
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  ckpt = checkpoint_lib.Checkpoints(workdir, keep=int(config.keep_checkpoints))
  state, start, best, resumed_from, wall_before, log_carry = None, 0, None, None, 0.0, None
  found = None
  changes = read_changes(workdir)
  setup = train_lib.make_setup(config, suite)  # built once: restore template and training
  if ckpt.latest_round() is not None:
    like = train_lib.init_state(setup, train_lib.make_keys(config.seed).init)
    identity = run_identity(config)
    earlier = _earlier_configs(config, changes)  # identity -> config, before each change

    def accept(step, meta):  # before its state is read: another run's shapes are no damage
      if meta.get("run_identity", identity) not in earlier:
        if primary and not had_config:  # the config.json just written is not this workdir's
          os.remove(os.path.join(workdir, "config.json"))
        raise WorkdirError(f"{workdir}: checkpoint {ckpt.last_dir}/{step} belongs to another "
                           "run (its config differs from this one; config.json was changed or "
                           "removed); use another --workdir, or --fresh to move it aside")

    def like_for(meta):
      c = earlier[meta.get("run_identity", identity)]
      return like if c is config else train_lib.init_state(
          train_lib.make_setup(c, suite), train_lib.make_keys(c.seed).init)
    found = ckpt.restore_latest_intact(
        like_for, lambda line: print(line, file=sys.stderr, flush=True), accept)
  if found is not None:
    last, restored, meta = found
    state = jax.tree_util.tree_map(jnp.asarray, restored)  # a TrainState, like ``like``
    start, best, resumed_from = int(meta["round"]), meta.get("best"), last
    wall_before = float(meta.get("wall_time_s", 0.0))  # training time of the earlier starts
    log_carry = meta.get("log_carry")
    if meta.get("run_identity", identity) != identity:  # continued under a changed optimizer
      opt_state, reset = optim_lib.carry_over_state(state.opt_state, like.opt_state)
      state = state.replace(opt_state=opt_state)
      changes = [dict(c, round=start) if c["round"] is None else c for c in changes]
      if primary:
        _write_changes(workdir, changes)
      if not quiet:
        stream.write(f"optimizer changed at round {start}: " + "; ".join(
            f"{k} {a} -> {b}" for c in changes if c["round"] == start
            for k, (a, b) in c["changed"].items())
            + (f" (state started afresh for: {', '.join(reset)})" if reset else "") + "\n")
    if not quiet:
      stream.write(f"resuming from {ckpt.last_dir}/{last} (round {start})\n")
  # the workdir as the checkpoint we start from left it: what a killed run wrote after it
  # (metric lines, best checkpoints) goes, and is written again, identical
  ckpt.keep_best_only((best or {}).get("round"))
  if primary:
    _truncate_metrics(metrics_path, start, config)
  tb = logs.TensorBoard(workdir if primary else None)
  tb.hparams(_config_json(config))
  t0 = time.time()
  every = int(config.checkpoint_every)
  stop = {"signal": None}
  good = {"round": resumed_from}

  def on_sigterm(signum, frame):
    del frame
    stop["signal"] = signum

  prev_handler = None
  if threading.current_thread() is threading.main_thread():
    prev_handler = signal.signal(signal.SIGTERM, on_sigterm)

  identity = run_identity(config)

  def on_chunk(r, st, best_now, evaluated, carry):
    meta = {"round": r, "best": {k: v for k, v in (best_now or {}).items() if k != "new"} or None,
            "wall_time_s": wall_before + time.time() - t0, "log_carry": carry,
            "run_identity": identity}
    if best_now and best_now.get("new") and evaluated:
      meta["best"]["checkpoint"] = ckpt.save(r, st, meta, best=True)
    if (every and r % every == 0) or r == config.num_rounds or stop["signal"] is not None:
      ckpt.save(r, st, meta)
      ckpt.keep_best_only((best_now or {}).get("round"))
      good["round"] = r
    if stop["signal"] is not None:
      raise Preempted(f"stopped by signal {stop['signal']} at round {r}; checkpoint "
                      f"{ckpt.last_dir}/{r} written; rerun the same command to resume")

  try:
    with open(metrics_path if primary else os.devnull, "a") as mf:
      def on_event(ev):
        append_line(mf, {"kind": ev.kind, **ev.data})
        if ev.kind == "log":
          tb.scalars(ev.data["step"], "train", {
              "loss": ev.data["train_loss"], "temperature": ev.data["temperature"],
              "steps_per_s": ev.data["steps_per_s"], "penalty": ev.data["penalty"]})
          if not quiet:
            logs.progress_line(ev.data, config.num_rounds, stream)
        elif ev.kind == "alloc":
          tb.allocation(ev.data["step"], ev.data, suite.task_names)
        else:
          tb.scalars(ev.data["step"], "eval", {k: v for k, v in ev.data.items()
                                               if k in ("test", "validation")})

      try:
        setup, state, final, best = train_lib.train(
            config, suite, on_event, state=state, start_round=start, on_chunk=on_chunk,
            best=best, log_carry=log_carry,
            on_progress=None if quiet else logs.ProgressLines(stream), setup=setup)
      except train_lib.NonFiniteError as e:
        where = (f"the last good checkpoint ({ckpt.last_dir}/{good['round']}) is kept"
                 if good["round"] is not None else "no checkpoint had been written yet")
        how = ("continue from it with a lower learning rate or clipping: rerun with e.g. "
               "--config.learning_rate=<lower> or --config.clip_norm=1 and --change_optimizer"
               if good["round"] is not None else "lower the learning rate or enable clip_norm")
        raise train_lib.NonFiniteError(e.step, e.task, e.what, f"{where}; {how}") from None
  finally:
    tb.close()
    ckpt.close()
    if prev_handler is not None:
      signal.signal(signal.SIGTERM, prev_handler)
  wall = wall_before + time.time() - t0  # summed over every start of a resumed run
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
      "resumed_from_round": start if resumed_from is not None else None,
      "final": final["test"],
      "checkpoint": os.path.join(ckpt.last_dir, str(int(config.num_rounds))),
      "backend": jax.default_backend(),
      **train_lib.allocation_summary(setup, state.params, suite.task_names),
  }
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
    if train_lib.on_eval_grid(config, best["round"]):  # else: the last round's own state
      results["checkpoint"] = best.get("checkpoint") or os.path.join(
          ckpt.best_dir, str(best["round"]))
      best_state, _ = checkpoint_lib.load(workdir, state, best=True)
      results.update(train_lib.allocation_summary(
          setup, jax.tree_util.tree_map(jnp.asarray, best_state).params, suite.task_names))
  if primary:
    write_json_atomic(os.path.join(workdir, "results.json"), results)
  if not quiet:
    acc = results["final"].get("accuracy", {}).get("mean")
    stream.write(f"done in {wall:.1f}s: test loss {results['final']['loss']['mean']:.4f}"
                 + (f", accuracy {acc:.4f}" if acc is not None else "")
                 + f", active {results['active_fraction']:.2%} -> {workdir}/results.json\n")
  return results
