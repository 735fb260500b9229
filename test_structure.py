"""The repository's shape: its modules import one another without a circle."""
import ast
from pathlib import Path

import registry

REPO = Path(__file__).resolve().parent


def local_imports():
    """module -> the repository's modules it imports (studies.x as studies/x.py); registry's
    importlib import of the model scripts counts as an import too."""
    files = [p for p in [*REPO.glob("*.py"), *REPO.glob("studies/*.py")]
             if not p.name.startswith(("test_", "conftest"))]
    names = {".".join(p.relative_to(REPO).with_suffix("").parts) for p in files}
    graph = {}
    for path in files:
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[module] = {name for name in imported if name in names and name != module}
    graph["registry"] |= set(registry.MODEL_NAMES)
    return graph


def test_no_module_imports_itself_through_others():
    graph = local_imports()
    assert "solver" in graph["registry"] or "mlp" in graph["registry"]

    def circle_from(start, module, path):
        for nxt in graph.get(module, ()):
            if nxt == start:
                return path + [nxt]
            if nxt not in path:
                found = circle_from(start, nxt, path + [nxt])
                if found:
                    return found
        return None

    circles = [c for c in (circle_from(m, m, [m]) for m in graph) if c]
    assert not circles, " -> ".join(circles[0])
