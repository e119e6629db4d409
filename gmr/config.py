"""The one schema of a run's config: every field, its default, its type and a one-line doc.

``defaults()`` is where each constant of the papers and of gmr has its one default; the
experiment configs (``experiments/configs/*.py``) start from it and only override, and library
code reads fields directly (``config.<field>``), never with a fallback of its own. The
validation of the values is :func:`gmr.validate.validate`. A workdir written before a field
existed is read with that field's value of the time: :data:`UPGRADES`.
"""

from __future__ import annotations

from ml_collections import config_dict

from gmr import taps

# Fields that only one suite reads, defined by the configs of that suite (not by defaults()):
# ``data`` (real-data suites' options), ``synthetic`` (appendix A1's generator, see
# synthetic_defaults()) and ``rho`` (the transfer experiment's task similarity).
SUITE_FIELDS = ("data", "synthetic", "rho")

# Fields added after runs were made: the value that reproduces a run made before (its stored
# config.json lacks the field). Compared by gmr.experiment when a workdir is resumed.
UPGRADES = {"schedule": "round_robin", "data_parallel": 1, "layout": "auto",
            "conv_dtype": "float32", "accept_noncanonical_data": False}


def defaults() -> config_dict.ConfigDict:
  """Every field of a run with its one default (experiment configs start here and only
  override). Types are the defaults' (ml_collections checks them on assignment; ``placeholder``
  fields are optional values of that type)."""
  c = config_dict.ConfigDict()
  # --- run
  c.seed = 0
  c.data_seed = config_dict.placeholder(int)  # None: draw (synthetic) data from `seed`
  c.method = "gumbel_matrix"  # gumbel_matrix | shared_bottom | no_sharing | fixed | taps
  c.suite = ""
  c.arch = ""
  c.arch_kwargs = config_dict.ConfigDict()
  c.data_dir = ""  # raw files laid out like ../shared/datasets; "" = $GMR_DATA_DIR
  c.tfds_dir = ""  # prepared TFDS datasets; "" = $GMR_TFDS_DIR or ~/tensorflow_datasets
  c.download = False  # fetch missing raw files from their canonical locations (checked)
  c.accept_noncanonical_data = False  # use raw files whose digest is not the published one
  c.num_rounds = 1000  # one round = one batch (and one update) per task
  c.batch_size = 16
  c.eval_every = 0  # rounds; 0 = only at the end
  c.log_every = 100  # rounds
  c.rounds_per_call = 100  # rounds run in one device call (lax.scan)
  # JAX's persistent compilation cache: "auto" = $XDG_CACHE_HOME/gmr/jax (~/.cache/gmr/jax), or
  # the folder JAX was already given; a path; "" = off. A second run of the same shapes skips
  # compiling. Changes no number (not part of a run's identity).
  c.compilation_cache_dir = "auto"
  # round_robin (the paper: T sequential task-batch updates per round) | joint (one update on
  # all T task batches per round, vmapped over tasks; see gmr/train.py)
  c.schedule = "round_robin"
  c.data_parallel = 1  # local devices each batch is split over; 0 = all (results equal 1's)
  c.eval_batch_size = 1000
  c.augment = ""  # "" | pad_crop (pad by augment_pad, random crop back; the 40-task benchmark)
  c.augment_pad = 4
  c.alloc_history_every = 100  # rounds; P(on) per (layer, task, component) into metrics.jsonl; 0 = off
  c.checkpoint_every = 0  # rounds; 0 = only at the end (and on SIGTERM)
  c.keep_checkpoints = 2  # last N kept (plus the best one when select_by is set)
  c.select_by = ""  # e.g. "validation.accuracy.mean": report the best evaluation's test numbers
  c.eval_sample = False  # sample allocations at evaluation instead of greedy (section III-C)
  # --- model
  c.combine = "mean"  # mean | sum of active outputs | auto (sum for shared_bottom, else mean)
  c.dropout = 0.0
  c.fused = True  # components of one kind as one batched op
  c.conv_impl = "auto"  # auto (patches on CPU, xla elsewhere) | xla | patches
  c.layout = "auto"  # image tensors inside the network: auto (cnhw on CPU, nhwc elsewhere) | nhwc | cnhw
  c.conv_dtype = "float32"  # convolutions' multiplies: float32 | bfloat16 (f32 accumulation and params)
  # --- optimizer
  c.learning_rate = 1e-3
  c.alloc_learning_rate = config_dict.placeholder(float)  # absolute; overrides the multiplier
  c.alloc_lr_multiplier = config_dict.placeholder(float)  # None: number of tasks (section V-B)
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8  # TF1 Adam uses 1e-8
  c.l2 = 0.0
  c.clip_norm = 0.0  # 0 = off
  c.sparse_head_updates = True  # untouched heads keep weights and Adam moments (as in TF)
  # --- Gumbel-Matrix
  c.p_init = 0.5
  c.t_init = 50.0
  c.t_min = 0.5
  c.budget = 1.0
  c.budget_lambda = 0.0
  c.entropy_penalty = 0.0
  # --- TAPS (Wallingford et al.; defaults of the authors' code)
  c.taps_tau = taps.TAU  # a layer is task-specific iff its score >= tau
  c.taps_score_init = taps.SCORE_INIT
  c.taps_lambda = 1.0  # sparsity weight: lambda / L * sum |s| per task batch
  c.taps_layers = []  # fnmatch patterns of adaptable kernels ("layer_1/*"); [] = all of the backbone
  c.taps_task_norm = False  # per-task GroupNorm scale/offset deltas
  c.taps_learning_rate = config_dict.placeholder(float)  # deltas; None = learning_rate
  # sgd (momentum adam_b1) | adam for the scores. SGD: with Adam the L1 term alone moves every
  # score by ~lr per step while dW = 0, so all cross tau before a delta has learned (docs/running.md, "TAPS in detail")
  c.taps_score_optimizer = "sgd"
  c.taps_score_learning_rate = config_dict.placeholder(float)  # None = the deltas' rate
  # --- fine-tuning
  c.init_from = ""  # workdir of a finished run: start from its backbone (heads stay fresh)
  c.freeze_backbone = False  # only heads (and TAPS deltas/scores) learn
  # --- baselines
  c.no_sharing_components_per_task = 1
  c.fixed_allocation = config_dict.placeholder(list)
  return c


def synthetic_defaults() -> config_dict.ConfigDict:
  """Appendix A1 constants: d=128, c=1, m=6, alpha_i=i, beta_i=(i-1)^2, noise N(0, 0.01)."""
  s = config_dict.ConfigDict()
  s.d = 128
  s.c = 1.0
  s.m = 6
  s.noise_std = 0.01  # N(0, 0.01) read as a standard deviation, as in the authors' generator
  # Not given in the paper. 100k examples per task: the 3000 x 64 = 192k examples a task
  # sees are < 2 passes, close to the fresh-data regime (10k overfits badly).
  s.num_train = 100000
  s.num_test = 2000
  s.num_pairs = 2
  return s
