"""Training: schedules, batches, one step, determinism, loss goes down."""

import jax
import numpy as np

from experiments.configs import synthetic as synthetic_cfg
from experiments.configs import transfer as transfer_cfg
from gmr import data as data_lib
from gmr import train as T
from gmr.data.suite import Split


def tiny(cfg_module=synthetic_cfg, variant="gumbel_matrix", **kw):
  c = cfg_module.get_config(variant)
  c.synthetic.num_train, c.synthetic.num_test, c.synthetic.d = 640, 200, 16
  c.num_rounds, c.log_every, c.eval_every, c.rounds_per_call = 40, 20, 0, 20
  c.batch_size = 32
  for k, v in kw.items():
    c[k] = v
  return c


def test_round_orders_are_permutations_and_depend_on_round():
  o = T.round_orders(jax.random.key(0), 5, 50, 4)
  assert o.shape == (50, 4)
  assert all(sorted(r) == [0, 1, 2, 3] for r in o.tolist())
  assert len({tuple(r) for r in o.tolist()}) > 5
  np.testing.assert_array_equal(o[10:], T.round_orders(jax.random.key(0), 15, 40, 4))


def test_batch_sampler_epochs_cover_each_example_once():
  split = Split.from_tasks([np.zeros((10, 1)), np.zeros((7, 1))], [np.zeros(10), np.zeros(7)])
  s = T.BatchSampler(jax.random.key(1), split, 3)
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


def test_scanned_steps_equal_single_steps():
  c = tiny()
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  state = T.init_state(setup, jax.random.key(0))
  step = jax.jit(T.make_train_step(setup, c))
  run = T.make_run_steps(setup, c)
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


def test_sparse_head_updates_leave_other_heads_untouched():
  c = tiny(transfer_cfg, "shared_bottom")
  suite = data_lib.load_suite(c)
  setup = T.make_setup(c, suite)
  s0 = T.init_state(setup, jax.random.key(0))
  h0 = np.asarray(s0.params["model"]["heads"]["kernel"]).copy()
  step = jax.jit(T.make_train_step(setup, c))
  x, y = suite.train.x[:32], suite.train.y[:32]
  s1, _ = step(s0, x, y, 1, jax.random.key(0))
  h1 = np.asarray(s1.params["model"]["heads"]["kernel"])
  np.testing.assert_array_equal(h1[0], h0[0])
  assert not np.allclose(h1[1], h0[1])


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
