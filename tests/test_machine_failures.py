"""A write the machine refuses (full disk, quota, read-only or removed workdir, I/O error) stops
the run with one line naming the path and the fix; the checkpoints written before it stay, and
the rerun on a working disk ends with the numbers of an uninterrupted run."""

import errno
import os
import shutil
import subprocess
import sys

import jax
import pytest

from gmr import checkpoint, experiment
from gmr import workdir as workdir_lib
from tests.test_runs import ROOT, _metrics, _results, compile_cache, small  # noqa: F401

ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO, errno.EDQUOT)
SCHEDULE = dict(num_rounds=40, eval_every=20, log_every=10, rounds_per_call=10,
                checkpoint_every=10, keep_checkpoints=2)


def _run_failing_write(c, wd, fail_at=None, code=errno.ENOSPC):
  """experiment.run with the workdir's writes counted (config.json, environment.json,
  results.json, each metrics line, each checkpoint save); the ``fail_at``-th raises
  ``OSError(code)`` instead of writing. Returns ``(writes, the error raised or None)``."""
  n = [0]

  def failing(fn):
    def wrapped(*a, **kw):
      n[0] += 1
      if n[0] == fail_at:
        raise OSError(code, os.strerror(code))
      return fn(*a, **kw)
    return wrapped

  mp = pytest.MonkeyPatch()
  for mod, name in ((workdir_lib, "write_json_atomic"), (workdir_lib, "append_line"),
                    (workdir_lib, "write_changes"), (checkpoint.Checkpoints, "save")):
    mp.setattr(mod, name, failing(getattr(mod, name)))
  try:
    experiment.run(c, wd, quiet=True)
    err = None
  except workdir_lib.WorkdirError as e:
    err = e
  finally:
    mp.undo()
    jax.clear_caches()
  return n[0], err


def test_a_write_refused_at_any_point_is_one_line_and_the_rerun_resumes(tmp_path, compile_cache):
  c = small(**SCHEDULE)
  ref = str(tmp_path / "ref")
  total, err = _run_failing_write(c, ref)
  assert err is None and total > 10
  for k in range(1, total + 1):
    code = ERRNOS[k % len(ERRNOS)]
    wd = str(tmp_path / f"k{k}")
    _, err = _run_failing_write(c, wd, fail_at=k, code=code)
    assert err is not None, k
    line = str(err)
    assert "\n" not in line and line.startswith(f"{wd}: cannot be written ({os.strerror(code)})")
    assert "; " in line.split(")", 1)[1], line  # <what>; <fix>
    assert ("its last checkpoint is kept" in line) == os.path.isdir(
        os.path.join(wd, "checkpoints")), line
    experiment.run(c, wd, quiet=True)  # the disk works again: the same command
    assert _metrics(wd) == _metrics(ref), k
    assert _results(wd) == _results(ref), k


def test_a_workdir_removed_while_running_is_one_line(tmp_path, compile_cache):
  c = small(**SCHEDULE)
  ref = str(tmp_path / "ref")
  experiment.run(c, ref, quiet=True)
  append = workdir_lib.append_line
  for k in (1, 3, 6):  # removed after the k-th metrics line: before, between, after checkpoints
    wd = str(tmp_path / f"w{k}")
    calls = [0]

    def append_then_remove(f, obj):
      append(f, obj)
      calls[0] += 1
      if calls[0] == k:
        shutil.rmtree(wd)  # the open metrics file still takes lines: they go nowhere

    with pytest.MonkeyPatch.context() as mp:
      mp.setattr(workdir_lib, "append_line", append_then_remove)
      with pytest.raises(workdir_lib.WorkdirError) as e:
        experiment.run(c, wd, quiet=True)
    assert str(e.value).startswith(f"{wd}: was removed while the run was going on"), k
    assert "\n" not in str(e.value)
    assert not os.path.exists(wd), k  # no checkpoint recreated the folder
    experiment.run(c, wd, quiet=True)  # starts again
    assert _metrics(wd) == _metrics(ref) and _results(wd) == _results(ref), k


def test_other_errors_are_not_taken_for_the_machine(tmp_path):
  assert workdir_lib.write_failure(ValueError("a bug"), str(tmp_path)) is None
  assert workdir_lib.write_failure(FileNotFoundError(errno.ENOENT, "x", "f"), str(tmp_path)) is None
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert "No space left on device" in str(workdir_lib.write_failure(wrapped, str(tmp_path)))
  text_only = ValueError("tensorstore: Error writing: [OS error: No space left on device]")
  assert workdir_lib.write_failure(text_only, str(tmp_path)) is not None


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                     capture_output=True)
  return p.returncode == 0


def test_a_full_disk_through_the_command_line(tmp_path):
  """The reported case on a real 400 KB file system, where this machine lets the test mount
  one (it needs root; the fault injection above covers every write everywhere)."""
  fs = tmp_path / "small"
  if not _mount_tmpfs(fs, "400k"):
    pytest.skip("cannot mount a tmpfs here (not root); covered by the fault injection above")
  try:
    args = [sys.executable, "-m", "experiments.main",
            "--config=experiments/configs/synthetic.py:smoke", f"--workdir={fs / 'w'}",
            "--config.checkpoint_every=10", "--config.num_rounds=200",
            "--config.rounds_per_call=10", "--config.log_every=10", "--quiet"]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 2 and p.stdout == "", p.stderr[-3000:]
    assert p.stderr.count("\n") == 1, p.stderr[-3000:]
    assert p.stderr.startswith(f"error: {fs / 'w'}: cannot be written (No space left on device)")
    kept = os.listdir(fs / "w" / "checkpoints")
    shutil.copytree(fs / "w", tmp_path / "moved", ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
  finally:
    subprocess.run(["umount", str(fs)], capture_output=True)
  assert any(k.isdigit() for k in kept)
  args[4] = f"--workdir={tmp_path / 'moved'}"
  p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
