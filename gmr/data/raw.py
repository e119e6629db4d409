"""Readers for the canonical raw files of MNIST, Fashion-MNIST, Omniglot and CIFAR-100.

Pure numpy (plus Pillow for Omniglot's PNGs); no TensorFlow. Every reader checks what it
reads (magic numbers, shapes, counts, complete archives) and raises :class:`DataError`
naming the file, so training never starts on partially read data.

The data directory is laid out like ``../shared/datasets``::

  <data_dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz
  <data_dir>/fashion-mnist/(same names)
  <data_dir>/omniglot/images_background.zip, images_evaluation.zip
  <data_dir>/cifar100/cifar-100-python.tar.gz
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import zipfile
import zlib
from typing import List, Optional, Tuple

import numpy as np

DATA_DIR_ENV = "GMR_DATA_DIR"


class DataError(Exception):
  """A missing, truncated or corrupt data file: ``<file>: <problem>; <fix>``."""

  def __init__(self, path, problem: str, fix: str = ""):
    self.path, self.problem, self.fix = str(path), problem, fix
    super().__init__(f"{path}: {problem}" + (f"; {fix}" if fix else ""))


def resolve_data_dir(data_dir: str = "") -> str:
  """``data_dir`` if set, else ``$GMR_DATA_DIR``; one clear error when neither is."""
  d = data_dir or os.environ.get(DATA_DIR_ENV, "")
  if not d:
    raise DataError("data_dir", "not set", f"pass --config.data_dir=<dir> or set ${DATA_DIR_ENV} "
                    "to a folder laid out like ../shared/datasets (mnist/, fashion-mnist/, "
                    "omniglot/, cifar100/)")
  return os.path.abspath(os.path.expanduser(d))


def file_digest(path: str, algo: str = "sha256") -> str:
  """Hex digest of the file at ``path`` (``algo``: any ``hashlib`` name)."""
  h = hashlib.new(algo)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def zip_content_digest(path: str) -> str:
  """sha256 of the text with one line ``<sha256 of the member's bytes>  <member path>\\n`` per
  PNG member, sorted by path: the archive's content, independent of its container (zip
  timestamps, compression, order). Raises :class:`DataError` if the zip cannot be read."""
  lines = []
  try:
    with zipfile.ZipFile(path) as zf:
      for n in sorted(n for n in zf.namelist() if n.endswith(".png")):
        lines.append(f"{hashlib.sha256(zf.read(n)).hexdigest()}  {n}\n")
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as e:
    raise DataError(path, f"not a readable zip ({e}): truncated or corrupt",
                    "replace it with the original archive") from None
  return hashlib.sha256("".join(lines).encode()).hexdigest()


# ----------------------------------------------------------------------------- IDX (MNIST)
MNIST_FILES = {  # split -> (images, labels, count)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
URLS = {
    "mnist": "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "omniglot": "https://github.com/brendenlake/omniglot/raw/master/python/",
    "cifar100": "https://www.cs.toronto.edu/~kriz/",
}
# The canonical raw files: relative path -> the digests that identify it, any one of which
# matching is enough (``content``: :func:`zip_content_digest`, for Omniglot archives rebuilt
# from the original PNGs; ``md5``: the upstream archive, as published).
CANONICAL = {
    "mnist/train-images-idx3-ubyte.gz": (("sha256", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),),
    "mnist/train-labels-idx1-ubyte.gz": (("sha256", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),),
    "mnist/t10k-images-idx3-ubyte.gz": (("sha256", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),),
    "mnist/t10k-labels-idx1-ubyte.gz": (("sha256", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),),
    "fashion-mnist/train-images-idx3-ubyte.gz": (("sha256", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),),
    "fashion-mnist/train-labels-idx1-ubyte.gz": (("sha256", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),),
    "fashion-mnist/t10k-images-idx3-ubyte.gz": (("sha256", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),),
    "fashion-mnist/t10k-labels-idx1-ubyte.gz": (("sha256", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),),
    "omniglot/images_background.zip": (
        ("md5", "68d2efa1b9178cc56df9314c21c6e718"),
        ("content", "deaa02f758afda524b3a045c7af40311f2d9ded3e2a39f715ece8470d474bc6a")),
    "omniglot/images_evaluation.zip": (
        ("md5", "6b91aef0f799c5bb55b94e3f2daec811"),
        ("content", "3d5e035f27423c362bf9a181af649b43cda64c1008f842177ddc5203269c901e")),
    "cifar100/cifar-100-python.tar.gz": (("md5", "eb9058c3a382ffc7106e4002c42a8d85"),),
}


def is_canonical(path: str, rel: str) -> bool:
  """Whether the file at ``path`` is the canonical ``rel`` (a key of :data:`CANONICAL`; a
  file gmr has no digest for counts as canonical)."""
  for algo, want in CANONICAL.get(rel, ()):
    got = zip_content_digest(path) if algo == "content" else file_digest(path, algo)
    if got == want:
      return True
  return rel not in CANONICAL


def fingerprint(data_dir: str, rels) -> dict:
  """``{rel: {"bytes": size, "sha256": digest}}`` of the raw files ``rels`` under ``data_dir``:
  what a prepared dataset was built from. Raises :class:`DataError` naming a missing file."""
  out = {}
  for rel in rels:
    path = os.path.join(data_dir, rel)
    if not os.path.isfile(path):
      raise DataError(path, "missing", "put the canonical file there, or point data_dir / "
                      f"${DATA_DIR_ENV} at a folder that has it")
    out[rel] = {"bytes": os.path.getsize(path), "sha256": file_digest(path)}
  return out


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str, expect_ndim: Optional[int] = None) -> np.ndarray:
  """Read a (gzipped) IDX file, checking magic number, dimensions and byte count."""
  if not os.path.exists(path):
    raise DataError(path, "missing")
  try:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, gzip.BadGzipFile) as e:
    raise DataError(path, f"cannot be decompressed ({e}): truncated or corrupt",
                    "replace it with the canonical file") from None
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
    raise DataError(path, f"bad IDX magic number {data[:4].hex() or '(empty)'}",
                    "expected 0x0000080N; is this an IDX file?")
  ndim = data[3]
  if expect_ndim is not None and ndim != expect_ndim:
    raise DataError(path, f"IDX file has {ndim} dimensions, expected {expect_ndim}",
                    "images are idx3, labels idx1; check the file name")
  if len(data) < 4 + 4 * ndim:
    raise DataError(path, "truncated IDX header")
  dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
  dtype = np.dtype(_IDX_DTYPES[data[2]])
  need = int(np.prod(dims)) * dtype.itemsize
  body = data[4 + 4 * ndim:]
  if len(body) != need:
    raise DataError(path, f"holds {len(body)} data bytes, its header {dims} needs {need}",
                    "the file is truncated or corrupt; replace it with the canonical file")
  return np.frombuffer(body, dtype).reshape(dims)


def _check_or_fetch(path: str, rel: str, base_url: str, download: bool):
  """Make sure ``path`` exists: download it (and check its sha256) when allowed."""
  if os.path.exists(path):
    return
  if not download:
    raise DataError(path, "missing", "put the canonical file there, or point data_dir / "
                    f"${DATA_DIR_ENV} at a folder that has it")
  import urllib.request  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(path), exist_ok=True)
  url = base_url + os.path.basename(path)
  tmp = path + ".part"
  try:
    urllib.request.urlretrieve(url, tmp)
  except OSError as e:
    raise DataError(path, f"missing and the download from {url} failed ({e})",
                    "copy the file there by hand") from None
  if not is_canonical(tmp, rel):
    os.remove(tmp)
    raise DataError(path, f"the file downloaded from {url} is not the canonical one (digest "
                    "differs)", "retry later, or copy the canonical file there by hand")
  os.replace(tmp, path)


def mnist_like(data_dir: str, name: str, split: str, download: bool = False,
               verify_hash: bool = False) -> Tuple[np.ndarray, np.ndarray]:
  """``(images uint8 [N, 28, 28, 1], labels int32 [N])`` of MNIST or Fashion-MNIST.

  Each file is checked on its own (count, shape, label range; with ``verify_hash`` its
  canonical digest), and an error names the file that is wrong."""
  img_f, lbl_f, count = MNIST_FILES[split]
  out = []
  for fname, ndim, what in ((img_f, 3, "images"), (lbl_f, 1, "labels")):
    path = os.path.join(data_dir, name, fname)
    _check_or_fetch(path, f"{name}/{fname}", URLS[name], download)
    if verify_hash and not is_canonical(path, f"{name}/{fname}"):
      raise DataError(path, "not the canonical file (its digest differs)", "replace it")
    arr = read_idx(path, ndim)
    if len(arr) != count:
      raise DataError(path, f"holds {len(arr)} {what}, the {split} split has {count}",
                      f"replace it with the canonical {fname}")
    out.append(arr)
  images, labels = out
  if images.shape[1:] != (28, 28):
    raise DataError(os.path.join(data_dir, name, img_f), f"image shape {images.shape[1:]}, "
                    "expected (28, 28)")
  if labels.max() > 9:
    raise DataError(os.path.join(data_dir, name, lbl_f), f"label {labels.max()} > 9")
  return images[..., None].copy(), labels.astype(np.int32)


# ----------------------------------------------------------------------------- Omniglot
OMNIGLOT_ZIPS = {"background": ("images_background.zip", 30, 964, 19280),
                 "evaluation": ("images_evaluation.zip", 20, 659, 13180)}


def read_omniglot_zip(path: str, alphabets: Optional[List[str]] = None,
                      expect: Optional[Tuple[int, int, int]] = None):
  """Decode an Omniglot zip: ``{alphabet: [(character index, drawing name, image)]}``.

  Images are uint8 ``[105, 105]`` with strokes = 1 and background = 0 (the PNGs store
  strokes black). ``expect = (alphabets, characters, images)`` checks the archive's content
  (the rebuilt archives are checked by content, not by hash).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise DataError(path, "missing", "put images_background.zip and images_evaluation.zip "
                    f"there or point data_dir / ${DATA_DIR_ENV} at a folder that has them")
  try:
    zf = zipfile.ZipFile(path)
    names = [n for n in zf.namelist() if n.endswith(".png")]
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise DataError(path, f"not a readable zip ({e}): truncated or corrupt",
                    "replace it with the original archive") from None
  entries = {}
  for n in names:
    parts = n.split("/")
    if len(parts) != 4:
      raise DataError(path, f"unexpected member {n!r}", "expected <root>/<alphabet>/<character>/<png>")
    entries.setdefault(parts[1], {}).setdefault(parts[2], []).append(n)
  if expect is not None:
    got = (len(entries), sum(len(c) for c in entries.values()), len(names))
    if got != tuple(expect):
      raise DataError(path, f"holds {got[0]} alphabets / {got[1]} characters / {got[2]} images, "
                      f"expected {expect[0]} / {expect[1]} / {expect[2]}", "replace the archive")
  out = {}
  with zf:
    for alpha in (alphabets if alphabets is not None else sorted(entries)):
      if alpha not in entries:
        continue
      items = []
      for ci, char in enumerate(sorted(entries[alpha])):
        for n in sorted(entries[alpha][char]):
          try:
            img = np.asarray(Image.open(io.BytesIO(zf.read(n))).convert("L"))
          except Exception as e:  # zlib / PIL errors on a corrupt member
            raise DataError(path, f"member {n} cannot be decoded ({type(e).__name__}: {e})",
                            "the archive is corrupt; replace it") from None
          if img.shape != (105, 105):
            raise DataError(path, f"member {n} is {img.shape}, expected (105, 105)")
          items.append((ci, os.path.basename(n)[:-4], (img < 128).astype(np.uint8)))
      out[alpha] = items
  return out


# ----------------------------------------------------------------------------- CIFAR-100
CIFAR100_FILE = "cifar-100-python.tar.gz"
CIFAR100_COUNTS = {"train": 50000, "test": 10000}


def cifar100(data_dir: str, split: str, download: bool = False):
  """``(images uint8 [N, 32, 32, 3], fine int32 [N], coarse int32 [N])`` from the python tarball."""
  path = os.path.join(data_dir, "cifar100", CIFAR100_FILE)
  _check_or_fetch(path, f"cifar100/{CIFAR100_FILE}", URLS["cifar100"], download)
  try:
    with tarfile.open(path, "r:gz") as tf:
      member = tf.extractfile(f"cifar-100-python/{split}")
      if member is None:
        raise KeyError(split)
      d = pickle.load(member, encoding="latin1")
  except KeyError:
    raise DataError(path, f"has no member cifar-100-python/{split}",
                    "is this cifar-100-python.tar.gz?") from None
  except (tarfile.TarError, OSError, EOFError, pickle.UnpicklingError, zlib.error) as e:
    raise DataError(path, f"cannot be read ({type(e).__name__}: {e}): truncated or corrupt",
                    "replace it with the canonical file") from None
  try:
    data = np.asarray(d["data"], np.uint8)
    fine, coarse = (np.asarray(d[k], np.int32) for k in ("fine_labels", "coarse_labels"))
  except KeyError as e:
    raise DataError(path, f"{split} lacks the key {e}") from None
  n = CIFAR100_COUNTS[split]
  if data.shape != (n, 3072) or len(fine) != n or len(coarse) != n:
    raise DataError(path, f"{split} holds {data.shape} images / {len(fine)} labels, expected "
                    f"({n}, 3072)", "replace the file with the canonical one")
  return data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1).copy(), fine, coarse

