"""The layers of docs/ARCHITECTURE.md, checked on the source: every import statement (module
level or inside a function) of every module under mopo_core/ and app/ is read with ast, and a
forbidden edge fails the test with the file and line.

Rules: ``tabular``, ``experiments``, ``data``, ``pareto``, ``runs`` and ``validation`` import
nothing from ``lm`` or ``training``; ``lm`` imports nothing from ``training``; nothing under
``mopo_core`` imports streamlit, plotly or ``app``; argparse only under ``mopo_core/cli``; SQL
on the runs tables only in ``runs.py``; no import cycles among modules (module-level imports);
the light layers import without torch (``mopo_core.lm.config``: tests/lm/test_lm_config.py)."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mopo_core", "app")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, package: str | None = None) -> list[tuple[str, int, bool]]:
    """(imported module, line, at module level) for every import in ``path``; a relative import
    is resolved against the file's package; ``from pkg import name`` yields ``pkg.name`` when
    that is a module of the project, else ``pkg``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top_level) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if _is_project_module(candidate) else base
                found.append((target, node.lineno, id(node) in top_level))
    return found


def _is_project_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _sources(*packages: str) -> list[Path]:
    return sorted(p for package in packages for p in (ROOT / package).rglob("*.py"))


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(sources, forbidden) -> list[str]:
    return [f"{path.relative_to(ROOT)}:{line} imports {target}"
            for path in sources for target, line, _ in _imports(path)
            if any(_within(target, f) for f in forbidden)]


LOWER = ["mopo_core/tabular", "mopo_core/experiments", "mopo_core/data", "mopo_core/pareto.py", "mopo_core/runs.py",
         "mopo_core/processes.py",
         "mopo_core/validation.py"]


def _paths(entries) -> list[Path]:
    return sorted(p for e in entries for p in ((ROOT / e).rglob("*.py") if (ROOT / e).is_dir() else [ROOT / e]))


def test_the_lower_layers_import_no_language_model_code():
    assert _paths(LOWER), "the lower layers exist"
    assert _violations(_paths(LOWER), ["mopo_core.lm", "mopo_core.training", "mopo_core.cli"]) == []


def test_lm_imports_nothing_from_training():
    assert _violations(_paths(["mopo_core/lm"]), ["mopo_core.training", "mopo_core.cli"]) == []


def test_the_engine_imports_no_ui():
    assert _violations(_sources("mopo_core"), ["streamlit", "plotly", "app"]) == []


def test_presenters_import_no_streamlit():
    assert _violations(_paths(["app/presenters"]), ["streamlit"]) == []


def test_argparse_only_under_cli():
    outside = [p for p in _sources("mopo_core") if not _within(_module_name(p), "mopo_core.cli")]
    assert _violations(outside, ["argparse"]) == []


RUNS_TABLES = ("runs", "points", "metrics", "artifacts", "run_owners", "run_marks")
SQL = re.compile(r"\b(SELECT\b[\s\S]{0,200}?\bFROM|INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE\s+TABLE(\s+IF\s+NOT\s+EXISTS)?|"
                 r"JOIN)\s+(" + "|".join(RUNS_TABLES) + r")\b", re.IGNORECASE)


def test_sql_on_the_runs_tables_only_in_runs_py():
    offenders = []
    for path in _sources(*PACKAGES):
        if path == ROOT / "mopo_core" / "runs.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.strip()[:60]!r}")
    assert offenders == []


def test_the_sql_check_sees_sql():
    """The pattern above is not vacuous: runs.py itself speaks SQL to those tables."""
    text = (ROOT / "mopo_core" / "runs.py").read_text()
    assert SQL.search(text)


def _module_graph() -> dict[str, set[str]]:
    graph = {}
    for path in _sources(*PACKAGES):
        name = _module_name(path)
        graph[name] = {t for t, _, top in _imports(path) if top and _is_project_module(t) and t != name
                       and not _within(name, t)}  # a package's own __init__ is not an edge back up
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    assert _cycles(_module_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_rules_catch_a_forbidden_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\ndef f():\n    from ..training import jobs\n")
    assert _imports(bad, package="mopo_core.lm")[-1] == ("mopo_core.training.jobs", 3, False)


@pytest.mark.parametrize("module", ["mopo_core", "mopo_core.tabular", "mopo_core.experiments", "mopo_core.data"])
def test_the_light_layers_import_without_torch(module):
    code = f"import sys, {module}; assert 'torch' not in sys.modules, 'torch was imported'"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
