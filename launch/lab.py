"""Long runs of a ``launch.tables`` recipe that outlive a session: started, stopped, resumed,
parked and restored from a git worktree at one fixed commit, here or on a rented GPU machine.

  python -m launch.lab start four_mnists --commit=c2a6501 --seeds=0-19     # or resume
  python -m launch.lab status four_mnists
  python -m launch.lab stop four_mnists      # SIGTERM (every run checkpoints), then park
  python -m launch.lab park four_mnists      # pack the workdirs into results/ (runs go on)
  python -m launch.lab restore four_mnists --commit=c2a6501   # worktree and workdirs back

``start`` makes (or checks) the worktree ``--worktree`` (default ``../lab_<recipe>`` beside
this checkout) at ``--commit``, so every resume runs the same code while this checkout moves
on; with ``--pins`` (pip requirements, e.g. ``"jax==0.10.2 flax==0.12.8"``) the runs use a
virtualenv in the worktree with those versions and the worktree's own gmr, else this Python.
It restores the workdirs parked in ``--state`` (default ``results/<recipe>_state``:
:mod:`launch.park` archives a commit can carry between machines), then runs, in the background
and in a session of its own, ``python -m launch.tables <recipe> --seeds=... --parallel=...``
inside the worktree (one run per core; finished runs are skipped) up to three times, so runs
that need another run finished first (Table I's ``fixed_from_gm``) follow it. Its log:
``<worktree>/runs/lab_<recipe>.log``. Starting again after any stop resumes every run from its
last checkpoint with the numbers of an uninterrupted run. ``stop`` sends SIGTERM to that
session (each run writes a checkpoint and ends), waits up to ``--wait_s`` and parks.

Errors are one line ``error: <field>: <what>; <fix>``, exit 2, before anything is started.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time

MAIN = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("start", "stop", "park", "restore", "status")
USAGE = (f"usage: python -m launch.lab {{{','.join(COMMANDS)}}} <recipe> [--commit=<sha>] "
         "[--seeds=0-4] [--parallel=2] [--worktree=<dir>] [--state=<dir>] [--pins=<pip pins>] "
         "[--wait_s=900]")
ROUNDS = 3  # passes of launch.tables: a run that waits for another's result follows it


class LabError(ValueError):
  """``<field>: <what>; <fix>``."""


def _git(*args, cwd=None) -> str:
  r = subprocess.run(["git", *args], cwd=cwd or MAIN, capture_output=True, text=True)
  if r.returncode:
    raise LabError(f"commit: git {' '.join(args)} failed ({r.stderr.strip()[:200]}); give a "
                   "commit of this repository")
  return r.stdout.strip()


class Lab:
  """The paths of one recipe's long runs."""

  def __init__(self, recipe: str, worktree: str = "", state: str = ""):
    self.recipe = recipe
    self.wt = os.path.abspath(worktree or os.path.join(os.path.dirname(MAIN), f"lab_{recipe}"))
    self.state = os.path.abspath(state or os.path.join(MAIN, "results", f"{recipe}_state"))
    self.root = os.path.join(self.wt, "runs", recipe)
    self.pid_file = os.path.join(self.wt, "runs", f"lab_{recipe}.pid")
    self.log = os.path.join(self.wt, "runs", f"lab_{recipe}.log")

  @property
  def python(self) -> str:
    venv = os.path.join(self.wt, ".venv", "bin", "python")
    return venv if os.path.exists(venv) else sys.executable

  def prepare(self, commit: str, pins: str = "") -> None:
    """The worktree at ``commit`` (made if absent), its virtualenv (with ``pins``) and the
    parked workdirs restored. Raises :class:`LabError`."""
    if not commit:
      raise LabError("commit: not given; give the commit whose code runs every run, "
                     "--commit=<sha>")
    want = _git("rev-parse", "--verify", f"{commit}^{{commit}}")
    if not os.path.isdir(self.wt):
      _git("worktree", "prune")
      _git("worktree", "add", "--detach", self.wt, want)
    at = _git("rev-parse", "HEAD", cwd=self.wt)
    if at != want:
      raise LabError(f"commit: the worktree {self.wt} is at {at[:12]}, not {want[:12]}; give "
                     f"--commit={at[:12]}, or another --worktree")
    os.makedirs(self.root, exist_ok=True)
    if pins:  # the versions asked, installed once per worktree (pip skips what is there)
      venv = os.path.join(self.wt, ".venv")
      try:
        if not os.path.exists(venv):
          subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        subprocess.run([self.python, "-m", "pip", "install", "-q", "-e", self.wt,
                        *shlex.split(pins)], check=True)
      except subprocess.CalledProcessError as e:
        raise LabError(f"pins: making {venv} with {pins!r} failed ({e}); check the pins and "
                       "that the package index is reachable, then start again") from None
    if os.path.isdir(self.state):
      from launch import park  # pylint: disable=g-import-not-at-top
      park.restore(self.state, self.root)

  @staticmethod
  def _stat(pid: int):
    """``(state, start time in clock ticks since boot)`` of process ``pid`` (/proc)."""
    with open(f"/proc/{pid}/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    return fields[0], fields[19]

  def running(self):
    """The pid of the background session, or ``None``: the pid file names a live session
    leader started at the recorded time (a pid the system has since given to another process
    is not ours)."""
    try:
      pid, started = open(self.pid_file).read().split()
      pid = int(pid)
      state, now_started = self._stat(pid)
    except (OSError, ValueError):
      return None
    ours = state != "Z" and now_started == started and os.getsid(pid) == pid
    return pid if ours else None

  def start(self, commit: str, seeds: str, parallel: int, pins: str = "") -> int:
    if self.running():
      raise LabError(f"recipe: {self.recipe} is already running here (pid {self.running()}); "
                     "stop it first, or look at it with status")
    self.prepare(commit, pins)
    tables = " ".join(shlex.quote(a) for a in (
        self.python, "-m", "launch.tables", self.recipe, f"--seeds={seeds}",
        f"--root=runs/{self.recipe}", f"--parallel={parallel}"))
    chain = (f"for i in {' '.join(map(str, range(1, ROUNDS + 1)))}; do "
             f"echo \"=== pass $i $(date -u +%FT%TZ)\"; {tables}; done; "
             f"rm -f {shlex.quote(self.pid_file)}; echo \"=== ended\"")
    with open(self.log, "a") as log:
      p = subprocess.Popen(["bash", "-c", chain], cwd=self.wt, stdout=log,
                           stderr=subprocess.STDOUT, start_new_session=True)
    with open(self.pid_file, "w") as f:
      f.write(f"{p.pid} {self._stat(p.pid)[1]}")
    with open(os.path.join(self.wt, "runs", f"lab_{self.recipe}.json"), "w") as f:
      json.dump({"commit": commit, "seeds": seeds, "parallel": parallel, "pins": pins}, f)
    return p.pid

  def stop(self, wait_s: float = 900, say=print) -> None:
    pid = self.running()
    if pid is not None:
      os.killpg(pid, signal.SIGTERM)  # the whole session: every run checkpoints on SIGTERM
      t0 = time.time()
      while self._session_alive(pid) and time.time() - t0 < wait_s:
        time.sleep(1)
      if self._session_alive(pid):
        raise LabError(f"wait_s: runs of {self.recipe} still going after {wait_s:.0f} s; wait "
                       "for them (a run ends after its current chunk), then park")
      say(f"stopped {self.recipe} (session {pid})")
    self.park(say)

  @staticmethod
  def _session_alive(pid: int) -> bool:
    for p in os.listdir("/proc"):
      if p.isdigit():
        try:
          if os.getsid(int(p)) == pid and Lab._stat(int(p))[0] != "Z":
            return True
        except OSError:
          continue
    return False

  def park(self, say=print) -> None:
    from launch import park  # pylint: disable=g-import-not-at-top
    if not os.path.isdir(self.root):
      raise LabError(f"worktree: {self.root} does not exist; start or restore the recipe first")
    park.save(self.root, self.state, say)

  def status(self) -> str:
    r = subprocess.run([sys.executable, "-m", "launch.progress", f"--root={self.root}"],
                       cwd=MAIN, capture_output=True, text=True)
    pid = self.running()
    head = f"{self.recipe}: " + (f"running (session {pid}), log {self.log}" if pid else
                                 "not running")
    return head + "\n" + r.stdout + r.stderr


OPTIONS = {"commit": "", "seeds": "0-4", "parallel": "2", "worktree": "", "state": "", "pins": "",
           "wait_s": "900"}


def parse(argv) -> dict:
  """The ``--name=value`` options of ``argv`` over :data:`OPTIONS`' defaults. Raises
  :class:`LabError` for anything else."""
  out = dict(OPTIONS)
  for a in argv:
    name, eq, value = a[2:].partition("=")
    if not a.startswith("--") or name not in OPTIONS or not eq:
      raise LabError(f"arguments: unexpected {a!r}; {USAGE}")
    out[name] = value
  for name in ("parallel", "wait_s"):
    try:
      float(out[name])
    except ValueError:
      raise LabError(f"{name}: {out[name]!r} is not a number; e.g. --{name}="
                     f"{OPTIONS[name]}") from None
  return out


def main(argv) -> int:
  from launch import park, tables  # pylint: disable=g-import-not-at-top
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in argv[1:]):
    print(__doc__ + "\n" + USAGE)
    return 0
  try:
    if len(argv) < 3 or argv[1] not in COMMANDS:
      raise LabError(f"command: give one of {', '.join(COMMANDS)} and a recipe; {USAGE}")
    cmd, recipe = argv[1], argv[2]
    if recipe not in tables.RECIPES:
      raise LabError(f"recipe: unknown {recipe!r}; choose one of {sorted(tables.RECIPES)}")
    opts = parse(argv[3:])
    lab = Lab(recipe, opts["worktree"], opts["state"])
    if cmd == "start":
      pid = lab.start(opts["commit"], opts["seeds"], int(float(opts["parallel"])), opts["pins"])
      print(f"started {recipe} at {opts['commit']} (session {pid}); log: {lab.log}")
    elif cmd == "restore":
      lab.prepare(opts["commit"], opts["pins"])
    elif cmd == "stop":
      lab.stop(float(opts["wait_s"]))
    elif cmd == "park":
      lab.park()
    else:
      print(lab.status())
  except (LabError, park.ParkError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
