"""What a run shows people while it trains: progress lines on the terminal and TensorBoard
event files (the config as hyperparameters, losses, penalties, evaluations and the allocation
history). Nothing here changes a number or a file the run resumes from."""

from __future__ import annotations

import json
import os

import numpy as np


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
  return out


class TensorBoard:
  """Event files in ``<workdir>/tb`` when the optional ``tensorboardX`` is installed: the config
  as hyperparameters; per task the training loss, the penalty terms, test (and validation)
  loss and accuracy; steps/s and (methods with one) the temperature; from the allocation history, P(on) per (layer,
  task) as histograms and each task's expected active fraction (TAPS: its layer scores)."""

  def __init__(self, workdir):
    self.w = None
    if workdir is None:  # not the primary process of a multi-host run
      return
    try:
      from tensorboardX import SummaryWriter  # optional extra: pip install -e ".[tensorboard]"
    except ImportError:
      self.w = None
    else:
      self.w = SummaryWriter(os.path.join(workdir, "tb"))

  def hparams(self, config_json: dict) -> None:
    """The config (as ``config.json`` stores it) as hyperparameters."""
    if self.w is None:
      return
    from tensorboardX.summary import hparams  # pylint: disable=g-import-not-at-top
    metrics = {"eval/test/loss/mean": 0.0, "eval/test/accuracy/mean": 0.0}
    for summ in hparams(_flat(config_json), metrics):
      self.w._get_file_writer().add_summary(summ)  # pylint: disable=protected-access

  def allocation(self, step, record: dict, task_names) -> None:
    """An ``alloc`` history record: P(on) per layer ``[tasks][C]`` (or TAPS's scores)."""
    if self.w is None:
      return
    probs = record.get("probabilities") or {}
    if probs:
      mats = [np.asarray(probs[k], np.float64) for k in sorted(probs, key=lambda k: int(
          k.rsplit("_", 1)[1]))]
      total = sum(m.shape[1] for m in mats)
      for t, name in enumerate(task_names):
        for l, m in enumerate(mats):
          self.w.add_histogram(f"alloc/p_on/layer_{l}/{name}", m[t], step)
        self.w.add_scalar(f"alloc/expected_active/{name}", sum(m[t].sum() for m in mats) / total,
                          step)
    for layer, scores in (record.get("taps_scores") or {}).items():
      for t, name in enumerate(task_names):
        self.w.add_scalar(f"taps/score/{layer}/{name}", float(scores[t]), step)

  def scalars(self, step, prefix, values):
    if self.w is None:
      return
    for k, v in values.items():
      if isinstance(v, dict):
        self.scalars(step, f"{prefix}/{k}", v)
      elif isinstance(v, (int, float)):
        self.w.add_scalar(f"{prefix}/{k}", v, step)

  def close(self):
    """Flush and close the event file. A failing disk does not fail the run here (the run's
    own files report it): the writer is then marked closed so that nothing retries at exit."""
    if self.w is None:
      return
    try:
      self.w.close()
    except OSError:  # tensorboardX's internals: stop its writer thread, skip its exit flush
      # pylint: disable=protected-access
      for fw in (getattr(self.w, "file_writer", None),) + tuple(
          (getattr(self.w, "all_writers", None) or {}).values()):
        ev = getattr(fw, "event_writer", None)
        if ev is None:
          continue
        worker = getattr(ev, "_worker", None)
        if worker is not None and worker.is_alive():
          try:
            worker.stop()
          except Exception:  # pylint: disable=broad-except
            pass
        ev._closed = True
    self.w = None


def progress_line(d, total, out):
  """Write one progress line for the ``log`` event ``d`` (its ``round``, ``step``,
  ``train_loss_mean``, ``steps_per_s``, ``eta_s`` in seconds, and ``temperature`` for a method
  that has one: the event carries it only then) of a run of ``total`` rounds to ``out``."""
  eta = d["eta_s"]
  temp = f"temp {d['temperature']:.2f}  " if "temperature" in d else ""
  out.write(f"round {d['round']}/{total}  step {d['step']}  loss {d['train_loss_mean']:.4f}  "
            f"{temp}{d['steps_per_s']:.0f} steps/s  "
            f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s\n")
  out.flush()


class ProgressLines:
  """Progress a person reads (not kept in metrics.jsonl): compilation, evaluations per task
  (a line at most every ``every_s`` seconds, once one has run that long), their results."""

  def __init__(self, out, every_s: float = 10.0):
    self.out, self.every_s, self.last = out, every_s, 0.0

  def __call__(self, kind, d):
    if kind == "compiled":
      self.out.write(f"compiled the training step ({d['rounds']} rounds per call) in "
                     f"{d['seconds']:.1f}s\n")
    elif kind == "eval_task":
      if d["task"] == 0:
        self.last = 0.0
      if d["elapsed_s"] - self.last >= self.every_s:
        self.last = d["elapsed_s"]
        self.out.write(f"  evaluating {d['split']}: task {d['task'] + 1}/{d['of']} "
                       f"({d['name']}), {d['elapsed_s']:.0f}s\n")
    elif kind == "eval_done":
      nums = ", ".join(f"{m} {d[m]:.4f}" for m in ("loss", "accuracy") if m in d)
      self.out.write(f"evaluated {d['split']} at round {d['round']} in {d['seconds']:.1f}s: "
                     f"{nums}\n")
    self.out.flush()
