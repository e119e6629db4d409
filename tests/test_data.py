"""Raw readers, TFDS builders (without TensorFlow) and the real-data suites, on generated fixtures.

The ``slow`` test at the end reads ``../shared/datasets`` when it is there.
"""

import gzip
import json
import os
import re
import sys

import numpy as np
import pytest

from gmr.data import raw, real, tfds_builders
from tests import data_fixtures as fx

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "datasets")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("raw"))
  counts = fx.make_all(root)
  return root, str(tmp_path_factory.mktemp("tfds")), counts


@pytest.fixture(autouse=True)
def small_counts(monkeypatch, dirs):
  """The fixtures' counts, and their digests as the canonical ones."""
  _, _, counts = dirs
  monkeypatch.setattr(raw, "CANONICAL", fx.canonical_digests(dirs[0]))
  monkeypatch.setattr(raw, "MNIST_FILES", {
      "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 200),
      "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 50)})
  monkeypatch.setattr(raw, "OMNIGLOT_ZIPS", {
      k: (f"images_{k}.zip",) + counts[f"images_{k}"] for k in ("background", "evaluation")})
  monkeypatch.setattr(raw, "CIFAR100_COUNTS", {"train": 500, "test": 100})


def _opts(dirs, **kw):
  """What a real suite reads (gmr.data.options): the file fields and every suite option at
  its default, then ``kw``."""
  from gmr import config as config_schema
  out = dict(data_dir=dirs[0], tfds_dir=dirs[1], download=False, accept_noncanonical_data=False)
  for suite in config_schema.SUITE_OPTIONS:
    out.update(config_schema.suite_options(suite).to_dict())
  return dict(out, **kw)


# ----------------------------------------------------------------------------- raw readers
def test_idx_reader_round_trip(dirs):
  x, y = raw.mnist_like(dirs[0], "mnist", "train")
  assert x.shape == (200, 28, 28, 1) and x.dtype == np.uint8
  np.testing.assert_array_equal(y, np.arange(200) % 10)
  np.testing.assert_array_equal(x[:, 0, 0, 0], y)


def _copy_mnist(dirs, tmp_path):
  import shutil
  shutil.copytree(os.path.join(dirs[0], "mnist"), tmp_path / "mnist")
  return str(tmp_path), str(tmp_path / "mnist" / "train-images-idx3-ubyte.gz")


def test_truncated_idx_names_the_file(dirs, tmp_path):
  root, path = _copy_mnist(dirs, tmp_path)
  with open(path, "rb") as f:
    blob = f.read()
  with open(path, "wb") as f:
    f.write(blob[:len(blob) // 2])
  with pytest.raises(raw.DataError, match="train-images-idx3-ubyte.gz.*truncated or corrupt"):
    raw.mnist_like(root, "mnist", "train")


def test_idx_short_body_and_bad_magic(dirs, tmp_path):
  root, path = _copy_mnist(dirs, tmp_path)
  with gzip.open(path, "rb") as f:
    blob = f.read()
  with gzip.open(path, "wb") as f:
    f.write(blob[:-100])
  with pytest.raises(raw.DataError, match="data bytes, its header"):
    raw.mnist_like(root, "mnist", "train")
  with gzip.open(path, "wb") as f:
    f.write(b"\x12\x34\x08\x03" + blob[4:])
  with pytest.raises(raw.DataError, match="bad IDX magic number 12340803"):
    raw.mnist_like(root, "mnist", "train")


def test_wrong_image_count(dirs, monkeypatch):
  monkeypatch.setattr(raw, "MNIST_FILES", {"train": (
      "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000)})
  with pytest.raises(raw.DataError, match="train-images-idx3-ubyte.gz: holds 200 images, the "
                     "train split has 60000"):
    raw.mnist_like(dirs[0], "mnist", "train")


def test_missing_files_and_data_dir(tmp_path, monkeypatch):
  with pytest.raises(raw.DataError, match="missing; put the canonical file there"):
    raw.mnist_like(str(tmp_path), "mnist", "train")
  monkeypatch.delenv(raw.DATA_DIR_ENV, raising=False)
  with pytest.raises(raw.DataError, match="data_dir: not set; pass --config.data_dir"):
    raw.resolve_data_dir("")


def test_corrupt_zip_and_tar(dirs, tmp_path):
  z = tmp_path / "omniglot" / "images_background.zip"
  os.makedirs(z.parent)
  with open(os.path.join(dirs[0], "omniglot", "images_background.zip"), "rb") as f:
    blob = f.read()
  z.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(raw.DataError, match="images_background.zip: not a readable zip"):
    raw.read_omniglot_zip(str(z))
  t = tmp_path / "cifar100" / "cifar-100-python.tar.gz"
  os.makedirs(t.parent)
  with open(os.path.join(dirs[0], "cifar100", "cifar-100-python.tar.gz"), "rb") as f:
    blob = f.read()
  t.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(raw.DataError, match="cifar-100-python.tar.gz: cannot be read"):
    raw.cifar100(str(tmp_path), "train")


def test_omniglot_content_check(dirs):
  path = os.path.join(dirs[0], "omniglot", "images_background.zip")
  with pytest.raises(raw.DataError, match="holds 11 alphabets / 22 characters / 440 images, "
                     "expected 30 / 964 / 19280"):
    raw.read_omniglot_zip(path, expect=(30, 964, 19280))
  out = raw.read_omniglot_zip(path, ["Gujarati"])
  imgs = np.stack([i for _, _, i in out["Gujarati"]])
  assert imgs.shape == (40, 105, 105) and set(np.unique(imgs)) <= {0, 1}
  assert 0.05 < imgs.mean() < 0.15  # strokes (10% of pixels) are 1


# ----------------------------------------------------------------------------- TFDS
def test_tfds_builder_without_tensorflow(dirs):
  a = tfds_builders.load_arrays("gmr_mnist", "train", dirs[0], dirs[1])
  x, y = raw.mnist_like(dirs[0], "mnist", "train")
  np.testing.assert_array_equal(a["image"], x)  # canonical order restored
  np.testing.assert_array_equal(a["label"], y)
  assert os.path.isdir(os.path.join(dirs[1], "gmr_mnist", "1.0.0"))
  assert "tensorflow" not in sys.modules


@pytest.mark.parametrize("name", sorted(tfds_builders.BUILDERS))
def test_preparing_prints_one_true_line(dirs, tmp_path, capfd, name):
  """Preparing says which raw files go into which folder, and no word of a download (nothing
  is downloaded); loading the prepared data again prints nothing."""
  tfds_dir = str(tmp_path / "tfds")
  tfds_builders.load_arrays(name, SPLITS.get(name, ("train",))[0], dirs[0], tfds_dir)
  out, err = capfd.readouterr()
  files = ", ".join(os.path.join(dirs[0], rel) for rel in tfds_builders.BUILDERS[name].raw_files())
  assert out.splitlines() == [f"preparing {name} from {files} into "
                              f"{os.path.join(tfds_dir, name, '1.0.0')}"]
  assert "download" not in (out + err).lower()
  tfds_builders.load_arrays(name, SPLITS.get(name, ("train",))[0], dirs[0], tfds_dir)
  assert capfd.readouterr() == ("", "")


# ----------------------------------------------------------------------------- provenance
RAW_FILES = [(name, rel) for name, b in sorted(tfds_builders.BUILDERS.items())
             for rel in b.raw_files()]
SPLITS = {"gmr_omniglot": ("train",)}


def _arrays(name, raw_dir, tfds_dir, **kw):
  return {sp: tfds_builders.load_arrays(name, sp, raw_dir, tfds_dir, **kw)
          for sp in SPLITS.get(name, ("train", "test"))}


def _equal(a, b):
  return all(np.array_equal(a[sp][k], b[sp][k]) for sp in a for k in a[sp])


@pytest.fixture(scope="module")
def changed(tmp_path_factory):
  """Every raw file again, each with other content (another seed, other labels)."""
  root = str(tmp_path_factory.mktemp("raw_changed"))
  fx.make_all(root, seed=3)
  return root


def _copy_raw(src, dest):
  import shutil
  shutil.copytree(src, dest)
  return str(dest)


@pytest.mark.parametrize("name,rel", RAW_FILES)
def test_prepared_data_follows_its_raw_files(dirs, changed, tmp_path, monkeypatch, name, rel):
  """Every raw file of every dataset: prepared data records what it was built from; a changed
  file makes the next load rebuild it (one warning naming the file) and return what a fresh
  preparation returns; a deleted file is refused naming it (not served from the old data)."""
  raw_dir, tfds_dir = _copy_raw(dirs[0], tmp_path / "raw"), str(tmp_path / "tfds")
  before = _arrays(name, raw_dir, tfds_dir)
  record = json.load(open(os.path.join(tfds_dir, name, "1.0.0", "gmr_raw_files.json")))
  assert record["files"][rel]["sha256"] == raw.file_digest(os.path.join(raw_dir, rel))
  assert record["files"][rel]["bytes"] == os.path.getsize(os.path.join(raw_dir, rel))
  shutil_copy(os.path.join(changed, rel), os.path.join(raw_dir, rel))
  monkeypatch.setitem(raw.CANONICAL, rel, (("sha256", raw.file_digest(os.path.join(raw_dir, rel))),))
  warned = []
  after = _arrays(name, raw_dir, tfds_dir, warn=warned.append)
  assert len(warned) == 1 and f"({rel} changed); rebuilding it" in warned[0], warned
  assert _equal(after, _arrays(name, raw_dir, str(tmp_path / "fresh")))
  assert not _equal(after, before)
  assert _equal(after, _arrays(name, raw_dir, tfds_dir, warn=warned.append)) and len(warned) == 1
  os.remove(os.path.join(raw_dir, rel))
  with pytest.raises(raw.DataError, match=f"{re.escape(os.path.join(raw_dir, rel))}: missing"):
    _arrays(name, raw_dir, tfds_dir)


def shutil_copy(src, dest):
  import shutil
  shutil.copyfile(src, dest)


@pytest.mark.parametrize("name,rel", RAW_FILES)
def test_a_non_canonical_raw_file_is_named_and_accepted_only_knowingly(dirs, changed, tmp_path,
                                                                       name, rel):
  """Preparing checks every raw file against its published digest: one replaced file is
  refused naming that file, used with one warning when accept_noncanonical is set, and data
  prepared from it is refused again to a run that does not accept it."""
  raw_dir, tfds_dir = _copy_raw(dirs[0], tmp_path / "raw"), str(tmp_path / "tfds")
  path = os.path.join(raw_dir, rel)
  shutil_copy(os.path.join(changed, rel), path)
  with pytest.raises(raw.DataError, match=f"^{re.escape(path)}: not the canonical file .*"
                     "accept_noncanonical_data=true to use it knowingly"):
    _arrays(name, raw_dir, tfds_dir)
  warned = []
  _arrays(name, raw_dir, tfds_dir, accept_noncanonical=True, warn=warned.append)
  assert warned and all(w == f"warning: {path}: not the canonical file; used because "
                        "accept_noncanonical_data is set" for w in warned)
  with pytest.raises(raw.DataError, match=f"^{re.escape(path)}: not the canonical file"):
    _arrays(name, raw_dir, tfds_dir)


def test_train_labels_replaced_by_the_test_labels_names_the_labels_file(dirs, tmp_path):
  """The reproduction: the labels file is named, by the digest check and, when non-canonical
  files are accepted, by the count check."""
  raw_dir = _copy_raw(dirs[0], tmp_path / "raw")
  labels = os.path.join(raw_dir, "mnist", "train-labels-idx1-ubyte.gz")
  shutil_copy(os.path.join(raw_dir, "mnist", "t10k-labels-idx1-ubyte.gz"), labels)
  with pytest.raises(raw.DataError, match=f"^{re.escape(labels)}: not the canonical file"):
    tfds_builders.load_arrays("gmr_mnist", "train", raw_dir, str(tmp_path / "t1"))
  with pytest.raises(raw.DataError, match=f"^{re.escape(labels)}: holds 50 labels, the train "
                     "split has 200; replace it with the canonical train-labels-idx1-ubyte.gz"):
    tfds_builders.load_arrays("gmr_mnist", "train", raw_dir, str(tmp_path / "t2"),
                              accept_noncanonical=True, warn=lambda line: None)


# ----------------------------------------------------------------------------- suites
def test_four_mnists_suite(dirs):
  s = real.four_mnists(_opts(dirs))
  assert s.task_names == ("mnist", "mnist_copy", "mnist_rot", "mnist_rot_copy")
  assert s.train.sizes == (200,) * 4 and s.test.sizes == (50,) * 4
  assert len(s.train.x) == 400  # the copies share their images
  x0, y0 = s.train.task(0)
  x1, y1 = s.train.task(1)
  x2, _ = s.train.task(2)
  np.testing.assert_array_equal(x0, x1)
  np.testing.assert_array_equal(y0, y1)
  np.testing.assert_array_equal(x2, np.rot90(x0, k=-1, axes=(1, 2)))  # clockwise
  np.testing.assert_array_equal(x2[:, 0, -1, 0], x0[:, 0, 0, 0])  # top-left -> top-right
  assert s.info["groups"] == [[0, 1], [2, 3]]


def test_mnist_family_suite(dirs):
  s = real.mnist_family(_opts(dirs, tasks="mnist_rot,fashion"))
  assert s.task_names == ("mnist_rot", "fashion") and s.head_dims == (10, 10)
  m = real.mnist_family(_opts(dirs, tasks="mnist"))
  np.testing.assert_array_equal(s.train.task(0)[0], np.rot90(m.train.task(0)[0], k=-1, axes=(1, 2)))
  f = real.four_mnists(_opts(dirs))
  assert not np.array_equal(s.train.task(1)[0], f.train.task(0)[0])  # Fashion, not MNIST
  with pytest.raises(ValueError, match="data.tasks"):
    real.mnist_family(_opts(dirs, tasks="kmnist"))


def test_finetune_smoke_from_a_source_run(dirs, tmp_path):
  """The fine-tuning protocol end to end: source on MNIST, then TAPS / full / head-only on
  MNIST-rot from its checkpoint, through the configs the experiments use."""
  from experiments.configs import finetune
  from gmr import experiment
  src = str(tmp_path / "source")
  c = finetune.get_config("source,smoke")
  c.data_dir, c.tfds_dir = dirs[0], dirs[1]
  experiment.run(c, src, quiet=True)
  for variant in ("taps", "full", "head", "only_layer_1"):
    c = finetune.get_config(f"{variant},smoke")
    c.data_dir, c.tfds_dir, c.init_from = dirs[0], dirs[1], src
    res = experiment.run(c, str(tmp_path / variant), quiet=True)
    assert res["tasks"] == ["mnist_rot"] and 0 <= res["final"]["accuracy"]["mean"] <= 1
    if variant == "taps":
      assert res["taps"]["num_layers"] == 3  # the three conv layers of the shared bottom
      assert 0 <= res["taps"]["task_specific_fraction"]["mnist_rot"] <= 1
    if variant == "only_layer_1":  # one adaptable layer, lambda 0: its score stays above tau
      assert res["taps"]["num_layers"] == 1
      assert res["taps"]["task_specific_layers"]["mnist_rot"] == ["layer_1/group_0/kernel_0"]


def test_omniglot20_splits(dirs):
  s = real.omniglot20(_opts(dirs))
  assert s.task_names == real.OMNIGLOT20 and s.head_dims == (2,) * 20
  assert s.train.sizes == (20,) * 20 and s.validation.sizes == (8,) * 20
  assert s.test.sizes == (12,) * 20
  for t in range(20):
    rows = [set(sp.index[sp.offsets[t]:sp.offsets[t] + sp.sizes[t]].tolist())
            for sp in (s.train, s.validation, s.test)]
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])
    _, y = s.train.task(t)
    assert np.bincount(y).tolist() == [10, 10]
  again = real.omniglot20(_opts(dirs))
  np.testing.assert_array_equal(again.train.index, s.train.index)  # seeded by alphabet id
  assert s.train.x.shape[1:] == (105, 105, 1) and s.train.x.max() == 255


def test_clusters40_suites(dirs):
  s = real.clusters40(_opts(dirs))
  assert s.num_tasks == 40 and s.head_dims == (5,) * 20 + (9,) * 20
  assert s.train.x.shape[1:] == (32, 32, 3)
  for t in range(40):
    _, y = s.train.task(t)
    assert 0 <= y.min() and y.max() < s.head_dims[t]
  # MNIST task "without_3": no image of class 3; labels above 3 shifted down
  t = s.task_names.index("mnist/without_3")
  ix = s.test.index[s.test.offsets[t]:s.test.offsets[t] + s.test.sizes[t]]
  assert s.test.sizes[t] == 45 and len(np.unique(ix)) == 45
  assert s.info["clusters"]["mnist"] == list(range(20, 30))
  off = real.clusters40(_opts(dirs), offline=True)
  assert off.task_names[0] == "omniglot/Gujarati" and off.head_dims[:20] == (2,) * 20
  assert off.train.x.shape[1:] == (32, 32, 3)


def _exact_resize(img: np.ndarray, size: int, antialias: bool) -> list:
  """The bilinear resize of ``resize_images`` in exact rational arithmetic (``fractions``):
  ``[size][size]`` Fractions, before rounding."""
  from fractions import Fraction as Fr

  def taps(n_in, n_out):
    inv = Fr(n_in, n_out)
    ks = max(inv, 1) if antialias else Fr(1)
    out = []
    for o in range(n_out):
      f = (o + Fr(1, 2)) * inv - Fr(1, 2)
      w = [max(Fr(0), 1 - abs(f - j) / ks) for j in range(n_in)]
      tot = sum(w)
      if not (-Fr(1, 2) <= f <= n_in - Fr(1, 2)) or tot == 0:
        w = [Fr(0)] * n_in
      else:
        w = [v / tot for v in w]
      out.append(w)
    return out

  h, w = img.shape
  rows, cols = taps(h, size), taps(w, size)
  mid = [[sum(rows[o][j] * int(img[j, c]) for j in range(h)) for c in range(w)]
         for o in range(size)]
  return [[sum(cols[p][c] * mid[o][c] for c in range(w)) for p in range(size)]
          for o in range(size)]


@pytest.mark.parametrize("shape,size,antialias,dyadic", [
    ((2, 28, 28), 32, False, True), ((2, 105, 105), 32, True, False),
    ((2, 105, 105), 32, False, False), ((2, 9, 13), 5, True, False),
    ((2, 7, 5), 11, False, False), ((2, 6, 6), 6, True, True), ((3, 1, 2), 5, False, False)])
def test_resize_images_is_the_exact_bilinear_resize(shape, size, antialias, dyadic):
  """Up- and downsampling, with and without antialiasing, odd sizes: every pixel is the exact
  rational result rounded half to even, but for exact ties with weights that are not binary
  fractions, which may go to either neighbour (e.g. [0, 5] -> 5 pixels makes 5/2); with
  binary-fraction weights (28 -> 32: sixteenths) ties are exact too."""
  import math
  rng = np.random.RandomState(sum(shape) + size)
  x = rng.randint(0, 256, shape + (1,)).astype(np.uint8)
  if shape[1:] == (1, 2):
    x[0, 0, :, 0] = (0, 5)  # an exact tie (5/2 at the middle pixel) from non-dyadic weights
  got = real.resize_images(x, size, channels=3, antialias=antialias)
  assert got.shape == (shape[0], size, size, 3) and got.dtype == np.uint8
  assert np.array_equal(got[..., 0], got[..., 2])
  for i in range(shape[0]):
    exact = _exact_resize(x[i, ..., 0], size, antialias)
    for o in range(size):
      for p in range(size):
        v, g = exact[o][p], int(got[i, o, p, 0])
        if v - math.floor(v) == 0.5 and not dyadic:
          assert g in (math.floor(v), math.ceil(v))
        else:
          assert g == min(255, max(0, round(v))), (i, o, p, v, g)


def test_resize_images_equals_jax_where_float32_is_exact():
  """The 28 -> 32 resize of MNIST in the clusters suites (weights in sixteenths, exact in
  float32): bit for bit ``jax.image.resize``, so snapshots written before and after agree."""
  import jax
  rng = np.random.RandomState(0)
  x = rng.randint(0, 256, (64, 28, 28, 1)).astype(np.uint8)
  ref = np.asarray(jax.image.resize(x.astype(np.float32), (64, 32, 32, 1), "bilinear"))
  assert np.array_equal(real.resize_images(x, 32, channels=1),
                        np.clip(np.rint(ref), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("shape,size,antialias", [
    ((4, 105, 105), 32, True), ((4, 9, 13), 5, True), ((4, 7, 5), 11, False),
    ((4, 40, 40), 32, True)])
def test_resize_images_is_jax_resize_in_float64(shape, size, antialias):
  """An independent implementation of the same resize: ``jax.image.resize`` in float64 gives
  the same pixels wherever its value is not within 1e-9 of a half (and never one grey level
  further)."""
  import jax
  rng = np.random.RandomState(size)
  x = rng.randint(0, 256, shape + (1,)).astype(np.uint8)
  with jax.enable_x64(True):
    ref = np.asarray(jax.image.resize(x.astype(np.float64), (shape[0], size, size, 1),
                                      "bilinear", antialias=antialias))
  got = real.resize_images(x, size, channels=1, antialias=antialias).astype(np.int64)
  near_half = np.abs(ref - np.floor(ref) - 0.5) < 1e-9
  assert ref.dtype == np.float64
  assert np.array_equal(got[~near_half], np.clip(np.rint(ref[~near_half]), 0, 255))
  assert np.all(np.abs(got - ref) <= 1)


def test_resize_images_runs_no_xla_code(monkeypatch):
  """The data of a suite is the same wherever it is built: XLA's float32 resize changed
  pixels with the CPU's instruction set, so the resize must not run XLA at all."""
  import jax
  rng = np.random.RandomState(0)
  x = (rng.rand(8, 105, 105, 1) < 0.1).astype(np.uint8) * 255
  before = real.resize_images(x, 32, 3, antialias=True)

  def refuse(*a, **k):
    raise AssertionError("resize_images ran XLA code")
  for name in ("jit", "device_put"):
    monkeypatch.setattr(jax, name, refuse)
  monkeypatch.setattr(jax.image, "resize", refuse)
  assert np.array_equal(real.resize_images(x, 32, 3, antialias=True), before)


@pytest.mark.parametrize("shape,size,channels", [
    ((2, 28, 28), 32, 3), ((2, 0, 28, 1), 32, 3), ((2, 28, 28, 2), 32, 3), ((2, 28, 28, 1), 0, 3)])
def test_resize_images_bad_input_is_a_value_error(shape, size, channels):
  with pytest.raises(ValueError, match="resize_images"):
    real.resize_images(np.zeros(shape, np.uint8), size, channels)


def test_pad_crop_shapes_and_content():
  import jax
  import jax.numpy as jnp
  from gmr.schedule import pad_crop
  x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1) + 1
  y = pad_crop(x, jax.random.key(0), 2)
  assert y.shape == x.shape
  for b in range(2):  # every crop is a window of the zero-padded image
    pad = np.pad(np.asarray(x[b]), ((2, 2), (2, 2), (0, 0)))
    assert any(np.array_equal(pad[i:i + 4, j:j + 4], np.asarray(y[b]))
               for i in range(5) for j in range(5))


# ----------------------------------------------------------------------------- smoke runs
@pytest.mark.parametrize("config_name,variant", [
    ("four_mnists", "smoke"), ("omniglot", "smoke"), ("clusters40", "smoke,offline")])
def test_smoke_variants_train(dirs, tmp_path, config_name, variant):
  import importlib
  from gmr import experiment
  mod = importlib.import_module(f"experiments.configs.{config_name}")
  c = mod.get_config(variant)
  c.data_dir, c.tfds_dir = dirs[0], dirs[1]
  if config_name == "four_mnists":
    c.data.max_examples = 0
  if config_name == "clusters40":
    c.data.max_examples = 0
  res = experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert np.isfinite(res["final"]["loss"]["mean"])
  assert 0 <= res["final"]["accuracy"]["mean"] <= 1
  assert os.path.isdir(res["checkpoint"])  # results name the checkpoint they come from
  if c.select_by:  # Omniglot protocol: test numbers of the best validation evaluation
    assert "checkpoints_best" in res["checkpoint"]
    sel = res["selected_by"]
    assert sel["metric"] == "validation.accuracy.mean"
    assert sel["value"] == res["final_validation"]["accuracy"]["mean"]


def test_cli_missing_data_is_one_line(tmp_path):
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  p = subprocess.run([sys.executable, "-m", "experiments.main",
                      "--config=experiments/configs/four_mnists.py:smoke",
                      f"--config.data_dir={tmp_path / 'empty'}", f"--config.tfds_dir={tmp_path / 't'}",
                      f"--workdir={tmp_path / 'w'}"], cwd=root, capture_output=True, text=True,
                     timeout=300)
  assert p.returncode == 2, p.stderr[-2000:]
  last = p.stderr.strip().splitlines()[-1]
  assert last.startswith("error: ") and "mnist/train-images-idx3-ubyte.gz: missing" in last
  assert "Traceback" not in p.stderr


# ----------------------------------------------------------------------------- real data
@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/datasets not present")
def test_real_omniglot_and_mnist(tmp_path, monkeypatch):
  monkeypatch.undo()  # the canonical counts and digests
  present = [r for r in raw.CANONICAL if os.path.exists(os.path.join(SHARED, r))]
  assert len(present) >= 10 and all(raw.is_canonical(os.path.join(SHARED, r), r) for r in present)
  x, y = raw.mnist_like(SHARED, "mnist", "test", verify_hash=True)
  assert x.shape == (10000, 28, 28, 1) and np.bincount(y).sum() == 10000
  s = real.omniglot20(_opts((SHARED, str(tmp_path))))
  assert s.task_names == real.OMNIGLOT20
  per_alpha = [s.train.sizes[t] + s.validation.sizes[t] + s.test.sizes[t] for t in range(20)]
  assert per_alpha == [20 * h for h in s.head_dims]
  assert [s.train.sizes[t] for t in range(20)] == [10 * h for h in s.head_dims]
  allrows = [set(sp.index.tolist()) for sp in (s.train, s.validation, s.test)]
  assert not (allrows[0] & allrows[1] or allrows[0] & allrows[2] or allrows[1] & allrows[2])
  assert sum(len(r) for r in allrows) == sum(per_alpha)  # no image twice
  assert s.train.x.shape[1:] == (105, 105, 1)


# ----------------------------------------------------------------------------- suite snapshots
def _config(dirs, name, variant):
  import importlib
  c = importlib.import_module(f"experiments.configs.{name}").get_config(variant)
  c.data_dir, c.tfds_dir = dirs[0], dirs[1]
  if "max_examples" in c.data:  # an option of the suite's (Omniglot has none)
    c.data.max_examples = 0
  return c


@pytest.mark.parametrize("name,variant,sources", [
    ("four_mnists", "smoke", 0), ("omniglot", "smoke", 0), ("clusters40", "smoke,offline", 2),
    ("clusters40", "smoke", 2), ("synthetic", "smoke", 0)])
def test_snapshot_round_trip_every_suite(dirs, tmp_path, name, variant, sources):
  """Every suite comes back equal array for array; the clusters pools' resized MNIST and
  Fashion rows are stored as their 28 x 28 originals (found in the pool) and rebuilt."""
  from gmr import data
  from gmr.data import snapshot
  from launch import snapshot as snap_cli
  c = _config(dirs, name, variant) if name != "synthetic" else \
      __import__("experiments.configs.synthetic", fromlist=["x"]).get_config(variant)
  suite = data.load_suite(c)
  found = snap_cli.resized_sources(c, suite) if name != "synthetic" else []
  assert len(found) == sources
  path = str(tmp_path / "s.npz.xz")
  sha = snapshot.save(suite, path, snap_cli.data_options(c), found)
  assert sha == snapshot.digest(path) and not os.path.exists(path + ".tmp")
  back, options = snapshot.load_with_options(path)
  assert snapshot.equal(suite, back) is None
  assert options == snap_cli.data_options(c)
  if sources:  # the originals are smaller than their resized rows (and the grey channel is kept once)
    plain = str(tmp_path / "plain.npz.xz")
    snapshot.save(suite, plain, {})
    assert os.path.getsize(path) < os.path.getsize(plain)
    with pytest.raises(snapshot.SnapshotError, match="is not rows"):
      snapshot.save(suite, plain, {}, [(0, found[0][1] + 1, found[0][2])])


@pytest.mark.parametrize("name,variant", [
    ("four_mnists", "smoke"), ("omniglot", "smoke"), ("clusters40", "smoke,offline"),
    ("clusters40", "smoke"), ("finetune", "source,smoke"), ("finetune", "fashion,smoke"),
    ("synthetic", "smoke"), ("transfer", "smoke")])
def test_evaluation_spec_is_what_the_built_suite_evaluates(dirs, name, variant):
  """What select_by may name is known before data is read: the splits, the loss (so the
  metrics) and the task names data.evaluation_spec gives from the config are the built
  suite's, for every suite; a select_by naming anything else is a config error."""
  from gmr import data, validate
  from gmr.evaluate import METRICS
  from gmr.config import ConfigError
  if name in ("synthetic", "transfer"):
    c = __import__(f"experiments.configs.{name}", fromlist=["x"]).get_config(variant)
  else:
    c = _config(dirs, name, variant)
  if name == "finetune":
    c.init_from, c.freeze_backbone = "", False  # a target suite alone (no source run here)
  suite = data.load_suite(c)
  splits = tuple(k for k in ("test", "validation") if getattr(suite, k) is not None)
  assert data.evaluation_spec(c) == (splits, suite.loss, suite.task_names)
  assert data.task_clusters(c) == suite.info.get("clusters")  # what a run in progress is read by
  if name == "clusters40":
    first = "omniglot" if "offline" in variant else "cifar100"
    assert suite.info["clusters"] == {first: list(range(20)), "mnist": list(range(20, 30)),
                                      "fashion": list(range(30, 40))}
  for split in ("test", "validation"):
    for metric in ("loss", "accuracy"):
      for task in ("mean", suite.task_names[-1], "no_such_task"):
        c.select_by = f"{split}.{metric}.{task}"
        if split in splits and metric in METRICS[suite.loss] and task != "no_such_task":
          validate.validate(c)
        else:
          with pytest.raises(ConfigError, match=r"^select_by: suite '\w+' (has no|reports no)"):
            validate.validate(c)


def test_snapshot_equal_names_each_difference(dirs):
  import dataclasses
  from gmr import data
  from gmr.data import snapshot
  s = data.load_suite(_config(dirs, "clusters40", "smoke,offline"))
  x = s.train.x.copy()
  x[3, 0, 0, 0] ^= 1
  assert snapshot.equal(s, dataclasses.replace(s, train=dataclasses.replace(s.train, x=x))) == "train.x"
  y = s.test.y.copy()
  y[0] = (y[0] + 1) % 2
  assert snapshot.equal(s, dataclasses.replace(s, test=dataclasses.replace(s.test, y=y))) == "test.y"
  assert snapshot.equal(s, dataclasses.replace(s, x_scale=1.0)) == "x_scale"
  assert snapshot.equal(s, dataclasses.replace(s, info={})) == "info"


def test_snapshot_bad_files_are_refused(tmp_path):
  from gmr.data import snapshot
  with pytest.raises(snapshot.SnapshotError, match="does not exist"):
    snapshot.load(str(tmp_path / "missing.npz.xz"))
  bad = tmp_path / "bad.npz.xz"
  bad.write_bytes(b"not a snapshot")
  with pytest.raises(snapshot.SnapshotError, match="is not a gmr suite snapshot"):
    snapshot.load(str(bad))


def test_snapshot_run_equals_direct_run_and_refuses_other_options(dirs, tmp_path, monkeypatch):
  """A run reading the snapshot gives the numbers of a run reading the prepared data, records
  the file's sha256, and a config asking for other data options is refused before compute."""
  import json
  from gmr import data, experiment
  from gmr.data import snapshot
  from launch import snapshot as snap_cli
  c = _config(dirs, "clusters40", "smoke,offline")
  direct = experiment.run(c, str(tmp_path / "direct"), quiet=True)
  path = str(tmp_path / "s.npz.xz")
  suite = data.load_suite(c)
  sha = snapshot.save(suite, path, snap_cli.data_options(c), snap_cli.resized_sources(c, suite))
  for attr in ("load_suite", "check_data_available"):
    monkeypatch.setattr(data, attr, getattr(data, attr))
  monkeypatch.setattr(experiment, "run", experiment.run)
  snap_cli.use(path)
  c2 = _config(dirs, "clusters40", "smoke,offline")
  c2.data_dir, c2.tfds_dir = str(tmp_path / "no_raw"), str(tmp_path / "no_tfds")
  via = experiment.run(c2, str(tmp_path / "via"), quiet=True)
  assert via["final"] == direct["final"]
  rec = json.load(open(tmp_path / "via" / "data_snapshot.json"))
  assert rec["sha256"] == sha
  # a resume reads the file it trained on; another file is refused before anything is touched
  rec_path = tmp_path / "via" / "data_snapshot.json"
  log = (tmp_path / "via" / "metrics.jsonl").read_bytes()
  assert rec["content_sha256"] == snapshot.content_digest(path)
  for field in ("content_sha256", "sha256"):  # a record before content digests: the file's
    other = dict(rec, **{field: "0" * 64})
    if field == "sha256":
      del other["content_sha256"]
    rec_path.write_text(json.dumps(other))
    with pytest.raises(snapshot.SnapshotError,
                       match=rf"\({field} \w+\.\.\.\) is not the data this run trained on"):
      experiment.run(c2, str(tmp_path / "via"), quiet=True)
    assert (tmp_path / "via" / "metrics.jsonl").read_bytes() == log
    assert json.loads(rec_path.read_text()) == other
  rec_path.write_text(json.dumps(dict(rec, sha256="0" * 64)))  # other bytes, the same data
  assert experiment.run(c2, str(tmp_path / "via"), quiet=True)["final"] == direct["final"]
  rec_path.write_text("{")
  with pytest.raises(snapshot.SnapshotError, match="cannot be read"):
    experiment.run(c2, str(tmp_path / "via"), quiet=True)
  # --fresh starts again: the old record is no reason to refuse
  assert experiment.run(c2, str(tmp_path / "via"), quiet=True, fresh=True)["final"] == \
      direct["final"]
  assert json.loads(rec_path.read_text())["content_sha256"] == rec["content_sha256"]
  c2.data.validation_fraction = 0.3
  with pytest.raises(snapshot.SnapshotError, match="was built from"):
    experiment.run(c2, str(tmp_path / "other"), quiet=True)
  assert not os.path.exists(tmp_path / "other" / "metrics.jsonl")


def test_snapshot_bytes_depend_on_the_data_only(dirs, tmp_path, monkeypatch):
  """The same suite saved at different times gives the same file; other data, another file;
  the content digest (what a run checks on resume) is that of the arrays, whatever container
  numpy, zip and lzma wrote around them."""
  import time
  from gmr import data
  from gmr.data import snapshot
  from launch import snapshot as snap_cli
  c = _config(dirs, "clusters40", "smoke,offline")
  suite = data.load_suite(c)
  opts, found = snap_cli.data_options(c), snap_cli.resized_sources(c, suite)
  shas = []
  for i, now in enumerate((0.0, 1.0e9, 2.0e9)):
    monkeypatch.setattr(time, "time", lambda now=now: now)
    shas.append(snapshot.save(suite, str(tmp_path / f"s{i}.npz.xz"), opts, found))
  assert shas[0] == shas[1] == shas[2]
  assert (tmp_path / "s0.npz.xz").read_bytes() == (tmp_path / "s2.npz.xz").read_bytes()
  monkeypatch.undo()
  assert snapshot.equal(suite, snapshot.load(str(tmp_path / "s1.npz.xz"))) is None
  y = suite.test.y.copy()
  y[0] = (y[0] + 1) % 2
  import dataclasses
  other = dataclasses.replace(suite, test=dataclasses.replace(suite.test, y=y))
  assert snapshot.save(other, str(tmp_path / "o.npz.xz"), opts, found) != shas[0]
  # the content digest ignores the container: the same arrays zipped and compressed otherwise
  import io, lzma
  z = np.load(io.BytesIO(lzma.decompress((tmp_path / "s0.npz.xz").read_bytes())))
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: z[k] for k in reversed(z.files)})
  (tmp_path / "r.npz.xz").write_bytes(lzma.compress(buf.getvalue(), preset=1))
  assert snapshot.digest(str(tmp_path / "r.npz.xz")) != shas[0]
  assert snapshot.content_digest(str(tmp_path / "r.npz.xz")) == \
      snapshot.content_digest(str(tmp_path / "s0.npz.xz")) != \
      snapshot.content_digest(str(tmp_path / "o.npz.xz"))
  assert snapshot.equal(suite, snapshot.load(str(tmp_path / "r.npz.xz"))) is None


def test_snapshot_cli_runs_without_tensorflow_datasets(dirs, tmp_path):
  """``launch.snapshot save`` where the data is, ``run`` where TFDS cannot even be imported."""
  import subprocess
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, GMR_DATA_DIR=dirs[0], GMR_TFDS_DIR=dirs[1])
  cfg = ["--config=experiments/configs/four_mnists.py:smoke", "--config.data.max_examples=0"]
  # the fixtures' digests are not the published ones: accept them knowingly
  acc = ["--config.accept_noncanonical_data=true"]
  p = subprocess.run([sys.executable, "-m", "launch.snapshot", "save", *cfg, *acc,
                      f"--out={tmp_path / 's.npz.xz'}"], cwd=root, env=env, capture_output=True,
                     text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "four_mnists, 4 tasks" in p.stdout
  from gmr.data import snapshot
  d = subprocess.run([sys.executable, "-m", "launch.snapshot", "digest",
                      f"--snapshot={tmp_path / 's.npz.xz'}"], cwd=root, env=env,
                     capture_output=True, text=True, timeout=300)
  assert d.returncode == 0 and d.stdout.split() == [
      f"{tmp_path / 's.npz.xz'}:", "sha256", snapshot.digest(str(tmp_path / "s.npz.xz")),
      "content_sha256", snapshot.content_digest(str(tmp_path / "s.npz.xz"))]
  for bad in (["digest"], ["digest", "--snapshot="], ["digest", f"--snapshot={tmp_path}/none"],
              ["nope"]):
    d = subprocess.run([sys.executable, "-m", "launch.snapshot", *bad], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
    assert d.returncode == 2 and len(d.stderr.strip().splitlines()) == 1, d.stderr
    assert d.stderr.startswith("error: ") and "Traceback" not in d.stderr
  block = tmp_path / "block" / "tensorflow_datasets"
  block.mkdir(parents=True)
  (block / "__init__.py").write_text("raise ImportError('no TFDS on this machine')\n")
  env2 = dict(os.environ, PYTHONPATH=f"{tmp_path / 'block'}{os.pathsep}{root}",
              GMR_DATA_DIR=str(tmp_path / "none"))
  p = subprocess.run([sys.executable, "-m", "launch.snapshot", "run",
                      f"--snapshot={tmp_path / 's.npz.xz'}", "--", *cfg, *acc,
                      f"--workdir={tmp_path / 'w'}", "--quiet"], cwd=root, env=env2,
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert os.path.exists(tmp_path / "w" / "results.json")
  p = subprocess.run([sys.executable, "-m", "launch.snapshot", "run",
                      f"--snapshot={tmp_path / 's.npz.xz'}", "--", *cfg,
                      "--config.data.max_examples=7", f"--workdir={tmp_path / 'w2'}"], cwd=root,
                     env=env2, capture_output=True, text=True, timeout=300)
  assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: snapshot: ")
  assert "Traceback" not in p.stderr


def test_runs_side_by_side_prepare_a_dataset_once(dirs, tmp_path):
  """A sweep's runs start together on a fresh TFDS folder: each gets the data, none fails on
  the other's half-finished preparation (they take turns under a lock), and none rebuilds
  the other's finished data for want of its record."""
  import threading
  tfds_dir = str(tmp_path / "fresh_tfds")
  warnings, out, errors = [], [None] * 3, []
  gate = threading.Barrier(3)

  def run(i):
    try:
      gate.wait()
      out[i] = tfds_builders.load_arrays("gmr_mnist", "train", dirs[0], tfds_dir,
                                         warn=warnings.append)
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)

  threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert not errors, errors
  for o in out[1:]:
    np.testing.assert_array_equal(o["image"], out[0]["image"])
  assert not [w for w in warnings if "rebuilding" in w]
