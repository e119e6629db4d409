"""What every experiment config starts from (:mod:`gmr.config`) and how variants apply."""

from ml_collections import config_dict

from gmr import cli
from gmr.config import defaults, synthetic_defaults


def base_config() -> config_dict.ConfigDict:
  """:func:`gmr.config.defaults`: every field with its one default."""
  return defaults()


def synthetic_fields() -> config_dict.ConfigDict:
  """:func:`gmr.config.synthetic_defaults`: appendix A1's constants."""
  return synthetic_defaults()


def apply_variant(config, variant: str, methods=(), smoke=None, named=None):
  """Apply a comma-separated variant string: method names set ``method``; ``smoke`` calls
  ``smoke(config)``; a token of ``named`` (name -> function) calls that function; other
  tokens ``<field>=<value>`` set fields, parsed by the field's type as on the command line
  (:func:`gmr.cli.set_field`; lists as literals: ``taps_layers=['layer_1/*','layer_2/*']``).
  Raises :class:`gmr.config.ConfigError` for an unknown token or a bad value."""
  named = dict(named or {})
  if smoke is not None:
    named["smoke"] = smoke
  for tok in cli.split_variant(variant):
    if tok in methods:
      config.method = tok
    elif tok in named:
      named[tok](config)
    elif "=" in tok:
      k, v = tok.split("=", 1)
      cli.set_field(config, k.strip(), v)
    else:
      raise cli.unknown_variant(tok, list(methods) + sorted(named))
  return config
