"""Figures and tables of a run or a sweep, each PNG with the data behind it.

  python -m experiments.report --workdir=runs/synthetic --out=results/report_synthetic
  python -m experiments.report --workdir=runs/four_mnists/gumbel_matrix/seed_0 --out=/tmp/r

``--workdir`` is one run (holding ``metrics.jsonl`` / ``results.json``) or a sweep
(``<name>/seed_<s>/`` below it). For every group of seeds (a run is a group of one) it writes,
under ``<out>/<group>/``:

* ``loss_curves.png`` / ``.csv`` (Fig. 1 / 7): training loss per task, mean over seeds with a
  band by the band rule below; the logged values (each already a mean over
  ``log_every`` rounds) are smoothed with a moving average spanning ``--smooth`` (100) task
  steps. Test loss at the evaluations is a second panel where a run evaluated more than once.
* ``allocation.png`` / ``.json`` (Fig. 5): the greedy binary allocation of one seed
  (``--seed``, default the first), tasks x components, routed layers separated, lines
  between the true clusters where the suite knows them (and each is a block of rows, as in the
  V-C suites); for TAPS, tasks x TAPS layers, black
  where the layer is task-specific. With several finished seeds, also
  ``allocation_seed_<s>.png`` / ``.json`` for each (methods whose allocation is learned: a
  fixed one is the same in every seed).
* ``similarity.png`` / ``.json`` (Fig. 6): cosine similarity of the task embeddings (the
  concatenated allocations; for TAPS the task-specific-layer indicators) of that seed, and, where the suite knows its task clusters, the
  per-seed cluster report (distinct embeddings per cluster, ARI of a k-way clustering, and
  ``per_layer``: each routed layer's ARI and cosine within / between clusters alone).
* ``probabilities_<task>.png`` / ``.csv`` (Fig. 8): P(on) of every component over training,
  one panel per layer, for ``--task`` (default the first task), from the allocation history;
  for TAPS ``taps_scores_<task>.png`` / ``.csv``: every TAPS layer's score, with tau.
* ``clusters_over_training.png`` / ``.csv`` (suites with known task clusters; runs in progress
  too, to the last history point they logged, marked in the legend): per seed, the
  ARI of a 3-way clustering of the greedy allocations and, per true cluster, the mean number
  of components in which two of its tasks differ (all, and those both tasks have decided:
  P(on) below 0.1 or above 0.9) at every allocation-history point (CSV: ``differing_<c>``,
  ``differing_decided_<c>``, and ``distinct_<c>``, the distinct embeddings); the CSV's ``decided`` is the fraction of P(on)
  values below 0.1 or above 0.9 (how far the allocation has converged),
  ``neighbour_agreement`` the fraction of tasks whose most similar task is of their own
  cluster (no clustering algorithm involved); ``ari_<layer>``,
  ``within_<layer>``, ``between_<layer>``: the same for each routed layer alone (which layers
  carry the clusters), plotted in the second panel.
* for a sweep, ``comparison.png`` / ``.csv`` (Fig. 1 / 7 across methods: loss averaged over
  tasks, one band per group) and ``table.md`` / ``.json`` (the Table I / II style summary).

The band rule (:func:`band`): a curve over ``n`` seeds is their mean, with

* no band for one seed;
* for 2 to 4 seeds the range over the seeds (lowest to highest seed), labelled "range over n
  seeds": a t-interval from so few seeds is mostly its quantile (6.31 for two seeds) and
  would hide the curves;
* from 5 seeds the 90% t-interval of the mean (:func:`gmr.analysis.stats.interval90`),
  labelled "90% t-interval over n seeds". A loss cannot be negative: where the interval
  reaches below 0 it is clipped at 0, and its label says "clipped at 0".

Every panel's title (or, in ``comparison.png``, every legend entry) says what its line and its
band are; the CSVs hold the band's edges (``band_lo``, ``band_hi``) and its label.
"""

from __future__ import annotations

import csv
import glob
import json
import os
from typing import Dict, List, NamedTuple, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from gmr import methods as methods_lib  # noqa: E402
from gmr.analysis import embeddings, readers, stats, tables  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A run or a sweep directory.")
_OUT = flags.DEFINE_string("out", None, "Output directory.")
_TASK = flags.DEFINE_string("task", "", "Task of the probability figure (default: the first).")
_SEED = flags.DEFINE_integer("seed", -1, "Seed of the allocation figures (default: the first).")
_SMOOTH = flags.DEFINE_integer("smooth", 100, "Smoothing window of the loss curves, in steps.")


class ReportError(Exception):
  pass


# ----------------------------------------------------------------------------- reading
def read_run(run_dir: str) -> dict:
  """``{"dir", "results" (or None), "config", "log": [...], "eval": [...], "alloc": [...]}``."""
  out = {"dir": run_dir, "results": None, "config": {}, "log": [], "eval": [], "alloc": []}
  for name, key in (("results.json", "results"), ("config.json", "config")):
    p = os.path.join(run_dir, name)
    if os.path.exists(p):
      with open(p) as f:
        out[key] = json.load(f)
  p = os.path.join(run_dir, "metrics.jsonl")
  if os.path.exists(p):
    with open(p) as f:
      for line in f:
        if line.strip():
          ev = json.loads(line)
          out.setdefault(ev.get("kind", "log"), []).append(ev)
  return out


def find_groups(workdir: str) -> Dict[str, List[str]]:
  """``{group name: [run dirs]}``: one group for a run, one per ``<name>/`` of a sweep."""
  if not os.path.isdir(workdir):
    raise ReportError(f"--workdir: {workdir} is not a directory; give a run or a sweep directory")
  if any(os.path.exists(os.path.join(workdir, f)) for f in ("results.json", "metrics.jsonl")):
    return {os.path.basename(os.path.normpath(workdir)): [workdir]}
  groups: Dict[str, List[str]] = {}
  for d in sorted(glob.glob(os.path.join(workdir, "*", "seed_*"))):
    if os.path.exists(os.path.join(d, "metrics.jsonl")):
      groups.setdefault(os.path.basename(os.path.dirname(d)), []).append(d)
  if not groups:
    raise ReportError(f"--workdir: no run under {workdir} (expected metrics.jsonl there or in "
                      "<name>/seed_<s>/); run the experiment or the sweep first")
  for g in groups:
    groups[g].sort(key=lambda d: int(d.rsplit("seed_", 1)[1]))
  return groups


# ----------------------------------------------------------------------------- numbers
def smooth(y: np.ndarray, window: int) -> np.ndarray:
  """Trailing moving average over ``window`` points (fewer at the start)."""
  if window <= 1:
    return np.asarray(y, float)
  c = np.cumsum(np.insert(np.asarray(y, float), 0, 0.0))
  n = np.arange(1, len(y) + 1)
  lo = np.maximum(n - window, 0)
  return (c[n] - c[lo]) / (n - lo)


T_BAND_MIN_SEEDS = 5  # fewer seeds: the range over the seeds, not a t-interval
LOSS_FLOOR = 0.0  # the losses gmr logs (cross-entropy, squared error) are nonnegative


class Band(NamedTuple):
  """One curve over seeds as a figure draws it: ``mean`` (float64 ``[P]``, the line), the band's
  edges ``lo`` / ``hi`` (``[P]``, ``None`` where there is no band), ``n`` (seeds) and
  ``label`` (what the band is, ``""`` without one)."""
  mean: np.ndarray
  lo: Optional[np.ndarray]
  hi: Optional[np.ndarray]
  n: int
  label: str

  def describe(self) -> str:
    """What is drawn, for a title or a legend: ``"1 seed, no band"`` or ``"mean of <n> seeds,
    band: <label>"``."""
    return "1 seed, no band" if self.lo is None else f"mean of {self.n} seeds, band: {self.label}"


def band(curves, floor: Optional[float] = None) -> Band:
  """The mean of ``curves`` (``[seeds, P]``, e.g. a loss per seed at ``P`` points) and its band
  by the module's band rule: none for one seed, the range over the seeds for 2 to 4, the 90%
  t-interval of the mean from 5. ``floor``: the smallest value the quantity can take
  (:data:`LOSS_FLOOR` for a loss; ``None``, the default: no bound); a t-interval reaching
  below it is clipped there, and the label says so. Raises ``ValueError`` for ``curves`` that is not 2-D with at least one seed."""
  curves = np.asarray(curves, np.float64)
  if curves.ndim != 2 or not len(curves):
    raise ValueError(f"curves must be [seeds, points] with a seed, got shape {curves.shape}")
  n, mean = len(curves), curves.mean(0)
  if n == 1:
    return Band(mean, None, None, 1, "")
  if n < T_BAND_MIN_SEEDS:
    return Band(mean, curves.min(0), curves.max(0), n, f"range over {n} seeds")
  half = np.array([stats.interval90(curves[:, i]) for i in range(curves.shape[1])])
  lo, label = mean - half, f"90% t-interval over {n} seeds"
  if floor is not None and np.any(lo < floor):
    lo, label = np.maximum(lo, floor), f"{label}, clipped at {floor:g}"
  return Band(mean, lo, mean + half, n, label)


def describe(bands: Sequence[Band]) -> str:
  """What a panel of ``bands`` draws, each distinct :meth:`Band.describe` once, joined by
  "; "."""
  return "; ".join(dict.fromkeys(b.describe() for b in bands))


def loss_curves(runs: List[dict], smooth_steps: int):
  """The loss curves of ``runs`` (one group's seeds): ``{"x": rounds [P], "window_points",
  "tasks": {task: Band of the smoothed training loss}}``, and where the runs evaluated more
  than once ``"eval_x"`` and ``"eval": {task: Band of the test loss}``; ``None`` without logs."""
  logs = [r["log"] for r in runs if r["log"]]
  if not logs:
    return None
  n = min(len(l) for l in logs)  # seeds still running: the common prefix
  tasks = list(logs[0][0]["train_loss"])
  rounds = np.array([e["round"] for e in logs[0][:n]])
  # one task step per round; the logging interval in rounds
  steps_per_point = max(int(np.median(np.diff(rounds))) if n > 1 else int(rounds[0]), 1)
  window = max(1, smooth_steps // steps_per_point)
  out = {"x": rounds, "window_points": window, "tasks": {}}
  for t in tasks:
    curves = np.array([smooth([e["train_loss"][t] for e in l[:n]], window) for l in logs])
    out["tasks"][t] = band(curves, LOSS_FLOOR)
  evals = [r["eval"] for r in runs if len(r["eval"]) > 1]
  if evals:
    m = min(len(e) for e in evals)
    out["eval_x"] = np.array([e["round"] for e in evals[0][:m]])
    out["eval"] = {t: band(np.array([[e["test"]["loss"][t] for e in ev[:m]] for ev in evals]),
                           LOSS_FLOOR)
                   for t in tasks}
  return out


# ----------------------------------------------------------------------------- figures
def _band_line(ax, x, b: Band, label, **kw):
  """The line of ``b`` and its band (if any) in the line's colour."""
  line, = ax.plot(x, b.mean, label=label, **kw)
  if b.lo is not None:
    ax.fill_between(x, b.lo, b.hi, color=line.get_color(), alpha=0.2, lw=0)


def _band_rows(x, b: Band):
  """CSV cells per point: round, mean, band_lo, band_hi, band (empty without a band)."""
  none = [""] * len(b.mean)
  lo = none if b.lo is None else [f"{v:.6g}" for v in b.lo]
  hi = none if b.hi is None else [f"{v:.6g}" for v in b.hi]
  return [[int(r), f"{m:.6g}", l, h, b.label] for r, m, l, h in zip(x, b.mean, lo, hi)]


def _save(fig, path):
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_loss_curves(curves, title, out_dir):
  """``loss_curves.png`` / ``.csv`` from :func:`loss_curves`; each panel's title says what its
  lines and bands are (:func:`describe`)."""
  panels = 2 if "eval" in curves else 1
  fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
  ax = axes[0, 0]
  for t, b in curves["tasks"].items():
    _band_line(ax, curves["x"], b, t, lw=1.4)
  ax.set_xlabel("round (one step per task)")
  ax.set_ylabel("training loss (smoothed)")
  ax.set_title(f"{title}: training loss\n{describe(curves['tasks'].values())}", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  if panels == 2:
    ax = axes[0, 1]
    for t, b in curves["eval"].items():
      _band_line(ax, curves["eval_x"], b, t, marker=".", lw=1.4)
    ax.set_xlabel("round")
    ax.set_ylabel("test loss")
    ax.set_title(f"test loss at the evaluations\n{describe(curves['eval'].values())}",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  _save(fig, os.path.join(out_dir, "loss_curves.png"))
  with open(os.path.join(out_dir, "loss_curves.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["split", "round", "task", "mean", "band_lo", "band_hi", "band",
                "smoothing_points"])
    for t, b in curves["tasks"].items():
      for r, *rest in _band_rows(curves["x"], b):
        w.writerow(["train", r, t, *rest, curves["window_points"]])
    for t, b in curves.get("eval", {}).items():
      for r, *rest in _band_rows(curves["eval_x"], b):
        w.writerow(["test", r, t, *rest, 1])


def plot_taps_layers(results, title, out_dir, name="allocation"):
  """TAPS's Fig. 5 analogue: tasks x TAPS layers, black = task-specific (score >= tau); for
  any method with its own task embedding (:meth:`gmr.analysis.readers.Reader.task_embedding`), that
  embedding."""
  emb, layers = embeddings.run_embeddings(results)
  tasks = results["tasks"]
  taps = results.get("taps") or {}
  fig, ax = plt.subplots(figsize=(max(4.0, 2.5 + 0.5 * len(layers)), 1.6 + 0.28 * len(tasks)))
  ax.imshow(emb, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
  ax.set_xticks(range(len(layers)))
  ax.set_xticklabels(layers, rotation=45, ha="right", fontsize=7)
  ax.set_yticks(range(len(tasks)))
  ax.set_yticklabels(tasks, fontsize=7)
  ax.set_xlabel("TAPS layer", fontsize=8)
  ax.set_xticks(np.arange(-0.5, len(layers)), minor=True)
  ax.set_yticks(np.arange(-0.5, len(tasks)), minor=True)
  ax.grid(which="minor", color="0.75", lw=0.5)
  ax.tick_params(which="minor", length=0)
  fig.suptitle(f"{title}: task-specific layers (black = adapted)\nseed {results['seed']}, "
               f"{100 * float(np.mean(emb)):.1f}% of task x layer pairs",
               fontsize=9)
  _save(fig, os.path.join(out_dir, name + ".png"))
  with open(os.path.join(out_dir, name + ".json"), "w") as f:
    json.dump({"seed": results["seed"], "tasks": tasks, "layers": layers,
               "task_specific": emb.astype(int).tolist(), "scores": taps.get("scores")}, f,
              indent=1)


def _cluster_bounds(ax, results, width):
  """Lines between the true task clusters (tasks in cluster order) and their names at the
  right, when the results know their clusters and each cluster is a block of rows."""
  clusters = results.get("task_clusters") or {}
  blocks = [(min(m), max(m), n) for n, m in clusters.items()]
  if not blocks or any(hi - lo + 1 != len(clusters[n]) for lo, hi, n in blocks):
    return
  for lo, hi, n in blocks:
    if lo:
      ax.axhline(lo - 0.5, color="C3", lw=1.5)
    if width is not None:
      ax.text(width - 0.3, (lo + hi) / 2, n, rotation=270, va="center", ha="left",
              fontsize=8, color="C3")


def plot_allocation(results, title, out_dir, name="allocation"):
  """Fig. 5: the greedy allocation of one run, tasks x components per routed layer (lines
  between the true clusters where the suite knows them and each is a block of rows), as
  ``<name>.png`` and the matrices as ``<name>.json``."""
  if not readers.embeds_allocation(results):  # the method's own embedding (TAPS's layers)
    return plot_taps_layers(results, title, out_dir, name)
  layers = sorted(results["allocations"], key=lambda k: int(k.split("_")[1]))
  mats = [np.asarray(results["allocations"][l]) for l in layers]
  tasks = results["tasks"]
  widths = [m.shape[1] for m in mats]
  fig, axes = plt.subplots(1, len(mats), figsize=(max(5.0, 1.2 + 0.32 * sum(widths) + 0.4 * len(mats)),
                                                  1.2 + 0.28 * len(tasks)),
                           gridspec_kw={"width_ratios": widths}, squeeze=False)
  for i, (ax, m, l) in enumerate(zip(axes[0], mats, layers)):
    ax.imshow(m, cmap="Greys", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(m.shape[1]))
    ax.set_xticklabels(range(m.shape[1]), fontsize=7)
    ax.set_yticks(range(len(tasks)))
    ax.set_yticklabels(tasks if i == 0 else [], fontsize=7)
    ax.set_xlabel(f"{l.replace('_', ' ')}: component", fontsize=8)
    ax.set_xticks(np.arange(-0.5, m.shape[1]), minor=True)
    ax.set_yticks(np.arange(-0.5, len(tasks)), minor=True)
    ax.grid(which="minor", color="0.75", lw=0.5)
    ax.tick_params(which="minor", length=0)
    _cluster_bounds(ax, results, m.shape[1] if i == len(mats) - 1 else None)
  fig.suptitle(f"{title}: greedy allocation (black = used)\nseed {results['seed']}, "
               f"{100 * results['active_fraction']:.1f}% active", fontsize=9)
  _save(fig, os.path.join(out_dir, name + ".png"))
  with open(os.path.join(out_dir, name + ".json"), "w") as f:
    json.dump({"seed": results["seed"], "tasks": tasks, "allocations": results["allocations"],
               "active_fraction": results["active_fraction"]}, f, indent=1)


def plot_similarity(results, title, out_dir, cluster_reports):
  emb, _ = embeddings.run_embeddings(results)
  sim = embeddings.cosine_similarity(emb)
  tasks = results["tasks"]
  size = 2.5 + 0.22 * len(tasks)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  im = ax.imshow(sim, cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
  ax.set_xticks(range(len(tasks)))
  ax.set_xticklabels(tasks, rotation=90, fontsize=7)
  ax.set_yticks(range(len(tasks)))
  ax.set_yticklabels(tasks, fontsize=7)
  if len(tasks) <= 12:
    for i in range(len(tasks)):
      for j in range(len(tasks)):
        ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7,
                color="black" if sim[i, j] > 0.6 else "white")
  clusters = results.get("task_clusters") or {}
  bounds = sorted({min(m) for m in clusters.values()} - {0})
  for b in bounds:
    ax.axhline(b - 0.5, color="white", lw=1.2)
    ax.axvline(b - 0.5, color="white", lw=1.2)
  fig.colorbar(im, ax=ax, label="cosine similarity of task embeddings")
  ax.set_title(f"{title}: task similarity, seed {results['seed']}", fontsize=9)
  _save(fig, os.path.join(out_dir, "similarity.png"))
  data = {"seed": results["seed"], "tasks": tasks, "cosine_similarity": np.round(sim, 6).tolist(),
          "identical_groups": [[tasks[t] for t in g] for g in embeddings.identical_groups(emb)]}
  if cluster_reports:
    data["cluster_reports"] = cluster_reports
  with open(os.path.join(out_dir, "similarity.json"), "w") as f:
    json.dump(data, f, indent=1)


def _file_name(prefix, task):
  return prefix + "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in task)


def _save_with_csv(fig, out_dir, name, header, rows) -> str:
  """``<name>.png`` and the data behind it, ``<name>.csv``; returns the PNG's file name."""
  _save(fig, os.path.join(out_dir, name + ".png"))
  with open(os.path.join(out_dir, name + ".csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(rows)
  return name + ".png"


def _history_task(run, hist, key, task):
  """``(task, its index)`` for ``--task`` (default: the first task of the run)."""
  tasks = (run["results"] or {}).get("tasks") or [str(i) for i in range(
      len(next(iter(hist[0][key].values()))))]
  task = task or tasks[0]
  if task not in tasks:
    raise ReportError(f"--task: {task!r} is not a task of {run['dir']}; choose one of {tasks}")
  return task, tasks.index(task)


def plot_taps_scores(run, task, title, out_dir) -> Optional[str]:
  """TAPS's Fig. 8 analogue: every TAPS layer's score for ``task`` over training, with tau."""
  hist = [h for h in run["alloc"] if "taps_scores" in h]
  if not hist:
    return None
  task, ti = _history_task(run, hist, "taps_scores", task)
  layers = list(hist[0]["taps_scores"])
  x = np.array([h["round"] for h in hist])
  tau = float(hist[-1].get("taps_tau", 0.1))
  fig, ax = plt.subplots(figsize=(6.0, 3.8))
  rows = []
  for l in layers:
    v = np.array([h["taps_scores"][l][ti] for h in hist])
    ax.plot(x, v, lw=1.2, label=l)
    rows += [(l, int(r), float(s)) for r, s in zip(x, v)]
  ax.axhline(tau, color="k", ls="--", lw=1, label=f"tau = {tau:g}")
  ax.set_xlabel("round")
  ax.set_ylabel(f"TAPS score for task {task}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="best")
  fig.suptitle(f"{title}: TAPS scores over training (task-specific while >= tau)\ntask {task}, "
               f"seed {(run['results'] or {}).get('seed', '?')}", fontsize=9)
  name = _file_name("taps_scores_", task)
  return _save_with_csv(fig, out_dir, name, ["layer", "round", "score"], rows)


def plot_probabilities(run, task, title, out_dir) -> Optional[str]:
  if any("taps_scores" in h for h in run["alloc"]):
    return plot_taps_scores(run, task, title, out_dir)
  if run["results"] and not readers.embeds_allocation(run["results"]):
    return None  # a TAPS run whose history predates taps_scores: only all-on component use
  hist = [h for h in run["alloc"] if "probabilities" in h]
  if not hist:
    return None
  task, ti = _history_task(run, hist, "probabilities", task)
  layers = sorted(hist[0]["probabilities"], key=lambda k: int(k.split("_")[1]))
  x = np.array([h["round"] for h in hist])
  fig, axes = plt.subplots(1, len(layers), figsize=(4.2 * len(layers), 3.6), squeeze=False,
                           sharey=True)
  rows = []
  for ax, l in zip(axes[0], layers):
    p = np.array([h["probabilities"][l][ti] for h in hist])  # [time, C]
    for c in range(p.shape[1]):
      ax.plot(x, p[:, c], lw=1.2, label=f"component {c}")
      rows += [(l, c, int(r), float(v)) for r, v in zip(x, p[:, c])]
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("round")
    ax.set_title(l.replace("_", " "), fontsize=9)
    ax.grid(alpha=0.3)
  axes[0, 0].set_ylabel(f"P(on) for task {task}")
  axes[0, -1].legend(fontsize=7, loc="lower right", ncol=2 if p.shape[1] > 8 else 1)
  fig.suptitle(f"{title}: allocation probabilities over training\ntask {task}, seed "
               f"{(run['results'] or {}).get('seed', '?')}", fontsize=9)
  name = _file_name("probabilities_", task)
  return _save_with_csv(fig, out_dir, name, ["layer", "component", "round", "p_on"], rows)


def run_clusters(run) -> Optional[Dict[str, List[int]]]:
  """The true task clusters of a run: its results' ``task_clusters``, or for a run still in
  progress, those of the suite its ``config.json`` names (None: a suite without clusters)."""
  if run["results"]:
    return run["results"].get("task_clusters")
  if run["config"].get("seed") is None:  # no config.json (or one without a seed)
    return None
  from gmr import data  # pylint: disable=g-import-not-at-top
  return data.task_clusters(run["config"])


def run_seed(run) -> int:
  return int((run["results"] or run["config"])["seed"])


def clusters_over_training(run) -> Optional[List[dict]]:
  """Per allocation-history point of a run (finished or in progress) whose suite knows its
  task clusters: :func:`gmr.analysis.embeddings.history_cluster_row` at that round."""
  if not run["alloc"]:
    return None
  clusters = run_clusters(run)
  if not clusters:
    return None
  return [{"round": int(h["round"]), **embeddings.history_cluster_row(h["probabilities"], clusters)}
          for h in run["alloc"]]


def plot_clusters_over_training(runs: List[dict], title: str, out_dir: str) -> Optional[str]:
  """ARI of the 3-way clustering and distinct embeddings per true cluster over training, one
  line per seed (section V-C's finding followed through training)."""
  series, unfinished = {}, set()
  for r in runs:
    pts = clusters_over_training(r)  # None without clusters (or config.json) or history
    if pts:
      series[run_seed(r)] = pts
      if not r["results"]:
        unfinished.add(run_seed(r))
  if not series:
    return None
  names = sorted(k[len("distinct_"):] for k in next(iter(series.values()))[0] if
                 k.startswith("distinct_"))
  first = next(iter(series.values()))[0]
  layers = sorted((k[len("ari_"):] for k in first if k.startswith("ari_")),
                  key=lambda l: int(l.rsplit("_", 1)[1]))
  per_layer = [f"{m}_{l}" for l in layers for m in ("ari", "within", "between")]
  fig, axes = plt.subplots(1, 2 + len(names), figsize=(4.2 * (2 + len(names)), 3.6), squeeze=False)
  rows = []
  styles = ["-", "--", ":", "-."]
  for i, (seed, pts) in enumerate(sorted(series.items())):
    x = [p["round"] for p in pts]
    seed_label = f"{seed} (in progress)" if seed in unfinished else seed
    axes[0, 0].plot(x, [p["ari"] for p in pts], lw=1.3, color=f"C{i}",
                    label=f"ARI, seed {seed_label}")
    axes[0, 0].plot(x, [p["neighbour_agreement"] for p in pts], lw=1.0, ls="--", color=f"C{i}",
                    label=f"nearest task in own cluster, seed {seed}")
    for j, l in enumerate(layers):
      axes[0, 1].plot(x, [p[f"ari_{l}"] for p in pts], lw=1.1, color=f"C{j}",
                      ls=styles[i % len(styles)], label=f"{l.replace('_', ' ')}, seed {seed}")
    for ax, n in zip(axes[0, 2:], names):
      ax.plot(x, [p[f"differing_{n}"] for p in pts], lw=1.3, color=f"C{i}",
              label=f"all, seed {seed} ({pts[-1][f'distinct_{n}']} distinct at round {x[-1]})")
      ax.plot(x, [p[f"differing_decided_{n}"] for p in pts], lw=1.0, ls="--", color=f"C{i}",
              label=f"decided by both, seed {seed}")
    rows += [(seed, p["round"], p["ari"], p["decided"], p["neighbour_agreement"],
              *[p[f"distinct_{n}"] for n in names],
              *[p[f"{m}_{n}"] for n in names for m in ("differing", "differing_decided")],
              *[p[k] for k in per_layer]) for p in pts]
  axes[0, 0].set_ylabel("ARI (3-way clustering) / fraction of tasks")
  axes[0, 0].set_ylim(-0.1, 1.05)
  axes[0, 0].set_title("ARI vs. the true clusters (solid); tasks whose\nnearest task is of "
                       "their cluster (dashed)", fontsize=9)
  axes[0, 1].set_ylabel("adjusted Rand index (3-way clustering)")
  axes[0, 1].set_ylim(-0.1, 1.05)
  axes[0, 1].set_title("ARI of each routed layer's allocation alone", fontsize=9)
  for ax, n in zip(axes[0, 2:], names):
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1], 1) + 0.5)  # 0 = the paper's finding
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("components (mean over pairs of tasks)")
    ax.set_title(f"cluster {n}: components in which two of its tasks\ndiffer "
                 "(0 = one embedding, the paper's finding)", fontsize=9)
  for ax in axes[0]:
    ax.set_xlabel("round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.suptitle(f"{title}: task clusters in the greedy allocations over training", fontsize=9)
  _save(fig, os.path.join(out_dir, "clusters_over_training.png"))
  with open(os.path.join(out_dir, "clusters_over_training.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["seed", "round", "ari", "decided", "neighbour_agreement"]
               + [f"distinct_{n}" for n in names]
               + [f"{m}_{n}" for n in names for m in ("differing", "differing_decided")]
               + per_layer)
    w.writerows(rows)
  return "clusters_over_training.png"


def plot_comparison(group_runs: Dict[str, List[dict]], smooth_steps: int, out: str, title: str):
  """Fig. 1 / 7 across methods: the loss averaged over tasks, one curve (mean of seeds with a
  band by :func:`band`) per group, its legend entry saying what both are; training loss, and
  test loss where evaluated more than once."""
  series = {}
  for name, runs in group_runs.items():
    c = loss_curves(runs, smooth_steps)
    if c is None:
      continue
    logs = [r["log"] for r in runs if r["log"]]
    n = len(c["x"])
    per_seed = np.array([smooth([e["train_loss_mean"] for e in l[:n]], c["window_points"])
                         for l in logs])
    entry = {"x": c["x"], "train": band(per_seed, LOSS_FLOOR)}
    if "eval" in c:
      evals = [r["eval"] for r in runs if len(r["eval"]) > 1]
      m = len(c["eval_x"])
      entry["eval_x"] = c["eval_x"]
      entry["eval"] = band(np.array([[e["test"]["loss"]["mean"] for e in ev[:m]] for ev in evals]),
                           LOSS_FLOOR)
    series[name] = entry
  if len(series) < 2:
    return None
  panels = 2 if all("eval" in e for e in series.values()) else 1
  fig, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.2), squeeze=False)
  rows = []
  for name, e in series.items():
    for ax, key, xkey in zip(axes[0], ("train", "eval"), ("x", "eval_x")):
      if key not in e:
        continue
      _band_line(ax, e[xkey], e[key], f"{name}: {e[key].describe()}", lw=1.5)
      rows += [[name, key, *r] for r in _band_rows(e[xkey], e[key])]
  axes[0, 0].set_ylabel("training loss, mean over tasks (smoothed)")
  axes[0, 0].set_title(f"{title}: training loss", fontsize=9)
  if panels == 2:
    axes[0, 1].set_ylabel("test loss, mean over tasks")
    axes[0, 1].set_title("test loss at the evaluations", fontsize=9)
  for ax in axes[0]:
    ax.set_xlabel("round (one step per task)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
  _save(fig, os.path.join(out, "comparison.png"))
  with open(os.path.join(out, "comparison.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["group", "split", "round", "mean", "band_lo", "band_hi", "band"])
    w.writerows(rows)
  return "comparison.png"


# ----------------------------------------------------------------------------- driver
def report(workdir: str, out: str, task: str = "", seed: int = -1, smooth_steps: int = 100):
  """Write every figure and table for ``workdir`` under ``out``; returns what was written."""
  groups = find_groups(workdir)
  written = {}
  table = {}
  all_runs = {name: [read_run(d) for d in dirs] for name, dirs in groups.items()}
  for name, dirs in groups.items():
    runs = all_runs[name]
    finished = [r for r in runs if r["results"]]
    out_dir = os.path.join(out, name)
    os.makedirs(out_dir, exist_ok=True)
    files = []
    curves = loss_curves(runs, smooth_steps)
    if curves is not None:
      plot_loss_curves(curves, name, out_dir)
      files.append("loss_curves.png")
    if finished:
      table[name] = tables.summarize([r["results"] for r in finished])
      pick = [r for r in finished if seed < 0 or r["results"]["seed"] == seed]
      if not pick:
        raise ReportError(f"--seed: no finished seed {seed} in {name}; have "
                          f"{sorted(r['results']['seed'] for r in finished)}")
      res = pick[0]["results"]
      reports = None
      if res.get("task_clusters"):
        reports = {str(r["results"]["seed"]): embeddings.cluster_report(r["results"])
                   for r in finished}
      plot_allocation(res, name, out_dir)
      plot_similarity(res, name, out_dir, reports)
      files += ["allocation.png", "similarity.png"]
      # Fig. 5 of every seed, where seeds can differ (a learned allocation)
      method = methods_lib.METHODS.get(res.get("method"))  # None: not registered here
      if len(finished) > 1 and method is not None and method.learned:
        for r in finished:
          each = f"allocation_seed_{r['results']['seed']}"
          plot_allocation(r["results"], name, out_dir, each)
          files.append(each + ".png")
      prob = plot_probabilities(pick[0], task, name, out_dir)
      if prob:
        files.append(prob)
    # finished runs and runs in progress, from their allocation history; TAPS's history holds
    # its (all-on) component use, not its task-specific layers
    method = (runs[0]["results"] or runs[0]["config"]).get("method")
    over = (plot_clusters_over_training(runs, name, out_dir)
            if readers.embeds_allocation({"method": method}) else None)
    if over:
      files.append(over)
    written[name] = files
  if len(groups) > 1:
    os.makedirs(out, exist_ok=True)
    comp = plot_comparison(all_runs, smooth_steps, out, os.path.basename(os.path.normpath(workdir)))
    if comp:
      written["comparison"] = [comp]
  if len(groups) > 1 and table:
    md = tables.to_markdown(table, f"Summary of {workdir}",
                            f"python -m experiments.report --workdir={workdir} --out={out}")
    with open(os.path.join(out, "table.md"), "w") as f:
      f.write(md)
    with open(os.path.join(out, "table.json"), "w") as f:
      json.dump(table, f, indent=1)
    written["table"] = ["table.md"]
  return written


def main(argv):
  del argv
  if not _WORKDIR.value or not _OUT.value:
    raise app.UsageError("give --workdir=<run or sweep dir> and --out=<dir>")
  try:
    written = report(_WORKDIR.value, _OUT.value, _TASK.value, _SEED.value, _SMOOTH.value)
  except ReportError as e:
    raise SystemExit(f"error: {e}")
  for g, files in written.items():
    where = _OUT.value if g in ("table", "comparison") else os.path.join(_OUT.value, g)
    print(f"{where}: {', '.join(files)}")


if __name__ == "__main__":
  app.run(main)
