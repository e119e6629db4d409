"""Cross-check of Table I (4-MNISTs) against the authors' own TensorFlow 1 implementation.

Four modes:

  run    trains the authors' 4-MNISTs experiment (``mnist/mnist_train.py`` of their
         ``learning_parameter_allocation`` folder: their model, routers, optimizers, data pipeline
         and training loop, their hyperparameters: Adam lr 0.005 for weights and allocation logits,
         batch 16, 37,500 rounds, dropout 0.5) under current TensorFlow's ``tf.compat.v1`` and
         writes one small json: final test accuracy per task and their mean (percent), the greedy
         allocation and its active fraction, wall time and task steps per second.
  heads  builds the authors' training graph and shows what happens to the heads of tasks that
         are not in the batch: ``tf.gradients`` of one task's loss with respect to every head
         (None or a tensor, and its value on a random batch), and how much one Adam step of
         another task moves a head and its Adam moments.
  gmr    turns the ``results.json`` of a gmr run (``python -m experiments.main ...``) into the same
         small json, so that both implementations sit in one folder of runs.
  table  reads such a folder and writes ``<out>.md`` and ``<out>.json``: every run's numbers,
         mean +- std, the 90% t-interval of the mean, the command lines that made them.

  python experiments/authors_crosscheck.py run --authors_dir=<checkout> \\
      --data_dir=../shared/datasets --method=shared_bottom --seed=0 --out=<runs>/authors_sb_0.json
  python experiments/authors_crosscheck.py heads --authors_dir=<checkout> \\
      --data_dir=../shared/datasets --out=<file>.json
  python experiments/authors_crosscheck.py gmr --workdir=<gmr workdir> \\
      --variant=sparse_head_updates=false --out=<runs>/gmr_nosparse_sb_0.json
  python experiments/authors_crosscheck.py table --runs=results/authors_crosscheck_runs \\
      --out=results/authors_crosscheck --reference=results/four_mnists.json

The authors' code is NOT part of this repository and is never copied into it. Get it from the
public google-research repository (folder ``learning_parameter_allocation/``: ``data.py``,
``models.py``, ``utils.py``, ``mnist/mnist_train.py``, ``pathnet/*.py``), e.g. with a sparse
checkout, and pass the folder that CONTAINS ``learning_parameter_allocation/`` as
``--authors_dir``. The run mode needs TensorFlow 2.x with ``tf-keras`` (same version),
``tensorflow-probability`` and ``tqdm`` in a virtualenv of its own; TensorFlow is not a
dependency of gmr and is imported only inside the run and heads modes, so ``--help`` and the other modes
work in gmr's own environment.

The shim (everything this script changes around the authors' code; their files are used as they
are):
  * ``TF_USE_LEGACY_KERAS=1`` (``tf.compat.v1.keras`` is ``tf_keras``) and
    ``tf.compat.v1.disable_v2_behavior()``: graph mode, TF1 control flow and variables, as under
    the TensorFlow 1.15 their requirements pin.
  * ``tf.contrib`` (gone from TensorFlow 2): ``tf.contrib.training.HParams`` is a plain attribute
    holder; ``tf.contrib.summary`` is a set of no-ops (summaries are only written to TensorBoard
    and never feed back into training); ``tf.contrib.layers.group_norm`` is not needed here.
  * ``tensorflow_datasets.load('mnist')``: a stand-in module reading the canonical MNIST IDX
    files (``<data_dir>/mnist/*-idx?-ubyte.gz``) into ``{'image': uint8 [28, 28, 1], 'label':
    int64}`` datasets, the features TFDS gives. The authors' own ``data.get_mnist`` /
    ``get_rotated_mnist`` then apply their normalisation, their rotation
    (``tf.image.rot90``, k=1: counter-clockwise), caching and 60,000-example shuffle.
  * Seeds: the authors set none. Here ``--seed`` seeds TensorFlow's graph-level seed (weights
    init, Gumbel noise, dropout, dataset shuffles), NumPy and Python's ``random`` (the task order
    of each round is ``random.shuffle``).
  * Bookkeeping only: their ``tqdm`` progress bar is replaced by a line every 2,500 rounds; their
    checkpoints and summaries go to a temporary folder that is deleted afterwards; the final
    evaluation runs on the test split only (their script also evaluates the training split,
    which takes minutes and changes nothing); the evaluation function is wrapped to record the
    accuracies it prints (and, for Gumbel-Matrix, to read the allocation logits at that moment);
    ``--rounds`` (default: theirs, 37,500) shortens a run through ``HParams.num_steps``, for
    timing.
"""

import argparse
import glob
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time

TASKS = ("MNIST", "MNIST-2", "MNIST-Rot", "MNIST-Rot-2")
PAPER = {"shared_bottom": (95.7, 0.5), "gumbel_matrix": (96.8, 0.2), "no_sharing": (93.5, 5.1)}
METHOD_TITLES = {"shared_bottom": "shared bottom", "gumbel_matrix": "Gumbel-Matrix",
                 "no_sharing": "no sharing"}
GMR_COMMAND = ("python -m experiments.main --config=experiments/configs/four_mnists.py:{method} "
               "--config.data_dir={data_dir}{overrides} --config.seed={seed} --workdir={workdir}")


# ---------------------------------------------------------------------------------------------
# run: the authors' code under tf.compat.v1


class _HParams(object):
  """``tf.contrib.training.HParams``: keyword arguments become attributes."""

  rounds_override = 0

  def __init__(self, **kwargs):
    if self.rounds_override and "num_steps" in kwargs:
      kwargs["num_steps"] = self.rounds_override
    self.__dict__.update(kwargs)


def _install_shim(tf, data_dir: str, rounds: int) -> None:
  """``tf.contrib`` and ``tensorflow_datasets`` as far as the authors' 4-MNISTs code uses them."""
  import contextlib
  import types

  _HParams.rounds_override = rounds

  def scalar(*args, **kwargs):
    del args, kwargs
    return tf.no_op()

  summary = types.SimpleNamespace(
      scalar=scalar,
      all_summary_ops=lambda: [],
      always_record_summaries=contextlib.nullcontext,
      record_summaries_every_n_global_steps=lambda *a, **k: contextlib.nullcontext(),
      create_file_writer=lambda *a, **k: types.SimpleNamespace(set_as_default=lambda: None),
      initialize=lambda *a, **k: None)
  tf.contrib = types.SimpleNamespace(training=types.SimpleNamespace(HParams=_HParams),
                                     summary=summary)

  def idx_split(prefix: str):
    """One MNIST split from its two gzipped IDX files, as TFDS gives it."""
    folder = os.path.join(data_dir, "mnist")
    images = tf.data.FixedLengthRecordDataset(
        os.path.join(folder, f"{prefix}-images-idx3-ubyte.gz"), record_bytes=28 * 28,
        header_bytes=16, compression_type="GZIP")
    labels = tf.data.FixedLengthRecordDataset(
        os.path.join(folder, f"{prefix}-labels-idx1-ubyte.gz"), record_bytes=1,
        header_bytes=8, compression_type="GZIP")
    images = images.map(lambda r: tf.reshape(tf.decode_raw(r, tf.uint8), [28, 28, 1]))
    labels = labels.map(lambda r: tf.cast(tf.decode_raw(r, tf.uint8)[0], tf.int64))
    return tf.data.Dataset.zip((images, labels)).map(lambda x, y: {"image": x, "label": y})

  def load(name, **kwargs):
    if name != "mnist" or kwargs:
      raise NotImplementedError(f"the shim's tensorflow_datasets knows only load('mnist'), "
                                f"not {name!r} {kwargs}")
    return {"train": idx_split("train"), "test": idx_split("t10k")}

  tfds = types.ModuleType("tensorflow_datasets")
  tfds.load = load
  sys.modules["tensorflow_datasets"] = tfds


def _check_data(data_dir: str) -> None:
  for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    path = os.path.join(data_dir, "mnist", f)
    if not os.path.isfile(path):
      sys.exit(f"error: --data_dir: {path} is missing; pass the folder that holds mnist/*.gz")


def _import_authors(args):
  """TensorFlow in TF1 mode, the shim, the authors' modules, the seeds and their flags."""
  pkg = os.path.join(args.authors_dir, "learning_parameter_allocation")
  if not os.path.isfile(os.path.join(pkg, "mnist", "mnist_train.py")):
    sys.exit(f"error: --authors_dir: {pkg}/mnist/mnist_train.py is missing; pass the folder "
             "that contains the authors' learning_parameter_allocation/")
  _check_data(args.data_dir)
  os.environ["TF_USE_LEGACY_KERAS"] = "1"  # tf.compat.v1.keras = tf_keras (Keras 2), as in TF1
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import random

  import numpy as np
  import tensorflow as tf2  # pylint: disable=g-import-not-at-top
  tf = tf2.compat.v1
  tf.disable_v2_behavior()
  _install_shim(tf, args.data_dir, getattr(args, "rounds", 0))
  sys.path.insert(0, os.path.abspath(args.authors_dir))
  from absl import flags  # pylint: disable=g-import-not-at-top
  from learning_parameter_allocation import utils  # pylint: disable=g-import-not-at-top
  from learning_parameter_allocation.mnist import mnist_train  # pylint: disable=g-import-not-at-top
  from learning_parameter_allocation.pathnet import pathnet_lib  # pylint: disable=g-import-not-at-top

  random.seed(args.seed)
  np.random.seed(args.seed)
  tf.set_random_seed(args.seed)

  logdir = tempfile.mkdtemp(prefix="authors_crosscheck_")  # their checkpoints: deleted after
  flags.FLAGS([sys.argv[0], f"--method={args.method}", f"--logdir={logdir}"])
  return tf2, tf, utils, mnist_train, pathnet_lib, logdir


def run_authors(args, command: str) -> dict:
  """Trains the authors' 4-MNISTs experiment once; returns this run's numbers."""
  import numpy as np
  tf2, tf, utils, mnist_train, _, logdir = _import_authors(args)

  clock = {"t0": None, "rounds": 0, "t_eval": None}
  evals = []
  alloc = {}
  train_step = utils.run_pathnet_training_step
  evaluate = utils.run_pathnet_evaluation

  def counted_step(*a, **k):
    if clock["t0"] is None:
      clock["t0"] = time.time()
    train_step(*a, **k)
    clock["rounds"] += 1
    if clock["rounds"] % 2500 == 0:
      dt = time.time() - clock["t0"]
      print(f"round {clock['rounds']}: {clock['rounds'] * len(TASKS) / dt:.0f} task steps/s",
            flush=True)

  def recorded_evaluation(session, **k):
    if clock["t_eval"] is None:
      clock["t_eval"] = time.time()
      routers = [v for v in tf.trainable_variables() if "router_dist" in v.name]
      values = session.run(routers + [tf.train.get_or_create_global_step()])
      alloc["logits"] = {v.name: x for v, x in zip(routers, values[:-1])}
      alloc["global_step"] = int(values[-1])
    acc = evaluate(session=session, **k)
    evals.append(acc)
    return acc

  run_all = utils.run_pathnet_training_and_evaluation

  def test_only(**k):  # mnist_train.py asks for ['train', 'test']; train adds minutes, no numbers
    return run_all(**dict(k, evaluate_on=["test"]))

  utils.run_pathnet_training_step = counted_step
  utils.run_pathnet_evaluation = recorded_evaluation
  mnist_train.utils.run_pathnet_training_and_evaluation = test_only
  utils.tqdm = lambda it: it

  t0 = time.time()
  try:
    mnist_train.main(None)
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  wall = time.time() - t0
  train_s = clock["t_eval"] - clock["t0"]
  task_steps = clock["rounds"] * len(TASKS)

  test = {t: round(100.0 * float(a), 4) for t, a in zip(TASKS, evals[-1])}
  if alloc["logits"]:
    # the authors' greedy evaluation: connected iff softmax(logits)[..., 0] >= 0.5
    layers = [np.asarray(x) for x in alloc["logits"].values()]  # in the order they were made
    on = [(np.exp(x[..., 0]) / np.exp(x).sum(-1) >= 0.5).astype(int) for x in layers]
    allocation = {t: [layer[i].tolist() for layer in on] for i, t in enumerate(TASKS)}
    active = float(np.mean(np.concatenate([layer.ravel() for layer in on])))
    probabilities = {t: [np.round(np.exp(x[i, :, 0]) / np.exp(x[i]).sum(-1), 4).tolist()
                         for x in layers] for i, t in enumerate(TASKS)}
  else:
    allocation = probabilities = None
    active = 1.0 if args.method == "shared_bottom" else 1.0 / len(TASKS)
  return {
      "impl": "authors_tf1",
      "variant": "",
      "method": args.method,
      "seed": args.seed,
      "rounds": clock["rounds"],
      "task_steps": task_steps,
      "global_step": alloc["global_step"],
      "acc_per_task": test,
      "acc_mean": round(float(np.mean(list(test.values()))), 4),
      "active_fraction": active,
      "allocation": allocation,
      "probabilities": probabilities,
      "wall_time_s": round(wall, 1),
      "train_time_s": round(train_s, 1),
      "task_steps_per_s": round(task_steps / train_s, 1),
      "tensorflow": tf2.__version__,
      "cpu_affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
      "command": command,
  }


def check_heads(args) -> dict:
  """On the authors' built training graph: the gradient of one task's loss with respect to the
  other tasks' heads (None or a tensor? its value?), and what their Adam step does to a head
  whose task is not in the batch. Uses random inputs fed to their placeholders; no training."""
  import numpy as np
  tf2, tf, utils, mnist_train, pn, logdir = _import_authors(args)
  found = {"mode": "heads", "method": args.method, "seed": args.seed}

  def inspect(task_names, task_data, input_data_shape, training_hparams, components_layers,
              **unused):
    del task_data, unused
    pathnet = pn.PathNet(components_layers, training_hparams)
    p_inputs = tf.placeholder(tf.float32, shape=[None] + input_data_shape)
    p_labels = tf.placeholder(tf.int64, shape=[None])
    p_task_id = tf.placeholder(tf.int32, shape=[], name="task_id")
    end = pathnet({"in_tensor": p_inputs, "labels": p_labels, "task_id": p_task_id,
                   "training": True})  # as utils.build_pathnet_graph does
    heads = [v for v in tf.trainable_variables() if "dense" in v.name]
    grads = tf.gradients(end["task_loss"], heads)
    found["gradient_is_none"] = {v.name: g is None for v, g in zip(heads, grads)}
    session = tf.Session()
    session.run(tf.global_variables_initializer())
    rng = np.random.RandomState(args.seed)
    batch = {p_inputs: rng.rand(16, 28, 28, 1).astype(np.float32),
             p_labels: rng.randint(0, 10, size=16)}
    norms = {}
    for task in range(len(task_names)):
      values = session.run([g for g in grads if g is not None],
                           {**batch, p_task_id: task})
      names = [v.name for v, g in zip(heads, grads) if g is not None]
      norms[task_names[task]] = {n: float(np.linalg.norm(x)) for n, x in zip(names, values)}
    found["gradient_norm_by_batch_task"] = norms
    # Adam on a head whose task is absent: a step on task 0, then one on task 1
    adam = {v.name: [w for w in tf.global_variables()
                     if v.op.name + "/Adam" in w.name] for v in heads}
    head0 = heads[0]
    watch = [head0] + adam[head0.name]
    before = session.run(watch)
    session.run(end["train_op"], {**batch, p_task_id: 0})
    after_own = session.run(watch)
    session.run(end["train_op"], {**batch, p_task_id: 1})
    after_other = session.run(watch)
    names = ["weights"] + [w.name for w in adam[head0.name]]
    found["head_of_task_0"] = head0.name
    found["change_on_its_own_step"] = {
        n: float(np.abs(a - b).max()) for n, a, b in zip(names, after_own, before)}
    found["change_on_task_1_step"] = {
        n: float(np.abs(a - b).max()) for n, a, b in zip(names, after_other, after_own)}
    found["tensorflow"] = tf2.__version__

  utils.run_pathnet_training_and_evaluation = inspect
  try:
    mnist_train.main(None)
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  return found


# ---------------------------------------------------------------------------------------------
# gmr: a gmr run's results.json as one of these small jsons


def _percent(x: float) -> float:
  return 100.0 * x if x <= 1.0 else x


def gmr_run(workdir: str, variant: str, command: str) -> dict:
  """The numbers of a gmr 4-MNISTs run (``<workdir>/results.json``) in this script's form."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    sys.exit(f"error: --workdir: {path} is missing; the gmr run has not finished")
  r = json.load(open(path))
  cfg_path = os.path.join(workdir, "config.json")
  cfg = json.load(open(cfg_path)) if os.path.isfile(cfg_path) else {}
  if cfg and not variant:  # what the run changed of the fields this cross-check is about
    parts = []
    if not cfg.get("sparse_head_updates", True):
      parts.append("sparse_head_updates=false")
    if (cfg.get("data") or {}).get("rotate_k", -1) != -1:
      parts.append(f"data.rotate_k={cfg['data']['rotate_k']}")
    variant = ",".join(parts)
  acc = r["final"]["accuracy"]  # gmr's names: mnist, mnist_copy, mnist_rot, mnist_rot_copy
  per_task = {t: round(_percent(float(acc[name])), 4) for t, name in zip(TASKS, r["tasks"])}
  if not command:
    overrides = "".join(f" --config.{v}" for v in variant.split(",") if v)
    command = GMR_COMMAND.format(method=r["method"], data_dir=cfg.get("data_dir") or "<data_dir>",
                                 overrides=overrides, seed=r["seed"], workdir=workdir)
  return {
      "impl": "gmr",
      "variant": variant,
      "method": r["method"],
      "seed": r["seed"],
      "rounds": r.get("rounds"),
      "task_steps": r.get("steps"),
      "acc_per_task": per_task,
      "acc_mean": round(sum(per_task.values()) / len(per_task), 4),
      "active_fraction": r.get("active_fraction"),
      "wall_time_s": round(float(r.get("wall_time_s", 0.0)), 1),
      "task_steps_per_s": (round(r["steps"] / r["wall_time_s"], 1)
                           if r.get("steps") and r.get("wall_time_s") else None),
      "code": r.get("code"),
      "command": command,
  }


# ---------------------------------------------------------------------------------------------
# table


def summarize(values) -> dict:
  """n, mean, sample std, and the 90% Student-t interval of the mean."""
  n = len(values)
  mean = sum(values) / n
  if n < 2:
    return {"n": n, "mean": mean, "std": None, "ci90_half": None, "ci90": None}
  from scipy import stats  # pylint: disable=g-import-not-at-top
  std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
  half = float(stats.t.ppf(0.95, n - 1)) * std / math.sqrt(n)
  return {"n": n, "mean": mean, "std": std, "ci90_half": half, "ci90": [mean - half, mean + half]}


def _row_name(run: dict) -> str:
  name = "authors' TF1 code" if run["impl"] == "authors_tf1" else "gmr"
  return name + (f" ({run['variant']})" if run.get("variant") else "")


def reference_rows(path: str) -> list:
  """Rows for gmr's committed Table I runs (made with sparse_head_updates=true) from a
  ``launch.tables`` json such as
  ``results/four_mnists.json``: only their per-seed mean accuracies are there."""
  ref = json.load(open(path))
  rows = []
  for method in ("gumbel_matrix", "shared_bottom"):
    if method not in ref:
      continue
    r = ref[method]
    rows.append({
        "method": method,
        "implementation": f"gmr (sparse_head_updates=true; {os.path.basename(path)})",
        "seeds": r["seeds"], "acc_per_seed": r["acc_per_seed"], **summarize(r["acc_per_seed"]),
        "per_task_mean": None, "active_fraction": [r.get("active_fraction")],
        "task_steps_per_s": [], "runs": [], "source": path})
  return rows


def make_table(runs_dir: str, reference: str = "") -> dict:
  """Groups the runs in ``runs_dir`` by (method, implementation, variant); with
  ``reference``, adds gmr's default-config rows from that table json."""
  files = sorted(glob.glob(os.path.join(runs_dir, "*.json")))
  if not files:
    sys.exit(f"error: --runs: no *.json in {runs_dir}")
  groups, heads = {}, []
  for f in files:
    run = json.load(open(f))
    run["file"] = os.path.basename(f)
    if run.get("mode") == "heads":  # what the heads mode saw, not a training run
      heads.append(run)
      continue
    groups.setdefault((run["method"], _row_name(run)), []).append(run)
  rows = []
  for (method, name), runs in sorted(groups.items()):
    runs.sort(key=lambda r: r["seed"])
    accs = [r["acc_mean"] for r in runs]
    rows.append({
        "method": method, "implementation": name, "seeds": [r["seed"] for r in runs],
        "acc_per_seed": accs, **summarize(accs),
        "per_task_mean": {t: sum(r["acc_per_task"][t] for r in runs) / len(runs) for t in TASKS},
        "active_fraction": [r.get("active_fraction") for r in runs],
        "task_steps_per_s": [r.get("task_steps_per_s") for r in runs],
        "runs": [{k: r.get(k) for k in ("file", "seed", "acc_mean", "acc_per_task",
                                        "active_fraction", "wall_time_s", "task_steps_per_s",
                                        "tensorflow", "cpu_affinity", "command")} for r in runs],
    })
  if reference:
    rows += reference_rows(reference)
    rows.sort(key=lambda r: r["method"])
  return {"paper": {m: {"mean": v[0], "std": v[1]} for m, v in PAPER.items()}, "rows": rows,
          "differences": differences(rows), "heads": heads}


def welch(a: dict, b: dict) -> dict:
  """``a - b`` of two rows' means: Welch's 90% interval and two-sided p (None below n=2)."""
  if a["n"] < 2 or b["n"] < 2:
    return {"diff": a["mean"] - b["mean"], "ci90": None, "p": None}
  from scipy import stats  # pylint: disable=g-import-not-at-top
  va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
  se = math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
  d = a["mean"] - b["mean"]
  half = float(stats.t.ppf(0.95, df)) * se
  return {"diff": d, "ci90": [d - half, d + half], "p": float(2 * stats.t.sf(abs(d) / se, df))}


def differences(rows: list) -> list:
  """Every other implementation's row minus the authors' row of the same method."""
  out = []
  for base in rows:
    if base["implementation"] != "authors' TF1 code":
      continue
    for r in rows:
      if r["method"] == base["method"] and r is not base:
        out.append({"method": r["method"], "a": r["implementation"], "b": base["implementation"],
                    **welch(r, base)})
  return out


def _fmt(x, nd=2):
  return "-" if x is None else f"{x:.{nd}f}"


def write_table(table: dict, out: str, command: str) -> None:
  """``<out>.json`` and ``<out>.md``."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  table = dict(table, command=command)
  with open(out + ".json", "w") as f:
    json.dump(table, f, indent=1)
  lines = [
      "# 4-MNISTs (Table I): the authors' TensorFlow 1 code vs gmr",
      "",
      f"Made by `{command}` from the per-run files in the runs folder. Test accuracy (%), "
      "mean of the 4 tasks, after 37,500 rounds; std over runs (n-1); 90% t-interval of the "
      "mean. The authors' code sets no seeds; here each run seeds TensorFlow, NumPy and Python "
      "from its seed.",
      "",
      "| method | implementation | n | mean +- std | 90% interval | per seed | paper |",
      "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in table["rows"]:
    p = table["paper"].get(r["method"])
    ci = "-" if r["ci90"] is None else f"[{r['ci90'][0]:.2f}, {r['ci90'][1]:.2f}]"
    per_seed = ", ".join(f"{s}: {a:.2f}" for s, a in zip(r["seeds"], r["acc_per_seed"]))
    lines.append(f"| {METHOD_TITLES.get(r['method'], r['method'])} | {r['implementation']} | "
                 f"{r['n']} | {r['mean']:.2f} +- {_fmt(r['std'])} | {ci} | {per_seed} | "
                 + (f"{p['mean']} +- {p['std']}" if p else "-") + " |")
  if table.get("differences"):
    lines += ["", "| method | a - b | difference (points) | 90% interval (Welch) | p |",
              "| --- | --- | --- | --- | --- |"]
    for d in table["differences"]:
      ci = "-" if d["ci90"] is None else f"[{d['ci90'][0]:+.2f}, {d['ci90'][1]:+.2f}]"
      lines.append(f"| {METHOD_TITLES.get(d['method'], d['method'])} | {d['a']} - {d['b']} | "
                   f"{d['diff']:+.2f} | {ci} | {_fmt(d['p'], 3)} |")
  envs = sorted({(run.get("tensorflow"), str(run.get("cpu_affinity"))) for r in table["rows"]
                 for run in r["runs"] if run.get("tensorflow")})
  if envs:
    lines += ["", "The authors' code ran under " + "; ".join(
        f"TensorFlow {tf} (tf.compat.v1, tf-keras), CPU affinity {aff}" for tf, aff in envs)
              + " (see each run's file)."]
  refs = sorted({r["source"] for r in table["rows"] if r.get("source")})
  if refs:
    lines += ["", "Rows `gmr (sparse_head_updates=true; ...)`: the per-seed means of gmr's "
              "committed Table I runs (made with sparse_head_updates=true, then gmr's default, "
              "and rotate_k=-1), read from "
              + ", ".join(f"`{x}`" for x in refs) + "; their command is in the .md beside it."]
  lines += ["", "## Runs", "",
            "| method | implementation | seed | " + " | ".join(TASKS)
            + " | mean | active | task steps/s | file |",
            "| --- | --- | --- | " + " | ".join("---" for _ in TASKS) + " | --- | --- | --- | --- |"]
  for r in table["rows"]:
    for run in r["runs"]:
      lines.append(
          f"| {METHOD_TITLES.get(r['method'], r['method'])} | {r['implementation']} | "
          f"{run['seed']} | " + " | ".join(f"{run['acc_per_task'][t]:.2f}" for t in TASKS)
          + f" | {run['acc_mean']:.2f} | {_fmt(run['active_fraction'])} | "
          f"{_fmt(run['task_steps_per_s'], 0)} | {run['file']} |")
  for h in table.get("heads", []):
    # head variables are named .../component<t>/...: the head of task t
    head_of = lambda name: int(re.search(r"component(\d+)/", name).group(1))
    norms = list(h["gradient_norm_by_batch_task"].values())
    own = [v for t, g in enumerate(norms) for n, v in g.items() if head_of(n) == t]
    other = [v for t, g in enumerate(norms) for n, v in g.items() if head_of(n) != t]
    step = h["change_on_task_1_step"]
    lines += ["", f"## Heads of tasks not in the batch (authors' graph, {h['method']}, "
              f"TensorFlow {h['tensorflow']}; `{h['file']}`)", "",
              f"- `tf.gradients` of one task's loss: None for "
              f"{sum(h['gradient_is_none'].values())} of {len(h['gradient_is_none'])} head "
              "variables (every head gets a tensor).",
              f"- On a random batch: the other tasks' heads get gradients of norm "
              f"{max(other):g} (exactly zero); the task's own head (kernel, bias) "
              f"{min(own):.1f}-{max(own):.1f}.",
              f"- Head of task 0 on task 1's Adam step: weights move by up to "
              f"{step['weights']:.5f} (its own step: "
              f"{h['change_on_its_own_step']['weights']:.5f}); its Adam moments change by "
              + ", ".join(f"{v:.3g}" for k, v in step.items() if k != "weights")
              + " (first, second: their decay by beta1, beta2).",
              f"- Command: `{h['command']}`"]
  lines += ["", "## Commands", ""]
  for r in table["rows"]:
    for run in r["runs"]:
      lines.append(f"- `{run['file']}`: `{run['command']}`")
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------


def parse(argv):
  p = argparse.ArgumentParser(
      prog="python experiments/authors_crosscheck.py",
      description="4-MNISTs (Table I): run the authors' TF1 code, import gmr runs, make the table.",
      epilog="The authors' code is not in this repository; see this file's docstring for how "
      "to get it and what the shim does.")
  sub = p.add_subparsers(dest="mode", required=True)
  r = sub.add_parser("run", help="train the authors' 4-MNISTs experiment once (needs TensorFlow)")
  r.add_argument("--authors_dir", required=True,
                 help="folder that contains the authors' learning_parameter_allocation/")
  r.add_argument("--data_dir", required=True, help="folder with mnist/*-ubyte.gz")
  r.add_argument("--method", required=True,
                 choices=("gumbel_matrix", "shared_bottom", "no_sharing"))
  r.add_argument("--seed", type=int, default=0, help="seeds TensorFlow, NumPy and Python")
  r.add_argument("--rounds", type=int, default=0,
                 help="rounds to train (0: the authors' 37,500); fewer only to time the code")
  r.add_argument("--out", required=True, help="json file for this run's numbers")
  h = sub.add_parser("heads", help="on the authors' graph: other tasks' heads' gradients and "
                     "Adam steps (needs TensorFlow)")
  h.add_argument("--authors_dir", required=True,
                 help="folder that contains the authors' learning_parameter_allocation/")
  h.add_argument("--data_dir", required=True, help="folder with mnist/*-ubyte.gz")
  h.add_argument("--method", default="shared_bottom",
                 choices=("gumbel_matrix", "shared_bottom", "no_sharing"))
  h.add_argument("--seed", type=int, default=0)
  h.add_argument("--out", required=True, help="json file for what was seen")
  g = sub.add_parser("gmr", help="a gmr run's results.json as one of this script's run files")
  g.add_argument("--workdir", required=True, help="the gmr run's --workdir")
  g.add_argument("--variant", default="",
                 help="the run's config overrides, comma-separated, e.g. sparse_head_updates=false "
                 "(default: read from <workdir>/config.json)")
  g.add_argument("--command", default="", help="the command that made it (default: rebuilt)")
  g.add_argument("--out", required=True, help="json file for this run's numbers")
  t = sub.add_parser("table", help="the table of a folder of run files")
  t.add_argument("--runs", required=True, help="folder of run files (*.json)")
  t.add_argument("--out", required=True, help="writes <out>.md and <out>.json")
  t.add_argument("--reference", default="",
                 help="also gmr's default-config rows from this table json, e.g. "
                 "results/four_mnists.json (per-seed means only)")
  return p.parse_args(argv)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = parse(argv)
  command = "python experiments/authors_crosscheck.py " + " ".join(argv)
  if args.mode == "run":
    result = run_authors(args, command)
  elif args.mode == "heads":
    result = check_heads(args)
    result["command"] = command
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
    return 0
  elif args.mode == "gmr":
    result = gmr_run(args.workdir, args.variant, args.command)
  else:
    write_table(make_table(args.runs, args.reference), args.out, command)
    print(f"wrote {args.out}.md and {args.out}.json")
    return 0
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  print(json.dumps({k: result[k] for k in ("method", "seed", "acc_mean", "active_fraction",
                                           "wall_time_s", "task_steps_per_s")}))
  return 0


if __name__ == "__main__":
  sys.exit(main())
