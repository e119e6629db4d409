"""Task suites: every task's examples as in-memory arrays, ready for the jitted step.

Each split stores one *pool* of examples ``x: [M, ...]``, ``y: [M]`` and, per task, an offset
and size into it, so tasks that read the same images (the MNIST copies) need not store them
twice and tasks of different sizes need no padding. ``x`` may be uint8; the step multiplies
by ``x_scale`` after casting to float32.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import numpy as np


@dataclasses.dataclass
class Split:
  """Examples of every task. ``y`` has one entry per (task, example) slot; task ``t`` owns
  slots ``offsets[t] : offsets[t] + sizes[t]``. Without ``index`` the slots are also rows of
  ``x``; with ``index`` slot ``i`` reads image ``x[index[i]]`` (tasks sharing images)."""
  x: np.ndarray
  y: np.ndarray
  offsets: Tuple[int, ...]
  sizes: Tuple[int, ...]
  index: Optional[np.ndarray] = None

  def task(self, t: int):
    o, n = self.offsets[t], self.sizes[t]
    if self.index is not None:
      return self.x[self.index[o:o + n]], self.y[o:o + n]
    return self.x[o:o + n], self.y[o:o + n]

  @staticmethod
  def from_tasks(xs: Sequence[np.ndarray], ys: Sequence[np.ndarray]) -> "Split":
    sizes = tuple(int(len(x)) for x in xs)
    offsets = tuple(int(o) for o in np.cumsum((0,) + sizes[:-1]))
    return Split(np.concatenate(xs), np.concatenate(ys), offsets, sizes)


@dataclasses.dataclass
class TaskSuite:
  """Tasks of one benchmark.

  Attributes:
    name: suite name.
    task_names: one name per task.
    loss: "mse" (regression, ``y`` float) or "xent" (classification, ``y`` int).
    head_dims: classes (or outputs) per task.
    train, test: splits; ``validation`` optional.
    x_scale: multiply ``x`` by this after casting to float32.
  """
  name: str
  task_names: Tuple[str, ...]
  loss: str
  head_dims: Tuple[int, ...]
  train: Split
  test: Split
  validation: Optional[Split] = None
  x_scale: float = 1.0
  info: Dict = dataclasses.field(default_factory=dict)

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  def __post_init__(self):
    check_suite(self)


class SuiteError(ValueError):
  """A task suite whose arrays do not fit together: ``<where>: <what>; <fix>``."""


def check_suite(s: "TaskSuite") -> None:
  """Refuse a suite whose parts disagree (cheap: shapes, dtypes and label ranges only).

  Raises :class:`SuiteError` naming the suite, split and field: task names vs head sizes,
  the loss, ``y`` not one target per slot (``[N]``; a regression ``[N, 1]`` would broadcast
  silently against ``[N]`` predictions), offsets / sizes / index out of the pools, example
  shapes that differ across splits, labels outside ``0 .. head_dims[t] - 1`` or non-integer
  labels for classification, and a non-positive ``x_scale``."""
  where = f"suite {s.name}"
  if len(s.head_dims) != len(s.task_names):
    raise SuiteError(f"{where}: {len(s.task_names)} task names but {len(s.head_dims)} head "
                     "sizes; give one head size per task")
  if s.loss not in ("mse", "xent"):
    raise SuiteError(f"{where}: loss {s.loss!r}; use 'mse' (regression) or 'xent' "
                     "(classification)")
  if not (np.isfinite(s.x_scale) and s.x_scale > 0):
    raise SuiteError(f"{where}: x_scale {s.x_scale!r}; give a finite number > 0")
  shape = None
  for name in ("train", "validation", "test"):
    sp = getattr(s, name)
    if sp is None:
      continue
    at = f"{where}, split {name}"
    t = len(s.task_names)
    if len(sp.offsets) != t or len(sp.sizes) != t:
      raise SuiteError(f"{at}: {len(sp.offsets)} offsets / {len(sp.sizes)} sizes for {t} "
                       "tasks; give one per task")
    y = np.asarray(sp.y)
    if y.ndim != 1:
      raise SuiteError(f"{at}: y has shape {y.shape}, one target per example is [N]; "
                       "flatten it (e.g. y[:, 0] for one regression output)")
    ends = [o + n for o, n in zip(sp.offsets, sp.sizes)]
    if min(sp.offsets, default=0) < 0 or max(ends, default=0) > len(y):
      raise SuiteError(f"{at}: task slots reach {max(ends)} but y holds {len(y)}; "
                       "offsets + sizes must lie within y")
    if sp.index is None:
      if len(sp.x) != len(y):
        raise SuiteError(f"{at}: x holds {len(sp.x)} examples and y {len(y)}; give one "
                         "target per example (or an index into x)")
    elif len(sp.index) != len(y) or (len(sp.index) and (sp.index.min() < 0 or
                                                         sp.index.max() >= len(sp.x))):
      raise SuiteError(f"{at}: index must give one row of x (0..{len(sp.x) - 1}) per slot "
                       f"of y ({len(y)}); fix the index array")
    if shape is not None and tuple(sp.x.shape[1:]) != shape:
      raise SuiteError(f"{at}: examples of shape {tuple(sp.x.shape[1:])}, other splits "
                       f"{shape}; every split's examples need one shape")
    shape = tuple(sp.x.shape[1:])
    if s.loss == "xent":
      if not np.issubdtype(y.dtype, np.integer):
        raise SuiteError(f"{at}: classification labels of dtype {y.dtype}; give integer "
                         "labels")
      for i, (o, n) in enumerate(zip(sp.offsets, sp.sizes)):
        yt = y[o:o + n]
        if n and (yt.min() < 0 or yt.max() >= s.head_dims[i]):
          raise SuiteError(f"{at}: task {s.task_names[i]} has labels {int(yt.min())}.."
                           f"{int(yt.max())} for a head of {s.head_dims[i]} classes; labels "
                           f"must lie in 0..{s.head_dims[i] - 1}")
