"""The README's V-C row: progress until the runs the issue asks for have finished, then the
finished table's numbers (launch.front)."""

import json
import os
import shutil

from launch import front


def _row(n, acc, ari=None, distinct=None):
  r = {"n": n, "acc_mean": acc, "acc_std": 0.5, "active_fraction": 0.5}
  if ari is not None:
    r.update(cluster_ari=ari, cluster_distinct=distinct)
  return r


def _root(tmp_path, table):
  os.makedirs(tmp_path / "results")
  shutil.copy(os.path.join(front.ROOT, "results", "clusters40_paper_progress.json"),
              tmp_path / "results")
  if table is not None:
    with open(tmp_path / "results" / "clusters40_paper.json", "w") as f:
      json.dump(table, f)
  return str(tmp_path)


def test_clusters40_paper_rows_progress_until_the_required_runs_finish(tmp_path, monkeypatch):
  gm = _row(2, 91.5, [1.0, 0.4867], [{"mnist": 1, "fashion": 2, "omniglot": 20},
                                     {"mnist": 4, "fashion": 10, "omniglot": 20}])
  for table in (None, {"gumbel_matrix": gm}, {"gumbel_matrix": dict(gm, n=1),
                                              "shared_bottom": _row(1, 91.0)}):
    monkeypatch.setattr(front, "ROOT", _root(tmp_path / str(len(table or {})) / str(id(table)),
                                              table))
    rows = front.clusters40_paper_rows()
    assert len(rows) == 1 and "in progress, rounds reached" in rows[0]


def test_clusters40_paper_rows_report_the_finished_table(tmp_path, monkeypatch):
  gm = _row(2, 91.5, [1.0, 0.4867], [{"mnist": 1, "fashion": 2, "omniglot": 20},
                                     {"mnist": 4, "fashion": 10, "omniglot": 20}])
  monkeypatch.setattr(front, "ROOT", _root(tmp_path, {"gumbel_matrix": gm,
                                                      "shared_bottom": _row(1, 92.25)}))
  gm_row, sb_row = front.clusters40_paper_rows()
  assert gm_row.startswith("| 40 tasks in 3 clusters (V-C; Omniglot in place of CIFAR-100), "
                           "the authors' code's schedule: Gumbel-Matrix |")
  assert ("| 91.50 +- 0.50 (50.0%); distinct MNIST / Fashion embeddings per seed 1 / 2, 4 / 10; "
          "3-way clustering ARI 1.00, 0.49 | 2 | mean |") in gm_row
  # the recipe's config leaves combine at "mean" for every method (launch.tables.row_combine)
  assert "| 92.25 +- 0.50 (50.0%) | 1 | mean |" in sb_row
  assert "results/clusters40_paper.md" in sb_row
