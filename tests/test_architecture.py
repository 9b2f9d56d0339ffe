"""Package structure: no import circles between ivref modules; every config field is used."""

import ast
import dataclasses

from ivref import configs


def _imports(root):
    """{module: set of ivref modules it imports anywhere in its body, lazily included}."""
    graph = {}
    for path in sorted((root / "ivref").glob("*.py")):
        name = path.stem
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "ivref":
                    found |= {alias.name for alias in node.names}
                elif node.module.startswith("ivref."):
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("ivref.")}
        graph[name] = found - {name, "__init__"}
    return graph


def _cycle(graph):
    """One import cycle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles(repo_root):
    graph = _imports(repo_root)
    assert {"train", "cli", "video", "data", "files"} <= set(graph)
    assert _cycle(graph) is None, f"import circle: {' -> '.join(_cycle(graph))}"
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the check works


def test_every_config_field_is_read_by_the_code_it_describes(repo_root):
    """A field only the config modules mention configures nothing: read it or remove it."""
    sources = {
        p.name: p.read_text()
        for p in (repo_root / "ivref").glob("*.py")
        if p.name not in ("configs.py", "config_types.py", "__init__.py")
    }
    unread = []
    for cls in (
        configs.UNetConfig,
        configs.TextConfig,
        configs.DiffusionConfig,
        configs.TrainConfig,
        configs.DistillConfig,
        configs.StageConfig,
        configs.CascadeConfig,
    ):
        for field in dataclasses.fields(cls):
            if not any(f".{field.name}" in text for text in sources.values()):
                unread.append(f"{cls.__name__}.{field.name}")
    assert not unread, f"config fields nothing reads: {unread}"
