"""launch.park: a run packed into an archive (while it is going on, at any write) and unpacked
on another disk resumes to the numbers of the uninterrupted run; restoring never overwrites
work; bad input is one line, exit 2."""

import io
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from gmr import experiment
from launch import park
from tests.test_runs import KILL_SCHEDULES, ROOT, _metrics, _results, compile_cache, small  # noqa: F401


def _members(path):
  with tarfile.open(path, "r:xz") as tar:
    return sorted(m.name for m in tar.getmembers())


def _regular(names):
  return {int(n.split("/")[1]) for n in names if n.startswith("checkpoints/") and n.count("/") >= 1}


def test_parked_at_any_write_of_a_live_run_resumes_to_the_uninterrupted_numbers(
    tmp_path, monkeypatch, compile_cache):
  """The run is parked right after each of its file-system writes in turn while it goes on
  (best checkpoints between regular ones, keep 3); each archive, restored onto an empty disk
  and rerun, ends with the uninterrupted run's metrics and results, line for line."""
  c = small(**KILL_SCHEDULES["select_by"])
  root = tmp_path / "runs"
  wd = str(root / "gm" / "seed_0")
  parked = []

  def park_now():
    out = str(tmp_path / f"park{len(parked)}")
    rounds = park.save(str(root), out, say=lambda _: None)
    parked.append((out, rounds["gm/seed_0"], park.checkpoint_rounds(wd)))

  def after_each_write(fn):
    def wrapped(*a, **kw):
      out = fn(*a, **kw)
      park_now()
      return out
    return wrapped

  from gmr import checkpoint, workdir as workdir_lib
  for mod, name in ((workdir_lib, "write_json_atomic"), (workdir_lib, "append_line"),
                    (workdir_lib, "write_changes"), (checkpoint.Checkpoints, "save")):
    monkeypatch.setattr(mod, name, after_each_write(getattr(mod, name)))
  experiment.run(c, wd, quiet=True)
  monkeypatch.undo()
  ref_metrics, ref_results = _metrics(wd), _results(wd)
  assert len(parked) > 10
  assert parked[-1][1] == c.num_rounds
  assert any(len(on_disk) > park.KEEP for _, _, on_disk in parked)  # keep 3: two are archived
  for k, (out, newest, on_disk) in enumerate(parked):
    shutil.rmtree(root)
    assert park.restore(out, str(root), say=lambda _: None) == {"gm/seed_0": "restored"}
    names = _members(os.path.join(out, "gm", "seed_0.tar.xz"))
    assert ".lock" not in names
    assert _regular(names) == set(on_disk[-park.KEEP:]), k
    assert newest == (on_disk[-1] if on_disk else None)
    experiment.run(c, wd, quiet=True)
    assert _metrics(wd) == ref_metrics, k
    assert _results(wd) == ref_results, k


def test_parked_while_running_in_another_process_resumes_to_the_uninterrupted_numbers(
    tmp_path, compile_cache):
  """Parked again and again while the run goes on in its own process (checkpoints written
  and rotated meanwhile): every archive, restored and rerun, ends as the uninterrupted run."""
  import time
  from tests.test_runs import LONG, _cfg
  cmd = [sys.executable, "-m", "experiments.main",
         "--config=experiments/configs/synthetic.py:gumbel_matrix,smoke"] + LONG
  ref = str(tmp_path / "ref")
  experiment.run(_cfg(), ref, quiet=True)
  root = tmp_path / "runs"
  wd = root / "gm" / "seed_0"
  p = subprocess.Popen(cmd + [f"--workdir={wd}"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, text=True)
  archives, seen = [], set()
  try:
    while p.poll() is None:
      if (wd / "config.json").exists():
        out = str(tmp_path / f"park{len(archives)}")
        newest = park.save(str(root), out, say=lambda _: None)["gm/seed_0"]
        if newest not in seen:  # one archive per checkpoint reached
          seen.add(newest)
          archives.append(out)
      time.sleep(0.02)
  finally:
    p.kill() if p.poll() is None else None
  assert p.wait() == 0, p.stderr.read()[-2000:]
  assert len(archives) >= 3, seen
  # the first (logs only, or the first checkpoint), one from the middle and the last
  for out in (archives[0], archives[len(archives) // 2], archives[-1]):
    shutil.rmtree(root)
    park.restore(out, str(root), say=lambda _: None)
    experiment.run(_cfg(), str(wd), quiet=True)
    assert _metrics(str(wd)) == _metrics(ref), out
    assert _results(str(wd)) == _results(ref), out


def test_a_checkpoint_rotated_away_during_the_copy_is_copied_again(tmp_path, monkeypatch):
  c = small(num_rounds=20, checkpoint_every=10)
  root = tmp_path / "runs"
  experiment.run(c, str(root / "gm" / "seed_0"), quiet=True)
  calls = []
  real = shutil.copytree

  def flaky(src, dst, *a, **kw):
    calls.append(src)
    if len(calls) == 1:
      raise FileNotFoundError(src)
    return real(src, dst, *a, **kw)

  monkeypatch.setattr(shutil, "copytree", flaky)
  assert park.save(str(root), str(tmp_path / "park"), say=lambda _: None) == {"gm/seed_0": 20}
  monkeypatch.undo()
  assert _regular(_members(str(tmp_path / "park" / "gm" / "seed_0.tar.xz"))) == {10, 20}
  # a checkpoint deleted in place after its copy began: caught by its vanished mark
  marker = root / "gm" / "seed_0" / "checkpoints" / "10" / park.MARKER

  def vanishing(src, dst, *a, **kw):
    out = real(src, dst, *a, **kw)
    if os.fspath(src).endswith(os.path.join("checkpoints", "10")) and marker.exists():
      marker.unlink()
    return out

  monkeypatch.setattr(shutil, "copytree", vanishing)
  assert park.save(str(root), str(tmp_path / "park2"), say=lambda _: None) == {"gm/seed_0": 20}
  assert _regular(_members(str(tmp_path / "park2" / "gm" / "seed_0.tar.xz"))) == {20}


def test_save_is_stable_and_neither_save_nor_restore_loses_work(tmp_path, capsys):
  c = small(num_rounds=20, checkpoint_every=10, keep_checkpoints=2)
  root, out = tmp_path / "runs", str(tmp_path / "park")
  experiment.run(c, str(root / "b" / "seed_0"), quiet=True)
  os.makedirs(root / "a" / "seed_0")  # a run that has written its config only
  shutil.copy(root / "b" / "seed_0" / "config.json", root / "a" / "seed_0" / "config.json")
  assert park.save(str(root), out) == {"a/seed_0": None, "b/seed_0": 20}
  first = open(os.path.join(out, "b", "seed_0.tar.xz"), "rb").read()
  os.utime(root / "b" / "seed_0" / "metrics.jsonl", (1, 1))  # touched, not changed
  park.save(str(root), out)
  assert "(unchanged)" in capsys.readouterr().out
  assert open(os.path.join(out, "b", "seed_0.tar.xz"), "rb").read() == first
  assert sorted(os.listdir(os.path.join(out, "b"))) == ["seed_0.tar.xz"]  # no temporary left
  # on disk and up to date: kept
  assert park.restore(out, str(root)) == {"a/seed_0": "kept", "b/seed_0": "kept"}
  # a workdir behind its archive: saving it would lose the archive's rounds, refused
  shutil.rmtree(root / "b" / "seed_0" / "checkpoints" / "20")
  with pytest.raises(park.ParkError, match=r"^root: .*b/seed_0 is at checkpoint 10, behind its "
                     r"archive .* \(checkpoint 20\); restore the archive"):
    park.save(str(root), out)
  assert open(os.path.join(out, "b", "seed_0.tar.xz"), "rb").read() == first
  # ... and restoring over it too, before anything is written (a/ is restored, b/ refused)
  shutil.rmtree(root / "a")
  before = sorted(os.listdir(root / "b" / "seed_0"))
  with pytest.raises(park.ParkError, match=r"^root: .*b/seed_0 is at checkpoint 10 and its "
                     r"archive .* is at 20; move .* away"):
    park.restore(out, str(root))
  assert not (root / "a").exists() and sorted(os.listdir(root / "b" / "seed_0")) == before
  shutil.rmtree(root / "b" / "seed_0" / "checkpoints")
  with pytest.raises(park.ParkError, match=r"b/seed_0 has no checkpoint, behind its archive"):
    park.save(str(root), out)


def test_a_workdir_and_an_archive_of_another_run_are_refused_both_ways(tmp_path):
  """Same path, another config (here the learning rate): save would replace the other run's
  archive, restore would call the other run 'kept'; both are refused before anything is
  written. A run extended since it was parked (num_rounds only) is the same run."""
  import json
  root, out = tmp_path / "runs", str(tmp_path / "park")
  wd = root / "gm" / "seed_0"
  experiment.run(small(num_rounds=10), str(wd), quiet=True)
  park.save(str(root), out, say=lambda _: None)
  archived = open(os.path.join(out, "gm", "seed_0.tar.xz"), "rb").read()
  cfg = json.load(open(wd / "config.json"))
  other = dict(cfg, learning_rate=cfg["learning_rate"] * 2)
  (wd / "config.json").write_text(json.dumps(other))
  for call in (lambda: park.save(str(root), out), lambda: park.restore(out, str(root))):
    with pytest.raises(park.ParkError, match=r"^root: .*gm/seed_0 holds another run than its "
                       r"archive .* \(configs differ in learning_rate\); move"):
      call()
  assert open(os.path.join(out, "gm", "seed_0.tar.xz"), "rb").read() == archived
  (wd / "config.json").write_text(json.dumps(dict(cfg, num_rounds=20)))
  assert park.restore(out, str(root), say=lambda _: None) == {"gm/seed_0": "kept"}


def test_a_finished_run_restored_elsewhere_reads_its_own_checkpoint(tmp_path):
  """results.json names the checkpoint where the run wrote it; restored under another root,
  the run's numbers come from its own copy, even while the old folder still exists."""
  import jax
  import numpy as np
  from gmr import checkpoint, train
  c = small(num_rounds=20, checkpoint_every=10)
  here = str(tmp_path / "here" / "gm" / "seed_0")
  experiment.run(c, here, quiet=True)
  want = checkpoint.source_model_params(here)
  park.save(str(tmp_path / "here"), str(tmp_path / "park"), say=lambda _: None)
  park.restore(str(tmp_path / "park"), str(tmp_path / "there"), say=lambda _: None)
  moved = str(tmp_path / "there" / "gm" / "seed_0")
  assert checkpoint.source_checkpoint(moved) == os.path.join(moved, "checkpoints", "20")
  for a, b in zip(jax.tree_util.tree_leaves(want),
                  jax.tree_util.tree_leaves(checkpoint.source_model_params(moved))):
    np.testing.assert_array_equal(a, b)
  shutil.rmtree(os.path.join(moved, "checkpoints", "20"))  # its own copy gone: the recorded one
  assert checkpoint.source_checkpoint(moved) == os.path.join(here, "checkpoints", "20")
  shutil.rmtree(tmp_path / "here")
  with pytest.raises(train.InitFromError, match="is missing"):
    checkpoint.source_checkpoint(moved)


def _tar_xz(path, members):
  import lzma
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w") as tar:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(lzma.compress(buf.getvalue()))


@pytest.mark.parametrize("case,args,message", [
    ("no_command", [], "error: command: give save or restore; usage"),
    ("bad_flag", ["save", "--root=r", "--out=o", "--x=1"], "error: arguments: unexpected '--x=1'"),
    ("missing", ["restore", "--archive=a"], "error: --root: is required"),
    ("no_root", ["save", "--root={t}/none", "--out={t}/o"], "error: root: {t}/none is not a folder"),
    ("empty_root", ["save", "--root={t}/empty", "--out={t}/o"], "error: root: {t}/empty holds no run"),
    ("out_is_file", ["save", "--root={t}/runs", "--out={t}/file"], "error: out: {t}/file is a file"),
    ("unmarked", ["save", "--root={t}/unmarked", "--out={t}/o"],
     "error: root: {t}/unmarked/x/seed_0/checkpoints has checkpoints but none holds"),
    ("no_archive", ["restore", "--archive={t}/none", "--root={t}/r"],
     "error: archive: {t}/none is not a folder"),
    ("empty_archive", ["restore", "--archive={t}/empty", "--root={t}/r"],
     "error: archive: {t}/empty holds no"),
    ("root_is_file", ["restore", "--archive={t}/good", "--root={t}/file"],
     "error: root: {t}/file is a file"),
    ("corrupt", ["restore", "--archive={t}/bad", "--root={t}/r"],
     "error: archive: {t}/bad/x/seed_0.tar.xz cannot be read (ReadError)"),
    ("escape", ["restore", "--archive={t}/esc", "--root={t}/r"],
     "error: archive: {t}/esc/x/seed_0.tar.xz has member '../../evil'"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, case, args, message):
  t = str(tmp_path)
  os.makedirs(tmp_path / "bad" / "x")
  os.makedirs(tmp_path / "empty" / "nothing_here")
  (tmp_path / "bad" / "x" / "seed_0.tar.xz").write_bytes(b"not an archive")
  (tmp_path / "file").write_text("")
  for name in ("runs", "unmarked"):
    os.makedirs(tmp_path / name / "x" / "seed_0" / "checkpoints" / "10")
    (tmp_path / name / "x" / "seed_0" / "config.json").write_text("{}")
  (tmp_path / "runs" / "x" / "seed_0" / "checkpoints" / "10" / park.MARKER).write_text("")
  _tar_xz(str(tmp_path / "esc" / "x" / "seed_0.tar.xz"), {"config.json": b"{}", "../../evil": b"!"})
  _tar_xz(str(tmp_path / "good" / "x" / "seed_0.tar.xz"), {"config.json": b"{}"})
  def tree():
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(tmp_path) for f in fs + ["."])
  before = tree()
  p = subprocess.run([sys.executable, "-m", "launch.park"] + [a.format(t=t) for a in args],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2, p.stderr
  assert len(p.stderr.strip().splitlines()) == 1, p.stderr
  assert p.stderr.startswith(message.format(t=t)) and "Traceback" not in p.stderr
  assert tree() == before
