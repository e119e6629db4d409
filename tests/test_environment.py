"""A run's identity covers the process-wide settings that change its numbers: gmr pins the
dtype of what it draws, records the rest (``environment.json``) and refuses to continue a run in
another environment (resume, --extend, --change_optimizer) unless told to."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmr import workdir as workdir_lib
from gmr.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ["--config=experiments/configs/synthetic.py:gumbel_matrix,smoke",
         "--config.synthetic.d=8", "--config.synthetic.num_train=64",
         "--config.synthetic.num_test=32", "--config.rounds_per_call=10", "--config.log_every=10",
         "--quiet"]

# what a process draws for the synthetic suite: inputs, labels, and the pad-crop offsets
DRAW = """
import json, sys, jax, numpy as np
from gmr.data import synthetic
from gmr import schedule
s = synthetic.pairs_suite(jax.random.key(3), d=8, num_train=16, num_test=4)
x = jax.numpy.ones((2, 4, 4, 1), jax.numpy.float32)
crop = schedule.pad_crop(x, jax.random.key(1), 1)
print(json.dumps({"x": s.train.x[:3, :3].tolist(), "y": np.asarray(s.train.y[:5]).tolist(),
                  "x_dtype": str(s.train.x.dtype), "crop": np.asarray(crop).sum(axis=(1, 2, 3)).tolist(),
                  "x64": bool(jax.config.jax_enable_x64)}))
"""


def _python(code, **env):
  e = dict(os.environ, **env)
  p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     env=e, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  return json.loads(p.stdout.strip().splitlines()[-1])


def test_the_data_a_seed_draws_is_the_same_under_x64():
  """Every draw of the synthetic generator and of the augmentation has an explicit dtype: the
  same seed gives the same bits with and without JAX_ENABLE_X64."""
  plain = _python(DRAW, JAX_ENABLE_X64="0")
  wide = _python(DRAW, JAX_ENABLE_X64="1")
  assert (plain["x64"], wide["x64"]) == (False, True)
  assert plain["x_dtype"] == wide["x_dtype"] == "float32"
  for k in ("x", "y", "crop"):
    assert plain[k] == wide[k], k


def test_environment_names_every_setting_and_diff_compares_what_was_recorded():
  env = workdir_lib.environment()
  assert set(env) == {"x64", "default_matmul_precision", "prng_impl", "threefry_partitionable",
                      "xla_flags", "backend", "population"}
  assert env["x64"] is False and env["backend"] == "cpu" and env["population"] is None
  member = workdir_lib.environment({"member": 1, "size": 4})
  assert workdir_lib.environment_diff(env, member) == [("population", None,
                                                       {"member": 1, "size": 4})]
  assert workdir_lib.environment_diff(env, env) == []
  assert workdir_lib.environment_diff({"x64": True}, env) == [("x64", True, False)]
  # a run made before gmr recorded its environment is compared on what is known of it
  assert workdir_lib.environment_diff(workdir_lib.ENVIRONMENT_BEFORE_RECORD, env) == []


def _main(wd, *extra, **env):
  return subprocess.run([sys.executable, "-m", "experiments.main", *SMOKE, f"--workdir={wd}",
                         *extra], cwd=ROOT, capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, **env))


def _config(num_rounds):
  from gmr import cli
  c = cli.load_config(os.path.join(ROOT, SMOKE[0].split("=", 1)[1]))
  for a in SMOKE[1:-1] + [f"--config.num_rounds={num_rounds}"]:
    cli.set_field(c, *a[len("--config."):].split("=", 1))
  return c


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A finished 20-round float32 run, made in this process."""
  from gmr import experiment
  wd = tmp_path_factory.mktemp("env") / "run"
  experiment.run(_config(20), str(wd), quiet=True)
  return wd


def _copy(src, dest):
  import shutil
  shutil.copytree(src, dest)
  return dest


def _files(wd):
  out = {}
  for here, _, files in os.walk(wd):
    for f in files:
      p = os.path.join(here, f)
      with open(p, "rb") as fh:
        out[os.path.relpath(p, wd)] = fh.read()
  return out


def test_the_environment_is_recorded(finished):
  rec = json.load(open(finished / "environment.json"))
  assert rec == {"environment": workdir_lib.environment(), "changes": []}
  assert json.load(open(finished / "results.json"))["environment"] == rec["environment"]


@pytest.mark.parametrize("setting,env", [
    ("x64", {"JAX_ENABLE_X64": "1"}),
    ("default_matmul_precision", {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}),
    ("xla_flags", {"XLA_FLAGS": "--xla_cpu_enable_fast_math=true"}),
])
def test_a_run_does_not_continue_in_another_environment(tmp_path, finished, setting, env):
  """--extend of a finished float32 run under another setting is refused with one line,
  exit 2, and the workdir is left as it was (nothing written, nothing renamed)."""
  wd = _copy(finished, tmp_path / "w")
  before = _files(wd)
  p = _main(wd, "--config.num_rounds=40", "--extend", **env)
  assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr[-2000:]
  assert p.stderr.startswith(f"error: {wd}: its run was made with {setting}="), p.stderr
  assert "--accept_environment_change" in p.stderr
  assert _files(wd) == before


def test_an_accepted_environment_change_is_recorded(tmp_path, finished):
  wd = _copy(finished, tmp_path / "w")
  p = _main(wd, "--config.num_rounds=40", "--extend", "--accept_environment_change",
            JAX_ENABLE_X64="1")
  assert p.returncode == 0, p.stderr[-2000:]
  res = json.load(open(wd / "results.json"))
  (change,) = res["environment_changes"]
  assert (change["from"]["x64"], change["to"]["x64"], res["environment"]["x64"]) == (
      False, True, True)
  assert res["rounds"] == 40


def test_a_workdir_without_an_environment_record_resumes(tmp_path, finished):
  """Runs made before gmr recorded its environment: known to be float32 runs, they continue
  (and get their record) in a float32 process, and are refused under x64."""
  from gmr import experiment
  wd = _copy(finished, tmp_path / "w")
  os.remove(wd / "environment.json")
  p = _main(wd, "--config.num_rounds=40", "--extend", JAX_ENABLE_X64="1")
  assert p.returncode == 2 and "its run was made with x64=False" in p.stderr, p.stderr
  res = experiment.run(_config(40), str(wd), quiet=True, extend=True)
  assert res["rounds"] == 40 and "environment_changes" not in res
  assert json.load(open(wd / "environment.json"))["changes"] == []


def test_pairs_suite_values_pinned_to_float32():
  """The generator's arrays are float32 (labels included) in this process too."""
  import jax
  s = synthetic.pairs_suite(jax.random.key(0), d=8, num_train=8, num_test=4)
  assert s.train.x.dtype == np.float32 and np.asarray(s.train.y).dtype == np.float32
