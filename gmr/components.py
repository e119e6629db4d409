"""Components of modular layers: specs, and Flax modules that run n copies of one kind at once.

A *spec* (a frozen dataclass) describes one component; a *group* module runs ``n``
components of the same spec over the same input and returns ``[..., n, F]``. The group
always stores its parameters stacked over the ``n`` copies, and computes either

* fused (default): one wide op for all copies (one dense / conv with ``n * F`` outputs, then
  grouped convolutions for the later ops of a stack), or
* unfused: each copy as its own op, slicing the same parameters (the straightforward
  implementation; used as the ``--reference`` in benchmarks and in equivalence tests).

Both give the same numbers up to float rounding.

Image tensors come in one of two layouts (``layout``), fixed for a whole network:

* ``"nhwc"``: ``[B, H, W, C]``; a group returns ``[B, H', W', n, F]``;
* ``"cnhw"`` (channels first, batch second): ``[C, B, H, W]``; a group returns
  ``[n, F, B, H', W']``. On XLA:CPU a convolution's matmul then has the long ``B * H * W``
  axis as its output columns, and pooling, GroupNorm and the weighted sum over components
  work on contiguous rows: with patches, the 4-MNISTs training step runs about 1.5x as many
  task-steps/s as in NHWC on a 2-core CPU (measured in BENCHMARKS.md).

Parameters are the same arrays in both layouts (HWIO kernels, per-channel vectors), so a
checkpoint does not depend on the layout, and both compute the same function.

Spec builders, as named in the paper: :func:`mlp`, :func:`conv`, :func:`conv_pair`,
:func:`conv_1xk_kx1`, :func:`max_pool`, :func:`avg_pool`, :func:`identity`.
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmr.ops import (CONV_DTYPES, Compute, GN_EPS, LAYOUTS, PATCHES_MAX_DEPTH, channel_axis, conv2d,
                     extract_patches, extract_patches_cnhw, glorot, group_norm, per_channel,
                     pool2d, resolve_layout)

__all__ = ["CONV_DTYPES", "Compute", "GN_EPS", "LAYOUTS", "PATCHES_MAX_DEPTH", "channel_axis", "conv2d",
           "extract_patches", "extract_patches_cnhw", "glorot", "group_norm", "pool2d",
           "resolve_layout", "MLP", "ConvStack", "Pool", "Identity", "mlp", "conv", "conv_pair",
           "conv_1xk_kx1", "max_pool", "avg_pool", "identity", "MLPGroup", "ConvStackGroup",
           "PoolGroup", "IdentityGroup", "group_module"]

Kernel = Tuple[int, int]


# ----------------------------------------------------------------------------- specs
@dataclasses.dataclass(frozen=True)
class MLP:
  """Dense stack: ``hidden`` widths with ReLU, then ``out`` units (ReLU iff ``out_activation``)."""
  hidden: Tuple[int, ...]
  out: int
  out_activation: bool = True


@dataclasses.dataclass(frozen=True)
class ConvStack:
  """Convolutions in sequence (e.g. 3x3 -> 3x3, or 1x7 -> 7x1), ``features`` filters each.

  The stride is applied by the last convolution. ``norm_groups > 0`` follows every
  convolution by GroupNorm with that many groups; ``activation`` adds a ReLU after each.
  """
  kernels: Tuple[Kernel, ...]
  features: int
  stride: int = 1
  padding: str = "SAME"
  norm_groups: int = 0
  activation: bool = True


@dataclasses.dataclass(frozen=True)
class Pool:
  """Parameter-free ``kind`` in {"max", "avg"} pooling, ``window x window``."""
  kind: str
  window: int = 3
  stride: int = 1
  padding: str = "SAME"


@dataclasses.dataclass(frozen=True)
class Identity:
  """Skip connection; in a strided layer a strided 1x1 convolution without norm (ref. [13])."""
  stride: int = 1
  features: int = 0


def mlp(hidden=(), out=4, out_activation=True) -> MLP:
  return MLP(tuple(hidden), out, out_activation)


def conv(k: int, features: int, stride=1, padding="SAME", norm_groups=0, activation=True):
  return ConvStack(((k, k),), features, stride, padding, norm_groups, activation)


def conv_pair(k: int, features: int, stride=1, padding="SAME", norm_groups=0):
  return ConvStack(((k, k), (k, k)), features, stride, padding, norm_groups, True)


def conv_1xk_kx1(k: int, features: int, stride=1, padding="SAME", norm_groups=0):
  return ConvStack(((1, k), (k, 1)), features, stride, padding, norm_groups, True)


def max_pool(window=3, stride=1) -> Pool:
  return Pool("max", window, stride)


def avg_pool(window=3, stride=1) -> Pool:
  return Pool("avg", window, stride)


def identity(stride=1, features=0) -> Identity:
  return Identity(stride, features)


# ----------------------------------------------------------------------------- groups
class MLPGroup(nn.Module):
  """``n`` dense stacks over the same input: ``[..., D] -> [..., n, out]``."""
  spec: MLP
  n: int
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x):
    widths = self.spec.hidden + (self.spec.out,)
    din = x.shape[-1]
    kernels, biases = [], []
    for i, w in enumerate(widths):
      kernels.append(self.param(f"kernel_{i}", _stacked(glorot, self.n), (self.n, din, w)))
      biases.append(self.param(f"bias_{i}", nn.initializers.zeros, (self.n, w)))
      din = w
    acts = [True] * len(self.spec.hidden) + [self.spec.out_activation]
    if self.compute.fused:
      k0 = kernels[0]
      h = (x @ k0.transpose(1, 0, 2).reshape(k0.shape[1], -1)).reshape(
          x.shape[:-1] + (self.n, widths[0])) + biases[0]
      h = nn.relu(h) if acts[0] else h
      for k, b, a in zip(kernels[1:], biases[1:], acts[1:]):
        h = jnp.einsum("...nh,nhk->...nk", h, k) + b
        h = nn.relu(h) if a else h
      return h
    outs = []
    for c in range(self.n):
      h = x
      for k, b, a in zip(kernels, biases, acts):
        h = h @ k[c] + b[c]
        h = nn.relu(h) if a else h
      outs.append(h)
    return jnp.stack(outs, axis=-2)


class ConvStackGroup(nn.Module):
  """``n`` convolution stacks over the same input: ``[B, H, W, C] -> [B, H', W', n, F]``
  (``layout="cnhw"``: ``[C, B, H, W] -> [n, F, B, H', W']``).

  Parameters: ``kernel_i: [kh, kw, cin_i, n * F]`` (component-major output channels; for
  ``i > 0`` a grouped kernel with ``cin_i = F``), ``bias_i: [n * F]``, and GroupNorm
  ``scale_i`` / ``offset_i: [n * F]``.
  """
  spec: ConvStack
  n: int
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x):
    s, n, f, lay = self.spec, self.n, self.spec.features, self.compute.layout
    last = len(s.kernels) - 1
    cin = x.shape[channel_axis(lay)]
    params = []
    for i, (kh, kw) in enumerate(s.kernels):
      k = self.param(f"kernel_{i}", _grouped_glorot(n), (kh, kw, cin if i == 0 else f, n * f))
      b = self.param(f"bias_{i}", nn.initializers.zeros, (n * f,))
      gn = None
      if s.norm_groups:
        gn = (self.param(f"scale_{i}", nn.initializers.ones, (n * f,)),
              self.param(f"offset_{i}", nn.initializers.zeros, (n * f,)))
      params.append((k, b, gn))

    def run(h, k_slice, b_slice, groups):
      """The stack on ``h``; ``k_slice`` / ``b_slice`` pick this run's kernel / vector columns."""
      for i, ((k, b, gn), stride) in enumerate(
          zip(params, [1] * last + [s.stride])):
        h = conv2d(h, k_slice(k), stride, s.padding, groups if i > 0 else 1,
                   self.compute.conv_impl, lay, self.compute.conv_dtype)
        h = h + per_channel(b_slice(b), h, lay)
        if gn is not None:
          h = group_norm(h, s.norm_groups * groups, b_slice(gn[0]), b_slice(gn[1]), layout=lay)
        if s.activation:
          h = nn.relu(h)
      return h

    if self.compute.fused:
      y = run(x, lambda k: k, lambda v: v, n)
      if lay == "cnhw":
        return y.reshape((n, f) + y.shape[1:])
      return y.reshape(y.shape[:-1] + (n, f))
    outs = []
    for c in range(n):
      sl = slice(c * f, (c + 1) * f)
      outs.append(run(x, lambda k: k[..., sl], lambda v: v[sl], 1))
    return jnp.stack(outs, axis=0 if lay == "cnhw" else -2)


def _copies(y, n, layout):
  """``n`` copies of one output on the component axis of ``layout``."""
  if layout == "cnhw":
    return jnp.broadcast_to(y[None], (n,) + y.shape)
  return jnp.broadcast_to(y[..., None, :], y.shape[:-1] + (n, y.shape[-1]))


class PoolGroup(nn.Module):
  """``n`` identical pooling components: ``[B, H, W, C] -> [B, H', W', n, C]`` (computed once)."""
  spec: Pool
  n: int
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x):
    y = pool2d(x, self.spec.kind, self.spec.window, self.spec.stride, self.spec.padding,
               self.compute.layout)
    return _copies(y, self.n, self.compute.layout)


class IdentityGroup(nn.Module):
  """Identity, or a strided 1x1 convolution (no norm, no activation) when ``stride > 1``."""
  spec: Identity
  n: int
  compute: Compute = Compute()

  @nn.compact
  def __call__(self, x):
    if self.spec.stride == 1:
      return _copies(x, self.n, self.compute.layout)
    features = self.spec.features or x.shape[channel_axis(self.compute.layout)]
    as_conv = ConvStack(((1, 1),), features, self.spec.stride, "SAME", 0, False)
    return ConvStackGroup(as_conv, self.n, self.compute, name="conv")(x)


def group_module(spec, n: int, compute: Compute, name: str) -> nn.Module:
  """The group module that runs ``n`` components of ``spec`` as ``compute`` says (images in
  its resolved layout)."""
  if isinstance(spec, MLP):
    return MLPGroup(spec, n, compute, name=name)
  if isinstance(spec, ConvStack):
    return ConvStackGroup(spec, n, compute, name=name)
  if isinstance(spec, Pool):
    return PoolGroup(spec, n, compute, name=name)
  if isinstance(spec, Identity):
    return IdentityGroup(spec, n, compute, name=name)
  raise TypeError(f"unknown component spec {spec!r}")


def _stacked(init, n):
  """Initialise ``[n, ...]`` as n independent draws of ``init`` over ``[...]``."""
  def f(key, shape, dtype=jnp.float32):
    return jax.vmap(lambda k: init(k, shape[1:], dtype))(jax.random.split(key, n))
  return f


def _grouped_glorot(n):
  """Glorot-uniform per component for a ``[kh, kw, cin, n * F]`` kernel (fan-out of one component)."""
  def f(key, shape, dtype=jnp.float32):
    kh, kw, cin, nf = shape
    per = jax.vmap(lambda k: glorot(k, (kh, kw, cin, nf // n), dtype))(jax.random.split(key, n))
    return per.transpose(1, 2, 3, 0, 4).reshape(shape)
  return f
