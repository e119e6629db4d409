"""Command line: a sweep's finished runs as a table (mean +- std over seeds), Markdown and JSON.

  python -m launch.aggregate --root=runs/transfer --out=results/transfer

Groups are the sweep's run directories (``<root>/<name>/seed_*/results.json``); the numbers
and the table are :mod:`gmr.analysis.tables`.
"""

from __future__ import annotations

import json
import os

from absl import app, flags

from gmr.analysis import tables

FLAGS = flags.FLAGS


def _define_flags():  # only when run as a script
  flags.DEFINE_string("root", None, "Sweep directory.")
  flags.DEFINE_string("out", None, "Output prefix: writes <out>.md and <out>.json.")
  flags.DEFINE_string("title", "", "Table title.")
  flags.DEFINE_string("command", "", "Command that produced the sweep (for the record).")
  flags.mark_flags_as_required(["root"])


def main(argv):
  del argv
  table = {name: tables.summarize(runs) for name, runs in tables.collect(FLAGS.root).items()}
  if not table:
    raise SystemExit(f"error: no results.json under {FLAGS.root}/*/seed_*/; run the sweep first")
  md = tables.to_markdown(table, FLAGS.title, FLAGS.command)
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
