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
