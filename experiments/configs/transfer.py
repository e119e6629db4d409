"""Section II / Fig. 1: positive and negative transfer between two synthetic tasks.

The A2 network (4 parallel dense components, averaged, a linear head per task). ``rho`` is the
task relatedness (0 = unrelated, 1 = equal up to noise). The paper gives no optimizer
settings for this figure; we use those of its A3 synthetic experiment (batch 64, Adam lr 0.01,
clip 1.0, 3000 batches per task). 'no sharing' gives each task 2 of the 4 components (one of
each depth).

  python -m experiments.main --config=experiments/configs/transfer.py:shared_bottom,rho=0 --workdir=/tmp/t
"""

from experiments.configs import common

METHODS = ("shared_bottom", "no_sharing", "gumbel_matrix", "fixed", "taps")


def smoke(c):
  c.num_rounds = 60
  c.log_every = 20
  c.eval_every = 30
  c.synthetic.num_train = 512
  c.synthetic.num_test = 256


def get_config(variant: str = ""):
  c = common.base_config()
  c.suite = "transfer"
  c.arch = "transfer"
  c.synthetic = common.synthetic_fields()
  c.rho = 1.0
  c.method = "shared_bottom"
  c.no_sharing_components_per_task = 2
  c.batch_size = 64
  c.learning_rate = 0.01
  c.clip_norm = 1.0
  c.num_rounds = 3000
  c.eval_every = 500
  c.log_every = 100
  return common.apply_variant(c, variant, METHODS, smoke)
