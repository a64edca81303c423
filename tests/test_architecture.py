"""The layout's rules, checked on the source: data flows phoenix_torch -> export -> serving, the import graph
has no cycle and no arrow from export to serving, the modules the build copies into a model repository
import nothing of this project, no private name crosses a module, and a fresh clone alone passes its tests."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phoenix_torch", "export", "serving", "benchmarks")
COPIED = {"export/contract.py", "export/runtime.py", "serving/batching.py", "serving/scoring.py"}
RUNTIMES = {"onnxruntime", "torch", "tensorrt"}


def modules() -> dict[str, Path]:
    return {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
            for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, imported names) of a module, relative imports resolved."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            mod = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
            out.append((mod, [a.name for a in node.names]))
    return out


def project_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {m: set() for m in mods}
    for m, path in mods.items():
        for target, names in imports(m, path):
            for candidate in [target, *(f"{target}.{n}" for n in names)]:
                if candidate in mods and candidate != m:
                    graph[m].add(candidate)
    return graph


def test_data_flows_one_way():
    for m, deps in project_graph().items():
        top = m.split(".")[0]
        tops = {d.split(".")[0] for d in deps}
        if top == "phoenix_torch":
            assert tops <= {"phoenix_torch"}, f"{m} imports {deps}"
        if top == "export":
            assert "serving" not in tops and "benchmarks" not in tops, f"{m} imports {deps}"
        if top == "serving":
            assert "benchmarks" not in tops, f"{m} imports {deps}"


def test_the_import_graph_has_no_cycle():
    graph, state, stack = project_graph(), {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_copied_modules_import_nothing_of_this_project():
    """The build copies these into the repository (export.contract.SERVING_PACKAGES): only the standard library,
    numpy, their own package (relative imports) and an engine's runtime, imported where it is used."""
    import sys as _sys
    stdlib = set(_sys.stdlib_module_names)
    for rel in COPIED:
        path = ROOT / rel
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                assert n.split(".")[0] in stdlib | {"numpy"} | RUNTIMES, f"{rel} imports {n}"


def test_the_feature_declaration_needs_no_torch():
    for target, _ in imports("phoenix_torch.features", ROOT / "phoenix_torch" / "features.py"):
        assert target.split(".")[0] not in ("torch", "numpy"), target


def test_no_private_name_crosses_a_module():
    mods = modules()
    for m, path in mods.items():
        for target, names in imports(m, path):
            if target.split(".")[0] in PACKAGES or target.startswith("."):
                private = [n for n in names if n.startswith("_") and n != "__future__"]
                assert not private, f"{m} imports private {private} from {target}"


def test_a_fresh_clone_alone_passes_the_golden_tests(tmp_path):
    """Clone the committed tree into an empty folder (nothing beside it, no ../shared) and run the golden
    tests and the golden CLI there: the fixtures travel with the code."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    clone = tmp_path / "empty" / "phoenix"
    subprocess.run(["git", "clone", "--quiet", "--depth", "1", f"file://{ROOT}", str(clone)], check=True,
                   timeout=300)
    assert sorted(p.name for p in clone.parent.iterdir()) == ["phoenix"]
    env = {k: v for k, v in os.environ.items() if k not in ("PHOENIX_GOLDEN_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(clone)     # the clone's packages, not this checkout's
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_golden.py"],
                           cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert tests.returncode == 0, tests.stdout[-2000:] + tests.stderr[-2000:]
    assert " passed" in tests.stdout and "skipped" not in tests.stdout
    files = sorted(str(p.relative_to(clone)) for p in (clone / "tests" / "golden").rglob("*.npz")
                   if "artifacts" not in str(p))
    cli = subprocess.run([sys.executable, "-m", "phoenix_torch.golden", *files], cwd=clone, env=env,
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0 and "golden: all ok" in cli.stdout, cli.stdout[-2000:]
