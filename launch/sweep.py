"""Sweep runner: methods x seeds x overrides, run locally with bounded parallelism or printed.

  python -m launch.sweep --config=experiments/configs/transfer.py \
      --methods=shared_bottom,no_sharing --seeds=0-4 --grid=rho=0,1 --root=runs/transfer

``--methods`` takes method names or other variant tokens of the config file (``budget``),
appended to the config's variant. Each run gets ``<root>/<method>[__key=value...]/seed_<s>``. Runs whose workdir already holds a
``results.json`` are skipped. ``--print_only`` prints one command per run (for a scheduler).
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", None, "Config file (with optional :variant).")
_METHODS = flags.DEFINE_list("methods", [], "Methods (empty: the config's own).")
_SEEDS = flags.DEFINE_string("seeds", "0-4", "Seeds: '0-4' or '0,3,7'.")
_GRID = flags.DEFINE_multi_string("grid", [], "key=v1,v2,...: one sweep axis (repeatable).")
_SET = flags.DEFINE_multi_string("set", [], "key=value applied to every run (repeatable).")
_ROOT = flags.DEFINE_string("root", None, "Sweep directory.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "Runs at once.")
_PRINT = flags.DEFINE_bool("print_only", False, "Print the commands instead of running them.")
_PIN = flags.DEFINE_bool("pin_cpus", False, "Pin each of the --parallel runs to its own CPU "
                         "core (taskset), among the cores this process may use. On small CPUs "
                         "N one-core runs beat one N-core run.")
flags.mark_flags_as_required(["config", "root"])


def parse_seeds(s: str):
  out = []
  for part in s.split(","):
    if "-" in part:
      a, b = part.split("-")
      out.extend(range(int(a), int(b) + 1))
    elif part:
      out.append(int(part))
  return out


def plan(config, methods, seeds, grid, fixed, root):
  """[(workdir, argv)] for every run of the sweep."""
  axes = [(k, vs.split(",")) for k, vs in (g.split("=", 1) for g in grid)]
  runs = []
  for method in methods or [None]:
    for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in axes]):
      name = "__".join([method or "default"] + [f"{k}={v}" for k, v in combo])
      for seed in seeds:
        wd = os.path.join(root, name, f"seed_{seed}")
        cfg = config
        if method:  # a method name or another variant token of the config file
          cfg = f"{config},{method}" if ":" in config else f"{config}:{method}"
        argv = [sys.executable, "-m", "experiments.main", f"--config={cfg}",
                f"--workdir={wd}", f"--config.seed={seed}", "--quiet"]
        argv += [f"--config.{kv}" for kv in fixed] + [f"--config.{k}={v}" for k, v in combo]
        runs.append((wd, argv))
  return runs


def main(argv):
  del argv
  runs = plan(_CONFIG.value, _METHODS.value, parse_seeds(_SEEDS.value), _GRID.value, _SET.value,
              _ROOT.value)
  if _PRINT.value:
    for _, a in runs:
      print(shlex.join(a))
    return
  todo = [(wd, a) for wd, a in runs if not os.path.exists(os.path.join(wd, "results.json"))]
  # seed-major order: a sweep cut short still has every method at the first seeds
  todo.sort(key=lambda item: int(item[0].rsplit("seed_", 1)[1]))
  print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run", flush=True)

  free = queue.Queue()
  cpus = sorted(os.sched_getaffinity(0))  # the cores this process may use (`taskset -c 1 ...`)
  for i in range(max(1, _PARALLEL.value)):
    free.put(cpus[i % len(cpus)])

  def one(item):
    wd, a = item
    os.makedirs(wd, exist_ok=True)
    t = time.time()
    cpu = free.get()
    if _PIN.value and shutil.which("taskset"):
      a = ["taskset", "-c", str(cpu)] + a
    with open(os.path.join(wd, "log.txt"), "a") as log:
      rc = subprocess.call(a, stdout=log, stderr=subprocess.STDOUT)
    free.put(cpu)
    print(f"{'ok ' if rc == 0 else 'FAILED'} {wd} ({time.time() - t:.0f}s)", flush=True)
    return rc

  with ThreadPoolExecutor(max(1, _PARALLEL.value)) as ex:
    failed = sum(rc != 0 for rc in ex.map(one, todo))
  if failed:
    print(f"{failed} runs failed: see their log.txt", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
