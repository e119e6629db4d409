"""Optimizer: model weights vs. allocation logits through ``optax.multi_transform``.

Parameters are ``{"model": ..., "alloc": ...}``. The model gets Adam at ``learning_rate``
with optional coupled L2 (added to the gradient, as a TF ``l2_regularizer`` term in the loss
would) on every weight except biases; the allocation logits get their own Adam at
``alloc_learning_rate`` or ``alloc_lr_multiplier x learning_rate`` (default multiplier: the
number of tasks, section V-B). Gradient-norm clipping (global, before both) is optional.
"""

from __future__ import annotations

import jax
import optax


def alloc_learning_rate(config, num_tasks: int) -> float:
  """The logits' learning rate: absolute if ``alloc_learning_rate`` is set, else multiplier x lr."""
  if config.get("alloc_learning_rate", None) is not None:
    return float(config.alloc_learning_rate)
  mult = config.get("alloc_lr_multiplier", None)
  return float(config.learning_rate) * (num_tasks if mult is None else float(mult))


def l2_mask(model_params):
  """True for leaves that get L2: everything but the ``bias*`` leaves of dense/conv/heads.

  GroupNorm ``scale`` / ``offset`` are included, as in the authors' Omniglot setup."""
  def keep(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return not str(name).startswith("bias")
  return jax.tree_util.tree_map_with_path(keep, model_params)


def make_optimizer(config, num_tasks: int) -> optax.GradientTransformation:
  model_tx = [optax.adam(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2,
                         eps=config.adam_eps)]
  if config.l2:
    model_tx.insert(0, optax.add_decayed_weights(config.l2, mask=l2_mask))
  alloc_tx = optax.adam(alloc_learning_rate(config, num_tasks), b1=config.adam_b1,
                        b2=config.adam_b2, eps=config.adam_eps)
  tx = optax.multi_transform(
      {"model": optax.chain(*model_tx), "alloc": alloc_tx},
      lambda params: {k: jax.tree.map(lambda _: k, v) for k, v in params.items()})
  if config.clip_norm:
    tx = optax.chain(optax.clip_by_global_norm(config.clip_norm), tx)
  return tx
