"""The README's results table, generated from the committed tables in ``results/``.

  python -m launch.front            # rewrite the block between the README's results markers
  python -m launch.front --check    # exit 1 when the README's block is not what results/ gives

Paper numbers are the papers' own (Maziarz et al. Table I and section V; Wallingford et al.);
gmr's are read from ``results/<table>.json`` (mean +- std over the seeds each row names), and
the combination rule of every row from its recipe's config, so no comparison mixes rules
silently.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- results table: start (python -m launch.front) -->", "<!-- results table: end -->"

# (table, row, label, the paper's number)
ROWS = (
    ("synthetic", "gumbel_matrix", "Synthetic pairs (A3): Gumbel-Matrix, test MSE",
     "pairs share components"),
    ("synthetic", "no_sharing", "Synthetic pairs (A3): no sharing, test MSE", "higher loss"),
    ("transfer", "shared_bottom__rho=0.0", "Transfer (II), unrelated tasks (rho 0): shared "
     "bottom, test MSE", "above no sharing"),
    ("transfer", "no_sharing__rho=0.0", "Transfer (II), unrelated tasks (rho 0): no sharing, "
     "test MSE", "-"),
    ("transfer", "shared_bottom__rho=1.0", "Transfer (II), equal tasks (rho 1): shared bottom, "
     "test MSE", "below no sharing"),
    ("transfer", "no_sharing__rho=1.0", "Transfer (II), equal tasks (rho 1): no sharing, "
     "test MSE", "-"),
    ("four_mnists", "gumbel_matrix", "4-MNISTs (Table I): Gumbel-Matrix", "96.8 +- 0.2 (96%)"),
    ("four_mnists", "budget", "4-MNISTs (Table I): Gumbel-Matrix, budget 0.75",
     "96.7 +- 0.3 (75%)"),
    ("four_mnists", "shared_bottom", "4-MNISTs (Table I): shared bottom", "95.7 +- 0.5 (100%)"),
    ("four_mnists", "shared_bottom_mean", "4-MNISTs (Table I): shared bottom averaging its "
     "components (control)", "-"),
    ("four_mnists", "no_sharing", "4-MNISTs (Table I): no sharing", "93.5 +- 5.1 (25%)"),
    ("four_mnists", "taps", "4-MNISTs: TAPS (joint)", "-"),
    ("finetune", "full__data.tasks=mnist_rot", "Fine-tuning MNIST -> MNIST-rot: all weights",
     "-"),
    ("finetune", "taps__data.tasks=mnist_rot", "Fine-tuning MNIST -> MNIST-rot: TAPS",
     "within 1 point of all weights"),
    ("finetune", "head__data.tasks=mnist_rot", "Fine-tuning MNIST -> MNIST-rot: head only", "-"),
)


def _combine(table: str, row: str) -> str:
  """The combination rule the row's runs used, from its recipe's config."""
  from launch.tables import RECIPES, row_combine  # pylint: disable=g-import-not-at-top
  return row_combine(RECIPES[table]["config"], row)


def _cell(r: dict) -> str:
  if "acc_mean" in r:
    s = f"{r['acc_mean']:.2f} +- {r['acc_std']:.2f}"
    return s + (f" ({100 * r['active_fraction']:.1f}%)" if "active_fraction" in r else "")
  return f"{r['loss_mean']:.3f} +- {r['loss_std']:.3f}"


# Section V-C at the authors' code's schedule is reported once these runs have finished (the issue's
# minimum: two Gumbel-Matrix seeds and one shared-bottom seed); until then, its progress.
CLUSTERS40_PAPER_MIN_SEEDS = {"gumbel_matrix": 2, "shared_bottom": 1}


def clusters40_paper_rows() -> list:
  """The README rows of section V-C at the authors' code's schedule: from ``results/clusters40_paper
  .json`` (``python -m launch.tables clusters40_paper``) once it holds the finished runs of
  :data:`CLUSTERS40_PAPER_MIN_SEEDS`, Gumbel-Matrix with the paper's finding per seed
  (distinct MNIST / Fashion embeddings, 1 / 1 in the paper's Fig. 5, and the 3-way clustering's
  ARI); before that one row of the rounds reached, from ``results/clusters40_paper_progress
  .json`` (``python -m launch.progress``). Raises ``FileNotFoundError`` when neither exists."""
  label = ("40 tasks in 3 clusters (V-C; Omniglot in place of CIFAR-100), the authors' code's "
           "schedule")
  path = os.path.join(ROOT, "results", "clusters40_paper.json")
  table = {}
  if os.path.exists(path):
    with open(path) as f:
      table = json.load(f)
  if all(table.get(k, {}).get("n", 0) >= n for k, n in CLUSTERS40_PAPER_MIN_SEEDS.items()):
    gm, sb = table["gumbel_matrix"], table["shared_bottom"]
    distinct = ", ".join(f"{d['mnist']} / {d['fashion']}" for d in gm["cluster_distinct"])
    ari = ", ".join(f"{a:.2f}" for a in gm["cluster_ari"])
    link = "[clusters40_paper.md](results/clusters40_paper.md)"
    return [f"| {label}: Gumbel-Matrix | one embedding within MNIST and one within Fashion "
            f"(1 / 1) | {_cell(gm)}; distinct MNIST / Fashion embeddings per seed {distinct}; "
            f"3-way clustering ARI {ari} | {gm['n']} | {_combine('clusters40_paper', 'gumbel_matrix')}"
            f" | {link}, [notes](results/clusters40_paper_notes.md) |",
            f"| {label}: shared bottom | - | {_cell(sb)} | {sb['n']} | "
            f"{_combine('clusters40_paper', 'shared_bottom')} | {link} |"]
  with open(os.path.join(ROOT, "results", "clusters40_paper_progress.json")) as f:
    runs = json.load(f)["runs"]
  done = ", ".join(f"{k} {v['rounds']:,}" for k, v in sorted(runs.items()))
  return [f"| {label} | identical embeddings per cluster | in progress, rounds reached: {done} "
          "(of 20,000) | - | - | [notes](results/clusters40_paper_notes.md) |"]


def table() -> str:
  """The Markdown block: one line per :data:`ROWS` entry, then V-C's progress and Table II."""
  lines = [START, "", "| benchmark | paper | gmr (mean +- std, active %) | seeds | combine | "
           "table |", "|---|---|---|---|---|---|"]
  for name, row, label, paper in ROWS:
    with open(os.path.join(ROOT, "results", f"{name}.json")) as f:
      r = json.load(f)[row]
    lines.append(f"| {label} | {paper} | {_cell(r)} | {r['n']} | {_combine(name, row)} | "
                 f"[{name}.md](results/{name}.md) |")
  lines += clusters40_paper_rows()
  lines.append("| Omniglot, 20 alphabets (Table II): Gumbel-Matrix test error | 6.48 +- 0.28 | "
               "not run yet (a GPU's work: 410 GFLOP per task step) | - | - | - |")
  lines += ["", "Accuracy is the mean test accuracy over the tasks, in %; the paper's 4-MNISTs "
            "rows are over 30 runs. The 4-MNISTs, fine-tuning and V-C rows were made with "
            "`sparse_head_updates=true` (heads of tasks not in a batch kept still), gmr's default "
            "before the check against the authors' code "
            "([authors_crosscheck.md](results/authors_crosscheck.md)); Table I is being run again "
            "with the authors' setting at the paper's counts. Generated by `python -m "
            "launch.front` from the tables in `results/`, each made by the command written under "
            "it.", "", END]
  return "\n".join(lines)


def main(argv) -> int:
  """``python -m launch.front [--check]``: the exit status (0; 1 when ``--check`` finds the
  README's block out of date; 2 with one line ``error: ...`` for any other argument).
  ``--help``: the usage, nothing written."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv):
    print(__doc__.strip())
    return 0
  if any(a != "--check" for a in argv):
    bad = next(a for a in argv if a != "--check")
    print(f"error: arguments: unexpected {bad!r}; give --check or nothing (see --help)",
          file=sys.stderr)
    return 2
  path = os.path.join(ROOT, "README.md")
  with open(path) as f:
    text = f.read()
  if START not in text or END not in text:
    print(f"error: README.md: no results markers; put {START!r} and {END!r} where the table "
          "goes", file=sys.stderr)
    return 2
  new = text[:text.index(START)] + table() + text[text.index(END) + len(END):]
  if "--check" in argv:
    if new != text:
      print("README.md's results table differs from results/: run python -m launch.front",
            file=sys.stderr)
      return 1
    return 0
  with open(path, "w") as f:
    f.write(new)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
