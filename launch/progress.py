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
distinct embeddings and the components in which two of its tasks differ. The code of the
runs is the commits their ``results.json`` record (:func:`launch.tables.runs_code`; a run
records it when it finishes).

Given the sweep's flags (``--config``, ``--methods``, ``--seeds``, ``--grid``, ``--set``, as
``launch.sweep`` takes them), a run is finished only when finished with its planned config
(:func:`gmr.workdir.run_status`), and a workdir holding another config is left out of the
table and named with the differing fields. A root with no run in this layout is an error that
says what is there.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import sys
from typing import Dict, Optional

from absl import app, flags

from gmr import data
from gmr.analysis import embeddings, readers
from launch import sweep
from launch.park import runs_under
from launch.tables import runs_code, skipped_note, status_from_flags

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script: importers (tests, notebooks) define their own
  sweep.define_plan_flags(required=False)
  flags.DEFINE_string("out", None, "Output prefix: writes <out>.md and .json (else stdout only).")
  flags.DEFINE_string("title", "", "Table title.")


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
      or not readers.embeds_allocation({"method": config.get("method")})):
    return None  # (TAPS's history is its component use, not its task-specific layers)
  clusters = data.task_clusters(config)
  if not clusters:
    return None
  return {"round": int(alloc["round"]),
          **embeddings.history_cluster_row(alloc["probabilities"], clusters)}


def table(root: str, status: Optional[Dict] = None) -> Dict[str, Dict]:
  """``{<name>/seed_<s>: run_progress(...)}`` of the started runs under ``root``. ``status``:
  ``{workdir: gmr.workdir.RunStatus}`` of a sweep's planned runs (``launch.sweep.statuses``):
  then only those, finished when finished with their config, and none holding another config
  (the caller names those)."""
  out = {}
  if status is None:
    found = [wd for wd in sorted(glob.glob(os.path.join(root, "*", "seed_*")))
             if os.path.exists(os.path.join(wd, "config.json"))]
  else:
    found = [wd for wd, st in sorted(status.items()) if st.state in ("unfinished", "finished")]
  for wd in found:
    row = run_progress(wd)
    if status is not None:
      row["finished"] = status[wd].state == "finished"
    out[os.path.relpath(wd, root)] = row
  return out


def runs_commits(root: str, rows: Dict[str, Dict]) -> str:
  """The code of the runs ``rows`` (:func:`table`): :func:`launch.tables.runs_code` of their
  ``results.json`` (unfinished runs have none yet)."""
  collected = {}
  for name, r in rows.items():
    results = {}
    if r["finished"]:
      with open(os.path.join(root, name, "results.json")) as f:
        results = json.load(f)
    collected.setdefault(name, []).append(results)
  return runs_code(collected, root)


def no_runs_line(root: str) -> str:
  """The error line for a root without runs in ``<root>/<name>/seed_<s>/``: what is there."""
  if not os.path.isdir(root):
    return f"--root: {root} is not a folder; give the sweep's root (<root>/<name>/seed_<s>/)"
  elsewhere = runs_under(root)
  found = (f"it holds {len(elsewhere)} run folders in another layout ("
           + ", ".join(elsewhere[:3]) + (", ..." if len(elsewhere) > 3 else "") + ")"
           if elsewhere else "it holds no run folder (one with a config.json)")
  return (f"--root: no runs under {root} in the layout <root>/<name>/seed_<s>/config.json "
          f"(launch.sweep's); {found}; give the sweep's root")


def to_markdown(rows: Dict[str, Dict], title: str, command: str, commit: str) -> str:
  """The progress table of ``rows`` (:func:`table`); ``commit``: the runs' code
  (:func:`runs_commits`)."""
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
  md += ["", f"Generated by `{command}`; the runs' code: {commit}.", ""]
  return "\n".join(md)


def main(argv):
  del argv
  root, out = FLAGS.root, FLAGS.out
  status, skipped = status_from_flags()
  rows = table(root, status)
  if not rows and not skipped:
    print(f"error: {no_runs_line(root)}", file=sys.stderr)
    sys.exit(2)
  commit = runs_commits(root, rows)
  command = (f"python -m launch.progress --root={root}" + (f" --out={out}" if out else "")
             + (f" --title={shlex.quote(FLAGS.title)}" if FLAGS.title else "")
             + "".join(f" --{k}={shlex.quote(str(v))}" for k, v in (
                 ("config", FLAGS.config), ("methods", ",".join(FLAGS.methods)),
                 ("seeds", FLAGS.seeds)) if FLAGS.config and v)
             + "".join(f" --{k}={shlex.quote(v)}" for k in ("grid", "set")
                       for v in (FLAGS[k].value if FLAGS.config else [])))
  md = to_markdown(rows, FLAGS.title, command, commit) + skipped_note(skipped)
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
