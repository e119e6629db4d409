"""Training: schedules, batches, one step, determinism, loss goes down."""

import jax
import numpy as np
import pytest

from experiments.configs import synthetic as synthetic_cfg
from experiments.configs import transfer as transfer_cfg
from gmr import data as data_lib
from gmr import train as T
from gmr import evaluate as evaluate_lib
from gmr import schedule as schedule_lib
from gmr import step as step_lib
from gmr.data.suite import Split, TaskSuite


def tiny(cfg_module=synthetic_cfg, variant="gumbel_matrix", **kw):
  c = cfg_module.get_config(variant)
  c.synthetic.num_train, c.synthetic.num_test, c.synthetic.d = 640, 200, 16
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 40, 20, 0, 20
  c.batch_size = 32
  for k, v in kw.items():
    c[k] = v
  return c


def test_round_orders_are_permutations_and_depend_on_round():
  o = schedule_lib.round_orders(jax.random.key(0), 5, 50, 4)
  assert o.shape == (50, 4)
  assert all(sorted(r) == [0, 1, 2, 3] for r in o.tolist())
  assert len({tuple(r) for r in o.tolist()}) > 5
  np.testing.assert_array_equal(o[10:], schedule_lib.round_orders(jax.random.key(0), 15, 40, 4))


def test_batch_sampler_epochs_cover_each_example_once():
  split = Split.from_tasks([np.zeros((10, 1)), np.zeros((7, 1))], [np.zeros(10), np.zeros(7)])
  s = schedule_lib.BatchSampler(jax.random.key(1), split, 3)
  idx0 = s.task_indices(0, np.arange(3))  # one epoch of task 0: 3 batches (1 example dropped)
  assert len(set(idx0.ravel())) == 9 and idx0.min() >= 0 and idx0.max() < 10
  idx1 = s.task_indices(1, np.arange(2))
  assert len(set(idx1.ravel())) == 6 and idx1.min() >= 10 and idx1.max() < 17
  # a pure function of the round: asking again, or from another offset, gives the same
  np.testing.assert_array_equal(s.task_indices(0, np.arange(2, 6))[:1], idx0[2:3])
  tasks, idx = s.round_robin(np.array([[1, 0], [0, 1]]), 0)
  np.testing.assert_array_equal(tasks, [1, 0, 0, 1])
  np.testing.assert_array_equal(idx[1], idx0[0])
  np.testing.assert_array_equal(idx[2], idx0[1])


@pytest.mark.equivalence
def test_scanned_steps_equal_single_steps():
  c = tiny()
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  state = T.init_state(setup, jax.random.key(0))
  step = jax.jit(step_lib.make_train_step(setup, c))
  run = schedule_lib.make_run_steps(setup, c)
  tasks = np.array([2, 0, 3, 1, 1, 2], np.int32)
  idx = np.arange(6 * 32, dtype=np.int32).reshape(6, 32) % suite.train.x.shape[0]
  key = jax.random.key(9)
  s1 = state
  for i in range(6):
    s1, _ = step(s1, suite.train.x[idx[i]], suite.train.y[idx[i]], tasks[i],
                 jax.random.fold_in(key, s1.step))
  s2, _ = run(jax.tree.map(lambda x: x.copy(), state), suite.train.x, suite.train.y, tasks, idx, key)
  for a, b in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sparse", [False, True])
def test_heads_of_tasks_not_in_the_batch(sparse):
  """A step of task 0, then one of task 1. Default (the authors' code): head 0 gets a zero
  gradient in the second step and Adam's momentum still moves it. ``sparse_head_updates``:
  head 0 and its moments stay as they were."""
  c = tiny(transfer_cfg, "shared_bottom", sparse_head_updates=sparse)
  assert transfer_cfg.get_config("shared_bottom").sparse_head_updates is False  # the default
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  s0 = T.init_state(setup, jax.random.key(0))
  step = jax.jit(step_lib.make_train_step(setup, c))
  x, y = suite.train.x[:32], suite.train.y[:32]
  s1, _ = step(s0, x, y, 0, jax.random.key(0))
  h1 = np.asarray(s1.params["model"]["heads"]["kernel"]).copy()
  s2, _ = step(s1, x, y, 1, jax.random.key(1))
  h2 = np.asarray(s2.params["model"]["heads"]["kernel"])
  assert not np.allclose(h2[1], h1[1])  # the batch's own head learns
  if sparse:
    np.testing.assert_array_equal(h2[0], h1[0])
  else:
    assert not np.allclose(h2[0], h1[0])  # moved by momentum alone


def test_short_synthetic_run_lowers_the_loss():
  c = tiny(num_rounds=120, log_every=20)
  logs = []
  T.train(c, data_lib.load_suite(c), lambda e: logs.append(e) if e.kind == "log" else None)
  first, last = logs[0].data["train_loss_mean"], logs[-1].data["train_loss_mean"]
  assert last < 0.7 * first, (first, last)


def test_learned_allocation_moves_from_init():
  c = tiny(num_rounds=60)
  suite = data_lib.load_suite(c)
  setup, state, final, _ = T.train(c, suite)
  p = np.asarray(setup.method.probabilities(state.params["alloc"])[0])
  assert p.shape == (4, 4) and np.abs(p - 0.5).max() > 0.05
  assert set(final["test"]["loss"]) == {*suite.task_names, "mean"}


def _evaluate_per_batch(setup, params, split, batch_size, key, sample):
  """Reference: one jitted call and one host round-trip per batch, task by task."""
  @jax.jit
  def one(params, x, y, mask, task, k):
    rows = setup.method.eval_rows(params["alloc"], task, k, sample)
    model = setup.method.adapt(params["model"], params["alloc"], task)
    out = setup.net.apply({"params": model}, x.astype(np.float32) * setup.x_scale, rows, task,
                          train=False)
    loss, correct = step_lib.task_loss(setup.loss, out, y)
    return (loss * mask).sum(), (correct * mask).sum()
  b = min(batch_size, max(split.sizes))
  loss, acc = [], []
  for t in range(len(split.sizes)):
    x, y = split.task(t)
    tl = tc = 0.0
    for i, s in enumerate(range(0, len(x), b)):
      xb, yb = x[s:s + b], y[s:s + b]
      m = len(xb)
      xb = np.concatenate([xb, np.zeros((b - m,) + xb.shape[1:], xb.dtype)])
      yb = np.concatenate([yb, np.zeros((b - m,), yb.dtype)])
      l, c = one(params, xb, yb, (np.arange(b) < m).astype(np.float32), t,
                 jax.random.fold_in(jax.random.fold_in(key, t), i))
      tl, tc = tl + float(l), tc + float(c)
    loss.append(tl / len(x))
    acc.append(tc / len(x))
  return loss, acc


@pytest.mark.equivalence
def test_one_call_evaluation_equals_per_batch_evaluation():
  """The whole split in one device call (scan over every task's batches, gathered on the
  device) gives the numbers of evaluating batch by batch: uneven task sizes, a partial last
  batch, images shared through an index, greedy and sampled allocations."""
  c = tiny()
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  params = T.init_state(setup, jax.random.key(2)).params
  rng = np.random.RandomState(0)
  sizes = (7, 30, 1, 12)
  x = rng.randn(25, suite.train.x.shape[-1]).astype(np.float32)
  index = np.concatenate([rng.randint(0, 25, n) for n in sizes]).astype(np.int32)
  split = Split(x, rng.randn(len(index)).astype(np.float32),
                tuple(int(o) for o in np.cumsum((0,) + sizes[:-1])), sizes, index)
  for sample in (False, True):
    for b in (5, 64):
      key = jax.random.key(4)
      got = evaluate_lib.evaluate(setup, params, split, b, key, suite.task_names, sample)
      want_l, _ = _evaluate_per_batch(setup, params, split, b, key, sample)
      np.testing.assert_allclose([got["loss"][n] for n in suite.task_names], want_l, rtol=1e-6)
      assert got["loss"]["mean"] == np.mean([got["loss"][n] for n in suite.task_names])
  plan = evaluate_lib.eval_plan(split, 5)
  assert plan.idx.shape == (2 + 6 + 1 + 3, 5) and plan.mask.sum() == sum(sizes)


def test_validation_is_evaluated_at_the_end_or_every_time_when_selected_by(tmp_path):
  """Intermediate evaluations cover the test split (and validation only when select_by ranks
  by it); the last evaluation covers every split. Log lines account their wall time by job."""
  for select_by, every_time in (("", False), ("validation.loss.mean", True)):
    c = tiny(num_rounds=4, eval_every=2, log_every=2, rounds_per_call=2, select_by=select_by)
    suite = data_lib.load_suite(c)
    suite.validation = suite.test
    events = []
    T.train(c, suite, events.append)
    evals = [e.data for e in events if e.kind == "eval"]
    assert [e["round"] for e in evals] == [2, 4]
    assert ("validation" in evals[0]) == every_time and "validation" in evals[1]
    assert all("test" in e and e["wall_s"] >= 0 for e in evals)
    logs = [e.data for e in events if e.kind == "log"]
    assert set(logs[1]["wall_s"]) == {"steps", "history", "eval", "checkpoint"}
    assert logs[1]["wall_s"]["eval"] > 0  # round 2's evaluation, reported at the next line


def _toy_suite(**over):
  """Two tasks of uint8 features (x_scale 1/255): classification with 3 classes each."""
  rng = np.random.default_rng(0)
  xs = [rng.integers(0, 256, (20, 16), dtype=np.uint8) for _ in range(2)]
  ys = [np.arange(20) % 3 for _ in range(2)]
  kw = dict(name="toy", task_names=("a", "b"), loss="xent", head_dims=(3, 3),
            train=Split.from_tasks(xs, ys), test=Split.from_tasks(xs, ys), x_scale=1 / 255)
  kw.update(over)
  return TaskSuite(**kw)


def test_a_hand_written_step_scales_the_inputs_as_the_trainer_does():
  """make_train_step on a batch as the suite stores it (uint8) equals the step on the
  batch scaled by hand with x_scale 1: the suite's x_scale is applied inside the step, once."""
  import dataclasses
  c = tiny(arch="synthetic")
  rng = np.random.default_rng(1)
  xs = [rng.integers(0, 256, (20, 16), dtype=np.uint8) for _ in range(2)]
  ys = [rng.normal(size=20).astype(np.float32) for _ in range(2)]
  suite = TaskSuite("toy", ("a", "b"), "mse", (1, 1), Split.from_tasks(xs, ys),
                    Split.from_tasks(xs, ys), x_scale=1 / 255)
  setup = T.make_setup(c, suite)
  unscaled = T.make_setup(c, dataclasses.replace(suite, x_scale=1.0))
  state = T.init_state(setup, jax.random.key(0))
  x, y = suite.train.task(1)
  a, la = jax.jit(step_lib.make_train_step(setup, c))(state, x, y, 1, jax.random.key(5))
  b, lb = jax.jit(step_lib.make_train_step(unscaled, c))(state, x.astype(np.float32) / 255, y, 1,
                                                   jax.random.key(5))
  assert np.isfinite(float(la))
  np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
  for u, v in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-7)
  raw = jax.jit(step_lib.make_train_step(unscaled, c))(state, x, y, 1, jax.random.key(5))[1]
  assert abs(float(raw) - float(la)) > 1e-3  # unscaled pixels are another problem


def _bad_suite(kind):
  rng = np.random.default_rng(0)
  xs = [rng.normal(size=(8, 4)).astype(np.float32) for _ in range(2)]
  ys = [rng.normal(size=8).astype(np.float32) for _ in range(2)]
  reg = dict(name="toy", task_names=("a", "b"), loss="mse", head_dims=(1, 1),
             train=Split.from_tasks(xs, ys), test=Split.from_tasks(xs, ys))
  cls = dict(_toy_suite().__dict__)
  cls.pop("info")
  if kind == "y_2d":
    sp = Split.from_tasks(xs, [y[:, None] for y in ys])
    return dict(reg, train=sp), "split train: y has shape (16, 1), one target per example is [N]"
  if kind == "heads":
    return dict(reg, head_dims=(1,)), "2 task names but 1 head sizes"
  if kind == "loss":
    return dict(reg, loss="l1"), "loss 'l1'"
  if kind == "x_scale":
    return dict(reg, x_scale=0.0), "x_scale 0.0"
  if kind == "offsets":
    sp = Split(np.concatenate(xs), np.concatenate(ys), (0, 10), (8, 8))
    return dict(reg, test=sp), "split test: task slots reach 18 but y holds 16"
  if kind == "x_vs_y":
    sp = Split(np.concatenate(xs)[:10], np.concatenate(ys), (0, 8), (8, 8))
    return dict(reg, train=sp), "split train: x holds 10 examples and y 16"
  if kind == "index":
    sp = Split(np.concatenate(xs), np.concatenate(ys), (0, 8), (8, 8), index=np.arange(16) + 1)
    return dict(reg, train=sp), "split train: index must give one row of x"
  if kind == "shapes":
    sp = Split.from_tasks([x[:, :3] for x in xs], ys)
    return dict(reg, test=sp), "split test: examples of shape (3,), other splits (4,)"
  if kind == "labels_range":
    sp = Split.from_tasks([np.zeros((4, 16), np.uint8)] * 2, [np.array([0, 1, 2, 3])] * 2)
    return dict(cls, train=sp), "task a has labels 0..3 for a head of 3 classes"
  if kind == "labels_dtype":
    sp = Split.from_tasks([np.zeros((4, 16), np.uint8)] * 2, [np.zeros(4, np.float32)] * 2)
    return dict(cls, test=sp), "classification labels of dtype float32"
  raise KeyError(kind)


SUITE_FAULTS = ["y_2d", "heads", "loss", "x_scale", "offsets", "x_vs_y", "index", "shapes",
                "labels_range", "labels_dtype"]


@pytest.mark.parametrize("kind", SUITE_FAULTS)
def test_a_suite_whose_parts_disagree_is_refused_with_one_line(kind):
  """A regression target [N, 1] against [N] predictions broadcast silently (test loss 1699
  instead of 0.126); every kind of inconsistency is refused when the suite is made."""
  from gmr.data.suite import SuiteError
  kw, expected = _bad_suite(kind)
  with pytest.raises(SuiteError, match="^suite toy") as e:
    TaskSuite(**kw)
  assert expected in str(e.value) and "; " in str(e.value) and "\n" not in str(e.value)


def test_task_loss_refuses_targets_that_would_broadcast():
  out = np.zeros((5, 1), np.float32)
  with pytest.raises(ValueError, match=r"targets of shape \(5, 1\) for outputs \(5, 1\)"):
    step_lib.task_loss("mse", out, np.zeros((5, 1), np.float32))
  loss, _ = step_lib.task_loss("mse", out, np.ones(5, np.float32))
  assert loss.shape == (5,)


def test_a_state_the_caller_passes_is_not_consumed():
  """train() continues from a caller's state without deleting it (the compiled steps donate
  their input): the caller reads it after, and training from it twice gives the same state."""
  c = tiny(num_rounds=20)
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  s = T.init_state(setup, jax.random.key(0))
  # (a numpy view of s would keep XLA from donating its buffers, hiding the fault)
  before = jax.tree_util.tree_map(np.asarray, T.init_state(setup, jax.random.key(0)))
  _, a, _, _ = T.train(c, suite, state=s, setup=setup)
  _, b, _, _ = T.train(c, suite, state=s, setup=setup)
  jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                         jax.tree_util.tree_map(np.asarray, s))
  jax.tree_util.tree_map(np.testing.assert_array_equal, jax.tree_util.tree_map(np.asarray, a),
                         jax.tree_util.tree_map(np.asarray, b))
  assert int(a.step) == 80
