"""TFDS builders for MNIST, Fashion-MNIST, Omniglot and CIFAR-100 that need no TensorFlow.

Each builder reads the canonical raw files from a manual directory laid out like
``../shared/datasets`` (see :mod:`gmr.data.raw`), checks them, and writes an ``array_record``
TFDS dataset (random access through ``as_data_source``; preparing and reading need only numpy).
When a file is absent and ``download=True`` it is fetched from its canonical location and
checked. :func:`load_arrays` prepares a dataset once and returns a split as numpy arrays in
canonical order (every record carries its ``index``).

  arrays = load_arrays("gmr_mnist", "train", data_dir="../shared/datasets")
"""

from __future__ import annotations

import os
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


class GmrMnist(_Base, skip_registration=True):
  """MNIST from ``<raw_dir>/mnist/*-idx?-ubyte.gz``."""
  name = "gmr_mnist"
  VERSION = tfds.core.Version("1.0.0")
  RAW = "mnist"

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


def load_arrays(name: str, split: str, data_dir: str = "", tfds_dir: str = "",
                download: bool = False) -> Dict[str, np.ndarray]:
  """Prepare ``name`` once (from the raw files) and return ``split`` as numpy arrays, one
  per feature, in canonical order. Preparation is atomic (TFDS writes to a temporary folder
  and renames it), so a failed or interrupted preparation leaves nothing half-written."""
  b = builder(name, data_dir, tfds_dir, download)
  b.download_and_prepare()
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
