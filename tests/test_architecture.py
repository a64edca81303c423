"""The layout's rules, checked on the source: data flows phoenix_runtime -> phoenix_torch -> export -> serving ->
benchmarks (and phoenix_runtime -> the Triton models), the import graph has no cycle and no upward arrow, the
runtime package (copied whole into every model repository) imports only the standard library, numpy and, inside
functions, an engine runtime, the Triton models import only the runtime package, no private name crosses a
module, and a fresh clone alone passes its tests."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("phoenix_runtime", "phoenix_torch", "export", "serving", "benchmarks")
# Each layer may import the layers before it (and itself), never one after it.
LAYERS = ("phoenix_runtime", "phoenix_torch", "export", "serving", "benchmarks")
RUNTIMES = {"onnxruntime", "torch", "tensorrt", "faiss", "triton_python_backend_utils"}   # imported inside functions
TRITON_MODELS = sorted((ROOT / "triton_repo").glob("*/1/model.py"))


def modules() -> dict[str, Path]:
    out = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
           for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    out.update({f"triton_repo.{p.parts[-3]}": p for p in TRITON_MODELS})     # the Triton models are nodes too
    return out


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
        if top == "triton_repo":
            assert {d.split(".")[0] for d in deps} <= {"phoenix_runtime"}, f"{m} imports {deps}"
            continue
        allowed = set(LAYERS[:LAYERS.index(top) + 1])
        upward = {d for d in deps if d.split(".")[0] not in allowed}
        assert not upward, f"{m} imports {sorted(upward)}, a later layer than {top}"


def test_the_triton_models_import_only_the_runtime_package():
    """Each model.py: the standard library, numpy, triton_python_backend_utils, phoenix_runtime by its own name and
    (retrieval's index) an engine runtime."""
    stdlib = set(sys.stdlib_module_names)
    for path in TRITON_MODELS:
        tops = {t.split(".")[0] for t, _ in imports("model", path)}
        assert "phoenix_runtime" in tops, f"{path} does not use the runtime package"
        assert tops <= stdlib | RUNTIMES | {"numpy", "triton_python_backend_utils", "phoenix_runtime"}, \
            f"{path} imports {tops}"


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


def test_the_runtime_package_imports_only_the_standard_library_and_numpy():
    """phoenix_runtime is copied whole into every model repository, which serves without this project: its modules
    import the standard library, numpy and each other; an engine runtime (onnxruntime, torch, tensorrt, faiss)
    only inside the function that needs it."""
    stdlib = set(sys.stdlib_module_names)
    for path in sorted((ROOT / "phoenix_runtime").glob("*.py")):
        tree = ast.parse(path.read_text())
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) else []
            for n in names:
                top = n.split(".")[0]
                if top in RUNTIMES:
                    assert id(node) not in top_level, f"{path.name} imports {n} at module level"
                    continue
                assert top in stdlib | {"numpy", "phoenix_runtime"}, f"{path.name} imports {n}"


def test_the_build_copies_the_runtime_package_whole_under_its_own_name(demo_repo):
    """Every Python-backend model folder of a build holds model.py and phoenix_runtime/, file for file the tree's
    package (no renamed copy, no extra module)."""
    tree = {p.name: p.read_bytes() for p in (ROOT / "phoenix_runtime").glob("*.py")}
    folders = [p.parent for p in demo_repo.glob("*/1/model.py")]
    assert folders
    for folder in folders:
        sources = {str(p.relative_to(folder)) for p in folder.rglob("*.py")}
        assert sources == {"model.py", *(f"phoenix_runtime/{n}" for n in tree)}, folder
        for name, data in tree.items():
            assert (folder / "phoenix_runtime" / name).read_bytes() == data, f"{folder}/phoenix_runtime/{name}"


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


def test_every_model_source_the_build_copies_is_committed():
    """triton_repo/ is mostly build output (git-ignored): each model.py the build copies must be tracked, or a fresh
    clone cannot build."""
    if not (ROOT / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    from export.repository import PYTHON_SOURCE, SOURCES

    tracked = set(subprocess.run(["git", "ls-files", "triton_repo"], cwd=ROOT, capture_output=True, text=True,
                                 check=True).stdout.split())
    needed = {str((SOURCES / folder / "1" / "model.py").relative_to(ROOT)) for folder in PYTHON_SOURCE.values()}
    assert needed <= tracked, f"not committed: {sorted(needed - tracked)}"
