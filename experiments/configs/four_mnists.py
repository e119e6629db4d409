"""Section V-A / Table I: the 4-MNISTs (MNIST, a copy, MNIST rotated 90 degrees, a rotated copy).

Appendix B network (3 routed conv layers of 4 components, 4 filters each), Adam lr 0.005 for
weights and logits, batch 16, 37,500 rounds (10 epochs per task), no L2, dropout 0.5,
p_init 0.5. Shared bottom sums its components' outputs, as the authors' code does
(``combine="auto"``). Variants: no_sharing, shared_bottom, gumbel_matrix, budget (Gumbel-Matrix
with budget 0.75, lambda 1), shared_bottom_mean (the control: shared bottom averaging its
components' outputs, Gumbel-Matrix's rule), fixed_from_gm (the control: the same seed's
Gumbel-Matrix allocation fixed, trained from scratch), smoke (a few seconds on 2,000 examples).

  python -m experiments.main --config=experiments/configs/four_mnists.py:gumbel_matrix \
      --config.data_dir=../shared/datasets --workdir=runs/four_mnists/gm/seed_0
"""

from experiments.configs import common
from gmr.config import suite_options

METHODS = ("gumbel_matrix", "no_sharing", "shared_bottom", "fixed", "taps")


def smoke(c):
  c.num_rounds = 40
  c.log_every = 20
  c.rounds_per_call = 20
  c.data.max_examples = 2000
  c.eval_batch_size = 500


def budget(c):
  c.method = "gumbel_matrix"
  c.budget = 0.75
  c.budget_lambda = 1.0


def shared_bottom_mean(c):
  """Table I's control: the shared bottom with Gumbel-Matrix's combination rule (the mean of
  the active components' outputs) instead of the authors' sum, so that a comparison with
  Gumbel-Matrix changes the allocation alone. (No sharing needs no such row: with one active
  component per layer the mean is the sum.)"""
  c.method = "shared_bottom"
  c.combine = "mean"


def fixed_from_gm(c):
  """Table I's control that separates the allocation from the gating: the seed's finished
  Gumbel-Matrix run's final allocation as a fixed matrix, trained from scratch with the same
  seed and the mean rule. Its workdir is found beside this run's in a sweep
  (``<root>/gumbel_matrix/seed_<s>``)."""
  c.method = "fixed"
  c.combine = "mean"
  c.fixed_allocation_from = "../../gumbel_matrix/seed_{seed}"


def get_config(variant: str = ""):
  c = common.base_config()
  c.suite = "four_mnists"
  c.arch = "four_mnists"
  c.data = suite_options("four_mnists")  # rotate_k -1: clockwise, the paper's rotation
  c.method = "gumbel_matrix"
  c.combine = "auto"
  c.batch_size = 16
  c.learning_rate = 0.005
  c.alloc_learning_rate = 0.005
  c.dropout = 0.5
  c.p_init = 0.5
  c.num_rounds = 37500
  c.log_every = 500
  c.rounds_per_call = 500
  c.eval_batch_size = 1000
  c.no_sharing_components_per_task = 1
  return common.apply_variant(c, variant, METHODS, smoke, named={
      "budget": budget, "shared_bottom_mean": shared_bottom_mean, "fixed_from_gm": fixed_from_gm})
