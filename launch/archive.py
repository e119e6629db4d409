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

import json
import os
import shutil
import sys
from typing import Dict, List

USAGE = ("usage: python -m launch.archive --root=<runs folder> --out=<archive folder> "
         "[--history_every=<rounds>]")
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


def _kept_text(workdir: str, name: str, history_every: int) -> bytes:
  """The archived bytes of ``<workdir>/<name>``: the file as it is, except that with
  ``history_every`` > 0 the allocation history of ``metrics.jsonl`` (``"kind": "alloc"``
  lines) keeps only the rounds that are multiples of it and the run's last record (every log
  and evaluation line stays)."""
  with open(os.path.join(workdir, name), "rb") as f:
    data = f.read()
  if name != "metrics.jsonl" or history_every <= 0:
    return data
  lines = data.decode().splitlines(keepends=True)
  alloc = {i for i, l in enumerate(lines) if '"kind": "alloc"' in l or '"kind":"alloc"' in l}
  last = max(alloc, default=-1)
  keep = [l for i, l in enumerate(lines) if i not in alloc or i == last
          or json.loads(l)["round"] % history_every == 0]
  return "".join(keep).encode()


def archive(root: str, out: str, say=print, history_every: int = 0) -> Dict[str, str]:
  """Copy what the tables and figures read of every finished run below ``root`` into
  ``<out>/<run>/``; return ``{run: "kept" | "unchanged" | "unfinished"}``. ``history_every``
  (rounds; 0 = all): thin the allocation history (:func:`_kept_text`), for long runs whose
  history the figures need only at that spacing. Raises
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
    texts = {n: _kept_text(src, n, history_every) for n in names}
    if os.path.isdir(dest) and sorted(os.listdir(dest)) == sorted(names) and all(
        open(os.path.join(dest, n), "rb").read() == texts[n] for n in names):
      done[rel] = "unchanged"
      continue
    tmp = dest + ".archive-tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for n in names:
      with open(os.path.join(tmp, n), "wb") as f:
        f.write(texts[n])
      shutil.copystat(os.path.join(src, n), os.path.join(tmp, n))
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
  every = [a for a in argv if a.startswith("--history_every=")]
  got = named_args([a for a in argv if a not in every], ("root", "out"), USAGE)
  if got is None:
    return 2
  try:
    history_every = int(every[-1].split("=", 1)[1]) if every else 0
    if history_every < 0:
      raise ValueError
  except ValueError:
    print(f"error: history_every: {every[-1]!r} is not a number of rounds >= 0; e.g. "
          "--history_every=1000", file=sys.stderr)
    return 2
  try:
    archive(got["root"], got["out"], history_every=history_every)
  except ArchiveError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
