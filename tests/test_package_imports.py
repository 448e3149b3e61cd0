"""The package stands alone: no module of `segearth_jax` imports the `data` folder (the dataset
command lines), which depends on the package, never the other way round."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Imports every module under segearth_jax, then lists the `data` modules that got loaded.
PROBE = """
import importlib, pkgutil, sys
import segearth_jax
names = [m.name for m in pkgutil.walk_packages(segearth_jax.__path__, "segearth_jax.")]
for name in names:
    importlib.import_module(name)
print(len(names))
print(sorted(m for m in sys.modules if m == "data" or m.startswith("data.")))
"""


def test_importing_segearth_jax_loads_no_data_module():
    proc = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n_modules, loaded = proc.stdout.strip().splitlines()[-2:]
    assert int(n_modules) > 20, proc.stdout  # The walk found the package's modules.
    assert loaded == "[]", f"importing segearth_jax loads {loaded}"


def test_no_segearth_jax_source_imports_data():
    """Also the imports inside functions, which importing the modules does not run."""
    found = []
    for path in sorted((REPO / "segearth_jax").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            found += [f"{path.relative_to(REPO)}:{node.lineno} {n}" for n in names
                      if n == "data" or n.startswith("data.")]
    assert not found, f"segearth_jax imports the data folder: {found}"


def _import_graph(folders: tuple[str, ...] = ("segearth_jax",)) -> dict[str, set[str]]:
    """module -> the modules it imports (anywhere in the file, inside functions too), for the
    modules of the repository's `folders`; `from segearth_jax.x import y` counts as an edge to
    `segearth_jax.x.y` when that is a module, else to `segearth_jax.x`. Edges to modules outside
    `folders` and the standard or third-party libraries are left out."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p
               for folder in folders for p in (REPO / folder).rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                edges |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                edges |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                          else node.module for a in node.names}
        graph[name] = {e for e in edges if e in modules} - {name}
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_layering_data_and_losses_never_reach_the_models():
    """`input`, `losses` and `metrics` depend on shared constants and ops (`constants`,
    `resample`), never on the network modules; `testing` never on the trainer; core code on
    `errors`, the programs' `cli` only formats them."""
    graph = _import_graph()
    assert "segearth_jax.models.phi" in graph and "segearth_jax.input.settings" in graph
    bad = {}
    for name in graph:
        if name.startswith("segearth_jax.input") or name in ("segearth_jax.losses",
                                                               "segearth_jax.metrics"):
            models = sorted(m for m in _reachable(graph, name)
                            if m.startswith("segearth_jax.models"))
            if models:
                bad[name] = models
    assert not bad, f"data/loss modules that reach the network modules: {bad}"
    assert "segearth_jax.train" not in _reachable(graph, "segearth_jax.testing")
    assert "segearth_jax.input.batch" in graph["segearth_jax.train"]
    # The error classes live below everything; cli only re-exports them for the programs.
    assert graph["segearth_jax.errors"] == set()
    import segearth_jax.cli as cli
    import segearth_jax.errors as errors

    assert cli.BadValue is errors.BadValue and cli.UserError is errors.UserError


def test_no_library_call_marks_absl_flags_parsed():
    """Only a program's entry point (cli.py) may mark absl's global flags parsed."""
    found = [str(p.relative_to(REPO)) for p in (REPO / "segearth_jax").rglob("*.py")
             if "mark_as_parsed" in p.read_text() and p.name != "cli.py"]
    assert not found, found


# The programs: the modules with a command-line `main` (a `cli.entry_point`), the only ones that
# may import `segearth_jax.cli`. Everything else (library code, including the library parts the
# programs import from each other, e.g. `export.write_model`, `predict.predict`) raises the
# classes of `segearth_jax.errors` and never formats them. Scene mode's command line is
# `segearth_jax.predict --scene`; `convert.common` and `data.scenes`/`data.instructions` are
# libraries of the converters and the dataset programs.
PROGRAMS = {
    "segearth_jax.app", "segearth_jax.evaluate", "segearth_jax.export", "segearth_jax.generate",
    "segearth_jax.predict", "segearth_jax.train",
    "convert.mask2former", "convert.mipha", "convert.segearth_r2", "convert.swin",
    "convert.tiny_mipha", "data.builders", "data.synthetic",
}


def test_only_the_programs_import_cli():
    graph = _import_graph(("segearth_jax", "convert", "data"))
    assert "convert.common" in graph and "data.scenes" in graph  # the walk saw the folders
    importers = {m for m, edges in graph.items() if "segearth_jax.cli" in edges}
    assert importers - PROGRAMS == set(), (
        f"library modules that import segearth_jax.cli (raise segearth_jax.errors classes "
        f"instead): {sorted(importers - PROGRAMS)}")
    # Each program named does import it (a program dropped or renamed updates the list).
    assert PROGRAMS - importers == set(), sorted(PROGRAMS - importers)
