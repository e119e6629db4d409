"""Command line: a sweep's finished runs as a table (mean +- std over seeds), Markdown and JSON.

  python -m launch.aggregate --root=runs/transfer --out=results/transfer

  python -m launch.aggregate --root=runs/transfer --config=experiments/configs/transfer.py \
      --methods=shared_bottom,no_sharing --grid=rho=0.0,1.0 --out=results/transfer

Groups are the sweep's run directories (``<root>/<name>/seed_*/results.json``); the numbers
and the table are :mod:`gmr.analysis.tables`. Given the sweep's flags (``--config``,
``--methods``, ``--seeds``, ``--grid``, ``--set``, as ``launch.sweep`` takes them), a run
counts only when finished with its planned config (:func:`gmr.workdir.run_status`); a workdir
holding another config is left out and named on stderr with the differing fields. Without
them, every ``results.json`` under the root counts, whatever config made it.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from gmr.analysis import tables
from launch import sweep
from launch.tables import skipped_note, status_from_flags

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script
  sweep.define_plan_flags(required=False)
  flags.DEFINE_string("out", None, "Output prefix: writes <out>.md and <out>.json.")
  flags.DEFINE_string("title", "", "Table title.")
  flags.DEFINE_string("command", "", "Command that produced the sweep (for the record).")


def main(argv):
  del argv
  status, skipped = status_from_flags()
  collected = tables.collect(FLAGS.root, status)
  table = {name: tables.summarize(runs) for name, runs in collected.items()}
  if not table:
    print(f"error: --root: no finished run under {FLAGS.root}/*/seed_*/"
          + (" with the sweep's configs" if status is not None else "")
          + "; run the sweep first", file=sys.stderr)
    sys.exit(2)
  md = tables.to_markdown(table, FLAGS.title, FLAGS.command) + skipped_note(skipped)
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
