"""Optimizer: model weights vs. allocation logits through ``optax.multi_transform``.

Parameters are ``{"model": ..., "alloc": ...}``. The model gets Adam at ``learning_rate``
with optional coupled L2 (added to the gradient, as a TF ``l2_regularizer`` term in the loss
would) on every weight except biases; the allocation logits get their own Adam at
``alloc_learning_rate`` or ``alloc_lr_multiplier x learning_rate`` (default multiplier: the
number of tasks, section V-B). ``freeze_backbone`` gives every model weight but the task heads
zero updates (fine-tuning).

Transformations of the whole gradient (global-norm clipping, ``clip_norm``) come first and see
exactly the gradients that are applied: frozen weights' gradients are zeroed before them, so
a frozen backbone cannot shrink the heads' update. The allocation logits (and TAPS's deltas and
scores) are trained, so they are inside the clipped norm, as in ``tf.clip_by_global_norm``
over every trainable variable's gradient.
"""

from __future__ import annotations

import jax
import optax


def alloc_learning_rate(config, num_tasks: int, method) -> float:
  """The learning rate of ``params["alloc"]``: ``method``'s own (a
  :class:`gmr.methods.Method` class or instance, the setup's;
  :meth:`~gmr.methods.Method.learning_rate`: the logits' is absolute if
  ``alloc_learning_rate`` is set, else multiplier x lr)."""
  return method.learning_rate(config, num_tasks)


def l2_mask(model_params):
  """True for leaves that get L2: everything but the ``bias*`` leaves of dense/conv/heads.

  GroupNorm ``scale`` / ``offset`` are included, as in the authors' Omniglot setup."""
  def keep(path, _):
    last = path[-1]
    name = getattr(last, "key", getattr(last, "name", str(last)))
    return not str(name).startswith("bias")
  return jax.tree_util.tree_map_with_path(keep, model_params)


def score_optimizer(config, num_tasks: int, method) -> optax.GradientTransformation:
  """TAPS scores: ``taps_score_optimizer`` ("adam" or "sgd", momentum ``adam_b1``) at
  ``taps_score_learning_rate`` (None: the deltas' learning rate)."""
  lr = config.taps_score_learning_rate
  lr = alloc_learning_rate(config, num_tasks, method) if lr is None else float(lr)
  if config.taps_score_optimizer == "sgd":
    return optax.sgd(lr, momentum=config.adam_b1 or None)
  return optax.adam(lr, b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)


def frozen_mask(model_params):
  """True for backbone leaves (everything but the task heads): frozen by ``freeze_backbone``."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(getattr(p, "key", None) == "heads" for p in path), model_params)


def make_optimizer(config, num_tasks: int, method) -> optax.GradientTransformation:
  """The optimizer of a run (this module's docstring) for ``num_tasks`` tasks and ``method``
  (a :class:`gmr.methods.Method` class or instance: its ``"alloc"`` learning rate and
  parameter groups), over ``{"model": ..., "alloc": ...}`` parameter trees."""
  model_tx = [optax.adam(config.learning_rate, b1=config.adam_b1, b2=config.adam_b2,
                         eps=config.adam_eps)]
  if config.l2:
    model_tx.insert(0, optax.add_decayed_weights(config.l2, mask=l2_mask))
  alloc_tx = optax.adam(alloc_learning_rate(config, num_tasks, method), b1=config.adam_b1,
                        b2=config.adam_b2, eps=config.adam_eps)
  freeze = bool(config.freeze_backbone)

  def frozen(params):
    """True for the leaves that never change (the backbone when ``freeze_backbone``)."""
    out = {k: jax.tree.map(lambda _: False, v) for k, v in params.items()}
    if freeze:
      out["model"] = frozen_mask(params["model"])
    return out

  def labels(params):
    out = {k: jax.tree.map(lambda _: k, v) for k, v in params.items()}
    if out.get("alloc"):  # the method's own groups (TAPS: its scores)
      out["alloc"] = method.param_labels(out["alloc"])
    if freeze:  # fine-tuning: only heads (and alloc) learn
      out["model"] = jax.tree.map(lambda f: "frozen" if f else "model", frozen(params)["model"])
    return out

  tx = optax.multi_transform(
      {"model": optax.chain(*model_tx), "alloc": alloc_tx, "frozen": optax.set_to_zero(),
       "scores": score_optimizer(config, num_tasks, method)}, labels)
  whole = []  # transformations that read the whole gradient
  if config.clip_norm:
    whole.append(optax.clip_by_global_norm(config.clip_norm))
  if whole:
    zero_frozen = [optax.masked(optax.set_to_zero(), frozen)] if freeze else []
    tx = optax.chain(*zero_frozen, *whole, tx)
  return tx


# Settings that change how the parameters are updated, not the model, the data or the objective:
# a run can continue from its checkpoint under new values of these (``--change_optimizer``).
OPTIMIZER_FIELDS = ("learning_rate", "alloc_learning_rate", "alloc_lr_multiplier", "adam_b1",
                    "adam_b2", "adam_eps", "clip_norm", "taps_learning_rate",
                    "taps_score_learning_rate")


def _find_partition(state):
  if isinstance(state, optax.MultiTransformState):
    return state
  if isinstance(state, tuple):
    for s in state:
      found = _find_partition(s)
      if found is not None:
        return found
  return None


def _put_partition(state, value):
  if isinstance(state, optax.MultiTransformState):
    return value
  if isinstance(state, tuple):
    parts = [_put_partition(s, value) for s in state]
    return type(state)(*parts) if hasattr(state, "_fields") else tuple(parts)
  return state


def carry_over_state(old, new):
  """Continue an optimizer under changed settings (:data:`OPTIMIZER_FIELDS`).

  ``old``: the optimizer state of a checkpoint, made by :func:`make_optimizer` under the
  earlier settings; ``new``: ``make_optimizer(...).init(params)`` under the new ones (whole-
  gradient transformations such as clipping may have come or gone, which changes the state's
  structure). Returns ``(state, reset)``: ``new`` with the per-group states of ``old`` (Adam's
  step count, first and second moments; SGD's momentum) copied in wherever that group's state
  has the same structure and shapes, and the sorted group labels whose state could not be
  carried (it starts fresh; e.g. the TAPS scores' momentum when ``adam_b1`` goes to 0).
  Raises ``ValueError`` if either state has no parameter groups.
  """
  po, pn = _find_partition(old), _find_partition(new)
  if po is None or pn is None:
    raise ValueError("optimizer state without parameter groups (not made by make_optimizer)")
  inner, reset = dict(pn.inner_states), []
  for label, s_new in pn.inner_states.items():
    s_old = po.inner_states.get(label)
    same = (s_old is not None and jax.tree.structure(s_old) == jax.tree.structure(s_new) and
            all(getattr(a, "shape", ()) == getattr(b, "shape", ())
                for a, b in zip(jax.tree.leaves(s_old), jax.tree.leaves(s_new))))
    if same:
      inner[label] = s_old
    else:
      reset.append(label)
  return _put_partition(new, pn._replace(inner_states=inner)), sorted(reset)
