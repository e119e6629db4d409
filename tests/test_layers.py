"""Modular layers: combination rules, fused == unfused, conv formulations agree."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmr import components as comp
from gmr import models
from gmr.layers import ModularLayer, group_specs, normalize


def combine(outputs, weights, mode="mean"):
  """The combination of one layer written plainly (the reference the fused paths are tested
  against): ``outputs [..., C, F]`` weighted by the allocation row ``weights [C]``, divided by
  ``max(sum(weights), 1)`` for "mean"."""
  return normalize(jnp.einsum("...cf,c->...f", outputs, weights), weights, mode)


def test_mean_combination_and_all_zero_row():
  outs = jnp.arange(12.0).reshape(3, 4, 1)  # [B=3, C=4, F=1]
  w = jnp.array([1.0, 0.0, 1.0, 1.0])
  np.testing.assert_allclose(combine(outs, w, "mean")[:, 0], (outs[:, 0, 0] + outs[:, 2, 0] + outs[:, 3, 0]) / 3)
  np.testing.assert_allclose(combine(outs, w, "sum")[:, 0], outs[:, 0, 0] + outs[:, 2, 0] + outs[:, 3, 0])
  np.testing.assert_array_equal(combine(outs, jnp.zeros(4), "mean"), 0.0)
  np.testing.assert_array_equal(combine(outs, jnp.zeros(4), "sum"), 0.0)


def test_layer_mean_of_active_components_and_zero_when_none():
  specs = (comp.mlp((), 3, out_activation=False),) * 3
  layer = ModularLayer(specs)
  x = jax.random.normal(jax.random.key(0), (5, 4))
  v = layer.init(jax.random.key(1), x, jnp.ones(3))
  k, b = v["params"]["group_0"]["kernel_0"], v["params"]["group_0"]["bias_0"]
  each = [x @ k[i] + b[i] for i in range(3)]
  y = layer.apply(v, x, jnp.array([1.0, 0.0, 1.0]))
  np.testing.assert_allclose(y, (each[0] + each[2]) / 2, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(layer.apply(v, x, jnp.zeros(3)), 0.0)


def test_group_specs_groups_equal_kinds_in_first_appearance_order():
  a, b = comp.conv(3, 4), comp.conv(5, 4)
  assert group_specs((a, b, a, b, a)) == ((a, (0, 2, 4)), (b, (1, 3)))


@pytest.mark.equivalence
def test_omniglot_layer_fused_equals_unfused():
  specs = models.omniglot(filters=8, gn_groups=2).layers[0]  # stride-2 layer, all 7 kinds
  x = jax.random.normal(jax.random.key(0), (2, 15, 15, 8))
  w = jnp.array([1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0])
  f = ModularLayer(specs, compute=comp.Compute(fused=True))
  u = ModularLayer(specs, compute=comp.Compute(fused=False))
  v = f.init(jax.random.key(1), x, w)
  yf, yu = f.apply(v, x, w), u.apply(v, x, w)
  assert yf.shape == (2, 8, 8, 8)
  np.testing.assert_allclose(yf, yu, rtol=1e-4, atol=1e-5)


@pytest.mark.equivalence
@pytest.mark.parametrize("groups,stride,padding", [(1, 1, "SAME"), (1, 2, "VALID"), (3, 2, "SAME")])
def test_conv_formulations_agree(groups, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
  k = jax.random.normal(jax.random.key(1), (3, 5, 6 // groups, 9))
  a = comp.conv2d(x, k, stride, padding, groups, "xla")
  b = comp.conv2d(x, k, stride, padding, groups, "patches")
  np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.equivalence
@pytest.mark.parametrize("groups,stride,padding", [(1, 1, "SAME"), (1, 2, "VALID"), (3, 2, "SAME")])
def test_channels_first_convolutions_equal_nhwc(groups, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
  k = jax.random.normal(jax.random.key(1), (3, 5, 6 // groups, 9))
  ref = comp.conv2d(x, k, stride, padding, groups, "xla")
  for impl in ("xla", "patches"):
    y = comp.conv2d(x.transpose(3, 0, 1, 2), k, stride, padding, groups, impl, "cnhw")
    np.testing.assert_allclose(y.transpose(1, 2, 3, 0), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.equivalence
@pytest.mark.parametrize("kind,window,stride,padding", [("avg", 2, 2, "VALID"), ("avg", 3, 1, "SAME"),
                                                        ("avg", 3, 2, "SAME"), ("max", 3, 2, "SAME")])
def test_channels_first_pooling_equals_flax(kind, window, stride, padding):
  x = jax.random.normal(jax.random.key(0), (2, 7, 8, 3))
  ref = comp.pool2d(x, kind, window, stride, padding)  # flax; avg ignores padded cells
  y = comp.pool2d(x.transpose(3, 0, 1, 2), kind, window, stride, padding, "cnhw")
  np.testing.assert_allclose(y.transpose(1, 2, 3, 0), ref, rtol=1e-5, atol=1e-6)


def kink_margin(net, params, x, rows, task, monkeypatch) -> float:
  """How far the forward pass of ``net`` (NHWC) at ``x`` is from a kink of its piecewise-linear
  ops, in activation units: the smallest |ReLU input| and the smallest gap between the largest
  and second-largest (positive) value of a max-pooling window. Two formulations that sum in
  another order differ by float32 rounding (~1e-6 here); where a margin is below that, the
  rounding decides which side of the kink an activation falls on and the gradients differ by
  O(1), correctly for both."""
  margins = []

  def relu(h):
    margins.append(float(jnp.min(jnp.abs(h))))
    return jnp.maximum(h, 0)

  def pool2d(h, kind, window, stride, padding="SAME", layout="nhwc"):
    if kind == "max":  # post-ReLU inputs: zero padding can only tie at a zero maximum
      p = comp.extract_patches(h, window, window, stride, padding)
      p = p.reshape(p.shape[:3] + (window * window, -1))
      top = jnp.sort(p, axis=3)[:, :, :, -2:]
      gap = top[:, :, :, 1] - top[:, :, :, 0]
      margins.append(float(jnp.min(jnp.where(top[:, :, :, 1] > 0, gap, jnp.inf))))
    return pool(h, kind, window, stride, padding, layout)

  pool = comp.pool2d
  monkeypatch.setattr(nn, "relu", relu)
  monkeypatch.setattr(comp, "pool2d", pool2d)
  with jax.disable_jit():
    net.apply({"params": params}, x, rows, task)
  monkeypatch.undo()
  return min(margins)


def well_conditioned_case(arch, kw, monkeypatch):
  """``(architecture, x [2, ...], rows, params)`` for comparing two formulations of a network:
  the input of the first key 0, 1, ... whose activations are at least 1e-4 from every kink
  (:func:`kink_margin`), so that float32 summation order cannot decide a ReLU or a max.
  (The omniglot case's key 0 has a ReLU input 1.6e-7 from zero: on one core the channels-first
  sums put it on the other side of the kink than the NHWC reference, and the gradients came out
  0.1 apart, both right.)"""
  a = models.build(arch, dropout=0.0, **kw)
  rows = [jax.random.bernoulli(jax.random.key(l), 0.6, (c,)).astype(jnp.float32)
          for l, c in enumerate(a.layer_sizes)]
  ref = models.MultiTaskNet(a, compute=comp.Compute(fused=False, conv_impl="xla", layout="nhwc"))
  for seed in range(20):
    x = jax.random.normal(jax.random.key(seed), (2,) + a.input_shape)
    params = ref.init(jax.random.key(1), x, rows, 0)["params"]
    if kink_margin(ref, params, x, rows, 1, monkeypatch) > 1e-4:
      return a, x, rows, params
  raise AssertionError("no well-conditioned input among 20 keys")


@pytest.mark.equivalence
@pytest.mark.parametrize("arch,kw", [("transfer", {}), ("four_mnists", {}),
                                     ("clusters", dict(per_kind=2, num_layers=2))])
def test_fused_and_unfused_give_equal_outputs_and_gradients(arch, kw, monkeypatch):
  a, x, rows, params = well_conditioned_case(arch, kw, monkeypatch)
  fused = models.MultiTaskNet(a, compute=comp.Compute(layout="auto", fused=True))
  plain = models.MultiTaskNet(a, compute=comp.Compute(layout="auto", fused=False))

  def loss(net, p, r):
    return jnp.sum(jnp.sin(net.apply({"params": p}, x, r, 1)))

  np.testing.assert_allclose(fused.apply({"params": params}, x, rows, 1),
                             plain.apply({"params": params}, x, rows, 1), rtol=1e-4, atol=1e-5)
  gf = jax.grad(loss, argnums=(1, 2))(fused, params, rows)
  gp = jax.grad(loss, argnums=(1, 2))(plain, params, rows)
  for u, v in zip(jax.tree.leaves(gf), jax.tree.leaves(gp)):
    np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


@pytest.mark.equivalence
@pytest.mark.parametrize("arch,kw", [("four_mnists", {}), ("clusters", dict(per_kind=2, num_layers=2)),
                                     ("omniglot", dict(strides=(2, 1), filters=8, image_size=13))])
def test_layouts_give_equal_outputs_and_gradients(arch, kw, monkeypatch):
  """The same parameters give the same function in NHWC and channels-first, fused or not."""
  a, x, rows, params = well_conditioned_case(arch, kw, monkeypatch)
  ref = models.MultiTaskNet(a, compute=comp.Compute(fused=False, conv_impl="xla", layout="nhwc"))
  loss = lambda net, p: jnp.sum(jnp.sin(net.apply({"params": p}, x, rows, 1)))
  g_ref = jax.grad(loss, argnums=1)(ref, params)
  for fused in (True, False):
    for impl in ("xla", "patches"):
      net = models.MultiTaskNet(a, compute=comp.Compute(fused=fused, conv_impl=impl,
                                                        layout="cnhw"))
      assert jax.tree.structure(net.init(jax.random.key(1), x, rows, 0)["params"]) == \
          jax.tree.structure(params)
      np.testing.assert_allclose(net.apply({"params": params}, x, rows, 1),
                                 ref.apply({"params": params}, x, rows, 1), rtol=1e-4, atol=1e-5)
      for u, v in zip(jax.tree.leaves(jax.grad(loss, argnums=1)(net, params)),
                      jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(u, v, rtol=1e-3, atol=1e-5)


def test_kink_margin_flags_the_input_that_failed_on_one_core(monkeypatch):
  """The omniglot case at key 0 has a ReLU input within float32 rounding of zero (1.6e-7):
  there, an input change of one part in 1e7 can move a gradient by O(1), so two summation
  orders may disagree; well_conditioned_case skips such inputs."""
  a = models.build("omniglot", dropout=0.0, strides=(2, 1), filters=8, image_size=13)
  rows = [jax.random.bernoulli(jax.random.key(l), 0.6, (c,)).astype(jnp.float32)
          for l, c in enumerate(a.layer_sizes)]
  ref = models.MultiTaskNet(a, compute=comp.Compute(fused=False, conv_impl="xla", layout="nhwc"))
  x = jax.random.normal(jax.random.key(0), (2,) + a.input_shape)
  params = ref.init(jax.random.key(1), x, rows, 0)["params"]
  assert kink_margin(ref, params, x, rows, 1, monkeypatch) < 1e-6
  chosen = well_conditioned_case("omniglot", dict(strides=(2, 1), filters=8, image_size=13),
                                 monkeypatch)[1]
  assert not np.array_equal(chosen, x)


def test_layout_auto_is_channels_first_on_cpu_only():
  assert comp.resolve_layout("auto") == ("cnhw" if jax.default_backend() == "cpu" else "nhwc")
  assert comp.resolve_layout("nhwc") == "nhwc"
  with pytest.raises(ValueError, match="unknown layout"):
    comp.resolve_layout("nchw")


def test_architecture_shapes_match_the_paper():
  a = models.omniglot()
  assert a.layer_sizes == (7,) * 8
  x = jnp.zeros((1, 105, 105, 1))
  net = models.MultiTaskNet(a)
  v = jax.eval_shape(lambda: net.init(jax.random.key(0), x, [jnp.ones(7)] * 8, 0))
  assert v["params"]["heads"]["kernel"].shape == (20, 4 * 4 * 48, 10)
  c = models.clusters()
  assert c.layer_sizes == (16, 16, 16)
  v = jax.eval_shape(lambda: models.MultiTaskNet(c).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), [jnp.ones(16)] * 3, 0))
  assert v["params"]["heads"]["kernel"].shape == (40, 128, 9)
  m = models.four_mnists()
  v = jax.eval_shape(lambda: models.MultiTaskNet(m).init(
      jax.random.key(0), jnp.zeros((1, 28, 28, 1)), [jnp.ones(4)] * 3, 0))
  assert v["params"]["heads"]["kernel"].shape == (4, 36, 10)


def test_heads_mask_columns_beyond_a_tasks_classes():
  a = models.clusters(head_dims=(5, 9), num_layers=1)
  net = models.MultiTaskNet(a)
  x = jnp.ones((2, 32, 32, 3))
  v = net.init(jax.random.key(0), x, [jnp.ones(16)], 0)
  out0 = net.apply(v, x, [jnp.ones(16)], 0)
  assert np.all(np.asarray(out0[:, 5:]) <= -1e8) and np.all(np.abs(out0[:, :5]) < 1e3)
  out1 = net.apply(v, x, [jnp.ones(16)], 1)
  assert np.all(np.abs(out1) < 1e3)


def test_glorot_equals_flax_bit_for_bit():
  """Our glorot draws flat (XLA:CPU compiles rank-4 draws very slowly): same values as flax's."""
  ref = nn.initializers.glorot_uniform()
  for shape in [(3, 3, 2, 4), (16, 4), (5, 5, 1, 4)]:
    for seed in range(2):
      np.testing.assert_array_equal(comp.glorot(jax.random.key(seed), shape),
                                    ref(jax.random.key(seed), shape))
  ks = jax.random.split(jax.random.key(3), 3)
  np.testing.assert_array_equal(jax.vmap(lambda k: comp.glorot(k, (3, 3, 2, 4)))(ks),
                                jax.vmap(lambda k: ref(k, (3, 3, 2, 4)))(ks))


@pytest.mark.parametrize("impl,layout,groups", [("xla", "nhwc", 1), ("patches", "nhwc", 3),
                                                ("xla", "cnhw", 3), ("patches", "cnhw", 1)])
def test_bfloat16_convolution_is_float32_conv_of_rounded_operands(impl, layout, groups):
  """conv_dtype=bfloat16 rounds input and kernel to bfloat16, accumulates in float32 and
  returns float32: the float32 convolution of the rounded operands, and near the float32 one."""
  x = jax.random.normal(jax.random.key(0), (2, 9, 9, 6))
  k = jax.random.normal(jax.random.key(1), (3, 3, 6 // groups, 9))
  xl = x.transpose(3, 0, 1, 2) if layout == "cnhw" else x
  y = comp.conv2d(xl, k, 2, "SAME", groups, impl, layout, "bfloat16")
  assert y.dtype == jnp.float32
  rnd = lambda a: a.astype(jnp.bfloat16).astype(jnp.float32)
  exact = comp.conv2d(rnd(xl), rnd(k), 2, "SAME", groups, impl, layout)
  np.testing.assert_allclose(y, exact, rtol=1e-5, atol=1e-5)
  full = comp.conv2d(xl, k, 2, "SAME", groups, impl, layout)
  err = float(jnp.linalg.norm(y - full) / jnp.linalg.norm(full))
  assert 1e-4 < err < 1e-2  # rounded (not silently float32), but only by bfloat16's precision
  with pytest.raises(ValueError, match="unknown conv dtype"):
    comp.conv2d(xl, k, 2, "SAME", groups, impl, layout, "float16")


def test_bfloat16_network_keeps_float32_parameters_and_gradients():
  a = models.build("four_mnists", dropout=0.0)
  x = jax.random.normal(jax.random.key(0), (4,) + a.input_shape)
  rows = [jnp.array([1.0, 0.0, 1.0, 1.0])] * 3
  f32 = models.MultiTaskNet(a, compute=comp.Compute(conv_impl="patches", layout="cnhw"))
  bf16 = models.MultiTaskNet(a, compute=comp.Compute(conv_impl="patches", layout="cnhw",
                                                     conv_dtype="bfloat16"))
  params = f32.init(jax.random.key(1), x, rows, 0)["params"]
  assert all(l.dtype == jnp.float32 for l in jax.tree.leaves(
      bf16.init(jax.random.key(1), x, rows, 0)["params"]))
  loss = lambda net, p: jnp.sum(jnp.sin(net.apply({"params": p}, x, rows, 1)))
  out16, out32 = (n.apply({"params": params}, x, rows, 1) for n in (bf16, f32))
  assert out16.dtype == jnp.float32
  assert float(jnp.linalg.norm(out16 - out32) / jnp.linalg.norm(out32)) < 2e-2
  g16, g32 = (jax.grad(loss, argnums=1)(n, params) for n in (bf16, f32))
  for u, v in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
    assert u.dtype == jnp.float32
    assert float(jnp.linalg.norm(u - v) / jnp.linalg.norm(v)) < 5e-2


@pytest.mark.equivalence
def test_weighted_sum_first_values_and_gradients_equal_plain_autodiff():
  """The hand-written backward of the channels-first combine equals autodiff of the formula."""
  from gmr.layers import weighted_sum_first
  y = jax.random.normal(jax.random.key(0), (4, 3, 2, 5, 5))
  plain = lambda y, w: jnp.einsum("n...,n->...", y, w)
  probe = jax.random.normal(jax.random.key(1), (3, 2, 5, 5))
  for w in (jnp.array([1.0, 0.0, 1.0, 1.0]), jnp.array([0.3, -1.2, 0.0, 2.5])):
    np.testing.assert_allclose(weighted_sum_first(y, w), plain(y, w), rtol=1e-5, atol=1e-6)
    loss = lambda f: (lambda y, w: jnp.sum(jnp.sin(f(y, w)) * probe))
    got = jax.grad(loss(weighted_sum_first), argnums=(0, 1))(y, w)
    want = jax.grad(loss(plain), argnums=(0, 1))(y, w)
    for u, v in zip(got, want):
      np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-5)
  # and under vmap (the joint schedule vmaps the network over tasks)
  ws = jax.random.normal(jax.random.key(2), (2, 4))
  g = jax.vmap(jax.grad(lambda w: jnp.sum(weighted_sum_first(y, w) * probe)))(ws)
  np.testing.assert_allclose(g, jax.vmap(jax.grad(lambda w: jnp.sum(plain(y, w) * probe)))(ws),
                             rtol=1e-5, atol=1e-5)
