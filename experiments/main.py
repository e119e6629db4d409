"""Entry point: python -m experiments.main --config=experiments/configs/<name>.py[:<variant>] --workdir=<dir>"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from gmr import experiment
from gmr.data.raw import DataError
from gmr.methods import ConfigError
from gmr.train import NonFiniteError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json, metrics.jsonl, ...")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress lines.")
_FRESH = flags.DEFINE_bool("fresh", False, "Start again in a workdir that holds another run "
                           "(it is moved to <workdir>/previous_<n>/, never deleted).")
_EXTEND = flags.DEFINE_bool("extend", False, "Continue a run of fewer rounds (same config "
                            "otherwise) in --workdir to --config.num_rounds; its results.json "
                            "is kept as results_round_<n>.json.")
_CHANGE_OPT = flags.DEFINE_bool(
    "change_optimizer", False, "Continue the run in --workdir from its last intact checkpoint "
    "under other optimizer settings (learning rates, Adam's b1/b2/eps, clip_norm), e.g. after "
    "divergence; parameters and optimizer moments carry over, the change is recorded in "
    "<workdir>/optimizer_changes.jsonl and results.json. Any other config change is refused.")
_COORD = flags.DEFINE_string(
    "coordinator_address", "", "Multi-host training: host:port of process 0 "
    "(jax.distributed.initialize), or 'auto' where JAX finds it itself (TPU pods, SLURM, ...). "
    "Every process runs the same command with its own --process_id; process 0 writes the workdir.")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def init_distributed(address: str, num_processes, process_id) -> None:
  """``jax.distributed.initialize`` (CPU: gloo collectives, so CPU hosts can be tested too)."""
  import jax
  if address != "auto" and (num_processes is None or process_id is None):
    raise app.UsageError("--coordinator_address needs --num_processes and --process_id "
                         "(or use --coordinator_address=auto on a cluster JAX detects)")
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU uses it
  if address == "auto":
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(address, num_processes=num_processes, process_id=process_id)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax and tfds log every save and load at INFO
    logging.set_verbosity(logging.WARNING)
  if _COORD.value:
    init_distributed(_COORD.value, _NPROC.value, _PID.value)
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value, fresh=_FRESH.value,
                   extend=_EXTEND.value, change_optimizer=_CHANGE_OPT.value)
  except (ConfigError, DataError, experiment.WorkdirError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteError as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    sys.exit(1)
  except experiment.Preempted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(143)

if __name__ == "__main__":
  app.run(main)
