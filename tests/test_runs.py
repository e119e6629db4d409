"""Interrupted runs and bad input: exact resume after SIGTERM / SIGKILL, workdir safety,
config validation (one line per error), non-finite guard."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from ml_collections import config_dict

from experiments.configs import synthetic as synthetic_cfg
from gmr import checkpoint, experiment, optim, train as T, validate
from gmr import workdir as workdir_lib
from gmr import data as data_lib
from gmr import schedule
from gmr import step
from gmr.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A synthetic run long enough to be interrupted part-way (about 20k task steps).
LONG = ["--config.synthetic.d=16", "--config.synthetic.num_train=512",
        "--config.synthetic.num_test=128", "--config.num_rounds=5000", "--config.log_every=100",
        "--config.eval_every=0", "--config.rounds_per_call=100", "--config.checkpoint_every=500",
        "--config.seed=1"]


def _cmd(wd):
  return [sys.executable, "-m", "experiments.main",
          "--config=experiments/configs/synthetic.py:gumbel_matrix,smoke", f"--workdir={wd}"] + LONG


def _set(c, dotted: str, value, cast=False):
  """``c.<dotted> = value`` for a dotted field path (``cast``: to the field's type)."""
  *parents, last = dotted.split(".")
  node = c
  for p in parents:
    node = node[p]
  node[last] = type(node[last])(value) if cast else value


def _cfg():
  c = synthetic_cfg.get_config("gumbel_matrix,smoke")
  for a in LONG:
    k, v = a[len("--config."):].split("=")
    _set(c, k, v, cast=True)
  return c


def _wait_for(pred, proc, timeout=300):
  t = time.time()
  while not pred():
    assert proc.poll() is None, "the run ended before it could be interrupted"
    assert time.time() - t < timeout
    time.sleep(0.05)


def _latest(wd, c):
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  like = T.init_state(setup, jax.random.key(0))
  return checkpoint.load(str(wd), like)


def _final_state(wd, c):
  return _latest(wd, c)[0]


def _final_meta(wd, c):
  return _latest(wd, c)[1]


def test_sigterm_then_sigkill_then_resume_equals_uninterrupted(tmp_path):
  ref = experiment.run(_cfg(), str(tmp_path / "ref"), quiet=True)
  wd = tmp_path / "cut"
  ck = wd / "checkpoints"
  # 1) SIGTERM: checkpoint written, clean exit with a message
  p = subprocess.Popen(_cmd(wd), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  _wait_for(lambda: (wd / "metrics.jsonl").exists() and (wd / "metrics.jsonl").stat().st_size > 0, p)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=300)
  assert p.returncode == 143, err
  assert "interrupted: stopped by signal 15 at round" in err and "Traceback" not in err
  stopped = int(err.split("at round ")[1].split(";")[0])
  assert (ck / str(stopped)).is_dir() and stopped < 5000
  assert not (wd / "results.json").exists()
  # 2) resume, then SIGKILL once a later periodic checkpoint exists
  p = subprocess.Popen(_cmd(wd), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  nxt = (stopped // 500 + 1) * 500
  _wait_for(lambda: (ck / str(nxt)).is_dir(), p)
  p.kill()
  p.wait()
  assert not (wd / "results.json").exists()
  before = _final_meta(wd, _cfg())["wall_time_s"]  # time of the two cut starts, kept
  # 3) rerun the same command: it resumes and finishes
  r = subprocess.run(_cmd(wd), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  assert "resuming from" in r.stdout
  got = json.load(open(wd / "results.json"))
  assert got["resumed_from_round"] >= nxt
  assert 0 < before < got["wall_time_s"]  # summed over the starts, not the last one only
  for k in ("final", "allocations", "probabilities", "active_fraction", "steps"):
    assert got[k] == json.loads(json.dumps(ref[k])), k
  a, b = _final_state(tmp_path / "ref", _cfg()), _final_state(wd, _cfg())
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))  # bit for bit
  lines = [(json.loads(l)["round"], json.loads(l)["kind"]) for l in open(wd / "metrics.jsonl")]
  assert [r for r, _ in lines] == sorted(r for r, _ in lines)
  assert len(lines) == len(set(lines))  # no line repeated by the resumes


def small(**kw):
  c = synthetic_cfg.get_config("gumbel_matrix,smoke")
  c.synthetic.d = 16
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 20, 10, 10, 10
  for k, v in kw.items():
    c[k] = v
  return c


def test_workdir_safety(tmp_path, capsys):
  wd = str(tmp_path / "w")
  first = experiment.run(small(), wd)
  again = experiment.run(small(), wd)  # finished: not re-run, not overwritten
  assert "already finished" in capsys.readouterr().out
  assert again == json.load(open(os.path.join(wd, "results.json")))
  assert again["wall_time_s"] == pytest.approx(first["wall_time_s"])
  with pytest.raises(workdir_lib.WorkdirError, match="holds a run with a different config "
                     r"\(differs in seed\); use another --workdir, or pass --fresh"):
    experiment.run(small(seed=5), wd)
  experiment.run(small(seed=5), wd, quiet=True, fresh=True)
  old = json.load(open(os.path.join(wd, "previous_0", "results.json")))  # kept, not lost
  assert old["seed"] == 0 and json.load(open(os.path.join(wd, "results.json")))["seed"] == 5


def test_extend_a_finished_run_equals_one_longer_run(tmp_path):
  """--extend continues a finished 20-round run to 40 rounds: the numbers of one 40-round run,
  the 20-round results kept; without --extend, or to fewer rounds, one clear refusal."""
  ref = experiment.run(small(num_rounds=40), str(tmp_path / "ref"), quiet=True)
  wd = str(tmp_path / "w")
  short = experiment.run(small(), wd, quiet=True)
  with pytest.raises(workdir_lib.WorkdirError, match=r"holds a run of num_rounds=20 \(this one: "
                     r"40\); pass --extend to continue it"):
    experiment.run(small(num_rounds=40), wd, quiet=True)
  got = experiment.run(small(num_rounds=40), wd, quiet=True, extend=True)
  assert json.load(open(os.path.join(wd, "results_round_20.json"))) == json.loads(json.dumps(short))
  assert got["rounds"] == 40 and got["resumed_from_round"] == 20
  for k in ("final", "allocations", "probabilities", "active_fraction", "steps"):
    assert got[k] == json.loads(json.dumps(ref[k])), k
  assert json.load(open(os.path.join(wd, "config.json")))["num_rounds"] == 40
  assert experiment.run(small(num_rounds=40), wd, quiet=True) == got  # now finished
  with pytest.raises(workdir_lib.WorkdirError, match="never shortened"):
    experiment.run(small(), wd, quiet=True, extend=True)
  with pytest.raises(workdir_lib.WorkdirError, match=r"differs in num_rounds, seed\)"):
    experiment.run(small(num_rounds=60, seed=3), wd, quiet=True, extend=True)


def test_workdir_from_before_a_field_existed_resumes(tmp_path, capsys):
  """A run made before `schedule` / `data_parallel` existed is the same run at their defaults
  (so an upgraded gmr resumes it), and a different run at any other value."""
  wd = str(tmp_path / "w")
  first = experiment.run(small(), wd, quiet=True)
  path = os.path.join(wd, "config.json")
  cfg = json.load(open(path))
  assert cfg["schedule"] == workdir_lib.ADDED_FIELDS["schedule"]
  assert cfg["data_parallel"] == workdir_lib.ADDED_FIELDS["data_parallel"]
  for k in workdir_lib.ADDED_FIELDS:
    del cfg[k]
  json.dump(cfg, open(path, "w"))
  assert experiment.run(small(), wd) == first
  assert "already finished" in capsys.readouterr().out
  with pytest.raises(workdir_lib.WorkdirError, match=r"differs in schedule\)"):
    experiment.run(small(schedule="joint"), wd)


@pytest.mark.parametrize("poison", ["example", "optimizer_state"])
def test_non_finite_loss_stops_naming_step_and_task(tmp_path, monkeypatch, poison):
  """A NaN example makes the loss NaN; an optimizer whose state overflows (as Adam's second
  moments do under a huge gradient) keeps loss and parameters finite. Either way the run stops
  naming the step and task, and the checkpoint it keeps is finite in every leaf of the state."""
  c = small(num_rounds=60, checkpoint_every=5, log_every=5, eval_every=0, rounds_per_call=5)
  c.synthetic.num_train = 600  # 9 batches of 64 per epoch: 24 examples wait for epoch 2
  suite = data_lib.load_suite(c)
  sampler = schedule.BatchSampler(step.make_keys(c.seed).batch, suite.train, c.batch_size)
  o = suite.train.offsets[2]
  first = {}  # example of task 2 -> first round that samples it
  for r in range(60):
    for e in sampler.task_indices(2, np.array([r]))[0] - o:
      first.setdefault(int(e), r)
  example, hit = max(first.items(), key=lambda kv: kv[1])
  assert hit >= 10  # after the first checkpoints
  real_load = data_lib.load_suite

  def poisoned(config):
    s = real_load(config)
    s.train.x[o + example] = np.nan  # one example of task 2
    return s

  def overflowing(config, num_tasks, method):  # state inf from the step that samples the example on
    import optax
    inner = real_tx(config, num_tasks, method)

    def init(params):
      return (inner.init(params), jnp.zeros((), jnp.float32))

    def update(g, state, params=None):
      u, s_in = inner.update(g, state[0], params)
      count = state[1] + 1.0
      return u, (s_in, jnp.where(count > 4 * hit + 2, jnp.inf, count))
    return optax.GradientTransformation(init, update)

  import jax.numpy as jnp
  real_tx = optim.make_optimizer
  if poison == "example":
    monkeypatch.setattr(data_lib, "load_suite", poisoned)
  else:
    monkeypatch.setattr(optim, "make_optimizer", overflowing)
  wd = tmp_path / "nan"
  with pytest.raises(T.NonFiniteError, match=r"non-finite (loss|parameter or optimizer state) "
                     r"at step \d+ \(task pair1_a\); "
                     r"the last good checkpoint .*checkpoints/\d+\) is kept"):
    experiment.run(c, str(wd), quiet=True)
  kept = sorted(int(d) for d in os.listdir(wd / "checkpoints"))
  assert kept and max(kept) <= hit and not (wd / "results.json").exists()
  st = _final_state(wd, c)
  assert all(np.isfinite(np.asarray(l)).all() for l in jax.tree_util.tree_leaves(st)
             if np.issubdtype(np.asarray(l).dtype, np.floating))


def test_cli_nan_exit_status(tmp_path):
  p = subprocess.run([sys.executable, "-m", "experiments.main",
                      "--config=experiments/configs/synthetic.py:gumbel_matrix,smoke",
                      f"--workdir={tmp_path / 'w'}", "--config.synthetic.d=16",
                      "--config.learning_rate=1e30", "--config.clip_norm=0.0",
                      "--config.num_rounds=20", "--config.rounds_per_call=10"],
                     cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert p.returncode == 1
  assert p.stderr.strip().splitlines()[-1].startswith("error: training diverged: non-finite")
  assert "Traceback" not in p.stderr


INVALID = [  # (field overrides, expected start of the one-line error)
    ({"method": "gumbel"}, "method: unknown method 'gumbel'; choose one of"),
    ({"synthetic.num_train": 0}, "synthetic.num_train: must be >= 1"),
    ({"synthetic.num_pairs": 0}, "synthetic.num_pairs: must be >= 1"),
    ({"synthetic.d": 0}, "synthetic.d: must be >= 1"),
    ({"synthetic.noise_std": -0.1}, "synthetic.noise_std: must be >= 0"),
    ({"taps_tau": -0.1, "method": "taps"}, "taps_tau: must be >= 0"),
    ({"suite": "cifar"}, "suite: unknown suite 'cifar'; choose one of"),
    ({"arch": "resnet"}, "arch: unknown architecture 'resnet'; choose one of"),
    ({"seed": -1}, "seed: must be >= 0, got -1"),
    ({"seed": 1.5}, "seed: must be an integer, got 1.5"),
    ({"num_rounds": 0}, "num_rounds: must be >= 1, got 0"),
    ({"batch_size": 0}, "batch_size: must be >= 1, got 0"),
    ({"batch_size": "16"}, "batch_size: must be an integer, got '16'"),
    ({"eval_batch_size": 0}, "eval_batch_size: must be >= 1"),
    ({"rounds_per_call": 0}, "rounds_per_call: must be >= 1"),
    ({"eval_every": -5}, "eval_every: must be >= 0"),
    ({"log_every": -1}, "log_every: must be >= 0"),
    ({"learning_rate": 0.0}, "learning_rate: must be > 0, got 0.0"),
    ({"alloc_learning_rate": -1.0}, "alloc_learning_rate: must be > 0"),
    ({"alloc_lr_multiplier": 0.0}, "alloc_lr_multiplier: must be > 0"),
    ({"p_init": 1.0}, "p_init: must be < 1, got 1.0; give a probability strictly between 0 and 1"),
    ({"p_init": 0.0}, "p_init: must be > 0, got 0.0"),
    ({"t_init": 0.0}, "t_init: must be > 0, got 0.0; temperatures must be positive"),
    ({"t_min": -0.5}, "t_min: must be > 0"),
    ({"t_min": 60.0}, "t_min: 60.0 exceeds t_init=50.0"),
    ({"budget": 0.0}, "budget: must be > 0, got 0.0; give the allowed active fraction in (0, 1]"),
    ({"budget": 1.5}, "budget: must be <= 1, got 1.5"),
    ({"budget_lambda": -1.0}, "budget_lambda: must be >= 0"),
    ({"budget_lambda": 1.0, "budget": 1.0}, "budget: is 1.0 (no constraint) while budget_lambda > 0"),
    ({"entropy_penalty": -0.1}, "entropy_penalty: must be >= 0"),
    ({"l2": -1e-4}, "l2: must be >= 0"),
    ({"clip_norm": -1.0}, "clip_norm: must be >= 0, got -1.0; use 0 to disable clipping"),
    ({"dropout": 1.0}, "dropout: must be < 1"),
    ({"adam_b1": 1.0}, "adam_b1: must be < 1"),
    ({"adam_b2": -0.1}, "adam_b2: must be >= 0"),
    ({"adam_eps": 0.0}, "adam_eps: must be > 0"),
    ({"combine": "max"}, "combine: unknown mode 'max'; use 'mean', 'sum' or 'auto'"),
    ({"conv_impl": "cudnn"}, "conv_impl: unknown 'cudnn'"),
    ({"layout": "nchw"}, "layout: unknown 'nchw'"),
    ({"conv_dtype": "float16"}, "conv_dtype: unknown 'float16'"),
    ({"augment": "flip"}, "augment: unknown value 'flip'"),
    ({"augment_pad": -2}, "augment_pad: must be >= 0"),
    ({"checkpoint_every": -1}, "checkpoint_every: must be >= 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints: must be >= 1"),
    ({"fused": "yes"}, "fused: must be true or false"),
    ({"data_dir": 3}, "data_dir: must be a path string"),
    ({"accept_noncanonical_data": "yes"}, "accept_noncanonical_data: must be true or false"),
    ({"select_by": "accuracy"}, "select_by: 'accuracy' is not <split>.<metric>.<task or mean>"),
    ({"data_seed": -3}, "data_seed: must be >= 0"),
    ({"select_by": "validation.loss.mean"},
     "select_by: suite 'synthetic_pairs' has no validation split (it has test)"),
    ({"select_by": "test.accuracy.mean"},
     "select_by: suite 'synthetic_pairs' reports no accuracy (its loss 'mse' gives loss)"),
    ({"select_by": "test.loss.pair9_a"}, "select_by: suite 'synthetic_pairs' has no task 'pair9_a'"),
    ({"method": "no_sharing", "no_sharing_components_per_task": 3},
     "no_sharing_components_per_task: 4 tasks x 3 components != 4 components per layer"),
    ({"method": "fixed"}, "fixed_allocation: is required by method 'fixed'"),
    ({"schedule": "parallel"}, "schedule: unknown value 'parallel'"),
    ({"data_parallel": -1}, "data_parallel: must be >= 0"),
    ({"data_parallel": 64}, "data_parallel: 64 devices asked, 1 visible"),
]


def test_invalid_config_table():
  assert len(INVALID) >= 30
  for overrides, expected in INVALID:
    # type_safe=False: also the wrong types a config file (not a flag) could hold
    c = config_dict.ConfigDict(synthetic_cfg.get_config("gumbel_matrix").to_dict(), type_safe=False)
    for k, v in overrides.items():
      _set(c, k, v)
    with pytest.raises(ConfigError) as e:
      validate.validate(c)
    line = str(e.value)
    assert "\n" not in line and line.startswith(expected), (overrides, line)


def test_batch_must_split_over_the_data_parallel_devices(monkeypatch):
  """data_parallel=N or 0 (all devices): a batch that does not split is one config error line."""
  import jax
  monkeypatch.setattr(jax, "device_count", lambda: 4)
  for dp in (4, 0):
    c = synthetic_cfg.get_config("gumbel_matrix")
    c.data_parallel, c.batch_size = dp, 6
    with pytest.raises(ConfigError, match=rf"batch_size: 6 does not split over data_parallel="
                       rf"{dp} \(4 devices\); use a multiple of 4"):
      validate.validate(c)
    c.batch_size = 8
    validate.validate(c)


def test_allocation_history_is_recorded_and_changes_nothing(tmp_path):
  a = experiment.run(small(alloc_history_every=5), str(tmp_path / "a"), quiet=True)
  b = experiment.run(small(alloc_history_every=0), str(tmp_path / "b"), quiet=True)
  assert a["final"] == b["final"] and a["probabilities"] == b["probabilities"]
  hist = [json.loads(l) for l in open(tmp_path / "a" / "metrics.jsonl")]
  hist = [h for h in hist if h["kind"] == "alloc"]
  assert [h["round"] for h in hist] == [5, 10, 15, 20]
  p = np.asarray(hist[-1]["probabilities"]["layer_0"])
  assert p.shape == (4, 4) and ((p >= 0) & (p <= 1)).all()
  np.testing.assert_allclose(p, a["probabilities"]["layer_0"], atol=1e-5)
  assert not any(json.loads(l)["kind"] == "alloc" for l in open(tmp_path / "b" / "metrics.jsonl"))


class Killed(BaseException):
  """Stands for SIGKILL: nothing in gmr catches it."""


TIMING = ("steps_per_s", "eta_s", "elapsed_s", "wall_s")


def _metrics(wd):
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in f]


def _results(wd):
  with open(os.path.join(wd, "results.json")) as f:
    r = json.load(f)
  r["checkpoint"] = os.path.relpath(r["checkpoint"], wd)
  return {k: v for k, v in r.items() if k not in ("wall_time_s", "resumed_from_round")}


def count_writes(run, kill_after=None) -> int:
  """``run()`` with every file-system write of a workdir counted (config.json and
  results.json, each metrics line, each checkpoint save); ``kill_after=k`` raises
  :class:`Killed` right after the k-th. Returns the number of writes."""
  n = [0]

  def count(fn):
    def wrapped(*a, **kw):
      out = fn(*a, **kw)
      n[0] += 1
      if n[0] == kill_after:
        raise Killed
      return out
    return wrapped

  mp = pytest.MonkeyPatch()
  mp.setattr(workdir_lib, "write_json_atomic", count(workdir_lib.write_json_atomic))
  mp.setattr(workdir_lib, "append_line", count(workdir_lib.append_line))
  mp.setattr(workdir_lib, "write_changes", count(workdir_lib.write_changes))
  mp.setattr(checkpoint.Checkpoints, "save", count(checkpoint.Checkpoints.save))
  try:
    run()
  except Killed:
    pass
  finally:
    mp.undo()
    # each rerun reads its programs from the persistent cache: the ones held in memory would
    # only pile up (each loaded program keeps its own memory maps, and a process has 65,530)
    jax.clear_caches()
  return n[0]


def _run_counting_writes(c, wd, kill_after=None, **run_kw):
  """:func:`count_writes` of ``experiment.run(c, wd, ...)``."""
  return count_writes(lambda: experiment.run(c, wd, quiet=True, **run_kw), kill_after)


KILL_SCHEDULES = {
    # best checkpoints between regular ones (the StepAlreadyExists case), keep 3
    "select_by": dict(num_rounds=60, eval_every=10, log_every=10, rounds_per_call=10,
                      checkpoint_every=20, keep_checkpoints=3, select_by="test.loss.mean"),
    # checkpoints off the log grid (a resume mid log interval), no evaluation but the last
    "off_grid": dict(num_rounds=50, eval_every=0, log_every=20, rounds_per_call=5,
                     checkpoint_every=15, alloc_history_every=10),
}


@pytest.fixture
def compile_cache(tmp_path):
  """Every rerun compiles the same programs: XLA's persistent cache makes that a file read
  (restored afterwards, so other tests compile as usual)."""
  from jax._src import compilation_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  for n, v in zip(names, (str(tmp_path / "xla_cache"), 0.0, 0)):
    jax.config.update(n, v)
  compilation_cache.reset_cache()
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


@pytest.mark.parametrize("schedule", sorted(KILL_SCHEDULES))
def test_a_kill_after_any_write_then_rerun_equals_the_uninterrupted_run(tmp_path, schedule,
                                                                        compile_cache):
  """Fault injection over the whole save sequence: the run is stopped right after each of its
  file-system writes in turn, then rerun; results.json and metrics.jsonl equal the
  uninterrupted run's, line for line (timing fields aside)."""
  c = small(**KILL_SCHEDULES[schedule])
  ref = str(tmp_path / "ref")
  total = _run_counting_writes(c, ref)
  assert total > 10
  for k in range(1, total):
    wd = str(tmp_path / f"k{k}")
    _run_counting_writes(c, wd, kill_after=k)
    experiment.run(c, wd, quiet=True)
    assert _metrics(wd) == _metrics(ref), k
    assert _results(wd) == _results(ref), k


def test_best_checkpoint_saved_then_killed_before_the_regular_one_resumes(tmp_path):
  """The reported case: a kill between a best save (round 30) and the next regular one
  (round 40) leaves checkpoints/{20} and checkpoints_best/{30}; the rerun resumes from 20 and
  selects round 30 as the uninterrupted run does."""
  c = small(num_rounds=60, eval_every=10, checkpoint_every=20, keep_checkpoints=3,
            select_by="test.loss.mean")
  ref = experiment.run(c, str(tmp_path / "ref"), quiet=True)
  wd = str(tmp_path / "w")
  experiment.run(c, wd, quiet=True)
  import shutil
  for r in (40, 60):
    shutil.rmtree(os.path.join(wd, "checkpoints", str(r)))
  os.remove(os.path.join(wd, "results.json"))
  got = experiment.run(c, wd, quiet=True)
  assert got["resumed_from_round"] == 20
  assert got["selected_by"] == ref["selected_by"] and got["final"] == json.loads(json.dumps(ref["final"]))


@pytest.mark.parametrize("short,long,eval_every", [(30, 60, 0), (30, 60, 10), (35, 60, 10),
                                                   (25, 40, 20), (20, 45, 15)])
def test_extend_selects_and_logs_as_one_run_of_the_final_length(tmp_path, short, long, eval_every,
                                                                 compile_cache):
  """Which rounds are evaluated and eligible for select_by is a function of the final schedule:
  a run extended from ``short`` to ``long`` rounds reports the selection, results and
  metrics.jsonl of one ``long``-round run (the shorter run's end-of-run evaluation is its own,
  not a candidate of the longer run)."""
  kw = dict(eval_every=eval_every, log_every=5, rounds_per_call=5, select_by="test.loss.mean")
  ref_wd, wd = str(tmp_path / "ref"), str(tmp_path / "w")
  experiment.run(small(num_rounds=long, **kw), ref_wd, quiet=True)
  experiment.run(small(num_rounds=short, **kw), wd, quiet=True)
  experiment.run(small(num_rounds=long, **kw), wd, quiet=True, extend=True)
  assert _results(wd) == _results(ref_wd)
  assert _metrics(wd) == _metrics(ref_wd)


def _damage(ckpt_dir, kind):
  """What a disk or a careless hand can do to one checkpoint folder."""
  import shutil
  if kind in ("state", "meta"):
    shutil.rmtree(os.path.join(ckpt_dir, kind))
    return
  files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(ckpt_dir, "state"))
                 for f in fs if f != "commit_success.txt")
  i = int(kind.split("_")[1]) % len(files)
  with open(files[i], "r+b") as f:
    f.truncate(0 if kind.startswith("empty") else max(1, os.path.getsize(files[i]) // 2))


@pytest.mark.parametrize("kind", ["state", "meta", "empty_0", "empty_1", "empty_2", "empty_3",
                                  "cut_0", "cut_2"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capfd, kind,
                                                                    compile_cache):
  """The latest checkpoint damaged (a part removed, a file emptied or cut): the rerun warns in
  one line, keeps the damaged one aside, resumes from the intact one before it and ends as
  the uninterrupted run. (Which files a restore reads can vary: damage to one it does not read
  leaves the checkpoint intact, and the run resumes from it.)"""
  c = small(num_rounds=40, eval_every=10, checkpoint_every=10, keep_checkpoints=3)
  ref = str(tmp_path / "ref")
  experiment.run(c, ref, quiet=True)
  wd = str(tmp_path / "w")
  _run_counting_writes(c, wd, kill_after=None)
  os.remove(os.path.join(wd, "results.json"))
  import shutil
  shutil.rmtree(os.path.join(wd, "checkpoints", "40"))  # a run killed after round 30's save
  _damage(os.path.join(wd, "checkpoints", "30"), kind)
  capfd.readouterr()
  got = experiment.run(c, wd, quiet=True)
  err = capfd.readouterr().err.strip().splitlines()
  warnings = [l for l in err if l.startswith("warning: checkpoint")]
  if kind in ("state", "meta") or warnings:
    assert len(warnings) == 1 and "checkpoints/30 is damaged" in warnings[0], err
    assert os.path.isdir(os.path.join(wd, "damaged_checkpoints", "30"))
    assert got["resumed_from_round"] == 20
  else:  # a file the restore does not read (orbax keeps more than one manifest): intact
    assert got["resumed_from_round"] == 30
  assert _results(wd) == _results(ref)
  assert _metrics(wd) == _metrics(ref)


def test_workdir_identity_lock_and_kind(tmp_path):
  """A checkpoint carries its run's identity and is refused for another run (config.json
  removed, then another seed); a second process on one workdir is refused while the first
  holds it; a workdir that is a file is refused. Each: one WorkdirError, nothing lost."""
  import fcntl
  wd = str(tmp_path / "w")
  first = experiment.run(small(seed=7), wd, quiet=True)
  os.remove(os.path.join(wd, "config.json"))
  with pytest.raises(workdir_lib.WorkdirError, match="belongs to another run"):
    experiment.run(small(seed=8), wd, quiet=True)
  assert json.load(open(os.path.join(wd, "results.json")))["seed"] == 7
  assert not os.path.exists(os.path.join(wd, "config.json"))
  # another architecture (its checkpoints would not even restore): refused, not "damaged"
  with pytest.raises(workdir_lib.WorkdirError, match="belongs to another run"):
    experiment.run(small(seed=7, arch_kwargs={"hidden": 8}), wd, quiet=True)
  assert not os.path.exists(os.path.join(wd, "damaged_checkpoints"))
  again = experiment.run(small(seed=7), wd, quiet=True)  # its own run: nothing is lost
  assert again["final"] == json.loads(json.dumps(first["final"]))
  with open(os.path.join(wd, ".lock"), "w") as held:  # as a running process holds it
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(workdir_lib.WorkdirError, match="another gmr process is running in it"):
      experiment.run(small(seed=7), wd, quiet=True)
  assert experiment.run(small(seed=7), wd, quiet=True)["seed"] == 7  # released
  f = tmp_path / "file"
  f.write_text("x")
  with pytest.raises(workdir_lib.WorkdirError, match="is a file, not a directory"):
    experiment.run(small(), str(f), quiet=True)


def _float_fields(c, prefix=""):
  """Every float-valued field of a config (nested too), from the config itself."""
  out = []
  for k, v in c.items():
    if isinstance(v, config_dict.ConfigDict):
      out += _float_fields(v, f"{prefix}{k}.")
    elif isinstance(v, float):
      out.append(prefix + k)
  return out


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_every_float_field_refuses_non_finite_values(value):
  """nan / inf in any float field of the config (taps fields with method taps) is one
  ConfigError naming the field, before any compute (was: learning_rate=nan trained)."""
  base = synthetic_cfg.get_config("taps")
  fields = _float_fields(base)
  assert {"learning_rate", "taps_tau", "p_init", "synthetic.noise_std"} <= set(fields)
  for field in fields:
    c = config_dict.ConfigDict(base.to_dict(), type_safe=False)
    _set(c, field, value)
    with pytest.raises(ConfigError) as e:
      validate.validate(c)
    assert str(e.value).startswith(f"{field}: "), (field, str(e.value))


def _state_at(wd, c, round_):
  suite = data_lib.load_suite(c)
  like = T.init_state(T.make_setup(c, suite), jax.random.key(0))
  return checkpoint.load(str(wd), like, round_=round_)[0]


def test_change_optimizer_continues_from_the_checkpoint_and_refuses_every_other_change(tmp_path):
  """--change_optimizer: a run of 20 rounds continued to 40 under another learning rate and a
  clip (a change of the optimizer state's structure) starts from the checkpoint's parameters
  and Adam moments, equals training from that state under the new optimizer, and is recorded;
  the record survives reruns; every non-optimizer field is still refused."""
  wd = str(tmp_path / "w")
  a = small(checkpoint_every=10)
  experiment.run(a, wd, quiet=True)
  b = small(num_rounds=40, checkpoint_every=10, learning_rate=5e-3, clip_norm=0.0)
  with pytest.raises(workdir_lib.WorkdirError, match="differs in clip_norm, learning_rate, "):
    experiment.run(b, wd, quiet=True, extend=True)
  with pytest.raises(workdir_lib.WorkdirError, match="also differs in num_rounds; add --extend"):
    experiment.run(b, wd, quiet=True, change_optimizer=True)
  bad = small(num_rounds=40, checkpoint_every=10, learning_rate=5e-3, p_init=0.4)
  with pytest.raises(workdir_lib.WorkdirError, match="optimizer settings only .* also differs "
                     "in p_init; use another --workdir"):
    experiment.run(bad, wd, quiet=True, extend=True, change_optimizer=True)
  old = _state_at(wd, a, 20)
  got = experiment.run(b, wd, quiet=True, extend=True, change_optimizer=True)
  assert got["optimizer_changes"] == [{"round": 20, "changed": {
      "clip_norm": [1.0, 0.0], "learning_rate": [0.01, 5e-3]}}]
  assert got["resumed_from_round"] == 20 and os.path.exists(os.path.join(wd, "results_round_20.json"))
  # the reference: the 20-round checkpoint's state, its optimizer moments carried into b's
  suite = data_lib.load_suite(b)
  fresh = T.init_state(T.make_setup(b, suite), jax.random.key(0))
  opt, reset = optim_carry(old.opt_state, fresh.opt_state)
  assert reset == []
  _, st, final, _ = T.train(b, suite, lambda ev: None, state=old.replace(opt_state=opt),
                            start_round=20)
  assert got["final"] == json.loads(json.dumps(final["test"]))
  np.testing.assert_array_equal(jax.tree.leaves(st.params)[0],
                                jax.tree.leaves(_state_at(wd, b, 40).params)[0])
  # moments carried, not restarted: a fresh optimizer from the same parameters differs
  _, _, other, _ = T.train(b, suite, lambda ev: None,
                           state=old.replace(opt_state=fresh.opt_state), start_round=20)
  assert other["test"]["loss"]["mean"] != final["test"]["loss"]["mean"]
  # recorded: reruns with or without the flag find it finished; its config is the new one
  assert experiment.run(b, wd, quiet=True) == got
  assert json.load(open(os.path.join(wd, "config.json")))["learning_rate"] == 5e-3
  assert workdir_lib.read_changes(wd)[0]["round"] == 20
  for field in sorted(set(_config_fields(a)) - set(optim.OPTIMIZER_FIELDS)
                      - set(workdir_lib.MACHINE_FIELDS) - {"num_rounds"}):
    c = small(num_rounds=60, checkpoint_every=10, learning_rate=5e-3, clip_norm=0.0)
    _perturb(c, field)
    with pytest.raises(workdir_lib.WorkdirError, match=f"also differs in {field}"):
      workdir_lib.prepare(c, wd, fresh=False, extend=True, change_optimizer=True)
  assert experiment.run(b, wd, quiet=True) == got  # nothing was changed by the refusals


def optim_carry(old, new):
  from gmr import optim
  return optim.carry_over_state(old, new)


def _config_fields(c, prefix=""):
  out = []
  for k, v in c.items():
    if isinstance(v, config_dict.ConfigDict):
      out += _config_fields(v, f"{prefix}{k}.") if len(v) else [f"{prefix}{k}"]
    else:
      out.append(f"{prefix}{k}")
  return out


def _perturb(c, dotted):
  """Give field ``dotted`` of ``c`` another value of its type (not necessarily a valid one:
  the workdir check alone is called)."""
  *parents, last = dotted.split(".")
  node = c
  for p in parents:
    node = node[p]
  v = node[last]
  if isinstance(v, config_dict.ConfigDict):
    with node.unlocked():
      node[last] = config_dict.ConfigDict({"extra_field": 1})
  elif isinstance(v, bool):
    node[last] = not v
  elif isinstance(v, int):
    node[last] = v + 1
  elif isinstance(v, float):
    node[last] = v * 0.5 + 0.125
  elif isinstance(v, str):
    node[last] = v + "x"
  elif isinstance(v, list):
    node[last] = v + ["x"]
  else:  # a None placeholder: a value of its declared type
    node[last] = {int: 1, float: 0.5, list: [[1]], str: "x"}[node.get_type(last)]


def test_a_diverged_run_continues_under_a_changed_optimizer_and_survives_kills(
    tmp_path, monkeypatch, compile_cache):
  """The reproduction: training whose optimizer state overflows late at the higher learning
  rate (as Adam's second moments do) stops naming its last good checkpoint and the way on;
  the same run with a lower learning rate and ``change_optimizer`` continues from that
  checkpoint and finishes. A kill after any write of the continuation, then the same command
  again, ends identical to the uninterrupted continuation (results.json, metrics.jsonl)."""
  import shutil
  import jax.numpy as jnp
  import optax
  real = optim.make_optimizer

  def late_overflow(config, num_tasks, method):
    inner, high = real(config, num_tasks, method), config.learning_rate > 5e-3

    def init(params):
      return (inner.init(params), jnp.zeros((), jnp.float32))

    def update(g, state, params=None):
      u, s_in = inner.update(g, state[0], params)
      n = state[1] + 1.0
      return u, (s_in, jnp.where((n > 4 * 27) & high, jnp.inf, n))
    return optax.GradientTransformation(init, update)
  monkeypatch.setattr(optim, "make_optimizer", late_overflow)
  kw = dict(num_rounds=50, checkpoint_every=5, log_every=5, eval_every=10, rounds_per_call=5)
  diverged = str(tmp_path / "diverged")
  with pytest.raises(T.NonFiniteError, match=r"checkpoints/25\) is kept; continue from it "
                     r"with a lower learning rate .*--change_optimizer"):
    experiment.run(small(**kw), diverged, quiet=True)
  lower = small(learning_rate=2e-3, **kw)
  ref = str(tmp_path / "ref")
  shutil.copytree(diverged, ref)
  total = _run_counting_writes(lower, ref, change_optimizer=True)
  got = json.load(open(os.path.join(ref, "results.json")))
  assert got["resumed_from_round"] == 25 and np.isfinite(got["final"]["loss"]["mean"])
  assert got["optimizer_changes"] == [{"round": 25, "changed": {"learning_rate": [0.01, 2e-3]}}]
  assert [l["round"] for l in _metrics(ref) if l["kind"] == "log"] == list(range(5, 55, 5))
  assert total > 10
  for k in range(1, total):
    wd = str(tmp_path / f"k{k}")
    shutil.copytree(diverged, wd)
    _run_counting_writes(lower, wd, kill_after=k, change_optimizer=True)
    experiment.run(lower, wd, quiet=True, change_optimizer=True)
    assert _metrics(wd) == _metrics(ref), k
    assert _results(wd) == _results(ref), k
