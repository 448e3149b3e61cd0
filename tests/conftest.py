"""Shared fixtures: a tiny random Mipha in PyTorch, written in the published layout and converted
by our converter (so every parity test also exercises the converter)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # No test may download anything.
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole run, shared by the xdist workers and every
# program the tests launch (they inherit this environment): the tiny model's train step, its
# init and predict's programs are the same in many tests and compile once
# (the cache key is the HLO with its compile options and XLA flags, so only identical programs
# share an entry). The directory is made by the first process that loads this file (pytest
# itself, whose environment xdist's workers inherit) and removed when it finishes; set
# JAX_COMPILATION_CACHE_DIR to keep a cache across runs.
_OWN_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import tempfile

    _OWN_CACHE = tempfile.mkdtemp(prefix="segearth_jax_tests_jax_cache_")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Fast compiles for the programs a test launches that compile the tiny model and run it for a
# few steps: LLVM at -O0 and XLA:CPU's classic fusion emitters instead of its MLIR ones (the same
# HLO, no fast-math either way). The tiny train step then compiles in ~45% of the CPU time
# (75 -> 33 s on this project's 2-core machine) and runs ~3.8x slower per step
# (experiments/RESULTS.md, "Test suite time"), so long runs keep the default. The numbers are
# not the default build's (the pixel decoder's differ by ~1e-4 relative under -O0), so only runs
# compared with runs compiled alike use them, never a parity test.
FAST_COMPILE_XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false"

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # fp32 parity on every backend.
# Tests call loaders with grain workers outside a program's entry point (segearth_jax/cli.py):
# the workers read absl's flag defaults, which need the flags marked parsed.
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

# The files that take minutes, roughly slowest first (experiments/RESULTS.md, "Test suite time").
# `bash run.sh test` runs pytest-xdist with `--dist loadfile --no-loadscope-reorder`: each file
# runs whole on one worker, handed out in collection order, so these start first and the many
# short files fill in around them (longest first). xdist's default order (most tests first)
# started test_multihost.py (4 tests) and test_learning.py (1 test) last.
SLOW_FILES = ("test_multihost.py", "test_end_to_end.py", "test_learning.py",
              "test_released_workflow.py", "test_train.py", "test_scene.py", "test_eval_every.py")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The run's compilation cache goes with the process that made it."""
    if _OWN_CACHE is not None:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """SLOW_FILES first, in their order; the rest as collected (a stable sort: files stay
    whole, their tests in file order)."""
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FILES)))


# Key lists of the real checkpoints we convert (tests/reference/README.md says how sure each is).
REFERENCE = Path(__file__).resolve().parent / "reference"


@pytest.fixture(scope="session")
def tiny_torch():
    from convert.tiny_mipha import torch_modules

    return torch_modules(seed=0)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from convert.tiny_mipha import write_checkpoint

    return write_checkpoint(tmp_path_factory.mktemp("mipha_src"), "safetensors", seed=0)


@pytest.fixture(scope="session")
def tiny_converted(tiny_checkpoint, tmp_path_factory) -> Path:
    from convert import mipha

    return mipha.convert(tiny_checkpoint, tmp_path_factory.mktemp("mipha_out") / "m",
                         dtype="float32")


@pytest.fixture(scope="session")
def tiny_params(tiny_converted):
    from segearth_jax import checkpoint

    return checkpoint.restore_params(tiny_converted)
