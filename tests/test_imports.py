"""Imports flow one way. The graph is built from the source, with imports inside functions and
``import_module("depthlab...")`` calls (an f-string prefix such as ``f"depthlab.methods.{name}"``
stands for every module under it), so an import hidden in a function cannot hide a cycle."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "depthlab"

# Bottom to top: a package may import its own layer and the layers below, never one above.
LAYERS = [
    {"registry", "fileio", "version", "stats"},
    {"models", "data", "recipes"},
    {"methods", "diagnostics"},
    {"config"},
    {"training"},
    {"diagnose_run", "demo", "report", "tracking", "integrations"},
    {"sweep"},         # the grid executor: below the experiments that will run on it
    {"experiments"},
    {"cli", "__main__", "__init__"},
]


def _modules():
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _targets(node, module, is_package, tables):
    """The depthlab module names one import node (or import_module call) names."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative import
            pkg = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(pkg[:len(pkg) - node.level + 1] + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "import_module":
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant):
            return [arg.value]
        if isinstance(arg, ast.JoinedStr) and arg.values and isinstance(arg.values[0], ast.Constant):
            return ["*" + arg.values[0].value]  # every module under this prefix
        if isinstance(arg, ast.Subscript) and isinstance(arg.value, ast.Name) and arg.value.id in tables:
            return tables[arg.value.id]  # import_module(TABLE[name]): every value of that dict literal
        if arg is not None:
            raise AssertionError(f"{module}: import_module with a computed name the graph cannot follow")
    return []


def _dict_tables(tree):
    """Module-level ``NAME = {...: "depthlab.x", ...}`` dicts, for ``import_module(NAME[key])``."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict) and len(node.targets) == 1:
            values = [v.value for v in node.value.values if isinstance(v, ast.Constant)]
            if isinstance(node.targets[0], ast.Name) and values and all(isinstance(v, str) for v in values):
                out[node.targets[0].id] = values
    return out


def import_graph():
    mods = _modules()

    def resolve(name):
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for module, path in mods.items():
        edges = set()
        tree = ast.parse(path.read_text())
        tables = _dict_tables(tree)
        for node in ast.walk(tree):
            for t in _targets(node, module, path.name == "__init__.py", tables):
                if t.startswith("*"):
                    edges |= {m for m in mods if m.startswith(t[1:]) and m != module}
                elif t == "depthlab" or t.startswith("depthlab."):
                    r = resolve(t)
                    if r and r != module:
                        edges.add(r)
        graph[module] = edges
    return graph


def find_cycle(graph):
    """A list of modules forming a cycle, or None (iterative DFS, white/grey/black)."""
    state, parent = {}, {}
    for root in graph:
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                cycle = [nxt] + [n for n, _ in stack[[n for n, _ in stack].index(nxt) + 1:]]
                return cycle + [nxt]
            elif not state.get(nxt):
                state[nxt], parent[nxt] = 1, node
                stack.append((nxt, iter(sorted(graph[nxt]))))
    return None


def test_the_graph_sees_imports_inside_functions_and_import_module_calls():
    graph = import_graph()
    assert "depthlab.training" in graph["depthlab.cli.commands"]  # commands import lazily, inside functions
    assert {"depthlab.training", "depthlab.diagnose_run"} <= graph["depthlab"]  # the lazy public API
    assert {"depthlab.methods.clip_grad_norm", "depthlab.methods.stochastic_depth"} <= graph["depthlab.methods"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _layer(module):
    top = module.split(".")[1] if "." in module else "__init__"
    return next(i for i, layer in enumerate(LAYERS) if top in layer)


def test_layers_import_only_downwards():
    graph = import_graph()
    upward = sorted(f"{m} -> {t}" for m, ts in graph.items() for t in ts
                    if m != "depthlab" and _layer(t) > _layer(m))
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_every_package_has_a_layer():
    tops = {m.split(".")[1] for m in _modules() if "." in m}
    assert tops <= set().union(*LAYERS), f"add {sorted(tops - set().union(*LAYERS))} to LAYERS"


@pytest.mark.parametrize("code,forbidden", [
    ("from depthlab.config import RunConfig; RunConfig().validate()",
     ("depthlab.training", "depthlab.diagnostics", "depthlab.experiments", "depthlab.report", "depthlab.sweep")),
    ("import depthlab.models, depthlab.methods, depthlab.data", ("depthlab.config", "depthlab.training")),
])
def test_lower_layers_load_without_the_higher_ones(code, forbidden):
    probe = f"import sys; {code}; print(sorted(m for m in sys.modules if m.startswith('depthlab')))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = eval(out)
    assert not [m for m in loaded if m.startswith(forbidden)], loaded


def test_no_private_name_is_imported_from_another_module():
    """A helper another module needs is public in the module that owns it (``from x import _y`` of a
    depthlab module is refused; ``import ... as _alias`` of a public name is fine)."""
    found = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("depthlab") or (
                    isinstance(node, ast.ImportFrom) and node.level):
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{module}: from {'.' * node.level}{node.module or ''} import {alias.name}")
    assert found == []
