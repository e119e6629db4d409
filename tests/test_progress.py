"""What a person watching a run sees: a start line, compilation apart from the ETA, progress of
long evaluations; and the persistent compilation cache (a second run reads, not compiles)."""

import io
import json
import os

import jax
import numpy as np
import pytest

from experiments.configs import synthetic as synthetic_cfg
from gmr import data as data_lib, experiment, methods, train as T, workdir as workdir_lib
from gmr import evaluate as evaluate_lib


def small(**kw):
  c = synthetic_cfg.get_config("gumbel_matrix,smoke")
  c.synthetic.d = 16
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 40, 10, 20, 10
  c.compilation_cache_dir = ""
  for k, v in kw.items():
    c[k] = v
  return c


def test_progress_lines_and_an_eta_without_compilation(tmp_path, monkeypatch):
  """The first line says what runs; compilation gets its own line (slowed here by 1.5 s) and
  is not in the rate or the ETA of the first log line; evaluations print their numbers."""
  real = jax.stages.Lowered.compile

  def slow(self, *a, **k):
    import time
    time.sleep(1.5)
    return real(self, *a, **k)
  monkeypatch.setattr(jax.stages.Lowered, "compile", slow)
  out = io.StringIO()
  experiment.run(small(), str(tmp_path / "w"), stream=out)
  lines = out.getvalue().splitlines()
  assert lines[0] == (f"gmr: gumbel_matrix on synthetic_pairs (4 tasks), 40 rounds x batch "
                      f"{small().batch_size}, seed 0, {jax.default_backend()} -> {tmp_path / 'w'}")
  compiled = [l for l in lines if l.startswith("compiled the training step (10 rounds per call)")]
  assert len(compiled) == 1 and float(compiled[0].rsplit(" in ", 1)[1][:-1]) >= 1.5
  first_round = next(i for i, l in enumerate(lines) if l.startswith("round 10/40"))
  assert lines.index(compiled[0]) < first_round
  evals = [l for l in lines if l.startswith("evaluated ")]
  assert [l.split(" in ")[0] for l in evals] == ["evaluated test at round 20",
                                                 "evaluated test at round 40"]
  assert all(": loss " in l for l in evals)
  logs = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  first = next(l for l in logs if l["kind"] == "log")
  # the rate of the first 40 steps leaves the 1.5 s of compilation out (with it: < 40 / 1.5),
  # and the ETA is the 30 x 4 steps left at that rate (no evaluation has been timed yet)
  assert first["steps_per_s"] > 40 / 1.5
  assert first["eta_s"] == pytest.approx(30 * 4 / first["steps_per_s"], rel=1e-9)


def test_evaluation_reports_each_task_and_gives_the_same_numbers():
  c = small()
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  params = T.init_state(setup, jax.random.key(0)).params
  seen = []
  plain = evaluate_lib.SplitEvaluation(setup, evaluate_lib.make_evaluator(setup, False), suite.test, 32,
                            suite.task_names)(params, jax.random.key(1))
  watched = evaluate_lib.SplitEvaluation(setup, evaluate_lib.make_evaluator(setup, False, lambda t: seen.append(int(t))),
                              suite.test, 32, suite.task_names)(params, jax.random.key(1))
  jax.effects_barrier()
  assert plain == watched and seen == list(range(suite.num_tasks))


@pytest.fixture
def restore_cache_config():
  from jax._src import compilation_cache
  names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  old = {n: getattr(jax.config, n) for n in names}
  yield
  for n, v in old.items():
    jax.config.update(n, v)
  compilation_cache.reset_cache()


def _files(d):
  return sorted(os.path.join(r, f) for r, _, fs in os.walk(d) for f in fs)


def test_a_second_run_reads_its_programs_from_the_cache(tmp_path, restore_cache_config):
  """The first run writes its compiled programs to the cache folder; a second identical run
  (another workdir) adds none (every program is read) and gives the same numbers."""
  jax.config.update("jax_compilation_cache_dir", None)
  cache = str(tmp_path / "cache")
  c = small(compilation_cache_dir=cache, seed=7)
  jax.clear_caches()  # as a new process: nothing compiled in memory
  first = experiment.run(c, str(tmp_path / "a"), quiet=True)
  written = _files(cache)
  assert written
  jax.clear_caches()  # as a new process: nothing compiled in memory
  second = experiment.run(c, str(tmp_path / "b"), quiet=True)
  assert _files(cache) == written
  assert second["final"] == first["final"] and second["allocations"] == first["allocations"]


def test_the_cache_folder_is_not_part_of_a_run(tmp_path, restore_cache_config):
  wd = str(tmp_path / "w")
  done = experiment.run(small(), wd, quiet=True)
  assert experiment.run(small(compilation_cache_dir=str(tmp_path / "elsewhere")), wd,
                        quiet=True) == done
  assert workdir_lib.run_identity(small()) == workdir_lib.run_identity(
      small(compilation_cache_dir="auto"))


def _event_tags(folder):
  """Every summary tag of the TensorBoard event files under ``folder`` (TFRecord framing:
  length, its CRC, the Event proto, its CRC)."""
  import struct
  from tensorboardX.proto import event_pb2
  tags = set()
  for path in _files(folder):
    with open(path, "rb") as f:
      data = f.read()
    i = 0
    while i + 12 <= len(data):
      (n,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      i += 12 + n + 4
      tags.update(v.tag for v in ev.summary.value)
  return tags


@pytest.mark.parametrize("method", ["gumbel_matrix", "taps"])
def test_tensorboard_shows_the_method(tmp_path, method):
  """The event file holds what a user of the method looks at: the config as hyperparameters,
  training loss and penalty terms per task, steps/s (and the temperature for Gumbel-Matrix
  only), test loss (and accuracy where there is one), P(on) histograms and expected active
  fractions (TAPS: layer scores)."""
  c = small(method=method, alloc_history_every=10)
  wd = tmp_path / "w"
  experiment.run(c, str(wd), quiet=True)
  tags = _event_tags(wd / "tb")
  names = data_lib.load_suite(c).task_names
  want = {"_hparams_/experiment", "_hparams_/session_start_info", "train/steps_per_s",
          "eval/test/loss/mean"}
  want |= {f"train/loss/{n}" for n in names} | {f"eval/test/loss/{n}" for n in names}
  if method == "gumbel_matrix":
    want |= {"train/temperature"}
    want |= {f"train/penalty/budget/{n}" for n in names} | {"train/penalty/budget/mean"}
    want |= {f"alloc/p_on/layer_0/{n}" for n in names}
    want |= {f"alloc/expected_active/{n}" for n in names}
  else:
    want |= {f"train/penalty/taps_l1/{n}" for n in names}
    assert any(t.startswith("taps/score/") and t.endswith(f"/{names[0]}") for t in tags), tags
    assert "train/temperature" not in tags
  assert want <= tags, sorted(want - tags)


class _Scalars:
  """A stand-in for :class:`gmr.logs.TensorBoard` that keeps the scalars' tags."""

  def __init__(self):
    self.tags = []

  def scalars(self, step, prefix, values):
    self.tags += [f"{prefix}/{k}" for k in values]

  def allocation(self, step, record, names):
    pass


@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_a_temperature_is_shown_only_for_a_method_that_has_one(method):
  """Every registered method, through the loop's own log event: metrics.jsonl's log line,
  the progress line and the TensorBoard scalars carry the temperature exactly when the method
  samples its allocation at one (Gumbel-Matrix); the rest is the same for every method."""
  c = small(method=method, num_rounds=10, eval_every=0, alloc_history_every=0)
  if method == "fixed":
    c.fixed_allocation = [[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]]
  c.synthetic.num_train, c.synthetic.num_test = 64, 16
  suite = data_lib.load_suite(c)
  tb, out, mf = _Scalars(), io.StringIO(), io.StringIO()
  on_event = experiment._event_writer(mf, tb, c, suite, out)  # pylint: disable=protected-access
  T.train(c, suite, on_event)
  has = method == "gumbel_matrix"
  assert methods.METHODS[method].has_temperature == has
  (log,) = [json.loads(l) for l in mf.getvalue().splitlines() if '"kind": "log"' in l]
  assert ("temperature" in log) == has
  assert ("temp " in out.getvalue()) == has
  assert out.getvalue().startswith("round 10/10  step 40  loss ")
  assert sorted(t for t in tb.tags if t.startswith("train/")) == sorted(
      ["train/loss", "train/steps_per_s", "train/penalty"] + ["train/temperature"] * has)


def test_penalty_terms_are_logged_and_sum_to_the_penalty(tmp_path):
  c = small(budget=0.5, budget_lambda=1.0, entropy_penalty=0.01)
  experiment.run(c, str(tmp_path / "w"), quiet=True)
  logs = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  first = next(l for l in logs if l["kind"] == "log")
  assert set(first["penalty"]) == {"budget", "entropy"}
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  alloc = T.init_state(setup, jax.random.key(0)).params["alloc"]
  terms = setup.method.penalty_terms(alloc, 1)
  assert float(setup.method.penalty(alloc, 1)) == float(terms["budget"] + terms["entropy"])
