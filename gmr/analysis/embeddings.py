"""Task embeddings from learned allocations (section III-E) and cluster discovery (V-C).

A task's embedding is the concatenation of its greedy 0/1 allocation rows over all routed
layers. For TAPS, whose tasks all use every component, it is the task's 0/1 vector of
task-specific layers (score >= tau), one entry per TAPS layer: :func:`run_embeddings` picks the
right one from a run's ``results.json``. Numpy, and ``scipy.cluster.hierarchy`` for the
clustering.

  emb = task_embeddings(results["allocations"])
  sim = cosine_similarity(emb)
  labels = cluster(emb, 3)
  adjusted_rand_index(true_labels, labels)
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

from gmr.analysis import readers

Allocations = Union[Dict[str, Sequence], Sequence[Sequence]]

__all__ = ["Allocations", "task_embeddings", "run_embeddings", "cosine_similarity",
           "identical_groups", "cluster", "adjusted_rand_index", "labels_from_clusters",
           "cluster_report", "neighbour_agreement", "per_layer_report", "within_between",
           "decided_fraction", "decided_mask", "within_cluster_disagreement",
           "cluster_similarity"]


def _layer_order(allocations: Dict[str, Sequence]) -> List[str]:
  """``layer_<l>`` keys by their number ``l`` (``layer_10`` after ``layer_2``)."""
  return sorted(allocations, key=lambda k: int(k.rsplit("_", 1)[1]))


def task_embeddings(allocations: Allocations) -> np.ndarray:
  """The allocation rows of all routed layers, concatenated in layer order.

  ``allocations``: ``{"layer_0": [T, C0], "layer_1": ...}`` (a run's ``results.json``; keys
  ordered by their number) or a list of ``[T, C_l]`` matrices. Returns float32
  ``[T, sum_l C_l]`` (0/1 for allocations; probabilities pass through unchanged). Raises
  ``ValueError`` if the layers' task counts differ or there are no layers, ``ValueError`` /
  ``IndexError`` for a dict key not of the form ``<name>_<number>``."""
  if isinstance(allocations, dict):
    mats = [np.asarray(allocations[k], np.float32) for k in _layer_order(allocations)]
  else:
    mats = [np.asarray(m, np.float32) for m in allocations]
  return np.concatenate(mats, axis=1)


def run_embeddings(results: dict) -> Tuple[np.ndarray, List[str]]:
  """A run's task embeddings and a name per column, from its ``results.json`` dict.

  The method's own embedding when it has one (:meth:`gmr.analysis.readers.Reader.task_embedding`:
  TAPS's task-specific layers), else the greedy allocations, float32 ``[T, sum_l C_l]`` with
  columns ``layer_<l>/<component>``. Raises ``KeyError`` for a missing field."""
  own = readers.of_results(results).task_embedding(results)
  if own is not None:
    return own
  alloc = results["allocations"]
  names = [f"{k}/{c}" for k in _layer_order(alloc) for c in range(np.asarray(alloc[k]).shape[1])]
  return task_embeddings(alloc), names


def cosine_similarity(emb: np.ndarray) -> np.ndarray:
  """Cosine similarities of the rows of ``emb`` (``[T, D]``, any real dtype): float64
  ``[T, T]``, in ``[-1, 1]`` up to rounding. A task with an all-zero embedding has similarity 0
  to every task (itself included), not nan. Raises ``numpy.exceptions.AxisError`` (a
  ``ValueError``) if ``emb`` is 1-D."""
  emb = np.asarray(emb, np.float64)
  norm = np.linalg.norm(emb, axis=1)
  safe = np.where(norm > 0, norm, 1.0)
  sim = (emb / safe[:, None]) @ (emb / safe[:, None]).T
  sim[norm == 0, :] = 0.0
  sim[:, norm == 0] = 0.0
  return sim


def identical_groups(emb: np.ndarray) -> List[List[int]]:
  """Tasks grouped by identical embeddings: lists of task indices (ascending), groups ordered
  by their first task. ``emb``: ``[T, D]``, compared as float32 (bit-identical rows only).
  Raises nothing for an empty ``emb`` (returns ``[]``)."""
  groups: Dict[bytes, List[int]] = {}
  for t, row in enumerate(np.asarray(emb)):
    groups.setdefault(np.asarray(row, np.float32).tobytes(), []).append(t)
  return sorted(groups.values(), key=lambda g: g[0])


def cluster(emb: np.ndarray, k: int) -> np.ndarray:
  """Deterministic ``k``-way agglomerative clustering: average linkage on the cosine distance
  ``1 - cosine_similarity(emb)`` (``scipy.cluster.hierarchy.linkage``, ``method="average"``).

  ``emb``: ``[T, D]``, any real dtype. Returns int64 labels ``[T]`` in ``0..k-1``, numbered by
  first appearance (task 0 is in cluster 0), with exactly ``k`` clusters. An all-zero row has
  distance 1 to every other row (:func:`cosine_similarity`), all-zero rows among themselves
  included; distances are rounded to 1e-12, so float noise does not decide between tied pairs.
  Where merge distances tie (identical rows, all-zero embeddings), the tree is cut after its
  first ``T - k`` merges in scipy's order, which is one of the average-linkage clusterings the
  ties allow. Raises ``ValueError`` if ``k`` is not in ``[1, T]`` or ``emb`` holds a non-finite
  value."""
  emb = np.asarray(emb)
  t = len(emb)
  if not 1 <= k <= t:
    raise ValueError(f"k must be in [1, {t}], got {k}")
  if not np.all(np.isfinite(emb)):
    raise ValueError("emb holds a non-finite value (nan or inf)")
  if t == 1:
    return np.zeros(1, np.int64)
  dist = 1.0 - cosine_similarity(emb)
  dist = np.round(np.maximum((dist + dist.T) / 2, 0.0), 12)  # symmetric, >= 0, noise-free ties
  np.fill_diagonal(dist, 0.0)  # an all-zero row is 1 from itself by cosine_similarity
  tree = hierarchy.linkage(distance.squareform(dist, checks=False), method="average")
  # fcluster's maxclust cuts at a height, and tied heights (identical rows; all-zero rows at
  # distance 1) can leave fewer than k clusters. The rows of ``tree`` are its merges in order
  # (sorted by height, ties in the order linkage made them), so with the merge rank as height
  # the cut below the (T - k + 1)-th merge gives exactly k clusters.
  ranked = tree.copy()
  ranked[:, 2] = np.arange(1, t)
  flat = hierarchy.fcluster(ranked, k, criterion="maxclust")
  _, first, inverse = np.unique(flat, return_index=True, return_inverse=True)
  return np.argsort(np.argsort(first)).astype(np.int64)[inverse.reshape(-1)]


def adjusted_rand_index(labels_true: Sequence[int], labels_pred: Sequence[int]) -> float:
  """Hubert & Arabie's adjusted Rand index of two labelings of the same ``T`` items (1 = the
  same partition, ~0 = chance, negative = worse than chance); 1.0 when both partitions are
  trivial (all one cluster or all singletons). Labels: ``[T]`` of any hashable-by-numpy dtype
  (ints, strings). Returns a Python float. Raises ``ValueError`` if the shapes differ or the
  labelings are empty."""
  a, b = np.asarray(labels_true), np.asarray(labels_pred)
  if a.shape != b.shape:
    raise ValueError("label arrays differ in length")
  _, ai = np.unique(a, return_inverse=True)
  _, bi = np.unique(b, return_inverse=True)
  table = np.zeros((ai.max() + 1, bi.max() + 1), np.int64)
  np.add.at(table, (ai, bi), 1)
  comb = lambda n: n * (n - 1) / 2.0
  index = comb(table).sum()
  rows, cols = comb(table.sum(1)).sum(), comb(table.sum(0)).sum()
  expected = rows * cols / comb(len(a)) if len(a) > 1 else 0.0
  maximum = (rows + cols) / 2.0
  if maximum == expected:  # both partitions trivial (all one cluster or all singletons)
    return 1.0
  return float((index - expected) / (maximum - expected))


def labels_from_clusters(clusters: Dict[str, Sequence[int]], num_tasks: int) -> np.ndarray:
  """``{"mnist": [20, ..., 29], ...}`` (a suite's ``info["clusters"]``) -> int64 labels
  ``[num_tasks]``: clusters numbered by their smallest task, -1 for a task in no cluster.
  Raises ``IndexError`` for a task index outside ``[0, num_tasks)`` and ``ValueError`` for an
  empty cluster."""
  labels = np.full(num_tasks, -1, np.int64)
  for i, (_, members) in enumerate(sorted(clusters.items(), key=lambda kv: min(kv[1]))):
    labels[list(members)] = i
  return labels


def cluster_report(results: dict) -> dict:
  """For a run's results with known ``task_clusters`` (``{name: [task indices]}``): how well
  the task embeddings (:func:`run_embeddings`; TAPS: the task-specific layers) show the
  clusters.

  Returns ``distinct_embeddings`` (``{name: int}``), ``ari`` (float: :func:`cluster` with k =
  the number of true clusters against the truth), ``labels`` (that clustering, list of ``T``
  ints), ``contingency`` (``{name: [k] counts of its tasks per found cluster]}``),
  ``cluster_similarity`` (:func:`cluster_similarity`), ``neighbour_agreement``
  (:func:`neighbour_agreement`), ``within`` / ``between`` (:func:`within_between`) and, for
  routed runs with dict ``allocations``, ``per_layer`` (:func:`per_layer_report`) and, with
  ``probabilities``, ``disagreement`` (:func:`within_cluster_disagreement`). Raises
  ``ValueError`` if the results have no ``task_clusters`` (or more clusters than tasks) and
  ``KeyError`` as :func:`run_embeddings`."""
  emb, _ = run_embeddings(results)
  clusters = results.get("task_clusters") or {}
  if not clusters:
    raise ValueError("results have no task_clusters")
  truth = labels_from_clusters(clusters, len(emb))
  pred = cluster(emb, len(clusters))
  distinct = {name: len({emb[t].tobytes() for t in members}) for name, members in clusters.items()}
  sim = cosine_similarity(emb)
  extra = {}
  if readers.embeds_allocation(results) and isinstance(results.get("allocations"), dict):
    extra["per_layer"] = per_layer_report(results["allocations"], clusters)
    if results.get("probabilities"):
      extra["disagreement"] = within_cluster_disagreement(
          results["allocations"], results["probabilities"], clusters)
  return {"distinct_embeddings": distinct, "ari": adjusted_rand_index(truth, pred),
          "labels": pred.tolist(),
          "contingency": {name: np.bincount(pred[list(members)], minlength=len(clusters)).tolist()
                          for name, members in clusters.items()},
          "cluster_similarity": cluster_similarity(sim, clusters),
          "neighbour_agreement": neighbour_agreement(sim, clusters),
          **within_between(sim, clusters), **extra}


def history_cluster_row(probabilities: Allocations, clusters: Dict[str, Sequence[int]]) -> dict:
  """The cluster report of one allocation-history point (P(on) per layer, as a run's
  ``metrics.jsonl`` ``alloc`` lines hold them), flat: the greedy allocations (P(on) >= 0.5)
  give ``ari``, ``neighbour_agreement``, ``distinct_<cluster>``, ``differing_<cluster>`` and
  ``differing_decided_<cluster>`` (:func:`within_cluster_disagreement`), and per routed layer
  ``ari_<layer>``, ``within_<layer>``, ``between_<layer>`` (:func:`per_layer_report`);
  ``decided`` is :func:`decided_fraction` of the probabilities. All Python numbers. Raises as
  :func:`cluster_report`."""
  alloc = {l: (np.asarray(p) >= 0.5).astype(int) for l, p in probabilities.items()}
  rep = cluster_report({"allocations": alloc, "probabilities": probabilities,
                        "task_clusters": clusters})
  layers = {f"{m}_{l}": v[m] for l, v in rep["per_layer"].items()
            for m in ("ari", "within", "between")}
  return {"ari": rep["ari"], "neighbour_agreement": rep["neighbour_agreement"],
          "decided": decided_fraction(probabilities),
          **{f"distinct_{k}": v for k, v in rep["distinct_embeddings"].items()},
          **{f"{m}_{k}": v[m] for k, v in rep["disagreement"].items()
             for m in ("differing", "differing_decided")}, **layers}


def neighbour_agreement(sim: np.ndarray, clusters: Dict[str, Sequence[int]]) -> float:
  """Fraction of tasks whose most similar other task is of their own true cluster (a task
  with several equally similar nearest tasks, within 1e-12, counts the fraction of those in
  its cluster). Needs no clustering algorithm, so one outlier task moves it by 1 / T, where it
  can take a whole cluster of a k-way clustering (and the ARI with it).

  ``sim``: ``[T, T]`` similarities (:func:`cosine_similarity`); ``clusters``: ``{name: [task
  indices]}``, tasks in no cluster are left out. Returns a Python float in ``[0, 1]``, nan if
  no task has another clustered task. Raises ``IndexError`` as :func:`labels_from_clusters`."""
  labels = labels_from_clusters(clusters, len(sim))
  scores = []
  for t in np.flatnonzero(labels >= 0):
    others = np.flatnonzero((labels >= 0) & (np.arange(len(sim)) != t))
    if not len(others):
      continue
    s = sim[t, others]
    nearest = others[s >= s.max() - 1e-12]
    scores.append(float(np.mean(labels[nearest] == labels[t])))
  return float(np.mean(scores)) if scores else float("nan")


def per_layer_report(allocations: Dict[str, Sequence],
                     clusters: Dict[str, Sequence[int]]) -> Dict[str, Dict[str, float]]:
  """Which routed layers carry the clusters: per layer (keys in layer order), the ARI of a
  k-way :func:`cluster` of that layer's ``[T, C_l]`` allocation rows alone (k = the number of
  true clusters) and the mean cosine similarity ``within`` / ``between`` true clusters (as
  :func:`within_between`); all Python floats. Raises ``ValueError`` for more clusters than
  tasks, ``IndexError`` as :func:`labels_from_clusters`."""
  truth = labels_from_clusters(clusters, len(next(iter(allocations.values()))))
  out = {}
  for k in _layer_order(allocations):
    a = np.asarray(allocations[k], np.float32)
    out[k] = {"ari": adjusted_rand_index(truth, cluster(a, len(clusters))),
              **within_between(cosine_similarity(a), clusters)}
  return out


def within_between(sim: np.ndarray, clusters: Dict[str, Sequence[int]]) -> Dict[str, float]:
  """``within``: mean similarity over pairs of different tasks of one true cluster;
  ``between``: over pairs of tasks of different clusters (both over all such ordered pairs;
  tasks in no cluster take part in none). Embeddings that know the clusters have ``within``
  well above ``between``; random ones have them equal.

  ``sim``: ``[T, T]``; returns Python floats, nan where there is no such pair. Raises
  ``IndexError`` as :func:`labels_from_clusters`."""
  labels = labels_from_clusters(clusters, len(sim))
  known = labels >= 0  # tasks in no cluster take part in no pair
  pair = known[:, None] & known[None, :] & ~np.eye(len(sim), dtype=bool)
  same = labels[:, None] == labels[None, :]
  mean = lambda m: float(sim[m].mean()) if m.any() else float("nan")
  return {"within": mean(pair & same), "between": mean(pair & ~same)}


def decided_fraction(probabilities: Allocations, margin: float = 0.1) -> float:
  """Fraction of the (layer, task, component) allocation probabilities that are decided:
  below ``margin`` or above ``1 - margin`` (a Python float in ``[0, 1]``). ``probabilities`` as
  in :func:`task_embeddings` (a run's ``results["probabilities"]``, P(on) per entry). Raises as
  :func:`task_embeddings`."""
  return float(np.mean(decided_mask(probabilities, margin)))


def decided_mask(probabilities: Allocations, margin: float = 0.1) -> np.ndarray:
  """bool ``[T, sum_l C_l]``: P(on) below ``margin`` or above ``1 - margin`` (layers
  concatenated as :func:`task_embeddings`). Raises as :func:`task_embeddings`."""
  p = task_embeddings(probabilities)
  return (p < margin) | (p > 1 - margin)


def within_cluster_disagreement(allocations: Allocations, probabilities: Allocations,
                                clusters: Dict[str, Sequence[int]],
                                margin: float = 0.1) -> Dict[str, Dict[str, float]]:
  """Per true cluster, over pairs of its tasks: ``differing``, the mean number of embedding
  entries (components) in which two tasks differ; ``differing_decided``, how many of those both
  tasks have decided (probability below ``margin`` or above ``1 - margin``, as
  :func:`decided_fraction`). A difference on an undecided entry is one a sampled allocation
  still flips; a decided one is a choice the two tasks have made differently (training can
  still undo it, more slowly). ``agreed``: entries every task of the cluster has the same (all
  on or all off).

  ``allocations`` / ``probabilities``: as :func:`task_embeddings`, the same ``[T, D]`` shape;
  ``clusters``: ``{name: [task indices]}``. Returns ``{name: {"differing": float,
  "differing_decided": float, "agreed": int}}``; the two means are nan for a one-task cluster
  (no pairs). Raises as :func:`task_embeddings`, ``ValueError`` if the two shapes differ and
  ``IndexError`` for a task index out of range."""
  emb = task_embeddings(allocations)
  decided = decided_mask(probabilities, margin)
  out = {}
  for name, members in clusters.items():
    m = list(members)
    pairs = np.triu_indices(len(m), 1)  # each unordered pair of the cluster's tasks once
    d = (emb[m][:, None] != emb[m][None])[pairs]  # [pairs, D]
    both = (decided[m][:, None] & decided[m][None])[pairs]
    nan = float("nan")
    out[name] = {"differing": float(d.sum(1).mean()) if len(d) else nan,
                 "differing_decided": float((d & both).sum(1).mean()) if len(d) else nan,
                 "agreed": int(np.sum(emb[m].min(0) == emb[m].max(0)))}
  return out


def cluster_similarity(sim: np.ndarray, clusters: Dict[str, Sequence[int]]) -> Dict[str, Dict]:
  """Mean similarity between the tasks of two true clusters (within a cluster: over pairs of
  different tasks; nan for a one-task cluster). Clusters are found when the diagonal clearly
  exceeds the rest.

  ``sim``: ``[T, T]``; ``clusters``: ``{name: [task indices]}``. Returns ``{a: {b: float}}``
  over all pairs of names. Raises ``IndexError`` for a task index outside ``sim``."""
  out = {}
  for a, ma in clusters.items():
    out[a] = {}
    for b, mb in clusters.items():
      block = sim[np.ix_(list(ma), list(mb))]
      if a == b:
        block = block[~np.eye(len(ma), dtype=bool)] if len(ma) > 1 else np.array([np.nan])
      out[a][b] = float(np.mean(block))
  return out
