"""launch.lab: a recipe's long runs from a worktree at a fixed commit, started in the
background, stopped (SIGTERM: every run checkpoints), parked, restored and started again, which
resumes them. The recipe's runs are stood in for by a tiny ``launch/tables.py`` committed in a
repository of its own: what is tested is the lab's machinery, not training."""

import json
import os
import subprocess
import sys
import time

import pytest

from launch import lab as lab_lib

FAKE_TABLES = r'''
import json, os, signal, sys, time
recipe = sys.argv[1]
seeds = [a.split("=", 1)[1] for a in sys.argv if a.startswith("--seeds=")][0]
wd = os.path.join("runs", recipe, "m", "seed_" + seeds)
os.makedirs(wd, exist_ok=True)
json.dump({"seed": 0}, open(os.path.join(wd, "config.json"), "w"))
ck = os.path.join(wd, "checkpoints")
if os.path.exists(os.path.join(wd, "results.json")):
  sys.exit(0)
if os.path.isdir(ck):  # resumed: finish
  json.dump({"done": True}, open(os.path.join(wd, "results.json"), "w"))
  sys.exit(0)
def term(*_):
  os.makedirs(os.path.join(ck, "7"))
  open(os.path.join(ck, "7", "commit_success.txt"), "w").close()
  sys.exit(0)
signal.signal(signal.SIGTERM, term)
open(os.path.join(wd, "started"), "w").close()
while True:
  time.sleep(0.1)
'''


def _wait(pred, seconds=60):
  t0 = time.time()
  while not pred():
    assert time.time() - t0 < seconds
    time.sleep(0.2)


def test_start_stop_park_restore_and_resume(tmp_path, monkeypatch):
  repo = tmp_path / "repo"
  (repo / "launch").mkdir(parents=True)
  (repo / "launch" / "tables.py").write_text(FAKE_TABLES)
  git = lambda *a: subprocess.run(["git", *a], cwd=repo, check=True, capture_output=True,
                                  text=True).stdout.strip()
  git("init", "-q")
  git("-c", "user.email=t@t", "-c", "user.name=t", "add", ".")
  git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "runs")
  commit = git("rev-parse", "HEAD")
  monkeypatch.setattr(lab_lib, "MAIN", str(repo))
  wt, state = str(tmp_path / "wt"), str(tmp_path / "state")
  lab = lab_lib.Lab("four_mnists", wt, state)

  with pytest.raises(lab_lib.LabError, match="^commit: not given"):
    lab.start("", "0", 1)
  lab.start(commit, "0", 1)
  run = os.path.join(wt, "runs", "four_mnists", "m", "seed_0")
  _wait(lambda: os.path.exists(os.path.join(run, "started")))
  assert lab.running()
  with pytest.raises(lab_lib.LabError, match="is already running"):
    lab.start(commit, "0", 1)
  said = []
  lab.stop(wait_s=60, say=said.append)
  assert lab.running() is None
  assert os.path.exists(os.path.join(run, "checkpoints", "7", "commit_success.txt"))
  assert os.path.exists(os.path.join(state, "m", "seed_0.tar.xz"))

  # another machine: no worktree; restore brings the parked run back, start resumes it
  subprocess.run(["git", "worktree", "remove", "--force", wt], cwd=repo, check=True)
  lab.prepare(commit)
  assert os.path.exists(os.path.join(run, "checkpoints", "7", "commit_success.txt"))
  lab.start(commit, "0", 1)
  _wait(lambda: "=== ended" in open(lab.log).read())
  assert json.load(open(os.path.join(run, "results.json"))) == {"done": True}
  assert open(lab.log).read().count("=== pass") == lab_lib.ROUNDS

  with pytest.raises(lab_lib.LabError, match="^commit: "):
    lab_lib.Lab("four_mnists", wt, state).prepare("0" * 40)


def test_bad_input_is_one_line_and_exit_2(capsys):
  for argv in (["lab"], ["lab", "start", "no_such_recipe"], ["lab", "start", "four_mnists",
                                                             "--nope=1"],
               ["lab", "start", "four_mnists", "--parallel=x"]):
    assert lab_lib.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")


def test_a_pid_given_to_another_process_is_not_taken_for_the_runs(tmp_path):
  """The pid file names the session and its start time: a live session leader with that pid
  but another start time (the pid reused after the runs ended) is not stopped as ours."""
  lab = lab_lib.Lab("four_mnists", str(tmp_path / "wt"), str(tmp_path / "state"))
  os.makedirs(os.path.dirname(lab.pid_file))
  other = subprocess.Popen(["sleep", "30"], start_new_session=True)
  try:
    started = lab._stat(other.pid)[1]  # pylint: disable=protected-access
    open(lab.pid_file, "w").write(f"{other.pid} {int(started) + 1}")
    assert lab.running() is None
    open(lab.pid_file, "w").write(f"{other.pid} {started}")
    assert lab.running() == other.pid
    open(lab.pid_file, "w").write(f"{other.pid}")  # a file of another format: not ours
    assert lab.running() is None
  finally:
    other.kill()
    other.wait()
