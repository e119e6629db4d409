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
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:  # orbax and tfds log every save and load at INFO
    logging.set_verbosity(logging.WARNING)
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value, fresh=_FRESH.value)
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
