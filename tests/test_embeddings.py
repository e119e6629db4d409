"""gmr.analysis.embeddings: task embeddings, similarities, identical groups, clustering (against
a brute-force average-linkage reference) and the adjusted Rand index."""

import itertools

import numpy as np
import pytest

from gmr.analysis import embeddings as E


def test_embeddings_concatenate_layers_in_order():
  alloc = {"layer_1": [[0, 1], [1, 1]], "layer_0": [[1, 0, 0], [1, 1, 0]], "layer_10": [[1], [0]]}
  emb = E.task_embeddings(alloc)
  np.testing.assert_array_equal(emb, [[1, 0, 0, 0, 1, 1], [1, 1, 0, 1, 1, 0]])


def test_cosine_similarity_values_and_zero_rows():
  emb = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0]], float)
  s = E.cosine_similarity(emb)
  assert s[0, 0] == pytest.approx(1.0) and s[0, 1] == pytest.approx(1 / np.sqrt(2))
  assert s[0, 2] == 0.0 and s[3, 3] == 0.0 and np.allclose(s, s.T)


def test_identical_groups():
  emb = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [1, 1]])
  assert E.identical_groups(emb) == [[0, 2], [1, 3], [4]]


def test_adjusted_rand_index_known_values():
  assert E.adjusted_rand_index([0, 0, 1, 1], [5, 5, 7, 7]) == 1.0  # relabelled: same partition
  a = [0, 0, 0, 1, 1, 1, 2, 2, 2]
  b = [0, 0, 1, 1, 1, 2, 2, 2, 2]
  # table [[2,1,0],[0,2,1],[0,0,3]]: index = 1+1+3 = 5; rows = 3*3 = 9; cols = 1+3+6 = 10
  # expected = 90/36 = 2.5; max = 9.5 -> ARI = 2.5 / 7
  assert E.adjusted_rand_index(a, b) == pytest.approx(2.5 / 7)
  assert E.adjusted_rand_index([0, 1, 0, 1], [0, 0, 1, 1]) == pytest.approx(-0.5)


def test_cluster_recovers_planted_groups():
  rng = np.random.default_rng(0)
  protos = rng.integers(0, 2, (3, 24))
  truth = np.repeat(np.arange(3), 5)
  emb = protos[truth].copy()
  flip = rng.random(emb.shape) < 0.05  # a little noise
  emb[flip] = 1 - emb[flip]
  labels = E.cluster(emb, 3)
  assert E.adjusted_rand_index(truth, labels) == 1.0
  assert E.cluster(emb, 3).tolist() == labels.tolist()  # deterministic
  with pytest.raises(ValueError, match="k must be in"):
    E.cluster(emb, 0)


def test_cluster_report_on_results():
  alloc = {"layer_0": [[1, 0, 0], [1, 0, 0], [0, 1, 1], [0, 1, 1], [0, 1, 0]]}
  res = {"allocations": alloc, "task_clusters": {"a": [0, 1], "b": [2, 3, 4]}}
  rep = E.cluster_report(res)
  assert rep["distinct_embeddings"] == {"a": 1, "b": 2} and rep["ari"] == 1.0
  assert rep["contingency"] == {"a": [2, 0], "b": [0, 3]}
  # b's pairs: (2,3) identical = 1; (2,4), (3,4): [0,1,1].[0,1,0] / (sqrt2 * 1) = 0.7071
  cs = rep["cluster_similarity"]
  assert cs["a"]["a"] == 1.0 and cs["a"]["b"] == 0.0 == cs["b"]["a"]
  np.testing.assert_allclose(cs["b"]["b"], (1 + 2 / np.sqrt(2)) / 3)
  # within: the 1 pair of a (1.0) and the 3 of b, over the 4 pairs; between: 6 pairs, all 0
  np.testing.assert_allclose(rep["within"], (1 + 1 + 2 / np.sqrt(2)) / 4)
  assert rep["between"] == 0.0


def test_per_layer_report_finds_the_layer_that_carries_the_clusters():
  """Layer 0 separates clusters a and b, layer 1 is the same for every task: the whole
  embedding still clusters (ARI 1), per layer only layer 0 does."""
  alloc = {"layer_1": [[1, 1, 0]] * 4, "layer_0": [[1, 0], [1, 0], [0, 1], [0, 1]]}
  res = {"allocations": alloc, "task_clusters": {"a": [0, 1], "b": [2, 3]}}
  rep = E.cluster_report(res)
  assert rep["ari"] == 1.0 and list(rep["per_layer"]) == ["layer_0", "layer_1"]
  l0, l1 = rep["per_layer"]["layer_0"], rep["per_layer"]["layer_1"]
  assert l0["ari"] == 1.0 and l0["within"] == pytest.approx(1.0) and l0["between"] == 0.0
  assert l1["within"] == pytest.approx(1.0) == l1["between"] and l1["ari"] < 0.5  # 2 clusters of identical rows


def test_neighbour_agreement_is_robust_to_one_outlier():
  """Clusters a (0-3) and b (4-7) with task 7 an outlier: a 2-way average-linkage clustering
  spends a cluster on the outlier (ARI far below 1), the nearest-task agreement loses only it."""
  a, b = [1, 1, 1, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1, 0, 0]
  emb = np.array([a] * 4 + [b] * 3 + [[0, 0, 0, 0, 0, 0, 1, 1]], np.float32)
  clusters = {"a": [0, 1, 2, 3], "b": [4, 5, 6, 7]}
  rep = E.cluster_report({"allocations": {"layer_0": emb.tolist()}, "task_clusters": clusters})
  assert rep["ari"] < 0.2
  # tasks 0-6: nearest tasks (similarity 1) in their cluster; task 7: all others at 0, 3 of 7 in b
  assert rep["neighbour_agreement"] == pytest.approx((7 + 3 / 7) / 8)
  sim = np.eye(3)
  assert E.neighbour_agreement(sim, {"x": [0, 1], "y": [2]}) == pytest.approx((0.5 + 0.5 + 0) / 3)


def test_within_cluster_disagreement_splits_decided_from_undecided_differences():
  """Cluster a: tasks 0 and 1 differ in entries 1 (both decided: 0.02 vs 0.97) and 2 (task
  1's 0.55 is undecided); cluster b: one task, no pairs."""
  alloc = {"layer_0": [[1, 0, 0], [1, 1, 1], [0, 0, 1]]}
  probs = {"layer_0": [[0.99, 0.02, 0.03], [0.95, 0.97, 0.55], [0.01, 0.4, 0.9]]}
  clusters = {"a": [0, 1], "b": [2]}
  d = E.within_cluster_disagreement(alloc, probs, clusters)
  assert d["a"] == {"differing": 2.0, "differing_decided": 1.0, "agreed": 1}
  assert np.isnan(d["b"]["differing"]) and d["b"]["agreed"] == 3
  rep = E.cluster_report({"allocations": alloc, "probabilities": probs, "task_clusters": clusters})
  assert rep["disagreement"]["a"]["differing_decided"] == 1.0
  assert "disagreement" not in E.cluster_report({"allocations": alloc, "task_clusters": clusters})


def test_decided_fraction_counts_probabilities_near_zero_or_one():
  probs = {"layer_1": [[0.5, 0.95]], "layer_0": [[0.05, 0.1, 0.91]]}
  assert E.decided_fraction(probs) == pytest.approx(3 / 5)  # 0.05, 0.91, 0.95; 0.1 is not
  assert E.decided_fraction(probs, margin=0.45) == pytest.approx(4 / 5)  # all but 0.5


def test_taps_embeddings_are_the_task_specific_layers():
  """A TAPS run's allocations are all ones (every task uses every component); its embedding is
  the task-specific-layer indicator, so the cluster report sees TAPS's actual task structure."""
  layers = ["layer_0/k", "layer_1/k", "layer_2/k"]
  specific = {"a0": ["layer_2/k"], "a1": ["layer_2/k"], "b0": ["layer_0/k", "layer_1/k"],
              "b1": ["layer_0/k", "layer_1/k"], "b2": ["layer_1/k", "layer_0/k"]}
  tasks = list(specific)
  res = {"method": "taps", "tasks": tasks, "allocations": {"layer_0": [[1, 1]] * 5},
         "task_clusters": {"a": [0, 1], "b": [2, 3, 4]},
         "taps": {"scores": {t: {l: 0.0 for l in layers} for t in tasks},
                  "task_specific_layers": specific}}
  emb, names = E.run_embeddings(res)
  assert names == layers
  np.testing.assert_array_equal(emb, [[0, 0, 1], [0, 0, 1], [1, 1, 0], [1, 1, 0], [1, 1, 0]])
  rep = E.cluster_report(res)
  assert rep["distinct_embeddings"] == {"a": 1, "b": 1} and rep["ari"] == 1.0
  res["taps"]["task_specific_layers"] = {t: [] for t in tasks}  # nothing adapted: all one group
  emb, _ = E.run_embeddings(res)
  assert emb.shape == (5, 3) and not emb.any()
  del res["taps"]  # a routed method: the allocations, columns per component
  res["method"] = "gumbel_matrix"
  emb, names = E.run_embeddings(res)
  assert emb.shape == (5, 2) and names == ["layer_0/0", "layer_0/1"]


# ----------------------------------------------------------------------------- clustering
# E.cluster is scipy's average linkage. Two references: the hand implementation gmr had before
# (kept here; ties: the first pair in row-major order within 1e-12) and a brute force that
# follows every tie and returns every k-way partition average linkage can reach.
def _hand_cluster(emb, k):
  """gmr's former hand-written average linkage (Lance-Williams updates, O(T) per merge)."""
  emb = np.asarray(emb)
  t = len(emb)
  if not 1 <= k <= t:
    raise ValueError(f"k must be in [1, {t}], got {k}")
  d = 1.0 - E.cosine_similarity(emb)
  clusters = [[i] for i in range(t)]
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


def _partition(labels):
  return tuple(sorted(tuple(np.flatnonzero(labels == c).tolist()) for c in np.unique(labels)))


def _average_linkage_partitions(emb, k, tol=1e-9):
  """Every k-way partition that average linkage reaches under some order of tied merges: from
  singletons, repeatedly merge a pair of clusters whose mean pairwise cosine distance (computed
  from scratch, no update formula) is within ``tol`` of the smallest."""
  d = 1.0 - E.cosine_similarity(emb)
  canon = lambda p: tuple(sorted(tuple(sorted(c)) for c in p))
  found, seen, todo = set(), set(), [canon([[i] for i in range(len(d))])]
  while todo:
    p = todo.pop()
    if p in seen:
      continue
    seen.add(p)
    if len(p) == k:
      found.add(p)
      continue
    pairs = {(a, b): d[np.ix_(p[a], p[b])].mean()
             for a, b in itertools.combinations(range(len(p)), 2)}
    low = min(pairs.values())
    todo += [canon([c for i, c in enumerate(p) if i not in (a, b)] + [p[a] + p[b]])
             for (a, b), v in pairs.items() if v <= low + tol]
  return found


def _check_labels(labels, t, k):
  assert labels.dtype == np.int64 and labels.shape == (t,)
  assert sorted(set(labels.tolist())) == list(range(k))  # exactly k clusters
  _, first = np.unique(labels, return_index=True)
  assert np.all(np.diff(first) > 0)  # numbered by first appearance


def test_cluster_equals_the_reference_on_random_embeddings():
  """Real-valued embeddings (no ties): scipy's average linkage = the hand implementation, label
  for label, for every k; signed entries (cosine distances up to 2) and float32 included."""
  rng = np.random.default_rng(0)
  cases = 0
  for _ in range(40):
    t = int(rng.integers(2, 16))
    emb = rng.normal(size=(t, int(rng.integers(2, 9))))
    if rng.random() < 0.5:
      emb = np.abs(emb).astype(np.float32)
    for k in range(1, t + 1):
      labels = E.cluster(emb, k)
      _check_labels(labels, t, k)
      np.testing.assert_array_equal(labels, _hand_cluster(emb, k))
      cases += 1
  assert cases > 200


def test_cluster_is_an_average_linkage_clustering_when_distances_tie():
  """Random 0/1 embeddings (the allocations' kind: many equal distances, identical rows,
  all-zero rows): the clustering is one that average linkage reaches under some order of the
  tied merges (brute force), and where the ties leave only one, it is that one (= the hand
  implementation's)."""
  rng = np.random.default_rng(1)
  unique = ambiguous = 0
  for _ in range(120):
    t = int(rng.integers(2, 8))
    emb = rng.integers(0, 2, (t, int(rng.integers(1, 6)))).astype(np.float32)
    k = int(rng.integers(1, t + 1))
    labels = E.cluster(emb, k)
    _check_labels(labels, t, k)
    allowed = _average_linkage_partitions(emb, k)
    assert _partition(labels) in allowed, (emb, k, labels, allowed)
    assert _partition(_hand_cluster(emb, k)) in allowed
    if len(allowed) == 1:
      unique += 1
      np.testing.assert_array_equal(labels, _hand_cluster(emb, k))
    else:
      ambiguous += 1
  assert unique > 30 and ambiguous > 10  # both kinds were exercised


@pytest.mark.parametrize("t", [2, 3, 5, 7])
def test_cluster_of_all_zero_embeddings(t):
  """All-zero embeddings are at cosine distance 1 from each other (cosine_similarity 0, not
  nan): every merge ties, and the clustering is the hand implementation's, the first tasks in
  one cluster and the rest alone."""
  emb = np.zeros((t, 4), np.float32)
  for k in range(1, t + 1):
    labels = E.cluster(emb, k)
    np.testing.assert_array_equal(labels, _hand_cluster(emb, k))
    np.testing.assert_array_equal(labels, [0] * (t - k + 1) + list(range(1, k)))
  np.testing.assert_array_equal(E.cluster(np.zeros((4, 0)), 2), [0, 0, 0, 1])  # no columns


def test_cluster_identical_and_zero_rows():
  a, b, c, z = [1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0]
  # identical rows: one cluster each, whatever the order of the tasks
  emb = np.array([a, b, a, c, b, a, c], np.float32)
  np.testing.assert_array_equal(E.cluster(emb, 3), [0, 1, 0, 2, 1, 0, 2])
  # zero rows are 1 from everything, each other included: with a, a, b, b they are left alone
  emb = np.array([z, a, b, a, z, b], np.float32)
  for k in range(1, 7):
    labels = E.cluster(emb, k)
    assert _partition(labels) in _average_linkage_partitions(emb, k)
  np.testing.assert_array_equal(E.cluster(emb, 4), [0, 1, 2, 1, 3, 2])
  np.testing.assert_array_equal(E.cluster(emb, 4), _hand_cluster(emb, 4))
  # a and c at distance 1/2, b at 1/2 from c and 1 from a: c joins a (row-major first tie)
  # or b; the cut at k = 2 is one of those
  emb = np.array([a, b, c], np.float32)
  allowed = _average_linkage_partitions(emb, 2)
  assert allowed == {((0, 2), (1,)), ((0,), (1, 2))}
  assert _partition(E.cluster(emb, 2)) in allowed


def test_cluster_edge_cases_and_errors():
  np.testing.assert_array_equal(E.cluster([[1.0, 0.0]], 1), [0])  # one task
  emb = np.eye(4)
  np.testing.assert_array_equal(E.cluster(emb, 4), [0, 1, 2, 3])  # k = T: singletons
  np.testing.assert_array_equal(E.cluster(emb, 1), [0, 0, 0, 0])
  for k in (0, 5, -1):
    with pytest.raises(ValueError, match="k must be in"):
      E.cluster(emb, k)
  with pytest.raises(ValueError, match=r"k must be in \[1, 0\]"):
    E.cluster(np.zeros((0, 3)), 1)
  bad = np.ones((3, 2))
  bad[1, 0] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    E.cluster(bad, 2)

