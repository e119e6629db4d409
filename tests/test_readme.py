"""The README's code blocks run: the front page cannot rot.

Every fenced block is run: ``python`` blocks in this process, ``bash`` blocks line by line in
a shell at the repository root (with ``/tmp/`` moved into the test's own folder, the install
prefix ``pip install -e ".[test]" &&`` dropped because the suite runs in that install, and the
test command itself not run again from inside the tests); ``bibtex`` blocks must cite the
papers CITATION.cff names; ``text`` blocks (the layout) must name files that exist.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTALL = 'pip install -e ".[test]" && '
TEST_COMMAND = "python -m pytest -q"


def blocks(name="README.md"):
  with open(os.path.join(ROOT, name)) as f:
    text = f.read()
  return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text,
                                                        re.S | re.M)]


def test_the_readme_starts_with_the_two_commands():
  kind, code = blocks()[0]
  lines = code.strip().splitlines()
  assert kind == "bash" and len(lines) == 2
  assert lines[0].startswith(INSTALL + "python -m experiments.main --config=experiments/"
                             "configs/synthetic.py")
  assert lines[1] == TEST_COMMAND
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  assert 'pip install -e ".[test]"' in ci and TEST_COMMAND in ci


def test_every_block_has_a_known_kind():
  assert {k for k, _ in blocks()} <= {"bash", "python", "bibtex", "text"}


def test_text_blocks_name_files_that_exist():
  """The modules of docs/architecture.md's tier table (each pattern names at least one file)
  and the paths of any text block of the README."""
  import glob
  import re
  table = open(os.path.join(ROOT, "docs", "architecture.md")).read()
  paths = [p for row in re.findall(r"^\| \d+ \| [^|]+ \| ([^|]+) \|$", table, re.M)
           for p in re.findall(r"`([^`]+)`", row)]
  paths += [line.split()[0] for kind, code in blocks() if kind == "text"
            for line in code.splitlines() if line and not line.startswith(" ")]
  assert len(paths) >= 10
  missing = [p for p in paths if not glob.glob(os.path.join(ROOT, p))]
  assert not missing


def test_bash_blocks_run(tmp_path):
  ran = 0
  for kind, code in blocks():
    if kind != "bash":
      continue
    for line in code.strip().splitlines():
      if line == TEST_COMMAND:
        continue  # this suite
      line = line.replace(INSTALL, "").replace("/tmp/", f"{tmp_path}/")
      line = line.replace("python -m", f"{sys.executable} -m")
      p = subprocess.run(line, shell=True, cwd=ROOT, capture_output=True, text=True,
                         timeout=900)
      assert p.returncode == 0, (line, p.stderr[-3000:])
      ran += 1
  assert ran >= 3


def test_python_blocks_run(monkeypatch):
  monkeypatch.chdir(ROOT)
  ran = 0
  for kind, code in blocks():
    if kind == "python":
      exec(compile(code, "README.md", "exec"), {"__name__": "readme"})  # pylint: disable=exec-used
      ran += 1
  assert ran >= 1


def test_bibtex_blocks_cite_the_papers_of_citation_cff():
  with open(os.path.join(ROOT, "CITATION.cff")) as f:
    cff = f.read()
  titles = [t for kind, code in blocks() if kind == "bibtex"
            for t in re.findall(r"title\s*=\s*\{(.*?)\}", code)]
  assert len(titles) == 2 and all(f"title: {t}" in cff for t in titles)


def test_readme_is_a_front_page():
  with open(os.path.join(ROOT, "README.md")) as f:
    lines = f.read().splitlines()
  assert len(lines) <= 260
  assert lines[5].startswith("# gmr")  # the two commands, then the title


def test_results_table_is_generated_from_results():
  """The README's results table is what ``python -m launch.front`` makes of results/ (never
  typed by hand), and it names every row's combination rule."""
  from launch import front
  with open(os.path.join(ROOT, "README.md")) as f:
    text = f.read()
  assert front.table() in text
  assert front.main(["--check"]) == 0
  assert "| combine |" in front.table()


def test_docs_links_resolve():
  """Relative links of the README, docs/ and results/README.md point at files that exist."""
  bad = []
  for name in ("README.md", "docs/architecture.md", "docs/running.md", "docs/speed.md",
               "results/README.md"):
    with open(os.path.join(ROOT, name)) as f:
      text = f.read()
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text):
      if not target.startswith("http") and not os.path.exists(
          os.path.join(ROOT, os.path.dirname(name), target)):
        bad.append((name, target))
  assert not bad
