"""launch.archive keeps what tables and figures read of finished runs; every committed table
that has a run archive is exactly what that archive regenerates."""

import glob
import json
import os
import re
import subprocess
import sys

import pytest

from gmr import experiment
from gmr.analysis import tables
from launch import archive
from tests.test_runs import ROOT, small


def _sweep(root, seeds=(0, 1)):
  for method in ("gumbel_matrix", "no_sharing"):
    for s in seeds:
      experiment.run(small(method=method, seed=s), str(root / method / f"seed_{s}"), quiet=True)


def test_an_archive_holds_what_tables_read_and_nothing_else(tmp_path):
  root, out = tmp_path / "runs", tmp_path / "kept"
  _sweep(root)
  os.makedirs(root / "no_sharing" / "seed_9")  # a run that has written its config only
  (root / "no_sharing" / "seed_9" / "config.json").write_text(
      (root / "no_sharing" / "seed_0" / "config.json").read_text())
  done = archive.archive(str(root), str(out), say=lambda _: None)
  assert done["no_sharing/seed_9"] == "unfinished" and not (out / "no_sharing" / "seed_9").exists()
  assert sorted(os.listdir(out / "gumbel_matrix" / "seed_0")) == sorted(
      ["config.json", "environment.json", "metrics.jsonl", "results.json"])
  assert tables.collect(str(out)) == tables.collect(str(root))
  assert set(archive.archive(str(root), str(out), say=lambda _: None).values()) == {
      "unchanged", "unfinished"}
  # an archived run of another config is never replaced
  cfg = json.loads((out / "gumbel_matrix" / "seed_1" / "config.json").read_text())
  (out / "gumbel_matrix" / "seed_1" / "config.json").write_text(json.dumps(dict(cfg, seed=7)))
  with pytest.raises(archive.ArchiveError, match=r"^out: .*gumbel_matrix/seed_1 holds another "
                     r"run than"):
    archive.archive(str(root), str(out))


def test_a_thinned_history_keeps_every_log_and_eval_line_and_the_last_record(tmp_path):
  """``history_every``: the allocation history at multiples of it and at the run's last record;
  the log and evaluation lines, results and config as they are; archiving again is
  "unchanged"."""
  root, out = tmp_path / "runs", tmp_path / "kept"
  wd = root / "gumbel_matrix" / "seed_0"
  experiment.run(small(method="gumbel_matrix", num_rounds=50, alloc_history_every=10,
                       log_every=10), str(wd), quiet=True)
  done = archive.archive(str(root), str(out), say=lambda _: None, history_every=20)
  assert done == {"gumbel_matrix/seed_0": "kept"}
  lines = [json.loads(l) for l in open(wd / "metrics.jsonl")]
  kept = [json.loads(l) for l in open(out / "gumbel_matrix" / "seed_0" / "metrics.jsonl")]
  rounds = [l["round"] for l in lines if l.get("kind") == "alloc"]
  assert rounds == [10, 20, 30, 40, 50]
  assert [l["round"] for l in kept if l.get("kind") == "alloc"] == [20, 40, 50]
  assert [l for l in kept if l.get("kind") != "alloc"] == [
      l for l in lines if l.get("kind") != "alloc"]
  assert tables.collect(str(out)) == tables.collect(str(root))
  assert archive.archive(str(root), str(out), say=lambda _: None, history_every=20) == {
      "gumbel_matrix/seed_0": "unchanged"}


def test_bad_input_is_one_line_exit_2(tmp_path):
  (tmp_path / "f").write_text("x")
  for args, start in ((["--root=" + str(tmp_path / "none"), "--out=" + str(tmp_path / "o")],
                       "error: root: "),
                      (["--root=" + str(tmp_path), "--out=" + str(tmp_path / "f")], "error: out: "),
                      (["--root=" + str(tmp_path)], "error: --out: is required"),
                      (["stray"], "error: arguments: ")):
    p = subprocess.run([sys.executable, "-m", "launch.archive", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and p.stderr.startswith(start) and p.stderr.count("\n") == 1, p.stderr
  assert sorted(os.listdir(tmp_path)) == ["f"]


ARCHIVED = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "results", "runs", "*")))


@pytest.mark.parametrize("name", ARCHIVED)
def test_the_committed_table_is_what_its_archive_regenerates(tmp_path, name):
  """results/<name>.md and .json from results/runs/<name> by the command the table names."""
  md = open(os.path.join(ROOT, "results", f"{name}.md")).read()
  cmd = re.search(r"^Command: `(python -m launch\.tables [^`]*)`", md, re.M).group(1).split()
  assert f"--root=results/runs/{name}" in cmd and "--no_run" in cmd, cmd
  p = subprocess.run([sys.executable, "-m", *cmd[2:], f"--out={tmp_path / name}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  again = open(tmp_path / f"{name}.md").read()
  cut = lambda text: text.split("\nMachine: ")[0]  # the machine and commit of the command aside
  assert cut(again) == cut(md)
  assert json.load(open(tmp_path / f"{name}.json")) == json.load(
      open(os.path.join(ROOT, "results", f"{name}.json")))
