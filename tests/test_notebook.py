"""The tour notebook runs top to bottom (and is committed without outputs)."""

import os

import nbformat
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOUR = os.path.join(ROOT, "experiments", "notebooks", "tour.ipynb")


def test_the_tour_is_committed_without_outputs():
  nb = nbformat.read(TOUR, as_version=4)
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code and all(not c.outputs and c.execution_count is None for c in code)


def test_the_tour_runs_top_to_bottom():
  from nbclient import NotebookClient
  nb = nbformat.read(TOUR, as_version=4)
  env_before = os.environ.get("MPLBACKEND")
  os.environ["MPLBACKEND"] = "Agg"  # figures are made, not shown
  try:
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": ROOT}}).execute()
  finally:
    if env_before is None:
      os.environ.pop("MPLBACKEND", None)
    else:
      os.environ["MPLBACKEND"] = env_before
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "error"]
  assert not errors
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  assert "equal: True" in text and "test loss per task" in text
