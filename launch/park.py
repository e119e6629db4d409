"""Keep long runs across machines that do not keep their disks: pack every run's workdir into
one archive a git commit can carry, and unpack it where the run resumes.

  python -m launch.park save --root=runs/clusters40_paper --out=results/clusters40_paper_state
  python -m launch.park restore --archive=results/clusters40_paper_state --root=runs/clusters40_paper

``save`` writes ``<out>/<run>.tar.xz`` for every run under ``<root>`` (a folder holding a
``config.json``; ``<run>`` is its path below ``<root>``, e.g. ``gumbel_matrix/seed_0``). An
archive holds the workdir as it is (metrics, allocation history, config, results, the data
snapshot's record, TensorBoard events, the best-checkpoint series) with its newest
:data:`KEEP` complete regular checkpoints (the newest is what a resume reads; the one before
it is the resume's fallback should the newest prove damaged). A run may be going on: the
checkpoints are copied first and the files that only grow after them, and the copy is
repeated if a checkpoint was rotated away meanwhile, so the archive is a workdir as a kill at
that moment would leave it, which a rerun resumes to the numbers of an uninterrupted run
(:func:`gmr.experiment.run`; bit for bit on the same kind of machine). An archive is written
under a temporary name and renamed; one whose contents did not change is not rewritten, and
one ahead of its workdir (a newer checkpoint) is never replaced by it.

``restore`` unpacks each archive into ``<root>/<run>``. A workdir already there is never
overwritten: one at or beyond the archive's checkpoint is kept (one line says so); one behind
it is an error (move it away to take the archive). A workdir and an archive of one path that
hold runs of different configs are an error for both commands (nothing is written).

Errors are one line ``error: <field>: <what>; <fix>``, exit 2, before anything is written.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from typing import Dict, List, Optional

USAGE = ("usage: python -m launch.park save --root=<runs folder> --out=<archive folder> | "
         "restore --archive=<archive folder> --root=<runs folder>")
SUFFIX = ".tar.xz"
KEEP = 2  # regular checkpoints per archive: the newest and the resume's fallback
_SKIP = {".lock"}  # the running process's lock: a restored workdir has none


class ParkError(ValueError):
  """``<field>: <what>; <fix>``."""


def runs_under(root: str) -> List[str]:
  """The workdirs below ``root`` (folders with a ``config.json``, not inside another run's
  ``previous_<n>/``), as paths relative to ``root``, sorted."""
  found = []
  for here, dirs, files in os.walk(root):
    rel = os.path.relpath(here, root)
    if "config.json" in files and rel != ".":
      found.append(rel)
      dirs[:] = []  # a run's own folders (checkpoints, previous_<n>) are part of it
    dirs.sort()
  return sorted(found)


MARKER = "commit_success.txt"  # orbax's mark of a finished checkpoint (on local file systems)


def checkpoint_rounds(workdir: str) -> List[int]:
  """Rounds of the complete regular checkpoints of ``workdir`` (folders
  ``checkpoints/<round>`` holding orbax's ``commit_success.txt``; orbax writes a checkpoint
  under a temporary name and renames it when complete), ascending. Raises
  :class:`ParkError` when checkpoints exist but none carries the mark (an orbax that does not
  write it: what is complete cannot be told)."""
  base = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(base):
    return []
  named = [n for n in os.listdir(base) if n.isdigit()]
  done = sorted(int(n) for n in named if os.path.exists(os.path.join(base, n, MARKER)))
  if named and not done:
    raise ParkError(f"root: {base} has checkpoints but none holds orbax's {MARKER}; park with "
                    "the orbax version gmr was tested with (see setup.py)")
  return done


def _copy_run(workdir: str, dest: str) -> Optional[int]:
  """Copy ``workdir`` to ``dest`` as a kill now would leave it, with its newest :data:`KEEP`
  complete regular checkpoints; return the newest's round (``None``: none yet). Raises
  ``FileNotFoundError`` when a checkpoint was rotated away during the copy (copy again)."""
  rounds = checkpoint_rounds(workdir)[-KEEP:]
  os.makedirs(dest)
  for r in rounds:  # first: what a resume starts from; the logs after them only grow
    shutil.copytree(os.path.join(workdir, "checkpoints", str(r)),
                    os.path.join(dest, "checkpoints", str(r)))
  for name in sorted(os.listdir(workdir)):
    src = os.path.join(workdir, name)
    if name in _SKIP or name == "checkpoints" or os.path.islink(src):
      continue
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dest, name),
                      ignore=lambda d, names: [n for n in names if ".orbax-checkpoint-tmp" in n])
    else:
      shutil.copy2(src, os.path.join(dest, name))
  for r in rounds:  # orbax deletes a rotated checkpoint in place: one gone meanwhile is partial
    if not os.path.exists(os.path.join(workdir, "checkpoints", str(r), MARKER)):
      raise FileNotFoundError(os.path.join(workdir, "checkpoints", str(r)))
  return rounds[-1] if rounds else None


def _tar_bytes(folder: str) -> bytes:
  """An uncompressed tar of ``folder``'s contents: members in sorted order, owner and group
  0, the files' modification times."""
  buf = io.BytesIO()
  with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
    paths = []
    for here, dirs, files in os.walk(folder):
      dirs.sort()
      paths += [os.path.join(here, d) for d in dirs] + [os.path.join(here, f) for f in files]
    for p in sorted(paths, key=lambda p: os.path.relpath(p, folder).split(os.sep)):
      info = tar.gettarinfo(p, arcname=os.path.relpath(p, folder))
      info.uid = info.gid = 0
      info.uname = info.gname = ""
      info.pax_headers = {}
      if info.isfile():
        with open(p, "rb") as f:
          tar.addfile(info, f)
      else:
        tar.addfile(info)
  return buf.getvalue()


def _read_members(path: Optional[str] = None, raw: Optional[bytes] = None) -> Dict[str, bytes]:
  """``{member name: contents}`` of the archive at ``path`` (xz) or of tar bytes ``raw``."""
  opened = (tarfile.open(path, "r:xz") if raw is None else
            tarfile.open(fileobj=io.BytesIO(raw)))
  with opened as tar:
    return {m.name: (tar.extractfile(m).read() if m.isfile() else b"")
            for m in tar.getmembers()}


def save(root: str, out: str, say=print) -> Dict[str, Optional[int]]:
  """Write ``<out>/<run>.tar.xz`` for every run under ``root``; return ``{run: checkpoint
  round}`` (``None``: the run has no checkpoint yet; its archive still keeps its logs).
  Raises :class:`ParkError` for a missing ``root`` or one without runs."""
  import lzma  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(root):
    raise ParkError(f"root: {root} is not a folder; give the folder holding the runs' workdirs")
  if os.path.exists(out) and not os.path.isdir(out):
    raise ParkError(f"out: {out} is a file; give a folder for the archives")
  runs = runs_under(root)
  if not runs:
    raise ParkError(f"root: {root} holds no run (no <run>/config.json below it); give the "
                    "folder holding the runs' workdirs")
  for rel in runs:  # checked before any archive is written
    path = os.path.join(out, rel + SUFFIX)
    rounds = checkpoint_rounds(os.path.join(root, rel))
    mine = rounds[-1] if rounds else None
    if os.path.exists(path):
      theirs = _archive_round_or_fail(path)
      _same_run(os.path.join(root, rel), path)
      if theirs is not None and (mine is None or mine < theirs):
        raise ParkError(f"root: {os.path.join(root, rel)} {_at(mine)}, behind its archive {path} "
                        f"(checkpoint {theirs}); restore the archive (move the workdir away, "
                        "then launch.park restore), or delete the archive to park this workdir")
  done = {}
  for rel in runs:
    with tempfile.TemporaryDirectory() as tmp:
      for attempt in range(3):  # a checkpoint rotated away while it was copied: copy again
        stage = os.path.join(tmp, str(attempt))
        try:
          newest = _copy_run(os.path.join(root, rel), stage)
          break
        except (FileNotFoundError, shutil.Error):
          if attempt == 2:
            raise
      raw = _tar_bytes(stage)
    path = os.path.join(out, rel + SUFFIX)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    same = False
    if os.path.exists(path):
      try:
        same = _read_members(path) == _read_members(raw=raw)
      except (tarfile.TarError, OSError, EOFError, lzma.LZMAError):
        same = False
    if not same:
      tmp_path = path + ".tmp"
      with open(tmp_path, "wb") as f:
        f.write(lzma.compress(raw, preset=9))
      os.replace(tmp_path, path)
    done[rel] = newest
    say(f"{path}: {rel} at checkpoint {newest if newest is not None else '(none yet)'}, "
        f"{os.path.getsize(path) / 1e6:.2f} MB" + (" (unchanged)" if same else ""))
  return done


def archives_under(folder: str) -> List[str]:
  """The archives below ``folder`` as run paths (``gumbel_matrix/seed_0``), sorted."""
  found = []
  for here, dirs, files in os.walk(folder):
    dirs.sort()
    found += [os.path.relpath(os.path.join(here, f), folder)[:-len(SUFFIX)]
              for f in files if f.endswith(SUFFIX)]
  return sorted(found)


def _archive_round(path: str) -> Optional[int]:
  with tarfile.open(path, "r:xz") as tar:
    rounds = [int(parts[1]) for parts in (m.name.split("/") for m in tar.getmembers())
              if len(parts) == 3 and parts[0] == "checkpoints" and parts[1].isdigit()
              and parts[2] == MARKER]
  return max(rounds) if rounds else None


def _archive_round_or_fail(path: str) -> Optional[int]:
  """The newest checkpoint round in archive ``path``; :class:`ParkError` if unreadable."""
  import lzma  # pylint: disable=g-import-not-at-top
  try:
    return _archive_round(path)
  except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as e:
    raise ParkError(f"archive: {path} cannot be read ({type(e).__name__}); take it again "
                    "from git (`git checkout -- <file>`) or delete it") from None


def _same_run(workdir: str, archive_path: str) -> None:
  """Raise :class:`ParkError` when ``workdir`` and the archive at ``archive_path`` hold runs
  of different configs (:func:`gmr.workdir.identity_of`: ``num_rounds`` aside, so a run
  extended since is the same run); nothing to compare when either has no config.json."""
  from gmr import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  try:
    with open(os.path.join(workdir, "config.json")) as f:
      mine = json.load(f)
    theirs = json.loads(_read_members(archive_path).get("config.json", b"null"))
  except (OSError, ValueError):
    return
  if theirs is None:
    return
  diff = workdir_lib.config_diff(theirs, mine)
  if workdir_lib.identity_of(mine) != workdir_lib.identity_of(theirs):
    shown = ", ".join([k for k in diff if k != "num_rounds"][:5]) or "its identity"
    raise ParkError(f"root: {workdir} holds another run than its archive {archive_path} "
                    f"(configs differ in {shown}); move {workdir} away, or park into another "
                    "folder")


def _at(round_: Optional[int]) -> str:
  return "has no checkpoint" if round_ is None else f"is at checkpoint {round_}"


def restore(archive: str, root: str, say=print) -> Dict[str, str]:
  """Unpack every archive below ``archive`` into ``root``; return ``{run: what was done}``
  (``"restored"`` or ``"kept"``). Checks every archive and target before writing any: raises
  :class:`ParkError` for a missing or empty ``archive`` folder, an unreadable archive, a
  member that would land outside its workdir, or a workdir on disk behind its archive."""
  import lzma  # pylint: disable=g-import-not-at-top
  if not os.path.isdir(archive):
    raise ParkError(f"archive: {archive} is not a folder; give the folder `launch.park save` "
                    "wrote (--out)")
  runs = archives_under(archive)
  if not runs:
    raise ParkError(f"archive: {archive} holds no *{SUFFIX}; give the folder `launch.park "
                    "save` wrote (--out)")
  if os.path.exists(root) and not os.path.isdir(root):
    raise ParkError(f"root: {root} is a file; give the folder the runs' workdirs go to")
  plan = {}
  for rel in runs:
    path = os.path.join(archive, rel + SUFFIX)
    try:
      with tarfile.open(path, "r:xz") as tar:
        for m in tar.getmembers():
          parts = m.name.split("/")
          if (os.path.isabs(m.name) or ".." in parts or not (m.isfile() or m.isdir())):
            raise ParkError(f"archive: {path} has member {m.name!r} outside a workdir or not a "
                            "plain file; write the archive again with `launch.park save`")
      theirs = _archive_round(path)
    except (tarfile.TarError, OSError, EOFError, lzma.LZMAError) as e:
      raise ParkError(f"archive: {path} cannot be read ({type(e).__name__}); take it again "
                      "from git (`git checkout -- <file>`) or write it again") from None
    target = os.path.join(root, rel)
    if os.path.exists(target):
      _same_run(target, path)
      ours = checkpoint_rounds(target)
      mine = ours[-1] if ours else None
      if (theirs is not None and (mine is None or mine < theirs)):
        raise ParkError(f"root: {target} {_at(mine)} and its archive {path} is at {theirs}; "
                        f"move {target} away to restore the archive")
      plan[rel] = ("kept", path, target, mine, theirs)
    else:
      plan[rel] = ("restored", path, target, None, theirs)
  done = {}
  for rel, (what, path, target, mine, theirs) in plan.items():
    if what == "restored":
      os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
      tmp = target + ".park-tmp"
      if os.path.exists(tmp):
        shutil.rmtree(tmp)
      os.makedirs(tmp)
      with tarfile.open(path, "r:xz") as tar:
        tar.extractall(tmp, filter="data")
      os.replace(tmp, target)
      say(f"{target}: restored from {path} (checkpoint "
          f"{theirs if theirs is not None else '(none yet)'})")
    else:
      say(f"{target}: kept (on disk: {mine if mine is not None else 'no checkpoint'}, archive: "
          f"{theirs if theirs is not None else 'no checkpoint'})")
    done[rel] = what
  return done


def named_args(argv, want, usage: str):
  """``{name: value}`` of ``argv``, every one of ``want`` given once as ``--name=value``; on
  anything else one line ``error: ...`` on stderr and ``None``."""
  got = {}
  for a in argv:
    name, eq, value = a.lstrip("-").partition("=")
    if not a.startswith("--") or name not in want or not eq or not value:
      print(f"error: arguments: unexpected {a!r}; {usage}", file=sys.stderr)
      return None
    got[name] = value
  for name in want:
    if name not in got:
      print(f"error: --{name}: is required; {usage}", file=sys.stderr)
      return None
  return got


def main(argv) -> int:
  """``python -m launch.park save|restore ...``: the exit status (0, or 2 with one line
  ``error: ...`` on stderr for bad input). ``--help``: the usage, nothing written."""
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in argv):
    print(__doc__.strip())
    return 0
  if not argv or argv[0] not in ("save", "restore"):
    print(f"error: command: give save or restore; {USAGE}", file=sys.stderr)
    return 2
  want = ("root", "out") if argv[0] == "save" else ("archive", "root")
  got = named_args(argv[1:], want, USAGE)
  if got is None:
    return 2
  try:
    if argv[0] == "save":
      save(got["root"], got["out"])
    else:
      restore(got["archive"], got["root"])
  except ParkError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
