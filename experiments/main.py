"""Entry point: python -m experiments.main --config=experiments/configs/<name>.py[:<variant>] --workdir=<dir>

A population, several seeds as one program (``jax.vmap`` over members; gmr/population.py):
python -m experiments.main --config=... --seeds=0-9 --workdir='runs/<name>/seed_{seed}'

Every user error (flags, the config file and its variant, ``--config.<field>=<value>``
overrides, the config's values, the network's structure, the data, the workdir) ends the
command with one line ``error: <field>: <what>; <fix>`` on stderr and exit status 2, before
any training.
"""

import difflib
import os
import sys

from absl import app, flags, logging

from gmr import cli, experiment
from gmr.data.raw import DataError
from gmr.config import ConfigError
from gmr.train import NonFiniteError
from gmr.workdir import WorkdirError, WriteFailure

# this command's own flags (absl's, such as --verbosity, stay in the global flags.FLAGS)
FLAGS = flags.FlagValues()
_CONFIG = flags.DEFINE_string(
    "config", None, "Experiment config file[:variant], e.g. "
    "experiments/configs/synthetic.py:gumbel_matrix,smoke; override fields with "
    "--config.<field>=<value> (lists as literals: --config.fixed_allocation='[[1,0],[0,1]]').",
    flag_values=FLAGS)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for results.json, metrics.jsonl, ...",
                               flag_values=FLAGS)
_SEEDS = flags.DEFINE_string(
    "seeds", "", "A population: train these seeds ('0-9', '0,3,7') as one program (jax.vmap "
    "over members), each into --workdir with {seed} replaced by its seed, e.g. "
    "--workdir='runs/gm/seed_{seed}'. Members differ only in their seed; each workdir is an "
    "ordinary run's (see gmr/population.py).", flag_values=FLAGS)
_QUIET = flags.DEFINE_bool("quiet", False, "No progress lines.", flag_values=FLAGS)
_FRESH = flags.DEFINE_bool("fresh", False, "Start again in a workdir that holds another run "
                           "(it is moved to <workdir>/previous_<n>/, never deleted).",
                           flag_values=FLAGS)
_EXTEND = flags.DEFINE_bool("extend", False, "Continue a run of fewer rounds (same config "
                            "otherwise) in --workdir to --config.num_rounds; its results.json "
                            "is kept as results_round_<n>.json.", flag_values=FLAGS)
_CHANGE_OPT = flags.DEFINE_bool(
    "change_optimizer", False, "Continue the run in --workdir from its last intact checkpoint "
    "under other optimizer settings (learning rates, Adam's b1/b2/eps, clip_norm), e.g. after "
    "divergence; parameters and optimizer moments carry over, the change is recorded in "
    "<workdir>/optimizer_changes.jsonl and results.json. Any other config change is refused.",
    flag_values=FLAGS)
_ACCEPT_ENV = flags.DEFINE_bool(
    "accept_environment_change", False, "Continue the run in --workdir although this process's "
    "settings that change numbers (JAX_ENABLE_X64, matmul precision, PRNG, XLA_FLAGS, the "
    "backend) differ from those it was made with; the change is recorded in "
    "<workdir>/environment.json and results.json.", flag_values=FLAGS)
_COORD = flags.DEFINE_string(
    "coordinator_address", "", "Multi-host training: host:port of process 0 "
    "(jax.distributed.initialize), or 'auto' where JAX finds it itself (TPU pods, SLURM, ...). "
    "Every process runs the same command with its own --process_id; process 0 writes the workdir.",
    flag_values=FLAGS)
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes.",
                              flag_values=FLAGS)
_PID = flags.DEFINE_integer("process_id", None, "Multi-host: this process's index.",
                            flag_values=FLAGS)


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


_PARSED = {}


def fail(line: str) -> None:
  """End the command with one error line and exit status 2."""
  print(f"error: {line}", file=sys.stderr, flush=True)
  sys.exit(2)


def _flag_error(e: flags.Error) -> str:
  msg = str(e).splitlines()[0] if str(e) else type(e).__name__
  if isinstance(e, flags.UnrecognizedFlagError):
    name = e.flagname.split("=", 1)[0]
    near = difflib.get_close_matches(name, list(FLAGS) + list(flags.FLAGS), n=1)
    return (f"--{name}: unknown flag; " + (f"did you mean --{near[0]}?" if near else
                                            "see python -m experiments.main --helpfull"))
  return f"flags: {msg}; see python -m experiments.main --helpshort"


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")


def usage(config=None, spec: str = "") -> str:
  """``--help``'s text: this command's flags and the config's fields with their values (those
  of ``config``, loaded from ``spec``, or the schema's defaults) and one-line docs."""
  where = f"the values of {spec}" if spec else "their defaults (gmr/config.py)"
  return (f"{__doc__.strip()}\n\nflags:\n{FLAGS.get_help()}\n\nconfig fields "
          f"(--config.<field>=<value>), {where}:\n{cli.fields_help(config)}\n\n"
          "absl's own flags: --helpfull\n")


def parse_args(argv):
  """absl's flags, then the config and its ``--config.<field>`` overrides (any order, as
  ``--config.f=v`` or ``--config.f v``); the config is locked. Any error: :func:`fail`.
  ``--help``: :func:`usage` on stdout, exit status 0."""
  if any(a in HELP_FLAGS for a in argv[1:]):
    spec = next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("--config=")), "")
    config = None
    if spec:
      try:
        config = cli.load_config(spec)
      except ConfigError as e:
        fail(str(e))
    print(usage(config, spec), end="")
    sys.exit(0)
  overrides, rest, i = [], [argv[0]], 1
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      name, eq, value = a[len("--config."):].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          fail(f"config.{name}: has no value; write --config.{name}=<value>")
        value, i = argv[i + 1], i + 1
      overrides.append((name, value))
    else:
      rest.append(a)
    i += 1
  try:
    remaining = FLAGS(rest, known_only=True)  # ours, then what is left to absl's own flags
    if len(remaining) > 1:
      remaining = flags.FLAGS(remaining)
    elif not flags.FLAGS.is_parsed():  # nothing for them: their defaults (and no validators
      flags.FLAGS.mark_as_parsed()     # of other modules' flags imported in this process)
  except flags.Error as e:
    fail(_flag_error(e))
  for name in ("config", "workdir"):  # required: checked after every flag is known
    if FLAGS[name].value is None:
      fail(f"--{name}: is required; pass --{name}=<value> (see --helpfull)")
  if len(remaining) > 1:
    fail(f"arguments: unexpected {remaining[1:]}; every option is a --flag=<value>")
  try:
    config = cli.load_config(_CONFIG.value)
    for name, value in overrides:
      cli.set_field(config, name, value)
  except ConfigError as e:
    fail(str(e))
  config.lock()
  _PARSED["config"] = config
  return remaining


def run_population(config) -> None:
  """``--seeds``: the population of those seeds (exit status 1 when a member diverged)."""
  from gmr import cli, population  # pylint: disable=g-import-not-at-top
  seeds = cli.parse_seeds(_SEEDS.value)
  if "{seed}" not in _WORKDIR.value:
    raise ConfigError("--workdir", "has no {seed} for the members of --seeds",
                      "write e.g. --workdir='runs/gm/seed_{seed}'")
  for name, flag in (("extend", _EXTEND), ("change_optimizer", _CHANGE_OPT),
                     ("coordinator_address", _COORD)):
    if flag.value:
      raise ConfigError(f"--{name}", "applies to one run, not to a population (--seeds)",
                        "continue that member's workdir on its own")
  configs = population.member_configs(config, seeds)
  workdirs = [population.member_workdir(_WORKDIR.value, c) for c in configs]
  results = population.run_population(configs, workdirs, quiet=_QUIET.value,
                                      fresh=_FRESH.value,
                                      accept_environment_change=_ACCEPT_ENV.value)
  failed = [wd for wd, r in zip(workdirs, results) if isinstance(r, NonFiniteError)]
  if failed:
    print(f"error: training diverged in {len(failed)} of {len(workdirs)} members "
          f"({', '.join(failed)}); the others finished", file=sys.stderr)
    sys.exit(1)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:  # orbax and tfds log every save and load at INFO
    logging.set_verbosity(logging.WARNING)
  if _COORD.value and not _SEEDS.value:
    init_distributed(_COORD.value, _NPROC.value, _PID.value)
  try:
    if _SEEDS.value:
      return run_population(_PARSED["config"])
    experiment.run(_PARSED["config"], _WORKDIR.value, quiet=_QUIET.value, fresh=_FRESH.value,
                   extend=_EXTEND.value, change_optimizer=_CHANGE_OPT.value,
                   accept_environment_change=_ACCEPT_ENV.value)
  except WriteFailure as e:  # the machine: end now, before library threads retry
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(2)  # pylint: disable=protected-access
  except (ConfigError, DataError, WorkdirError) as e:
    fail(str(e))
  except NonFiniteError as e:
    print(f"error: training diverged: {e}", file=sys.stderr)
    sys.exit(1)
  except experiment.Preempted as e:
    print(f"interrupted: {e}", file=sys.stderr)
    sys.exit(143)

if __name__ == "__main__":
  flags.FLAGS.append_flag_values(FLAGS)  # listed by --helpfull
  for _flag in FLAGS._flags().values():  # pylint: disable=protected-access
    flags.FLAGS.register_flag_by_module("experiments.main", _flag)
  app.run(main, flags_parser=parse_args)
