"""What `pip install .` puts into site-packages: the library only (configs/, convert/, data/,
experiments/ and tests/ stay folders of the checkout), with the console scripts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_only_the_library_is_installed(tmp_path):
    # A copy of the checkout's folders, so that the build leaves nothing in the checkout.
    src = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("segearth_jax", "configs", "convert", "data", "experiments", "tests"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), str(src)],
                   check=True, capture_output=True, text=True, cwd=tmp_path)
    top = {p.name for p in target.iterdir()}
    assert "segearth_jax" in top
    assert not top & {"configs", "convert", "data", "experiments", "tests"}, sorted(top)
    assert (target / "segearth_jax" / "models" / "phi.py").is_file()
    (dist,) = target.glob("segearth_jax-*.dist-info")
    scripts = (dist / "entry_points.txt").read_text()
    for name, target_fn in (("segearth-train", "segearth_jax.train:run"),
                            ("segearth-evaluate", "segearth_jax.evaluate:run"),
                            ("segearth-predict", "segearth_jax.predict:main"),
                            ("segearth-generate", "segearth_jax.generate:main"),
                            ("segearth-app", "segearth_jax.app:main")):
        assert f"{name} = {target_fn}" in scripts
    # The installed copy runs outside the checkout (it imports nothing from configs/ etc.).
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import segearth_jax; "
             "assert segearth_jax.__file__.startswith(sys.argv[1]), segearth_jax.__file__; "
             "from segearth_jax.train import run; sys.argv = ['segearth-train', '--help']; run()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-c", probe, str(target)], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "--workdir" in p.stdout
