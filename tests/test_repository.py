"""The repository stands on its own (no file refers to a path outside it), its package
imports run one way (no cycle) and no function of it is over 80 lines."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = ".." + "/shared"   # the development folder beside the checkout


def test_no_tracked_file_names_a_path_outside_the_repository():
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    offenders = [name for name in files if name and (ROOT / name).is_file()
                 and OUTSIDE in (ROOT / name).read_text(encoding="utf-8", errors="ignore")]
    assert offenders == []


def _package_imports() -> dict[str, set[str]]:
    """Each module of animalvae/ and the modules of animalvae/ it imports (read with ast)."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "animalvae").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]                        # a module's package, or __init__'s own
        name = ".".join(parts if parts[-1] != "__init__" else package)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                deps.add(module)
                deps.update(f"{module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_module_of_the_package_imports_itself_round_a_cycle():
    graph, state, cycles = _package_imports(), {}, []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert graph["animalvae.sound.generate"] >= {"animalvae.sound.sampler"}   # the graph is read
    assert cycles == []


MAX_FUNCTION_LINES = 80


def _long_functions(source: str, name: str) -> list[str]:
    """``name:line function (N lines)`` for each function of ``source`` over the limit (ast)."""
    import ast

    return [f"{name}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]


def test_the_length_check_counts_every_line_of_a_method():
    body = "".join(f"        x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES - 1))
    method = f"class A:\n    def f(self):\n{body}"                 # 80 lines with its def
    assert _long_functions(method, "a.py") == []
    assert _long_functions(method + "        y = 0\n", "a.py") == ["a.py:2 f (81 lines)"]


def test_no_function_of_the_package_is_over_80_lines():
    found = [hit for path in sorted((ROOT / "animalvae").rglob("*.py"))
             for hit in _long_functions(path.read_text(encoding="utf-8"),
                                        str(path.relative_to(ROOT)))]
    assert found == []
