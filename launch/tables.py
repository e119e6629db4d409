"""Regenerate a results table of the repository: run its sweep (finished runs are skipped),
aggregate it, and write ``results/<name>.md`` / ``.json`` (``--out=<prefix>``: elsewhere) with
the command and the machine.

  python -m launch.tables synthetic --seeds=0-19   # appendix A3 / Fig. 7 (the paper's 20 runs)
  python -m launch.tables transfer --seeds=0-29    # section II / Fig. 1 (the paper's 30 runs)
  python -m launch.tables synthetic --seeds=0-19 --root=results/runs/synthetic --no_run
      # the same table from the runs kept in the repository (launch.archive)
  GMR_DATA_DIR=../shared/datasets python -m launch.tables four_mnists   # Table I (+ TAPS)
  GMR_DATA_DIR=../shared/datasets python -m launch.tables four_mnists_taps_lambda --seeds=0
  GMR_DATA_DIR=../shared/datasets python -m launch.tables clusters40_offline --seeds=0-2  # V-C
  GMR_DATA_DIR=../shared/datasets python -m launch.tables clusters40_diagnosis --seeds=0-2 --no_run  # why not
  GMR_DATA_DIR=../shared/datasets python -m launch.tables clusters40_budget --seeds=0
  GMR_DATA_DIR=../shared/datasets python -m launch.tables clusters40_paper --seeds=0-1  # hours
  GMR_DATA_DIR=../shared/datasets python -m launch.tables finetune       # TAPS vs full / head-only
  GMR_DATA_DIR=../shared/datasets python -m launch.tables taps_lambda    # TAPS lambda sweep
  GMR_DATA_DIR=../shared/datasets python -m launch.tables taps_one_layer # TAPS, one layer adapted
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import jax

from gmr import cli, workdir
from gmr.analysis import tables

RECIPES = {
    "synthetic": dict(
        title="Synthetic Gumbel-Matrix experiment (appendix A3): mean test loss over the 4 tasks",
        config="experiments/configs/synthetic.py", methods="gumbel_matrix,no_sharing", grid=[],
        compare=[("gumbel_matrix", "no_sharing")], metric="loss"),
    "transfer": dict(
        title="Positive and negative transfer (section II): mean test loss over the 2 tasks",
        config="experiments/configs/transfer.py", methods="shared_bottom,no_sharing",
        grid=["rho=0.0,1.0"], compare=[("shared_bottom__rho=0.0", "no_sharing__rho=0.0"),
                                       ("shared_bottom__rho=1.0", "no_sharing__rho=1.0")],
        metric="loss"),
    "four_mnists": dict(
        title=("Table I, 4-MNISTs: mean test accuracy over the 4 tasks (combine: how a layer "
               "combines its active components; shared_bottom_mean is the shared bottom with "
               "Gumbel-Matrix's rule)"),
        config="experiments/configs/four_mnists.py",
        methods=("no_sharing,shared_bottom,shared_bottom_mean,gumbel_matrix,fixed_from_gm,budget,"
                 "taps"), grid=[],
        pin=True, compare=[  # results/README.md's criteria: the five primary, then the rest
            ("gumbel_matrix", "shared_bottom"), ("shared_bottom_mean", "shared_bottom"),
            ("gumbel_matrix", "shared_bottom_mean"), ("gumbel_matrix", "fixed_from_gm"),
            ("fixed_from_gm", "shared_bottom_mean"), ("budget", "gumbel_matrix"),
            ("budget", "shared_bottom_mean"), ("no_sharing", "shared_bottom"),
            ("taps", "shared_bottom")], primary=5,
        share=(("shared_bottom_mean", "shared_bottom"), ("gumbel_matrix", "shared_bottom"))),
    "four_mnists_taps_lambda": dict(
        title=("TAPS lambda sweep on 4-MNISTs (joint TAPS): accuracy vs. task-specific layers "
               "(lambda 1 is the TAPS row of results/four_mnists.md)"),
        config="experiments/configs/four_mnists.py", methods="taps",
        grid=["taps_lambda=0.0,0.1"], pin=True),
    "clusters40_offline": dict(
        title=("Section V-C, 40 tasks in 3 clusters (Omniglot alphabets, MNIST and Fashion "
               "leave-one-out), the 2-core CPU schedule (variant cpu: batch 8, 800 rounds)"),
        config="experiments/configs/clusters40.py:offline,cpu",
        methods="gumbel_matrix,shared_bottom,taps",
        grid=[], pin=True),
    "clusters40_diagnosis": dict(
        title=("Section V-C diagnosis, clusters40_offline cpu schedule, Gumbel-Matrix with one "
               "lever changed per row: t_init=0.5 = no temperature annealing (t_init = t_min; "
               "the paper's anneal ends after 1% of its steps, on the cpu schedule after 31%); "
               "alloc_learning_rate=0.03 / 0.0012 = 5x / a fifth of the paper's logits rate "
               "(the allocations decide 5x faster / slower than the weights learn); "
               "num_rounds=1600 / 4000 / 8000 = 2x / 5x / 10x the training (the 4000-round runs "
               "continue the 800- or 1600-round runs of the same seed with --extend, the "
               "8000-round runs the 4000-round ones; the shorter runs were made by earlier gmr "
               "versions, equal to today's per step up to float rounding, so a run from scratch "
               "differs in detail); compare with results/clusters40_offline.md"),
        config="experiments/configs/clusters40.py:offline,cpu",
        methods=("t_init=0.5,alloc_learning_rate=0.03,alloc_learning_rate=0.0012,"
                 "num_rounds=1600,num_rounds=4000,num_rounds=8000"), grid=[],
        pin=True),
    "clusters40_paper": dict(
        title=("Section V-C at the authors' code's schedule (the paper gives neither batch size "
               "nor length), 40 tasks in 3 clusters (Omniglot alphabets in place of CIFAR-100, "
               "MNIST and Fashion leave-one-out): 20,000 rounds, batch 32, Adam 3e-4, logits 6e-3, "
               "budget 0.5 with lambda 1, p_init 0.5; checkpoints every 1,000 rounds, evaluation "
               "batches of 500"),
        config=("experiments/configs/clusters40.py:offline,checkpoint_every=1000,log_every=250,"
                "eval_batch_size=500,sparse_head_updates=true"),
        methods="gumbel_matrix,shared_bottom", grid=[], pin=True,
        runs_note=("Gumbel-Matrix seeds 0 and 1 on 2-vCPU AMD EPYC VMs (jax 0.10.2, one core "
                   "per run); shared "
                   "bottom seed 0 rounds 0-12,300 on one NVIDIA H200 (jax 0.11.2), rounds "
                   "12,300-20,000 on a 2-vCPU AMD EPYC VM (jax 0.10.2): "
                   "results/clusters40_paper_notes.md")),
    "clusters40_budget": dict(
        title=("Section V-C diagnosis, clusters40_offline cpu schedule, Gumbel-Matrix with the "
               "budget changed: budget=0.25 = a tighter budget (lambda 1); budget_lambda=0.0 = "
               "no budget penalty; the paper's 0.5 with lambda 1 is results/clusters40_offline.md"),
        config="experiments/configs/clusters40.py:offline,cpu",
        methods="budget=0.25,budget_lambda=0.0", grid=[], pin=True),
    "finetune": dict(
        title="Fine-tuning from an MNIST shared-bottom checkpoint: test accuracy on the new task",
        config="experiments/configs/finetune.py", methods="taps,full,head",
        grid=["data.tasks=mnist_rot,fashion"], pin=True,
        pre=[("experiments/configs/finetune.py:source", "runs/finetune/source/seed_0")]),
    "taps_lambda": dict(
        title="TAPS lambda sweep, fine-tuning MNIST -> MNIST-rot: accuracy vs. task-specific layers",
        config="experiments/configs/finetune.py", methods="taps",
        grid=["taps_lambda=0.0,0.03,0.1,0.3,1.0"], pin=True,
        pre=[("experiments/configs/finetune.py:source", "runs/finetune/source/seed_0")]),
    "taps_one_layer": dict(
        title=("TAPS with one adaptable layer (1 of the 3 conv layers, lambda 0), fine-tuning "
               "MNIST -> MNIST-rot: the best a TAPS network under 50% task-specific layers can do"),
        config="experiments/configs/finetune.py", methods="only_layer_0,only_layer_1,only_layer_2",
        grid=[], pin=True,
        pre=[("experiments/configs/finetune.py:source", "runs/finetune/source/seed_0")]),
}


def machine() -> str:
  return (f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, "
          f"jax {jax.__version__} on {jax.default_backend()}").replace("  ", " ")


def row_combine(config_spec: str, row: str) -> str:
  """How the layers of the runs of table row ``row`` (``<method>[__<key>=<value>...]``, as
  launch.sweep names them) combine their active components, from the recipe's config: "mean"
  or "sum" (``combine="auto"`` resolved by the method)."""
  from gmr import train  # pylint: disable=g-import-not-at-top
  tokens = [t for part in row.split("__") for t in part.split(",") if t]
  config = cli.load_config(config_spec + ("," if ":" in config_spec else ":") + ",".join(tokens))
  return train.resolve_combine(config)


def code_commit(path: str = ".") -> str:
  """The commit of the git checkout holding ``path`` (default: this command's), marked when
  its tracked files outside ``results/`` have uncommitted changes."""
  found = workdir.checkout_commit(path)
  if found is None:
    return "unknown (not a git checkout)"
  return found[0] + (" with uncommitted changes" if found[1] else "")


def runs_code(collected: dict, root: str) -> str:
  """Which code made the runs of a table: the commits their ``results.json`` record
  (``code``) with their counts; runs that predate that record are counted apart, with the
  commit of the checkout their ``root`` is in (a worktree kept at the commit it ran)."""
  made, unrecorded = {}, 0
  for runs in collected.values():
    for r in runs:
      c = r.get("code") or {}
      if not c.get("commit"):
        unrecorded += 1
        continue
      key = c["commit"] + (" with uncommitted changes" if c.get("dirty") else "")
      made[key] = made.get(key, 0) + 1
  parts = [f"{k} ({n} runs)" for k, n in sorted(made.items())]
  if unrecorded:
    at = code_commit(root) if os.path.isdir(root) else "unknown"
    parts.append(f"not recorded in {unrecorded} runs, whose folder is in a checkout at {at}")
  return "; ".join(parts) or "no runs"


USAGE = (f"usage: python -m launch.tables {{{','.join(RECIPES)}}} [--seeds=0-4] [--parallel=2] "
         "[--root=runs/<table>] [--no_run] [--out=results/<table>]")


def skipped_lines(status: dict) -> list:
  """One line per workdir of ``status`` (``launch.sweep.statuses``) that holds another config
  than its planned one (its numbers are not this table's): the workdir and the differing
  fields."""
  return [workdir.conflict_line(wd, st) for wd, st in sorted(status.items())
          if st.state == "conflict"]


def status_from_flags():
  """``(status, skipped)`` of the sweep described by the flags of
  ``launch.sweep.define_plan_flags``: each planned workdir's ``RunStatus`` and the
  :func:`skipped_lines`, each printed on stderr (``(None, [])`` without ``--config``: every
  finished run counts). A wrong ``--config``, ``--grid`` or ``--set`` ends the command with one
  line, exit 2."""
  from gmr.config import ConfigError  # pylint: disable=g-import-not-at-top
  from launch import sweep  # pylint: disable=g-import-not-at-top
  runs = sweep.plan_from_flags()
  if runs is None:
    return None, []
  try:
    status = sweep.statuses(runs)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  skipped = skipped_lines(status)
  for line in skipped:
    print(f"skipped {line}", file=sys.stderr)
  return status, skipped


def skipped_note(lines: list) -> str:
  """The table's note of the runs :func:`skipped_lines` left out (``""`` for none)."""
  if not lines:
    return ""
  return ("\nNot in the table (their workdirs hold another config than this table's): "
          + "; ".join(lines) + ".\n")


def main():
  """``python -m launch.tables <table> ...`` (see the module's doc); ``--help``: the usage,
  nothing written."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in sys.argv[1:]):
    print(f"{__doc__.strip()}\n\n{USAGE}")
    sys.exit(0)
  if len(sys.argv) < 2 or sys.argv[1] not in RECIPES:
    got = repr(sys.argv[1]) if len(sys.argv) > 1 else "none"
    print(f"error: table: unknown table {got}; {USAGE}", file=sys.stderr)
    sys.exit(2)
  name = sys.argv[1]
  extra = dict((a[2:].split("=", 1) + [""])[:2] for a in sys.argv[2:] if a.startswith("--"))
  r = RECIPES[name]
  seeds, parallel = extra.get("seeds", "0-4"), extra.get("parallel", "2")
  root = extra.get("root", os.path.join("runs", name))
  argv = [sys.executable, "-m", "launch.sweep", f"--config={r['config']}", f"--methods={r['methods']}",
          f"--seeds={seeds}", f"--root={root}", f"--parallel={parallel}"] + [f"--grid={g}" for g in r["grid"]]
  if r.get("pin"):
    argv.append("--pin_cpus")
  if "no_run" not in extra:  # --no_run: aggregate the finished runs only
    for cfg, wd in r.get("pre", []):  # runs the sweep starts from (a fine-tuning source)
      if workdir.run_status(cli.load_config(cfg), wd).state != "finished":
        rc = subprocess.call([sys.executable, "-m", "experiments.main", f"--config={cfg}",
                              f"--workdir={wd}"])
        if rc:  # its error line is above
          sys.exit(rc)
    rc = subprocess.call(argv)
    if rc:  # its error line, or its failed runs, are above
      sys.exit(rc)
  from launch import sweep  # pylint: disable=g-import-not-at-top
  status = sweep.statuses(sweep.plan(r["config"], r["methods"].split(","),
                                     sweep.parse_seeds(seeds), r["grid"], [], root))
  skipped = skipped_lines(status)
  for line in skipped:
    print(f"skipped {line}", file=sys.stderr)
  collected = tables.collect(root, status)
  table = {n: dict(tables.summarize(runs), combine=row_combine(r["config"], n))
           for n, runs in collected.items()}
  cmd = (f"python -m launch.tables {name} --seeds={seeds}"
         + (f" --root={root}" if "root" in extra else "") + (" --no_run" if "no_run" in extra else ""))
  md = tables.to_markdown(table, r["title"], cmd)
  metric = r.get("metric", "accuracy")
  diffs = tables.differences(collected, r.get("compare", []), metric, r.get("primary", 0))
  if diffs:
    md += ("\nDifferences between rows (row a minus row b over their seeds; Welch's interval "
           "does not pair seeds, the paired one compares runs of the same seed, which see the "
           "same task order and batches"
           + ("; the first rows are the primary tests of results/README.md's criteria, their "
              "paired p-values also adjusted by Holm's method" if r.get("primary") else "")
           + "):\n\n" + tables.differences_markdown(diffs))
  share = tables.share_of_gain(collected, *r["share"], metric) if r.get("share") else None
  if share:
    (pa, pb), (wa, wb) = share["part"], share["whole"]
    md += (f"\nShare of {wa} - {wb} carried by {pa} - {pb} over {share['n']} paired seeds: "
           f"{share['share']:.2f}, 90% [{share['ci90'][0]:.2f}, {share['ci90'][1]:.2f}], 95% "
           f"[{share['ci95'][0]:.2f}, {share['ci95'][1]:.2f}] (paired bootstrap over seeds, "
           "BCa, 10,000 resamples, seed 0).\n")
  where = (f" (this command's); the runs' machines: {r['runs_note']}" if r.get("runs_note")
           else "")
  md += (f"\nMachine: {machine()}{where}. Seeds asked: {seeds}; the seeds column counts the finished "
         "runs of each row. Mean wall time per run: "
         + ", ".join(f"{n} {s['wall_time_s']:.0f}s" for n, s in table.items())
         + f". Code of the runs: {runs_code(collected, root)}; of this table: gmr commit "
         f"{code_commit()}.\n")
  md += skipped_note(skipped)
  out = extra.get("out") or os.path.join("results", name)
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(f"{out}.md", "w") as f:
    f.write(md)
  with open(f"{out}.json", "w") as f:
    json.dump(dict(table, **({"differences": diffs} if diffs else {}),
                   **({"share_of_gain": share} if share else {})), f, indent=1)
  print(md)


if __name__ == "__main__":
  main()
