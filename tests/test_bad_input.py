"""Every bad input through the command line: one line ``error: <field>: <what>; <fix>``, exit 2,
no traceback, before any data or training.

The table is generated from the shipped configs themselves: every field of every config in
experiments/configs (nested ones included) gets a value its type cannot take, a misspelled
name, and (floats) a non-finite value; string fields with a fixed set of values get one
outside it. The reproductions of the kinds (list fields from flags and variants, flag and
file parsing, the network's structure, the workdir) run as real processes.
"""

import glob
import os
import subprocess
import sys

import pytest
from ml_collections import config_dict

from gmr import cli, data as data_lib, train as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {  # shipped config -> the variant its table is built on (one that validates)
    "synthetic": "", "transfer": "", "four_mnists": "", "omniglot": "",
    "clusters40": "offline", "finetune": "source"}
# string fields whose values form a fixed set (or name a finished run): a made-up value is an error
CHOICES = ("method", "suite", "arch", "combine", "conv_impl", "layout", "conv_dtype", "augment",
           "schedule", "select_by", "taps_score_optimizer", "init_from", "data.tasks")
FREE_TEXT = ("data_dir", "tfds_dir")  # paths: a wrong one is a data error (tested below)


def test_every_shipped_config_is_in_the_table():
  shipped = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "experiments",
                                                                       "configs", "*.py"))}
  assert shipped - {"__init__", "common"} == set(CONFIGS)


def _fields(c, prefix=""):
  """``(dotted name, declared type, value)`` of every field of ``c``."""
  out = []
  for k in sorted(c.keys()):
    v = c[k]
    if isinstance(v, config_dict.ConfigDict):
      out += _fields(v, f"{prefix}{k}.")
    else:
      out.append((f"{prefix}{k}", c.get_type(k), v))
  return out


INT32_PAST = str(2 ** 31)  # past the 32-bit integers jax computes with
INT64_PAST = str(2 ** 63)  # past what numpy's int64 holds


def _bad_values(name, typ):
  if typ is bool:
    return ["maybe"]
  if typ is int:
    return ["1.5", "abc", INT32_PAST, INT64_PAST]
  if typ is float:
    return ["abc", "nan", "inf"]
  if typ in (list, tuple):
    return ["notalist"]
  if typ is str:
    return ["zzz_not_a_value"] if name in CHOICES else []
  return []


def _table():
  rows = []
  for name, variant in sorted(CONFIGS.items()):
    spec = f"experiments/configs/{name}.py" + (f":{variant}" if variant else "")
    c = cli.load_config(os.path.join(ROOT, spec))
    for field, typ, _ in _fields(c):
      for bad in ([] if field in FREE_TEXT else _bad_values(field, typ)):
        rows.append((spec, f"--config.{field}={bad}", field, None))
      rows.append((spec, f"--config.{field}x=1", f"{field}x", f"did you mean {field}?"))
  return rows


TABLE = _table()


def test_the_table_covers_every_field():
  """Every field of every shipped config is misspelled once, and given a value it cannot take
  unless any text is a value of it (a free string or a path)."""
  for name, v in CONFIGS.items():
    spec = f"experiments/configs/{name}.py" + (f":{v}" if v else "")
    rows = [r for r in TABLE if r[0] == spec]
    for f, typ, _ in _fields(cli.load_config(os.path.join(ROOT, spec))):
      assert any(r[2] == f + "x" for r in rows), (spec, f)
      valued = any(r[2] == f for r in rows)
      assert valued or (typ is str and f not in CHOICES), (spec, f, typ)
  assert len(TABLE) > 400


def _cli(argv, capsys, monkeypatch):
  """experiments.main as the command line runs it, in this process: ``(status, out, err)``.
  Data loading and training are replaced by a failure: no bad input may reach them."""
  from experiments import main as M

  def reached(*a, **k):
    raise AssertionError("a bad input reached data loading or training")
  monkeypatch.setattr(data_lib, "load_suite", reached)
  monkeypatch.setattr(train_lib, "train", reached)
  M.FLAGS.unparse_flags()
  try:
    M.main(M.parse_args(["experiments.main"] + argv))
    status = 0
  except SystemExit as e:
    status = e.code
  finally:
    M.FLAGS.unparse_flags()
  out, err = capsys.readouterr()
  return status, out, err


@pytest.mark.parametrize("spec,arg,field,hint", TABLE, ids=[f"{r[0].split('/')[-1]}|{r[1]}"
                                                           for r in TABLE])
def test_bad_field_value_or_name_is_one_line_exit_2(tmp_path, capsys, monkeypatch, spec, arg,
                                                     field, hint):
  monkeypatch.chdir(ROOT)
  status, out, err = _cli([f"--config={spec}", arg, f"--workdir={tmp_path / 'w'}"], capsys,
                          monkeypatch)
  assert status == 2 and out == "", (status, out, err)
  lines = err.splitlines()
  assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), err
  assert "; " in lines[0][len(f"error: {field}: "):], err  # <what>; <fix>
  if hint:
    assert hint in lines[0], err
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


# ----------------------------------------------------------------------------- limits and paths
# integers inside int32 that still cannot run: the step counter, and what memory holds
LIMIT_CASES = [
    ("num_rounds", "--config.num_rounds=2147483647", "num_rounds: 2147483647 rounds of 4 tasks"),
    ("synthetic.num_train", "--config.synthetic.num_train=2147483647",
     "synthetic.num_train: the generated data would take"),
    ("synthetic.d", "--config.synthetic.d=2147483647", "synthetic.d: the generated data would"),
    ("synthetic.num_pairs", "--config.synthetic.num_pairs=1073741824",
     "synthetic.num_train: the generated data would take"),
]


@pytest.mark.parametrize("field,arg,expected", LIMIT_CASES, ids=[c[1] for c in LIMIT_CASES])
def test_integers_at_the_limits_are_one_line(tmp_path, capsys, monkeypatch, field, arg,
                                             expected):
  monkeypatch.chdir(ROOT)
  status, out, err = _cli([f"--config={SYN}:smoke", arg, f"--workdir={tmp_path / 'w'}"],
                          capsys, monkeypatch)
  assert status == 2 and out == "" and err.count("\n") == 1, err
  assert err.startswith(f"error: {expected}"), err
  assert not os.path.exists(tmp_path / "w")


def _workdir_kinds(tmp_path):
  """``(--workdir value, expected start of the line after "error: ")`` for every way the
  path itself cannot hold a run."""
  (tmp_path / "a_file").write_text("x")
  os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
  run = tmp_path / "run"
  run.mkdir()
  (run / "config.json").write_text("{}")
  (run / "metrics.jsonl").write_text("")
  long = tmp_path / ("x" * 300)
  return [
      ("", "--workdir: is empty"),
      (str(tmp_path / "a_file"), f"{tmp_path / 'a_file'}: is a file, not a directory"),
      (str(tmp_path / "a_file" / "sub"), f"{tmp_path / 'a_file' / 'sub'}: {tmp_path / 'a_file'} "
                                         "is a file, not a directory"),
      ("/dev/null", "/dev/null: is a device or other special file, not a directory"),
      (str(tmp_path / "dangling"), f"{tmp_path / 'dangling'}: is a broken symbolic link"),
      (str(long), f"{long}: is too long for the file system"),
      (str(run / "inner"), f"{run / 'inner'}: is inside the workdir of another run ({run})"),
      ("/proc/gmr_workdir", "/proc/gmr_workdir: cannot be used for a run"),
  ]


WORKDIR_KIND_IDS = ["empty", "file", "under_a_file", "device", "dangling_link", "too_long",
                    "inside_a_run", "unwritable_fs"]


@pytest.mark.parametrize("kind", range(len(WORKDIR_KIND_IDS)), ids=WORKDIR_KIND_IDS)
def test_every_unusable_workdir_path_is_one_line(tmp_path, capsys, monkeypatch, kind):
  monkeypatch.chdir(ROOT)
  workdir, expected = _workdir_kinds(tmp_path)[kind]
  before = sorted(os.listdir(tmp_path))
  status, out, err = _cli([f"--config={SYN}:smoke", f"--workdir={workdir}"], capsys, monkeypatch)
  assert status == 2 and out == "" and err.count("\n") == 1, err
  assert err.startswith(f"error: {expected}"), err
  assert "; " in err, err
  assert sorted(os.listdir(tmp_path)) == before  # nothing made


# ----------------------------------------------------------------------------- real processes
SYN = "experiments/configs/synthetic.py"
PROCESS_CASES = [  # (arguments, expected start of the line after "error: ")
    ([f"--config={SYN}:smoke", "--config.batch_size=1.5"], "batch_size: must be an integer"),
    ([f"--config={SYN}:smoke", "--config.batch_size=abc"], "batch_size: must be an integer"),
    ([f"--config={SYN}:smoke", "--config.foo=1"], "foo: unknown config field"),
    ([f"--config={SYN}:smoke", "--config.learningrate=1"],
     "learningrate: unknown config field; did you mean learning_rate?"),
    ([f"--config={SYN}:smoke", "--config.synthetic=3"], "synthetic: is a group of fields"),
    ([f"--config={SYN}:gumbel_matrx"],
     "--config: unknown variant 'gumbel_matrx'; did you mean 'gumbel_matrix'?"),
    (["--config=experiments/configs/nope.py"], "--config: no config file"),
    ([f"--config={SYN}:smoke", "--config.fixed_allocation=[[1,0],[0,1]]", "--config.method=fixed"],
     "fixed_allocation: layer 0 must be a 0/1 matrix of shape (4, 4), got shape (2, 2)"),
    ([f"--config={SYN}:smoke", "--config.method=fixed",
      "--config.fixed_allocation=[[1,0,0,0],[0,1,0,0],[0,0,2,0],[0,0,0,1]]"],
     "fixed_allocation: layer 0 must be a 0/1 matrix"),
    ([f"--config={SYN}:smoke", "--config.fixed_allocation=notalist", "--config.method=fixed"],
     "fixed_allocation: must be a list"),
    ([f"--config={SYN}:taps,smoke,taps_layers=zzz/*"], "taps_layers: must be a list"),
    ([f"--config={SYN}:taps,smoke,taps_layers=['zzz/*']"], "taps_layers: matches no kernel"),
    ([f"--config={SYN}:smoke", "--wrkdir=x"], "--wrkdir: unknown flag; did you mean --workdir?"),
    ([f"--config={SYN}:smoke", "stray"], "arguments: unexpected ['stray']"),
    ([f"--config={SYN}:smoke", "--config.learning_rate=nan"], "learning_rate: must be a finite"),
    ([f"--config={SYN}:smoke", "--config.synthetic.num_train=0"], "synthetic.num_train: must be >= 1"),
    # what only the data tells, refused before training (and config.json taken back)
    ([f"--config={SYN}:smoke", "--config.batch_size=100000"],
     "batch_size: 100000 exceeds the 512 training examples of task 0"),
    # the network's structure, before any data (the data directory is empty)
    (["--config=experiments/configs/omniglot.py:smoke", "--config.arch_kwargs.filters=6",
      "--config.data_dir=<empty>"], "arch_kwargs: the 'omniglot' network with"),
    (["--config=experiments/configs/four_mnists.py:smoke", "--config.data_dir=<empty>"],
     "<empty>/mnist/train-images-idx3-ubyte.gz: missing"),
]


def _process(args, tmp_path, workdir=True, unset=()):
  empty = tmp_path / "empty"
  empty.mkdir(exist_ok=True)
  args = [a.replace("<empty>", str(empty)) for a in args]
  env = dict(os.environ, GMR_TFDS_DIR=str(tmp_path / "tfds"))
  for k in unset:
    env.pop(k, None)
  cmd = [sys.executable, "-m", "experiments.main"] + args + (
      [f"--workdir={tmp_path / 'w'}"] if workdir else [])
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("args,expected", PROCESS_CASES, ids=[" ".join(a[1:])[:60] or a[0]
                                                              for a, _ in PROCESS_CASES])
def test_bad_input_through_the_process_is_one_line(tmp_path, args, expected):
  p = _process(args, tmp_path)
  expected = expected.replace("<empty>", str(tmp_path / "empty"))
  assert p.returncode == 2, p.stderr[-3000:]
  assert p.stdout == "" and p.stderr.count("\n") == 1, p.stderr[-3000:]
  assert p.stderr.startswith(f"error: {expected}"), p.stderr
  assert not os.path.exists(tmp_path / "w" / "metrics.jsonl")


def test_missing_flags_and_workdir_kinds(tmp_path):
  p = _process([f"--config={SYN}:smoke"], tmp_path, workdir=False)
  assert (p.returncode, p.stderr) == (2, "error: --workdir: is required; pass --workdir=<value> "
                                         "(see --helpfull)\n")
  p = _process([], tmp_path, workdir=False)
  assert p.returncode == 2 and p.stderr.startswith("error: --config: is required")
  (tmp_path / "w").write_text("a file")
  p = _process([f"--config={SYN}:smoke"], tmp_path)
  assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
  assert p.stderr.startswith(f"error: {tmp_path / 'w'}: is a file, not a directory")


def test_no_data_directory_is_one_line(tmp_path):
  p = _process(["--config=experiments/configs/four_mnists.py:smoke"], tmp_path,
               unset=("GMR_DATA_DIR",))
  assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
  assert p.stderr.startswith("error: data_dir: not set; pass --config.data_dir=<dir> or set "
                             "$GMR_DATA_DIR")


def test_list_fields_from_flags_and_variants_train(tmp_path):
  """The README's list forms work: a fixed allocation from a flag, TAPS layers from a variant
  (a literal whose commas are not variant separators)."""
  import json
  p = _process([f"--config={SYN}:fixed,smoke", "--config.num_rounds=10", "--config.synthetic.d=8",
                "--config.rounds_per_call=10", "--quiet",
                "--config.fixed_allocation=[[1,1,0,0],[1,1,0,0],[0,0,1,1],[0,0,1,1]]"], tmp_path)
  assert p.returncode == 0, p.stderr[-2000:]
  r = json.load(open(tmp_path / "w" / "results.json"))
  assert r["allocations"]["layer_0"] == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]
  c = cli.load_config(os.path.join(ROOT, f"{SYN}:taps,smoke,taps_layers=['layer_0/*','x/*'],seed=3"))
  assert list(c.taps_layers) == ["layer_0/*", "x/*"] and c.seed == 3
