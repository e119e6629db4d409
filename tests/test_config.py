"""The config schema: one default per field, read directly by the library."""

import glob
import importlib
import os
import re

import pytest

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
  c = config_schema.defaults()
  assert (c.taps_tau, c.taps_score_init) == (0.1, 0.15)  # the authors' TAPS code
  assert c.taps_score_optimizer == "sgd" and c.alloc_history_every == 100


def test_every_suite_option_has_its_one_default_and_an_unknown_one_is_refused():
  """The built-in suites' options (config.data.*) come from the schema alone: each suite's
  record lists exactly gmr.config.suite_options, a config without ``data`` reads those
  defaults, and an option a suite does not have is one ConfigError naming it, for every suite
  with options."""
  from gmr import data
  from gmr.config import ConfigError
  for suite in config_schema.SUITE_OPTIONS:
    rec = data.SUITES[suite]
    assert sorted(n for n, _, _ in rec.options) == sorted(config_schema.suite_options(suite).keys())
    c = config_schema.defaults()
    c.suite = suite
    assert {k: v for k, v in data.options(c).items() if k in dict(c.items())} == {
        k: c[k] for k in ("data_dir", "tfds_dir", "download", "accept_noncanonical_data")}
    assert {k: data.options(c)[k] for k in config_schema.suite_options(suite)} == \
        config_schema.suite_options(suite).to_dict()
    c.data = config_schema.suite_options(suite)
    with c.data.unlocked():
      c.data.nope = 1
    with pytest.raises(ConfigError, match=rf"^data.nope: suite '{suite}' has no option 'nope'"):
      data.check_options(c)
