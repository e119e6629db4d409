"""Tiny data directories in the canonical raw formats, generated on the fly (no real data)."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import zipfile

import numpy as np

from gmr.data import real


def write_idx(path, arr, magic_type=0x08):
  arr = np.asarray(arr)
  header = bytes([0, 0, magic_type, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.open(path, "wb") as f:
    f.write(header + arr.astype(np.uint8).tobytes())


def make_mnist(root, name="mnist", n_train=200, n_test=50, seed=0, label_offset=0):
  rng = np.random.default_rng(seed)
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    labels = (np.arange(n) + label_offset) % 10
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    images[:, 0, 0] = labels  # a recognisable pixel
    write_idx(os.path.join(root, name, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(root, name, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def _png(img01):
  from PIL import Image
  buf = io.BytesIO()
  Image.fromarray(((1 - img01) * 255).astype(np.uint8)).convert("1").save(buf, format="PNG")
  return buf.getvalue()


def make_omniglot(root, chars=2, drawings=20, seed=0, extra_background=("Latin",)):
  """Two zips holding the 20 alphabets of the paper (split between them) plus extras."""
  rng = np.random.default_rng(seed)
  names = list(real.OMNIGLOT20)
  parts = {"images_background": names[:10] + list(extra_background), "images_evaluation": names[10:]}
  counts = {}
  cid = 0
  for zname, alphas in parts.items():
    path = os.path.join(root, "omniglot", zname + ".zip")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    n = 0
    with zipfile.ZipFile(path, "w") as zf:
      for a in alphas:
        for c in range(chars):
          cid += 1
          for d in range(drawings):
            img = (rng.random((105, 105)) < 0.1).astype(np.uint8)
            zf.writestr(f"{zname}/{a}/character{c + 1:02d}/{cid:04d}_{d + 1:02d}.png", _png(img))
            n += 1
    counts[zname] = (len(alphas), len(alphas) * chars, n)
  return counts


def make_all(root, seed=0):
  """Every dataset's raw files under ``root`` (``seed`` changes every file's content);
  returns the Omniglot counts of :func:`make_omniglot`."""
  make_mnist(root, "mnist", seed=seed, label_offset=seed)
  make_mnist(root, "fashion-mnist", seed=seed + 1, label_offset=seed)
  counts = make_omniglot(root, seed=seed)
  make_cifar100(root, seed=seed)
  return counts


def canonical_digests(root) -> dict:
  """``raw.CANONICAL`` for the fixture files under ``root`` (tests treat them as canonical)."""
  from gmr.data import raw
  out = {}
  for rel in raw.CANONICAL:
    path = os.path.join(root, rel)
    if os.path.exists(path):
      out[rel] = (("sha256", raw.file_digest(path)),)
  return out


def make_cifar100(root, n_train=500, n_test=100, seed=0):
  rng = np.random.default_rng(seed)
  path = os.path.join(root, "cifar100", "cifar-100-python.tar.gz")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with tarfile.open(path, "w:gz") as tf:
    for split, n in (("train", n_train), ("test", n_test)):
      fine = np.arange(n) % 100
      d = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
           "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist()}
      blob = pickle.dumps(d)
      info = tarfile.TarInfo(f"cifar-100-python/{split}")
      info.size = len(blob)
      tf.addfile(info, io.BytesIO(blob))
