"""The shape of the code base: every module says its one concern, a long module says why it is one, and the
README's layout table matches the tree.

Rules (issue 13):

* every ``.py`` module of the product (``shards/``, ``plugins/``, ``launch/``, ``evaluation/``) and of
  ``benchmarks/`` opens with a docstring;
* a module of more than :data:`MAX_LINES` lines has the sentence ``One concern`` in its docstring, saying which one
  and why it does not split (e.g. "One concern (the report) in a little over 400 lines because ...");
* the README's layout table has a row for every tracked top-level folder, every folder it names exists, and it
  names every package folder one level down (``shards/uspto/``, ``evaluation/metrics/``, ...).
"""
import ast
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("shards", "plugins", "launch", "evaluation", "benchmarks")
MAX_LINES = 400
MARKER = "One concern"


def modules():
    return sorted(p for folder in FOLDERS for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""


def test_every_module_opens_with_a_docstring():
    assert len(modules()) > 100
    missing = [str(p.relative_to(ROOT)) for p in modules() if not docstring(p).strip()]
    assert not missing, f"modules without a docstring saying their concern: {missing}"


def test_long_modules_say_why_they_are_one_concern():
    long = {str(p.relative_to(ROOT)): p for p in modules() if len(p.read_text(encoding="utf-8").splitlines()) > MAX_LINES}
    unexplained = sorted(rel for rel, p in long.items() if MARKER not in docstring(p))
    assert not unexplained, (f"modules over {MAX_LINES} lines whose docstring does not say why they are one concern "
                             f"(a sentence with {MARKER!r}), or split them: {unexplained}")


def layout_section() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Layout\n(.*?)(?=^## )", readme, re.S | re.M)
    assert m, "README.md has no '## Layout' section"
    return m.group(1)


def test_readme_layout_table_matches_the_tree():
    section = layout_section()
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    named = [re.match(r"\| `([^`]+)`", line).group(1).rstrip("/") for line in rows]
    assert [n for n in named if not (ROOT / n).is_dir()] == [], "the layout table names folders that do not exist"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    top = {f.split("/", 1)[0] for f in tracked.splitlines() if "/" in f}
    assert top, "no tracked files"
    assert sorted(top - set(named)) == [], "tracked top-level folders without a row in the README's layout table"
    packages = sorted({str(p.parent.relative_to(ROOT)) for folder in FOLDERS for p in (ROOT / folder).glob("*/*.py")
                       if "__pycache__" not in p.parts})
    assert sorted(p for p in packages if f"{p}/" not in section) == [], \
        "package folders the README's layout table does not name (as `folder/sub/`)"
