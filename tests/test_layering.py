"""The packages layer as the README says: found by reading the imports in the source, not by running it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE_DRAWING = set("│├└─ ")
# producer/cli.py's `worker` command starts a worker in its own process: the only allowed crossing.
PRODUCER_MAY_IMPORT_WORKER = {("producer/cli.py", "worker.__main__")}
MAY_IMPORT_TESTING = {"producer/demo.py"}  # the demo builds a tiny model to run on
RUNTIME = ("jobs/engine", "jobs/tasks", "jobs/io", "worker", "producer")


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function, as a dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py"))


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_producer_imports_nothing_from_the_worker() -> None:
    crossings = {(str(path.relative_to(ROOT)), name) for path in modules("producer")
                 for name in imports(path) if within(name, "worker")}
    unexpected = {(path, name) for path, name in crossings
                  if not any(path == allowed_path and within(name, allowed)
                             for allowed_path, allowed in PRODUCER_MAY_IMPORT_WORKER)}
    assert unexpected == set()
    assert modules("producer") and crossings  # the scan sees the one allowed crossing, so it does read imports


def test_jobs_never_imports_celery() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imports(path) if within(n, "celery")
                                                    or within(n, "kombu"))
                 for path in modules("jobs")}
    assert {path: names for path, names in offenders.items() if names} == {}


def test_runtime_code_does_not_import_the_test_helpers() -> None:
    offenders = {str(path.relative_to(ROOT)): sorted(n for n in imports(path) if within(n, "jobs.testing"))
                 for path in modules(*RUNTIME)}
    found = {path: names for path, names in offenders.items() if names}
    assert set(found) <= MAY_IMPORT_TESTING, found
    assert "producer/demo.py" in found  # the scan would see an offender


def test_the_scan_sees_imports_inside_functions(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from worker.app import make_app\n    import jobs.testing.tiny\n")
    assert {"os", "worker.app", "worker.app.make_app", "jobs.testing.tiny"} <= imports(module)


def tree_paths(text: str) -> set[str]:
    """The paths an annotated tree (``├── name   what it is``) names, folders ending in ``/``."""
    paths: set[str] = set()
    stack: list[str] = []
    for line in text.splitlines():
        body = line[next((i for i, ch in enumerate(line) if ch not in TREE_DRAWING), len(line)):]
        if not body or body.startswith("```"):
            continue
        depth = (len(line) - len(body)) // 4
        name = body.split()[0]
        stack = stack[:depth] + [name]
        paths.add("".join(stack))
    return paths


def readme_tree() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Layout of the code", 1)[1].split("\n### ", 1)[0]
    return section.split("```text", 1)[1].split("```", 1)[0]


def test_the_readme_tree_names_every_module_and_nothing_else() -> None:
    listed = tree_paths(readme_tree())
    modules_here = {str(p.relative_to(ROOT)) for p in modules("batchformers", "jobs", "producer", "worker", "bench")
                    if p.name != "__init__.py" or p.parent.name in ("readers", "tiny", "batchformers")}
    assert sorted(modules_here - listed) == []  # a new module gets its line
    assert sorted(p for p in listed if p.endswith(".py") and p not in modules_here) == []  # no stale line
    assert (ROOT / "CONTRIBUTING.md").read_text().count(readme_tree()) == 1  # the same tree in both


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(*folders: str) -> dict[str, set[str]]:
    """Module -> the modules of ``folders`` it imports (a name resolves to its longest known module)."""
    known = {module_name(path): path for path in modules(*folders)}
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        targets = set()
        for imported in imports(path):
            parts = imported.split(".")
            found = next((".".join(parts[:k]) for k in range(len(parts), 0, -1) if ".".join(parts[:k]) in known), None)
            if found is not None and found != name:
                targets.add(found)
        graph[name] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = [stack.pop()]
            while group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_itself_through_others() -> None:
    assert circles(import_graph("batchformers", "jobs", "producer", "worker")) == []


def test_the_public_api_and_jobs_import_nothing_above_them() -> None:
    """jobs/ sees neither producer/, worker/ nor batchformers/; worker/ sees neither producer/ nor the
    public API (a worker sends shards through jobs.dispatch); batchformers/ never reaches a worker."""
    below = {"jobs": ("producer", "worker", "batchformers"), "batchformers": ("worker",),
             "worker": ("producer", "batchformers")}
    crossings = {(str(path.relative_to(ROOT)), name) for package, above in below.items() for path in modules(package)
                 for name in imports(path) if any(within(name, other) for other in above)}
    assert crossings == set()


def test_the_circle_scan_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []
