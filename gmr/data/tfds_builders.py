"""TFDS builders for MNIST, Fashion-MNIST, Omniglot and CIFAR-100 that need no TensorFlow.

Each builder reads the canonical raw files from a manual directory laid out like
``../shared/datasets`` (see :mod:`gmr.data.raw`), checks them, and writes an ``array_record``
TFDS dataset (random access through ``as_data_source``; preparing and reading need only numpy).
When a file is absent and ``download=True`` it is fetched from its canonical location and
checked. :func:`load_arrays` prepares a dataset once and returns a split as numpy arrays in
canonical order (every record carries its ``index``). Preparing prints one line on stdout,
``preparing <dataset> from <raw files> into <folder>``, in place of TFDS's "Downloading and
preparing dataset ..." (nothing is downloaded then); loading prepared data prints nothing.

Provenance: preparing checks every raw file against its canonical digest (a non-canonical
file is refused unless ``accept_noncanonical``) and records the files' sizes and sha256 in
``<prepared dataset>/gmr_raw_files.json``. Each later load compares the raw files with that
record: prepared data whose raw files changed is rebuilt (one warning line), and prepared data
whose raw files are gone is refused, naming the missing file.

  arrays = load_arrays("gmr_mnist", "train", data_dir="../shared/datasets")
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import sys
from typing import Dict

import numpy as np
import tensorflow_datasets as tfds

from gmr.data import raw

TFDS_DIR_ENV = "GMR_TFDS_DIR"
_MANUAL = ("Point data_dir (config field) or $GMR_DATA_DIR at a folder laid out like "
           "../shared/datasets: mnist/, fashion-mnist/, omniglot/, cifar100/.")


def resolve_tfds_dir(tfds_dir: str = "") -> str:
  d = tfds_dir or os.environ.get(TFDS_DIR_ENV, "") or os.path.join("~", "tensorflow_datasets")
  return os.path.abspath(os.path.expanduser(d))


class _Base(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL

  def __init__(self, *, raw_dir: str, download: bool = False, **kwargs):
    self._raw_dir, self._download = raw_dir, download
    super().__init__(file_format="array_record", **kwargs)

  def preparing_line(self) -> str:
    """The one line printed when this dataset is prepared: its name, the raw files it is read
    from (absolute paths) and the folder it is written to."""
    files = ", ".join(os.path.join(self._raw_dir, rel) for rel in self.raw_files())
    return f"preparing {self.name} from {files} into {self.data_dir}"

  def _log_download_bytes(self) -> None:
    # TFDS's hook prints "Downloading and preparing dataset Unknown size ..."; a gmr builder
    # downloads nothing here (missing raw files are fetched before, by :func:`prepare`)
    print(self.preparing_line(), flush=True)

  def _log_download_done(self) -> None:
    # TFDS's "Dataset ... downloaded and prepared to ...": the line before says it all
    pass


class GmrMnist(_Base, skip_registration=True):
  """MNIST from ``<raw_dir>/mnist/*-idx?-ubyte.gz``."""
  name = "gmr_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RAW = "mnist"

  @classmethod
  def raw_files(cls):
    return tuple(f"{cls.RAW}/{f}" for split in ("train", "test") for f in raw.MNIST_FILES[split][:2])

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "index": tfds.features.Scalar(np.int64),
        "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=10)}), supervised_keys=("image", "label"))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in ("train", "test")}

  def _generate_examples(self, split):
    images, labels = raw.mnist_like(self._raw_dir, self.RAW, split, download=self._download)
    for i in range(len(images)):
      yield i, {"index": i, "image": images[i], "label": int(labels[i])}


class GmrFashionMnist(GmrMnist, skip_registration=True):
  """Fashion-MNIST from ``<raw_dir>/fashion-mnist/*-idx?-ubyte.gz``."""
  name = "gmr_fashion_mnist"
  RAW = "fashion-mnist"


class GmrOmniglot(_Base, skip_registration=True):
  """All 50 Omniglot alphabets from ``images_background.zip`` and ``images_evaluation.zip``.

  Strokes = 1. ``alphabet`` is the alphabet's name, ``character`` the character's index
  within its alphabet (sorted folder order), ``drawing`` the drawing's index within its
  character (sorted file-name order). One split, ``all``.
  """
  name = "gmr_omniglot"
  VERSION = tfds.core.Version("1.0.0")

  @classmethod
  def raw_files(cls):
    return tuple(f"omniglot/{z[0]}" for z in raw.OMNIGLOT_ZIPS.values())

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "index": tfds.features.Scalar(np.int64),
        "image": tfds.features.Tensor(shape=(105, 105, 1), dtype=np.uint8),
        "alphabet": tfds.features.Text(),
        "character": tfds.features.Scalar(np.int32),
        "drawing": tfds.features.Scalar(np.int32)}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    i = 0
    for zname, na, nc, ni in raw.OMNIGLOT_ZIPS.values():
      path = os.path.join(self._raw_dir, "omniglot", zname)
      raw._check_or_fetch(path, f"omniglot/{zname}", raw.URLS["omniglot"], self._download)  # pylint: disable=protected-access
      for alpha, items in raw.read_omniglot_zip(path, None, (na, nc, ni)).items():
        counts: Dict[int, int] = {}
        for ci, _, img in items:
          d = counts.get(ci, 0)
          counts[ci] = d + 1
          yield i, {"index": i, "image": img[..., None], "alphabet": alpha, "character": ci,
                    "drawing": d}
          i += 1


class GmrCifar100(_Base, skip_registration=True):
  """CIFAR-100 from ``<raw_dir>/cifar100/cifar-100-python.tar.gz``."""
  name = "gmr_cifar100"
  VERSION = tfds.core.Version("1.0.0")

  @classmethod
  def raw_files(cls):
    return (f"cifar100/{raw.CIFAR100_FILE}",)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "index": tfds.features.Scalar(np.int64),
        "image": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
        "label": tfds.features.ClassLabel(num_classes=100),
        "coarse_label": tfds.features.ClassLabel(num_classes=20)}))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in ("train", "test")}

  def _generate_examples(self, split):
    images, fine, coarse = raw.cifar100(self._raw_dir, split, download=self._download)
    for i in range(len(images)):
      yield i, {"index": i, "image": images[i], "label": int(fine[i]),
                "coarse_label": int(coarse[i])}


BUILDERS = {b.name: b for b in (GmrMnist, GmrFashionMnist, GmrOmniglot, GmrCifar100)}


def builder(name: str, data_dir: str = "", tfds_dir: str = "", download: bool = False):
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
  return BUILDERS[name](raw_dir=raw.resolve_data_dir(data_dir), download=download,
                        data_dir=resolve_tfds_dir(tfds_dir))


PROVENANCE_FILE = "gmr_raw_files.json"


def _warn(line: str) -> None:
  print(line, file=sys.stderr, flush=True)


def prepare(name: str, data_dir: str = "", tfds_dir: str = "", download: bool = False,
            accept_noncanonical: bool = False, warn=_warn):
  """The TFDS builder of ``name``, prepared from the raw files it records (see the module
  docstring). ``warn`` gets one line per rebuild or accepted non-canonical file.

  Raises :class:`gmr.data.raw.DataError` naming the file for a missing raw file, and for a
  non-canonical one unless ``accept_noncanonical`` (also when the prepared data was built
  from such a file: the same knowing acceptance is needed to use it).

  Processes preparing the same dataset at once (runs of a sweep side by side on a fresh
  ``tfds_dir``) take turns under a file lock (``<tfds_dir>/.<name>.lock``): one prepares, the
  others then find it prepared and recorded."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(BUILDERS)}")
  root = resolve_tfds_dir(tfds_dir)
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, f".{name}.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    return _prepare_locked(name, data_dir, tfds_dir, download, accept_noncanonical, warn)


def _prepare_locked(name, data_dir, tfds_dir, download, accept_noncanonical, warn):
  b = builder(name, data_dir, tfds_dir, download)
  rels = b.raw_files()
  for rel in rels:  # fetched (and checked) first when missing and download is allowed
    raw._check_or_fetch(os.path.join(b._raw_dir, rel), rel, raw.URLS[rel.split("/")[0]],  # pylint: disable=protected-access
                        download)
  now = raw.fingerprint(b._raw_dir, rels)  # pylint: disable=protected-access
  record = os.path.join(b.data_dir, PROVENANCE_FILE)
  if b.is_prepared():
    try:
      with open(record) as f:
        stored = json.load(f)
    except (OSError, json.JSONDecodeError):
      stored = None
    if stored is not None and stored.get("files") == now:
      _check_accepted(b, [r for r in rels if not stored.get("canonical", {}).get(r, True)],
                      accept_noncanonical, warn)
      return b
    changed = [r for r in rels if (stored or {}).get("files", {}).get(r) != now[r]]
    why = (f"was built from other raw files ({', '.join(changed)} changed)" if stored else
           "has no record of the raw files it was built from")
    warn(f"warning: prepared dataset {b.data_dir} {why}; rebuilding it from {b._raw_dir}")  # pylint: disable=protected-access
    shutil.rmtree(b.data_dir)
    b = builder(name, data_dir, tfds_dir, download)
  canonical = {r: raw.is_canonical(os.path.join(b._raw_dir, r), r) for r in rels}  # pylint: disable=protected-access
  _check_accepted(b, [r for r in rels if not canonical[r]], accept_noncanonical, warn)
  b.download_and_prepare()
  tmp = record + ".tmp"
  with open(tmp, "w") as f:
    json.dump({"raw_dir": b._raw_dir, "files": now, "canonical": canonical}, f, indent=1,  # pylint: disable=protected-access
              sort_keys=True)
  os.replace(tmp, record)
  return b


def _check_accepted(b, noncanonical, accept: bool, warn) -> None:
  for rel in noncanonical:
    path = os.path.join(b._raw_dir, rel)  # pylint: disable=protected-access
    if not accept:
      raise raw.DataError(path, "not the canonical file (its digest differs from the published "
                          "one)", "replace it with the canonical file, or set "
                          "--config.accept_noncanonical_data=true to use it knowingly")
    warn(f"warning: {path}: not the canonical file; used because accept_noncanonical_data is set")


def load_arrays(name: str, split: str, data_dir: str = "", tfds_dir: str = "",
                download: bool = False, accept_noncanonical: bool = False,
                warn=_warn) -> Dict[str, np.ndarray]:
  """Prepare ``name`` once (from the raw files, see :func:`prepare`) and return ``split`` as
  numpy arrays, one per feature, in canonical order. Preparation is atomic (TFDS writes to a
  temporary folder and renames it), so a failed or interrupted preparation leaves nothing
  half-written; its record of the raw files is written after it."""
  b = prepare(name, data_dir, tfds_dir, download, accept_noncanonical, warn)
  src = b.as_data_source(split=split)
  n = len(src)
  cols: Dict[str, list] = {}
  for start in range(0, n, 8192):
    for rec in src.__getitems__(range(start, min(n, start + 8192))):
      for k, v in rec.items():
        cols.setdefault(k, []).append(v)
  out = {k: np.stack(v) if not isinstance(v[0], bytes) else np.array([s.decode() for s in v])
         for k, v in cols.items()}
  order = np.argsort(out.pop("index"), kind="stable")
  return {k: v[order] for k, v in out.items()}
