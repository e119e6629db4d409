"""Fine-tuning from a gmr checkpoint (TAPS's setting): a shared-bottom network trained on MNIST,
then adapted to a new task (MNIST rotated 90 degrees clockwise, or Fashion-MNIST).

The network is the 4-MNISTs one (appendix B: 3 routed conv layers of 4 components x 4
filters; shared bottom = 3 conv layers of 16 filters, outputs summed), Adam lr 0.005,
batch 16, dropout 0.5; the source trains 10 epochs (37,500 steps), each fine-tuning run
5 epochs (18,750 steps).

Variants (combine with commas):
  source        shared bottom on MNIST alone (the checkpoint the others start from)
  taps          TAPS: backbone frozen, per-layer deltas and scores learned (+ the new head)
  full          full fine-tuning: every weight learns (shared_bottom from init_from)
  head          head-only fine-tuning: backbone frozen, only the new head learns
  fashion       target Fashion-MNIST instead of MNIST-rot
  only_layer_<i>  TAPS with only conv layer i adaptable (i = 0, 1, 2) and lambda 0: what one
                task-specific layer (1 of 3) can reach at best
  smoke         a few seconds on 2,000 examples

  python -m experiments.main --config=experiments/configs/finetune.py:source \\
      --config.data_dir=../shared/datasets --workdir=runs/finetune/source/seed_0
  python -m experiments.main --config=experiments/configs/finetune.py:taps \\
      --config.data_dir=../shared/datasets --config.init_from=runs/finetune/source/seed_0 \\
      --workdir=runs/finetune/taps/seed_0
"""

from experiments.configs import common
from gmr.config import suite_options
from experiments.configs.four_mnists import smoke  # the same network and data sizes

METHODS = ("shared_bottom", "taps")


def source(c):
  c.method = "shared_bottom"
  c.data.tasks = "mnist"
  c.init_from = ""
  c.freeze_backbone = False
  c.num_rounds = 37500


def taps(c):
  c.method = "taps"
  c.freeze_backbone = True


def full(c):
  c.method = "shared_bottom"
  c.freeze_backbone = False


def head(c):
  c.method = "shared_bottom"
  c.freeze_backbone = True


def fashion(c):
  c.data.tasks = "fashion"


def only_layer(i):
  def apply(c):
    c.method = "taps"
    c.freeze_backbone = True
    c.taps_layers = [f"layer_{i}/*"]
    c.taps_lambda = 0.0
  return apply


def get_config(variant: str = ""):
  c = common.base_config()
  c.suite = "mnist_family"
  c.arch = "four_mnists"
  c.data = suite_options("mnist_family")
  c.data.tasks = "mnist_rot"  # the target task(s): mnist | mnist_rot | fashion, comma-separated
  c.method = "taps"
  c.freeze_backbone = True
  c.init_from = "runs/finetune/source/seed_0"
  c.combine = "auto"  # sum, as the shared-bottom source
  c.batch_size = 16
  c.learning_rate = 0.005
  c.dropout = 0.5
  c.num_rounds = 18750
  c.log_every = 750
  c.rounds_per_call = 750
  c.eval_batch_size = 1000
  c.alloc_history_every = 0
  # TAPS: scores by SGD (the default, see common.py); lambda 0.1 adapted 2 of the 3 layers in a
  # 3,000-round trial, lambda 1 none (results/taps_lambda.md has the sweep)
  c.taps_lambda = 0.1
  return common.apply_variant(c, variant, METHODS, smoke, named={
      "source": source, "taps": taps, "full": full, "head": head, "fashion": fashion,
      **{f"only_layer_{i}": only_layer(i) for i in range(3)}})
