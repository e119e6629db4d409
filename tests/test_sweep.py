"""launch.sweep through submitit (its local executor here; Slurm has the same code path): a job
array of runs, a preempted job requeued and resumed to the numbers of an uninterrupted run,
and one run over two processes."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments.configs import synthetic as synthetic_cfg
from gmr import experiment
from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = "experiments/configs/synthetic.py"


def _results(wd):
  with open(os.path.join(wd, "results.json")) as f:
    r = json.load(f)
  return {k: r[k] for k in ("final", "allocations", "probabilities", "steps", "rounds")}


def test_a_sweep_through_submitit_runs_every_run_and_skips_finished_ones(tmp_path):
  root = tmp_path / "sweep"
  cmd = [sys.executable, "-m", "launch.sweep", f"--config={SYN}:smoke",
         "--methods=gumbel_matrix,no_sharing", "--seeds=0", f"--root={root}",
         "--set=synthetic.d=16", "--launcher=submitit", "--cluster=local", "--timeout_min=10",
         "--wait"]
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert p.returncode == 0, p.stdout + p.stderr
  assert "2 runs, 0 finished, 2 to run" in p.stdout
  assert p.stdout.count("ok ") == 2
  c = synthetic_cfg.get_config("gumbel_matrix,smoke")
  c.synthetic.d = 16
  ref = experiment.run(c, str(tmp_path / "direct"), quiet=True)
  assert _results(root / "gumbel_matrix" / "seed_0")["final"] == json.loads(json.dumps(ref["final"]))
  again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert again.returncode == 0 and "2 runs, 2 finished, 0 to run" in again.stdout


LONG = ["--config.synthetic.d=16", "--config.synthetic.num_train=512",
        "--config.synthetic.num_test=128", "--config.num_rounds=20000", "--config.log_every=500",
        "--config.eval_every=0", "--config.rounds_per_call=100", "--config.checkpoint_every=500",
        "--config.seed=1"]


def test_a_preempted_job_checkpoints_is_requeued_and_ends_as_an_uninterrupted_run(tmp_path,
                                                                                monkeypatch):
  monkeypatch.chdir(ROOT)
  runs = sweep.plan(f"{SYN}:smoke", ["gumbel_matrix"], [1], [], [a[len("--config."):]
                                                                 for a in LONG], str(tmp_path))
  wd = runs[0][0]
  ref_wd = str(tmp_path / "reference")
  argv = [a.replace(f"--workdir={wd}", f"--workdir={ref_wd}") for a in runs[0][1]]
  assert subprocess.run(argv, cwd=ROOT, timeout=900).returncode == 0
  job, = sweep.submit(runs, str(tmp_path / "_submitit"), cluster="local", timeout_min=30)
  t = time.time()
  while not os.path.isdir(os.path.join(wd, "checkpoints", "500")):
    assert job.state not in ("FINISHED", "FAILED") and time.time() - t < 600, job.state
    time.sleep(0.2)
  assert not os.path.exists(os.path.join(wd, "results.json"))
  # what Slurm does at preemption or near the time limit: submitit's signal (USR2) to the
  # job's task process (here the child of submitit's local controller)
  ctrl = job._process.pid
  with open(f"/proc/{ctrl}/task/{ctrl}/children") as f:
    tasks = [int(p) for p in f.read().split()]
  assert len(tasks) == 1
  import signal
  os.kill(tasks[0], signal.SIGUSR2)
  job.result()
  log = open(os.path.join(wd, "log.txt")).read()
  assert "interrupted: stopped by signal 15" in log  # then the requeued job resumed:
  got = json.load(open(os.path.join(wd, "results.json")))
  assert got["resumed_from_round"] is not None and 0 < got["resumed_from_round"] < 20000
  assert _results(wd) == _results(ref_wd)


def test_one_run_over_two_processes_through_the_launcher(tmp_path, monkeypatch):
  """tasks_per_node=2: two processes (2 CPU devices each) joined by jax.distributed, one
  4-way data-parallel run written by process 0, with the numbers of a one-process run."""
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
  fixed = ["synthetic.num_train=640", "synthetic.num_test=200", "synthetic.d=16",
           "num_rounds=12", "log_every=6", "rounds_per_call=6", "batch_size=32"]
  runs = sweep.plan(SYN, [], [0], [], fixed + ["data_parallel=0"], str(tmp_path / "two"))
  job, = sweep.submit(runs, str(tmp_path / "_submitit"), cluster="local", timeout_min=30,
                      tasks_per_node=2)
  job.results()
  multi = json.load(open(os.path.join(runs[0][0], "results.json")))
  one = sweep.plan(SYN, [], [0], [], fixed, str(tmp_path / "one"))
  monkeypatch.delenv("XLA_FLAGS")
  assert subprocess.run(one[0][1], cwd=ROOT, timeout=900).returncode == 0
  single = json.load(open(os.path.join(one[0][0], "results.json")))
  np.testing.assert_allclose(multi["final"]["loss"]["mean"], single["final"]["loss"]["mean"],
                             rtol=1e-5)
  np.testing.assert_allclose(multi["probabilities"]["layer_0"], single["probabilities"]["layer_0"],
                             atol=1e-5)
