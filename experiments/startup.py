"""Start-up time of a run, without and with JAX's persistent compilation cache.

  python -m experiments.startup                                     # the synthetic benchmark
  python -m experiments.startup --config=experiments/configs/four_mnists.py --overrides=--config.num_rounds=200

Runs the same command four times, each in a fresh process and workdir: twice with the cache off
(``--config.compilation_cache_dir=``), twice with a fresh cache folder (the first fills it, the
second reads it). Reported per run: seconds from the process start to the "compiled the training
step" line (start-up: imports, data, setup and compilation), the compile time that line gives,
and the whole run's wall time. Prints a Markdown table with the machine and the command.
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags

_CONFIG = flags.DEFINE_string("config", "experiments/configs/synthetic.py", "Config[:variant].")
_OVERRIDES = flags.DEFINE_string("overrides", "", "More flags for every run (space-separated).")


def one_run(config: str, overrides: list, cache: str, workdir: str) -> dict:
  cmd = [sys.executable, "-m", "experiments.main", f"--config={config}", f"--workdir={workdir}",
         f"--config.compilation_cache_dir={cache}"] + overrides
  t0 = time.time()
  p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  startup = compile_s = None
  lines = []
  for line in p.stdout:
    lines.append(line)
    m = re.match(r"compiled the training step .* in ([\d.]+)s", line)
    if m and startup is None:
      startup, compile_s = time.time() - t0, float(m.group(1))
  if p.wait() != 0:
    raise RuntimeError("".join(lines[-20:]))
  return {"startup_s": startup, "compile_s": compile_s, "wall_s": time.time() - t0}


def main(argv):
  del argv
  overrides = shlex.split(_OVERRIDES.value)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    for label, where in (("cache off, run 1", ""), ("cache off, run 2", ""),
                         ("cache on, run 1 (fills it)", cache),
                         ("cache on, run 2 (reads it)", cache)):
      wd = os.path.join(tmp, f"w{len(rows)}")
      rows.append((label, one_run(_CONFIG.value, overrides, where, wd)))
  cmd = "python -m experiments.startup " + " ".join(shlex.quote(a) for a in sys.argv[1:])
  print(f"Command: `{cmd.strip()}`\n")
  print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}\n")
  print("| run | start-up to the compiled step (s) | compile (s) | whole run (s) |")
  print("|---|---|---|---|")
  for label, r in rows:
    print(f"| {label} | {r['startup_s']:.1f} | {r['compile_s']:.2f} | {r['wall_s']:.1f} |")


if __name__ == "__main__":
  app.run(main)
