"""The package keeps its layers (DESIGN.md §1), counting imports inside functions too:

    cli -> train -> infer -> report / auto -> data / models -> the bottom

where the bottom is DESIGN.md's three top-level modules: config, recipes, errors. Any other
top-level module (auto.py aside) sits in no layer and may be imported by none. A module
imports from its own part (infer/ from infer/) and from the parts its rule lists, and there is
no import circle anywhere (a package __init__ importing a submodule that imports the package
back is one).

The scanner reads the source with `ast` (nothing is imported): `import clfapp.x.y`, `from
clfapp.x import y` and their relative forms, wherever they stand; `from pkg import name` counts
as importing the submodule pkg.name when there is one, else pkg itself, so a name that is
neither (a module that moved away) is reported too: that import would fail when it runs.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "app"

SUBPACKAGES = ("cli", "train", "infer", "report", "data", "models")
OWN_PART = ("auto",)    # top-level modules above the bottom: auto.py sits at the report level
BOTTOM = ("config", "recipes", "errors")
MAY_IMPORT = {
    "main": {"cli", "train", "infer", "report", "auto", "data", "models", "bottom"},
    "cli": {"train", "infer", "report", "auto", "data", "models", "bottom"},
    "train": {"infer", "report", "auto", "data", "models", "bottom"},
    "infer": {"report", "auto", "data", "models", "bottom"},
    "report": {"data", "models", "bottom"},
    "auto": {"data", "models", "bottom"},
    "data": {"bottom"},
    "models": {"bottom"},
    "bottom": set(),
    "unplaced": set(),   # a new top-level module: give it a part instead
}
"""Which other parts each part may import (its own part it always may)."""


@dataclass(frozen=True)
class Edge:
    importer: str
    target: str
    where: str          # file:line of the import statement


def modules(root: Path, package: str = "clfapp") -> dict[str, tuple[Path, bool]]:
    """{dotted name: (file, is a package __init__)} of every module under root/package."""
    found = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (f, is_package)
    return found


def _existing(name: str, known: dict) -> str | None:
    """`name` if it is a module, else the nearest enclosing module (x.y.attr -> x.y)."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _source(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute name of what `from ... import` reads from, in `module`."""
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(node, module: str, is_package: bool, known: dict, package: str) -> list[str]:
    """The package modules one import statement imports."""
    if isinstance(node, ast.Import):
        named = [a.name for a in node.names]
    else:
        source = _source(node, module, is_package)
        named = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                 for a in node.names]
    inside = [n for n in named if n == package or n.startswith(package + ".")]
    return [t for t in (_existing(n, known) for n in inside) if t]


def import_graph(root: Path, package: str = "clfapp") -> list[Edge]:
    """Every import of a package module by another, at module level or inside functions."""
    known = modules(root, package)
    edges = []
    for name, (path, is_package) in known.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _targets(node, name, is_package, known, package):
                    if target != name:
                        edges.append(Edge(name, target, f"{path.relative_to(root)}:{node.lineno}"))
    return edges


def top_level_names(path: Path) -> set[str] | None:
    """The names a module defines or imports at its top level (None when it has a `*` import,
    whose names cannot be listed without importing it)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        branches = [node]   # names bound under a top-level if / try count too
        if isinstance(node, (ast.If, ast.Try)):
            branches += node.body + node.orelse + [s for h in getattr(node, "handlers", []) for s in h.body]
        for inner in branches:
            if isinstance(inner, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(inner.name)
            elif isinstance(inner, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                targets = inner.targets if isinstance(inner, ast.Assign) else [inner.target]
                names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            elif isinstance(inner, (ast.Import, ast.ImportFrom)):
                if any(a.name == "*" for a in inner.names):
                    return None
                names |= {(a.asname or a.name).split(".")[0] for a in inner.names}
    return names


def unresolved_imports(root: Path, package: str = "clfapp") -> list[str]:
    """`from clfapp.x import name` (or relative) where name is neither a submodule of x nor a
    name x defines: a broken import the layer scan would otherwise read as importing x."""
    known = modules(root, package)
    defined = {name: top_level_names(path) for name, (path, _) in known.items()}
    out = []
    for name, (path, is_package) in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _source(node, name, is_package)
            if source not in known or defined[source] is None:
                continue
            for alias in node.names:
                if alias.name != "*" and f"{source}.{alias.name}" not in known \
                        and alias.name not in defined[source]:
                    out.append(f"{path.relative_to(root)}:{node.lineno}: {source} has no {alias.name}")
    return out


def part(module: str) -> str:
    """The part a module belongs to: cli, train, infer, report, auto, data, models, the
    bottom (config, recipes, errors), main (clfapp.__main__), or unplaced (any other
    top-level module)."""
    names = module.split(".")
    if len(names) == 1:
        return "bottom"                       # the package's own __init__
    if names[1] == "__main__":
        return "main"
    if names[1] in SUBPACKAGES or names[1] in OWN_PART:
        return names[1]
    return "bottom" if names[1] in BOTTOM else "unplaced"


def layer_violations(edges: list[Edge]) -> list[str]:
    """One line per import against the layers: where, importer -> target, and the rule."""
    out = []
    for e in edges:
        a, b = part(e.importer), part(e.target)
        if a != b and b not in MAY_IMPORT[a]:
            allowed = ", ".join(sorted(MAY_IMPORT[a])) or "nothing outside itself"
            out.append(f"{e.where}: {e.importer} -> {e.target} ({a} imports {b}; {a} may import "
                       f"only {allowed})")
    return out


@dataclass(frozen=True, order=True)
class Circle:
    way_round: tuple[str, ...]   # one shortest cycle, first module repeated at the end
    modules: tuple[str, ...]     # every module on some cycle with it

    def __str__(self) -> str:
        whole = len(self.modules) == len(self.way_round) - 1
        return " -> ".join(self.way_round) + ("" if whole else f" (the circle holds {', '.join(self.modules)})")


def circles(edges: list[Edge]) -> list[Circle]:
    """Each import circle (Tarjan's strongly connected components of more than one module),
    with a shortest way round it."""
    graph = defaultdict(set)
    for e in edges:
        graph[e.importer].add(e.target)
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(set(graph) | {t for ts in graph.values() for t in ts}):
        if v not in index:
            connect(v)
    return sorted(Circle(tuple(_way_round(min(c), c, graph)), tuple(sorted(c))) for c in components)


def _way_round(start: str, component: set, graph) -> list[str]:
    """A shortest cycle from `start` back to itself inside `component` (breadth first)."""
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return paths[v] + [start]
                if w not in paths:
                    paths[w] = paths[v] + [w]
                    following.append(w)
        frontier = following
    raise AssertionError(f"no way round {sorted(component)}")  # a component always has one


# --- the package itself ------------------------------------------------------------------------

def test_the_scanner_sees_the_whole_package():
    """A scanner that found nothing would pass the two tests below: it must see the modules
    and imports the package is known to have, inside functions too."""
    edges = import_graph(PACKAGE_ROOT)
    pairs = {(e.importer, e.target) for e in edges}
    assert len(modules(PACKAGE_ROOT)) > 60 and len(pairs) > 150
    assert ("clfapp.cli.predict", "clfapp.infer.loader") in pairs       # inside a function
    assert ("clfapp.infer.predict", "clfapp.data.images") in pairs      # `from ..data import images`
    assert ("clfapp.models.runs", "clfapp.errors") in pairs                    # `from .errors import ...`
    assert ("clfapp.__main__", "clfapp.cli.main") in pairs              # absolute


def test_every_imported_name_exists():
    bad = unresolved_imports(PACKAGE_ROOT)
    assert not bad, "imports of names that do not exist:\n" + "\n".join(bad)


def test_no_module_imports_against_the_layers():
    bad = layer_violations(import_graph(PACKAGE_ROOT))
    assert not bad, "imports against the layers (DESIGN.md §1):\n" + "\n".join(bad)


def test_there_is_no_import_circle():
    found = circles(import_graph(PACKAGE_ROOT))
    assert not found, "import circles:\n" + "\n".join(map(str, found))


# --- the scanner on a package made to break the rules ----------------------------------------

def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_scanner_names_each_violation_each_circle_and_each_missing_name(tmp_path):
    root = _write(tmp_path, {
        "clfapp/__init__.py": "",
        "clfapp/errors.py": "class UsageError(Exception): ...\n",
        "clfapp/config.py": "from .errors import UsageError\n",
        # report reaching up into infer, inside a function and relative
        "clfapp/report/__init__.py": "def write():\n    from ..infer.predict import table\n",
        "clfapp/infer/__init__.py": "",
        "clfapp/infer/predict.py": "from .. import config\n\ndef table(): ...\n",
        # data importing models, absolute, `from package import submodule`
        "clfapp/data/__init__.py": "from clfapp.models import losses\n",
        "clfapp/models/__init__.py": "",
        "clfapp/models/losses.py": "import clfapp.config\n",
        # infer.a <-> infer.b, one import inside a function
        "clfapp/infer/a.py": "from . import b\n\ndef g(): ...\n",
        "clfapp/infer/b.py": "def f():\n    from .a import g\n",
        # a package __init__ and its submodule importing each other
        "clfapp/train/__init__.py": "def fit():\n    from .checkpoint import save\n",
        "clfapp/train/checkpoint.py": "def save(): ...\n\ndef resume():\n    from . import fit\n",
        # a name the package does not have (a module that moved away)
        "clfapp/cli/__init__.py": "",
        "clfapp/cli/evaluate.py": "def run():\n    from ..report import write, runs\n",
    })
    assert unresolved_imports(root) == ["clfapp/cli/evaluate.py:2: clfapp.report has no runs"]
    edges = import_graph(root)
    bad = layer_violations(edges)
    assert len(bad) == 2, bad
    assert any(line.startswith("clfapp/report/__init__.py:2: clfapp.report -> clfapp.infer.predict "
                               "(report imports infer; report may import only bottom, data, models)")
               for line in bad), bad
    assert any("clfapp.data -> clfapp.models.losses (data imports models" in line for line in bad), bad
    found = [str(c) for c in circles(edges)]
    assert found == ["clfapp.infer.a -> clfapp.infer.b -> clfapp.infer.a",
                     "clfapp.train -> clfapp.train.checkpoint -> clfapp.train"], found


def test_the_scanner_passes_a_package_that_keeps_the_rules(tmp_path):
    root = _write(tmp_path, {
        "clfapp/__init__.py": "",
        "clfapp/__main__.py": "from clfapp.cli.main import run\n",
        "clfapp/errors.py": "",
        "clfapp/config.py": "from .errors import *\n",
        "clfapp/auto.py": "from . import config\nfrom .data import images\n",
        "clfapp/cli/__init__.py": "",
        "clfapp/cli/main.py": "def run():\n    from ..train import fit\n    from .. import auto\n",
        "clfapp/train/__init__.py": "from ..infer import predict\n\ndef fit(): ...\n",
        "clfapp/infer/__init__.py": "",
        "clfapp/infer/predict.py": "from ..report import html\nfrom .. import auto\n",
        "clfapp/report/__init__.py": "from . import html\n",
        "clfapp/report/html.py": "from ..data import images\nfrom ..models import losses\n",
        "clfapp/data/__init__.py": "",
        "clfapp/data/images.py": "from .. import config\n",
        "clfapp/models/__init__.py": "",
        "clfapp/models/losses.py": "from ..config import *\n",
    })
    edges = import_graph(root)
    assert len(edges) == 14
    assert layer_violations(edges) == [] and circles(edges) == [] and unresolved_imports(root) == []
