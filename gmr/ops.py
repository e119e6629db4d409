"""Pure array ops of the components, in both image layouts: convolution (XLA's, or patches and
one matmul), GroupNorm, pooling, and the Glorot initializer: functions of arrays, no modules.

Image tensors come in one of two layouts (``layout``), fixed for a whole network:

* ``"nhwc"``: ``[B, H, W, C]``;
* ``"cnhw"`` (channels first, batch second): ``[C, B, H, W]``. On XLA:CPU a convolution's
  matmul then has the long ``B * H * W`` axis as its output columns, and pooling, GroupNorm
  and the weighted sum over components work on contiguous rows.

Parameters are the same arrays in both layouts (HWIO kernels, per-channel vectors), so both
compute the same function.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def glorot(key, shape, dtype=jnp.float32):
  """Glorot-uniform, the same values as ``flax.linen.initializers.glorot_uniform()`` (fans from
  the last two axes, the rest a receptive field), drawn as a flat vector and reshaped: with
  partitionable threefry (jax's default) the bits of element i depend only on i, so the values
  are identical, but XLA:CPU compiles a rank-4 draw ~25x slower than a flat one (measured,
  jax 0.10: 12 s vs 0.5 s for a [7, 7, 8, 16] kernel; a 2-layer Omniglot net's init compiled
  in 35 s with flax's initializer, 6 s with this one)."""
  shape = tuple(shape)
  if len(shape) < 2:
    raise ValueError(f"glorot needs a kernel of rank >= 2, got shape {shape}")
  size = int(np.prod(shape))
  receptive = size / (shape[-2] * shape[-1])
  fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
  dt = np.dtype(dtype)  # flax's arithmetic, in numpy: IEEE multiply and sqrt round the same
  limit = np.sqrt(dt.type(3) * np.asarray(1.0 / ((fan_in + fan_out) / 2), dt))
  return (jax.random.uniform(key, (size,), dtype, -1) * limit).reshape(shape)

# TF's contrib group_norm default epsilon (the authors' code).
GN_EPS = 1e-6


PATCHES_MAX_DEPTH = 256
CONV_DTYPES = ("float32", "bfloat16")
LAYOUTS = ("nhwc", "cnhw")


def resolve_layout(layout: str) -> str:
  """``"auto"``: channels first (``"cnhw"``) on CPU, where it is faster, ``"nhwc"`` elsewhere."""
  if layout == "auto":
    return "cnhw" if jax.default_backend() == "cpu" else "nhwc"
  if layout not in LAYOUTS:
    raise ValueError(f"unknown layout {layout!r}; use 'auto', 'nhwc' or 'cnhw'")
  return layout


def channel_axis(layout: str) -> int:
  return 0 if layout == "cnhw" else -1


def per_channel(v, x, layout):
  """A ``[C]`` vector shaped to broadcast over ``x``'s channel axis in ``layout``."""
  return v.reshape((-1,) + (1,) * (x.ndim - 1)) if layout == "cnhw" else v


def conv2d(x, kernel, stride=1, padding="SAME", groups=1, impl="auto", layout="nhwc",
           dtype="float32"):
  """2-D convolution, HWIO kernel ``[kh, kw, cin / groups, cout]``, input and output in
  ``layout`` (``[B, H, W, C]`` for ``"nhwc"``, ``[C, B, H, W]`` for ``"cnhw"``).

  ``dtype`` is the compute dtype of the multiplies ("float32" or "bfloat16"): input and
  kernel are cast to it, products are accumulated in float32 and the output is float32, so
  parameters and everything outside the convolution stay float32 (mixed precision; the
  kernel's gradient comes back float32 through the cast).

  ``impl="xla"`` uses ``lax.conv_general_dilated``; ``impl="patches"`` extracts patches and
  does one (batched) matmul, which XLA:CPU runs faster for the small channel counts of
  these networks (see BENCHMARKS.md); ``impl="auto"`` picks patches on CPU when a patch is
  small (``kh * kw * cin <= PATCHES_MAX_DEPTH``: the patch matrix is ``kh * kw`` times the
  input, too much memory for Omniglot's 7x7 convs over 48 channels) and XLA's convolution
  otherwise and on other backends. All compute the same function.
  """
  if impl == "auto":  # measured: patches + matmul wins on XLA:CPU for these channel counts
    kh, kw, cin_g, _ = kernel.shape
    small = kh * kw * cin_g * groups <= PATCHES_MAX_DEPTH
    impl = "patches" if jax.default_backend() == "cpu" and small else "xla"
  if impl not in ("xla", "patches"):
    raise ValueError(f"unknown conv impl {impl!r}; use 'xla' or 'patches'")
  if dtype not in CONV_DTYPES:
    raise ValueError(f"unknown conv dtype {dtype!r}; use one of {CONV_DTYPES}")
  acc = jnp.float32  # accumulation and output dtype, whatever ``dtype`` is
  x, kernel = x.astype(dtype), kernel.astype(dtype)
  if impl == "xla":
    dims = "CNHW" if layout == "cnhw" else "NHWC"
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=(dims, "HWIO", dims),
        feature_group_count=groups, preferred_element_type=acc)
  if layout == "cnhw":
    return _conv_patches_cnhw(x, kernel, stride, padding, groups, acc)
  kh, kw, cin_g, cout = kernel.shape
  p = extract_patches(x, kh, kw, stride, padding)  # [B, H', W', kh * kw * cin], order (kh, kw, cin)
  b, h, w, _ = p.shape
  if groups == 1:
    return jnp.matmul(p, kernel.reshape(kh * kw * cin_g, cout), preferred_element_type=acc)
  p = p.reshape(b, h, w, kh * kw, groups, cin_g)
  k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
  return jnp.einsum("bhwpgc,pcgo->bhwgo", p, k, preferred_element_type=acc).reshape(b, h, w, cout)


def _windows(x, kh: int, kw: int, stride: int, padding: str, h_axis: int):
  """The ``kh * kw`` strided slices of ``x`` (H, W at ``h_axis``, ``h_axis + 1``), one per
  kernel offset in (kh, kw) order, after TF's SAME padding (none for VALID)."""
  hgt, wid = x.shape[h_axis], x.shape[h_axis + 1]
  if padding == "SAME":
    (oh, ph), (ow, pw) = _same_pads(hgt, kh, stride), _same_pads(wid, kw, stride)
    pads = [(0, 0)] * x.ndim
    pads[h_axis], pads[h_axis + 1] = ph, pw
    x = jnp.pad(x, pads)
  elif padding == "VALID":
    oh, ow = (hgt - kh) // stride + 1, (wid - kw) // stride + 1
  else:
    raise ValueError(f"unknown padding {padding!r}; use 'SAME' or 'VALID'")
  lead = (slice(None),) * h_axis
  return [x[lead + (slice(i, i + (oh - 1) * stride + 1, stride),
                    slice(j, j + (ow - 1) * stride + 1, stride))]
          for i in range(kh) for j in range(kw)]


def extract_patches(x, kh: int, kw: int, stride: int, padding: str):
  """``[B, H, W, C] -> [B, H', W', kh * kw * C]`` by strided slicing (TF's SAME / VALID padding)."""
  cols = _windows(x, kh, kw, stride, padding, 1)
  return jnp.concatenate(cols, axis=-1) if len(cols) > 1 else cols[0]


def _conv_patches_cnhw(x, kernel, stride, padding, groups, acc=jnp.float32):
  """Patches + matmul in the ``cnhw`` layout: ``[cout, K] @ [K, B * H' * W']``."""
  kh, kw, cin_g, cout = kernel.shape
  p = extract_patches_cnhw(x, kh, kw, stride, padding)  # [kh * kw, C, B, H', W']
  _, c, b, oh, ow = p.shape
  if groups == 1:  # [K, cout] . [K, N] contracting K: no transposed copy of the kernel
    out = jax.lax.dot_general(kernel.reshape(kh * kw * cin_g, cout), p.reshape(kh * kw * c, -1),
                              (((0,), (0,)), ((), ())), preferred_element_type=acc)
  else:
    p = p.reshape(kh * kw, groups, cin_g, -1)
    k = kernel.reshape(kh * kw, cin_g, groups, cout // groups)
    out = jnp.einsum("pcgo,pgcn->gon", k, p, preferred_element_type=acc)
  return out.reshape(cout, b, oh, ow)


def _same_pads(size, k, stride):
  out = -(-size // stride)
  total = max((out - 1) * stride + k - size, 0)
  return out, (total // 2, total - total // 2)


def _same_pool_counts(hw, window, stride):
  """Input cells (not padding) in each SAME-padded window: a static ``[H', W']`` array."""
  counts = []
  for size in hw:
    out, (lo, _) = _same_pads(size, window, stride)
    start = np.arange(out) * stride - lo
    counts.append(np.minimum(start + window, size) - np.maximum(start, 0))
  return np.outer(*counts).astype(np.float32)


def extract_patches_cnhw(x, kh: int, kw: int, stride: int, padding: str):
  """``[C, B, H, W] -> [kh * kw, C, B, H', W']`` by strided slicing (TF's SAME / VALID padding)."""
  return jnp.stack(_windows(x, kh, kw, stride, padding, 2), 0)


def group_norm(x, groups: int, scale, bias, eps=GN_EPS, layout="nhwc"):
  """GroupNorm over the channel axis split into ``groups`` contiguous groups (and all spatial
  axes), per example."""
  shape = x.shape
  if layout == "cnhw":  # [G, C/G, B, H, W]: reduce all but the group and batch axes
    xg = x.reshape((groups, shape[0] // groups) + shape[1:])
    axes = (1,) + tuple(range(3, xg.ndim))
  else:  # [B, H, W, G, C/G]: reduce all but the batch and group axes
    xg = x.reshape(shape[:-1] + (groups, shape[-1] // groups))
    axes = tuple(range(1, xg.ndim - 2)) + (xg.ndim - 1,)
  mean = xg.mean(axes, keepdims=True)
  var = jnp.square(xg - mean).mean(axes, keepdims=True)
  xg = (xg - mean) * jax.lax.rsqrt(var + eps)
  return xg.reshape(shape) * per_channel(scale, x, layout) + per_channel(bias, x, layout)


def pool2d(x, kind: str, window: int, stride: int, padding="SAME", layout="nhwc"):
  """Max or average pooling over H, W (average ignores padded cells, as TF's)."""
  if layout == "cnhw":
    dims, strides = (1, 1, window, window), (1, 1, stride, stride)
    if kind == "max":
      return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, dims, strides, padding)
    if kind == "avg":  # a sum of strided slices: several times faster than reduce_window on CPU
      p = extract_patches_cnhw(x, window, window, stride, padding)
      if padding == "VALID":
        return p.sum(0) / (window * window)
      return p.sum(0) / _same_pool_counts(x.shape[2:], window, stride)
    raise ValueError(f"unknown pool kind {kind!r}; use 'max' or 'avg'")
  w, s = (window, window), (stride, stride)
  if kind == "max":
    return nn.max_pool(x, w, s, padding)
  if kind == "avg":
    return nn.avg_pool(x, w, s, padding, count_include_pad=False)
  raise ValueError(f"unknown pool kind {kind!r}; use 'max' or 'avg'")


@dataclasses.dataclass(frozen=True)
class Compute:
  """How a network computes, never what: one frozen value handed from the config to every
  module that needs part of it (equal functions in every setting, up to float rounding).

  Attributes:
    fused: run the components of one group as one wide op (True) or each alone (False).
    conv_impl: "auto" (patches on CPU when a patch is small, XLA's elsewhere), "xla" or
      "patches" (:func:`conv2d`).
    layout: image tensors inside the network: "auto" (cnhw on CPU, nhwc elsewhere), "nhwc"
      or "cnhw"; a network resolves "auto" once (:func:`resolve_layout`) and passes the
      resolved value down.
    conv_dtype: the convolutions' multiplies, "float32" or "bfloat16" (float32 accumulation,
      outputs and parameters).
  """
  fused: bool = True
  conv_impl: str = "auto"
  layout: str = "nhwc"
  conv_dtype: str = "float32"
