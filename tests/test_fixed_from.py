"""Method ``fixed`` with another run's final allocation (``fixed_allocation_from``): Table I's
control that separates the learned allocation from the stochastic gating."""

import json
import os

import pytest

from experiments.configs import four_mnists
from gmr import experiment, validate
from gmr.config import ConfigError
from tests.test_runs import small


def test_a_fixed_run_takes_the_allocation_of_the_run_it_names(tmp_path):
  root = tmp_path / "runs"
  gm = experiment.run(small(seed=3), str(root / "gumbel_matrix" / "seed_3"), quiet=True)
  c = small(method="fixed", seed=3, fixed_allocation_from="../../gumbel_matrix/seed_{seed}")
  wd = str(root / "fixed_from_gm" / "seed_3")
  res = experiment.run(c, wd, quiet=True)
  assert res["allocations"] == gm["allocations"]
  assert res["fixed_allocation_from"] == str(root / "gumbel_matrix" / "seed_3")
  stored = json.load(open(os.path.join(wd, "config.json")))
  assert stored["fixed_allocation_from"] == "../../gumbel_matrix/seed_{seed}"
  assert stored["fixed_allocation"] is None  # the path is the config, not the matrices
  assert experiment.run(c, wd, quiet=True) == res  # the same run: finished


def test_a_source_that_is_not_a_finished_run_of_this_network_is_refused(tmp_path):
  c = small(method="fixed", fixed_allocation_from="../nowhere")
  with pytest.raises(ConfigError, match=r"^fixed_allocation_from: .*nowhere is not a finished "
                     r"run"):
    experiment.run(c, str(tmp_path / "w"), quiet=True)
  assert not os.path.exists(tmp_path / "w")
  experiment.run(small(), str(tmp_path / "gm"), quiet=True)
  c = small(method="fixed", fixed_allocation_from=str(tmp_path / "gm"))
  c.arch_kwargs = {"hidden": 8}
  with pytest.raises(ConfigError, match="was trained with arch_kwargs"):
    experiment.run(c, str(tmp_path / "w"), quiet=True)


def test_fixed_needs_exactly_one_source():
  with pytest.raises(ConfigError, match="^fixed_allocation: is required"):
    validate.validate(small(method="fixed"))
  with pytest.raises(ConfigError, match="^fixed_allocation_from: is set together"):
    validate.validate(small(method="fixed", fixed_allocation=[[1, 0, 0, 0]] * 4,
                            fixed_allocation_from="x"))


def test_the_table_i_variant_names_the_same_seeds_gumbel_matrix_run():
  c = four_mnists.get_config("fixed_from_gm")
  assert (c.method, c.combine, c.fixed_allocation_from) == (
      "fixed", "mean", "../../gumbel_matrix/seed_{seed}")
