"""MultiTaskNet (shared stem -> modular layers with shared ops between -> task heads) and the
papers' architectures as small builder functions."""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gmr import components as comp
from gmr.layers import ModularLayer


# ----------------------------------------------------------------------------- shared ops
@dataclasses.dataclass(frozen=True)
class GroupNormReLU:
  """Shared GroupNorm (``groups`` groups) followed by ReLU."""
  groups: int


@dataclasses.dataclass(frozen=True)
class Architecture:
  """A multi-task network, as data.

  Attributes:
    name: registry name.
    input_shape: one example's shape (no batch axis).
    stem: shared ops before the first routed layer (``ConvStack``, ``Pool``, ``GroupNormReLU``).
    layers: per routed layer, the component specs in allocation-column order.
    between: per routed layer, the shared ops applied after it.
    head_dims: output units of each task's linear head; ``None`` for no heads (the output of
      the last routed layer, flattened, is the prediction).
    dropout: dropout rate right before the heads.
  """
  name: str
  input_shape: Tuple[int, ...]
  stem: Tuple = ()
  layers: Tuple[Tuple, ...] = ()
  between: Tuple[Tuple, ...] = ()
  head_dims: Optional[Tuple[int, ...]] = None
  dropout: float = 0.0

  @property
  def layer_sizes(self) -> Tuple[int, ...]:
    return tuple(len(l) for l in self.layers)

  @property
  def num_tasks(self) -> Optional[int]:
    return None if self.head_dims is None else len(self.head_dims)


def _apply_shared(op, h, compute: comp.Compute, name):
  layout = compute.layout
  if isinstance(op, comp.ConvStack):
    y = comp.ConvStackGroup(op, 1, dataclasses.replace(compute, fused=True), name=name)(h)
    return y[0] if layout == "cnhw" else y[..., 0, :]
  if isinstance(op, comp.Pool):
    return comp.pool2d(h, op.kind, op.window, op.stride, op.padding, layout)
  raise TypeError(f"unknown shared op {op!r}")


class _SharedGN(nn.Module):
  groups: int
  layout: str = "nhwc"

  @nn.compact
  def __call__(self, h):
    c = h.shape[comp.channel_axis(self.layout)]
    scale = self.param("scale", nn.initializers.ones, (c,))
    offset = self.param("offset", nn.initializers.zeros, (c,))
    return nn.relu(comp.group_norm(h, self.groups, scale, offset, layout=self.layout))


class Heads(nn.Module):
  """One linear head per task, stacked: kernel ``[T, D, max_out]``; columns past a task's
  own output size are masked to -1e9 (so softmax and argmax ignore them)."""
  head_dims: Tuple[int, ...]

  @nn.compact
  def __call__(self, h, task):
    dims = self.head_dims
    d, m = h.shape[-1], max(dims)

    def init(key, shape, dtype=jnp.float32):
      # Task t's head is glorot(ks[t], (d, o_t)) padded to m columns. Tasks with the same o
      # are drawn in one vmapped call (same values as one call per task, far less to compile).
      ks = jax.random.split(key, len(dims))
      out = jnp.zeros(shape, dtype)
      for o in sorted(set(dims)):
        idx = np.array([t for t, ot in enumerate(dims) if ot == o])
        w = jax.vmap(lambda k, o=o: comp.glorot(k, (d, o), dtype))(ks[idx])
        out = out.at[idx, :, :o].set(w)
      return out

    kernel = self.param("kernel", init, (len(dims), d, m))
    bias = self.param("bias", nn.initializers.zeros, (len(dims), m))
    out = h @ kernel[task] + bias[task]
    if min(dims) != m:
      valid = jnp.arange(m) < jnp.asarray(dims)[task]
      out = jnp.where(valid, out, -1e9)
    return out


class MultiTaskNet(nn.Module):
  """``apply(variables, x, alloc, task, train)``.

  Args (call):
    x: ``[B, *input_shape]``.
    alloc: one allocation row ``[C_l]`` per routed layer (for the task of this batch).
    task: task index (int or traced int) selecting the head.
    train: enables dropout (needs the ``"dropout"`` RNG).
  Returns ``[B, head_dim]`` (``[B, features]`` without heads).

  ``compute`` (:class:`gmr.ops.Compute`) says how, never what, the network computes: its
  ``layout`` ("auto", "nhwc" or "cnhw") is how image tensors are laid out inside the network
  (inputs, outputs and parameters are the same in every layout), resolved here once and
  passed down with the rest; ``conv_dtype`` is the compute dtype of every convolution.
  """
  arch: Architecture
  combine_mode: str = "mean"
  compute: comp.Compute = comp.Compute(layout="auto")

  @nn.compact
  def __call__(self, x, alloc: Sequence, task, train: bool = False):
    a = self.arch
    image = len(a.input_shape) == 3
    lay = comp.resolve_layout(self.compute.layout) if image else "nhwc"
    compute = dataclasses.replace(self.compute, layout=lay)  # resolved once, passed down
    h = x.transpose(3, 0, 1, 2) if lay == "cnhw" else x
    for i, op in enumerate(a.stem):
      h = self._shared(op, h, compute, f"stem_{i}")
    for l, specs in enumerate(a.layers):
      h = ModularLayer(specs, self.combine_mode, compute, name=f"layer_{l}")(h, alloc[l])
      for j, op in enumerate(a.between[l] if a.between else ()):
        h = self._shared(op, h, compute, f"between_{l}_{j}")
    if lay == "cnhw":  # flatten in NHWC order: the heads see the same features in any layout
      h = h.transpose(1, 2, 3, 0)
    h = h.reshape(h.shape[0], -1)
    if a.head_dims is None:
      return h
    if a.dropout > 0:
      h = nn.Dropout(a.dropout, deterministic=not train)(h)
    return Heads(a.head_dims, name="heads")(h, task)

  def _shared(self, op, h, compute, name):
    if isinstance(op, GroupNormReLU):
      return _SharedGN(op.groups, compute.layout, name=name)(h)
    return _apply_shared(op, h, compute, name)


# ----------------------------------------------------------------------------- builders
ARCHITECTURES: Dict[str, Callable[..., Architecture]] = {}


def register(name):
  def deco(fn):
    ARCHITECTURES[name] = fn
    return fn
  return deco


def build(name: str, **kwargs) -> Architecture:
  """Build a registered architecture by name."""
  if name not in ARCHITECTURES:
    raise ValueError(f"unknown architecture {name!r}; choose one of {sorted(ARCHITECTURES)}")
  return ARCHITECTURES[name](**kwargs)


def from_config(config, num_tasks: int, head_dims, input_dim: int) -> Architecture:
  """The architecture ``config.arch`` (with ``config.arch_kwargs`` and ``config.dropout``) for
  a suite of ``num_tasks`` tasks with heads of ``head_dims`` outputs on examples of
  ``input_dim`` features or channels. Raises ``ValueError`` for an unknown name; what a
  builder raises for arguments it cannot take propagates."""
  kwargs = dict(num_tasks=num_tasks, head_dims=tuple(head_dims), dropout=config.dropout,
                input_dim=int(input_dim))
  kwargs.update(config.arch_kwargs)
  return build(config.arch, **kwargs)


@register("transfer")
def transfer(num_tasks=2, input_dim=128, width=4, **_) -> Architecture:
  """Appendix A2: 4 parallel dense components (two 1-layer, two 2-layer with 4 hidden units),
  all with ``width`` ReLU outputs, averaged, then a linear regression head per task."""
  specs = (comp.mlp((), width),) * 2 + (comp.mlp((width,), width),) * 2
  return Architecture("transfer", (input_dim,), layers=(specs,), between=((),),
                      head_dims=(1,) * num_tasks)


@register("synthetic")
def synthetic(num_tasks=4, input_dim=128, hidden=16, depth=3, num_components=4, **_):
  """Appendix A3: one layer of 4 components, each a ``depth``-layer MLP with ``hidden`` ReLU
  units per hidden layer and 1 linear output unit; no heads."""
  del num_tasks
  spec = comp.mlp((hidden,) * (depth - 1), 1, out_activation=False)
  return Architecture("synthetic", (input_dim,), layers=((spec,) * num_components,),
                      between=((),), head_dims=None)


@register("four_mnists")
def four_mnists(num_tasks=4, num_components=4, filters=4, num_classes=10, dropout=0.5, **_):
  """Appendix B: conv5x5 -> avgpool2 -> conv3x3 -> avgpool2 -> conv3x3, 4 components of
  4 filters each, 'valid' padding, ReLU; flatten (36) -> dropout -> linear head per task."""
  pool = comp.Pool("avg", 2, 2, "VALID")
  layer = lambda k: (comp.conv(k, filters, padding="VALID"),) * num_components
  return Architecture("four_mnists", (28, 28, 1), layers=(layer(5), layer(3), layer(3)),
                      between=((pool,), (pool,), ()),
                      head_dims=(num_classes,) * num_tasks, dropout=dropout)


OMNIGLOT_STRIDES = (2, 2, 1, 2, 2, 1, 2, 1)


@register("omniglot")
def omniglot(head_dims=(10,) * 20, filters=48, gn_groups=4, strides=OMNIGLOT_STRIDES,
             dropout=0.5, image_size=105, **_):
  """Section V-B / appendix C1 (the network of ref. [13]): stem conv1x1(48)+GN+ReLU, 8 routed
  layers of 7 components (conv3x3 pair, conv5x5 pair, conv7x7 pair, 1x7->7x1, max pool 3x3,
  avg pool 3x3, identity), every conv with its own GN+ReLU, shared GN+ReLU after each layer;
  flatten -> dropout -> a head per alphabet."""
  layers = []
  for s in strides:
    layers.append((
        comp.conv_pair(3, filters, s, norm_groups=gn_groups),
        comp.conv_pair(5, filters, s, norm_groups=gn_groups),
        comp.conv_pair(7, filters, s, norm_groups=gn_groups),
        comp.conv_1xk_kx1(7, filters, s, norm_groups=gn_groups),
        comp.max_pool(3, s),
        comp.avg_pool(3, s),
        comp.identity(s, filters),
    ))
  stem = (comp.conv(1, filters, norm_groups=gn_groups), )
  return Architecture("omniglot", (image_size, image_size, 1), stem=stem, layers=tuple(layers),
                      between=((GroupNormReLU(gn_groups),),) * len(strides),
                      head_dims=tuple(head_dims), dropout=dropout)


@register("clusters")
def clusters(head_dims=(5,) * 20 + (9,) * 20, filters=8, gn_groups=4, num_layers=3,
             per_kind=8, dropout=0.5, **_):
  """Section V-C: stem conv1x1(8)+GN+ReLU; 3 routed layers of 16 components (8 conv3x3 +
  8 conv5x5, 8 filters, GN+ReLU, stride 2), shared GN+ReLU after each; flatten (128) ->
  dropout -> heads."""
  layer = ((comp.conv(3, filters, 2, norm_groups=gn_groups),) * per_kind +
           (comp.conv(5, filters, 2, norm_groups=gn_groups),) * per_kind)
  return Architecture("clusters", (32, 32, 3), stem=(comp.conv(1, filters, norm_groups=gn_groups),),
                      layers=(layer,) * num_layers,
                      between=((GroupNormReLU(gn_groups),),) * num_layers,
                      head_dims=tuple(head_dims), dropout=dropout)
