"""Methods registry and optimizer."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import synthetic as synthetic_cfg
from gmr import allocation as A
from gmr import methods
from gmr.config import ConfigError
from gmr import optim
from gmr.optim import l2_mask


def make_optimizer(c, num_tasks):  # with the config's method, as gmr.train's setup gives it
  return optim.make_optimizer(c, num_tasks, methods.METHODS[c.method])


def alloc_learning_rate(c, num_tasks):
  return optim.alloc_learning_rate(c, num_tasks, methods.METHODS[c.method])


def cfg(**kw):
  c = synthetic_cfg.get_config()
  for k, v in kw.items():
    c[k] = v
  return c


def test_shared_bottom_and_no_sharing_allocations():
  sb = methods.build("shared_bottom", cfg(), 4, (4, 4))
  assert all(np.all(m == 1) for m in sb.matrices({}))
  ns = methods.build("no_sharing", cfg(), 4, (4, 4))
  for m in ns.matrices({}):
    np.testing.assert_array_equal(m, np.eye(4))
  rows = ns.train_rows({}, jax.random.key(0), 2, 1.0)
  np.testing.assert_array_equal(rows[0], [0, 0, 1, 0])


def test_no_sharing_needs_one_component_per_task():
  with pytest.raises(ConfigError, match="no_sharing needs #components == 1 x #tasks"):
    methods.build("no_sharing", cfg(), 3, (4,))
  two = methods.build("no_sharing", cfg(no_sharing_components_per_task=2), 2, (4,))
  np.testing.assert_array_equal(two.matrices({})[0], [[1, 0, 1, 0], [0, 1, 0, 1]])


SHIPPED = {"synthetic": "", "transfer": "", "four_mnists": "", "omniglot": "",
           "clusters40": "offline", "finetune": "source"}


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_sharing_fits_are_checked_from_the_built_networks_sizes(name):
  """For every shipped config's network and components per task k = 1..4, validation refuses
  no_sharing exactly when some routed layer does not have k x #tasks components (its sizes as
  the network is built, not a table), and a config it accepts builds."""
  import importlib
  from gmr import data, train, validate
  base = importlib.import_module(f"experiments.configs.{name}").get_config(SHIPPED[name])
  t = data.describe(base)[0]
  sizes = train.build_setup(base, *data.describe(base)).arch.layer_sizes
  for k in (1, 2, 3, 4):
    c = base.copy_and_resolve_references()
    c.method, c.no_sharing_components_per_task = "no_sharing", k
    if all(n == k * t for n in sizes):
      validate.validate(c)
      train.check_structure(c, *data.describe(c))
    else:
      with pytest.raises(ConfigError, match=rf"^no_sharing_components_per_task: {t} "
                         rf"tasks x {k} components != \d+ components per layer of"):
        validate.validate(c)


def test_fixed_matrix_and_its_errors():
  m = [[1, 0, 1], [0, 1, 1]]
  f = methods.build("fixed", cfg(fixed_allocation=m), 2, (3, 3))
  for got in f.matrices({}):
    np.testing.assert_array_equal(got, m)
  with pytest.raises(ConfigError, match="fixed_allocation"):
    methods.build("fixed", cfg(fixed_allocation=[[1, 0], [0, 1]]), 2, (3,))
  with pytest.raises(ConfigError, match="unknown method"):
    methods.build("nope", cfg(), 2, (3,))


def test_gumbel_matrix_budget_penalty_uses_probabilities():
  c = cfg(budget=0.5, budget_lambda=2.0, p_init=0.8)
  gm = methods.build("gumbel_matrix", c, 3, (4, 2))
  p = gm.init(jax.random.key(0))
  np.testing.assert_allclose(gm.penalty(p, 1), 2.0 * (0.8 - 0.5), rtol=1e-5)
  gm2 = methods.build("gumbel_matrix", cfg(p_init=0.3, budget=0.5, budget_lambda=2.0), 3, (4,))
  assert float(gm2.penalty(gm2.init(None), 0)) == 0.0
  rows = gm.eval_rows(p, 2)
  np.testing.assert_array_equal(rows[0], [1, 1, 1, 1])


def test_alloc_learning_rate_default_multiplier_is_num_tasks():
  assert alloc_learning_rate(cfg(learning_rate=0.01), 4) == pytest.approx(0.04)
  assert alloc_learning_rate(cfg(learning_rate=0.01, alloc_lr_multiplier=1.0), 4) == 0.01
  assert alloc_learning_rate(cfg(learning_rate=0.01, alloc_learning_rate=0.3), 4) == 0.3


def test_one_adam_update_moves_logits_with_T_times_model_lr():
  T, lr = 4, 1e-3
  tx = make_optimizer(cfg(learning_rate=lr, clip_norm=0.0), T)
  params = {"model": {"w": jnp.ones(3)}, "alloc": {"layer_0": A.init_logits(0.5, T, 2)}}
  grads = jax.tree.map(lambda x: 0.37 * jnp.ones_like(x), params)
  upd, _ = tx.update(grads, tx.init(params), params)
  # Adam's first step is -lr * g / (|g| + eps) = -lr per coordinate
  np.testing.assert_allclose(upd["model"]["w"], -lr, rtol=1e-4)
  np.testing.assert_allclose(upd["alloc"]["layer_0"], -T * lr, rtol=1e-4)


def test_l2_on_kernels_and_norm_scales_never_biases_or_logits():
  model = {"layer_0": {"group_0": {"kernel_0": jnp.ones(2), "bias_0": jnp.ones(2),
                                   "scale_0": jnp.ones(2)}},
           "heads": {"kernel": jnp.ones(2), "bias": jnp.ones(2)}}
  m = l2_mask(model)
  assert m["layer_0"]["group_0"] == {"kernel_0": True, "bias_0": False, "scale_0": True}
  assert m["heads"] == {"kernel": True, "bias": False}
  tx = make_optimizer(cfg(learning_rate=1.0, l2=0.5, clip_norm=0.0), 2)
  params = {"model": model, "alloc": {"layer_0": jnp.full((2, 2, 2), 3.0)}}
  zero = jax.tree.map(jnp.zeros_like, params)
  upd, _ = tx.update(zero, tx.init(params), params)
  assert float(upd["model"]["heads"]["kernel"][0]) < 0  # decayed
  assert float(upd["model"]["heads"]["bias"][0]) == 0.0
  assert float(jnp.abs(upd["alloc"]["layer_0"]).max()) == 0.0


def test_clip_norm_bounds_update_input():
  tx = make_optimizer(cfg(learning_rate=1.0, clip_norm=1.0), 1)
  params = {"model": {"w": jnp.zeros(2)}, "alloc": {}}
  clipped = optax.clip_by_global_norm(1.0).update({"w": jnp.array([30.0, 40.0])}, None)[0]
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
  upd, _ = tx.update({"model": {"w": jnp.array([30.0, 40.0])}, "alloc": {}}, tx.init(params), params)
  assert np.all(np.isfinite(upd["model"]["w"]))


def test_fixed_matrix_per_layer_with_different_widths():
  per_layer = [[[1, 0, 1], [0, 1, 1]], [[1, 1], [0, 1]]]
  f = methods.build("fixed", cfg(fixed_allocation=per_layer), 2, (3, 2))
  assert [m.tolist() for m in f.matrices({})] == per_layer


@pytest.mark.parametrize("method", ["shared_bottom", "taps"])
@pytest.mark.parametrize("clip_norm", [0.0, 1.0, 0.01])
def test_frozen_gradients_never_reach_the_applied_update(method, clip_norm):
  """With freeze_backbone, every transformation of the whole gradient (global-norm clipping)
  sees only the gradients that are applied: a huge frozen gradient leaves the trainable update
  exactly as with a zero one, and frozen weights get exactly zero."""
  c = cfg(method=method, freeze_backbone=True, clip_norm=clip_norm)
  params = {"model": {"layer_0": {"kernel": jnp.ones((3, 4))}, "heads": {"kernel": jnp.ones((2, 4))}},
            "alloc": {"taps": {"deltas": {"layer_0/kernel": jnp.zeros((2, 3, 4))},
                               "scores": {"layer_0/kernel": jnp.zeros((2,))}}}
            if method == "taps" else {}}
  tx = make_optimizer(c, 2)
  g = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  huge = dict(g, model=dict(g["model"], layer_0={"kernel": jnp.full((3, 4), 1e6)}))
  zero = dict(g, model=dict(g["model"], layer_0={"kernel": jnp.zeros((3, 4))}))
  u_huge, _ = tx.update(huge, tx.init(params), params)
  u_zero, _ = tx.update(zero, tx.init(params), params)
  for a, b in zip(jax.tree.leaves(u_huge), jax.tree.leaves(u_zero)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(u_huge["model"]["layer_0"]["kernel"], 0.0)
  # the clip acts on the trainable norm alone: Adam's first step is invariant to a common
  # scale, so compare the clipped gradient itself
  if clip_norm:
    clipped = make_optimizer(cfg(method=method, freeze_backbone=True, clip_norm=clip_norm,
                                 learning_rate=1.0, adam_b1=0.0, adam_b2=0.0, adam_eps=1e30), 2)
    u, _ = clipped.update(huge, clipped.init(params), params)
    trainable = [0.3] * (8 + (24 + 2 if method == "taps" else 0))
    scale = min(1.0, clip_norm / np.linalg.norm(trainable))
    head = -np.asarray(u["model"]["heads"]["kernel"]) * 1e30  # -lr * g / eps
    np.testing.assert_allclose(head, 0.3 * scale, rtol=1e-5)


def test_a_method_registered_outside_gmr_runs_end_to_end(tmp_path):
  """Adding a method is one class: a toy method registered here, without editing gmr/, is
  validated (its own check), trained with its combination rule, its learning rate, its
  per-task rows and its named penalty term (logged with the loss), and reported: its own task
  embedding and table numbers (a reader registered by the method's name) reach the analysis."""
  import json
  from gmr import experiment, train, validate
  from gmr.analysis import embeddings, readers, tables
  from gmr.config import ConfigError

  @methods.register("toy_first_half")
  class FirstHalf(methods.Method):
    """Every task uses the first half of each layer's components, summed; learns nothing."""
    default_combine = "sum"

    @classmethod
    def check_config(cls, config):
      if config.p_init == 0.123:
        raise ConfigError("p_init", "0.123 is refused by the toy method", "use another value")

    def matrices_fixed(self):
      return [np.concatenate([np.ones((self.num_tasks, c // 2)),
                              np.zeros((self.num_tasks, c - c // 2))], 1).astype(np.float32)
              for c in self.layer_sizes]

    def penalty_terms(self, alloc_params, task):
      return {"toy_zero": jnp.zeros(())}

  @readers.register("toy_first_half")
  class FirstHalfReader(readers.Reader):

    @classmethod
    def task_embedding(cls, results):
      return np.eye(len(results["tasks"]), dtype=np.float32), ["own"] * len(results["tasks"])

    @classmethod
    def summary_stats(cls, runs):
      return {"toy_runs": len(runs)}

  try:
    c = synthetic_cfg.get_config("smoke")
    c.method, c.combine = "toy_first_half", "auto"
    validate.validate(c)
    assert train.resolve_combine(c) == "sum"
    res = experiment.run(c, str(tmp_path / "w"), quiet=True)
    for m in res["allocations"].values():
      m = np.asarray(m)
      half = m.shape[1] // 2
      assert np.all(m[:, :half] == 1) and np.all(m[:, half:] == 0)
    logs = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
    assert any("toy_zero" in (l.get("penalty") or {}) for l in logs)
    emb, names = embeddings.run_embeddings(res)
    np.testing.assert_array_equal(emb, np.eye(len(res["tasks"])))
    assert names[0] == "own" and not readers.embeds_allocation(res)
    assert tables.summarize([res, dict(res, seed=1)])["toy_runs"] == 2
    c.p_init = 0.123
    with pytest.raises(ConfigError, match="p_init: 0.123 is refused by the toy method"):
      validate.validate(c)
  finally:
    methods.METHODS.pop("toy_first_half")
    readers.READERS.pop("toy_first_half")


def test_no_method_name_is_compared_outside_its_class():
  """gmr's modules ask the method's class (combine rule, rows, optimizer groups, checks) or
  its reader (how its results are read: gmr/analysis/readers.py, keyed by the method's name)
  instead of comparing ``config.method`` or a results key with a method's name."""
  import os
  import re
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "gmr")
  names = "|".join(re.escape(n) for n in methods.METHODS)
  bad = []
  for dirpath, _, files in os.walk(root):
    for f in files:
      if f.endswith(".py") and f not in ("methods.py", "readers.py"):
        text = open(os.path.join(dirpath, f)).read()
        bad += [(f, m.group(0)) for m in re.finditer(
            rf"method\s*(==|!=|in)\s*\(?\s*[\"']({names})[\"']", text)]
        # nor names one at all: the one default of config.method is the schema's
        bad += [(f, m.group(0)) for m in re.finditer(rf"[\"']({names})[\"']", text)
                if f != "config.py"]
  assert not bad
