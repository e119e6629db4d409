"""The config schema: one default per field, read directly by the library."""

import glob
import importlib
import os
import re

from gmr import config as config_schema

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GROUPS = set(config_schema.SUITE_FIELDS)


def test_experiment_configs_only_override_the_schema():
  """Every shipped config has exactly the schema's fields (plus its suite's group), so no
  field is defined, or defaulted, anywhere else."""
  schema = set(config_schema.defaults().keys())
  for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "configs", "*.py"))):
    name = os.path.basename(path)[:-3]
    if name in ("__init__", "common"):
      continue
    c = importlib.import_module(f"experiments.configs.{name}").get_config()
    assert set(c.keys()) - GROUPS == schema, name


def test_library_reads_fields_without_fallbacks():
  """No ``config.get(<field>, <default>)`` in gmr/: a second default would disagree with the
  schema's (it did: taps_score_optimizer, alloc_history_every). (The real-data builders read
  an options dict, ``cfg``, that gmr.data makes from the config's fields.)"""
  fields = "|".join(sorted(config_schema.defaults().keys()))
  bad = []
  for path in glob.glob(os.path.join(ROOT, "gmr", "**", "*.py"), recursive=True):
    text = open(path).read()
    bad += [(os.path.relpath(path, ROOT), m.group(0)) for m in re.finditer(
        rf"\b(?:config|c|self\.config)\.get\(\s*[\"']({fields})[\"']", text)]
  assert not bad


def test_paper_constants_have_one_default():
  from gmr import taps
  c = config_schema.defaults()
  assert (c.taps_tau, c.taps_score_init) == (taps.TAU, taps.SCORE_INIT)
  assert c.taps_score_optimizer == "sgd" and c.alloc_history_every == 100
