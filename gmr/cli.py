"""The command line's config front end: ``--config=<file>[:<variant>]`` and ``--config.<field>=
<value>`` overrides, each value parsed by its field's declared type; every mistake is one
:class:`~gmr.config.ConfigError` (``<field>: <what>; <fix>``) raised before any compute.

Values by field type: ``true``/``false`` (also ``1``/``0``, ``yes``/``no``) for booleans,
integers written as integers, any float literal for floats, the text itself for strings, a
Python list literal for lists (``--config.fixed_allocation='[[1,0],[0,1]]'``,
``--config.taps_layers="['layer_1/*']"``), and ``None`` for an optional field.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re
from typing import List

from ml_collections import config_dict

from gmr import config as config_schema
from gmr.config import ConfigError

_NONE = ("none", "null")


def _near(name: str, options) -> str:
  near = difflib.get_close_matches(name, [str(o) for o in options], n=1, cutoff=0.6)
  return near[0] if near else ""


def parse_value(text: str, typ, field: str, nullable: bool = False):
  """``text`` as a value of type ``typ`` for ``field`` (dotted name, for the error).

  Raises :class:`ConfigError` naming ``field`` when ``text`` is not such a value."""
  t = str(text).strip()
  if nullable and t.lower() in _NONE:
    return None
  if typ is bool:
    if t.lower() in ("true", "1", "yes"):
      return True
    if t.lower() in ("false", "0", "no"):
      return False
    raise ConfigError(field, f"must be true or false, got {text!r}",
                      f"set --config.{field}=true or false")
  if typ is int:
    if not re.fullmatch(r"[+-]?\d+", t):
      raise ConfigError(field, f"must be an integer, got {text!r}",
                        f"set --config.{field}=<integer>")
    return int(t)
  if typ is float:
    try:
      return float(t)
    except ValueError:
      raise ConfigError(field, f"must be a number, got {text!r}",
                        f"set --config.{field}=<number>") from None
  if typ in (list, tuple):
    try:
      v = ast.literal_eval(t)
    except (ValueError, SyntaxError):
      v = None
    if not isinstance(v, (list, tuple)):
      raise ConfigError(field, f"must be a list, got {text!r}",
                        f"write it as a Python list literal, e.g. --config.{field}=\"['a', 'b']\" "
                        f"or '[[1,0],[0,1]]'")
    return list(v) if typ is list else tuple(v)
  if typ is str:
    return str(text)
  try:  # a field without a declared type: a literal if it reads as one, else the text
    return ast.literal_eval(t)
  except (ValueError, SyntaxError):
    return str(text)


def set_field(config: config_dict.ConfigDict, dotted: str, text: str) -> None:
  """``config.<dotted> = text`` parsed by the field's declared type (see the module docstring).

  Raises :class:`ConfigError` for an unknown field (with the nearest name), a group of fields
  given one value, or a value that is not of the field's type."""
  parts = dotted.split(".")
  node = config
  for i, p in enumerate(parts):
    name = ".".join(parts[:i + 1])
    if not isinstance(node, config_dict.ConfigDict):
      raise ConfigError(name, "unknown config field", f"{'.'.join(parts[:i])} is a value, "
                        "not a group of fields")
    if p not in node:
      near = _near(p, node.keys())
      fix = (f"did you mean {'.'.join(parts[:i] + [near])}?" if near else
             "the fields here are " + ", ".join(sorted(node.keys())))
      raise ConfigError(name, "unknown config field", fix)
    if i < len(parts) - 1:
      node = node[p]
  last = parts[-1]
  cur = node[last]
  if isinstance(cur, config_dict.ConfigDict):
    first = next(iter(sorted(cur.keys())), "<field>")
    raise ConfigError(dotted, "is a group of fields, not one value",
                      f"set its fields one by one, e.g. --config.{dotted}.{first}=<value>")
  typ = node.get_type(last)
  value = parse_value(text, typ, dotted, nullable=cur is None)
  try:
    node[last] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(dotted, f"cannot take {text!r} ({e})", "give a value of its type") from None


def split_variant(variant: str) -> List[str]:
  """The comma-separated tokens of a variant string, commas inside brackets or quotes kept
  (``taps,taps_layers=['layer_1/*','layer_2/*']`` is two tokens)."""
  out, cur, depth, quote = [], "", 0, ""
  for ch in variant or "":
    if quote:
      quote = "" if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "[(":
      depth += 1
    elif ch in "])":
      depth -= 1
    if ch == "," and depth == 0 and not quote:
      out.append(cur)
      cur = ""
    else:
      cur += ch
  out.append(cur)
  return [t.strip() for t in out if t.strip()]


def unknown_variant(token: str, options) -> ConfigError:
  """The error for a variant token that is neither a name of ``options`` nor field=value."""
  near = _near(token, options)
  return ConfigError("--config", f"unknown variant {token!r}",
                     (f"did you mean {near!r}? " if near else "") +
                     f"use one of {sorted(options)} or <field>=<value>, comma-separated")


def load_config(spec: str) -> config_dict.ConfigDict:
  """The config of ``spec`` = ``<file>.py[:<variant>]``: the file's ``get_config(variant)``.

  Raises :class:`ConfigError` (field ``--config``) for a missing file, a file without
  ``get_config``, or a variant it does not know."""
  if not spec:
    raise ConfigError("--config", "is required",
                      "pass --config=experiments/configs/<name>.py[:<variant>]")
  path, _, variant = spec.partition(":")
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or "."
    shipped = sorted(f for f in os.listdir(folder) if f.endswith(".py") and f != "__init__.py"
                     ) if os.path.isdir(folder) else []
    raise ConfigError("--config", f"no config file {path}",
                      f"give one of {shipped}" if shipped else
                      "give a file like experiments/configs/synthetic.py")
  mod_spec = importlib.util.spec_from_file_location(
      "gmr_config_" + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(mod_spec)
  try:
    mod_spec.loader.exec_module(module)
  except Exception as e:  # pylint: disable=broad-except  (a user's config file)
    raise ConfigError("--config", f"{path} cannot be loaded ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''})", "fix the file") from None
  if not hasattr(module, "get_config"):
    raise ConfigError("--config", f"{path} has no get_config()", "define get_config(variant='')")
  try:
    return module.get_config(variant) if variant else module.get_config()
  except ConfigError:
    raise
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ConfigError("--config", f"variant {variant!r} of {path}: {e}",
                      "see the variants the file's get_config accepts") from None


def fields_help(config: config_dict.ConfigDict = None) -> str:
  """The config's fields for ``--help``: one line ``<dotted field> = <value>  <doc>`` per field
  (nested fields such as ``data.*`` and ``synthetic.*`` by their dotted names), docs from
  :func:`gmr.config.docs`. ``config``: the values to list; None: :func:`gmr.config.defaults`
  with :func:`gmr.config.synthetic_defaults` as ``synthetic`` and every built-in suite's
  options (:func:`gmr.config.suite_options`) as ``data``."""
  if config is None:
    config = config_schema.defaults()
    config.synthetic = config_schema.synthetic_defaults()
    config.data = config_dict.ConfigDict()
    for suite in config_schema.SUITE_OPTIONS:
      for k, v in config_schema.suite_options(suite).items():
        config.data[k] = v
  docs = config_schema.docs()
  rows = []

  def walk(c, prefix):
    for k in sorted(c.keys()) if prefix else list(c.keys()):
      v = c[k]
      if isinstance(v, config_dict.ConfigDict) and len(v):
        walk(v, f"{prefix}{k}.")
      else:
        shown = v.to_dict() if isinstance(v, config_dict.ConfigDict) else v
        rows.append((f"{prefix}{k}", repr(shown), docs.get(f"{prefix}{k}", "")))

  walk(config, "")
  width = max(len(f"{n} = {v}") for n, v, _ in rows)
  return "\n".join(f"  {n} = {v}".ljust(width + 4) + (f"  {d}" if d else "")
                   for n, v, d in rows)


def parse_seeds(text: str, field: str = "--seeds") -> List[int]:
  """Seeds from ``"0-4"``, ``"0,3,7"`` or both (``"0-2,5"``), in the order given. Raises
  :class:`ConfigError` (``field``) for anything else, an empty list or a seed given twice."""
  out: List[int] = []
  for part in text.replace(" ", "").split(","):
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
    if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
      raise ConfigError(field, f"{part!r} is not a seed or a range of seeds",
                        "write e.g. 0-9 or 0,3,7")
    a = int(m.group(1))
    out.extend(range(a, int(m.group(2) if m.group(2) is not None else a) + 1))
  if len(set(out)) != len(out):
    dup = next(s for s in out if out.count(s) > 1)
    raise ConfigError(field, f"seed {dup} is given twice", "give each seed once")
  return out
