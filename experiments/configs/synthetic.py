"""Appendix A3 / Fig. 7: two pairs of synthetic tasks, Gumbel-Matrix vs. no sharing.

One layer of 4 components (each an MLP 128 -> 16 -> 16 -> 1), no heads, batch 64, Adam
lr 0.01, gradient clipping 1.0, 3000 batches per task.

  python -m experiments.main --config=experiments/configs/synthetic.py:gumbel_matrix --workdir=/tmp/s
  python -m experiments.main --config=experiments/configs/synthetic.py:no_sharing --workdir=/tmp/n
"""

from experiments.configs import common

METHODS = ("gumbel_matrix", "no_sharing", "shared_bottom", "fixed", "taps")


def smoke(c):
  c.num_rounds = 60
  c.log_every = 20
  c.eval_every = 30
  c.synthetic.num_train = 512
  c.synthetic.num_test = 256


def get_config(variant: str = ""):
  c = common.base_config()
  c.suite = "synthetic_pairs"
  c.arch = "synthetic"
  c.synthetic = common.synthetic_fields()
  c.method = "gumbel_matrix"
  c.batch_size = 64
  c.learning_rate = 0.01
  c.clip_norm = 1.0
  c.num_rounds = 3000
  c.eval_every = 500
  c.log_every = 100
  c.rounds_per_call = 100
  return common.apply_variant(c, variant, METHODS, smoke)
