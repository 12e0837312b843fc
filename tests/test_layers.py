"""The house's layers (DESIGN.md): imports go only downward, and nothing closes a circle.

Every `import doremi_jax...` in the package counts, those inside functions too (a lazy
import is still a dependency).
"""

import ast
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "doremi_jax")

# Lowest first. Within the middle layers (data, eval, train) a module may import its own
# layer only inside its own sub-package (data.sampler -> data.streams); the bottom's
# modules (metrics -> fileio) and the entries (cli -> config) may use their own layer.
# No circle anywhere (the second test).
LAYERS = [
    {"models", "dro", "sharding", "hosts", "fileio", "hardware", "quiet", "losses", "checkpoints", "metrics",
     "errors", "faults", "jit_cache"},
    {"config"},  # gin parsing only: below everything gin configures
    {"data"},
    {"eval"},
    {"train"},
    {"stages", "comparison"},  # the pipeline's pieces that name no method
    {"report"},
    {"methods"},  # one folder per mixture method, and their registry
    {"configurables", "cli", "pipeline", "bench", "evaluate", "aot", "__init__"},
]


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return rel[: -len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
    found = {}
    for root, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                found[_module_name(path)] = path
    return found


def _imports(path: str, modules: dict[str, str]) -> set[str]:
    """The package's modules that the file imports (a `from package import name` of a
    submodule counts as that submodule)."""
    tree = ast.parse(open(path).read())
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in modules:
                out.add(name)
    # `from doremi_jax.data import corpus` lists both doremi_jax.data and its submodule:
    # keep the package only when nothing under it was named.
    return {m for m in out if not any(o.startswith(m + ".") for o in out)}


def _layer(module: str) -> int:
    if module.endswith(".__main__"):  # `python -m doremi_jax.train`: an entry
        return len(LAYERS) - 1
    part = module.split(".")[1] if "." in module else "__init__"
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/test_layers.py (add it where it belongs)")


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _graph():
    modules = _modules()
    return {m: _imports(path, modules) - {m} for m, path in modules.items()}


def test_imports_go_only_downward():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            if target == "doremi_jax" or _package(target) == _package(module):
                continue
            same_layer_ok = _layer(module) in (0, len(LAYERS) - 1)
            if _layer(target) > _layer(module) or (_layer(target) == _layer(module) and not same_layer_ok):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that do not go down a layer: " + ", ".join(sorted(upward))


def test_no_import_circles():
    graph = _graph()
    state, circles = {}, []

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                circles.append(" -> ".join(path[path.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles: " + "; ".join(circles)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The checks can fail: a data module importing train is caught."""
    modules = _modules()
    planted = tmp_path / "planted.py"
    planted.write_text("from doremi_jax.train import loop\n")
    targets = _imports(str(planted), modules)
    assert targets == {"doremi_jax.train.loop"}
    assert _layer("doremi_jax.train.loop") >= _layer("doremi_jax.data.planted")


def test_the_loop_names_no_mixture_method():
    """The loop asks the trainer's plug-in (train/mixture.py); a method-specific branch is a regression."""
    import re

    from doremi_jax import methods

    plugins = [t for name in methods.names() for t in methods.get(name).trainers]
    source = open(os.path.join(PACKAGE, "train", "loop.py")).read().replace("doremi_jax", "")
    for method in plugins:  # a plug-in's class, or the function that builds it
        for name in {method.__name__, getattr(method, "name", method.__name__), "dro", "bandit"}:
            assert not re.search(rf"\b{re.escape(name)}\b", source, re.IGNORECASE), f"train/loop.py names {name!r}"
