"""The repository stands on its own (no file refers to a path outside it), its package imports
run one way (no cycle), take only public names from one another and keep stage 5's rooms off
stage 3's detector, and no function of it is over 80 lines."""

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


def _imports_from_the_package() -> list[tuple[str, str, list[str]]]:
    """``(module, imported module, names)`` for every ``from ... import`` inside animalvae/."""
    import ast

    found = []
    for path in sorted((ROOT / "animalvae").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        package = parts[:-1]
        name = ".".join(parts if parts[-1] != "__init__" else package)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = package[:len(package) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                if module.split(".")[0] == "animalvae":
                    found.append((name, module, [a.name for a in node.names]))
    return found


def test_no_module_of_the_package_imports_a_private_name_from_another():
    """A name starting with ``_`` belongs to its module: one another module needs is public
    (dunders such as ``__version__`` are public)."""
    found = _imports_from_the_package()
    offenders = [f"{module} imports {name} from {source}" for module, source, names in found
                 for name in names if name.startswith("_") and not name.endswith("__")]
    assert ("animalvae.image.model", "animalvae.sound.model") in {(m, s) for m, s, _ in found}
    assert offenders == []


def test_stage_5_reads_audio_through_the_stage_neutral_modules_not_stage_3s_detector():
    """The rule: nothing in the rooms of stage 5 (sound, image, evaluation, training) imports
    stage 3's detector (detect, detect_stage, cnn14) or the PANNs model (panns), except the
    evaluation's PANNs figures (evaluation/quality: FAD on PANNs embeddings, a judge); the
    loudest window of a clip and audio reading live in animalvae/audio.py for every stage."""
    stage_3 = {f"animalvae.{m}" for m in ("detect", "detect_stage", "cnn14", "panns")}
    rooms = tuple(f"animalvae.{room}" for room in ("sound", "image", "evaluation", "training"))
    allowed = {("animalvae.evaluation.quality", "animalvae.panns")}
    found = _imports_from_the_package()
    offenders = [(module, target) for module, source, names in found if module.startswith(rooms)
                 for target in {source, *(f"{source}.{n}" for n in names)} & stage_3
                 if (module, target) not in allowed]
    assert ("animalvae.image.sound_to_image", "animalvae.audio") in {(m, s) for m, s, _ in found}
    assert offenders == []


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
