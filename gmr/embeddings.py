"""Task embeddings from learned allocations (section III-E) and cluster discovery (V-C).

A task's embedding is the concatenation of its greedy 0/1 allocation rows over all routed
layers. For TAPS, whose tasks all use every component, it is the task's 0/1 vector of
task-specific layers (score >= tau), one entry per TAPS layer: :func:`run_embeddings` picks the
right one from a run's ``results.json``. Pure numpy.

  emb = task_embeddings(results["allocations"])
  sim = cosine_similarity(emb)
  labels = cluster(emb, 3)
  adjusted_rand_index(true_labels, labels)
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

Allocations = Union[Dict[str, Sequence], Sequence[Sequence]]


def task_embeddings(allocations: Allocations) -> np.ndarray:
  """``[T, sum_l C_l]`` 0/1: the allocation rows of all routed layers, in layer order.

  ``allocations``: ``{"layer_0": [T, C0], "layer_1": ...}`` (a run's ``results.json``) or a
  list of ``[T, C_l]`` matrices."""
  if isinstance(allocations, dict):
    keys = sorted(allocations, key=lambda k: int(k.rsplit("_", 1)[1]))
    mats = [np.asarray(allocations[k], np.float32) for k in keys]
  else:
    mats = [np.asarray(m, np.float32) for m in allocations]
  return np.concatenate(mats, axis=1)


def run_embeddings(results: dict) -> Tuple[np.ndarray, List[str]]:
  """A run's task embeddings ``[T, D]`` and a name per column, from its ``results.json``.

  Routed methods: the greedy allocations (columns ``layer_<l>/<component>``). TAPS: 1 where the
  task's layer is task-specific (columns = the TAPS layers), because a TAPS task uses every
  component and its allocation rows would make every task look the same."""
  taps = results.get("taps")
  if taps:
    tasks = results["tasks"]
    layers = list(taps["scores"][tasks[0]])
    emb = np.array([[float(l in set(taps["task_specific_layers"][t])) for l in layers]
                    for t in tasks], np.float32).reshape(len(tasks), len(layers))
    return emb, layers
  alloc = results["allocations"]
  keys = sorted(alloc, key=lambda k: int(k.rsplit("_", 1)[1]))
  names = [f"{k}/{c}" for k in keys for c in range(np.asarray(alloc[k]).shape[1])]
  return task_embeddings(alloc), names


def cosine_similarity(emb: np.ndarray) -> np.ndarray:
  """``[T, T]`` cosine similarities; a task with an all-zero embedding has similarity 0 to
  every task (itself included)."""
  emb = np.asarray(emb, np.float64)
  norm = np.linalg.norm(emb, axis=1)
  safe = np.where(norm > 0, norm, 1.0)
  sim = (emb / safe[:, None]) @ (emb / safe[:, None]).T
  sim[norm == 0, :] = 0.0
  sim[:, norm == 0] = 0.0
  return sim


def identical_groups(emb: np.ndarray) -> List[List[int]]:
  """Tasks grouped by identical embeddings, groups ordered by their first task."""
  groups: Dict[bytes, List[int]] = {}
  for t, row in enumerate(np.asarray(emb)):
    groups.setdefault(np.asarray(row, np.float32).tobytes(), []).append(t)
  return sorted(groups.values(), key=lambda g: g[0])


def cluster(emb: np.ndarray, k: int) -> np.ndarray:
  """Deterministic ``k``-way agglomerative clustering (average linkage, cosine distance).

  Returns integer labels ``[T]`` numbered by first appearance."""
  emb = np.asarray(emb)
  t = len(emb)
  if not 1 <= k <= t:
    raise ValueError(f"k must be in [1, {t}], got {k}")
  dist = 1.0 - cosine_similarity(emb)
  # Average linkage by the Lance-Williams update: the distance of a merged cluster to another
  # is the size-weighted mean of its parts' distances (= the mean over all pairs, up to
  # rounding), so each merge is O(T) instead of recomputing every block mean. Ties: the first
  # pair in row-major order within 1e-12 of the smallest distance.
  clusters: List[List[int]] = [[i] for i in range(t)]
  d = dist.copy()
  np.fill_diagonal(d, np.inf)
  sizes = np.ones(t)
  while len(clusters) > k:
    upper = np.where(np.triu(np.ones_like(d, bool), 1), d, np.inf)
    a, b = np.argwhere(upper <= upper.min() + 1e-12)[0]
    merged = (sizes[a] * d[a] + sizes[b] * d[b]) / (sizes[a] + sizes[b])
    d[a], d[:, a] = merged, merged
    d[a, a] = np.inf
    sizes[a] += sizes[b]
    d = np.delete(np.delete(d, b, 0), b, 1)
    sizes = np.delete(sizes, b)
    clusters[a] = sorted(clusters[a] + clusters[b])
    del clusters[b]
  labels = np.empty(t, np.int64)
  for i, members in enumerate(sorted(clusters, key=lambda c: c[0])):
    labels[members] = i
  return labels


def adjusted_rand_index(labels_true: Sequence[int], labels_pred: Sequence[int]) -> float:
  """Hubert & Arabie's adjusted Rand index (1 = the same partition, ~0 = chance)."""
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
  """``{"mnist": [20, ..., 29], ...}`` (a suite's ``info["clusters"]``) -> labels ``[T]``."""
  labels = np.full(num_tasks, -1, np.int64)
  for i, (_, members) in enumerate(sorted(clusters.items(), key=lambda kv: min(kv[1]))):
    labels[list(members)] = i
  return labels


def cluster_report(results: dict) -> dict:
  """For a run's results with known ``task_clusters``: distinct embeddings per cluster and
  the ARI of a k-way clustering of the embeddings (k = number of true clusters); embeddings as
  :func:`run_embeddings` (TAPS: the task-specific layers)."""
  emb, _ = run_embeddings(results)
  clusters = results.get("task_clusters") or {}
  if not clusters:
    raise ValueError("results have no task_clusters")
  truth = labels_from_clusters(clusters, len(emb))
  pred = cluster(emb, len(clusters))
  distinct = {name: len({emb[t].tobytes() for t in members}) for name, members in clusters.items()}
  sim = cosine_similarity(emb)
  extra = {}
  if not results.get("taps") and isinstance(results.get("allocations"), dict):
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


def neighbour_agreement(sim: np.ndarray, clusters: Dict[str, Sequence[int]]) -> float:
  """Fraction of tasks whose most similar other task is of their own true cluster (a task
  with several equally similar nearest tasks counts the fraction of those in its cluster).
  Needs no clustering algorithm, so one outlier task moves it by 1 / T, where it can take a
  whole cluster of a k-way clustering (and the ARI with it)."""
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
  """Which routed layers carry the clusters: per layer, the ARI of a k-way clustering of that
  layer's allocation rows alone and the mean cosine similarity within / between true clusters
  (as :func:`within_between`)."""
  truth = labels_from_clusters(clusters, len(next(iter(allocations.values()))))
  out = {}
  for k in sorted(allocations, key=lambda k: int(k.rsplit("_", 1)[1])):
    a = np.asarray(allocations[k], np.float32)
    out[k] = {"ari": adjusted_rand_index(truth, cluster(a, len(clusters))),
              **within_between(cosine_similarity(a), clusters)}
  return out


def within_between(sim: np.ndarray, clusters: Dict[str, Sequence[int]]) -> Dict[str, float]:
  """``within``: mean cosine similarity over pairs of different tasks of one true cluster;
  ``between``: over pairs of tasks of different clusters (both over all such pairs). Embeddings
  that know the clusters have ``within`` well above ``between``; random ones have them equal."""
  labels = labels_from_clusters(clusters, len(sim))
  known = labels >= 0  # tasks in no cluster take part in no pair
  pair = known[:, None] & known[None, :] & ~np.eye(len(sim), dtype=bool)
  same = labels[:, None] == labels[None, :]
  mean = lambda m: float(sim[m].mean()) if m.any() else float("nan")
  return {"within": mean(pair & same), "between": mean(pair & ~same)}


def decided_fraction(probabilities: Allocations, margin: float = 0.1) -> float:
  """Fraction of the (layer, task, component) allocation probabilities that are decided:
  below ``margin`` or above ``1 - margin``. ``probabilities`` as in :func:`task_embeddings`
  (a run's ``results["probabilities"]``)."""
  return float(np.mean(decided_mask(probabilities, margin)))


def decided_mask(probabilities: Allocations, margin: float = 0.1) -> np.ndarray:
  """``[T, sum_l C_l]`` bool: P(on) below ``margin`` or above ``1 - margin``."""
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
  on or all off)."""
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
  """Mean cosine similarity between the tasks of two true clusters (within a cluster: over
  pairs of different tasks). Clusters are found when the diagonal clearly exceeds the rest."""
  out = {}
  for a, ma in clusters.items():
    out[a] = {}
    for b, mb in clusters.items():
      block = sim[np.ix_(list(ma), list(mb))]
      if a == b:
        block = block[~np.eye(len(ma), dtype=bool)] if len(ma) > 1 else np.array([np.nan])
      out[a][b] = float(np.mean(block))
  return out
