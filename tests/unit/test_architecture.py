"""Layering rules that code review keeps missing (issue 11).

- Only golden_ami/targets/ knows which target it is: code above it asks the Target interface
  (targets/base.py) and never compares a target's name with a literal.
- golden_ami has no import cycles, counting the imports made inside functions too (an import
  moved into a function hides a cycle from Python, not from the reader).
- The state dir's and build directories' file names are spelt once, in golden_ami/layout.py.
"""
from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "golden_ami"
TARGET_NAMES = {"aws", "local"}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


# --- target names ---------------------------------------------------------------------------------
def _names_a_target(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and node.value in TARGET_NAMES:
        return True
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_target(e) for e in node.elts)
    return False


def target_name_comparisons(source: str, filename: str) -> list[str]:
    """Every comparison (==, !=, in, not in, is) that has a target's name as a literal on one side."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Compare) and any(_names_a_target(side) for side in [node.left, *node.comparators]):
            found.append(f"{filename}:{node.lineno}: {ast.get_source_segment(source, node)}")
        elif isinstance(node, ast.Match):  # match target: case "aws": ...
            for case in node.cases:
                if isinstance(case.pattern, ast.MatchValue) and _names_a_target(case.pattern.value):
                    found.append(f"{filename}:{case.pattern.lineno}: case {ast.get_source_segment(source, case.pattern)}")
    return found


def test_the_detector_finds_each_spelling():
    code = ('if target == "aws": pass\nif "local" != cfg.target: pass\nif name in ("aws", "local"): pass\n'
            'ok = x.target is "local"\nif target == "gcp": pass\nif kind == "deregister": pass\n')
    assert [line.split(":")[1] for line in target_name_comparisons(code, "x.py")] == ["1", "2", "3", "4"]


def test_only_targets_know_which_target_they_are():
    files = [p for p in PACKAGE.rglob("*.py") if PACKAGE / "targets" not in p.parents] + [ROOT / "tasks.py"]
    found = [hit for path in sorted(files)
             for hit in target_name_comparisons(path.read_text(), str(path.relative_to(ROOT)))]
    assert not found, ("code outside golden_ami/targets/ asks which target it has; ask the Target interface "
                       "(targets/base.py) instead:\n" + "\n".join(found))


# --- layout ---------------------------------------------------------------------------------------
# A path joined with a name that layout.py owns: `x / "builds"`, or one of its file names.
_LAYOUT_NAMES = re.compile(r'/\s*"(builds|store|renders|runs|audits|base|verify|logs|runtime|signing)"'
                           r'|"(build|manifest|report|controls|render)\.json"|"accelerator\.json"|/\s*"known_hosts"')


def layout_spellings(source: str, filename: str) -> list[str]:
    return [f"{filename}:{number}: {line.strip()}" for number, line in enumerate(source.splitlines(), 1)
            if _LAYOUT_NAMES.search(line) and not line.lstrip().startswith("#")]


def test_the_layout_detector_finds_each_spelling():
    code = ('a = state / "builds" / i\nb = d/"verify"\nc = d / REPORT\nd = "report.json"\n# x / "store"\n'
            'e = "verify"\n')
    assert [hit.split(":")[1] for hit in layout_spellings(code, "x.py")] == ["1", "2", "4"]


def test_file_names_of_the_state_dir_are_spelt_only_in_layout():
    files = [p for p in PACKAGE.rglob("*.py") if p.name != "layout.py"] + [ROOT / "tasks.py", *ROOT.glob("bench/*.py")]
    found = [hit for path in sorted(files) for hit in layout_spellings(path.read_text(), str(path.relative_to(ROOT)))
             if not hit.startswith("golden_ami/paths.py")]  # paths.py: the project tree's verify/, not a build's
    assert not found, "a state-dir or build-dir name spelt outside golden_ami/layout.py:\n" + "\n".join(found)


# --- import cycles --------------------------------------------------------------------------------
def _runtime_nodes(tree: ast.AST):
    """Every node but those under `if TYPE_CHECKING:` (imports for annotations only: they never
    run, so they cannot make a cycle)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imported(module: str, path: Path, known: set[str]) -> set[str]:
    """The package modules a module imports anywhere in its body (functions included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            # `from . import x` imports the module x; `from .m import name` imports m.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:  # a.b.c where only a.b is a module of ours
                name = name.rpartition(".")[0]
            if name and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imported(name, path, set(modules)) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as [a, b, ..., a], or [] when there is none. A package importing its own
    submodule (targets -> targets.base) is not a cycle by itself: Python loads the package first."""
    done: set[str] = set()
    stack: list[str] = []
    on_stack: set[str] = set()

    def visit(node: str) -> list[str]:
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not (len(cycle) == 3 and (cycle[1].startswith(cycle[0] + ".") or cycle[0].startswith(cycle[1] + "."))):
                    return cycle
            elif nxt not in done:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        on_stack.discard(node)
        done.add(node)
        return []

    for start in sorted(graph):
        if start not in done:
            found = visit(start)
            if found:
                return found
    return []


def test_the_cycle_finder_sees_a_cycle_through_a_function_level_import(tmp_path, monkeypatch):
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.c", "p.a"]
    assert find_cycle({"p.a": {"p.b"}, "p.b": set()}) == []
    # An import inside a function counts.
    package = tmp_path / "golden_ami"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "one.py").write_text("from .two import x\n")
    (package / "two.py").write_text("def x():\n    from . import one\n    return one\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", package)
    assert find_cycle(import_graph()) == ["golden_ami.one", "golden_ami.two", "golden_ami.one"]


@pytest.mark.parametrize("module", ["golden_ami.lifecycle", "golden_ami.render", "golden_ami.targets.base"])
def test_the_graph_sees_the_package(module):
    assert import_graph()[module], f"{module} imports nothing of the package? the graph builder is broken"


def test_golden_ami_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)
