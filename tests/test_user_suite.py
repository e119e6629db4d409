"""A suite a user defines in a config file of their own, outside gmr (``gmr.data.register`` with
only a build function), runs like a built-in one: validated (``select_by`` against what one
small build reports), from the command line, in a sweep, and tabulated."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

USER_CONFIG = '''
"""Two noisy linear regression tasks of my own, on the transfer experiment's network."""
import numpy as np
from gmr import data
from gmr.data.suite import Split, TaskSuite
from experiments.configs import transfer


@data.register("user_pairs")
def build(config, key):
  del key
  rng = np.random.default_rng(config.seed)
  d = config.synthetic.d
  w = rng.normal(size=(2, d)) / np.sqrt(d)

  def split(n):
    x = rng.normal(size=(n, d)).astype(np.float32)
    return Split.from_tasks([x, x], [(x @ w[t]).astype(np.float32) for t in range(2)])
  return TaskSuite("user_pairs", ("first", "second"), "mse", (1, 1), split(256), split(64),
                   validation=split(64))


def get_config(variant=""):
  c = transfer.get_config(variant or "shared_bottom,smoke")
  c.suite = "user_pairs"
  c.synthetic.d = 8
  c.num_rounds, c.eval_every, c.log_every, c.rounds_per_call = 20, 10, 10, 10
  c.select_by = "validation.loss.mean"
  return c
'''


def _run(args, cwd):
  r = subprocess.run([sys.executable, "-m"] + args, cwd=cwd, capture_output=True, text=True,
                     timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))
  return r


@pytest.fixture
def user_config(tmp_path):
  path = tmp_path / "mine" / "user_suite.py"
  path.parent.mkdir()
  path.write_text(USER_CONFIG)
  return str(path)


def test_a_users_suite_runs_from_the_command_line_and_a_sweep(tmp_path, user_config):
  wd = str(tmp_path / "run")
  r = _run(["experiments.main", f"--config={user_config}", f"--workdir={wd}"], ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  res = json.load(open(os.path.join(wd, "results.json")))
  assert res["tasks"] == ["first", "second"] and res["suite"] == "user_pairs"
  assert res["final_validation"]["loss"]["mean"] > 0  # selected by its validation split

  # a name select_by cannot find is one line, exit 2, before anything is written
  bad = str(tmp_path / "bad")
  r = _run(["experiments.main", f"--config={user_config}", f"--workdir={bad}",
            "--config.select_by=validation.accuracy.mean"], ROOT)
  assert r.returncode == 2 and not os.path.exists(bad)
  assert r.stderr.strip().splitlines()[-1].startswith(
      "error: select_by: suite 'user_pairs' reports no accuracy")

  root = str(tmp_path / "sweep")
  r = _run(["launch.sweep", f"--config={user_config}", "--methods=no_sharing",
            "--seeds=0-1", f"--root={root}", "--parallel=2"], ROOT)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
  r = _run(["launch.aggregate", f"--root={root}", f"--out={tmp_path / 'table'}"], ROOT)
  assert r.returncode == 0, r.stderr[-2000:]
  table = json.load(open(tmp_path / "table.json"))
  rows = table["rows"] if "rows" in table else table
  assert set(rows) == {"no_sharing"} and rows["no_sharing"]["n"] == 2


def test_a_users_suite_is_built_once_per_run(tmp_path):
  """Its description is read from a build made while the config is checked, and the run trains
  on that same build; a build for another config is not kept."""
  import numpy as np
  from experiments.configs import transfer
  from gmr import data, experiment
  from gmr.data.suite import Split, TaskSuite
  builds = []

  @data.register("counted_pairs")
  def build(config, key):
    del key
    builds.append(config.seed)
    x = np.random.default_rng(config.seed).normal(size=(64, 8)).astype(np.float32)
    split = Split.from_tasks([x, x], [x.sum(1), x[:, 0]])
    return TaskSuite("counted_pairs", ("sum", "first"), "mse", (1, 1), split, split,
                     validation=split)
  try:
    c = transfer.get_config("shared_bottom,smoke")
    c.suite, c.synthetic.d, c.select_by = "counted_pairs", 8, "validation.loss.mean"
    c.num_rounds, c.rounds_per_call, c.log_every, c.eval_every = 4, 2, 2, 2
    res = experiment.run(c, str(tmp_path / "w"), quiet=True)
    assert builds == [0] and res["tasks"] == ["sum", "first"]
    other = c.copy_and_resolve_references()
    other.seed = 1
    assert data.describe(other) == (2, (1, 1), 8) and builds == [0, 1]
    data.load_suite(c)  # another config: built anew, and the build for seed 1 is dropped
    assert builds == [0, 1, 0] and not data._BUILT  # pylint: disable=protected-access
  finally:
    data.SUITES.pop("counted_pairs")
