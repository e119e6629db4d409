"""The papers' real-data task suites, built from the TFDS datasets of :mod:`gmr.data.tfds_builders`.

Recipes (as in the authors' code):

- ``four_mnists``: MNIST, a copy, MNIST rotated by 90 degrees, a rotated copy. Copies share
  their images (the pool stores each image once); they differ only in example order, which
  the batch sampler draws per task.
- ``omniglot20``: the 20 listed alphabets, one task per alphabet (label = character); per
  character its 20 drawings are shuffled with a seed equal to the alphabet's id (its position
  in the list) and split 10 / 4 / 6 into train / validation / test; 105 x 105, strokes = 1.
- ``clusters40``: 20 CIFAR-100 coarse-label tasks (5-way, fine labels remapped 0-4) + 10 MNIST
  and 10 Fashion-MNIST leave-one-out tasks (9-way) at 32 x 32 x 3; ``clusters40_offline``
  replaces the CIFAR cluster with the 20 Omniglot alphabets at 32 x 32 x 3.

Each recipe reads ``cfg``: the suite's options completed by their defaults
(:func:`gmr.data.options`: ``data_dir``, ``tfds_dir``, ``download``,
``accept_noncanonical_data`` and ``config.data.*``).

Everything ends as in-memory uint8 arrays (``x_scale = 1/255``) with per-task index arrays
into one image pool, so the jitted step gathers its batches on device.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from gmr.data.suite import Split, TaskSuite

OMNIGLOT20 = (
    "Gujarati", "Sylheti", "Arcadian", "Tibetan", "Old_Church_Slavonic_(Cyrillic)", "Angelic",
    "Malay_(Jawi_-_Arabic)", "Sanskrit", "Cyrillic", "Anglo-Saxon_Futhorc", "Syriac_(Estrangelo)",
    "Ge_ez", "Japanese_(katakana)", "Keble", "Manipuri", "Alphabet_of_the_Magi", "Gurmukhi",
    "Korean", "Early_Aramaic", "Atemayar_Qelisayer")
OMNIGLOT_SPLIT = (10, 4, 6)  # drawings per character: train / validation / test (50/20/30)


def _load(name, split, cfg):
  # imported here: gmr (and a suite loaded from a snapshot) works without TFDS installed
  from gmr.data import tfds_builders  # pylint: disable=g-import-not-at-top
  return tfds_builders.load_arrays(name, split, data_dir=cfg["data_dir"],
                                   tfds_dir=cfg["tfds_dir"], download=bool(cfg["download"]),
                                   accept_noncanonical=bool(cfg["accept_noncanonical_data"]))


def _indexed_split(pool: np.ndarray, members: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray]) -> Split:
  sizes = tuple(int(len(m)) for m in members)
  offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
  return Split(pool, np.concatenate(labels).astype(np.int32), offsets, sizes,
               index=np.concatenate(members).astype(np.int32))


# ----------------------------------------------------------------------------- MNIST family
FAMILY = {"mnist": ("gmr_mnist", False), "mnist_rot": ("gmr_mnist", True),
          "fashion": ("gmr_fashion_mnist", False)}


def family_tasks(cfg) -> Tuple[str, ...]:
  """The task names of ``mnist_family`` (``cfg.tasks``, comma-separated); ``ValueError`` for
  an unknown or empty list."""
  names = tuple(t.strip() for t in str(cfg["tasks"]).split(",") if t.strip())
  bad = [t for t in names if t not in FAMILY]
  if bad or not names:
    raise ValueError(f"data.tasks: unknown task(s) {bad or names!r}; choose from {sorted(FAMILY)}")
  return names


def mnist_family(cfg) -> TaskSuite:
  """Any of MNIST, MNIST rotated (``rotate_k``, clockwise by default) and Fashion-MNIST as
  10-way tasks at 28 x 28 x 1: ``cfg.tasks`` is a comma-separated list (the fine-tuning
  experiments: a source on ``mnist``, targets ``mnist_rot`` and ``fashion``)."""
  names = family_tasks(cfg)
  k = int(cfg["rotate_k"])
  splits = {}
  for split in ("train", "test"):
    xs, ys = [], []
    for t in names:
      ds, rot = FAMILY[t]
      a = _load(ds, split, cfg)
      img, lab = a["image"], a["label"].astype(np.int32)
      if cfg["max_examples"]:
        img, lab = img[:cfg["max_examples"]], lab[:cfg["max_examples"]]
      xs.append(np.rot90(img, k=k, axes=(1, 2)) if rot else img)
      ys.append(lab)
    splits[split] = Split.from_tasks(xs, ys)
  return TaskSuite("mnist_family", names, "xent", (10,) * len(names), splits["train"],
                   splits["test"], x_scale=1 / 255)


# ----------------------------------------------------------------------------- 4-MNISTs
FOUR_MNISTS_TASKS = ("mnist", "mnist_copy", "mnist_rot", "mnist_rot_copy")


def four_mnists(cfg) -> TaskSuite:
  """``cfg.rotate_k``: ``np.rot90`` k of the rotated tasks (-1 = 90 degrees clockwise,
  the benchmark's definition; the authors' ``tf.image.rot90(k=1)`` is counter-clockwise)."""
  k = int(cfg["rotate_k"])
  splits = {}
  for split in ("train", "test"):
    a = _load("gmr_mnist", split, cfg)
    img, lab = a["image"], a["label"].astype(np.int32)
    if cfg["max_examples"]:
      img, lab = img[:cfg["max_examples"]], lab[:cfg["max_examples"]]
    rot = np.rot90(img, k=k, axes=(1, 2))
    pool = np.concatenate([img, rot])
    n = len(img)
    plain, rotated = np.arange(n), n + np.arange(n)
    splits[split] = _indexed_split(pool, [plain, plain, rotated, rotated], [lab] * 4)
  return TaskSuite("four_mnists", FOUR_MNISTS_TASKS, "xent", (10,) * 4, splits["train"], splits["test"],
                   x_scale=1 / 255, info={"groups": [[0, 1], [2, 3]]})


# ----------------------------------------------------------------------------- Omniglot
def omniglot_splits(alphabet: np.ndarray, character: np.ndarray, drawing: np.ndarray,
                    alphabets: Sequence[str] = OMNIGLOT20,
                    counts: Tuple[int, int, int] = OMNIGLOT_SPLIT):
  """Per alphabet: ``(train, validation, test)`` example indices and the number of characters.

  Per character, its drawings (in ``drawing`` order) are permuted with
  ``np.random.RandomState(alphabet_id)`` (one stream per alphabet, characters in order) and
  cut ``counts``; a character with fewer drawings than ``sum(counts)`` is an error.
  """
  out = []
  for aid, name in enumerate(alphabets):
    sel = np.flatnonzero(alphabet == name)
    if not len(sel):
      raise ValueError(f"alphabet {name!r} not in the Omniglot data")
    rng = np.random.RandomState(aid)
    parts: List[List[int]] = [[], [], []]
    chars = np.unique(character[sel])
    for c in chars:
      ex = sel[character[sel] == c]
      ex = ex[np.argsort(drawing[ex], kind="stable")]
      if len(ex) < sum(counts):
        raise ValueError(f"{name} character {c} has {len(ex)} drawings, need {sum(counts)}")
      ex = ex[rng.permutation(len(ex))]
      parts[0] += list(ex[:counts[0]])
      parts[1] += list(ex[counts[0]:counts[0] + counts[1]])
      parts[2] += list(ex[counts[0] + counts[1]:sum(counts)])
    out.append(([np.asarray(p, np.int64) for p in parts], len(chars)))
  return out


def _omniglot_tasks(cfg, resize_to=None):
  a = _load("gmr_omniglot", "train", cfg)
  alphabets = omniglot_alphabets(cfg)
  per = omniglot_splits(a["alphabet"], a["character"], a["drawing"], alphabets)
  img = a["image"] * np.uint8(255)  # strokes = 1 -> 255; x_scale 1/255 restores 1
  used = np.unique(np.concatenate([np.concatenate(p) for p, _ in per]))
  remap = np.full(len(img), -1, np.int64)
  remap[used] = np.arange(len(used))
  pool = img[used]
  if resize_to is not None:
    pool = resize_images(pool, resize_to, channels=3, antialias=True)
  splits = []
  for s in range(3):
    members = [remap[p[s]] for p, _ in per]
    labels = [a["character"][p[s]] for p, _ in per]
    splits.append((members, labels))
  return pool, splits, [n for _, n in per], alphabets


def omniglot_alphabets(cfg) -> Tuple[str, ...]:
  """The alphabets (one task each) of the Omniglot suites: ``cfg.alphabets`` or the 20."""
  return tuple(cfg["alphabets"] or OMNIGLOT20)


def omniglot20(cfg) -> TaskSuite:
  pool, splits, heads, names = _omniglot_tasks(cfg)
  tr, va, te = (_indexed_split(pool, m, l) for m, l in splits)
  return TaskSuite("omniglot20", tuple(names), "xent", tuple(heads), tr, te, validation=va,
                   x_scale=1 / 255)


# ----------------------------------------------------------------------------- 40 tasks
def _bilinear_taps(n_in: int, n_out: int, antialias: bool) -> Tuple[np.ndarray, np.ndarray]:
  """The input pixels and float64 weights of each output pixel of a bilinear (triangle kernel)
  resize of one axis from ``n_in`` to ``n_out`` pixels: ``(index [n_out, T] int64, weight
  [n_out, T] float64)``, taps in increasing input index, unused taps at index 0 with weight 0.
  The weights are those of ``jax.image.scale_and_translate`` (translation 0; with
  ``antialias`` a downsampling kernel widened by ``n_in / n_out``; normalised to sum 1; zero
  where the sample falls outside the input), computed in float64 with every sum in a fixed
  order."""
  inv = n_in / n_out
  kernel_scale = max(inv, 1.0) if antialias else 1.0
  f = (np.arange(n_out, dtype=np.float64) + 0.5) * inv - 0.5  # sample centre in input pixels
  w = np.maximum(0.0, 1.0 - np.abs(f[None, :] - np.arange(n_in, dtype=np.float64)[:, None])
                 / kernel_scale)  # [n_in, n_out]
  total = np.zeros(n_out)
  for j in range(n_in):  # a fixed order (no pairwise or vectorised reduction)
    total = total + w[j]
  w = np.where(np.abs(total) > 1000.0 * float(np.finfo(np.float32).eps),
               w / np.where(total != 0, total, 1.0), 0.0)
  w = np.where((f >= -0.5) & (f <= n_in - 0.5), w, 0.0)
  taps = max(int(np.count_nonzero(w[:, o])) for o in range(n_out)) if n_out else 0
  index = np.zeros((n_out, max(taps, 1)), np.int64)
  weight = np.zeros((n_out, max(taps, 1)), np.float64)
  for o in range(n_out):
    nz = np.flatnonzero(w[:, o])
    index[o, :len(nz)], weight[o, :len(nz)] = nz, w[nz, o]
  return index, weight


def _resize_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
  """``sum_t weight[o, t] * x[..., index[o, t], ...]`` along ``axis``, the taps added one at a
  time in order (float64 multiplies and adds, each correctly rounded: no FMA, no BLAS)."""
  x = np.moveaxis(x, axis, -1)
  acc = np.zeros(x.shape[:-1] + (index.shape[0],), np.float64)
  for t in range(index.shape[1]):
    acc = acc + x[..., index[:, t]] * weight[:, t]
  return np.moveaxis(acc, -1, axis)


def resize_images(images: np.ndarray, size: int, channels: int = 3, antialias: bool = False,
                  chunk: int = 2048) -> np.ndarray:
  """Bilinear resize of uint8 ``[N, H, W, C]`` images (``C`` 1 or ``channels``) to uint8
  ``[N, size, size, channels]`` (one-channel images are repeated to ``channels``).

  The resize of ``jax.image.resize(..., "bilinear", antialias=antialias)`` (the same weights;
  with ``antialias`` the kernel of a downsampling is widened to low-pass filter), computed in
  float64 numpy, height then width, with the taps added one at a time in input order, then
  ``np.rint`` (half to even) and clipped to 0..255. Every operation is a correctly rounded
  elementwise float64 one (no reduction, BLAS or FMA), so the result is the same bits on
  every machine: the data of a suite must not depend on where it was built. (XLA's float32
  version differs with the CPU's instruction set: a 105 -> 32 antialiased resize changed
  pixels under ``--xla_cpu_max_isa=SSE4_2``.) Each pixel is the exact rational result rounded
  half to even, except where that result is within ~1e-12 of a half (exact ties included)
  and the weights are not binary fractions: there float64 may round to the other neighbour,
  the same way on every machine. Where the weights are binary fractions, as in the 28 -> 32
  resize of MNIST (sixteenths), every step is exact and the result equals
  ``jax.image.resize``'s bit for bit.

  Raises ``ValueError`` for images that are not ``[N, H, W, C]`` with ``H, W >= 1`` and ``C``
  1 or ``channels``, or for ``size < 1``.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1] < 1 or images.shape[2] < 1:
    raise ValueError(f"resize_images takes [N, H, W, C] images with H, W >= 1, got shape "
                     f"{images.shape}")
  n, h, w, c = images.shape
  if c not in (1, channels):
    raise ValueError(f"resize_images: images have {c} channels; give 1 or channels={channels}")
  if int(size) < 1:
    raise ValueError(f"resize_images: size={size}; give a size >= 1")
  rows, cols = _bilinear_taps(h, size, antialias), _bilinear_taps(w, size, antialias)
  out = np.zeros((n, size, size, c), np.uint8)
  for s in range(0, n, chunk):
    x = images[s:s + chunk].astype(np.float64)
    x = _resize_axis(_resize_axis(x, 1, *rows), 2, *cols)
    out[s:s + chunk] = np.clip(np.rint(x), 0, 255).astype(np.uint8)
  if c != channels:
    out = np.repeat(out, channels, axis=-1)
  return out


def _per_class_holdout(labels: np.ndarray, frac: float, seed: int):
  """Split indices per class into (kept, held out) with ``frac`` held out."""
  rng = np.random.RandomState(seed)
  keep, held = [], []
  for c in np.unique(labels):
    ex = np.flatnonzero(labels == c)
    ex = ex[rng.permutation(len(ex))]
    n = int(round(frac * len(ex)))
    held.append(ex[:n])
    keep.append(ex[n:])
  return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _leave_one_out(name, cfg, base: int, frac: float):
  """10 nine-way tasks of ``name`` (MNIST or Fashion): images, and per split per task
  (members, labels). ``base`` offsets the members into the common pool."""
  tr, te = _load(name, "train", cfg), _load(name, "test", cfg)
  if cfg["max_examples"]:
    tr = {k: v[:cfg["max_examples"]] for k, v in tr.items()}
    te = {k: v[:cfg["max_examples"]] for k, v in te.items()}
  keep, held = _per_class_holdout(tr["label"], frac, cfg["split_seed"])
  images = np.concatenate([tr["image"], te["image"]])
  test_idx = len(tr["image"]) + np.arange(len(te["image"]))
  labels = np.concatenate([tr["label"], te["label"]]).astype(np.int64)
  out = {"train": ([], []), "validation": ([], []), "test": ([], [])}
  for k in range(10):
    for split, idx in (("train", keep), ("validation", held), ("test", test_idx)):
      sel = idx[labels[idx] != k]
      y = labels[sel]
      out[split][0].append(base + sel)
      out[split][1].append(np.where(y > k, y - 1, y))
  return resize_images(images, 32, 3), out


def _cifar_coarse(cfg, base: int, frac: float):
  tr, te = _load("gmr_cifar100", "train", cfg), _load("gmr_cifar100", "test", cfg)
  images = np.concatenate([tr["image"], te["image"]])
  fine = np.concatenate([tr["label"], te["label"]]).astype(np.int64)
  coarse = np.concatenate([tr["coarse_label"], te["coarse_label"]]).astype(np.int64)
  n_tr = len(tr["image"])
  keep, held = _per_class_holdout(fine[:n_tr], frac, cfg["split_seed"])
  test_idx = n_tr + np.arange(len(te["image"]))
  out = {"train": ([], []), "validation": ([], []), "test": ([], [])}
  for c in range(20):
    fines = np.unique(fine[coarse == c])
    lut = {f: i for i, f in enumerate(fines)}
    for split, idx in (("train", keep), ("validation", held), ("test", test_idx)):
      sel = idx[coarse[idx] == c]
      out[split][0].append(base + sel)
      out[split][1].append(np.array([lut[f] for f in fine[sel]], np.int64))
  return images, out


_LEAVE_ONE_OUT = (("gmr_mnist", "mnist"), ("gmr_fashion_mnist", "fashion"))


def clusters40_tasks(cfg, offline: bool = False) -> Tuple[str, ...]:
  """The task names of :func:`clusters40` in its order, from the config alone."""
  first = ([f"omniglot/{a}" for a in omniglot_alphabets(cfg)] if offline else
           [f"cifar100/coarse_{c}" for c in range(20)])
  return tuple(first + [f"{short}/without_{k}" for _, short in _LEAVE_ONE_OUT
                        for k in range(10)])


def clusters_by_source(task_names) -> Dict[str, List[int]]:
  """Section V-C's true task clusters: ``{dataset: [task indices]}``, the tasks grouped by the
  dataset their name starts with (``"mnist/without_3"`` -> ``"mnist"``), in task order."""
  out: Dict[str, List[int]] = {}
  for i, name in enumerate(task_names):
    out.setdefault(name.split("/", 1)[0], []).append(i)
  return out


def clusters40(cfg, offline: bool = False) -> TaskSuite:
  """``cfg.validation_fraction`` (0.2) of each class of the train splits is held out for
  validation (the CIFAR recipe, applied to MNIST and Fashion too so every task has one)."""
  frac = float(cfg["validation_fraction"])
  pools, parts, heads = [], [], []
  base = 0
  if offline:
    pool, splits, nchars, _ = _omniglot_tasks(cfg, resize_to=32)
    pools.append(pool)
    parts.append({s: splits[i] for i, s in enumerate(("train", "validation", "test"))})
    heads += list(nchars)
  else:
    images, out = _cifar_coarse(cfg, base, frac)
    pools.append(images)
    parts.append(out)
    heads += [5] * 20
  base = sum(len(p) for p in pools)
  for name, _ in _LEAVE_ONE_OUT:
    images, out = _leave_one_out(name, cfg, base, frac)
    pools.append(images)
    parts.append(out)
    heads += [9] * 10
    base += len(images)
  pool = np.concatenate(pools)
  splits = {}
  for s in ("train", "validation", "test"):
    members = [m for p in parts for m in p[s][0]]
    labels = [l for p in parts for l in p[s][1]]
    splits[s] = _indexed_split(pool, members, labels)
  names = clusters40_tasks(cfg, offline)
  return TaskSuite("clusters40_offline" if offline else "clusters40", names, "xent",
                   tuple(heads), splits["train"], splits["test"], validation=splits["validation"],
                   x_scale=1 / 255, info={"clusters": clusters_by_source(names)})
