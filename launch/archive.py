"""Keep a table's finished runs in the repository: what the tables and figures read, no
checkpoints, so that ``launch.tables <name> --no_run --root=<archive>`` and
``experiments.report --workdir=<archive>`` regenerate them from a checkout alone.

  python -m launch.archive --root=runs/synthetic --out=results/runs/synthetic

For every finished run below ``--root`` (a folder holding ``config.json`` and
``results.json``), ``<out>/<run>/`` gets its :data:`KEPT` files (the config, the environment it
ran in, results, the metrics and allocation history of ``metrics.jsonl``, optimizer changes,
the results of shorter runs it extended); an unfinished run is left out and named. The copy is
made in a temporary folder and renamed into place, so a kill leaves the old archive or the new
one; an archive that differs from its run (another config) is an error, never replaced. For
moving runs that are still going on, with their checkpoints, use ``launch.park``.

Errors are one line ``error: <field>: <what>; <fix>``, exit 2, before anything is written.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import sys
from typing import Dict, List

USAGE = "usage: python -m launch.archive --root=<runs folder> --out=<archive folder>"
KEPT = ("config.json", "environment.json", "results.json", "metrics.jsonl",
        "optimizer_changes.jsonl")


class ArchiveError(ValueError):
  """``<field>: <what>; <fix>``."""


def finished_runs(root: str) -> List[str]:
  """The workdirs below ``root`` holding ``config.json`` (paths relative to ``root``,
  sorted; a run's own ``previous_<n>/`` folders are not searched)."""
  found = []
  for here, dirs, files in os.walk(root):
    dirs.sort()
    if "config.json" in files and here != root:
      found.append(os.path.relpath(here, root))
      dirs[:] = []
  return sorted(found)


def _kept_names(workdir: str) -> List[str]:
  names = [n for n in KEPT if os.path.isfile(os.path.join(workdir, n))]
  names += sorted(n for n in os.listdir(workdir)
                  if n.startswith("results_round_") and n.endswith(".json"))
  return names


def archive(root: str, out: str, say=print) -> Dict[str, str]:
  """Copy what the tables and figures read of every finished run below ``root`` into
  ``<out>/<run>/``; return ``{run: "kept" | "unchanged" | "unfinished"}``. Raises
  :class:`ArchiveError` for a missing ``root``, one without runs, an ``out`` that is a file,
  or an archived run whose config differs from the run's (checked before anything is
  written)."""
  if not os.path.isdir(root):
    raise ArchiveError(f"root: {root} is not a folder; give the folder holding the runs")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ArchiveError(f"out: {out} is a file; give a folder for the archive")
  runs = finished_runs(root)
  if not runs:
    raise ArchiveError(f"root: {root} holds no run (no <run>/config.json below it); give the "
                       "folder holding the runs")
  for rel in runs:
    mine, kept = os.path.join(root, rel, "config.json"), os.path.join(out, rel, "config.json")
    if os.path.isfile(kept):
      with open(mine) as a, open(kept) as b:
        if json.load(a) != json.load(b):
          raise ArchiveError(f"out: {os.path.join(out, rel)} holds another run than "
                             f"{os.path.join(root, rel)} (their configs differ); archive into "
                             "another folder, or delete that run's archive")
  done = {}
  for rel in runs:
    src, dest = os.path.join(root, rel), os.path.join(out, rel)
    if not os.path.isfile(os.path.join(src, "results.json")):
      done[rel] = "unfinished"
      say(f"{src}: not finished, not archived")
      continue
    names = _kept_names(src)
    if os.path.isdir(dest) and sorted(os.listdir(dest)) == sorted(names) and all(
        filecmp.cmp(os.path.join(src, n), os.path.join(dest, n), shallow=False) for n in names):
      done[rel] = "unchanged"
      continue
    tmp = dest + ".archive-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for n in names:
      shutil.copy2(os.path.join(src, n), os.path.join(tmp, n))
    if os.path.isdir(dest):
      shutil.rmtree(dest)
    os.replace(tmp, dest)
    done[rel] = "kept"
  kept = sum(v == "kept" for v in done.values())
  say(f"{out}: {kept} runs archived, {sum(v == 'unchanged' for v in done.values())} unchanged, "
      f"{sum(v == 'unfinished' for v in done.values())} unfinished left out")
  return done


def main(argv) -> int:
  """``python -m launch.archive --root=... --out=...``: the exit status (0, or 2 with one
  line ``error: ...`` on stderr). ``--help``: the usage, nothing written."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv):
    print(f"{__doc__.strip()}\n\n{USAGE}")
    return 0
  from launch.park import named_args  # pylint: disable=g-import-not-at-top
  got = named_args(argv, ("root", "out"), USAGE)
  if got is None:
    return 2
  try:
    archive(got["root"], got["out"])
  except ArchiveError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
