"""Section V-B / Table II: 20 Omniglot alphabets, one task per alphabet (appendix C1).

Network of ref. [13] (stem conv1x1 + 8 routed layers of 7 components), Adam lr 1e-4, logits
lr 2e-3, batch 16, 8,000 rounds, L2 3e-4 on every weight except biases and logits (GroupNorm
scale/offset included), dropout 0.5, p_init 0.97. Validation every 250 rounds; the reported
test numbers are those of the evaluation with the best validation accuracy.
Variants: shared_bottom, gumbel_matrix, smoke.

  python -m experiments.main --config=experiments/configs/omniglot.py:gumbel_matrix \
      --config.data_dir=../shared/datasets --workdir=runs/omniglot/gm/seed_0
"""

from experiments.configs import common
from gmr.config import suite_options
from ml_collections import config_dict

METHODS = ("gumbel_matrix", "shared_bottom", "fixed", "taps")


def smoke(c):
  c.num_rounds = 4
  c.eval_every = 2
  c.log_every = 2
  c.rounds_per_call = 2
  c.batch_size = 4
  c.eval_batch_size = 64
  c.arch_kwargs.filters = 8
  c.arch_kwargs.strides = (2, 2)  # 2 routed layers instead of 8: compiles in seconds
  c.data.alphabets = ["Gujarati", "Sylheti", "Arcadian"]


def get_config(variant: str = ""):
  c = common.base_config()
  c.suite = "omniglot20"
  c.arch = "omniglot"
  c.arch_kwargs = config_dict.ConfigDict({"filters": 48})
  c.data = suite_options("omniglot20")  # alphabets None: the 20 of the paper
  c.method = "gumbel_matrix"
  c.batch_size = 16
  c.learning_rate = 1e-4
  c.alloc_learning_rate = 2e-3
  c.l2 = 3e-4
  c.dropout = 0.5
  c.p_init = 0.97
  c.num_rounds = 8000
  c.eval_every = 250
  c.log_every = 250
  c.rounds_per_call = 250
  c.eval_batch_size = 200
  c.select_by = "validation.accuracy.mean"
  return common.apply_variant(c, variant, METHODS, smoke)
