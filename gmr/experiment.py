"""Running one experiment into a workdir: config.json, metrics.jsonl, results.json (the I/O edge).

``run(config, workdir)`` is what ``python -m experiments.main`` calls; notebooks can call
``gmr.train.train(config, suite)`` directly and skip the files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Optional

import jax
import numpy as np

from gmr import data as data_lib
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


class _TensorBoard:
  """Scalars to TensorBoard event files when the optional ``tensorboardX`` is installed."""

  def __init__(self, workdir):
    try:
      from tensorboardX import SummaryWriter  # optional extra: pip install -e ".[tensorboard]"
    except ImportError:
      self.w = None
    else:
      self.w = SummaryWriter(os.path.join(workdir, "tb"))

  def scalars(self, step, prefix, values):
    if self.w is None:
      return
    for k, v in values.items():
      if isinstance(v, dict):
        self.scalars(step, f"{prefix}/{k}", v)
      elif isinstance(v, (int, float)):
        self.w.add_scalar(f"{prefix}/{k}", v, step)

  def close(self):
    if self.w is not None:
      self.w.close()


def _progress(d, total, out):
  eta = d["eta_s"]
  out.write(f"round {d['round']}/{total}  step {d['step']}  loss {d['train_loss_mean']:.4f}  "
            f"temp {d['temperature']:.2f}  {d['steps_per_s']:.0f} steps/s  "
            f"ETA {int(eta) // 60}m{int(eta) % 60:02d}s\n")
  out.flush()


def run(config, workdir: str, quiet: bool = False, stream=None) -> dict:
  """Train and evaluate ``config``; write everything under ``workdir``; return results."""
  stream = stream or sys.stdout
  validate.validate(config)
  os.makedirs(workdir, exist_ok=True)
  write_json_atomic(os.path.join(workdir, "config.json"), config.to_dict())
  suite = data_lib.load_suite(config)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  tb = _TensorBoard(workdir)
  t0 = time.time()

  with open(metrics_path, "a") as mf:
    def on_event(ev):
      mf.write(json.dumps(_jsonable({"kind": ev.kind, **ev.data})) + "\n")
      mf.flush()
      if ev.kind == "log":
        tb.scalars(ev.data["step"], "train", {"loss": ev.data["train_loss"],
                                              "temperature": ev.data["temperature"]})
        if not quiet:
          _progress(ev.data, config.num_rounds, stream)
      else:
        tb.scalars(ev.data["step"], "eval", {k: v for k, v in ev.data.items()
                                             if k in ("test", "validation")})

    setup, state, final = train_lib.train(config, suite, on_event)
  tb.close()
  wall = time.time() - t0
  results = {
      "method": config.method,
      "seed": config.seed,
      "suite": config.suite,
      "arch": config.arch,
      "tasks": list(suite.task_names),
      "task_groups": suite.info.get("groups"),
      "rounds": int(config.num_rounds),
      "steps": int(state.step),
      "wall_time_s": wall,
      "final": final["test"],
      "backend": jax.default_backend(),
      **train_lib.allocation_summary(setup, state.params, suite.task_names),
  }
  if "validation" in final:
    results["final_validation"] = final["validation"]
  write_json_atomic(os.path.join(workdir, "results.json"), results)
  if not quiet:
    acc = results["final"].get("accuracy", {}).get("mean")
    stream.write(f"done in {wall:.1f}s: test loss {results['final']['loss']['mean']:.4f}"
                 + (f", accuracy {acc:.4f}" if acc is not None else "")
                 + f", active {results['active_fraction']:.2%} -> {workdir}/results.json\n")
  return results
