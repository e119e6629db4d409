"""A run's workdir: what it holds and whether this run may use it.

``config.json`` (the run's config), ``metrics.jsonl`` (one JSON line per event),
``results.json`` (the finished run), ``optimizer_changes.jsonl`` (continuations under other
optimizer settings), checkpoints (:mod:`gmr.checkpoint`), ``tb/`` (:mod:`gmr.logs`). A run's
identity is a hash of its config; :func:`prepare` refuses a workdir of another run, and the
writes here are atomic (a temporary file renamed) or one flushed line, so a kill at any moment
leaves a workdir a rerun resumes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
from typing import NamedTuple, Optional

import numpy as np

from gmr import config as config_schema
from gmr import optim as optim_lib
from gmr import schedule


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


# A write that fails because of the machine, by errno: what to do about it.
_WRITE_FIXES = {
    errno.ENOSPC: "free space on its disk or use another --workdir, then rerun the same command",
    errno.EDQUOT: "free space within your quota or use another --workdir, then rerun the same "
                  "command",
    errno.EROFS: "make its file system writable or use another --workdir, then rerun the same "
                 "command",
    errno.EACCES: "give this user write access to it or use another --workdir, then rerun the "
                  "same command",
    errno.EPERM: "give this user write access to it or use another --workdir, then rerun the "
                 "same command",
    errno.EIO: "check the disk (an I/O error), then rerun the same command",
    errno.ENAMETOOLONG: "use a shorter --workdir path",
    errno.ENOTDIR: "a part of the path is a file; use another --workdir",
}
_STRERRORS = {os.strerror(n): n for n in _WRITE_FIXES}


def write_failure(error: BaseException, workdir: str):
  """A :class:`WriteFailure` of one line for ``error`` if it (or an exception it was raised
  from) is a write the machine refused: no space, a quota, a read-only file system, no
  permission, an I/O error, a path too long, or the workdir removed while the run went on;
  ``None`` for any other error. Libraries that write in threads (orbax, tensorstore) may carry
  the cause only in their message, which is read too."""
  seen, e = set(), error
  found = None
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and (e.errno in _WRITE_FIXES or e.errno == errno.ENOENT):
      found = (e.errno, e.filename)
      break
    text = str(e)
    hit = next((n for msg, n in _STRERRORS.items() if msg in text), None)
    if hit is not None:
      found = (hit, None)
      break
    e = e.__cause__ or e.__context__
  if found is None:
    return None
  code, filename = found
  if code == errno.ENOENT or not os.path.isdir(workdir):
    if os.path.isdir(workdir):
      return None  # a file missing inside an intact workdir: not the machine's doing
    return WriteFailure(f"{workdir}: was removed while the run was going on (its files are "
                        "gone); rerun the same command to start again, or restore the workdir "
                        "(launch.park restore) and rerun to resume")
  where = filename if isinstance(filename, str) and filename else workdir
  keep = "; its last checkpoint is kept" if os.path.isdir(os.path.join(workdir, "checkpoints")) else ""
  return WriteFailure(f"{where}: cannot be written ({os.strerror(code)}){keep}; "
                      f"{_WRITE_FIXES[code]}")


def make_workdir(workdir: str) -> None:
  """Create ``workdir`` (and its parents) for a run, or raise :class:`WorkdirError` with one
  line for every way the path cannot hold one: empty, not a directory (a file, a device, a
  broken symbolic link), a part of it a file, a name or path too long, inside another run's
  workdir, or a place this user or file system cannot write (read-only, no permission, no
  space). Nothing is written when it raises."""
  fix = "give a directory path as --workdir"
  if not workdir or not workdir.strip():
    raise WorkdirError(f"--workdir: is empty; {fix}")
  path = os.path.abspath(workdir)
  if os.path.islink(workdir) and not os.path.exists(workdir):
    raise WorkdirError(f"{workdir}: is a broken symbolic link (to {os.readlink(workdir)}); "
                       f"remove it or {fix}")
  if os.path.exists(path) and not os.path.isdir(path):
    kind = "a file" if os.path.isfile(path) else "a device or other special file"
    raise WorkdirError(f"{workdir}: is {kind}, not a directory; {fix}")
  try:
    name_max = os.pathconf("/", "PC_NAME_MAX")
    path_max = os.pathconf("/", "PC_PATH_MAX")
  except (OSError, ValueError):
    name_max, path_max = 255, 4096
  long_part = next((p for p in path.split(os.sep) if len(p.encode()) > name_max), None)
  if long_part is not None or len(path.encode()) >= path_max:
    raise WorkdirError(f"{workdir}: is too long for the file system (names up to {name_max} "
                       f"bytes, paths up to {path_max}); use a shorter --workdir path")
  here = os.path.dirname(path)
  while True:
    if os.path.exists(here) and not os.path.isdir(here):
      raise WorkdirError(f"{workdir}: {here} is a file, not a directory; {fix}")
    if os.path.isfile(os.path.join(here, "config.json")) and os.path.isfile(
        os.path.join(here, "metrics.jsonl")):
      raise WorkdirError(f"{workdir}: is inside the workdir of another run ({here}); use a "
                         "folder outside it")
    parent = os.path.dirname(here)
    if parent == here:
      break
    here = parent
  try:
    os.makedirs(path, exist_ok=True)
    probe = os.path.join(path, f".gmr-write-test-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("")
    os.remove(probe)
  except OSError as e:
    why = e.strerror or type(e).__name__
    how = _WRITE_FIXES.get(e.errno, "use another --workdir").split(", then rerun")[0]
    raise WorkdirError(f"{workdir}: cannot be used for a run ({why}); {how}") from None


def write_json_atomic(path: str, obj) -> None:
  """``obj`` as indented JSON (sorted keys) at ``path``, written to ``<path>.tmp`` and renamed:
  a kill leaves the old file or the new one, never a part."""
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


class WriteFailure(WorkdirError):
  """The machine refused a write of a running run (:func:`write_failure`); the process should
  end at once: library threads may still hold writes that fail too."""


# A workdir whose config.json lacks a field of :data:`gmr.config.UPGRADES`, while this run has it
# at that value, holds the same run (it resumes or counts as finished); any other value differs.
# ``layout`` only changes how the same function is computed (equal up to float rounding).
ADDED_FIELDS = config_schema.UPGRADES


# Fields that change how a run is computed or stored on this machine, never its numbers: they
# may differ between the starts of one run (not part of its identity).
MACHINE_FIELDS = ("compilation_cache_dir",)


def config_diff(a: dict, b: dict, prefix="") -> list:
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
      out += config_diff(va, vb, f"{prefix}{k}.")
    elif va != vb:
      out.append(f"{prefix}{k}")
  return out


def config_json(config) -> dict:
  """The config as ``config.json`` stores it (JSON types, sorted keys)."""
  return json.loads(json.dumps(_jsonable(config.to_dict()), sort_keys=True))


# ----------------------------------------------------------------------------- environment
ENVIRONMENT_FILE = "environment.json"

# What changes a run's numbers without being in its config: the process-wide jax settings and
# the backend. Recorded at a run's first start (``environment.json``), compared at every later
# start (resume, --extend, --change_optimizer) and refused when it differs.
# A workdir made before gmr recorded them holds a run made with these values.
ENVIRONMENT_BEFORE_RECORD = {"x64": False}


def environment(population: Optional[dict] = None) -> dict:
  """This process's settings that change a run's numbers and are not in its config:
  ``{"x64": jax_enable_x64, "default_matmul_precision": <str or None>, "prng_impl":
  jax_default_prng_impl, "threefry_partitionable": <bool>, "xla_flags": $XLA_FLAGS ("" when
  unset), "backend": jax.default_backend(), "population": population}``; ``population``
  (``{"member": i, "size": P}``, ``None`` for a run of its own): a member of a population
  (:mod:`gmr.population`) sums in the order of XLA's batched kernels, so it equals its own
  run only up to float rounding. gmr pins the dtype of every random draw and of
  the arrays it makes, but a run's arithmetic still follows these (float64 under x64, another
  matmul precision, other random bits, another compiler). JSON types; never raises."""
  import jax  # pylint: disable=g-import-not-at-top
  get = lambda name, default=None: getattr(jax.config, name, default)
  return {"x64": bool(get("jax_enable_x64", False)),
          "default_matmul_precision": (None if get("jax_default_matmul_precision") is None
                                       else str(get("jax_default_matmul_precision"))),
          "prng_impl": str(get("jax_default_prng_impl", "")),
          "threefry_partitionable": bool(get("jax_threefry_partitionable", False)),
          "xla_flags": os.environ.get("XLA_FLAGS", "").strip(),
          "backend": jax.default_backend(),
          "population": population}


def read_environment(workdir: str) -> dict:
  """What ``environment.json`` records: ``{"environment": <the environment the run continues
  in>, "changes": [{"from": ..., "to": ...}, ...] (accepted with
  --accept_environment_change)}``; for a run made before gmr recorded it, its environment is
  :data:`ENVIRONMENT_BEFORE_RECORD` and it has no changes."""
  try:
    with open(os.path.join(workdir, ENVIRONMENT_FILE)) as f:
      rec = json.load(f)
    return {"environment": dict(rec["environment"]), "changes": list(rec.get("changes", []))}
  except (OSError, json.JSONDecodeError, KeyError, TypeError):
    return {"environment": dict(ENVIRONMENT_BEFORE_RECORD), "changes": []}


def environment_diff(recorded: dict, now: dict) -> list:
  """``[(setting, recorded value, this process's value)]`` for every setting ``recorded``
  names whose value differs now (a setting it does not name is not compared)."""
  return [(k, v, now.get(k)) for k, v in sorted(recorded.items()) if now.get(k) != v]


def check_environment(workdir: str, accept_change: bool = False,
                      population: Optional[dict] = None) -> list:
  """Compare this process's :func:`environment` with the one ``workdir``'s run was made in
  (:func:`read_environment`).

  Returns the differences (``[]`` when none). Raises :class:`WorkdirError` naming the first
  difference unless ``accept_change`` (the run then continues here: :func:`record_environment`
  records the change)."""
  diff = environment_diff(read_environment(workdir)["environment"], environment(population))
  if diff and not accept_change:
    k, old, new = diff[0]
    more = f" (and {len(diff) - 1} more)" if len(diff) > 1 else ""
    raise WorkdirError(
        f"{workdir}: its run was made with {k}={old!r}, this process has {k}={new!r}{more}, "
        "which changes its numbers; rerun with the settings it was made with (e.g. "
        "JAX_ENABLE_X64, XLA_FLAGS, the jax platform as they were), or pass "
        "--accept_environment_change to continue it here (recorded in results.json), or use "
        "another --workdir")
  return diff


def record_environment(workdir: str, new_run: bool, population: Optional[dict] = None) -> None:
  """Record this process's :func:`environment` in ``workdir``: as the environment of a run
  that starts now (``new_run``), or, for a run that continues, as a change (when it differs
  from the recorded one, which :func:`check_environment` accepted)."""
  now = environment(population)
  rec = {"environment": now, "changes": []}
  if not new_run:
    rec = read_environment(workdir)
    if not environment_diff(rec["environment"], now):
      if os.path.exists(os.path.join(workdir, ENVIRONMENT_FILE)):
        return
    else:
      rec["changes"].append({"from": rec["environment"], "to": now})
    rec["environment"] = now
  write_json_atomic(os.path.join(workdir, ENVIRONMENT_FILE), rec)


CHANGES_FILE = "optimizer_changes.jsonl"
_RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "checkpoints", "checkpoints_best",
              "tb", CHANGES_FILE, ENVIRONMENT_FILE)


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


def write_changes(workdir: str, changes: list) -> None:
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
  n_old, n_new = int(old["num_rounds"]), int(cfg["num_rounds"])
  done = os.path.join(workdir, "results.json")
  if n_new < n_old or (os.path.exists(done) and n_new == n_old):
    raise WorkdirError(f"{workdir}: the run is finished at num_rounds={n_old}; a changed "
                       "optimizer continues an unfinished run, or a finished one to more "
                       "rounds with --extend and a larger --config.num_rounds")
  if os.path.exists(done):
    os.replace(done, os.path.join(workdir, f"results_round_{n_old}.json"))
  rec = {"round": None, "changed": {k: [old[k] if k in old else None,
                                        cfg[k] if k in cfg else None] for k in diff
                                    if k != "num_rounds"},
         "from_identity": identity_of(old), "to_identity": identity_of(cfg)}
  changes = read_changes(workdir)
  if not changes or {k: v for k, v in changes[-1].items() if k != "round"} != {
      k: v for k, v in rec.items() if k != "round"}:  # not already recorded by a killed start
    write_changes(workdir, changes + [rec])
  write_json_atomic(os.path.join(workdir, "config.json"), cfg)


def prepare(config, workdir: str, fresh: bool, extend: bool = False,
            change_optimizer: bool = False, accept_environment_change: bool = False,
            population: Optional[dict] = None):
  """Refuse a workdir holding another config (``fresh`` moves that run aside instead);
  return the finished results if this very run is already done. ``extend``: a run whose
  config differs only in a smaller ``num_rounds`` is continued to this ``num_rounds`` (its
  results file is kept as ``results_round_<n>.json``). ``change_optimizer``: a run whose
  config differs in :data:`gmr.optim.OPTIMIZER_FIELDS` (and, with ``extend``, a larger
  ``num_rounds``) is continued under the new settings; the change is recorded in
  ``optimizer_changes.jsonl``. A run that continues (resume, extend, changed optimizer) is
  refused when this process's :func:`environment` differs from the one it was made in, unless
  ``accept_environment_change`` (then recorded in ``environment.json``); before anything in
  the workdir is changed. ``population``: the run is that member of a population
  (:func:`environment`)."""
  os.makedirs(workdir, exist_ok=True)
  cfg = config_json(config)
  path = os.path.join(workdir, "config.json")
  continues = lambda: check_environment(workdir, accept_environment_change, population)
  if os.path.exists(path):
    try:
      with open(path) as f:
        old = json.load(f)
    except (OSError, json.JSONDecodeError):
      old = {"<unreadable config.json>": True}
    diff = config_diff(old, cfg)
    if change_optimizer and diff and not fresh and diff != ["num_rounds"]:
      continues()
      _change_optimizer(workdir, old, cfg, diff, extend)
      record_environment(workdir, new_run=False, population=population)
      return None
    if diff == ["num_rounds"] and not fresh:
      n_old, n_new = int(old["num_rounds"]), int(cfg["num_rounds"])
      if not extend or n_new < n_old:
        how = ("pass --extend to continue it to this num_rounds" if n_new > n_old else
               "a run can be extended, never shortened")
        raise WorkdirError(f"{workdir}: holds a run of num_rounds={n_old} (this one: {n_new}); "
                           f"{how}, or use another --workdir, or --fresh to start again")
      continues()
      done = os.path.join(workdir, "results.json")
      if os.path.exists(done):  # kept: the shorter run's numbers stay readable
        os.replace(done, os.path.join(workdir, f"results_round_{n_old}.json"))
      write_json_atomic(path, cfg)
      record_environment(workdir, new_run=False, population=population)
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
    else:  # the same run, interrupted: it resumes
      continues()
      write_json_atomic(path, cfg)
      record_environment(workdir, new_run=False, population=population)
      return None
  write_json_atomic(path, cfg)
  record_environment(workdir, new_run=True, population=population)
  return None


def finished_results(config, workdir: str):
  """The results of ``workdir`` if it holds this very config, finished (else ``None``;
  :func:`run_status`)."""
  return run_status(config, workdir).results


class RunStatus(NamedTuple):
  """What a workdir holds for a run of a given config (:func:`run_status`).

  ``state``: ``"missing"`` (no run there yet), ``"unfinished"`` (this run, started, no
  ``results.json`` yet: running, stopped or killed; a rerun resumes it), ``"finished"`` (this
  run, with its results) or ``"conflict"`` (a run of another config: its numbers are not this
  run's). ``diff``: the differing fields for a conflict (:func:`config_diff`), else ``[]``.
  ``results``: the ``results.json`` dict when finished, else None."""
  state: str
  diff: list
  results: Optional[dict] = None


def run_status(config, workdir: str) -> RunStatus:
  """Whether ``workdir`` holds the run of ``config``, finished or not, or another run: the one
  rule of what counts as finished (finished with this config), as :func:`prepare` applies it
  when the run starts. A stored config differing only in ``num_rounds`` is a conflict (another
  run until ``--extend`` continues it); an unreadable ``config.json`` differs in every field."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    if os.path.exists(os.path.join(workdir, "results.json")):
      return RunStatus("conflict", ["<no config.json>"])
    return RunStatus("missing", [])
  try:
    with open(path) as f:
      old = json.load(f)
  except (OSError, json.JSONDecodeError):
    old = {"<unreadable config.json>": True}
  diff = config_diff(old, config_json(config))
  if diff:
    return RunStatus("conflict", diff)
  try:
    with open(os.path.join(workdir, "results.json")) as f:
      return RunStatus("finished", [], json.load(f))
  except (OSError, json.JSONDecodeError):  # none yet (a kill before the rename leaves none)
    return RunStatus("unfinished", [])


def conflict_line(workdir: str, status: RunStatus) -> str:
  """One line naming a workdir that holds another config, and the fields that differ."""
  shown = ", ".join(status.diff[:5]) + (" ..." if len(status.diff) > 5 else "")
  return f"{workdir}: holds a run with a different config (differs in {shown})"


def truncate_metrics(path: str, last_round: int, config):
  """Drop metric lines after ``last_round`` (written after the checkpoint we resume from), and
  make an evaluation line at ``last_round`` what this schedule evaluates there (a shorter run
  continued with ``--extend`` evaluated every split at its end)."""
  if not os.path.exists(path):
    return
  keep = []
  splits = schedule.evaluated_splits(config, last_round)
  with open(path) as f:
    for line in f:
      try:
        d = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a kill
      if d.get("round", 0) > last_round:
        continue
      if d.get("kind") == "alloc" and d["round"] == last_round and not schedule.history_at(
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


def earlier_configs(config, changes: list) -> dict:
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
  return identity_of(config_json(config))


def identity_of(cfg: dict) -> str:
  """:func:`run_identity` of a stored config (``config.json``'s dict): 16 hex digits."""
  cfg = dict(cfg)
  cfg.pop("num_rounds", None)
  for k in MACHINE_FIELDS:
    cfg.pop(k, None)
  for k, v in ADDED_FIELDS.items():
    if k in cfg and cfg[k] == v:
      cfg.pop(k)
  return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]


def checkout_commit(path: str, top: str = ""):
  """``(short hash of HEAD, dirty)`` of the git checkout holding the folder ``path``, where
  dirty means tracked files outside ``results/`` (outputs, not code) differ from that commit;
  ``None`` outside a checkout, without git, or when the checkout's root is not ``top`` (if
  given). Never raises."""
  try:
    git = lambda *a: subprocess.run(["git", "-C", path, *a], capture_output=True, text=True,
                                    check=True, timeout=30).stdout.strip()
    if top and os.path.realpath(git("rev-parse", "--show-toplevel")) != os.path.realpath(top):
      return None
    head = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                ":(top,exclude)results")
  except (OSError, subprocess.SubprocessError):
    return None
  return (head, bool(dirty)) if head else None


def code_version(path: str = os.path.dirname(os.path.abspath(__file__))) -> dict:
  """The code a run is made by, for its ``results.json``: ``{"version": gmr.__version__,
  "commit": <short hash of the git checkout whose root holds the package folder ``path``, or
  None (an installed copy, no git)>, "dirty": <tracked files outside results/ differ from that
  commit>}`` (:func:`checkout_commit`). Never raises."""
  from gmr import __version__  # pylint: disable=g-import-not-at-top
  found = checkout_commit(path, top=os.path.dirname(path))
  commit, dirty = found if found else (None, False)
  return {"version": __version__, "commit": commit, "dirty": dirty}
