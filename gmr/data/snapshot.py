"""A built task suite as one file: train where neither the raw data nor TFDS is installed.

``save(suite, path)`` writes every array of a :class:`~gmr.data.suite.TaskSuite` (pools,
labels, task slots, the shared image index) and its metadata into one compressed ``.npz``;
``load(path)`` gives back a suite equal to it, array for array. A pool shared by several
splits (the MNIST copies, the clusters suites) is stored once, and images whose colour
channels are identical (grey images broadcast to 3 channels) are stored with one channel and
broadcast back on load. Rows of a pool that are the bilinear resize of a smaller source
(MNIST and Fashion-MNIST's 28 x 28 images at 32 x 32 x 3 in the clusters suites) can be stored
as that source and resized again on load (:func:`gmr.data.real.resize_images`, the same bits
on every machine); every rebuilt pool is checked against the sha256 of the original. The file is an
LZMA-compressed ``.npz``: the clusters40_offline suite is ~37 MB.

A run records the file's sha256 (:func:`digest`) and the sha256 of its contents
(:func:`content_digest`: the arrays and metadata, whatever container bytes numpy, zip and lzma
wrote around them), so a snapshot rebuilt from the same raw files, on another day or with
other library versions, is recognised as the data the run trained on.
"""

from __future__ import annotations

import hashlib
import io
import json
import lzma
import os
from typing import Optional, Sequence

import numpy as np

from gmr.data.suite import Split, TaskSuite

FORMAT = 1


def _sha(a: np.ndarray) -> str:
  return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
SPLITS = ("train", "validation", "test")


class SnapshotError(ValueError):
  """A snapshot file that cannot be read as a suite: ``snapshot: <what>; <fix>``."""


def save(suite: TaskSuite, path: str, options: Optional[dict] = None,
         sources: Sequence = ()) -> str:
  """Write ``suite`` to ``path`` (a ``.npz``; written to a temporary name, then renamed, so a
  killed save leaves no partial file under ``path``), with ``options`` (JSON-able: the config
  fields the suite was built from, compared by whoever loads it) and ``sources``: tuples
  ``(pool, start, images)`` saying that rows ``start : start + len(images)`` of the split
  pool ``pool`` (0: the train split's) are ``gmr.data.real.resize_images(images, H, C)``;
  they are checked and stored as ``images``. Returns the file's sha256 (hex). Raises
  :class:`SnapshotError` for a source that does not give those rows."""
  arrays, pools = {}, []
  meta = {"format": FORMAT, "options": options or {}, "name": suite.name, "task_names": list(suite.task_names),
          "loss": suite.loss, "head_dims": [int(h) for h in suite.head_dims],
          "x_scale": float(suite.x_scale), "info": suite.info, "splits": {}}
  for name in SPLITS:
    sp = getattr(suite, name)
    if sp is None:
      continue
    pool = next((i for i, p in enumerate(pools) if p is sp.x or
                 (p.shape == sp.x.shape and p.dtype == sp.x.dtype and np.array_equal(p, sp.x))),
                None)
    if pool is None:
      pool = len(pools)
      pools.append(sp.x)
    arrays[f"{name}/y"] = sp.y
    if sp.index is not None:
      arrays[f"{name}/index"] = sp.index
    meta["splits"][name] = {"pool": pool, "offsets": [int(o) for o in sp.offsets],
                            "sizes": [int(n) for n in sp.sizes],
                            "indexed": sp.index is not None}
  meta["pools"] = []
  for i, x in enumerate(pools):
    grey = x.ndim >= 2 and x.shape[-1] > 1 and all(
        np.array_equal(x[..., 0], x[..., k]) for k in range(1, x.shape[-1]))
    rest = np.ones(len(x), bool)
    segs = []
    for j, (pool, start, images) in enumerate(s for s in sources if s[0] == i):
      stop = start + len(images)
      if stop > len(x) or not np.array_equal(_resize(images, x.shape), x[start:stop]):
        raise SnapshotError(f"snapshot: source {j} is not rows {start}:{stop} of pool {i} "
                            "resized; give the images those rows were resized from")
      arrays[f"pool{i}/source{j}"] = images
      segs.append([int(start), int(stop)])
      rest[start:stop] = False
    kept = x[rest]
    arrays[f"pool{i}"] = kept[..., :1] if grey else kept
    meta["pools"].append({"shape": list(x.shape), "dtype": str(x.dtype), "grey": bool(grey),
                          "sources": segs, "sha256": _sha(x)})
  buf = io.BytesIO()
  np.savez(buf, meta=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(lzma.compress(buf.getvalue(), preset=6))
  os.replace(tmp, path)
  return digest(path)


def _resize(images: np.ndarray, shape) -> np.ndarray:
  """``resize_images`` of ``images`` to a pool of ``shape`` (numpy float64: the same bits on
  any machine)."""
  from gmr.data.real import resize_images  # pylint: disable=g-import-not-at-top
  return resize_images(images, int(shape[1]), int(shape[-1]))


def load(path: str) -> TaskSuite:
  """The suite saved in ``path`` (:func:`load_with_options` also gives the options it was
  built from). Raises :class:`SnapshotError` for a missing file, a file
  that is not a gmr snapshot or a snapshot of another format version (and
  :class:`~gmr.data.suite.SuiteError` for one whose arrays disagree)."""
  return _suite(*_read(path))


def load_with_options(path: str):
  """``(suite, options)``: :func:`load` and the options given to :func:`save`."""
  z, meta = _read(path)
  return _suite(z, meta), meta["options"]


def _read(path: str):
  if not os.path.isfile(path):
    raise SnapshotError(f"snapshot: {path} does not exist; write one with "
                        "python -m launch.snapshot save")
  try:
    with open(path, "rb") as f:
      z = np.load(io.BytesIO(lzma.decompress(f.read())), allow_pickle=False)
    meta = json.loads(bytes(z["meta"]).decode())
  except (OSError, ValueError, KeyError, lzma.LZMAError) as e:
    raise SnapshotError(f"snapshot: {path} is not a gmr suite snapshot ({e}); write it again "
                        "with python -m launch.snapshot save") from None
  if meta.get("format") != FORMAT:
    raise SnapshotError(f"snapshot: {path} has format {meta.get('format')!r}, this gmr reads "
                        f"{FORMAT}; write it again with this gmr")
  return z, meta


def _suite(z, meta) -> TaskSuite:
  pools = []
  for i, p in enumerate(meta["pools"]):
    shape = tuple(p["shape"])
    x = np.empty(shape, np.dtype(p["dtype"]))
    rest = np.ones(shape[0], bool)
    for j, (start, stop) in enumerate(p["sources"]):
      x[start:stop] = _resize(z[f"pool{i}/source{j}"], shape)
      rest[start:stop] = False
    x[rest] = z[f"pool{i}"]  # broadcasts a grey pool's one channel
    if _sha(x) != p["sha256"]:
      raise SnapshotError(f"snapshot: pool {i} rebuilt here differs from the one saved; load "
                          "it where it was saved and report the machine")
    pools.append(x)
  splits = {}
  for name, s in meta["splits"].items():
    splits[name] = Split(pools[s["pool"]], z[f"{name}/y"], tuple(s["offsets"]), tuple(s["sizes"]),
                         z[f"{name}/index"] if s["indexed"] else None)
  return TaskSuite(meta["name"], tuple(meta["task_names"]), meta["loss"],
                   tuple(meta["head_dims"]), splits["train"], splits["test"],
                   validation=splits.get("validation"), x_scale=meta["x_scale"],
                   info=meta["info"])


def content_digest(path: str) -> str:
  """sha256 (hex) of what the snapshot at ``path`` holds rather than of its bytes: every
  stored array's name, dtype, shape and data, in name order (the metadata, with the options
  and the pools' digests, is one of them). The same suite and options give the same value
  whichever numpy, zip or lzma version wrote the file. Raises :class:`SnapshotError` for a
  missing file or one that is not a snapshot (as :func:`load`)."""
  z, _ = _read(path)
  h = hashlib.sha256()
  for name in sorted(z.files):
    a = np.ascontiguousarray(z[name])
    h.update(json.dumps([name, a.dtype.str, list(a.shape)]).encode())
    h.update(a.tobytes())
  return h.hexdigest()


def digest(path: str) -> str:
  """sha256 (hex) of the file at ``path``."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def equal(a: TaskSuite, b: TaskSuite) -> Optional[str]:
  """``None`` when the two suites are equal in every field and array; else the first
  difference, named (``"train.x"``, ``"head_dims"``...)."""
  for f in ("name", "task_names", "loss", "head_dims", "x_scale"):
    if tuple(np.atleast_1d(getattr(a, f))) != tuple(np.atleast_1d(getattr(b, f))):
      return f
  if json.loads(json.dumps(a.info)) != json.loads(json.dumps(b.info)):
    return "info"
  for name in SPLITS:
    sa, sb = getattr(a, name), getattr(b, name)
    if (sa is None) != (sb is None):
      return name
    if sa is None:
      continue
    if tuple(sa.offsets) != tuple(sb.offsets) or tuple(sa.sizes) != tuple(sb.sizes):
      return f"{name}.slots"
    for f in ("x", "y", "index"):
      u, v = getattr(sa, f), getattr(sb, f)
      if (u is None) != (v is None) or (u is not None and (
          u.dtype != v.dtype or u.shape != v.shape or not np.array_equal(u, v))):
        return f"{name}.{f}"
  return None
