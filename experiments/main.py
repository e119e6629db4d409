"""Entry point: python -m experiments.main --config=experiments/configs/<name>.py[:<variant>] --workdir=<dir>"""

import sys

from absl import app, flags
from ml_collections import config_flags

from gmr import experiment
from gmr.methods import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json, metrics.jsonl, ...")
_QUIET = flags.DEFINE_bool("quiet", False, "No progress lines.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    experiment.run(_CONFIG.value, _WORKDIR.value, quiet=_QUIET.value)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main)
