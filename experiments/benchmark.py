"""Training throughput per architecture, ours vs. the straightforward reference in one run.

  python -m experiments.benchmark                         # all architectures, print a table
  python -m experiments.benchmark --arch=four_mnists --reference --write=BENCHMARKS.md
  python -m experiments.benchmark --mode=startup          # a run's start-up, JAX's cache off / on
  python -m experiments.benchmark --mode=startup --config=experiments/configs/four_mnists.py \
      --overrides=--config.num_rounds=200

``--mode=startup``: the start-up of one run (``--config``, default the synthetic benchmark),
without and with JAX's persistent compilation cache. The same command runs four times, each in
a fresh process and workdir: twice with the cache off (``--config.compilation_cache_dir=``),
twice with a fresh cache folder (the first fills it, the second reads it). Reported per run:
seconds from the process start to the "compiled the training step" line (imports, data, setup
and compilation), the compile time that line gives, and the whole run's wall time.

``--mode=population``: many runs as one program (gmr/population.py): for each population size
S of ``--population`` (default 1, 2, 4, 8, 16, 32), S members of one architecture's config
(their own keys and task orders, the data shared) stepped by the vmapped call of
``make_run_steps(population=True)``, beside the one-run call ("single"). Reported per size:
task-steps/s per member and in total (members x steps), the total over the single run's, the
latency of one step (a member takes its steps one after another), MFLOP per task step
(XLA's cost analysis), the achieved GFLOP/s and its fraction of the device's datasheet peak
(``PEAK_TFLOPS``; "-" where the device has none listed, e.g. a CPU), and the kernels the
compiled call launches per step (fusions, convolutions, dots and custom calls of its
program: what a step's time is split into on a GPU).

``--mode=step`` (the default):

"ours <layout> conv=<impl>": fused components, ``rounds_per_call`` rounds per device call
(``lax.scan``), images in ``layout`` (nhwc, or cnhw: channels first), convolutions by ``impl``
(xla: XLA's convolution, patches: patches + matmul), a " bf16" suffix for convolutions
computed in bfloat16 (``--conv_dtype=bfloat16``: float32 accumulation and parameters).
"ours joint" (``--joint``): the ``joint`` schedule, one update per round on all T task
batches (not the paper's schedule: a different algorithm, timed for what it costs).
"reference" (``--reference``): each component its own op (NHWC, XLA's convolution), one
jitted call per task batch
(batches still gathered on device, so the difference is the model and the dispatch).
Inputs are random arrays of each benchmark's shape (throughput does not depend on the data).
Every variant of an architecture is compiled and warmed up first; then the ``--repeats``
timed calls run interleaved across the variants (one call of each in turn), so a slow spell
of the machine falls on all of them alike.
Reported: median task-batch steps/s over ``--repeats`` timed calls after a warm-up,
examples/s, MFLOP per task step (XLA's cost analysis of the compiled program of one update,
per task batch: multiply-adds count 2), the achieved GFLOP/s (that x task-steps/s), the
compile time (lowering and compiling ahead of time, the calls then run the compiled program)
and peak memory where the backend reports it.
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

import jax
import numpy as np
from absl import app, flags

from experiments.configs import common
from gmr import train as T
from gmr import schedule as schedule_lib
from gmr.data.suite import Split, TaskSuite

_MODE = flags.DEFINE_enum("mode", "step", ["step", "startup", "population"], "step: training "
                          "throughput per architecture; startup: a run's start-up, JAX's "
                          "compilation cache off and on; population: throughput of S runs as "
                          "one vmapped program.")
_POP = flags.DEFINE_list("population", ["1", "2", "4", "8", "16", "32"], "--mode=population: "
                         "the population sizes to time.")
_CONFIG = flags.DEFINE_string("config", "experiments/configs/synthetic.py",
                              "--mode=startup: the run's config[:variant].")
_OVERRIDES = flags.DEFINE_string("overrides", "", "--mode=startup: more flags for every run "
                                 "(space-separated).")
_ARCH = flags.DEFINE_list("arch", ["synthetic", "four_mnists", "clusters", "omniglot"], "Architectures.")
_REF = flags.DEFINE_bool("reference", False, "Also time the straightforward reference.")
_BATCH = flags.DEFINE_integer("batch_size", 16, "Batch size per task.")
_ROUNDS = flags.DEFINE_integer("rounds", 0, "Rounds per timed call (0: per architecture, "
                                "ROUNDS: a call of a second or more on a 2-core CPU).")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls (median reported).")
_IMPLS = flags.DEFINE_list("conv_impl", ["xla", "patches"], "Convolution formulations to time.")
_LAYOUTS = flags.DEFINE_list("layout", ["nhwc", "cnhw"], "Image layouts to time (each with "
                             "every --conv_impl).")
_DTYPES = flags.DEFINE_list("conv_dtype", ["float32"], "Convolution compute dtypes to time "
                             "(float32, bfloat16: each with every layout and --conv_impl).")
_JOINT = flags.DEFINE_bool("joint", False, "Also time the joint schedule (conv=auto).")
_WRITE = flags.DEFINE_string("write", "", "Write the table (with command and machine) to this file "
                             "(its top table, or --section; other sections are kept).")
_SECTION = flags.DEFINE_string("section", "", "With --write: put the table under '## <section>' "
                               "in the file, replacing only that section (tables of several "
                               "commands in one file).")

DTYPE_NAMES = {"float32": "f32", "bfloat16": "bf16"}

SHAPES = {  # arch -> (input shape, head dims, loss)
    "synthetic": ((128,), (1,) * 4, "mse"),
    "four_mnists": ((28, 28, 1), (10,) * 4, "xent"),
    "clusters": ((32, 32, 3), (5,) * 20 + (9,) * 20, "xent"),
    "omniglot": ((105, 105, 1), (10,) * 20, "xent"),
}


ROUNDS = {"synthetic": 50, "four_mnists": 50, "clusters": 1, "omniglot": 1}
# Task steps per timed call where one round is too long for a 2-core CPU: the first steps of
# the round (throughput is per task step either way). An Omniglot task step at batch 16 is
# ~400 GFLOP (the first conv of each routed-layer-0 component runs at 105 x 105 over 48
# channels: ~4.2 GMAC per example forward), ~25 s on one core of this CPU with patches.
STEPS = {"omniglot": 1}


def _rounds_text() -> str:
  """How many rounds one timed call runs, per architecture benchmarked."""
  if _ROUNDS.value:
    return f"{_ROUNDS.value} rounds"
  per = [f"{a} {STEPS[a]} task step(s)" if a in STEPS else f"{a} {ROUNDS[a]} round(s)"
         for a in _ARCH.value]
  return ", ".join(per)


def random_suite(arch: str, n: int = 512) -> TaskSuite:
  shape, heads, loss = SHAPES[arch]
  rng = np.random.default_rng(0)
  xs = [rng.random((n,) + shape, np.float32) for _ in heads]
  ys = [(rng.integers(0, h, n) if loss == "xent" else rng.random(n)).astype(
      np.int32 if loss == "xent" else np.float32) for h in heads]
  split = Split.from_tasks(xs, ys)
  return TaskSuite(arch, tuple(f"t{i}" for i in range(len(heads))), loss, heads, split, split)


def config_for(arch: str, fused: bool, conv_impl: str, schedule: str = "round_robin",
               layout: str = "auto"):
  c = common.base_config()
  c.arch, c.method, c.batch_size, c.schedule = arch, "gumbel_matrix", _BATCH.value, schedule
  c.fused, c.conv_impl, c.dropout = fused, conv_impl, 0.5 if arch != "synthetic" else 0.0
  c.layout = layout
  c.p_init = 0.97 if arch == "omniglot" else 0.5
  return c


def _peak_mb():
  stats = jax.devices()[0].memory_stats() or {}
  v = stats.get("peak_bytes_in_use")
  return f"{v / 2 ** 20:.0f}" if v else "n/a"


def _fmt(v: float) -> str:
  """Whole numbers from 100 up, three significant digits below (0.193, 23.4)."""
  return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def _flops(compiled) -> float:
  """XLA's FLOP count of a compiled call (0 where the backend gives none)."""
  ca = compiled.cost_analysis()
  ca = ca[0] if isinstance(ca, (list, tuple)) and ca else ca
  return float((ca or {}).get("flops", 0.0))


def prepare(arch, fused, conv_impl, per_batch, schedule="round_robin", layout="auto",
             conv_dtype="float32"):
  """One variant, compiled ahead of time and warmed up: its ``call(state) -> (state, losses)``
  and what its table row needs."""
  suite = random_suite(arch)
  c = config_for(arch, fused, conv_impl, schedule, layout)
  c.conv_dtype = conv_dtype
  setup = T.make_setup(c, suite)
  state = T.init_state(setup, jax.random.key(0))
  tcount, r = suite.num_tasks, _ROUNDS.value or ROUNDS[arch]
  sampler = schedule_lib.BatchSampler(jax.random.key(1), suite.train, c.batch_size)
  orders = (np.tile(np.arange(tcount, dtype=np.int32), (r, 1)) if schedule == "joint"
            else schedule_lib.round_orders(jax.random.key(2), 0, r, tcount))
  tasks, idx = sampler.round_robin(orders, 0)
  if not _ROUNDS.value and arch in STEPS and schedule == "round_robin":
    tasks, idx = tasks[:STEPS[arch]], idx[:STEPS[arch]]
  xp, yp = jax.device_put(suite.train.x), jax.device_put(suite.train.y)
  key = jax.random.key(3)
  run = schedule_lib.make_run_steps(setup, c)
  # One update's worth of task batches (a round for joint): its compiled cost is the FLOPs
  # of one update. (XLA counts a scan's body once, not per iteration, so the FLOPs of a
  # longer call are not read from that call.)
  unit = tcount if schedule == "joint" else 1
  t0 = time.perf_counter()
  one = run.lower(state, xp, yp, tasks[:unit], idx[:unit], key).compile()
  if per_batch:  # the reference: one jitted call per task batch (a scan of length 1)
    compiled = one

    def call(st):
      for i in range(len(tasks)):
        st, l = compiled(st, xp, yp, tasks[i:i + 1], idx[i:i + 1], key)
      return st, l
  else:
    compiled = one if len(tasks) == unit else run.lower(state, xp, yp, tasks, idx, key).compile()
    call = lambda st: compiled(st, xp, yp, tasks, idx, key)
  compile_s = time.perf_counter() - t0
  state, l = call(state)  # warm-up
  jax.block_until_ready(l)
  # The backend's peak is per process (no reset): read here, it covers the variants prepared
  # so far, this one last, as when variants ran one after another.
  return dict(call=call, state=state, steps=len(tasks), batch=c.batch_size, compile_s=compile_s,
              flops_per_step=_flops(one) / unit, peak_mb=_peak_mb(), times=[])


def time_variants(preps: dict) -> dict:
  """Time ``--repeats`` calls of every prepared variant, interleaved (repeat r of every variant
  before repeat r + 1 of any), so that a slow spell of the machine hits all variants alike and
  their ratios stay fair. Returns each variant's row values (median call time)."""
  for _ in range(_REPEATS.value):
    for p in preps.values():
      t0 = time.perf_counter()
      p["state"], l = p["call"](p["state"])
      jax.block_until_ready(l)
      p["times"].append(time.perf_counter() - t0)
  out = {}
  for name, p in preps.items():
    sps = p["steps"] / float(np.median(p["times"]))
    out[name] = dict(steps_s=sps, ex_s=sps * p["batch"], compile_s=p["compile_s"],
                     peak_mb=p["peak_mb"], gflops=sps * p["flops_per_step"] / 1e9,
                     mflop_step=p["flops_per_step"] / 1e6)
  return out


# Datasheet peaks (TFLOP/s, dense) by device kind and compute dtype: float32 without tensor
# cores, tf32 and bfloat16 tensor cores (NVIDIA H100 SXM / H200 datasheets).
PEAK_TFLOPS = {
    "NVIDIA H100 80GB HBM3": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
    "NVIDIA H200": {"float32": 67.0, "tf32": 494.7, "bfloat16": 989.4},
}
_KERNEL = re.compile(r"= [^=]*\b(fusion|convolution|dot|custom-call)\(")


def kernels_per_step(compiled, steps: int) -> float:
  """Kernels a compiled call launches per task step: its program's fusions, convolutions,
  dots and custom calls (a scan's body counted once, so per step when ``steps`` is the
  call's scan length only for a call of one step)."""
  return len(_KERNEL.findall(compiled.as_text() or "")) / max(steps, 1)


def prepare_population(arch: str, size: int, conv_dtype: str = "float32") -> dict:
  """A population of ``size`` members of ``arch`` (``size=0``: the single run's call),
  compiled and warmed up, as :func:`prepare` gives a variant."""
  suite = random_suite(arch)
  c = config_for(arch, True, "auto")
  c.conv_dtype = conv_dtype
  setup = T.make_setup(c, suite)
  tcount, r = suite.num_tasks, _ROUNDS.value or ROUNDS[arch]
  sampler = schedule_lib.BatchSampler(jax.random.key(1), suite.train, c.batch_size)
  members = max(size, 1)
  plans = [sampler.round_robin(schedule_lib.round_orders(jax.random.key(2 + m), 0, r, tcount), 0)
           for m in range(members)]
  if not _ROUNDS.value and arch in STEPS:
    plans = [(t[:STEPS[arch]], i[:STEPS[arch]]) for t, i in plans]
  states = [T.init_state(setup, jax.random.key(10 + m)) for m in range(members)]
  xp, yp = jax.device_put(suite.train.x), jax.device_put(suite.train.y)
  run = schedule_lib.make_run_steps(setup, c, population=size > 0)
  if size:
    state, keys = T.stack_states(states), jax.numpy.stack([jax.random.key(3 + m)
                                                            for m in range(members)])
    tasks, idx = np.stack([p[0] for p in plans]), np.stack([p[1] for p in plans])
    unit = (state, xp, yp, tasks[:, :1], idx[:, :1], keys)
  else:
    state, keys, (tasks, idx) = states[0], jax.random.key(3), plans[0]
    unit = (state, xp, yp, tasks[:1], idx[:1], keys)
  t0 = time.perf_counter()
  one = run.lower(*unit).compile()
  compiled = run.lower(state, xp, yp, tasks, idx, keys).compile()
  compile_s = time.perf_counter() - t0
  call = lambda st: compiled(st, xp, yp, tasks, idx, keys)
  state, l = call(state)
  jax.block_until_ready(l)
  return dict(call=call, state=state, steps=tasks.shape[-1] * members, batch=c.batch_size,
              members=members, compile_s=compile_s, flops_per_step=_flops(one) / members,
              kernels=kernels_per_step(one, 1), peak_mb=_peak_mb(), times=[])


def population_table() -> str:
  """``--mode=population``'s table (Markdown, with the command and the machine)."""
  kind = jax.devices()[0].device_kind
  rows = []
  for arch in _ARCH.value:
    for dt in _DTYPES.value:
      preps = {"single": prepare_population(arch, 0, dt)}
      for s in _POP.value:
        preps[f"S={int(s)}"] = prepare_population(arch, int(s), dt)
        print(f"{arch:12s} {dt:9s} S={int(s):<3d} compiled in "
              f"{preps[f'S={int(s)}']['compile_s']:.1f} s", flush=True)
      res = time_variants(preps)
      base = res["single"]["steps_s"]
      peak = PEAK_TFLOPS.get(kind, {}).get(dt)
      for name, v in res.items():
        members = preps[name]["members"]
        frac = f"{v['gflops'] / (peak * 1e3):.1%}" if peak else "-"
        rows.append(f"| {arch} | {DTYPE_NAMES[dt]} | {name} | {_fmt(v['steps_s'] / members)} | "
                    f"{_fmt(v['steps_s'])} | {v['steps_s'] / base:.2f}x | "
                    f"{1e3 * members / v['steps_s']:.3g} | {_fmt(v['mflop_step'])} | "
                    f"{_fmt(v['gflops'])} | {frac} | {preps[name]['kernels']:.0f} | "
                    f"{v['compile_s']:.1f} | {v['peak_mb']} |")
        print(rows[-1], flush=True)
      del preps
  cores = sorted(os.sched_getaffinity(0))
  machine = (f"{platform.machine()} {jax.default_backend()} ({kind}), {len(cores)} usable CPU "
             f"core(s), jax {jax.__version__}")
  pin = (f"taskset -c {','.join(map(str, cores))} " if len(cores) < (os.cpu_count() or 1) else "")
  return ("| architecture | dtype | program | task-steps/s per member | task-steps/s total | "
          "total vs single | ms per step | MFLOP/step | GFLOP/s | of peak | kernels/step | "
          "compile s | peak MB |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
          + "\n".join(rows) + f"\n\nBatch {_BATCH.value} per task, round-robin, gumbel_matrix; "
          f"each call: {_rounds_text()} per member; median of {_REPEATS.value} timed calls "
          "after a warm-up, interleaved across the programs of an architecture. single: one "
          "run's call; S=k: k members vmapped (each its own keys and task order, the data "
          "shared). ms per step: one member's step latency. MFLOP/step: XLA's cost analysis "
          "of one update per member. Machine: " + machine + ".\n"
          f"Command: `{pin}python -m experiments.benchmark {shlex.join(sys.argv[1:])}`\n")


def startup_run(config: str, overrides: list, cache: str, workdir: str) -> dict:
  """One run of ``experiments.main`` in a fresh process: seconds to its "compiled the training
  step" line (``startup_s``), the compile time that line gives (``compile_s``) and its whole
  wall time (``wall_s``). Raises ``RuntimeError`` (the run's last lines) if it fails."""
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


def startup_table() -> str:
  """``--mode=startup``'s table (Markdown, with the command and the machine)."""
  overrides = shlex.split(_OVERRIDES.value)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    for label, where in (("cache off, run 1", ""), ("cache off, run 2", ""),
                         ("cache on, run 1 (fills it)", cache),
                         ("cache on, run 2 (reads it)", cache)):
      wd = os.path.join(tmp, f"w{len(rows)}")
      rows.append((label, startup_run(_CONFIG.value, overrides, where, wd)))
  out = [f"Command: `python -m experiments.benchmark {shlex.join(sys.argv[1:])}`", "",
         f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
         f"{platform.python_version()}", "",
         "| run | start-up to the compiled step (s) | compile (s) | whole run (s) |",
         "|---|---|---|---|"]
  out += [f"| {label} | {r['startup_s']:.1f} | {r['compile_s']:.2f} | {r['wall_s']:.1f} |"
          for label, r in rows]
  return "\n".join(out) + "\n"


def main(argv):
  del argv
  if _MODE.value == "population":
    text = population_table()
    print(text)
    if _WRITE.value:
      write_table(_WRITE.value, text, _SECTION.value)
    return
  if _MODE.value == "startup":
    text = startup_table()
    print(text)
    if _WRITE.value:
      with open(_WRITE.value, "w") as f:
        f.write(text)
    return
  rows = []
  for arch in _ARCH.value:
    f32 = "float32"
    if arch == "synthetic":  # no convolutions, no images
      variants = [("ours", True, "auto", False, "round_robin", "auto", f32)]
    else:
      variants = [(f"ours {lay} conv={i}" + ("" if dt == f32 else f" {DTYPE_NAMES[dt]}"),
                   True, i, False, "round_robin", lay, dt)
                  for dt in _DTYPES.value for lay in _LAYOUTS.value for i in _IMPLS.value]
    if _JOINT.value:
      variants.append(("ours joint (auto)", True, "auto", False, "joint", "auto", f32))
    if _REF.value:
      variants.append(("reference", False, "xla", True, "round_robin", "nhwc", f32))
    preps = {}
    for name, fused, impl, per_batch, schedule, layout, dt in variants:
      preps[name] = prepare(arch, fused, impl, per_batch, schedule, layout, dt)
      print(f"{arch:12s} {name:28s} compiled in {preps[name]['compile_s']:.1f} s", flush=True)
    res = time_variants(preps)
    del preps
    for name, v in res.items():
      print(f"{arch:12s} {name:28s} {_fmt(v['steps_s']):>9s} steps/s", flush=True)
    ref = res.get("reference")
    for name, v in res.items():
      speedup = f"{v['steps_s'] / ref['steps_s']:.1f}x" if ref else "-"
      rows.append((arch, name, v, speedup))
  md = ["| architecture | implementation | task-steps/s | examples/s | MFLOP/step | GFLOP/s "
        "| compile s | peak MB | vs reference |",
        "|---|---|---|---|---|---|---|---|---|"]
  for arch, name, v, sp in rows:
    md.append(f"| {arch} | {name} | {_fmt(v['steps_s'])} | {_fmt(v['ex_s'])} | "
              f"{_fmt(v['mflop_step'])} | {_fmt(v['gflops'])} | {v['compile_s']:.1f} | "
              f"{v['peak_mb']} | {sp} |")
  cores = sorted(os.sched_getaffinity(0))
  machine = (f"{platform.machine()} {jax.default_backend()} ({jax.devices()[0].device_kind}), "
             f"{len(jax.devices())} device(s), {len(cores)} usable CPU core(s), "
             f"jax {jax.__version__}")
  pin = (f"taskset -c {','.join(map(str, cores))} " if len(cores) < (os.cpu_count() or 1) else "")
  text = ("\n".join(md) + f"\n\nBatch {_BATCH.value} per task, round-robin (joint: one update per round), median of "
          f"{_REPEATS.value} timed calls after one warm-up call, interleaved across the variants; "
          f"each call: {_rounds_text()}. "
          "MFLOP/step: XLA's cost analysis of one update, per task batch; GFLOP/s: that x "
          "task-steps/s. "
          f"Machine: {machine}.\n"
          f"Command: `{pin}python -m experiments.benchmark {shlex.join(sys.argv[1:])}`\n")
  print(text)
  if _WRITE.value:
    write_table(_WRITE.value, text, _SECTION.value)


HEADER = "# Training throughput\n\nGenerated by the commands below; do not edit by hand.\n"


def write_table(path: str, text: str, section: str = "") -> None:
  """Write ``text`` into ``path``: under ``## section``, or (no section) as the untitled table
  at the top, replacing only that part and keeping every other one as it is (so each command
  regenerates its own table)."""
  old = open(path).read() if os.path.exists(path) else HEADER
  parts = re.split(r"(?m)^## ", old)
  sections = parts[1:]
  if not section:
    head = HEADER.replace("the command below;", "the commands below;") + "\n" + text
  else:
    head = parts[0].replace("the command below;", "the commands below;")
    body = f"{section}\n\n{text}"
    for i, sec in enumerate(sections):
      if sec.split("\n", 1)[0].strip() == section:
        sections[i] = body
        break
    else:
      sections.append(body)
  out = head.rstrip("\n") + "\n\n" + "".join("## " + s.rstrip("\n") + "\n\n" for s in sections)
  with open(path, "w") as f:
    f.write(out.rstrip("\n") + "\n")


if __name__ == "__main__":
  app.run(main)
