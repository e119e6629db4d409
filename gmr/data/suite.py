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

  def image_rows(self, slots: np.ndarray) -> np.ndarray:
    """Rows of ``x`` for slot indices."""
    return slots if self.index is None else self.index[slots]

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
