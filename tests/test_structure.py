"""The shape of src/trickster: no import cycle (imports inside functions count; `if TYPE_CHECKING:`
ones do not), no function over 80 lines, no module over 450."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src"
MODULES = {
    ".".join(path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__"): path
    for path in sorted((SRC / "trickster").rglob("*.py"))
}
MAX_FUNCTION, MAX_MODULE = 80, 450


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(module: str, tree: ast.AST) -> set[str]:
    """The trickster modules `module` imports anywhere in its body."""
    found, stack = set(), [tree]
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        stack.extend(ast.iter_child_nodes(node))
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    [*package.split(".")[: len(package.split(".")) - node.level + 1], base]
                ).strip(".")
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES and name != module}


def import_graph() -> dict[str, set[str]]:
    return {
        name: _imports(name, ast.parse(path.read_text(encoding="utf-8"))) for name, path in MODULES.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import cycle once, as the path that closes it."""
    found, done = [], set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node) :]
            if not any(set(cycle) == set(c) for c in found):
                found.append([*cycle, node])
            return
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    return found


def long_functions() -> list[str]:
    too_long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION:
                    too_long.append(f"{name}.{node.name} ({length} lines)")
    return too_long


def long_modules() -> list[str]:
    lengths = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    return [f"{name} ({n} lines)" for name, n in lengths.items() if n > MAX_MODULE]


def test_no_import_cycle():
    assert not cycles(import_graph())


def test_the_cycle_finder_finds_a_lazy_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert "trickster.commands" in import_graph()["trickster.cli"]  # an import inside a function


def test_no_function_over_80_lines():
    assert not long_functions()


def test_no_module_over_450_lines():
    assert not long_modules()


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    """Every module `start` imports, directly or through others."""
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    return seen


def test_the_metrics_schema_imports_nothing_of_training():
    """train/ writes its events through observe/events.py, which every reader imports: events.py
    reaching back into train/ (once for the failed-write advice of train/checkpoint.py) would load
    the trainer's modules into each reader and tie the schema to the trainer's files."""
    reached = reachable(import_graph(), "trickster.observe.events")
    assert sorted(name for name in reached if name.startswith("trickster.train")) == []


def test_the_model_imports_nothing_of_training():
    """model/ is what generate, serve, export and eval load; train/ builds on it. The model's code
    reaching into train/ (generate.py once took the inference dtype from train/device.py) would
    load the trainer's modules into each of them and make the two packages one."""
    graph = import_graph()
    for module in (name for name in graph if name.startswith("trickster.model")):
        assert sorted(name for name in reachable(graph, module) if name.startswith("trickster.train")) == []


def private_names_used_elsewhere() -> list[str]:
    """`from trickster.m import _name` and `m._name` (m a trickster module) outside m itself."""
    found = []
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        modules = {}  # the names this module binds to trickster modules
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trickster"):
                for alias in node.names:
                    if f"{node.module}.{alias.name}" in MODULES:
                        modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    elif alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{name} imports {node.module}.{alias.name}")
            elif isinstance(node, ast.Import):
                modules.update({a.asname: a.name for a in node.names if a.asname and a.name in MODULES})
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                private = node.attr.startswith("_") and not node.attr.startswith("__")
                if private and node.value.id in modules:
                    found.append(f"{name} uses {modules[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_another_s_private_names():
    """A name with a leading underscore is its module's own: one another module needs gets a
    public home (records.py imported sources._json_line, until data/json_records.py)."""
    assert private_names_used_elsewhere() == []
