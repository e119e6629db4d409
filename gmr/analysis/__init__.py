"""Analysis of finished runs (numpy and scipy, no JAX): the one home of gmr's statistics.

* :mod:`gmr.analysis.stats`: summary statistics over seeds (sample std, the 90% Student-t
  interval of the mean from ``scipy.stats.t``).
* :mod:`gmr.analysis.tables`: a sweep's ``results.json`` files -> one summary row per run name,
  as a dict (JSON) and as Markdown (``python -m launch.aggregate`` and ``launch.tables`` write
  them, ``experiments.report`` adds figures).
* :mod:`gmr.analysis.embeddings`: task embeddings from learned allocations (section III-E) and
  cluster discovery (section V-C): cosine similarity, average-linkage clustering
  (``scipy.cluster.hierarchy``), the adjusted Rand index, per-cluster reports.
"""
