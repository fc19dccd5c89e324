"""The repository stands on its own (no file refers to a path outside it), and its package
imports run one way (no cycle)."""

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


def test_no_test_file_imports_another():
    """What test files share lives in helper modules (conftest.py, media.py, vae_runs.py, ...)."""
    import ast

    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.split(".")[-1].startswith("test_")]
    assert offenders == []


def test_the_readme_is_short_and_its_links_and_the_docs_links_lead_somewhere():
    import re

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 300
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if not re.match(r"[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.name}: {target}")
    assert broken == []
