"""Aggregate a sweep's workdirs into tables (mean +- std over seeds) as Markdown and JSON.

  python -m launch.aggregate --root=runs/transfer --out=results/transfer

Groups are the sweep's run directories (``<root>/<name>/seed_*/results.json``).
"""

from __future__ import annotations

import glob
import json
import math
import os
from typing import Dict, List

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script: importers (the report) define their own
  flags.DEFINE_string("root", None, "Sweep directory.")
  flags.DEFINE_string("out", None, "Output prefix: writes <out>.md and <out>.json.")
  flags.DEFINE_string("title", "", "Table title.")
  flags.DEFINE_string("command", "", "Command that produced the sweep (for the record).")
  flags.mark_flags_as_required(["root"])

# two-sided 90% Student-t quantiles by degrees of freedom (1..30); normal beyond
_T90 = [6.314, 2.920, 2.353, 2.132, 2.015, 1.943, 1.895, 1.860, 1.833, 1.812, 1.796, 1.782,
        1.771, 1.761, 1.753, 1.746, 1.740, 1.734, 1.729, 1.725, 1.721, 1.717, 1.714, 1.711,
        1.708, 1.706, 1.703, 1.701, 1.699, 1.697]


def interval90(values) -> float:
  """Half-width of the 90% t-interval of the mean."""
  n = len(values)
  if n < 2:
    return float("nan")
  t = _T90[n - 2] if n - 1 <= len(_T90) else 1.645
  return t * float(np.std(values, ddof=1)) / math.sqrt(n)


def _task_embeddings(results) -> List[tuple]:
  """Per task, its embedding as a tuple (:func:`gmr.embeddings.run_embeddings`: the greedy
  allocations; for TAPS the task-specific layers)."""
  from gmr import embeddings
  emb, _ = embeddings.run_embeddings(results)
  return [tuple(row.tolist()) for row in emb]


def groups_recovered(results) -> bool:
  """True iff tasks in one known group share one embedding and groups have distinct ones."""
  groups = results.get("task_groups")
  if not groups:
    return False
  emb = _task_embeddings(results)
  per_group = [{emb[t] for t in g} for g in groups]
  if any(len(s) != 1 for s in per_group):
    return False
  reps = [next(iter(s)) for s in per_group]
  return len(set(reps)) == len(reps)


def groups_identical(results) -> bool:
  """True iff the tasks of every known group end with one and the same embedding."""
  groups = results.get("task_groups")
  if not groups:
    return False
  emb = _task_embeddings(results)
  return all(len({emb[t] for t in g}) == 1 for g in groups)


def collect(root: str) -> Dict[str, List[dict]]:
  out: Dict[str, List[dict]] = {}
  for path in sorted(glob.glob(os.path.join(root, "*", "seed_*", "results.json"))):
    name = os.path.basename(os.path.dirname(os.path.dirname(path)))
    with open(path) as f:
      out.setdefault(name, []).append(json.load(f))
  return out


def summarize(runs: List[dict]) -> dict:
  loss = [r["final"]["loss"]["mean"] for r in runs]
  s = {"seeds": sorted(r["seed"] for r in runs), "n": len(runs),
       "loss_mean": float(np.mean(loss)), "loss_std": float(np.std(loss, ddof=1)) if len(loss) > 1 else 0.0,
       "loss_ci90": interval90(loss), "loss_per_seed": loss,
       "active_fraction": float(np.mean([r["active_fraction"] for r in runs])),
       "wall_time_s": float(np.mean([r["wall_time_s"] for r in runs])),
       "steps": runs[0]["steps"]}
  if "accuracy" in runs[0]["final"]:
    acc = [100 * r["final"]["accuracy"]["mean"] for r in runs]
    s.update(acc_mean=float(np.mean(acc)), acc_std=float(np.std(acc, ddof=1)) if len(acc) > 1 else 0.0,
             acc_ci90=interval90(acc), acc_per_seed=acc)
  if all("taps" in r for r in runs):  # TAPS: task-specific layers and added parameters
    fr = [100 * r["taps"]["task_specific_fraction"]["mean"] for r in runs]
    added = [np.mean(list(r["taps"]["added_params"].values())) for r in runs]
    s.update(taps_specific_pct=float(np.mean(fr)),
             taps_specific_pct_std=float(np.std(fr, ddof=1)) if len(fr) > 1 else 0.0,
             taps_added_params=float(np.mean(added)))
  if all(r.get("task_clusters") for r in runs):  # section V-C: clusters in the embeddings
    from gmr import embeddings
    by_seed = sorted(runs, key=lambda r: r["seed"])
    reps = [embeddings.cluster_report(r) for r in by_seed]
    s.update(cluster_ari=[rep["ari"] for rep in reps],
             cluster_distinct=[rep["distinct_embeddings"] for rep in reps],
             cluster_within=[rep["within"] for rep in reps],
             cluster_between=[rep["between"] for rep in reps],
             cluster_neighbour=[rep["neighbour_agreement"] for rep in reps])
    if all(r.get("probabilities") and "taps" not in r for r in runs):
      s["decided_pct"] = [100 * embeddings.decided_fraction(r["probabilities"]) for r in by_seed]
      s["cluster_disagreement"] = [rep["disagreement"] for rep in reps]
  if runs[0].get("task_groups"):
    s["groups_recovered"] = int(sum(groups_recovered(r) for r in runs))
    s["groups_identical"] = int(sum(groups_identical(r) for r in runs))
  return s


def to_markdown(table: Dict[str, dict], title="", command="") -> str:
  has_acc = any("acc_mean" in s for s in table.values())
  has_groups = any("groups_recovered" in s for s in table.values())
  has_taps = any("taps_specific_pct" in s for s in table.values())
  has_clusters = any("cluster_ari" in s for s in table.values())
  head = ["run", "seeds", "test loss (mean +- std)", "90% CI"]
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
    row = [name, str(s["n"]), f"{s['loss_mean']:.4f} +- {s['loss_std']:.4f}",
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


def main(argv):
  del argv
  table = {name: summarize(runs) for name, runs in collect(FLAGS.root).items()}
  if not table:
    raise SystemExit(f"error: no results.json under {FLAGS.root}/*/seed_*/; run the sweep first")
  md = to_markdown(table, FLAGS.title, FLAGS.command)
  print(md)
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out + ".md", "w") as f:
      f.write(md)
    with open(FLAGS.out + ".json", "w") as f:
      json.dump(table, f, indent=1)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
