"""Orbax checkpoints of a run: the last N by round, and the best by a validation metric.

Layout under a workdir::

  checkpoints/<round>/       the last ``keep`` checkpoints (train state + metadata)
  checkpoints_best/<round>/  the one with the best ``select_by`` value so far

Every save is atomic (orbax writes a temporary folder and renames it), so a run killed while
saving keeps its previous checkpoint. The metadata (JSON) holds what resuming needs beyond
the arrays: the round, the best value so far and the evaluation it came from.

A finished run's checkpoint also starts another run (``init_from``: fine-tuning its backbone,
:func:`source_model_params`; what is copied: :func:`gmr.train.init_from`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional, Tuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from gmr.train import InitFromError


def _manager(path: str, keep: int, read_only: bool = False) -> ocp.CheckpointManager:
  opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=not read_only,
                                      enable_async_checkpointing=False, read_only=read_only)
  return ocp.CheckpointManager(os.path.abspath(path), options=opts)


def _to_host(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


class Checkpoints:
  """The two checkpoint series of one workdir."""

  def __init__(self, workdir: str, keep: int = 2):
    self.last_dir = os.path.join(workdir, "checkpoints")
    self.best_dir = os.path.join(workdir, "checkpoints_best")
    self.last = _manager(self.last_dir, keep)
    # every best checkpoint is kept until a regular checkpoint names a newer one
    # (:meth:`keep_best_only`): a kill between the two saves leaves the one the resume needs
    self.best = _manager(self.best_dir, None)

  def save(self, round_: int, state, meta: dict, best: bool = False) -> str:
    mngr = self.best if best else self.last
    mngr.save(int(round_), args=ocp.args.Composite(
        state=ocp.args.StandardSave(_to_host(state)), meta=ocp.args.JsonSave(meta)), force=True)
    mngr.wait_until_finished()
    return os.path.join(self.best_dir if best else self.last_dir, str(int(round_)))

  def latest_round(self) -> Optional[int]:
    return self.last.latest_step()

  def keep_best_only(self, best_round: Optional[int]) -> None:
    """Delete the best checkpoints other than ``best_round`` (``None``: all of them)."""
    self.best.reload()
    for step in self.best.all_steps():
      if step != best_round:
        self.best.delete(step)

  def restore_latest_intact(self, like, warn, accept=None) -> Optional[Tuple[int, Any, dict]]:
    """``(round, state, meta)`` of the newest regular checkpoint that restores (``None`` if
    none does). A damaged one (a part missing, a file cut or emptied) is moved to
    ``<workdir>/damaged_checkpoints/<round>[_<n>]`` (kept, never deleted) and ``warn`` gets one
    line naming it. ``accept(round, meta)`` is called on each readable metadata before its
    state is read; what it raises (a checkpoint of another run) propagates. ``like`` is a
    train state of the checkpoint's structure, or a function of the metadata returning one
    (a run continued under other optimizer settings has checkpoints of both structures)."""
    self.last.reload()
    for step in sorted(self.last.all_steps(), reverse=True):
      try:
        meta = self.last.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if not isinstance(meta, dict) or "round" not in meta:
          raise ValueError("no round in its metadata")
      except Exception as e:  # pylint: disable=broad-except  (any damage orbax reports)
        self._set_aside(step, e, warn)
        continue
      if accept is not None:
        accept(step, meta)
      try:
        return (step,) + tuple(self.restore(like(meta) if callable(like) else like, step))
      except Exception as e:  # pylint: disable=broad-except
        self._set_aside(step, e, warn)
    return None

  def _set_aside(self, step: int, error: Exception, warn) -> None:
    src = os.path.join(self.last_dir, str(step))
    dest = base = os.path.join(os.path.dirname(self.last_dir), "damaged_checkpoints", str(step))
    n = 0
    while os.path.exists(dest):
      n += 1
      dest = f"{base}_{n}"
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    os.replace(src, dest)
    self.last.reload()
    first = str(error).splitlines()[0][:120] if str(error) else ""
    warn(f"warning: checkpoint {src} is damaged ({type(error).__name__}: {first}); moved to "
         f"{dest}, resuming from the checkpoint before it")

  def restore(self, like, round_: Optional[int] = None, best: bool = False) -> Tuple[Any, dict]:
    """``(state, meta)`` of checkpoint ``round_`` (default: the latest), arrays shaped like
    ``like`` (a train state of the same config)."""
    mngr = self.best if best else self.last
    r = mngr.latest_step() if round_ is None else round_
    if r is None:
      raise FileNotFoundError(f"no checkpoint in {self.best_dir if best else self.last_dir}")
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, _to_host(like))
    out = mngr.restore(r, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                  meta=ocp.args.JsonRestore()))
    return out["state"], out["meta"]

  def close(self):
    self.last.close()
    self.best.close()


def read_state(path: str) -> dict:
  """The train state saved at checkpoint folder ``path`` as nested dicts of numpy arrays,
  without a template (another config's run: fine-tuning reads its source this way)."""
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  return ckptr.restore(os.path.abspath(path),
                       args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]


def load(workdir: str, like, best: bool = False, round_: Optional[int] = None):
  """Read a checkpoint of ``workdir`` (for notebooks and tests): ``(state, meta)``."""
  ck = Checkpoints(workdir)
  try:
    return ck.restore(like, round_, best)
  finally:
    ck.close()


# ----------------------------------------------------------------------------- init_from
def source_checkpoint(workdir: str) -> str:
  """The checkpoint a finished run's numbers come from (``results.json``'s ``checkpoint``,
  the path the run wrote it to): its ``<series>/<round>`` inside ``workdir``, so a workdir
  since moved (copied to another machine, restored by ``launch.park``) reads its own copy,
  never the folder it was moved from; the recorded path itself only when that copy is absent.
  Raises :class:`InitFromError` for an unfinished run or a missing checkpoint."""
  res = os.path.join(workdir, "results.json")
  if not os.path.exists(res):
    raise InitFromError(f"init_from: {workdir} has no results.json (not a finished gmr run); "
                        "finish the source run first or point init_from at its workdir")
  with open(res) as f:
    path = json.load(f).get("checkpoint", "")
  if path:
    own = os.path.join(workdir, os.path.basename(os.path.dirname(os.path.normpath(path))),
                       os.path.basename(os.path.normpath(path)))
    path = own if os.path.isdir(own) else path
  if not path or not os.path.isdir(path):
    raise InitFromError(f"init_from: the checkpoint {path!r} named by {res} is missing; "
                        "rerun the source run with --fresh")
  return path


def source_model_params(workdir: str) -> dict:
  """The network parameters (nested dicts of numpy arrays) of the checkpoint a finished run's
  numbers come from: the backbone :func:`gmr.train.init_from` starts another run from.
  Raises :class:`gmr.train.InitFromError` (:func:`source_checkpoint`)."""
  return read_state(source_checkpoint(workdir))["params"]["model"]
