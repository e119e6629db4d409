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
    parked.append((out, rounds["gm/seed_0"]))

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
  assert [r for _, r in parked][-1] == c.num_rounds
  for k, (out, newest) in enumerate(parked):
    shutil.rmtree(root)
    assert park.restore(out, str(root), say=lambda _: None) == {"gm/seed_0": "restored"}
    names = _members(os.path.join(out, "gm", "seed_0.tar.xz"))
    assert ".lock" not in names
    regular = {n.split("/")[1] for n in names if n.startswith("checkpoints/") and n.count("/") >= 1}
    assert regular == ({str(newest)} if newest is not None else set()), k
    experiment.run(c, wd, quiet=True)
    assert _metrics(wd) == ref_metrics, k
    assert _results(wd) == ref_results, k


def test_save_is_stable_and_restore_never_overwrites_work(tmp_path, capsys):
  c = small(num_rounds=20, checkpoint_every=10, keep_checkpoints=2)
  root, out = tmp_path / "runs", str(tmp_path / "park")
  experiment.run(c, str(root / "a" / "seed_0"), quiet=True)
  os.makedirs(root / "b" / "seed_0")  # a run that has written its config only
  shutil.copy(root / "a" / "seed_0" / "config.json", root / "b" / "seed_0" / "config.json")
  assert park.save(str(root), out) == {"a/seed_0": 20, "b/seed_0": None}
  first = open(os.path.join(out, "a", "seed_0.tar.xz"), "rb").read()
  os.utime(root / "a" / "seed_0" / "metrics.jsonl", (1, 1))  # touched, not changed
  park.save(str(root), out)
  assert "(unchanged)" in capsys.readouterr().out
  assert open(os.path.join(out, "a", "seed_0.tar.xz"), "rb").read() == first
  assert sorted(os.listdir(os.path.join(out, "a"))) == ["seed_0.tar.xz"]  # no temporary left
  # on disk and up to date: kept
  assert park.restore(out, str(root)) == {"a/seed_0": "kept", "b/seed_0": "kept"}
  # on disk but behind the archive: refused before anything is written
  shutil.rmtree(root / "b")
  shutil.rmtree(root / "a" / "seed_0" / "checkpoints" / "20")
  before = sorted(os.listdir(root / "a" / "seed_0"))
  with pytest.raises(park.ParkError, match=r"^root: .*seed_0 is at checkpoint 10 and its "
                     r"archive .* at 20; move .* away"):
    park.restore(out, str(root))
  assert not (root / "b").exists() and sorted(os.listdir(root / "a" / "seed_0")) == before


def test_a_finished_run_restored_elsewhere_still_serves_its_checkpoint(tmp_path):
  """results.json names the checkpoint where the run wrote it; restored under another root,
  the run's numbers still come from its own copy (fine-tuning from it, reports)."""
  import numpy as np
  from gmr import checkpoint
  c = small(num_rounds=20, checkpoint_every=10)
  wd = str(tmp_path / "here" / "gm" / "seed_0")
  experiment.run(c, wd, quiet=True)
  want = checkpoint.source_model_params(wd)
  park.save(str(tmp_path / "here"), str(tmp_path / "park"), say=lambda _: None)
  shutil.rmtree(tmp_path / "here")
  park.restore(str(tmp_path / "park"), str(tmp_path / "there"), say=lambda _: None)
  moved = str(tmp_path / "there" / "gm" / "seed_0")
  assert checkpoint.source_checkpoint(moved) == os.path.join(moved, "checkpoints", "20")
  got = checkpoint.source_model_params(moved)
  for a, b in zip(jax_leaves(want), jax_leaves(got)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(checkpoint.InitFromError, match="is missing"):
    shutil.rmtree(os.path.join(moved, "checkpoints", "20"))
    checkpoint.source_checkpoint(moved)


def jax_leaves(tree):
  import jax
  return jax.tree_util.tree_leaves(tree)


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
    ("no_archive", ["restore", "--archive={t}/none", "--root={t}/r"],
     "error: archive: {t}/none is not a folder"),
    ("empty_archive", ["restore", "--archive={t}/empty", "--root={t}/r"],
     "error: archive: {t}/empty holds no"),
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
  _tar_xz(str(tmp_path / "esc" / "x" / "seed_0.tar.xz"), {"config.json": b"{}", "../../evil": b"!"})
  before = sorted(p for p in os.listdir(tmp_path))
  p = subprocess.run([sys.executable, "-m", "launch.park"] + [a.format(t=t) for a in args],
                     cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert p.returncode == 2, p.stderr
  lines = p.stderr.strip().splitlines()
  assert lines[0].startswith(message.format(t=t)) and "Traceback" not in p.stderr
  assert sorted(os.listdir(tmp_path)) == before and not os.path.exists(tmp_path.parent / "evil")
