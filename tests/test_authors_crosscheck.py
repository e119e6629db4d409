"""experiments/authors_crosscheck.py without TensorFlow: --help, the gmr import, the table."""

import json
import os
import subprocess
import sys

import pytest
from scipy import stats

from experiments import authors_crosscheck as ac

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "authors_crosscheck.py")


@pytest.mark.parametrize("how", ["script", "module"])
def test_help_prints_usage_writes_nothing_and_needs_no_tensorflow(tmp_path, how):
  cmd = ([sys.executable, SCRIPT] if how == "script"
         else [sys.executable, "-m", "experiments.authors_crosscheck"])
  env = dict(os.environ, PYTHONPATH=ROOT)
  for args in (["--help"], ["run", "--help"], ["table", "--help"]):
    p = subprocess.run(cmd + args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage:")
  assert os.listdir(tmp_path) == []
  p = subprocess.run([sys.executable, "-c", "import sys, experiments.authors_crosscheck; "
                      "print('tensorflow' in sys.modules)"], cwd=ROOT, capture_output=True,
                     text=True)
  assert p.stdout.strip() == "False", p.stderr


def _run_file(path, impl, method, seed, acc, variant=""):
  per_task = dict(zip(ac.TASKS, acc))
  run = {"impl": impl, "variant": variant, "method": method, "seed": seed,
         "acc_per_task": per_task, "acc_mean": sum(acc) / len(acc), "active_fraction": 1.0,
         "wall_time_s": 10.0, "task_steps_per_s": 300.0, "command": f"cmd {method} {seed}"}
  with open(path, "w") as f:
    json.dump(run, f)


def test_table_from_fake_runs(tmp_path):
  runs = tmp_path / "runs"
  runs.mkdir()
  _run_file(runs / "a0.json", "authors_tf1", "shared_bottom", 0, [95.0, 95.0, 96.0, 96.0])
  _run_file(runs / "a1.json", "authors_tf1", "shared_bottom", 1, [96.0, 96.0, 97.0, 97.0])
  _run_file(runs / "g0.json", "gmr", "shared_bottom", 0, [96.0] * 4,
            variant="sparse_head_updates=false")
  heads = {"mode": "heads", "method": "shared_bottom", "seed": 0, "tensorflow": "2.x",
           "command": "cmd heads", "head_of_task_0": "layer/component0/dense/kernel:0",
           "gradient_is_none": {"c/component0/k": False, "c/component1/k": False},
           "gradient_norm_by_batch_task": {"A": {"c/component0/k": 5.0, "c/component1/k": 0.0},
                                           "B": {"c/component0/k": 0.0, "c/component1/k": 7.0}},
           "change_on_its_own_step": {"weights": 0.005},
           "change_on_task_1_step": {"weights": 0.003, "m": 0.3, "v": 0.001}}
  json.dump(heads, open(runs / "heads.json", "w"))
  ref = tmp_path / "four_mnists.json"
  json.dump({"shared_bottom": {"seeds": [0, 1, 2], "acc_per_seed": [96.0, 96.5, 97.0],
                               "active_fraction": 1.0}}, open(ref, "w"))
  out = str(tmp_path / "out" / "table")
  assert ac.main(["table", f"--runs={runs}", f"--out={out}", f"--reference={ref}"]) == 0
  table = json.load(open(out + ".json"))
  rows = {r["implementation"]: r for r in table["rows"]}
  assert rows["gmr (sparse_head_updates=true; four_mnists.json)"]["mean"] == pytest.approx(96.5)
  a = rows["authors' TF1 code"]
  assert a["n"] == 2 and a["seeds"] == [0, 1] and a["mean"] == pytest.approx(96.0)
  assert a["std"] == pytest.approx(2 ** 0.5 / 2)
  half = stats.t.ppf(0.95, 1) * a["std"] / 2 ** 0.5
  assert a["ci90"] == pytest.approx([96.0 - half, 96.0 + half])
  g = rows["gmr (sparse_head_updates=false)"]
  assert g["n"] == 1 and g["std"] is None and g["ci90"] is None
  md = open(out + ".md").read()
  assert "| shared bottom | authors' TF1 code | 2 | 96.00 +- 0.71 |" in md
  assert "95.7 +- 0.5" in md and "`cmd shared_bottom 1`" in md
  assert "None for 0 of 2 head variables" in md and "(kernel, bias) 5.0-7.0" in md
  assert len(table["heads"]) == 1
  d = {x["a"]: x for x in table["differences"]}
  assert d["gmr (sparse_head_updates=true; four_mnists.json)"]["diff"] == pytest.approx(0.5)
  assert d["gmr (sparse_head_updates=false)"]["ci90"] is None  # n = 1
  welch = stats.ttest_ind([96.0, 96.5, 97.0], [95.5, 96.5], equal_var=False)
  assert d["gmr (sparse_head_updates=true; four_mnists.json)"]["p"] == pytest.approx(welch.pvalue)
  assert table["command"].endswith(f"table --runs={runs} --out={out} --reference={ref}")


def test_gmr_results_become_a_run_file(tmp_path):
  wd = tmp_path / "wd"
  wd.mkdir()
  results = {"method": "gumbel_matrix", "seed": 3, "rounds": 37500, "steps": 150000,
             "wall_time_s": 500.0, "active_fraction": 0.75,
             "tasks": ["mnist", "mnist_copy", "mnist_rot", "mnist_rot_copy"],
             "final": {"accuracy": {"mnist": 0.97, "mnist_copy": 0.96, "mnist_rot": 0.95,
                                    "mnist_rot_copy": 0.98, "mean": 0.965}}}
  json.dump(results, open(wd / "results.json", "w"))
  json.dump({"data_dir": "/data", "sparse_head_updates": False, "data": {"rotate_k": -1}},
            open(wd / "config.json", "w"))
  out = tmp_path / "g.json"
  assert ac.main(["gmr", f"--workdir={wd}", f"--out={out}"]) == 0
  run = json.load(open(out))
  assert run["impl"] == "gmr" and run["seed"] == 3 and run["method"] == "gumbel_matrix"
  assert run["acc_per_task"]["MNIST-Rot"] == pytest.approx(95.0)
  assert run["acc_mean"] == pytest.approx(96.5)
  assert run["task_steps_per_s"] == pytest.approx(300.0)
  assert run["variant"] == "sparse_head_updates=false"
  assert ("--config.data_dir=/data --config.sparse_head_updates=false --config.seed=3"
          in run["command"])
