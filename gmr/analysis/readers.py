"""How a method's finished runs are read, by the method's name: its task embeddings and its own
numbers in a table row. Read from ``results.json`` dicts alone (numpy), so the analysis never
builds a method or imports JAX.

A method whose tasks are embedded by their greedy allocation rows (every method but TAPS)
needs no reader of its own: :class:`Reader` is the default. A method registered outside gmr
that reads its runs otherwise registers one here::

  @readers.register("my_method")
  class MyReader(readers.Reader):
    @classmethod
    def task_embedding(cls, results): ...
"""

from __future__ import annotations

from typing import Dict, Sequence

import numpy as np

from gmr.analysis.stats import sample_std

READERS: Dict[str, type] = {}


def register(name: str):
  """Decorator: the :class:`Reader` subclass that reads the runs of method ``name``."""
  def deco(cls):
    READERS[name] = cls
    return cls
  return deco


class Reader:
  """The default: a run's task embeddings are its allocation rows; no numbers of its own."""

  @classmethod
  def task_embedding(cls, results: dict):
    """A finished run's task embeddings when they are not its allocation: ``(float32 [T, D],
    a name per column)``. The default, ``None``: the greedy allocation rows of
    ``results["allocations"]`` are the embeddings, and a run in progress is read from its
    allocation history; a reader that overrides it always has embeddings of its own."""
    del results
    return None

  @classmethod
  def summary_stats(cls, runs: Sequence[dict]) -> Dict:
    """This method's own numbers for a table row over the seeds ``runs`` (their
    ``results.json`` dicts); ``{}`` (the default): none."""
    del runs
    return {}


def of_results(results: dict) -> type:
  """The reader of the method a run's ``results.json`` dict (or ``config.json`` dict) names
  (``results["method"]``): registered here, or :class:`Reader` (also for a dict without
  ``method``)."""
  return READERS.get(results.get("method"), Reader)


def embeds_allocation(results: dict) -> bool:
  """A run whose task embeddings are its allocation rows: its method's reader does not
  override :meth:`Reader.task_embedding`."""
  return of_results(results).task_embedding.__func__ is Reader.task_embedding.__func__


@register("taps")
class TAPSReader(Reader):
  """TAPS (:class:`gmr.methods.TAPS`): every task uses every component, so its tasks are
  embedded by their task-specific layers."""

  @classmethod
  def task_embedding(cls, results: dict):
    """float32 ``[T, L]``, 1 where the task's layer is task-specific, columns = the TAPS
    layers (from ``results["taps"]["scores"]``): a TAPS task uses every component, so its
    allocation rows would make every task look the same. Raises ``KeyError`` without
    ``tasks`` or ``taps["scores"]`` / ``taps["task_specific_layers"]``."""
    taps, tasks = results["taps"], results["tasks"]
    layers = list(taps["scores"][tasks[0]])
    emb = np.array([[float(l in set(taps["task_specific_layers"][t])) for l in layers]
                    for t in tasks], np.float32).reshape(len(tasks), len(layers))
    return emb, layers

  @classmethod
  def summary_stats(cls, runs: Sequence[dict]) -> Dict:
    """``taps_specific_pct`` (mean over seeds of the % of task x layer pairs that are task
    specific) with ``taps_specific_pct_std``, and ``taps_added_params`` (mean over seeds and
    tasks of the parameters a task adds)."""
    fr = [100 * r["taps"]["task_specific_fraction"]["mean"] for r in runs]
    added = [np.mean(list(r["taps"]["added_params"].values())) for r in runs]
    return dict(taps_specific_pct=float(np.mean(fr)), taps_specific_pct_std=sample_std(fr),
                taps_added_params=float(np.mean(added)))

