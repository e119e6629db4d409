"""Train on a machine that has neither the raw datasets nor TensorFlow Datasets (a rented GPU,
a cluster node without internet): build the suite once where the data is, as one file, and run
``experiments.main`` there reading that file.

  python -m launch.snapshot save --config=experiments/configs/clusters40.py:offline \\
      --out=clusters40_offline.npz           # where the data is (GMR_DATA_DIR / data_dir)
  python -m launch.snapshot run --snapshot=clusters40_offline.npz -- \\
      --config=experiments/configs/clusters40.py:offline --workdir=runs/c40/seed_0

``run`` takes exactly ``experiments.main``'s flags after ``--``. The suite the config asks for
comes from the file instead of TFDS (no data check, no TFDS import); the run refuses a snapshot
built from other data options (suite, ``config.data.*``, and the seed for synthetic suites) in
one line, exit 2. The file's sha256 and its contents' (:func:`gmr.data.snapshot.content_digest`)
are written to ``<workdir>/data_snapshot.json``, and a run is resumed only from the data it
trained on: a snapshot with other contents is refused in one line, exit 2 (a rebuild of the
same data is accepted whatever library versions wrote it; ``--fresh`` starts the run again).
``python -m launch.snapshot digest --snapshot=<file>`` prints both digests. Everything else (the
workdir, resuming, the numbers) is ``experiments.main``'s.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

from gmr import experiment
from gmr.data import snapshot as snapshot_lib

USAGE = ("usage: python -m launch.snapshot save --config=<file>[:<variant>] "
         "[--config.<field>=<v> ...] --out=<file.npz.xz> | run --snapshot=<file.npz.xz> -- "
         "<experiments.main flags> | digest --snapshot=<file.npz.xz>")


def fail(line: str) -> None:
  print(line, file=sys.stderr)
  sys.exit(2)


def data_options(config) -> dict:
  """What a suite's arrays depend on: the suite's name, ``config.data.*`` and, for suites drawn
  at random (synthetic), ``config.synthetic.*`` and the data seed. JSON-able."""
  from gmr import data  # pylint: disable=g-import-not-at-top
  opts = {"suite": config.suite,
          "data": json.loads(json.dumps(dict(config.get("data", {}) or {}), default=str))}
  if not data.datasets_needed(config):
    seed = config.get("data_seed", None)
    opts["data_seed"] = int(config.seed if seed is None else seed)
    opts["synthetic"] = json.loads(json.dumps(dict(config.get("synthetic", {}) or {}),
                                              default=str))
  return opts


def use(path: str) -> None:
  """From now on in this process, the suite of ``path`` is what ``gmr.data.load_suite`` gives
  for a config with the same data options (others load as usual), and every run records the
  file's sha256 in its workdir. Raises :class:`~gmr.data.snapshot.SnapshotError` here for a
  file that is not a snapshot, and from the run for a config asking for other data options or
  a workdir that recorded other data (unless the run is started afresh)."""
  from gmr import data  # pylint: disable=g-import-not-at-top
  suite, options = snapshot_lib.load_with_options(path)
  sha, content = snapshot_lib.digest(path), snapshot_lib.content_digest(path)
  load, check, run = data.load_suite, data.check_data_available, experiment.run

  def mine(config) -> bool:
    if config.suite != options.get("suite"):
      return False
    asked = data_options(config)
    if asked != options:
      raise snapshot_lib.SnapshotError(
          f"snapshot: {path} was built from {json.dumps(options, sort_keys=True)}, the run asks "
          f"for {json.dumps(asked, sort_keys=True)}; write a snapshot for these options")
    return True

  def load_suite(config):
    return suite if mine(config) else load(config)

  def check_data_available(config):
    if not mine(config):
      check(config)

  def run_recorded(config, workdir, *args, **kwargs):
    if mine(config):
      recorded = os.path.join(workdir, "data_snapshot.json")
      if os.path.exists(recorded) and not kwargs.get("fresh"):
        try:
          with open(recorded) as f:
            before = json.load(f)
          kind = "content_sha256" if "content_sha256" in before else "sha256"
          was = str(before[kind])
        except (OSError, ValueError, KeyError, TypeError) as e:
          raise snapshot_lib.SnapshotError(
              f"snapshot: {recorded} cannot be read ({type(e).__name__}); restore it from a "
              "copy of the workdir") from None
        now = content if kind == "content_sha256" else sha
        if was != now:
          raise snapshot_lib.SnapshotError(
              f"snapshot: {path} ({kind} {now[:12]}...) is not the data this run trained on "
              f"({kind} {was[:12]}..., recorded in {recorded}); resume with that file or "
              "rebuild it with `launch.snapshot save` from the same raw data, or pass --fresh "
              "to start the run again")
      os.makedirs(workdir, exist_ok=True)
      record = {"snapshot": os.path.basename(path), "sha256": sha, "content_sha256": content,
                "options": options}
      tmp = os.path.join(workdir, "data_snapshot.json.tmp")
      with open(tmp, "w") as f:
        json.dump(record, f, indent=1)
      os.replace(tmp, os.path.join(workdir, "data_snapshot.json"))
    return run(config, workdir, *args, **kwargs)

  data.load_suite, data.check_data_available, experiment.run = (load_suite, check_data_available,
                                                               run_recorded)


def resized_sources(config, suite) -> list:
  """Where the train pool holds a prepared dataset's images (train then test split) resized
  to the pool's size: ``[(0, start, images)]`` for :func:`gmr.data.snapshot.save`, which
  stores the smaller originals."""
  from gmr import data  # pylint: disable=g-import-not-at-top
  from gmr.data import real  # pylint: disable=g-import-not-at-top
  pool = suite.train.x
  flat = pool.reshape(len(pool), -1)
  out = []
  for name in data.datasets_needed(config):
    opts = data.options(config)
    try:
      images = np.concatenate([real._load(name, s, opts)["image"] for s in ("train", "test")])  # pylint: disable=protected-access
    except (KeyError, ValueError):  # a dataset without these splits
      continue
    if images.shape[1:3] == pool.shape[1:3] or images.shape[1] > pool.shape[1]:
      continue
    resized = snapshot_lib._resize(images[:1], pool.shape)  # pylint: disable=protected-access
    for start in np.flatnonzero((flat == resized.reshape(1, -1)).all(1)):
      if start + len(images) <= len(pool) and np.array_equal(
          snapshot_lib._resize(images, pool.shape), pool[start:start + len(images)]):  # pylint: disable=protected-access
        out.append((0, int(start), images))
        break
  return out


def save_main(argv) -> None:
  from gmr import cli, data  # pylint: disable=g-import-not-at-top
  from gmr.data.raw import DataError  # pylint: disable=g-import-not-at-top
  spec, out, overrides = None, None, []
  for a in argv:
    if a.startswith("--config."):
      name, eq, value = a[len("--config."):].partition("=")
      if not eq:
        fail(f"error: config.{name}: has no value; write --config.{name}=<value>")
      overrides.append((name, value))
    elif a.startswith("--config="):
      spec = a.split("=", 1)[1]
    elif a.startswith("--out="):
      out = a.split("=", 1)[1]
    else:
      fail(f"error: arguments: unexpected {a!r}; {USAGE}")
  if not spec or not out:
    fail(f"error: --{'config' if not spec else 'out'}: is required; {USAGE}")
  try:
    config = cli.load_config(spec)
    for name, value in overrides:
      cli.set_field(config, name, value)
    data.check_data_available(config)
  except (ValueError, DataError) as e:
    fail(e if str(e).startswith("error:") else f"error: {e}")
  suite = data.load_suite(config)
  sha = snapshot_lib.save(suite, out, data_options(config), resized_sources(config, suite))
  print(f"{out}: {suite.name}, {suite.num_tasks} tasks, {os.path.getsize(out) / 1e6:.1f} MB, "
        f"sha256 {sha}")


def run_main(argv) -> None:
  path = None
  rest = list(argv)
  if "--" in rest:
    i = rest.index("--")
    ours, rest = rest[:i], rest[i + 1:]
  else:
    ours, rest = [a for a in rest if a.startswith("--snapshot=")], [
        a for a in rest if not a.startswith("--snapshot=")]
  for a in ours:
    if a.startswith("--snapshot="):
      path = a.split("=", 1)[1]
    else:
      fail(f"error: arguments: unexpected {a!r}; {USAGE}")
  if not path:
    fail(f"error: --snapshot: is required; {USAGE}")
  try:
    use(path)
  except snapshot_lib.SnapshotError as e:
    fail(f"error: {e}")
  from absl import app, flags  # pylint: disable=g-import-not-at-top
  from experiments import main as main_lib  # pylint: disable=g-import-not-at-top
  flags.FLAGS.append_flag_values(main_lib.FLAGS)

  def main(argv2):
    try:
      main_lib.main(argv2)
    except snapshot_lib.SnapshotError as e:
      fail(f"error: {e}")

  app.run(main, argv=["launch.snapshot"] + rest, flags_parser=main_lib.parse_args)


def digest_main(argv) -> None:
  """Print the snapshot's file sha256 and content sha256 (what a run records)."""
  if len(argv) != 1 or not argv[0].startswith("--snapshot=") or argv[0] == "--snapshot=":
    fail(f"error: arguments: give --snapshot=<file> only; {USAGE}")
  path = argv[0].split("=", 1)[1]
  try:
    content = snapshot_lib.content_digest(path)
  except snapshot_lib.SnapshotError as e:
    fail(f"error: {e}")
  print(f"{path}: sha256 {snapshot_lib.digest(path)} content_sha256 {content}")


if __name__ == "__main__":
  COMMANDS = {"save": save_main, "run": run_main, "digest": digest_main}
  ours = sys.argv[1:sys.argv.index("--")] if "--" in sys.argv else sys.argv[1:]
  if any(a in ("--help", "-h", "--helpshort", "--helpfull") for a in ours):
    print(f"{__doc__.strip()}\n\n{USAGE}")  # (``run ... -- --help``: experiments.main's)
    sys.exit(0)
  if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
    fail(f"error: command: give save, run or digest; {USAGE}")
  COMMANDS[sys.argv[1]](sys.argv[2:])
