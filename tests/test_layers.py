"""The package's shape: no import cycles among its own modules (function-local imports counted), imports
that flow one way through the layers core → data → measure → training → study/bench, and no
function-local import of the package's own modules (a hidden cycle's usual disguise)."""

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lebm_jax"

# Lower layers never import higher ones (docs/architecture.md). The facades keep public import paths.
LAYERS = {"core": 0, "data": 1, "measure": 2, "training": 3, "study": 4, "bench": 4, "api": 5, "config": 5}
# What may be imported inside a function, with a `# local: <reason>` comment: heavy optional libraries,
# and JAX's private internals (so that the package still imports if one of them moves).
LOCAL_ALLOWED = {"tensorflow", "tensorflow_datasets", "torch", "sklearn", "jax._src"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(name: str) -> str | None:
    """The package module ``name`` refers to (``a.b.C`` -> ``a.b`` when C is not a module), or None."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(path: Path) -> list[tuple[str, int, bool, str]]:
    """(imported name, line, inside a function?, source line) for every import statement of a file."""
    tree = ast.parse(path.read_text())
    lines = path.read_text().splitlines()
    out = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function, lines[child.lineno - 1]) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                for a in child.names:  # `from pkg import mod` imports pkg.mod when it is a module
                    out.append((f"{child.module}.{a.name}", child.lineno, in_function, lines[child.lineno - 1]))
            visit(child, inside)

    visit(tree, False)
    return out


def graph() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = {resolve(imported) for imported, *_ in imports(path) if imported.startswith("lebm_jax.")}
        edges[name] = {t for t in targets if t and t != name}
    return edges


def layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_the_walk_sees_every_layer():
    assert len(MODULES) > 40
    assert {m.split(".")[1] for m in MODULES if "." in m} == set(LAYERS)
    edges = graph()
    assert "lebm_jax.core.objectives" in edges["lebm_jax.training.step"]  # a known edge is found


def test_no_import_cycles():
    edges = graph()
    # Tarjan's strongly connected components: any component of two or more modules is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def connect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            connect(v)
    assert not cycles, f"import cycles among the package's modules: {cycles}"


def test_imports_flow_down_the_layers():
    bad = []
    for module, targets in graph().items():
        if module == "lebm_jax":  # the package's own __init__ re-exports the core only
            bad += [f"lebm_jax -> {t}" for t in targets if layer(t) != 0]
            continue
        here = layer(module)
        bad += [f"{module} -> {t}" for t in targets if layer(t) is not None and layer(t) > here]
    assert not bad, "imports up the layers:\n" + "\n".join(bad)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_function_local_imports_are_only_heavy_optional_ones_with_a_reason(module):
    bad = []
    for imported, line, in_function, source in imports(MODULES[module]):
        if not in_function:
            continue
        top = imported.split(".")[0]
        allowed = any(imported == a or imported.startswith(a + ".") for a in LOCAL_ALLOWED)
        if top == "lebm_jax":
            bad.append(f"line {line}: the package's own {imported} inside a function")
        elif not allowed or "# local:" not in source:
            bad.append(f"line {line}: {source.strip()!r} (only {sorted(LOCAL_ALLOWED)}, with '# local: <reason>')")
    assert not bad, "\n".join(bad)


def test_module_maps_name_every_module():
    """Each package's docstring is its map: it names every module in it (the root names every layer)."""
    missing = []
    for package, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        children = {p.stem for p in path.parent.glob("*.py") if p.stem != "__init__"}
        children |= {p.name for p in path.parent.iterdir() if (p / "__init__.py").is_file()}
        missing += [f"{package}: {c}" for c in sorted(children) if c not in doc]
    assert not missing, "modules missing from their package's map:\n" + "\n".join(missing)


def test_design_references_point_to_sections_of_the_design_document():
    """Every "design.md §N" cited in code, configs, tests and docs is a section of docs/design.md."""
    repo = PACKAGE.parent
    design = (repo / "docs" / "design.md").read_text()
    sections = set(re.findall(r"^## §(\d+)", design, flags=re.M))
    cited = {}
    for path in [*repo.glob("lebm_jax/**/*.py"), *repo.glob("configs/*.py"), *repo.glob("experiments/*.py"),
                 *repo.glob("tests/*.py"), *repo.glob("docs/*.md"), repo / "README.md"]:
        for number in re.findall(r"design\.md §(\d+)", path.read_text()):
            cited.setdefault(number, set()).add(str(path.relative_to(repo)))
    assert len(cited) >= 5 and {"3", "4", "5", "6", "8"} <= set(cited), cited
    assert set(cited) <= sections, {n: files for n, files in cited.items() if n not in sections}
    assert "DESIGN" not in "".join(p.read_text() for p in repo.glob("lebm_jax/**/*.py"))
