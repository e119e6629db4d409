"""Imports run one way: docs/architecture.md's tier table, checked on every module's imports.

The table is read from the document itself, so the document is what the test proves. Every
import counts, those inside functions too; there is no list of exceptions.
"""

import ast
import fnmatch
import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("gmr", "experiments", "launch")
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow_datasets")


def _tiers():
  """``[(tier, [glob patterns])]`` from the table of docs/architecture.md."""
  text = open(os.path.join(ROOT, "docs", "architecture.md")).read()
  rows = re.findall(r"^\| (\d+) \| [^|]+ \| ([^|]+) \|$", text, re.M)
  assert rows, "docs/architecture.md has no tier table"
  return [(int(t), re.findall(r"`([^`]+)`", mods)) for t, mods in rows]


def _modules():
  """``{module name: path}`` of every Python file of the project's packages."""
  out = {}
  for pkg in PACKAGES:
    for path in glob.glob(os.path.join(ROOT, pkg, "**", "*.py"), recursive=True):
      rel = os.path.relpath(path, ROOT)
      parts = rel[:-3].split(os.sep)
      if parts[-1] == "__init__":
        parts = parts[:-1]
      out[".".join(parts)] = rel
  return out


MODULES = _modules()


def test_the_modules_are_found():
  assert len(MODULES) > 40 and {"gmr.config", "gmr.train", "launch.tables"} <= set(MODULES)


def _tier_of(rel: str, tiers) -> list:
  return [t for t, pats in tiers for p in pats if fnmatch.fnmatch(rel, p)
          and rel.count("/") == p.count("/")]


def _imports(name: str, rel: str):
  """The project modules ``name`` imports, anywhere in its file: ``[(module, line)]``.
  ``from a import b`` is module ``a.b`` when that is a module, else ``a``."""
  tree = ast.parse(open(os.path.join(ROOT, rel)).read())
  package = name if rel.endswith("__init__.py") else name.rpartition(".")[0]
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        up = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        base = ".".join(up + ([base] if base else []))
      targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                 for a in node.names]
    else:
      continue
    for t in targets:
      while t and t not in MODULES and t.split(".")[0] in PACKAGES:
        t = t.rpartition(".")[0]  # import gmr.x.y where y is a name: module gmr.x
      if t in MODULES and t != name:
        out.append((t, node.lineno))
  return out


def test_every_module_has_exactly_one_tier():
  tiers = _tiers()
  placed = {rel: _tier_of(rel, tiers) for rel in MODULES.values()}
  assert not [rel for rel, ts in placed.items() if len(ts) != 1], (
      "modules placed in no tier or in several (docs/architecture.md's table)")


def test_no_project_module_is_imported_by_a_computed_name():
  """importlib.import_module / __import__ of a project module would hide an import from the
  checks above (a config file loaded by its path, gmr/cli.py, is not a module import)."""
  bad = []
  for rel in MODULES.values():
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read())):
      if isinstance(node, ast.Call):
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        if name in ("import_module", "__import__"):
          bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
  assert not bad


def test_no_import_climbs_a_tier():
  tiers = _tiers()
  tier = {name: _tier_of(rel, tiers)[0] for name, rel in MODULES.items()}
  climbs = [f"{MODULES[a]}:{line} imports {b} (tier {tier[a]} -> {tier[b]})"
            for a, rel in MODULES.items() for b, line in _imports(a, rel) if tier[b] > tier[a]]
  assert not climbs


def test_imports_have_no_cycle():
  graph = {name: sorted({b for b, _ in _imports(name, rel)}) for name, rel in MODULES.items()}
  state, cycles = {}, []

  def visit(n, path):
    state[n] = "open"
    for m in graph[n]:
      if state.get(m) == "open":
        cycles.append(path[path.index(m):] + [m] if m in path else [n, m])
      elif m not in state:
        visit(m, path + [m])
    state[n] = "done"
  for n in graph:
    if n not in state:
      visit(n, [n])
  assert not cycles, [" -> ".join(c) for c in cycles]


def test_the_checks_see_a_climbing_import_and_a_cycle(tmp_path, monkeypatch):
  """The checks above are not vacuous: an import that climbs, a lazy one inside a function,
  and a cycle are found."""
  tiers = [(1, ["gmr/low.py"]), (2, ["gmr/high.py"])]
  (tmp_path / "gmr").mkdir()
  (tmp_path / "gmr" / "low.py").write_text("def f():\n  from gmr import high\n")
  (tmp_path / "gmr" / "high.py").write_text("from gmr import low\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  monkeypatch.setattr(sys.modules[__name__], "MODULES",
                      {"gmr.low": "gmr/low.py", "gmr.high": "gmr/high.py"})
  assert _imports("gmr.low", "gmr/low.py") == [("gmr.high", 2)]
  assert _tier_of("gmr/high.py", tiers) == [2]
  with pytest.raises(AssertionError):
    test_imports_have_no_cycle()


def _run_python(code: str) -> str:
  r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  return r.stdout.strip()


def test_config_and_analysis_import_no_jax():
  """The schema, the command line's parsing and the whole analysis (a table of runs made from
  results.json dicts, TAPS's reader included) load and run without JAX, Flax, optax or
  orbax."""
  out = _run_python(
      "import sys\n"
      "from gmr import config, cli\n"
      "from gmr.analysis import embeddings, readers, stats, tables\n"
      "runs = tables.collect('results/runs/synthetic')['gumbel_matrix']\n"
      "row = tables.summarize(runs)\n"
      "emb, _ = embeddings.run_embeddings(runs[0])\n"
      "taps = [dict(runs[0], method='taps', tasks=['a', 'b'], task_groups=None,\n"
      "             taps={'scores': {'a': {'l0': 0.2}, 'b': {'l0': 0.0}},\n"
      "                   'task_specific_layers': {'a': ['l0'], 'b': []},\n"
      "                   'task_specific_fraction': {'mean': 0.5}, 'added_params': {'a': 3}})]\n"
      "assert tables.summarize(taps)['taps_specific_pct'] == 50.0\n"
      "assert embeddings.run_embeddings(taps[0])[1] == ['l0']\n"
      "assert row['n'] == 20, row['n']\n"
      f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n")
  assert out == "[]"


def _config_field_names():
  from gmr import config as config_schema
  return {k.rpartition(".")[2] for k in config_schema.docs()}


def test_no_config_field_is_read_with_a_default_of_its_own():
  """``x.get("<config field>", default)`` anywhere in gmr/, or any ``.get`` on a name that holds
  a config or a suite's options: the default would be a second home beside the schema."""
  fields = _config_field_names()
  config_names = {"config", "cfg", "c", "opts", "options", "syn", "data", "conf"}
  bad = []
  for rel in MODULES.values():
    if not rel.startswith("gmr/"):
      continue
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, rel)).read())):
      if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and node.args):
        continue
      key = node.args[0]
      literal = isinstance(key, ast.Constant) and isinstance(key.value, str)
      receiver = node.func.value
      if (literal and key.value in fields and len(node.args) + len(node.keywords) > 1) or (
          isinstance(receiver, ast.Name) and receiver.id in config_names):
        bad.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
  assert not bad


def test_the_default_check_sees_a_fallback(tmp_path, monkeypatch):
  (tmp_path / "gmr").mkdir()
  (tmp_path / "gmr" / "x.py").write_text("def f(cfg):\n  return cfg.get('rotate_k', -1)\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
  monkeypatch.setattr(sys.modules[__name__], "MODULES", {"gmr.x": "gmr/x.py"})
  with pytest.raises(AssertionError):
    test_no_config_field_is_read_with_a_default_of_its_own()
