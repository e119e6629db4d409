"""Sweep runner: methods x seeds x overrides, run here with bounded parallelism, submitted to
Slurm as one job array through submitit, or printed.

  python -m launch.sweep --config=experiments/configs/transfer.py \
      --methods=shared_bottom,no_sharing --seeds=0-4 --grid=rho=0,1 --root=runs/transfer
  python -m launch.sweep --config=experiments/configs/four_mnists.py \
      --methods=gumbel_matrix,shared_bottom,no_sharing,budget --seeds=0-4 --root=runs/four_mnists \
      --launcher=submitit --slurm_partition=gpu --gpus_per_node=1 --timeout_min=120

``--methods`` takes method names or other variant tokens of the config file (``budget``),
appended to the config's variant. Each run gets ``<root>/<method>[__key=value...]/seed_<s>``.
Runs finished with their config (:func:`gmr.workdir.run_status`) are skipped; a workdir that
holds a run of another config stops the sweep before any run, naming it and the differing
fields. Each run's progress lines and errors go to its ``log.txt``. ``--print_only`` prints one
command per run (for another scheduler).

``--population=S``: the seeds of each method and grid point run S at a time as one program
(``experiments.main --seeds``, a vmapped population: gmr/population.py), each member into
its own ``seed_<s>`` workdir; the groups are fixed by the planned seeds (seeds 0..S-1, S..2S-1,
...), so a rerun resumes each group as the same program; its output goes to
``<root>/<name>/population_<first>-<last>.log``. A config whose seeds cannot share a program
(a ``fixed_allocation_from`` per seed) runs one process per seed.

``--launcher=submitit``: one job per run (per program with ``--population``), submitted as one job array (``submitit.AutoExecutor``:
Slurm where ``srun`` exists, local processes otherwise; at most ``--array_parallelism`` at
once on Slurm). A job that is preempted or reaches its time limit gets submitit's signal, has
its run write a checkpoint (SIGTERM to the run) and is requeued with the same command, which
resumes from the workdir. ``--nodes`` / ``--tasks_per_node`` > 1 run one run over several
processes (``jax.distributed``; process 0 writes the workdir). The local thread pool stays the
launcher for this machine: submitit's local executor starts every job at once (no cap).
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import shlex
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from absl import app, flags

FLAGS = flags.FLAGS


def define_plan_flags(required: bool = True) -> None:
  """The flags that name a sweep's runs (``--config``, ``--methods``, ``--seeds``, ``--grid``,
  ``--set``, ``--root``): this command's, and ``launch.aggregate``'s and ``launch.progress``'s,
  which compare the runs they find with these configs (:func:`plan_from_flags`)."""
  flags.DEFINE_string("config", None, "Config file (with optional :variant).")
  flags.DEFINE_list("methods", [], "Methods (empty: the config's own).")
  flags.DEFINE_string("seeds", "0-4", "Seeds: '0-4' or '0,3,7'.")
  flags.DEFINE_multi_string("grid", [], "key=v1,v2,...: one sweep axis (repeatable).")
  flags.DEFINE_multi_string("set", [], "key=value applied to every run (repeatable).")
  flags.DEFINE_string("root", None, "Sweep directory.")
  flags.mark_flags_as_required(["config", "root"] if required else ["root"])


def _define_flags():  # only when run as a script
  define_plan_flags()
  flags.DEFINE_integer("parallel", 1, "Runs at once.")
  flags.DEFINE_bool("print_only", False, "Print the commands instead of running them.")
  flags.DEFINE_integer("population", 1, "Seeds per program: S > 1 trains S seeds of each "
                       "method and grid point as one vmapped program (one job with submitit).",
                       lower_bound=1)
  flags.DEFINE_bool("pin_cpus", False, "Pin each of the --parallel runs to its own CPU core "
                    "(taskset), among the cores this process may use. On small CPUs N "
                    "one-core runs beat one N-core run.")
  flags.DEFINE_enum("launcher", "local", ["local", "submitit"],
                    "local: a thread pool here; submitit: a job array (see above).")
  flags.DEFINE_string("slurm_partition", "", "submitit: the Slurm partition.")
  flags.DEFINE_integer("timeout_min", 240, "submitit: minutes per job (then it checkpoints and "
                       "is requeued).")
  flags.DEFINE_integer("gpus_per_node", 0, "submitit: GPUs per node.")
  flags.DEFINE_integer("cpus_per_task", 1, "submitit: CPU cores per task.")
  flags.DEFINE_integer("array_parallelism", 16, "submitit: jobs of the array at once.")
  flags.DEFINE_integer("nodes", 1, "submitit: nodes per run (multi-host).")
  flags.DEFINE_integer("tasks_per_node", 1, "submitit: processes per node and run.")
  flags.DEFINE_bool("wait", False, "submitit: wait for every job and report them.")
  flags.DEFINE_string("cluster", "", "submitit: force 'slurm' or 'local' (default: Slurm "
                      "where srun exists).")


class RunJob:
  """One run as a submitit job: ``experiments.main`` with its workdir, in a child process
  (stdout and stderr appended to ``<workdir>/log.txt``).

  Checkpointable the submitit way: on preemption or the time limit submitit calls
  :meth:`checkpoint`, which sends SIGTERM to the run (gmr writes a checkpoint and exits) and
  resubmits the same command, which resumes from the workdir. With several tasks per job
  (``tasks_per_node`` x ``nodes``) every task runs the command with its process id; the
  coordinator is ``localhost:<port>`` on one machine and found by JAX on Slurm (``auto``).
  """

  def __init__(self, argv, workdir: str, port: int = 0, log: str = ""):
    self.argv, self.workdir, self.port = list(argv), workdir, port
    self.log = log or os.path.join(workdir, "log.txt")
    self._proc = None

  def command(self):
    import submitit  # pylint: disable=g-import-not-at-top
    argv = list(self.argv)
    env = submitit.JobEnvironment()
    if env.num_tasks > 1:
      address = f"localhost:{self.port}" if env.cluster == "local" else "auto"
      argv += [f"--coordinator_address={address}", f"--num_processes={env.num_tasks}",
               f"--process_id={env.global_rank}"]
    return argv

  def __call__(self):
    import submitit  # pylint: disable=g-import-not-at-top
    usr = submitit.JobEnvironment._usr_sig()  # pylint: disable=protected-access
    os.makedirs(self.workdir, exist_ok=True)
    with open(self.log, "a") as log:
      # the run ignores the preemption signal (its default action is to die without a
      # checkpoint); this job's handler turns it into SIGTERM, which gmr checkpoints on
      self._proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                    preexec_fn=lambda: signal.signal(usr, signal.SIG_IGN))
      rc = self._proc.wait()
    if rc == 143:
      raise RuntimeError(f"{self.workdir}: the run was stopped by SIGTERM after writing a "
                         "checkpoint; it resumes when the job is requeued or the sweep rerun")
    if rc != 0:
      raise RuntimeError(f"{self.workdir}: the run exited with status {rc}; see its log.txt")
    return os.path.join(self.workdir, "results.json")

  def checkpoint(self, *args, **kwargs):
    """Stop the run with a checkpoint, and resubmit the same command (it resumes)."""
    del args, kwargs
    import submitit  # pylint: disable=g-import-not-at-top
    if self._proc is not None and self._proc.returncode is None:
      pid = self._proc.pid
      self._proc.send_signal(signal.SIGTERM)  # gmr: checkpoint, then exit 143
      # wait for its exit without reaping it: this handler interrupted __call__'s wait(),
      # which holds the Popen's lock (a Popen.wait here would block on it)
      deadline = time.time() + 600
      while time.time() < deadline:
        try:
          if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is not None:
            break
        except ChildProcessError:
          break
        time.sleep(0.1)
      else:
        os.kill(pid, signal.SIGKILL)
    return submitit.helpers.DelayedSubmission(RunJob(self.argv, self.workdir, self.port,
                                                     self.log))

  def __getstate__(self):
    return {"argv": self.argv, "workdir": self.workdir, "port": self.port, "log": self.log,
            "_proc": None}


def _free_port() -> int:
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def submit(runs, folder: str, cluster: str = "", partition: str = "", timeout_min: int = 240,
           gpus_per_node: int = 0, cpus_per_task: int = 1, array_parallelism: int = 16,
           nodes: int = 1, tasks_per_node: int = 1):
  """Submit ``runs`` (``[(workdir, argv)]``, see :func:`plan`) as one submitit job array; job
  logs under ``folder``. Returns the submitit jobs (``job.result()`` waits for one)."""
  import submitit  # pylint: disable=g-import-not-at-top
  ex = submitit.AutoExecutor(folder=folder, cluster=cluster or None)
  params = dict(timeout_min=timeout_min, nodes=nodes, tasks_per_node=tasks_per_node,
                cpus_per_task=cpus_per_task, slurm_array_parallelism=array_parallelism)
  if gpus_per_node:
    params["gpus_per_node"] = gpus_per_node
  if partition:
    params["slurm_partition"] = partition
  ex.update_parameters(**params)
  jobs = []
  with ex.batch():
    for run in runs:
      wd, argv = run[:2]
      log = run[2] if len(run) > 2 else ""
      jobs.append(ex.submit(RunJob(argv, wd, _free_port() if nodes * tasks_per_node > 1 else 0,
                                   log)))
  return jobs


def parse_seeds(s: str):
  """:func:`gmr.cli.parse_seeds` (``error: --seeds: ...``, exit 2, for a wrong one)."""
  from gmr import cli  # pylint: disable=g-import-not-at-top
  from gmr.config import ConfigError  # pylint: disable=g-import-not-at-top
  try:
    return cli.parse_seeds(s)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


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
                f"--workdir={wd}", f"--config.seed={seed}"]
        argv += [f"--config.{kv}" for kv in fixed] + [f"--config.{k}={v}" for k, v in combo]
        runs.append((wd, argv))
  return runs


def populations(runs, size: int, status: dict):
  """The sweep's programs when ``size`` seeds share one (``--population``): ``[(folder, argv,
  log, workdirs)]``. The planned seeds of each method and grid point (``runs`` of
  :func:`plan`) are cut into groups of ``size`` in seed order, whatever is finished, so a rerun
  makes the same programs; a group runs when one of its runs is unfinished (finished members
  keep their place and are not written again). A config whose seeds cannot share a program
  (:func:`gmr.population.unsupported`) gives one program per unfinished run."""
  by_name = {}
  for wd, argv in runs:
    by_name.setdefault(os.path.dirname(wd), []).append((wd, argv))
  out = []
  for folder, members in by_name.items():
    if size == 1 or _unsupported(members[0][1]):
      out += [(wd, a, os.path.join(wd, "log.txt"), [wd]) for wd, a in members
              if status[wd].state != "finished"]
      continue
    members.sort(key=lambda m: int(m[0].rsplit("seed_", 1)[1]))
    for i in range(0, len(members), size):
      group = members[i:i + size]
      if all(status[wd].state == "finished" for wd, _ in group):
        continue
      seeds = [int(wd.rsplit("seed_", 1)[1]) for wd, _ in group]
      argv = [a for a in group[0][1] if not a.startswith(("--workdir=", "--config.seed="))]
      argv += [f"--workdir={os.path.join(folder, 'seed_{seed}')}",
               f"--seeds={','.join(map(str, seeds))}"]
      log = os.path.join(folder, f"population_{seeds[0]}-{seeds[-1]}.log")
      out.append((folder, argv, log, [wd for wd, _ in group]))
  # seed-major order: a sweep cut short still has every method at the first seeds
  out.sort(key=lambda p: min(int(w.rsplit("seed_", 1)[1]) for w in p[3]))
  return out


def _unsupported(argv) -> bool:
  from gmr import population  # pylint: disable=g-import-not-at-top
  return population.unsupported(planned_config(argv)) is not None


def planned_config(argv):
  """The config a run of :func:`plan` gets from its command line ``argv`` (its ``--config``
  and ``--config.<field>=<value>`` overrides, as ``experiments.main`` reads them). Raises
  :class:`gmr.config.ConfigError` for a wrong config or override."""
  from gmr import cli  # pylint: disable=g-import-not-at-top
  spec = next(a.split("=", 1)[1] for a in argv if a.startswith("--config="))
  config = cli.load_config(spec)
  for a in argv:
    if a.startswith("--config."):
      name, _, value = a[len("--config."):].partition("=")
      cli.set_field(config, name, value)
  return config


def statuses(runs) -> dict:
  """``{workdir: gmr.workdir.RunStatus}`` of every run of :func:`plan` (``[(workdir, argv)]``):
  missing, unfinished, finished with its config, or holding another config."""
  from gmr import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  return {wd: workdir_lib.run_status(planned_config(a), wd) for wd, a in runs}


def plan_from_flags():
  """:func:`plan` of the flags of :func:`define_plan_flags`, or None without ``--config``."""
  if not FLAGS.config:
    return None
  return plan(FLAGS.config, FLAGS.methods, parse_seeds(FLAGS.seeds), FLAGS.grid, FLAGS.set,
              FLAGS.root)


def main(argv):
  del argv
  from gmr import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from gmr.config import ConfigError  # pylint: disable=g-import-not-at-top
  runs = plan_from_flags()
  if FLAGS.print_only:  # every planned run (or program), finished or not
    unknown = {wd: workdir_lib.RunStatus("missing", None, None) for wd, _ in runs}
    for _, a, _, _ in populations(runs, FLAGS.population, unknown):
      print(shlex.join(a))
    return
  try:
    status = statuses(runs)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  conflicts = [workdir_lib.conflict_line(wd, st) for wd, st in status.items()
               if st.state == "conflict"]
  if conflicts:
    print(f"error: --root: {len(conflicts)} of the sweep's workdirs hold another config ("
          + "; ".join(conflicts) + "); use another --root, or move those runs away "
          "(experiments.main --fresh moves one to <workdir>/previous_<n>/)", file=sys.stderr)
    sys.exit(2)
  todo = [(wd, a) for wd, a in runs if status[wd].state != "finished"]
  programs = populations(runs, FLAGS.population, status)
  print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to run"
        + (f" in {len(programs)} programs of up to {FLAGS.population} seeds"
           if FLAGS.population > 1 else ""), flush=True)
  if FLAGS.launcher == "submitit":
    if not programs:
      return
    jobs = submit([(wd, a, log) for wd, a, log, _ in programs],
                  os.path.join(FLAGS.root, "_submitit"), FLAGS.cluster,
                  FLAGS.slurm_partition, FLAGS.timeout_min, FLAGS.gpus_per_node,
                  FLAGS.cpus_per_task, FLAGS.array_parallelism, FLAGS.nodes,
                  FLAGS.tasks_per_node)
    print(f"submitted {len(jobs)} jobs ({jobs[0].job_id.split('_')[0]}...): logs in "
          f"{FLAGS.root}/_submitit and each program's log", flush=True)
    if FLAGS.wait:
      failed = 0
      for (wd, _, _, _), job in zip(programs, jobs):
        try:
          job.result()
          print(f"ok {wd}", flush=True)
        except Exception as e:  # pylint: disable=broad-except  (a job's own failure)
          failed += 1
          print(f"FAILED {wd}: {str(e).strip().splitlines()[-1] if str(e).strip() else e}",
                flush=True)
      if failed:
        print(f"{failed} runs failed: see their log", file=sys.stderr)
        sys.exit(1)
    return

  free = queue.Queue()
  cpus = sorted(os.sched_getaffinity(0))  # the cores this process may use (`taskset -c 1 ...`)
  for i in range(max(1, FLAGS.parallel)):
    free.put(cpus[i % len(cpus)])

  def one(program):
    wd, a, log_path, _ = program
    os.makedirs(wd, exist_ok=True)
    t = time.time()
    cpu = free.get()
    if FLAGS.pin_cpus and shutil.which("taskset"):
      a = ["taskset", "-c", str(cpu)] + a
    with open(log_path, "a") as log:
      rc = subprocess.call(a, stdout=log, stderr=subprocess.STDOUT)
    free.put(cpu)
    name = log_path if log_path != os.path.join(wd, "log.txt") else wd
    print(f"{'ok ' if rc == 0 else 'FAILED'} {name} ({time.time() - t:.0f}s)", flush=True)
    return rc

  with ThreadPoolExecutor(max(1, FLAGS.parallel)) as ex:
    failed = sum(rc != 0 for rc in ex.map(one, programs))
  if failed:
    print(f"{failed} programs failed: see their log", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
