"""End to end: the CLI contract, results.json, determinism, one-line config errors."""

import json
import os
import subprocess
import sys

import pytest

from experiments.configs import synthetic as synthetic_cfg
from gmr import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(**kw):
  c = synthetic_cfg.get_config("gumbel_matrix,smoke")
  c.synthetic.d = 16
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 30, 10, 10, 10
  for k, v in kw.items():
    c[k] = v
  return c


def numbers(r):
  return {k: r[k] for k in ("final", "allocations", "active_fraction", "steps", "probabilities")}


def test_same_seed_same_results_and_other_seed_differs(tmp_path):
  a = experiment.run(smoke_config(seed=3), str(tmp_path / "a"), quiet=True)
  b = experiment.run(smoke_config(seed=3), str(tmp_path / "b"), quiet=True)
  c = experiment.run(smoke_config(seed=4), str(tmp_path / "c"), quiet=True)
  assert numbers(a) == numbers(b)
  assert a["final"] != c["final"]
  on_disk = json.load(open(tmp_path / "a" / "results.json"))
  assert on_disk["final"] == json.loads(json.dumps(a["final"]))


def test_cli_writes_results_and_metrics(tmp_path):
  wd = tmp_path / "run"
  cmd = [sys.executable, "-m", "experiments.main",
         "--config=experiments/configs/synthetic.py:no_sharing,smoke", f"--workdir={wd}",
         "--config.synthetic.d=16", "--config.num_rounds=20", "--config.log_every=10",
         "--config.eval_every=10", "--config.rounds_per_call=10", "--config.seed=2"]
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr
  assert "steps/s" in p.stdout and "ETA" in p.stdout
  r = json.load(open(wd / "results.json"))
  for key in ("method", "seed", "steps", "wall_time_s", "final", "active_fraction", "allocations"):
    assert key in r
  assert r["method"] == "no_sharing" and r["seed"] == 2 and r["steps"] == 80
  assert set(r["final"]["loss"]) == {"pair0_a", "pair0_b", "pair1_a", "pair1_b", "mean"}
  assert r["allocations"]["layer_0"] == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]
  assert r["active_fraction"] == 0.25
  lines = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  assert [l["round"] for l in lines if l["kind"] == "log"] == [10, 20]
  assert [l["round"] for l in lines if l["kind"] == "eval"] == [10, 20]


@pytest.mark.parametrize("override,field", [
    ("--config.p_init=1.5", "p_init"),
    ("--config.method=magic", "method"),
    ("--config.budget=0", "budget"),
])
def test_cli_config_error_is_one_line_exit_2(tmp_path, override, field):
  cmd = [sys.executable, "-m", "experiments.main",
         "--config=experiments/configs/synthetic.py:smoke", f"--workdir={tmp_path}", override]
  p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2
  err = [l for l in p.stderr.splitlines() if l.startswith("error:")]
  assert len(err) == 1 and err[0].startswith(f"error: {field}:"), p.stderr
  assert "Traceback" not in p.stderr
  assert not os.path.exists(tmp_path / "results.json")
