"""Summary tables of a sweep: one row per run name (mean +- std over seeds, 90% t-interval).

A sweep's runs are ``<root>/<name>/seed_<s>/results.json`` (``launch.sweep`` writes them);
:func:`collect` reads them, :func:`summarize` makes one row of numbers per name (a dict that
is saved as JSON) and :func:`to_markdown` the table. ``python -m launch.aggregate`` and
``python -m launch.tables`` are the command lines; ``experiments.report`` adds figures.

  table = {name: summarize(runs) for name, runs in collect("runs/transfer").items()}
  print(to_markdown(table, "Transfer"))
"""

from __future__ import annotations

import glob
import json
import os
from typing import Dict, List, Optional

import numpy as np

from gmr.analysis import embeddings, readers
from gmr.analysis.stats import difference90, holm, interval90, sample_std
from gmr.analysis.stats import share_of_gain as stats_share_of_gain


def _task_embeddings(results: dict) -> List[tuple]:
  """Per task, its embedding as a tuple (:func:`gmr.analysis.embeddings.run_embeddings`: the
  greedy allocations; for TAPS the task-specific layers)."""
  emb, _ = embeddings.run_embeddings(results)
  return [tuple(row.tolist()) for row in emb]


def groups_recovered(results: dict) -> bool:
  """True iff the tasks of every known group share one embedding and the groups' embeddings
  are pairwise distinct.

  ``results``: a run's ``results.json`` dict; ``results["task_groups"]`` lists the groups as
  lists of task indices, embeddings as :func:`gmr.analysis.embeddings.run_embeddings`. False
  when the run has no (or empty) ``task_groups``. Raises ``KeyError`` if the results lack
  ``allocations`` (or, for TAPS, ``tasks`` / ``taps`` fields) and ``IndexError`` for a task
  index outside the embeddings."""
  groups = results.get("task_groups")
  if not groups:
    return False
  emb = _task_embeddings(results)
  per_group = [{emb[t] for t in g} for g in groups]
  if any(len(s) != 1 for s in per_group):
    return False
  reps = [next(iter(s)) for s in per_group]
  return len(set(reps)) == len(reps)


def groups_identical(results: dict) -> bool:
  """True iff the tasks of every known group end with one and the same embedding (groups may
  share theirs with other groups).

  ``results``: as :func:`groups_recovered`; False without ``task_groups``. Raises as
  :func:`groups_recovered`."""
  groups = results.get("task_groups")
  if not groups:
    return False
  emb = _task_embeddings(results)
  return all(len({emb[t] for t in g}) == 1 for g in groups)


def collect(root: str, statuses: Optional[Dict[str, "gmr.workdir.RunStatus"]] = None
            ) -> Dict[str, List[dict]]:
  """A sweep's finished runs: ``{name: [results.json dict per seed]}`` from
  ``<root>/<name>/seed_*/results.json``, names in sorted order, seeds in path order.

  ``statuses``: ``{workdir: gmr.workdir.RunStatus}`` of the sweep's planned runs
  (``launch.sweep.statuses``): then only the runs finished with their planned config count
  (a workdir holding another config is the caller's to report). Empty if nothing matches (a
  missing ``root`` included). Raises ``OSError`` for an unreadable file and
  ``json.JSONDecodeError`` for a malformed one."""
  out: Dict[str, List[dict]] = {}
  if statuses is not None:
    for wd in sorted(statuses):
      if statuses[wd].state == "finished":
        out.setdefault(os.path.basename(os.path.dirname(wd)), []).append(statuses[wd].results)
    return dict(sorted(out.items()))
  for path in sorted(glob.glob(os.path.join(root, "*", "seed_*", "results.json"))):
    name = os.path.basename(os.path.dirname(os.path.dirname(path)))
    with open(path) as f:
      out.setdefault(name, []).append(json.load(f))
  return out


def summarize(runs: List[dict]) -> dict:
  """One table row from the ``results.json`` dicts of one run name's seeds (``n >= 1``).

  Always: ``seeds`` (sorted ints), ``n``, ``loss_mean``, ``loss_std`` (ddof 1; 0.0 for one
  seed), ``loss_ci90`` (half-width of the 90% t-interval of the mean, :func:`interval90`; nan
  for one seed), ``loss_per_seed`` (in ``runs`` order), ``active_fraction`` and
  ``wall_time_s`` (means), ``steps`` (of the first run). With accuracies: ``acc_mean``,
  ``acc_std``, ``acc_ci90``, ``acc_per_seed`` (in %). The method's own numbers
  (:meth:`gmr.analysis.readers.Reader.summary_stats`; TAPS: ``taps_specific_pct`` (+ ``_std``),
  ``taps_added_params``). With ``task_clusters`` in every run (section V-C), per seed in seed
  order: ``cluster_ari``, ``cluster_distinct``, ``cluster_within``, ``cluster_between``,
  ``cluster_neighbour`` (:func:`gmr.analysis.embeddings.cluster_report`) and, for routed runs
  with ``probabilities``, ``decided_pct`` and ``cluster_disagreement``. With ``task_groups``:
  ``groups_recovered`` / ``groups_identical``, the number of seeds where
  :func:`groups_recovered` / :func:`groups_identical` hold. All numbers are Python floats or
  ints (JSON-ready; nan where noted).

  Raises ``IndexError`` for an empty ``runs`` and ``KeyError`` for a results dict without the
  fields above (``seed``, ``final.loss.mean``, ``active_fraction``, ``wall_time_s``,
  ``steps``)."""
  loss = [r["final"]["loss"]["mean"] for r in runs]
  s = {"seeds": sorted(r["seed"] for r in runs), "n": len(runs),
       "loss_mean": float(np.mean(loss)), "loss_std": sample_std(loss),
       "loss_ci90": interval90(loss), "loss_per_seed": loss,
       "active_fraction": float(np.mean([r["active_fraction"] for r in runs])),
       "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs])),
       "steps": runs[0]["steps"]}
  if "accuracy" in runs[0]["final"]:
    acc = [100 * r["final"]["accuracy"]["mean"] for r in runs]
    s.update(acc_mean=float(np.mean(acc)), acc_std=sample_std(acc),
             acc_ci90=interval90(acc), acc_per_seed=acc)
  s.update(readers.of_results(runs[0]).summary_stats(runs))  # the method's own numbers
  if all(r.get("task_clusters") for r in runs):  # section V-C: clusters in the embeddings
    by_seed = sorted(runs, key=lambda r: r["seed"])
    reps = [embeddings.cluster_report(r) for r in by_seed]
    s.update(cluster_ari=[rep["ari"] for rep in reps],
             cluster_distinct=[rep["distinct_embeddings"] for rep in reps],
             cluster_within=[rep["within"] for rep in reps],
             cluster_between=[rep["between"] for rep in reps],
             cluster_neighbour=[rep["neighbour_agreement"] for rep in reps])
    if all(r.get("probabilities") and readers.embeds_allocation(r) for r in runs):
      s["decided_pct"] = [100 * embeddings.decided_fraction(r["probabilities"]) for r in by_seed]
      s["cluster_disagreement"] = [rep["disagreement"] for rep in reps]
  if runs[0].get("task_groups"):
    s["groups_recovered"] = int(sum(groups_recovered(r) for r in runs))
    s["groups_identical"] = int(sum(groups_identical(r) for r in runs))
  return s


def to_markdown(table: Dict[str, dict], title: str = "", command: str = "") -> str:
  """The Markdown table of ``{name: summarize(...) row}``, one line per name in dict order.

  Columns: run, seeds, then where some row has one its ``combine`` rule (how a layer combines
  its active components: "mean" or "sum"), test loss (mean +- std), its 90% CI
  ``[mean - h, mean + h]``, then only where some row has them: accuracy, active connections, group columns, TAPS columns and the
  per-seed cluster columns (a row without a column's numbers leaves it empty). ``title`` adds a
  ``### title`` heading, ``command`` a ``Command: `...` `` line. Returns the text, ending in a
  newline. Raises ``KeyError`` for a row without ``n``, ``loss_mean``, ``loss_std``,
  ``loss_ci90`` or ``active_fraction``."""
  has_acc = any("acc_mean" in s for s in table.values())
  has_groups = any("groups_recovered" in s for s in table.values())
  has_taps = any("taps_specific_pct" in s for s in table.values())
  has_clusters = any("cluster_ari" in s for s in table.values())
  has_combine = any("combine" in s for s in table.values())
  head = ["run", "seeds"] + (["combine"] if has_combine else []) + [
      "test loss (mean +- std)", "90% CI"]
  if has_acc:
    head += ["accuracy % (mean +- std)"]
  head += ["active connections"]
  if has_groups:
    head += ["groups share one allocation", "groups recovered (and distinct)"]
  if has_taps:
    head += ["TAPS task-specific layers %", "TAPS added params / task"]
  if has_clusters:
    head += ["cluster ARI per seed", "distinct embeddings per cluster, per seed",
             "cosine within / between clusters, per seed", "decided allocations %, per seed",
             "nearest task in own cluster %, per seed",
             "components differing per pair within a cluster (of them decided by both), per seed"]
  lines = []
  if title:
    lines += [f"### {title}", ""]
  lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name, s in table.items():
    row = [name, str(s["n"])] + ([s["combine"] if "combine" in s else ""] if has_combine else []) + [
           f"{s['loss_mean']:.4f} +- {s['loss_std']:.4f}",
           f"[{s['loss_mean'] - s['loss_ci90']:.4f}, {s['loss_mean'] + s['loss_ci90']:.4f}]"]
    if has_acc:
      row.append(f"{s['acc_mean']:.2f} +- {s['acc_std']:.2f}" if "acc_mean" in s else "")
    row.append(f"{100 * s['active_fraction']:.1f}%")
    if has_groups:
      row.append(f"{s.get('groups_identical', 0)}/{s['n']}")
      row.append(f"{s.get('groups_recovered', 0)}/{s['n']}")
    if has_taps:
      row += ([f"{s['taps_specific_pct']:.1f} +- {s['taps_specific_pct_std']:.1f}",
               f"{s['taps_added_params']:.0f}"] if "taps_specific_pct" in s else ["", ""])
    if has_clusters:
      row += ([", ".join(f"{a:.2f}" for a in s["cluster_ari"]),
               "; ".join(" ".join(f"{k} {v}" for k, v in sorted(d.items()))
                         for d in s["cluster_distinct"])] if "cluster_ari" in s else ["", ""])
      row.append("; ".join(f"{w:.2f} / {b:.2f}" for w, b in zip(s["cluster_within"],
                                                                s["cluster_between"]))
                 if "cluster_within" in s else "")
      row.append(", ".join(f"{d:.0f}" for d in s["decided_pct"]) if "decided_pct" in s else "")
      row.append(", ".join(f"{100 * v:.0f}" for v in s["cluster_neighbour"])
                 if "cluster_neighbour" in s else "")
      pair = lambda v: ("-" if np.isnan(v["differing"])  # a one-task cluster has no pairs
                        else f"{v['differing']:.1f} ({v['differing_decided']:.1f})")
      row.append("; ".join(" ".join(f"{k} {pair(v)}" for k, v in sorted(d.items()))
                           for d in s["cluster_disagreement"])
                 if "cluster_disagreement" in s else "")
    lines.append("| " + " | ".join(row) + " |")
  if command:
    lines += ["", f"Command: `{command}`"]
  return "\n".join(lines) + "\n"


def differences(collected: Dict[str, List[dict]], pairs, metric: str = "accuracy",
                primary: int = 0) -> List[dict]:
  """Row ``a`` minus row ``b`` for each ``(a, b)`` of ``pairs`` both present in ``collected``
  (:func:`collect`'s dict): the test ``metric`` per seed (``"accuracy"`` in %, or
  ``"loss"``), compared by :func:`gmr.analysis.stats.difference90` (Welch, and paired by
  seed). Each item: ``{"a", "b", "metric", **difference90(...)}``; the first ``primary``
  pairs are one family of tests: theirs also carry ``holm_p``, the paired p-value adjusted
  by :func:`gmr.analysis.stats.holm` over the family. Raises ``KeyError`` for a run without
  ``final.<metric>.mean`` or ``seed``."""
  scale = 100.0 if metric == "accuracy" else 1.0
  out = []
  for a, b in pairs:
    if a not in collected or b not in collected:
      continue
    va = [scale * r["final"][metric]["mean"] for r in collected[a]]
    vb = [scale * r["final"][metric]["mean"] for r in collected[b]]
    out.append({"a": a, "b": b, "metric": metric, "primary": (a, b) in list(pairs)[:primary],
                **difference90(va, vb, [r["seed"] for r in collected[a]],
                               [r["seed"] for r in collected[b]])})
  family = [d for d in out if d["primary"]]
  for d, p in zip(family, holm([d.get("paired_p", float("nan")) for d in family])):
    d["holm_p"] = p
  return out


def share_of_gain(collected: Dict[str, List[dict]], part, whole, metric: str = "accuracy"):
  """How much of row ``whole[0]``'s gain over ``whole[1]`` row ``part[0]`` carries over
  ``part[1]``, over the seeds all rows have: :func:`gmr.analysis.stats.share_of_gain` of the
  per-seed differences, with ``{"part", "whole"}`` added; ``None`` when a row is missing or
  fewer than 3 seeds are shared."""
  rows = set(part) | set(whole)
  if not all(r in collected for r in rows):
    return None
  scale = 100.0 if metric == "accuracy" else 1.0
  by_seed = {r: {x["seed"]: scale * x["final"][metric]["mean"] for x in collected[r]}
             for r in rows}
  seeds = sorted(set.intersection(*(set(v) for v in by_seed.values())))
  if len(seeds) < 3:
    return None
  d = lambda a, b: [by_seed[a][s] - by_seed[b][s] for s in seeds]
  return {"part": list(part), "whole": list(whole),
          **stats_share_of_gain(d(*part), d(*whole))}


def differences_markdown(rows: List[dict]) -> str:
  """:func:`differences` as a Markdown table (points of accuracy, or loss), ``""`` for none."""
  if not rows:
    return ""
  unit = "points" if rows[0]["metric"] == "accuracy" else "loss"
  f = "+.2f" if unit == "points" else "+.4f"
  ci = lambda v: f"[{v[0]:{f}}, {v[1]:{f}}]"
  lines = [f"| a - b | test {rows[0]['metric']} difference ({unit}) | 90% CI (Welch) | 95% CI "
           "(Welch) | p (Welch) | seeds paired | paired 90% CI | paired 95% CI | p (paired) |",
           "|---|---|---|---|---|---|---|---|---|"]
  nan2 = [np.nan] * 2
  pv = lambda p: "<0.001" if p < 0.001 else f"{p:.3f}"
  holm_col = any("holm_p" in d for d in rows)
  if holm_col:
    lines[0] += " p (paired, Holm over the primary) |"
    lines[1] += "---|"
  for d in rows:
    lines.append(f"| {d['a']} - {d['b']} | {d['delta']:{f}} | {ci(d['welch_ci90'])} | "
                 f"{ci(d.get('welch_ci95', nan2))} | {pv(d['welch_p'])} | {d.get('paired_n', 0)} "
                 f"| {ci(d.get('paired_ci90', nan2))} | {ci(d.get('paired_ci95', nan2))} | "
                 f"{pv(d.get('paired_p', np.nan))} |"
                 + (f" {pv(d['holm_p'])} |" if "holm_p" in d else (" - |" if holm_col else "")))
  return "\n".join(lines) + "\n"
