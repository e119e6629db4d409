"""Progress of long runs that have not finished: rounds reached, the latest evaluation, and
where the wall time went (from each workdir's ``metrics.jsonl``).

  python -m launch.progress --root=runs/clusters40_paper --out=results/clusters40_paper_progress

Each run is ``<root>/<name>/seed_<s>/``. Wall seconds by job are the sums of the log lines'
``wall_s`` (the training steps, the allocation history, evaluation, checkpoints) since the run
began, over every start of a resumed run; the overhead is everything but the steps, as a
fraction of the steps' time. For suites with known task clusters (section V-C), the clusters
in the greedy allocations at the last allocation-history point
(:func:`gmr.analysis.embeddings.history_cluster_row`): ARI of the 3-way clustering, the tasks
whose nearest task is of their own cluster, the decided fraction of P(on), and per cluster the
distinct embeddings and the components in which two of its tasks differ. The code commit of
the runs is read from the git checkout holding ``<root>``.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
from typing import Dict, Optional

from absl import app, flags

from gmr import data
from gmr.analysis import embeddings
from launch.tables import code_commit

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script: importers (tests, notebooks) define their own
  flags.DEFINE_string("root", None, "Directory of the runs.")
  flags.DEFINE_string("out", None, "Output prefix: writes <out>.md and .json (else stdout only).")
  flags.DEFINE_string("title", "", "Table title.")
  flags.mark_flags_as_required(["root"])


def run_progress(workdir: str) -> Dict:
  """What a workdir's ``metrics.jsonl`` and ``config.json`` say of a run so far."""
  with open(os.path.join(workdir, "config.json")) as f:
    config = json.load(f)
  wall = {"steps": 0.0, "history": 0.0, "eval": 0.0, "checkpoint": 0.0}
  last_log, last_eval, rounds = None, None, 0
  path = os.path.join(workdir, "metrics.jsonl")
  lines = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          lines.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill
          pass
  last_alloc = None
  for d in lines:
    if d["kind"] == "alloc":
      last_alloc = d
    if d["kind"] == "log":
      last_log = d
      rounds = max(rounds, d["round"])
      for k, v in d.get("wall_s", {}).items():
        wall[k] = wall.get(k, 0.0) + v
    elif d["kind"] == "eval":
      last_eval = d
  steps = wall["steps"]
  overhead = sum(v for k, v in wall.items() if k != "steps")
  acc = (last_eval or {}).get("test", {}).get("accuracy", {}).get("mean")
  return {
      "rounds": rounds, "num_rounds": int(config["num_rounds"]),
      "finished": os.path.exists(os.path.join(workdir, "results.json")),
      "steps_per_s": (last_log or {}).get("steps_per_s", float("nan")),
      "last_eval_round": (last_eval or {}).get("round"), "test_accuracy": acc,
      "wall_s": wall, "overhead_fraction": overhead / steps if steps else float("nan"),
      "eval_s_each": (last_eval or {}).get("wall_s"),
      "clusters": _clusters_at(config, last_alloc),
  }


def _clusters_at(config: dict, alloc: Optional[dict]) -> Optional[Dict]:
  """The cluster row of the allocation-history point ``alloc`` (None: no history point, a suite
  without known clusters, or a method whose embedding is not its allocation)."""
  if (alloc is None or "probabilities" not in alloc or "suite" not in config
      or not embeddings.embeds_allocation({"method": config.get("method")})):
    return None  # (TAPS's history is its component use, not its task-specific layers)
  clusters = data.task_clusters(config)
  if not clusters:
    return None
  return {"round": int(alloc["round"]),
          **embeddings.history_cluster_row(alloc["probabilities"], clusters)}


def table(root: str) -> Dict[str, Dict]:
  out = {}
  for wd in sorted(glob.glob(os.path.join(root, "*", "seed_*"))):
    if os.path.exists(os.path.join(wd, "config.json")):
      out[os.path.relpath(wd, root)] = run_progress(wd)
  return out


def to_markdown(rows: Dict[str, Dict], title: str, command: str, commit: str) -> str:
  def f(v, fmt):
    return "-" if v is None else format(v, fmt)
  md = [f"# {title}" if title else "# Progress", "",
        "| run | rounds | of | finished | steps/s (last log) | last eval round | test acc. | "
        "steps h | eval s | history s | checkpoint s | overhead / steps | one eval s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for name, r in rows.items():
    w = r["wall_s"]
    md.append(f"| {name} | {r['rounds']} | {r['num_rounds']} | {'yes' if r['finished'] else 'no'} "
              f"| {r['steps_per_s']:.1f} | {f(r['last_eval_round'], 'd')} "
              f"| {f(None if r['test_accuracy'] is None else 100 * r['test_accuracy'], '.2f')} "
              f"| {w['steps'] / 3600:.2f} | {w['eval']:.0f} | {w['history']:.1f} "
              f"| {w['checkpoint']:.1f} | {100 * r['overhead_fraction']:.1f}% "
              f"| {f(r['eval_s_each'], '.0f')} |")
  by_names: Dict[tuple, Dict[str, Dict]] = {}  # one table per set of clusters (per suite)
  for n, r in rows.items():
    if r.get("clusters"):
      names = tuple(k[len("distinct_"):] for k in r["clusters"] if k.startswith("distinct_"))
      by_names.setdefault(names, {})[n] = r["clusters"]
  if by_names:
    md += ["", "Task clusters in the greedy allocations (P(on) >= 0.5) at each run's last "
           "allocation-history point: ARI of the 3-way clustering against the true clusters, "
           "the fraction of tasks whose most similar task is of their own cluster, the decided "
           "fraction of P(on) (below 0.1 or above 0.9), and per cluster the distinct embeddings "
           "(1 = the paper's finding) and the mean number of components in which two of its "
           "tasks differ (of those, decided by both)."]
  for names, group in by_names.items():
    md += ["", "| run | at round | ARI | nearest in own cluster | decided | "
           + " | ".join(f"distinct {n}" for n in names) + " | "
           + " | ".join(f"differing {n}" for n in names) + " |",
           "|---|---|---|---|---|" + "---|" * (2 * len(names))]
    for name, c in group.items():
      md.append(f"| {name} | {c['round']} | {c['ari']:.2f} | {c['neighbour_agreement']:.2f} "
                f"| {c['decided']:.2f} | "
                + " | ".join(str(c[f"distinct_{n}"]) for n in names) + " | "
                + " | ".join(f"{c[f'differing_{n}']:.1f} ({c[f'differing_decided_{n}']:.1f})"
                             for n in names) + " |")
  md += ["", f"Generated by `{command}`; the runs' code: commit {commit}.", ""]
  return "\n".join(md)


def main(argv):
  del argv
  root, out = FLAGS.root, FLAGS.out
  rows = table(root)
  commit = code_commit(root)
  command = (f"python -m launch.progress --root={root}" + (f" --out={out}" if out else "")
             + (f" --title={shlex.quote(FLAGS.title)}" if FLAGS.title else ""))
  md = to_markdown(rows, FLAGS.title, command, commit)
  if out:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out + ".md", "w") as f:
      f.write(md)
    with open(out + ".json", "w") as f:
      json.dump({"commit": commit, "runs": rows}, f, indent=1)
  print(md)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
