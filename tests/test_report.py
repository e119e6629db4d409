"""experiments.report: the numbers behind each figure, on generated sweeps and one real run."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import report
from experiments.configs import transfer
from gmr import experiment
from gmr.analysis import readers, stats

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_smooth():
  np.testing.assert_allclose(report.smooth([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
  np.testing.assert_allclose(report.smooth([1, 2, 3], 1), [1, 2, 3])


def test_band_rule():
  """One seed: the curve, no band; 2 to 4 seeds: the range over them; from 5: the 90%
  t-interval of the mean, clipped at the floor (0 for a loss) where it reaches below it."""
  one = report.band([[1.0, 2.0]], report.LOSS_FLOOR)
  np.testing.assert_allclose(one.mean, [1.0, 2.0])
  assert one.lo is None and one.hi is None and one.label == ""
  assert one.describe() == "1 seed, no band"
  two = report.band([[0.1, 2.0], [0.9, 2.0]], report.LOSS_FLOOR)  # a t-band: 0.5 +- 2.53
  np.testing.assert_allclose(two.mean, [0.5, 2.0])
  np.testing.assert_allclose(two.lo, [0.1, 2.0])
  np.testing.assert_allclose(two.hi, [0.9, 2.0])
  assert two.describe() == "mean of 2 seeds, band: range over 2 seeds"
  assert report.band(np.ones((4, 3))).label == "range over 4 seeds"
  five = np.array([[1.0, 10.0], [2.0, 10.5], [3.0, 11.0], [4.0, 11.5], [5.0, 12.0]])
  b = report.band(five, report.LOSS_FLOOR)
  half = [stats.interval90(five[:, 0]), stats.interval90(five[:, 1])]
  np.testing.assert_allclose(b.mean, [3.0, 11.0])
  np.testing.assert_allclose(b.lo, np.array([3.0, 11.0]) - half)
  np.testing.assert_allclose(b.hi, np.array([3.0, 11.0]) + half)
  assert b.describe() == "mean of 5 seeds, band: 90% t-interval over 5 seeds"
  # a nonnegative loss with one seed far off: the interval (0.5 +- 1.73) stops at 0
  skewed = np.array([[0.1], [0.1], [0.1], [0.1], [2.1]])
  lower = 0.5 - stats.interval90(skewed[:, 0])
  assert lower < 0
  clipped = report.band(skewed, report.LOSS_FLOOR)
  assert clipped.lo[0] == 0.0 and clipped.hi[0] == pytest.approx(1.0 - lower)
  assert clipped.label == "90% t-interval over 5 seeds, clipped at 0"
  assert report.band(skewed).lo[0] == pytest.approx(lower)  # no floor: not clipped
  for n in (2, 3, 5, 8):  # any spread of a nonnegative loss: never a band below 0
    curves = np.random.default_rng(n).exponential(1.0, (n, 50)) ** 3
    assert report.band(curves, report.LOSS_FLOOR).lo.min() >= 0.0
  with pytest.raises(ValueError, match="seeds, points"):
    report.band(np.zeros((0, 3)))


def test_figures_say_what_their_bands_are(tmp_path, monkeypatch):
  """A sweep of groups of 1, 2 and 5 seeds: each loss-curve panel's title and each legend
  entry of comparison.png state the band the rule gives, and the drawn bands are those:
  none for one seed, none below 0."""
  root = tmp_path / "sweep"
  for g, seeds in (("one", 1), ("two", 2), ("five", 5)):
    for s in range(seeds):
      _fake_run(str(root / g / f"seed_{s}"), s, 20.0 if s == 4 else 1.0 + 0.1 * s)
  drawn = {}
  real_save = report._save  # pylint: disable=protected-access

  def keep(fig, path):
    drawn[os.path.relpath(path, tmp_path / "out")] = [
        {"title": ax.get_title(), "legend": [t.get_text() for t in ax.get_legend().get_texts()],
         "bands": [c.get_paths()[0].vertices[:, 1] for c in ax.collections]}
        for ax in fig.axes if ax.get_legend() is not None]
    real_save(fig, path)
  monkeypatch.setattr(report, "_save", keep)
  report.report(str(root), str(tmp_path / "out"), smooth_steps=100)
  what = {"one": "1 seed, no band", "two": "mean of 2 seeds, band: range over 2 seeds",
          "five": "mean of 5 seeds, band: 90% t-interval over 5 seeds"}
  for g in what:
    train, test = drawn[os.path.join(g, "loss_curves.png")]
    assert train["legend"] == test["legend"] == ["a", "b", "c", "d"]
    assert len(train["bands"]) == len(test["bands"]) == (0 if g == "one" else 4)
    assert all(v.min() >= 0 for p in (train, test) for v in p["bands"])
    if g != "five":
      assert train["title"] == f"{g}: training loss\n{what[g]}"
      assert test["title"] == f"test loss at the evaluations\n{what[g]}"
  # five seeds, one far off: every test loss's interval reaches below 0 and is clipped there
  train, test = drawn[os.path.join("five", "loss_curves.png")]
  assert test["title"] == f"test loss at the evaluations\n{what['five']}, clipped at 0"
  assert min(v.min() for v in test["bands"]) == 0.0
  assert what["five"] in train["title"]
  for panel in drawn["comparison.png"]:  # groups in sorted order
    assert panel["legend"][1:] == [f"one: {what['one']}", f"two: {what['two']}"]
    assert panel["legend"][0].startswith(f"five: {what['five']}")
    assert len(panel["bands"]) == 2 and all(v.min() >= 0 for v in panel["bands"])
  assert drawn["comparison.png"][1]["legend"][0] == f"five: {what['five']}, clipped at 0"


def _fake_run(d, seed, loss0, clusters=None):
  """A run directory as experiment.run writes it: 4 logs of 2 tasks, 2 evals, 3 alloc events."""
  os.makedirs(d)
  tasks = ["a", "b", "c", "d"]
  with open(os.path.join(d, "metrics.jsonl"), "w") as f:
    for i, r in enumerate((100, 200, 300, 400)):
      tl = {t: loss0 / (i + 1) + k for k, t in enumerate(tasks)}
      f.write(json.dumps({"kind": "log", "round": r, "train_loss": tl,
                          "train_loss_mean": float(np.mean(list(tl.values())))}) + "\n")
      if r % 200 == 0:
        te = {t: 2 * loss0 / (i + 1) for t in tasks}
        f.write(json.dumps({"kind": "eval", "round": r, "test": {"loss": dict(te, mean=2 * loss0 / (i + 1))}}) + "\n")
      if r >= 200:
        p = [[0.5 + 0.15 * i, 0.5 - 0.15 * i]] * 2 + [[0.5 - 0.15 * i, 0.5 + 0.15 * i]] * 2
        f.write(json.dumps({"kind": "alloc", "round": r, "probabilities": {"layer_0": p, "layer_1": p}}) + "\n")
  alloc = {"layer_0": [[1, 0], [1, 0], [0, 1], [0, 1]], "layer_1": [[1, 1], [1, 1], [1, 0], [1, 0]]}
  if seed % 2:  # odd seeds use the other first-layer component (the same groups)
    alloc["layer_0"] = [row[::-1] for row in alloc["layer_0"]]
  res = {"method": "gumbel_matrix", "seed": seed, "tasks": tasks, "allocations": alloc,
         "active_fraction": 0.75,
         "final": {"loss": {"mean": loss0 / 4}}, "wall_time_s": 1.0, "steps": 1600,
         "task_groups": [[0, 1], [2, 3]], "task_clusters": clusters}
  with open(os.path.join(d, "results.json"), "w") as f:
    json.dump(res, f)


def test_sweep_report_files_and_numbers(tmp_path):
  root = tmp_path / "sweep"
  clusters = {"x": [0, 1], "y": [2, 3]}
  for g, base in (("gm", 1.0), ("ns", 2.0)):
    for s in (0, 1, 2):
      _fake_run(str(root / g / f"seed_{s}"), s, base + 0.1 * s, clusters)
  out = str(tmp_path / "out")
  written = report.report(str(root), out, task="c", smooth_steps=200)
  assert written["gm"] == ["loss_curves.png", "allocation.png", "similarity.png",
                           "allocation_seed_0.png", "allocation_seed_1.png",
                           "allocation_seed_2.png", "probabilities_c.png",
                           "clusters_over_training.png"]
  for s in (0, 1, 2):  # Fig. 5 of each seed, the matrices its own results hold
    with open(os.path.join(out, "gm", f"allocation_seed_{s}.json")) as f:
      each = json.load(f)
    with open(root / "gm" / f"seed_{s}" / "results.json") as f:
      assert each["seed"] == s and each["allocations"] == json.load(f)["allocations"]
    assert each["allocations"]["layer_0"][0] == ([0, 1] if s == 1 else [1, 0])
  assert written["comparison"] == ["comparison.png"] and written["table"] == ["table.md"]
  for g in ("gm", "ns"):
    for f in written[g]:
      assert os.path.getsize(os.path.join(out, g, f)) > 5000  # a real PNG, not an empty one
  # loss curves: smoothing 200 steps = 2 logged points; mean and range over the 3 seeds
  with open(os.path.join(out, "gm", "loss_curves.csv")) as f:
    rows = [r for r in csv.DictReader(f) if r["split"] == "train" and r["task"] == "b"]
  seeds = np.array([[(1.0 + 0.1 * s) / (i + 1) + 1 for i in range(4)] for s in range(3)])
  sm = np.array([report.smooth(x, 2) for x in seeds])
  np.testing.assert_allclose([float(r["mean"]) for r in rows], sm.mean(0), rtol=1e-5)
  np.testing.assert_allclose([float(r["band_lo"]) for r in rows], sm.min(0), rtol=1e-5)
  np.testing.assert_allclose([float(r["band_hi"]) for r in rows], sm.max(0), rtol=1e-5)
  assert {r["band"] for r in rows} == {"range over 3 seeds"}
  # similarity: identical embeddings of a/b and of c/d; clusters recovered in every seed
  with open(os.path.join(out, "gm", "similarity.json")) as f:
    sim = json.load(f)
  assert sim["identical_groups"] == [["a", "b"], ["c", "d"]]
  np.testing.assert_allclose(sim["cosine_similarity"][0][2], 1 / np.sqrt(3 * 2), rtol=1e-6)  # [1,0,1,1] vs [0,1,1,0]
  assert all(r["ari"] == 1.0 for r in sim["cluster_reports"].values())
  # probabilities of task c over time, per layer and component
  with open(os.path.join(out, "gm", "probabilities_c.csv")) as f:
    p = [r for r in csv.DictReader(f) if r["layer"] == "layer_1" and r["component"] == "1"]
  np.testing.assert_allclose([float(r["p_on"]) for r in p], [0.65, 0.8, 0.95])
  # clusters over training: from round 200 on, a/b and c/d have one greedy embedding each
  with open(os.path.join(out, "gm", "clusters_over_training.csv")) as f:
    ct = list(csv.DictReader(f))
  assert [(r["seed"], r["round"]) for r in ct] == [(str(s), str(r)) for s in range(3)
                                                  for r in (200, 300, 400)]
  assert all(float(r["ari"]) == 1.0 and r["distinct_x"] == r["distinct_y"] == "1" for r in ct)
  assert all(float(r["neighbour_agreement"]) == 1.0 for r in ct)
  assert all(float(r[f"{m}_{c}"]) == 0.0 for r in ct for c in "xy"
             for m in ("differing", "differing_decided"))
  assert [float(r["decided"]) for r in ct[:3]] == [0.0, 0.0, 1.0]  # |p - 0.5| = 0.15, 0.3, 0.45
  for l in ("layer_0", "layer_1"):  # per layer: each layer alone separates x from y
    assert all(float(r[f"ari_{l}"]) == 1.0 and float(r[f"between_{l}"]) == 0.0 for r in ct)
    assert all(float(r[f"within_{l}"]) == pytest.approx(1.0) for r in ct)
  pl = sim["cluster_reports"]["0"]["per_layer"]  # the final allocations: layer 1 is [1,1] / [1,0]
  assert pl["layer_1"]["ari"] == 1.0 and pl["layer_1"]["between"] == pytest.approx(1 / np.sqrt(2))
  table = open(os.path.join(out, "table.md")).read()
  assert "| gm | 3 |" in table
  assert "| 1.00, 1.00, 1.00 | x 1 y 1; x 1 y 1; x 1 y 1 |" in table  # ARI, distinct per seed


def test_report_errors(tmp_path):
  with pytest.raises(report.ReportError, match="not a directory"):
    report.report(str(tmp_path / "none"), str(tmp_path / "o"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(report.ReportError, match="no run under"):
    report.report(str(tmp_path / "empty"), str(tmp_path / "o"))
  _fake_run(str(tmp_path / "r"), 0, 1.0)
  with pytest.raises(report.ReportError, match="--task"):
    report.report(str(tmp_path / "r"), str(tmp_path / "o"), task="zzz")


def test_report_of_a_real_run(tmp_path):
  c = transfer.get_config("gumbel_matrix,smoke")
  c.alloc_history_every = 20
  wd = str(tmp_path / "run")
  res = experiment.run(c, wd, quiet=True)
  written = report.report(wd, str(tmp_path / "out"))
  assert written["run"] == ["loss_curves.png", "allocation.png", "similarity.png",
                            "probabilities_task0.png"]
  with open(tmp_path / "out" / "run" / "allocation.json") as f:
    assert json.load(f)["allocations"] == res["allocations"]
  with open(tmp_path / "out" / "run" / "probabilities_task0.csv") as f:
    rows = list(csv.DictReader(f))
  assert sorted({int(r["round"]) for r in rows}) == [20, 40, 60]
  final = [float(r["p_on"]) for r in rows if r["round"] == "60" and r["layer"] == "layer_0"]
  np.testing.assert_allclose(final, np.array(res["probabilities"]["layer_0"][0]), atol=1e-5)


def test_report_of_a_taps_run(tmp_path):
  """TAPS: the allocation figure is tasks x TAPS layers (task-specific = 1), the similarity uses
  those indicators, and the history is the scores, ending at the final ones."""
  c = transfer.get_config("taps,smoke")
  c.alloc_history_every = 20
  c.taps_lambda = 0.0
  wd = str(tmp_path / "run")
  res = experiment.run(c, wd, quiet=True)
  written = report.report(wd, str(tmp_path / "out"))
  assert written["run"] == ["loss_curves.png", "allocation.png", "similarity.png",
                            "taps_scores_task0.png"]
  with open(tmp_path / "out" / "run" / "allocation.json") as f:
    alloc = json.load(f)
  layers = list(res["taps"]["scores"]["task0"])
  assert alloc["layers"] == layers and len(layers) == res["taps"]["num_layers"]
  for t, name in enumerate(res["tasks"]):
    assert alloc["task_specific"][t] == [int(l in res["taps"]["task_specific_layers"][name])
                                         for l in layers]
  with open(tmp_path / "out" / "run" / "taps_scores_task0.csv") as f:
    rows = list(csv.DictReader(f))
  last = max(int(r["round"]) for r in rows)
  assert sorted({int(r["round"]) for r in rows}) == list(range(20, last + 1, 20))
  final = {r["layer"]: float(r["score"]) for r in rows if int(r["round"]) == last}
  for l in layers:
    assert final[l] == pytest.approx(res["taps"]["scores"]["task0"][l], abs=1e-5)
  # a TAPS run written before the history held scores: no P(on) figure (it would be all ones)
  lines = [json.loads(l) for l in open(os.path.join(wd, "metrics.jsonl"))]
  with open(os.path.join(wd, "metrics.jsonl"), "w") as f:
    for rec in lines:
      if rec["kind"] == "alloc":
        rec = {"kind": "alloc", "round": rec["round"], "step": rec["step"],
               "probabilities": {"layer_0": [[1.0, 1.0]] * len(res["tasks"])}}
      f.write(json.dumps(rec) + "\n")
  written = report.report(wd, str(tmp_path / "out2"))
  assert written["run"] == ["loss_curves.png", "allocation.png", "similarity.png"]


def test_progress_of_a_run_killed_and_resumed(tmp_path):
  """launch.progress reads a workdir's rounds, last evaluation and wall time by job, summed
  over every start of a resumed run (a cut last line is skipped)."""
  from launch import progress
  wd = tmp_path / "gm" / "seed_0"
  os.makedirs(wd)
  (wd / "config.json").write_text(json.dumps({"num_rounds": 400}))
  lines = [{"kind": "log", "round": 100, "steps_per_s": 20.0,
            "wall_s": {"steps": 10.0, "history": 0.5, "eval": 0.0, "checkpoint": 0.5}},
           {"kind": "eval", "round": 100, "test": {"accuracy": {"mean": 0.25}}, "wall_s": 1.0},
           {"kind": "log", "round": 200, "steps_per_s": 22.0,
            "wall_s": {"steps": 10.0, "history": 0.5, "eval": 1.0, "checkpoint": 0.5}}]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in lines) + '{"kind": "lo')
  rows = progress.table(str(tmp_path))
  r = rows["gm/seed_0"]
  assert (r["rounds"], r["num_rounds"], r["finished"], r["last_eval_round"]) == (200, 400, False, 100)
  assert r["test_accuracy"] == 0.25 and r["steps_per_s"] == 22.0 and r["eval_s_each"] == 1.0
  assert r["wall_s"] == {"steps": 20.0, "history": 1.0, "eval": 1.0, "checkpoint": 1.0}
  assert r["overhead_fraction"] == pytest.approx(3.0 / 20.0)
  md = progress.to_markdown(rows, "t", "cmd", "abc")
  assert "| gm/seed_0 | 200 | 400 | no | 22.0 | 100 | 25.00 |" in md and "15.0%" in md


def test_experiments_do_not_import_launch():
  """experiments/ is below launch/ (the launchers run experiments, not the reverse): the
  statistics and tables it needs are in gmr.analysis."""
  import ast
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  bad = []
  for d, _, files in os.walk(os.path.join(root, "experiments")):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(d, name)
        with open(path) as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                  else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
          bad += [(path, m) for m in mods if m == "launch" or m.startswith("launch.")]
  assert not bad


def test_clusters_of_runs_in_progress(tmp_path):
  """A V-C run still in progress (no results.json) is read from its config and allocation
  history: the progress table and the clusters-over-training figure give, at its last history
  point, the numbers of the cluster report of those greedy allocations; suites without
  clusters and TAPS (whose history is not its embedding) get none. Finished runs, runs without
  config.json, configs older than some fields and several suites under one root mix."""
  from ml_collections import config_dict
  from experiments.configs import clusters40
  from gmr import data
  from gmr.analysis import embeddings
  from launch import progress
  c = clusters40.get_config("offline")
  clusters = data.task_clusters(c)
  assert sorted(len(m) for m in clusters.values()) == [10, 10, 20]
  for other in ({"suite": "four_mnists"}, {"suite": "a_suite_of_my_own"}):
    assert data.task_clusters(config_dict.ConfigDict(other)) is None
  rng = np.random.default_rng(0)
  base = {l: rng.random((3, 16)) for l in ("layer_0", "layer_1", "layer_2")}
  truth = embeddings.labels_from_clusters(clusters, 40)

  def probs(noise):  # every task near its cluster's row, ``noise`` apart
    return {l: np.clip(b[truth] + noise * rng.standard_normal((40, 16)), 0, 1).round(4).tolist()
            for l, b in base.items()}

  wd = tmp_path / "gumbel_matrix" / "seed_3"
  os.makedirs(wd)
  old_config = {k: v for k, v in c.to_dict().items() if k != "accept_noncanonical_data"}
  (wd / "config.json").write_text(json.dumps(old_config | {"seed": 3}))  # a field added later
  hist = [{"kind": "alloc", "round": r, "step": 40 * r, "probabilities": probs(n)}
          for r, n in ((100, 0.5), (200, 0.0))]
  logs = [{"kind": "log", "round": r, "step": 40 * r, "steps_per_s": 1.0,
           "train_loss": {t: 1.0 for t in data.evaluation_spec(c)[2]}, "train_loss_mean": 1.0,
           "wall_s": {"steps": 1.0, "history": 0.0, "eval": 0.0, "checkpoint": 0.0}}
          for r in (100, 200)]
  (wd / "metrics.jsonl").write_text("".join(json.dumps(d) + "\n" for d in
                                            [hist[0], logs[0], hist[1], logs[1]]))
  want = embeddings.history_cluster_row(hist[1]["probabilities"], clusters)
  assert want["ari"] == 1.0 and want["distinct_mnist"] == 1 and want["differing_fashion"] == 0
  row = progress.table(str(tmp_path))["gumbel_matrix/seed_3"]["clusters"]
  assert row == {"round": 200, **want}
  md = progress.to_markdown(progress.table(str(tmp_path)), "t", "cmd", "abc")
  assert "| gumbel_matrix/seed_3 | 200 | 1.00 | 1.00 |" in md
  written = report.report(str(tmp_path), str(tmp_path / "out"))
  assert "clusters_over_training.png" in written["gumbel_matrix"]
  with open(tmp_path / "out" / "gumbel_matrix" / "clusters_over_training.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["seed"], r["round"]) for r in rows] == [("3", "100"), ("3", "200")]
  first = embeddings.history_cluster_row(hist[0]["probabilities"], clusters)
  assert float(rows[0]["ari"]) == pytest.approx(first["ari"])
  assert float(rows[0]["differing_mnist"]) == pytest.approx(first["differing_mnist"])
  assert float(rows[1]["ari"]) == 1.0
  # beside it: a finished seed, a run without config.json, a run of the other V-C suite
  fin = tmp_path / "gumbel_matrix" / "seed_4"
  os.makedirs(fin)
  (fin / "config.json").write_text(json.dumps(c.to_dict() | {"seed": 4}))
  (fin / "metrics.jsonl").write_text((wd / "metrics.jsonl").read_text())
  greedy = {l: (np.asarray(p) >= 0.5).astype(int).tolist()
            for l, p in hist[1]["probabilities"].items()}
  (fin / "results.json").write_text(json.dumps({
      "seed": 4, "method": "gumbel_matrix", "tasks": list(data.evaluation_spec(c)[2]),
      "allocations": greedy, "probabilities": hist[1]["probabilities"], "active_fraction": 0.5,
      "final": {"test": {"loss": {"mean": 1.0}}, "loss": {"mean": 1.0}}, "wall_time_s": 1.0,
      "steps": 8000, "task_clusters": clusters}))
  bare = tmp_path / "gumbel_matrix" / "seed_5"
  os.makedirs(bare)
  (bare / "metrics.jsonl").write_text(json.dumps(logs[0]) + "\n")
  online = clusters40.get_config("")
  cifar = tmp_path / "cifar" / "seed_0"
  os.makedirs(cifar)
  (cifar / "config.json").write_text(json.dumps(online.to_dict()))
  (cifar / "metrics.jsonl").write_text((wd / "metrics.jsonl").read_text())
  rows = progress.table(str(tmp_path))
  assert rows["gumbel_matrix/seed_4"]["clusters"] == {"round": 200, **want}
  assert rows["cifar/seed_0"]["clusters"]["distinct_cifar100"] == 1
  md = progress.to_markdown(rows, "t", "cmd", "abc")
  assert md.count("| run | at round |") == 2  # one cluster table per suite's clusters
  assert "| distinct cifar100 |" in md and "| distinct omniglot |" in md
  written = report.report(str(tmp_path), str(tmp_path / "out"))
  with open(tmp_path / "out" / "gumbel_matrix" / "clusters_over_training.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["seed"], r["round"]) for r in rows] == [
      ("3", "100"), ("3", "200"), ("4", "100"), ("4", "200")]
  # the same history under TAPS, or a suite without clusters: no cluster numbers
  from experiments.configs import synthetic
  for name, cfg in (("taps", c.to_dict() | {"method": "taps"}),
                    ("synthetic", synthetic.get_config("smoke").to_dict())):
    other = tmp_path / name / "seed_0"
    os.makedirs(other)
    (other / "config.json").write_text(json.dumps(cfg))
    (other / "metrics.jsonl").write_text((wd / "metrics.jsonl").read_text())
  rows = progress.table(str(tmp_path))
  assert rows["synthetic/seed_0"]["clusters"] is None and rows["taps/seed_0"]["clusters"] is None
  written = report.report(str(tmp_path), str(tmp_path / "out"))
  assert "clusters_over_training.png" not in written["taps"] + written["synthetic"]
  assert readers.embeds_allocation({"method": "gumbel_matrix"})
  assert not readers.embeds_allocation({"method": "taps"})


def test_progress_says_when_a_root_holds_no_runs_in_its_layout(tmp_path):
  """A root without ``<name>/seed_<s>/`` runs is one error line saying what is there (runs in
  another layout, or none), exit 2, nothing written."""
  os.makedirs(tmp_path / "flat" / "seed_0")
  (tmp_path / "flat" / "seed_0" / "config.json").write_text(json.dumps({"num_rounds": 4}))
  os.makedirs(tmp_path / "empty")
  env = dict(os.environ, PYTHONPATH=ROOT)
  for root, says in ((tmp_path / "flat", "it holds 1 run folders in another layout (seed_0)"),
                     (tmp_path / "empty", "it holds no run folder"),
                     (tmp_path / "none", "is not a folder")):
    p = subprocess.run([sys.executable, "-m", "launch.progress", f"--root={root}",
                        f"--out={tmp_path / 'out' / 'p'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and p.stderr.startswith("error: --root: ") and says in p.stderr, (
        p.stderr)
    assert len(p.stderr.strip().splitlines()) == 1 and not p.stdout
  assert not os.path.exists(tmp_path / "out")


def test_progress_reports_the_commits_its_runs_record(tmp_path):
  from launch import progress
  for name, code in (("a", {"commit": "abc1234", "dirty": False}),
                     ("b", {"commit": "abc1234", "dirty": True}), ("c", None)):
    wd = tmp_path / name / "seed_0"
    os.makedirs(wd)
    (wd / "config.json").write_text(json.dumps({"num_rounds": 4}))
    if code:
      (wd / "results.json").write_text(json.dumps({"code": code}))
  rows = progress.table(str(tmp_path))
  commits = progress.runs_commits(str(tmp_path), rows)
  assert commits.startswith("abc1234 (1 runs); abc1234 with uncommitted changes (1 runs); "
                            "not recorded in 1 runs")
  assert f"the runs' code: {commits}." in progress.to_markdown(rows, "t", "cmd", commits)
