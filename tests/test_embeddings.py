"""Task embeddings, similarities, identical groups, clustering and the adjusted Rand index."""

import numpy as np
import pytest

from gmr import embeddings as E


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
  res = {"tasks": tasks, "allocations": {"layer_0": [[1, 1]] * 5},
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
  emb, names = E.run_embeddings(res)
  assert emb.shape == (5, 2) and names == ["layer_0/0", "layer_0/1"]


def test_aggregate_groups_use_the_run_embeddings():
  """Table I's group columns: routed methods compare allocations, TAPS its task-specific layers
  (its allocations are all ones, which would call every grouping 'shared')."""
  from launch import aggregate
  res = {"tasks": ["a", "a2", "b", "b2"], "task_groups": [[0, 1], [2, 3]],
         "allocations": {"layer_0": [[1, 0], [1, 0], [0, 1], [0, 1]]}}
  assert aggregate.groups_recovered(res) and aggregate.groups_identical(res)
  res["allocations"]["layer_0"][3] = [1, 1]
  assert not aggregate.groups_recovered(res) and not aggregate.groups_identical(res)
  layers = ["l0", "l1"]
  res["taps"] = {"scores": {t: {l: 0.0 for l in layers} for t in res["tasks"]},
                 "task_specific_layers": {"a": ["l0"], "a2": ["l0"], "b": ["l1"], "b2": ["l1"]}}
  assert aggregate.groups_recovered(res)  # by the task-specific layers, not the allocations
  res["taps"]["task_specific_layers"] = {t: [] for t in res["tasks"]}  # nothing adapted
  assert aggregate.groups_identical(res) and not aggregate.groups_recovered(res)


def test_cluster_table_columns_per_seed():
  """launch.aggregate: a clusters sweep row lists ARI, nearest-task agreement and the
  within-cluster disagreement per seed, seeds in order."""
  from launch import aggregate
  alloc = {"layer_0": [[1, 0, 0], [1, 1, 1], [0, 0, 1]]}
  probs = {"layer_0": [[0.99, 0.02, 0.03], [0.95, 0.97, 0.55], [0.01, 0.4, 0.9]]}
  run = lambda seed, a: {"seed": seed, "final": {"loss": {"mean": 1.0}}, "active_fraction": 0.5,
                         "wall_time_s": 1.0, "steps": 1, "allocations": a, "probabilities": probs,
                         "task_clusters": {"a": [0, 1], "b": [2]}}
  same = {"layer_0": [[1, 0, 0], [1, 0, 0], [0, 0, 1]]}
  s = aggregate.summarize([run(1, same), run(0, alloc)])
  md = aggregate.to_markdown({"gm": s})
  assert "within a cluster (of them decided by both)" in md
  assert "| a 2.0 (1.0) b -; a 0.0 (0.0) b - |" in md
