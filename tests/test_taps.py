"""TAPS: the straight-through estimator, the threshold, the sparsity penalty, joint training,
fine-tuning from a checkpoint, resuming and reporting."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from experiments.configs import transfer
from gmr import data as data_lib
from gmr import checkpoint, experiment, taps
from gmr import train as train_lib
from gmr.config import ConfigError
from gmr.validate import validate


# ----------------------------------------------------------------------------- the math
def test_straight_through_gradient_matches_formula():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  w_base = jax.random.normal(k1, (3, 4))
  dw = jax.random.normal(k2, (3, 4))
  a = jax.random.normal(k3, (3, 4))  # L(W) = sum(A * W^2) / 2 -> dL/dW = A * W
  loss = lambda s, dw, wb: 0.5 * jnp.sum(a * taps.adapted_weight(wb, dw, s, 0.1) ** 2)
  for s in (0.15, 0.05):  # above and below tau: the estimator is the same formula
    gs, gdw, gwb = jax.grad(loss, argnums=(0, 1, 2))(jnp.float32(s), dw, w_base)
    on = float(s >= 0.1)
    w = w_base + on * dw
    np.testing.assert_allclose(gs, jnp.sum(a * w * dw), rtol=1e-5)  # <dL/dW, dW>
    np.testing.assert_allclose(gdw, on * a * w, rtol=1e-6)  # deltas learn only when on
    np.testing.assert_allclose(gwb, a * w, rtol=1e-6)


def test_tau_boundary_and_exact_forward():
  tau = np.float32(0.1)
  below = np.nextafter(tau, np.float32(-1))
  out = taps.indicator(jnp.array([below, tau, np.nextafter(tau, np.float32(1)), -5.0, 5.0]), tau)
  np.testing.assert_array_equal(out, [0.0, 1.0, 1.0, 0.0, 1.0])  # I(s >= tau), exactly 0/1
  wb, dw = jnp.array([1.2345678, -3.0]), jnp.array([0.7, 0.1])
  np.testing.assert_array_equal(taps.adapted_weight(wb, dw, below, tau), wb)  # off: the base
  np.testing.assert_array_equal(taps.adapted_weight(wb, dw, tau, tau), wb + dw)


def test_sparsity_penalty():
  np.testing.assert_allclose(taps.sparsity_penalty([0.2, -0.4, 0.3], 2.0), 2.0 / 3 * 0.9, rtol=1e-6)
  assert float(taps.sparsity_penalty([], 1.0)) == 0.0


def test_trees_mirror_the_model():
  model = {"heads": {"kernel": jnp.ones((2, 3, 4))},
           "layer_0": {"group_0": {"kernel_0": jnp.ones((5, 6)), "bias_0": jnp.zeros((6,)),
                                   "scale_0": jnp.ones((6,)), "offset_0": jnp.zeros((6,))}},
           "layer_1": {"group_0": {"kernel_0": jnp.ones((6, 2)), "kernel_1": jnp.ones((2, 2))}}}
  paths = taps.adaptable_paths(model)
  assert paths == [("layer_0", "group_0", "kernel_0"), ("layer_1", "group_0", "kernel_0"),
                   ("layer_1", "group_0", "kernel_1")]  # kernels of the backbone, not the heads
  assert taps.adaptable_paths(model, ["layer_1/*"]) == paths[1:]
  p = taps.init(model, 3, (), 0.15, task_norm=True)
  assert p["deltas"]["layer_0"]["group_0"]["kernel_0"].shape == (3, 5, 6)
  assert float(p["scores"]["layer_1"]["group_0"]["kernel_1"][2]) == pytest.approx(0.15)
  assert set(p["norm"]["layer_0"]["group_0"]) == {"scale_0", "offset_0"}
  p["deltas"]["layer_1"]["group_0"]["kernel_1"] = jnp.full((3, 2, 2), 0.5)
  p["scores"]["layer_1"]["group_0"]["kernel_1"] = jnp.array([0.2, 0.0, 0.2])
  p["scores"]["layer_0"]["group_0"]["kernel_0"] = jnp.array([0.0, 0.0, 0.2])
  out = taps.adapt(model, p, 1, 0.1)
  for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(model)):  # task 1: all off
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(taps.adapt(model, p, 0, 0.1)["layer_1"]["group_0"]["kernel_1"], 1.5)
  s = taps.summary(p, ["a", "b", "c"], 0.1)
  assert s["task_specific_fraction"] == {"a": 2 / 3, "b": 1 / 3, "c": 1.0, "mean": 2 / 3}
  norm = 6 + 6  # scale and offset of the one GroupNorm, per task
  assert s["added_params"] == {"a": 12 + 4 + norm, "b": 12 + norm, "c": 30 + 12 + 4 + norm}


# ----------------------------------------------------------------------------- training
def _cfg(variant="taps,smoke", **kw):
  c = transfer.get_config(variant)
  c.rounds_per_call = 20
  c.alloc_history_every = 0
  for k, v in kw.items():
    c[k] = v
  return c


def _outputs(setup, params, suite, adapted: bool):
  x, _ = suite.test.task(0)
  x = jnp.asarray(x[:32], jnp.float32) * setup.x_scale
  rows = [jnp.ones((c,)) for c in setup.arch.layer_sizes]
  model = setup.method.adapt(params["model"], params["alloc"], 0) if adapted else params["model"]
  return np.asarray(setup.net.apply({"params": model}, x, rows, 0))


def test_large_lambda_adapts_nothing_and_equals_base():
  c = _cfg(taps_lambda=1e4)
  suite = data_lib.load_suite(c)
  setup, state, _, _ = train_lib.train(c, suite)
  s = taps.summary(state.params["alloc"]["taps"], suite.task_names, c.taps_tau)
  assert s["task_specific_fraction"]["mean"] == 0.0
  assert all(v == 0 for v in s["added_params"].values())
  np.testing.assert_array_equal(_outputs(setup, state.params, suite, True),
                                _outputs(setup, state.params, suite, False))


def test_zero_lambda_adapts_freely_and_joint_taps_lowers_loss():
  c = _cfg(taps_lambda=0.0, taps_score_init=1.0, num_rounds=60)
  suite = data_lib.load_suite(c)
  events = []
  setup, state, _, _ = train_lib.train(c, suite, on_event=events.append)
  s = taps.summary(state.params["alloc"]["taps"], suite.task_names, c.taps_tau)
  assert s["task_specific_fraction"]["mean"] == 1.0
  deltas = jax.tree.leaves(state.params["alloc"]["taps"]["deltas"])
  assert all(float(jnp.abs(d).max()) > 0 for d in deltas)  # every layer got its own delta
  assert not np.allclose(_outputs(setup, state.params, suite, True),
                         _outputs(setup, state.params, suite, False))
  logs = [e.data["train_loss_mean"] for e in events if e.kind == "log"]
  assert logs[-1] < 0.5 * logs[0]  # joint training: base and deltas learn together


def test_validation_of_taps_fields():
  for field, value in (("taps_lambda", -1.0), ("taps_score_optimizer", "rmsprop"),
                       ("taps_layers", [3]), ("taps_learning_rate", -1.0)):
    c = _cfg()
    c[field] = value
    with pytest.raises(ConfigError) as e:
      validate(c)
    assert e.value.field == field
  c = _cfg(taps_layers=["nothing/*"])
  with pytest.raises(ConfigError, match="taps_layers"):
    train_lib.init_state(train_lib.make_setup(c, data_lib.load_suite(c)), jax.random.key(0))


def test_taps_run_resumes_and_reports(tmp_path):
  c = _cfg(checkpoint_every=20, num_rounds=60)
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  ra = experiment.run(c, a, quiet=True)
  assert set(ra["taps"]["task_specific_fraction"]) == {"task0", "task1", "mean"}
  assert set(ra["taps"]["added_params"]) == {"task0", "task1"}
  # an interrupted run: b is a at round 40 (its results and later checkpoints gone)
  shutil.copytree(a, b)
  os.remove(os.path.join(b, "results.json"))
  shutil.rmtree(os.path.join(b, "checkpoints", "60"))
  rb = experiment.run(c, b, quiet=True)
  assert rb["resumed_from_round"] == 40
  assert rb["final"] == ra["final"] and rb["taps"] == ra["taps"]


# ----------------------------------------------------------------------------- fine-tuning
def test_fine_tuning_modes(tmp_path):
  src = str(tmp_path / "src")
  experiment.run(_cfg("shared_bottom,smoke"), src, quiet=True)
  source = traverse_util.flatten_dict(checkpoint.source_model_params(src))

  def finetune(variant, **kw):
    c = _cfg(variant, init_from=src, seed=3, **kw)
    suite = data_lib.load_suite(c)
    setup = train_lib.make_setup(c, suite)
    backbone = checkpoint.source_model_params(src)
    start = train_lib.init_from(setup, train_lib.init_state(setup, jax.random.key(3)), backbone)
    _, state, _, _ = train_lib.train(c, suite, backbone=backbone)
    return (traverse_util.flatten_dict(start.params["model"]),
            traverse_util.flatten_dict(state.params["model"]), state)

  for mode in ("head", "taps", "full"):
    kw = {"head": dict(freeze_backbone=True), "taps": dict(freeze_backbone=True, taps_lambda=0.0),
          "full": {}}[mode]
    start, end, state = finetune("taps,smoke" if mode == "taps" else "shared_bottom,smoke", **kw)
    for p in start:
      if "heads" in p:
        continue
      np.testing.assert_array_equal(start[p], source[p])  # the backbone comes from the source
      if mode == "full":
        continue
      np.testing.assert_array_equal(end[p], source[p])  # frozen: not one bit moved
    assert not np.array_equal(end[("heads", "kernel")], start[("heads", "kernel")])
    if mode == "full":
      assert any(not np.array_equal(end[p], start[p]) for p in start if "heads" not in p)
    if mode == "taps":
      d = jax.tree.leaves(state.params["alloc"]["taps"]["deltas"])
      assert any(float(jnp.abs(x).max()) > 0 for x in d)


def test_init_from_errors(tmp_path):
  c = _cfg(init_from=str(tmp_path / "nothing"))
  with pytest.raises(ConfigError, match="init_from"):
    validate(c)
  c = _cfg(freeze_backbone=True)
  with pytest.raises(ConfigError, match="freeze_backbone"):
    validate(c)
  src = str(tmp_path / "src")
  experiment.run(_cfg("shared_bottom,smoke"), src, quiet=True)
  c = _cfg(init_from=src)
  c.synthetic.d = 64  # another input size: the first layer's kernel differs
  suite = data_lib.load_suite(c)
  setup = train_lib.make_setup(c, suite)
  with pytest.raises(train_lib.InitFromError, match="same architecture"):
    train_lib.init_from(setup, train_lib.init_state(setup, jax.random.key(0)),
                        checkpoint.source_model_params(src), src)
  with pytest.raises(train_lib.InitFromError, match="no backbone was given"):
    train_lib.train(c, suite, setup=setup)
  with open(os.path.join(src, "results.json")) as f:
    res = json.load(f)
  shutil.rmtree(res["checkpoint"])
  with pytest.raises(train_lib.InitFromError, match="missing"):
    checkpoint.source_model_params(src)


def test_init_from_refuses_a_source_of_another_network(tmp_path):
  """A source whose network has more (here: one more hidden layer per component, arch_kwargs
  depth 3 -> 2) is refused before compute by validation (one line naming the field), and by
  init_from itself when called directly (a parameter this network lacks), not silently cut."""
  from experiments.configs import synthetic

  def cfg(depth, **kw):
    c = synthetic.get_config("shared_bottom,smoke")
    c.synthetic.d, c.synthetic.num_train, c.synthetic.num_test = 8, 64, 16
    c.num_rounds, c.rounds_per_call, c.alloc_history_every = 10, 10, 0
    c.arch_kwargs = {"depth": depth}
    for k, v in kw.items():
      c[k] = v
    return c
  src = str(tmp_path / "src")
  experiment.run(cfg(3), src, quiet=True)
  c = cfg(2, init_from=src)
  with pytest.raises(ConfigError, match=r"init_from: .* was trained with arch_kwargs=\{'depth': "
                     r"3\}, this run has arch_kwargs=\{'depth': 2\}; .*; set --config.arch_kwargs"):
    validate(c)
  suite = data_lib.load_suite(c)
  setup = train_lib.make_setup(c, suite)
  with pytest.raises(train_lib.InitFromError, match="has parameters this network lacks"):
    train_lib.init_from(setup, train_lib.init_state(setup, jax.random.key(0)),
                        checkpoint.source_model_params(src), src)


def test_a_fine_tuning_run_says_which_backbone_it_starts_from(tmp_path):
  """The start lines name the source checkpoint and whether it is frozen; results.json too."""
  import io
  src = str(tmp_path / "src")
  experiment.run(_cfg("shared_bottom,smoke", num_rounds=20), src, quiet=True)
  out = io.StringIO()
  res = experiment.run(_cfg("taps,smoke", num_rounds=20, init_from=src, freeze_backbone=True),
                       str(tmp_path / "ft"), stream=out)
  ckpt = os.path.join(src, "checkpoints", "20")
  assert (f"backbone from {ckpt}, frozen (only the heads and the method's own parameters "
          "learn)\n"
          in out.getvalue()), out.getvalue()
  assert res["init_from"] == {"workdir": src, "frozen": True, "checkpoint": ckpt}
