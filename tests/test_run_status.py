"""What counts as finished: a workdir's run is finished only when finished with this config
(gmr.workdir.run_status), and the sweep, aggregate, tables and progress apply that one rule,
naming a workdir that holds another config with the fields that differ."""

import json
import os
import subprocess
import sys

import pytest

from gmr import workdir
from launch import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = "experiments/configs/synthetic.py"
TINY = ["synthetic.d=16", "synthetic.num_train=128", "synthetic.num_test=64", "num_rounds=4",
        "log_every=2", "eval_every=0", "rounds_per_call=2", "alloc_history_every=0"]
# one changed field of each kind: a top-level float, a nested suite field, the method
CHANGES = {"learning_rate": "0.5", "synthetic.num_train": "256", "method": "no_sharing"}


def _env():
  return dict(os.environ, PYTHONPATH=ROOT)


def _sweep(root, *extra, timeout=600):
  return subprocess.run([sys.executable, "-m", "launch.sweep", f"--config={SYN}:smoke",
                         "--seeds=0", f"--root={root}", *[f"--set={kv}" for kv in TINY], *extra],
                        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
  """One tiny run made by launch.sweep (local launcher): ``<root>/default/seed_0``."""
  root = tmp_path_factory.mktemp("status") / "sweep"
  p = _sweep(root)
  assert p.returncode == 0, p.stdout + p.stderr
  assert "1 runs, 0 finished, 1 to run" in p.stdout
  return root


def _plan(root, *changes):
  return sweep.plan(f"{SYN}:smoke", [], [0], [], TINY + list(changes), str(root))


def test_a_run_is_finished_only_with_its_own_config(finished_sweep, monkeypatch):
  monkeypatch.chdir(ROOT)
  (wd, argv), = _plan(finished_sweep)
  st = workdir.run_status(sweep.planned_config(argv), wd)
  assert st.state == "finished" and st.diff == [] and st.results["seed"] == 0
  for field, value in CHANGES.items():
    (wd2, argv2), = _plan(finished_sweep, f"{field}={value}")
    assert wd2 == wd  # the same workdir, another config
    config = sweep.planned_config(argv2)
    st = workdir.run_status(config, wd)
    assert (st.state, st.diff, st.results) == ("conflict", [field], None), field
    assert workdir.finished_results(config, wd) is None
    assert field in workdir.conflict_line(wd, st)


def test_missing_and_unfinished_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(ROOT)
  (wd, argv), = _plan(tmp_path)
  config = sweep.planned_config(argv)
  assert workdir.run_status(config, wd).state == "missing"
  os.makedirs(wd)
  workdir.write_json_atomic(os.path.join(wd, "config.json"), workdir.config_json(config))
  assert workdir.run_status(config, wd) == ("unfinished", [], None)
  with open(os.path.join(wd, "config.json"), "w") as f:
    f.write("{")  # cut by a kill: not this run's config
  assert workdir.run_status(config, wd).state == "conflict"


def test_the_sweep_counts_only_runs_finished_with_its_config(finished_sweep):
  p = _sweep(finished_sweep)
  assert p.returncode == 0 and "1 runs, 1 finished, 0 to run" in p.stdout, p.stdout + p.stderr
  before = sorted(os.listdir(finished_sweep / "default" / "seed_0"))
  for field, value in CHANGES.items():
    p = _sweep(finished_sweep, f"--set={field}={value}", timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --root: "), (
        p.stdout + p.stderr)
    assert f"{finished_sweep / 'default' / 'seed_0'}" in lines[0] and f"differs in {field})" in (
        lines[0])
    assert "finished" not in p.stdout  # refused before counting or running anything
  assert sorted(os.listdir(finished_sweep / "default" / "seed_0")) == before


def test_a_run_log_shows_its_progress(finished_sweep):
  """Each run's log.txt (the local launcher's; submitit's job runs the same command) holds
  the run's progress lines."""
  log = open(finished_sweep / "default" / "seed_0" / "log.txt").read()
  assert "gmr: gumbel_matrix on synthetic_pairs" in log and "done in" in log
  for _, argv in _plan(finished_sweep) + sweep.plan(SYN, ["no_sharing"], [0, 1], [], [], "r"):
    assert "--quiet" not in argv
    assert sweep.RunJob(argv, "wd").argv == argv


def test_aggregate_and_progress_leave_out_a_run_of_another_config(finished_sweep, tmp_path):
  plan = [f"--config={SYN}:smoke", "--seeds=0", *[f"--set={kv}" for kv in TINY]]
  wd = str(finished_sweep / "default" / "seed_0")
  run = lambda mod, *a: subprocess.run(
      [sys.executable, "-m", mod, f"--root={finished_sweep}", *a], cwd=ROOT, env=_env(),
      capture_output=True, text=True, timeout=300)
  p = run("launch.aggregate", *plan)
  assert p.returncode == 0 and "| default | 1 |" in p.stdout, p.stderr[-2000:]
  p = run("launch.aggregate", *plan, "--set=learning_rate=0.5")
  assert p.returncode == 2 and "| default |" not in p.stdout
  assert f"skipped {wd}: holds a run with a different config (differs in learning_rate)" in (
      p.stderr)
  out = str(tmp_path / "progress")
  p = run("launch.progress", *plan, f"--out={out}")
  assert p.returncode == 0 and "| default/seed_0 | 4 | 4 | yes |" in p.stdout, p.stderr[-2000:]
  p = run("launch.progress", *plan, "--set=synthetic.num_train=256", f"--out={out}")
  assert p.returncode == 0 and "default/seed_0 |" not in p.stdout, p.stderr[-2000:]
  assert f"{wd}: holds a run with a different config (differs in synthetic.num_train)" in (
      open(out + ".md").read())


def test_tables_leave_out_a_run_of_another_config(tmp_path):
  """launch.tables over a recipe's root: a workdir made with another learning rate is named in
  the table's notes, and its numbers are in no row."""
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  cwd = os.getcwd()
  os.chdir(tmp_path)
  try:
    runs = sweep.plan("experiments/configs/synthetic.py", ["gumbel_matrix", "no_sharing"], [0],
                      [], [], "runs")
    for wd, argv in runs:
      config = workdir.config_json(sweep.planned_config(argv))
      if wd.startswith(os.path.join("runs", "gumbel_matrix")):
        config["learning_rate"] = 0.5
      os.makedirs(wd)
      workdir.write_json_atomic(os.path.join(wd, "config.json"), config)
      workdir.write_json_atomic(os.path.join(wd, "results.json"), {
          "seed": 0, "final": {"loss": {"mean": 1.0}}, "active_fraction": 0.5,
          "wall_time_s": 2.0, "steps": 10, "method": config["method"]})
  finally:
    os.chdir(cwd)
  p = subprocess.run([sys.executable, "-m", "launch.tables", "synthetic", "--seeds=0",
                      "--no_run", "--root=runs"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  md = open(tmp_path / "results" / "synthetic.md").read()
  assert "| no_sharing | 1 |" in md and "| gumbel_matrix |" not in md, p.stderr[-3000:]
  assert ("runs/gumbel_matrix/seed_0: holds a run with a different config (differs in "
          "learning_rate)") in md
  assert "skipped runs/gumbel_matrix/seed_0" in p.stderr
