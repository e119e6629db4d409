"""Every command answers ``--help`` with its usage, and only that: exit status 0 (or absl's 1),
no traceback, nothing written (not in its working directory or home, not in the checkout)."""

import glob
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from gmr import cli
from gmr import config as config_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYN = os.path.join(ROOT, "experiments", "configs", "synthetic.py")


def entry_points():
  """Every module of experiments/ and launch/ that is a command (it has a ``main`` or runs
  under ``__main__``), as a module name."""
  out = []
  for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "**", "*.py"), recursive=True)
                     + glob.glob(os.path.join(ROOT, "launch", "**", "*.py"), recursive=True)):
    text = open(path).read()
    if "__name__ == \"__main__\"" in text or "def main(" in text:
      out.append(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."))
  return out


def _checkout_state():
  """Size, mtime and digest of every tracked file, and the untracked files git would show."""
  git = lambda *a: subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True,
                                  check=True).stdout.split("\0")
  state = {}
  for rel in filter(None, git("ls-files", "-z")):
    path = os.path.join(ROOT, rel)
    if os.path.isfile(path):
      st = os.stat(path)
      with open(path, "rb") as f:
        state[rel] = (st.st_size, st.st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
  untracked = set(filter(None, git("ls-files", "-z", "--others", "--exclude-standard")))
  return state, untracked


def _help(args, tmp):
  env = dict(os.environ, HOME=tmp, XDG_CACHE_HOME=os.path.join(tmp, ".cache"),
             PYTHONPATH=ROOT, MPLCONFIGDIR=tmp + "_matplotlib")  # matplotlib's font cache
  return subprocess.run([sys.executable, "-m", *args], cwd=tmp, env=env, capture_output=True,
                        text=True, timeout=300)


def test_entry_points_are_found():
  found = entry_points()
  for name in ("experiments.main", "experiments.report", "experiments.benchmark",
               "launch.sweep", "launch.aggregate", "launch.tables",
               "launch.progress", "launch.snapshot", "launch.park", "launch.front"):
    assert name in found


def test_every_command_prints_its_usage_for_help_and_writes_nothing(tmp_path):
  cases = [[m, "--help"] for m in entry_points()]
  cases.append(["experiments.main", "--help", f"--config={SYN}:smoke"])
  dirs = [str(tmp_path / f"cwd_{i}") for i in range(len(cases))]
  for d in dirs:
    os.makedirs(d)
  before = _checkout_state()
  with ThreadPoolExecutor(4) as ex:
    done = list(ex.map(_help, cases, dirs))
  assert _checkout_state() == before
  for args, p, d in zip(cases, done, dirs):
    shown = " ".join(args)
    out = p.stdout + p.stderr
    assert p.returncode in (0, 1), (shown, p.returncode, out[-2000:])
    assert "Traceback" not in out, (shown, out[-2000:])
    assert "python -m " + args[0] in out or "usage" in out.lower(), (shown, out[:2000])
    assert not os.listdir(d), (shown, os.listdir(d))


def test_main_help_lists_every_config_field_with_its_doc(tmp_path):
  p = _help(["experiments.main", "--help"], str(tmp_path))
  assert p.returncode == 0, p.stderr
  for field, doc in config_schema.docs().items():
    assert any(line.strip().startswith(f"{field} = ") and doc in line
               for line in p.stdout.splitlines()), field
  assert "--workdir:" in p.stdout and "--[no]extend:" in p.stdout


def test_main_help_with_a_config_lists_its_values():
  text = cli.fields_help(cli.load_config(f"{SYN}:smoke"))
  assert "  synthetic.num_train = 512 " in text
  assert "  suite = 'synthetic_pairs' " in text


def test_main_help_with_a_wrong_config_is_one_error_line(tmp_path):
  p = _help(["experiments.main", "--help", f"--config={SYN}:nonsense"], str(tmp_path))
  assert p.returncode == 2 and p.stderr.startswith("error: ") and len(
      p.stderr.strip().splitlines()) == 1, p.stderr
  assert not os.listdir(tmp_path)


def test_every_field_of_the_schema_has_a_one_line_doc():
  docs = config_schema.docs()
  fields = set(config_schema.defaults().keys()) | {
      f"synthetic.{k}" for k in config_schema.synthetic_defaults().keys()} | {
      f"data.{k}" for suite in config_schema.SUITE_OPTIONS
      for k in config_schema.suite_options(suite).keys()}
  assert set(docs) == fields
  assert all(d.strip() and "\n" not in d for d in docs.values())
