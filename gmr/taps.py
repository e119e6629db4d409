"""Task Adaptive Parameter Sharing (TAPS, Wallingford et al., CVPR 2022) as pure functions.

Each adaptable weight ``W`` of the backbone (a *TAPS layer*) gets, per task ``t``, a delta
``dW_t`` and a score ``s_t``; task ``t`` computes with

    W_t = W_base + I(s_t >= tau) * dW_t

where the indicator is 0/1 forward and straight-through backward, so that
``dL/ds_t = <dL/dW_t, dW_t>`` (the paper's gradient estimate), and the loss gets the
sparsity term ``lambda / L * sum_i |s_i|`` over the ``L`` TAPS layers. Layers whose score
stays below ``tau`` are the base network's: no task-specific parameters.

The authors' code's values, ``tau = 0.1`` and scores initialised at 0.15 (so every layer
starts task-specific, with ``dW = 0`` the network starts as the base network), are the
defaults of the config fields ``taps_tau`` and ``taps_score_init`` (:mod:`gmr.config`).

Parameter trees mirror the model's: ``init(...)`` returns
``{"scores": {path: [T]}, "deltas": {path: [T, *shape]}, "norm": {path: [T, *shape]}}`` as
nested dicts with the same keys as the model's parameters, so checkpoints stay readable.
``norm`` (optional) holds per-task deltas of GroupNorm scales and offsets, always applied.

    import jax, jax.numpy as jnp
    from gmr import taps
    taps.indicator(jnp.array([0.05, 0.1, 0.2]), 0.1)   # [0., 1., 1.]
    w = taps.adapted_weight(w_base, dw, s, tau=0.1)     # W_base + I(s >= tau) * dW
"""

from __future__ import annotations

import fnmatch
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Path = Tuple[str, ...]


# ----------------------------------------------------------------------------- the math
@jax.custom_vjp
def _ste(s, tau):
  return (s >= tau).astype(s.dtype)


def _ste_fwd(s, tau):
  return _ste(s, tau), tau


def _ste_bwd(tau, g):
  return g, jnp.zeros_like(tau)  # straight through: d I / d s := 1


_ste.defvjp(_ste_fwd, _ste_bwd)


def indicator(s, tau):
  """``1[s >= tau]`` forward (exactly 0 or 1); gradient 1 with respect to ``s`` backward."""
  s = jnp.asarray(s)
  return _ste(s, jnp.asarray(tau, s.dtype))


def adapted_weight(w_base, dw, s, tau):
  """``W_base + I(s >= tau) * dW``. Gradients: ``dL/dW_base = dL/dW``,
  ``dL/d dW = I * dL/dW`` and ``dL/ds = <dL/dW, dW>`` (straight-through)."""
  return w_base + indicator(s, tau) * dw


def sparsity_penalty(scores, lam):
  """``lambda / L * sum_i |s_i|`` for the ``L`` scores of one task."""
  scores = [jnp.asarray(s) for s in scores]
  if not scores:
    return jnp.zeros((), jnp.float32)
  return lam / len(scores) * sum(jnp.abs(s).sum() for s in scores)


# ----------------------------------------------------------------------------- trees
def _flat(tree) -> Dict[Path, jax.Array]:
  return traverse_util.flatten_dict(tree)


def _under_heads(path: Path) -> bool:
  return "heads" in path


def adaptable_paths(model_params, patterns: Sequence[str] = ()) -> List[Path]:
  """TAPS layers: the ``kernel*`` leaves of the backbone (not the task heads), in tree order.

  ``patterns`` (fnmatch on ``"/".join(path)``, e.g. ``"layer_2/*"``) restricts them."""
  out = []
  for path in _flat(model_params):
    if not path[-1].startswith("kernel") or _under_heads(path):
      continue
    name = "/".join(path)
    if patterns and not any(fnmatch.fnmatch(name, p) for p in patterns):
      continue
    out.append(path)
  return out


def norm_paths(model_params) -> List[Path]:
  """GroupNorm ``scale`` / ``offset`` leaves of the backbone (per-task normalisation)."""
  return [p for p in _flat(model_params)
          if p[-1].startswith(("scale", "offset")) and not _under_heads(p)]


def init(model_params, num_tasks: int, patterns: Sequence[str], score_init: float,
         task_norm: bool = False) -> Dict:
  """TAPS parameters for ``num_tasks`` tasks: scores at ``score_init`` (config field
  ``taps_score_init``), zero deltas, for the kernels matching ``patterns`` (empty: all)."""
  flat = _flat(model_params)
  paths = adaptable_paths(model_params, patterns)
  scores = {p: jnp.full((num_tasks,), score_init, jnp.float32) for p in paths}
  deltas = {p: jnp.zeros((num_tasks,) + flat[p].shape, flat[p].dtype) for p in paths}
  out = {"scores": traverse_util.unflatten_dict(scores),
         "deltas": traverse_util.unflatten_dict(deltas)}
  if task_norm:
    norms = {p: jnp.zeros((num_tasks,) + flat[p].shape, flat[p].dtype)
             for p in norm_paths(model_params)}
    out["norm"] = traverse_util.unflatten_dict(norms)
  return out


def task_scores(taps_params, task) -> Dict[Path, jax.Array]:
  """``{path: s_task}`` (scalars) for one task."""
  return {p: s[task] for p, s in _flat(taps_params["scores"]).items()}


def adapt(model_params, taps_params, task, tau):
  """The model parameters task ``task`` computes with (traced ``task`` allowed)."""
  flat = dict(_flat(model_params))
  scores = _flat(taps_params["scores"])
  for p, dw in _flat(taps_params["deltas"]).items():
    flat[p] = adapted_weight(flat[p], dw[task], scores[p][task], tau)
  for p, dn in _flat(taps_params.get("norm", {}) or {}).items():
    flat[p] = flat[p] + dn[task]
  return traverse_util.unflatten_dict(flat)


def task_scores_all(taps_params) -> Dict[str, jax.Array]:
  """Every TAPS layer's scores ``[tasks]``, keyed by ``"/".join(path)``, in tree order."""
  return {"/".join(p): s for p, s in _flat(taps_params["scores"]).items()}


def penalty(taps_params, task, lam):
  """The sparsity term of one task's loss."""
  return sparsity_penalty(list(task_scores(taps_params, task).values()), lam)


def summary(taps_params, task_names: Sequence[str], tau) -> Dict:
  """Per task: ``task_specific_fraction`` (of the L TAPS layers), ``added_params`` (deltas of
  the task-specific layers plus per-task norm parameters) and the layers' scores."""
  scores = {p: np.asarray(s) for p, s in _flat(taps_params["scores"]).items()}
  sizes = {p: int(np.prod(d.shape[1:])) for p, d in _flat(taps_params["deltas"]).items()}
  norm = sum(int(np.prod(d.shape[1:])) for d in _flat(taps_params.get("norm", {}) or {}).values())
  out = {"task_specific_fraction": {}, "added_params": {}, "task_specific_layers": {},
         "scores": {}, "num_layers": len(scores)}
  for t, name in enumerate(task_names):
    on = [p for p in scores if scores[p][t] >= tau]
    out["task_specific_fraction"][name] = len(on) / max(len(scores), 1)
    out["added_params"][name] = sum(sizes[p] for p in on) + norm
    out["task_specific_layers"][name] = ["/".join(p) for p in on]
    out["scores"][name] = {"/".join(p): float(scores[p][t]) for p in scores}
  fr = list(out["task_specific_fraction"].values())
  out["task_specific_fraction"]["mean"] = float(np.mean(fr)) if fr else 0.0
  return out
