"""Populations (gmr/population.py): several seeds as one vmapped program. Each member equals
its separate run up to float rounding (every method and schedule), writes an ordinary workdir,
resumes exactly after a kill at any write, checkpoints on SIGTERM, and is stopped alone when it
diverges; bad input is one line before anything is written."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from experiments.configs import four_mnists as four_mnists_cfg
from experiments.configs import synthetic as synthetic_cfg
from gmr import experiment, population, train as T
from gmr import data as data_lib
from gmr import workdir as workdir_lib
from gmr.config import ConfigError
from gmr.data.suite import Split, TaskSuite
from tests.test_runs import _metrics, _results, compile_cache, count_writes  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A member equals its separate run up to float summation order (XLA's batched kernels).
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-4


def small(method="gumbel_matrix", **kw):
  c = synthetic_cfg.get_config(f"{method},smoke")
  c.synthetic.d, c.synthetic.num_train, c.synthetic.num_test = 8, 256, 64
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 12, 1, 6, 6
  c.alloc_history_every = 6
  for k, v in kw.items():
    c[k] = v
  return c


CASES = {
    "gumbel_matrix": dict(),
    "shared_bottom_select_by": dict(method="shared_bottom", select_by="test.loss.mean"),
    "no_sharing": dict(method="no_sharing"),
    "fixed": dict(method="fixed", fixed_allocation=[[1, 0, 1, 0], [0, 1, 0, 1], [1, 1, 0, 0],
                                                    [0, 0, 1, 1]]),
    "taps": dict(method="taps"),
    "budget_sparse_heads_sampled_eval": dict(budget=0.5, budget_lambda=1.0,
                                             sparse_head_updates=True, eval_sample=True),
    "joint": dict(schedule="joint"),
}


def _params(state):
  return [np.asarray(a) for a in jax.tree_util.tree_leaves(state.params)]


def _compare(single, member):
  """A member against its separate run: every per-step loss (log_every=1: each log line is
  one step per task), the evaluations, the allocation history, the final parameters and the
  selected evaluation."""
  (ev_a, (_, st_a, fin_a, best_a)), (ev_b, (_, st_b, fin_b, best_b)) = single, member
  assert [e.kind for e in ev_a] == [e.kind for e in ev_b]
  for a, b in zip(ev_a, ev_b):
    if a.kind == "log":
      np.testing.assert_allclose(list(a.data["train_loss"].values()),
                                 list(b.data["train_loss"].values()), rtol=LOSS_RTOL)
    elif a.kind == "eval":
      np.testing.assert_allclose(a.data["test"]["loss"]["mean"], b.data["test"]["loss"]["mean"],
                                 rtol=LOSS_RTOL)
    else:
      assert a.data.keys() == b.data.keys()
  for x, y in zip(_params(st_a), _params(st_b)):
    np.testing.assert_allclose(x, y, atol=PARAM_ATOL, rtol=0)
  assert int(st_a.step) == int(st_b.step)
  np.testing.assert_allclose(fin_a["test"]["loss"]["mean"], fin_b["test"]["loss"]["mean"],
                             rtol=LOSS_RTOL)
  assert (best_a is None) == (best_b is None)
  if best_a is not None:
    assert best_a["round"] == best_b["round"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_member_equals_its_separate_run(case):
  """Every method and schedule: a population of seeds 0 and 1 against the separate run of
  seed 1 (per-step losses, evaluations, final parameters, the selected round)."""
  configs = [small(**CASES[case], seed=s, data_seed=0) for s in (0, 1)]
  suite = data_lib.load_suite(configs[0])
  events = [[], []]
  outs = T.train_population([T.Lane(c, on_event=events[i].append)
                             for i, c in enumerate(configs)], suite)
  single = []
  out = T.train(configs[1], suite, on_event=single.append)
  _compare((single, out), (events[1], outs[1]))
  assert outs[0][2] != outs[1][2]  # the members are different runs


def tiny_images(num_tasks=4, n=96, seed=0) -> TaskSuite:
  rng = np.random.default_rng(seed)
  split = lambda k: Split.from_tasks(
      [rng.integers(0, 256, (k, 28, 28, 1), dtype=np.uint8) for _ in range(num_tasks)],
      [rng.integers(0, 10, (k,)).astype(np.int32) for _ in range(num_tasks)])
  return TaskSuite("tiny_images", tuple(f"t{i}" for i in range(num_tasks)), "xent",
                   (10,) * num_tasks, split(n), split(32), x_scale=1 / 255)


@pytest.mark.parametrize("method", ["gumbel_matrix"])
def test_a_member_of_the_convolutional_network_equals_its_run(method):
  """4-MNISTs' network (convolutions, batched over members by vmap) on tiny images."""
  configs = []
  for s in (0, 1):
    c = four_mnists_cfg.get_config(method)
    c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call, c.seed = 4, 1, 4, 4, s
    configs.append(c)
  suite = tiny_images()
  events = [[], []]
  outs = T.train_population([T.Lane(c, on_event=events[i].append)
                             for i, c in enumerate(configs)], suite)
  single = []
  _compare((single, T.train(configs[1], suite, on_event=single.append)), (events[1], outs[1]))


def test_generated_data_is_each_members_own():
  """With data_seed unset, each synthetic member draws its data from its own seed, as its
  run does: the population holds one copy per member."""
  configs = [small(seed=s) for s in (3, 4)]
  assert not data_lib.same_data_for_seeds(configs[0])
  suites = [data_lib.load_suite(c) for c in configs]
  assert not np.array_equal(suites[0].train.x, suites[1].train.x)
  events = [[], []]
  outs = T.train_population([T.Lane(c, on_event=events[i].append)
                             for i, c in enumerate(configs)], suites)
  single = []
  _compare((single, T.train(configs[0], suites[0], on_event=single.append)),
           (events[0], outs[0]))


def test_the_same_population_is_bit_for_bit_reproducible_and_members_are_independent():
  """Twice the same population: identical. A member's numbers do not depend on the other
  members' values (seed 1 next to seed 0 or next to seed 7)."""
  def run(seeds):
    configs = [small(seed=s, data_seed=0, num_rounds=6, log_every=6) for s in seeds]
    suite = data_lib.load_suite(configs[0])
    return T.train_population([T.Lane(c) for c in configs], suite)
  a, b, c = run((0, 1)), run((0, 1)), run((7, 1))
  for x, y, z in zip(_params(a[1][1]), _params(b[1][1]), _params(c[1][1])):
    np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(x, z)


# ----------------------------------------------------------------------------- workdirs
def _run_counting_writes(configs, wds, kill_after=None):
  """run_population with every write of the workdirs counted (:func:`count_writes`)."""
  return count_writes(lambda: population.run_population(configs, wds, quiet=True), kill_after)


def test_a_population_killed_after_any_write_then_rerun_equals_the_uninterrupted_one(
    tmp_path, compile_cache):
  """Fault injection over the whole save sequence of a 2-member population (select_by, best
  checkpoints, checkpoints off the log grid): stopped right after each write in turn, then
  rerun; every member's results.json and metrics.jsonl equal the uninterrupted population's.
  Kills between the two members' checkpoints leave them at different rounds: the rerun starts
  at the earlier and the other joins."""
  configs = population.member_configs(
      small(num_rounds=8, log_every=4, eval_every=4, rounds_per_call=4, checkpoint_every=4,
            select_by="test.loss.mean", keep_checkpoints=2, alloc_history_every=4,
            data_seed=0), (0, 1))
  ref = [str(tmp_path / "ref" / f"s{c.seed}") for c in configs]
  total = _run_counting_writes(configs, ref)
  assert total > 16
  for k in range(1, total):
    wds = [str(tmp_path / f"k{k}" / f"s{c.seed}") for c in configs]
    _run_counting_writes(configs, wds, kill_after=k)
    population.run_population(configs, wds, quiet=True)
    for a, b in zip(wds, ref):
      assert _metrics(a) == _metrics(b), k
      assert _results(a) == _results(b), k


def test_member_workdirs_are_ordinary_runs_and_record_their_population(tmp_path):
  """Each member's workdir is a finished run of its config (run_status), its results.json
  says member i of P, a rerun finds every member finished, and continuing a member as a run
  of its own is refused as a change of environment."""
  configs = population.member_configs(small(data_seed=0), (5, 6))
  wds = [str(tmp_path / f"seed_{c.seed}") for c in configs]
  res = population.run_population(configs, wds, quiet=True)
  for i, (c, wd, r) in enumerate(zip(configs, wds, res)):
    assert workdir_lib.run_status(c, wd).state == "finished"
    assert r["population"] == {"member": i, "size": 2}
    assert r["environment"]["population"] == {"member": i, "size": 2}
  again = population.run_population(configs, wds, quiet=True)
  assert again == res
  os.remove(os.path.join(wds[1], "results.json"))  # unfinished now: resumed on its own?
  with pytest.raises(workdir_lib.WorkdirError, match="population"):
    experiment.run(configs[1], wds[1], quiet=True)


def test_one_member_diverges_and_the_others_finish(tmp_path, capfd):
  """A member whose data holds a NaN stops with the run's divergence message (its last good
  checkpoint kept, no results.json); the other members finish as if it were not there."""
  configs = population.member_configs(small(checkpoint_every=6), (0, 1))
  real_load = data_lib.load_suite

  def poisoned(config):
    s = real_load(config)
    if config.seed == 1:
      s.train.x[:] = np.nan
    return s

  mp = pytest.MonkeyPatch()
  mp.setattr(data_lib, "load_suite", poisoned)
  try:
    wds = [str(tmp_path / f"seed_{c.seed}") for c in configs]
    res = population.run_population(configs, wds, quiet=True)
  finally:
    mp.undo()
  assert isinstance(res[1], T.NonFiniteError) and "non-finite loss at step" in str(res[1])
  assert "training diverged" in capfd.readouterr().err
  assert not os.path.exists(os.path.join(wds[1], "results.json"))
  alone = experiment.run(configs[0], str(tmp_path / "alone"), quiet=True)
  np.testing.assert_allclose(res[0]["final"]["loss"]["mean"], alone["final"]["loss"]["mean"],
                             rtol=LOSS_RTOL)


def test_memory_estimate_refuses_a_population_that_does_not_fit(tmp_path):
  """One line naming the largest size that fits, before compiling and leaving no file."""
  configs = population.member_configs(small(data_seed=0), range(4))
  suite = data_lib.load_suite(configs[0])
  setup = T.make_setup(configs[0], suite)
  est = population.estimate_memory(setup, configs[0], suite, False, available=10 ** 12)
  assert est.per_member > 0 and est.shared > 0
  limit = int((est.shared + 2.5 * est.per_member) / 0.9)
  wds = [str(tmp_path / f"s{i}") for i in range(4)]
  with pytest.raises(ConfigError, match=r"population: 4 members need about .*; run at most 2 "
                     r"members per program"):
    population.run_population(configs, wds, quiet=True, memory_bytes=limit)
  assert all(not os.listdir(w) or os.listdir(w) == [".lock"] for w in wds)


def test_members_must_differ_only_in_their_seed(tmp_path):
  a, b = small(seed=0), small(seed=1, learning_rate=0.5)
  with pytest.raises(ConfigError, match="population: member 1 differs from member 0 in "
                     "learning_rate"):
    population.check_members([a, b], ["x", "y"])
  with pytest.raises(ConfigError, match="seed 0 is given twice"):
    population.check_members([a, small(seed=0)], ["x", "y"])
  with pytest.raises(ConfigError, match="share the workdir"):
    population.check_members([a, small(seed=1)], ["x", "x"])
  c = small(seed=0, method="fixed")
  c.fixed_allocation_from = "../gm/seed_{seed}"
  with pytest.raises(ConfigError, match="fixed_allocation_from names a source per seed"):
    population.check_members(population.member_configs(c, (0, 1)), ["x", "y"])


def _argv(*args):
  return [sys.executable, "-m", "experiments.main",
          "--config=experiments/configs/synthetic.py:gumbel_matrix,smoke",
          "--config.synthetic.d=8", "--config.num_rounds=12", "--config.log_every=6",
          "--config.eval_every=6", "--config.rounds_per_call=6", *args]


def _cli(*args):
  return subprocess.run(_argv(*args), cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("args,line", [
    (["--seeds=0-1", "--workdir={tmp}/w"], "error: --workdir: has no {seed}"),
    (["--seeds=3-1", "--workdir={tmp}/s{seed}"], "error: --seeds: '3-1' is not a seed"),
    (["--seeds=0,0", "--workdir={tmp}/s{seed}"], "error: --seeds: seed 0 is given twice"),
    (["--seeds=0-1", "--workdir={tmp}/s{seed}", "--extend"],
     "error: --extend: applies to one run, not to a population"),
])
def test_population_bad_input_is_one_line(tmp_path, args, line):
  p = _cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
  assert p.returncode == 2, p.stderr
  assert p.stderr.strip().splitlines() == [p.stderr.strip()] and p.stderr.startswith(line)
  assert not list(tmp_path.iterdir())


def test_cli_population_sigterm_checkpoints_every_member_and_resumes(tmp_path):
  """SIGTERM: every member writes a checkpoint, exit 143; the same command resumes and ends
  as the uninterrupted population."""
  long = ["--config.num_rounds=1500", "--config.log_every=100", "--config.eval_every=0",
          "--config.rounds_per_call=50", "--config.checkpoint_every=1000",
          "--config.data_seed=0", "--seeds=0-1", "--quiet"]
  ref = _cli(*long, f"--workdir={tmp_path}/ref/s{{seed}}")
  assert ref.returncode == 0, ref.stderr
  cmd_wd = f"--workdir={tmp_path}/cut/s{{seed}}"
  proc = subprocess.Popen(_argv(*long, cmd_wd), cwd=ROOT, stderr=subprocess.PIPE, text=True)
  t = time.time()
  while not any(os.path.exists(tmp_path / "cut" / s / "metrics.jsonl") and
                os.path.getsize(tmp_path / "cut" / s / "metrics.jsonl") for s in ("s0", "s1")):
    assert proc.poll() is None and time.time() - t < 300
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  err = proc.communicate(timeout=300)[1]
  if proc.returncode == 143:
    assert "every member's checkpoint written" in err
    for s in ("s0", "s1"):
      assert os.listdir(tmp_path / "cut" / s / "checkpoints")
      assert not os.path.exists(tmp_path / "cut" / s / "results.json")
  else:  # finished before the signal arrived
    assert proc.returncode == 0, err
  again = _cli(*long, cmd_wd)
  assert again.returncode == 0, again.stderr
  for s in ("s0", "s1"):
    assert _metrics(tmp_path / "cut" / s) == _metrics(tmp_path / "ref" / s)
    assert _results(tmp_path / "cut" / s) == _results(tmp_path / "ref" / s)


def test_sweep_population_groups_seeds_and_the_tables_read_the_members(tmp_path):
  """launch.sweep --population=2 over seeds 0-2: programs {0, 1} and {2}; every member an
  ordinary finished run that launch.aggregate tables; a rerun has nothing to do; the groups are
  fixed by the planned seeds, so a member finished alone does not change its program."""
  root = str(tmp_path / "sweep")
  flags_ = ["--config=experiments/configs/synthetic.py:smoke", "--methods=gumbel_matrix",
            "--seeds=0-2", f"--root={root}", "--set=synthetic.d=8", "--set=num_rounds=12",
            "--set=log_every=6", "--set=eval_every=6", "--set=rounds_per_call=6"]
  printed = subprocess.run([sys.executable, "-m", "launch.sweep", *flags_, "--population=2",
                            "--print_only"], cwd=ROOT, capture_output=True, text=True)
  assert printed.returncode == 0, printed.stderr
  lines = printed.stdout.strip().splitlines()
  assert len(lines) == 2 and "--seeds=0,1" in lines[0] and "--seeds=2" in lines[1]
  assert "seed_{seed}" in lines[0] and "--config.seed=" not in lines[0]
  p = subprocess.run([sys.executable, "-m", "launch.sweep", *flags_, "--population=2"],
                     cwd=ROOT, capture_output=True, text=True)
  assert p.returncode == 0, p.stdout + p.stderr
  assert "3 to run in 2 programs of up to 2 seeds" in p.stdout
  for s in range(3):
    r = json.load(open(os.path.join(root, "gumbel_matrix", f"seed_{s}", "results.json")))
    assert r["seed"] == s and r["population"]["size"] == (2 if s < 2 else 1)
  assert os.path.exists(os.path.join(root, "gumbel_matrix", "population_0-1.log"))
  agg = subprocess.run([sys.executable, "-m", "launch.aggregate", *flags_,
                        f"--out={tmp_path}/table"], cwd=ROOT, capture_output=True, text=True)
  assert agg.returncode == 0, agg.stderr
  assert json.load(open(f"{tmp_path}/table.json"))  # every seed's row
  again = subprocess.run([sys.executable, "-m", "launch.sweep", *flags_, "--population=2"],
                         cwd=ROOT, capture_output=True, text=True)
  assert "3 finished, 0 to run in 0 programs" in again.stdout


@pytest.mark.parametrize("args,line", [
    (["{tmp}/out", "100"], "error: seconds: 100 is not a whole number >= 240"),
    (["{tmp}/full", "600"], "error: out: {tmp}/full is not empty"),
    (["{tmp}/out", "600", "{tmp}/nowhere"], "error: out_in: {tmp}/nowhere is not a folder"),
])
def test_the_gpu_session_script_refuses_bad_input_in_one_line(tmp_path, args, line):
  """launch/gpu_population.sh (tried on this CPU with GMR_GPU_TRY=1: results/README.md)."""
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("")
  p = subprocess.run(["bash", "launch/gpu_population.sh",
                      *[a.replace("{tmp}", str(tmp_path)) for a in args]],
                     cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, GMR_GPU_TRY="1"))
  assert p.returncode == 2 and p.stderr.strip().startswith(line.replace("{tmp}", str(tmp_path)))
  assert len(p.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
