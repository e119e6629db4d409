"""gmr.analysis.tables: a sweep's runs -> summary rows and the Markdown table; and the
``python -m launch.aggregate`` command line that writes them."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from gmr.analysis import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_aggregate_groups_use_the_run_embeddings():
  """Table I's group columns: routed methods compare allocations, TAPS its task-specific layers
  (its allocations are all ones, which would call every grouping 'shared')."""
  res = {"tasks": ["a", "a2", "b", "b2"], "task_groups": [[0, 1], [2, 3]],
         "allocations": {"layer_0": [[1, 0], [1, 0], [0, 1], [0, 1]]}}
  assert tables.groups_recovered(res) and tables.groups_identical(res)
  res["allocations"]["layer_0"][3] = [1, 1]
  assert not tables.groups_recovered(res) and not tables.groups_identical(res)
  layers = ["l0", "l1"]
  res["method"] = "taps"
  res["taps"] = {"scores": {t: {l: 0.0 for l in layers} for t in res["tasks"]},
                 "task_specific_layers": {"a": ["l0"], "a2": ["l0"], "b": ["l1"], "b2": ["l1"]}}
  assert tables.groups_recovered(res)  # by the task-specific layers, not the allocations
  res["taps"]["task_specific_layers"] = {t: [] for t in res["tasks"]}  # nothing adapted
  assert tables.groups_identical(res) and not tables.groups_recovered(res)


def test_cluster_table_columns_per_seed():
  """gmr.analysis.tables: a clusters sweep row lists ARI, nearest-task agreement and the
  within-cluster disagreement per seed, seeds in order."""
  alloc = {"layer_0": [[1, 0, 0], [1, 1, 1], [0, 0, 1]]}
  probs = {"layer_0": [[0.99, 0.02, 0.03], [0.95, 0.97, 0.55], [0.01, 0.4, 0.9]]}
  run = lambda seed, a: {"seed": seed, "final": {"loss": {"mean": 1.0}}, "active_fraction": 0.5,
                         "wall_time_s": 1.0, "steps": 1, "allocations": a, "probabilities": probs,
                         "task_clusters": {"a": [0, 1], "b": [2]}}
  same = {"layer_0": [[1, 0, 0], [1, 0, 0], [0, 0, 1]]}
  s = tables.summarize([run(1, same), run(0, alloc)])
  md = tables.to_markdown({"gm": s})
  assert "within a cluster (of them decided by both)" in md
  assert "| a 2.0 (1.0) b -; a 0.0 (0.0) b - |" in md


def _results(seed, loss, acc=None):
  r = {"seed": seed, "final": {"loss": {"mean": loss}}, "active_fraction": 0.5,
       "wall_time_s": 2.0, "steps": 10}
  if acc is not None:
    r["final"]["accuracy"] = {"mean": acc}
  return r


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:invalid value")
def test_summarize_numbers_and_the_t_interval():
  runs = [_results(2, 1.0, 0.90), _results(0, 3.0, 0.80), _results(1, 5.0, 0.85)]
  s = tables.summarize(runs)
  assert s["seeds"] == [0, 1, 2] and s["n"] == 3 and s["loss_per_seed"] == [1.0, 3.0, 5.0]
  assert s["loss_mean"] == 3.0 and s["loss_std"] == 2.0
  assert s["loss_ci90"] == pytest.approx(2.919986 * 2 / math.sqrt(3), rel=1e-6)  # t(0.95, 2)
  assert s["acc_mean"] == pytest.approx(85.0) and s["acc_std"] == pytest.approx(5.0)
  assert s["acc_ci90"] == pytest.approx(2.919986 * 5 / math.sqrt(3), rel=1e-6)
  one = tables.summarize([_results(0, 1.0)])
  assert one["loss_std"] == 0.0 and math.isnan(one["loss_ci90"]) and "acc_mean" not in one
  md = tables.to_markdown({"a": s, "b": one}, "T", "cmd")
  assert md.startswith("### T\n") and md.endswith("Command: `cmd`\n")
  assert "| a | 3 | 3.0000 +- 2.0000 | [-0.3717, 6.3717] | 85.00 +- 5.00 | 50.0% |" in md
  with pytest.raises(IndexError):
    tables.summarize([])


def test_collect_and_the_aggregate_command_line(tmp_path):
  for name, losses in (("x", (1.0, 3.0, 5.0)), ("y", (2.0,))):
    for seed, loss in enumerate(losses):
      d = tmp_path / "sweep" / name / f"seed_{seed}"
      os.makedirs(d)
      with open(d / "results.json", "w") as f:
        json.dump(_results(seed, loss), f)
  runs = tables.collect(str(tmp_path / "sweep"))
  assert list(runs) == ["x", "y"] and [r["seed"] for r in runs["x"]] == [0, 1, 2]
  assert tables.collect(str(tmp_path / "none")) == {}
  out = tmp_path / "out" / "t"
  p = subprocess.run([sys.executable, "-m", "launch.aggregate", f"--root={tmp_path / 'sweep'}",
                      f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  with open(f"{out}.json") as f:
    table = json.load(f)
  assert table["x"]["loss_ci90"] == pytest.approx(tables.summarize(runs["x"])["loss_ci90"])
  assert open(f"{out}.md").read() == tables.to_markdown(
      {n: tables.summarize(r) for n, r in runs.items()})
  p = subprocess.run([sys.executable, "-m", "launch.aggregate", f"--root={tmp_path / 'none'}"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and "error: --root: no finished run under" in p.stderr


def test_every_table_row_names_its_combination_rule():
  """Table I's comparison must not mix rules silently: each row's rule comes from its recipe's
  config, and the Markdown table shows it."""
  from gmr.analysis import tables as T
  from launch.tables import RECIPES, row_combine
  spec = RECIPES["four_mnists"]["config"]
  rules = {row: row_combine(spec, row) for row in RECIPES["four_mnists"]["methods"].split(",")}
  assert rules == {"no_sharing": "mean", "shared_bottom": "sum", "shared_bottom_mean": "mean",
                   "gumbel_matrix": "mean", "fixed_from_gm": "mean", "budget": "mean", "taps": "sum"}
  assert row_combine("experiments/configs/transfer.py", "shared_bottom__rho=0.0") == "mean"
  row = {"n": 2, "loss_mean": 0.1, "loss_std": 0.01, "loss_ci90": 0.02, "active_fraction": 1.0}
  md = T.to_markdown({"shared_bottom": dict(row, combine="sum"),
                      "shared_bottom_mean": dict(row, combine="mean")})
  assert "| run | seeds | combine |" in md
  assert "| shared_bottom | 2 | sum |" in md and "| shared_bottom_mean | 2 | mean |" in md


def test_tables_say_which_commit_made_their_runs(tmp_path):
  """Each results.json records the code that made it; a table counts the runs per commit,
  and runs without the record apart (with the checkout their folder is in)."""
  import subprocess
  from gmr import workdir
  from launch.tables import runs_code
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  here = workdir.code_version()
  assert here["version"] == __import__("gmr").__version__
  try:
    head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    head = None
  assert here["commit"] == head
  copy = tmp_path / "gmr"
  copy.mkdir()
  (copy / "__init__.py").write_text("")
  assert workdir.code_version(str(copy))["commit"] is None  # a copy outside any checkout
  collected = {"a": [{"code": {"commit": "abc1234", "dirty": False}}] * 2,
               "b": [{"code": {"commit": "abc1234", "dirty": True}}, {}]}
  assert runs_code(collected, str(tmp_path)) == (
      "abc1234 (2 runs); abc1234 with uncommitted changes (1 runs); not recorded in 1 runs, "
      "whose folder is in a checkout at unknown (not a git checkout)")


def test_checkout_commit_counts_code_changes_not_outputs(tmp_path):
  """A checkout is dirty when a tracked file outside results/ changed; outputs in results/
  and untracked files do not count; tables and results.json read it from the same place."""
  import shutil
  import subprocess
  from gmr import workdir
  from launch.tables import code_commit
  if shutil.which("git") is None:
    assert workdir.checkout_commit(str(tmp_path)) is None
    return
  git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c",
                                   "user.email=t@t", *a], capture_output=True, text=True,
                                  check=True).stdout.strip()
  assert workdir.checkout_commit(str(tmp_path)) is None  # not a checkout yet
  (tmp_path / "results").mkdir()
  (tmp_path / "code.py").write_text("x = 1\n")
  (tmp_path / "results" / "t.md").write_text("| a |\n")
  git("init", "-q")
  git("add", ".")
  git("commit", "-q", "-m", "c")
  head = git("rev-parse", "--short", "HEAD")
  assert workdir.checkout_commit(str(tmp_path)) == (head, False)
  (tmp_path / "results" / "t.md").write_text("| b |\n")
  (tmp_path / "new.py").write_text("")
  assert workdir.checkout_commit(str(tmp_path / "results")) == (head, False)
  assert code_commit(str(tmp_path)) == head
  (tmp_path / "code.py").write_text("x = 2\n")
  assert workdir.checkout_commit(str(tmp_path)) == (head, True)
  assert code_commit(str(tmp_path)) == f"{head} with uncommitted changes"
  assert workdir.checkout_commit(str(tmp_path), top=str(tmp_path / "results")) is None


def test_a_table_names_the_machines_its_runs_ran_on(tmp_path):
  """A recipe whose runs did not run where its table is made (``runs_note``) says where they
  ran beside this command's machine."""
  from gmr import workdir
  from launch import sweep
  from launch.tables import RECIPES
  d = tmp_path / "runs" / "gumbel_matrix" / "seed_0"
  os.makedirs(d)
  with open(d / "results.json", "w") as f:
    json.dump(_results(0, 1.0, 0.9), f)
  (_, argv), = sweep.plan(os.path.join(ROOT, RECIPES["clusters40_paper"]["config"]),
                          ["gumbel_matrix"], [0], [], [], "runs")
  workdir.write_json_atomic(str(d / "config.json"),
                            workdir.config_json(sweep.planned_config(argv)))
  os.symlink(os.path.join(ROOT, "experiments"), tmp_path / "experiments")
  env = dict(os.environ, PYTHONPATH=ROOT)
  p = subprocess.run([sys.executable, "-m", "launch.tables", "clusters40_paper", "--seeds=0",
                      "--no_run", "--root=runs"], cwd=tmp_path, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  md = open(tmp_path / "results" / "clusters40_paper.md").read()
  note = RECIPES["clusters40_paper"]["runs_note"]
  assert "| gumbel_matrix | 1 |" in md
  assert f" (this command's); the runs' machines: {note}. Seeds asked: 0;" in md
  assert "runs_note" not in RECIPES["four_mnists"]  # made where its runs ran: no note


def test_primary_differences_are_holm_adjusted_and_the_share_has_intervals():
  from gmr.analysis import stats, tables as T
  rng = np.random.default_rng(0)
  rows = {"gm": 97.0, "sbm": 96.8, "sb": 96.4}
  collected = {n: [{"seed": s, "final": {"accuracy": {"mean": (m + 0.1 * rng.standard_normal())
                                                        / 100}}} for s in range(6)]
               for n, m in rows.items()}
  diffs = T.differences(collected, [("gm", "sb"), ("sbm", "sb"), ("gm", "sbm")], primary=2)
  assert [d["primary"] for d in diffs] == [True, True, False]
  assert [d["holm_p"] for d in diffs[:2]] == stats.holm([d["paired_p"] for d in diffs[:2]])
  assert "holm_p" not in diffs[2]
  md = T.differences_markdown(diffs)
  assert "p (paired, Holm over the primary) |" in md and md.splitlines()[-1].endswith(" - |")
  share = T.share_of_gain(collected, ("sbm", "sb"), ("gm", "sb"))
  by = lambda n: np.array([r["final"]["accuracy"]["mean"] * 100 for r in collected[n]])
  assert share["share"] == pytest.approx((by("sbm") - by("sb")).mean() / (by("gm") - by("sb")).mean())
  assert share["n"] == 6 and share["ci95"][0] <= share["ci90"][0] <= share["ci90"][1] <= share["ci95"][1]
  assert T.share_of_gain(collected, ("x", "sb"), ("gm", "sb")) is None
