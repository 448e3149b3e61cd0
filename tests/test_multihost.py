"""Multi-host training as users run it: `python -m segearth_jax.train` (with the test hooks of
tests/train_hooks.py) in 2 processes x 4 CPU devices each (`--xla_force_host_platform_device_count
=4`, gloo collectives, a loopback coordinator on a free port), against 1 process x 8 devices with
the same mesh data=2 x fsdp=4; then `python -m segearth_jax.export` on the multi-host checkpoint.

Device layout of the 2-process runs (`mesh.dcn_fsdp=2`, `sharding.make_mesh`'s hybrid mesh,
process = granule): process p owns global devices 4p..4p+3, and the mesh is
    data 0: [0, 1, 4, 5]
    data 1: [2, 3, 6, 7]
so the fsdp axis spans both processes (no process holds a whole parameter) and each process
holds devices of both data replicas. A batch of 8 split over data x fsdp puts row r on the r-th
device of that row-major order: process 0 reads rows 0, 1, 4, 5 and process 1 rows 2, 3, 6, 7
of every global batch (`sharding.process_rows`). A batch of 4 is split over data alone and
replicated over fsdp: both processes hold both data coordinates, so both read all 4 rows.

These runs compile the sharded train step (minutes on a CPU), so each test runs its processes
at once and shares one persistent compilation cache (process 0 of a run writes it; the export
CLI's second call reads the first one's init program from it). The training processes compile
fast (`tests.conftest.FAST_COMPILE_XLA_FLAGS`: LLVM at -O0, XLA:CPU's classic fusion emitters):
the same HLO programs, no fast-math either way, in less than half the CPU time
(experiments/RESULTS.md, "Test suite time"); their few steps run slower, which these runs do not
notice. The numbers differ slightly from a default build (~1e-4 relative in the pixel decoder),
so every run of a comparison is compiled with the same flags; the tolerances are those of the
default build.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.conftest  # the offline environment and the compile flags of conftest

ROOT = Path(__file__).resolve().parents[1]
# fp32 with reductions split differently (gloo across processes vs one process): the bound and
# the rounding-only leaves of tests/test_train.py (Adam turns rounding in a zero gradient into
# a step of size lr), plus Phi's k_proj bias, whose dims outside the rotary part have a zero
# gradient too (softmax is invariant to a key shift shared by all keys).
PARAM_ATOL = 1e-4
ZERO_GRAD = re.compile(r"seg_head/predictor/layers/level_\d+/self_attn/(q|k)/.*|.*/k/bias"
                       r"|mllm/llm/model/layers/self_attn/k_proj/bias")
ROWS_B8 = {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}  # the layout above
COMPILE_FLAGS = tests.conftest.FAST_COMPILE_XLA_FLAGS  # see the module docstring


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A small synthetic set (128 px images), its TFDS build and a trained tokenizer."""
    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.input.sources import load_or_make_tokenizer, open_source

    root = tmp_path_factory.mktemp("multihost")
    synthetic.generate(root / "raw", n=40, seed=0, size=128)
    builders.build("synthetic", manual_dir=root / "raw", data_dir=root / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(root / "tfds")
    load_or_make_tokenizer(config, root, open_source(config.data, "train"))
    return dict(root=root, flags=[
        f"--config.data.data_dir={root / 'tfds'}", f"--config.tokenizer={root / 'tokenizer'}",
        "--config.log_every=1", "--config.mesh.data=2", "--config.mesh.fsdp=4"],
        env=dict(os.environ))  # with the run's compilation cache (tests/conftest.py)


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def _launch(env: dict, workdir: Path, processes: int, *extra: str) -> list[subprocess.Popen]:
    """The training command in `processes` processes (1: 8 devices; 2: 4 devices each)."""
    devices = 8 // processes
    run_env = {**env["env"], "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices} "
                                          f"{COMPILE_FLAGS}"}
    dist = []
    if processes > 1:
        dist = ["--config.distributed.enabled=True", "--config.mesh.dcn_fsdp=2",
                f"--config.distributed.coordinator_address=localhost:{_free_port()}",
                f"--config.distributed.num_processes={processes}"]
    return [subprocess.Popen(
        [sys.executable, "-m", "tests.train_hooks", "--config", "configs/tiny.py", "--workdir",
         str(workdir), *env["flags"], *dist, "--log_data_order", *extra,
         *([f"--config.distributed.process_id={i}"] if processes > 1 else [])],
        cwd=ROOT, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(processes)]


def _wait(procs: list[subprocess.Popen], returncodes: tuple[int, ...] = (0,)) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=1800)
        assert p.returncode in returncodes, out[-5000:]


def _order(workdir: Path, process: int) -> dict[int, list[int]]:
    """step -> record indices this process read (the last line of a step wins)."""
    order = {}
    for line in (workdir / f"data_order.{process}.txt").read_text().splitlines():
        step, *rest = line.split()
        order[int(step)] = [int(x) for x in rest]
    return order


def _params(directory: Path) -> dict[str, np.ndarray]:
    from flax import traverse_util

    from segearth_jax import checkpoint

    return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(
        checkpoint.restore_params(directory), sep="/").items()}


def _assert_same_params(a: Path, b: Path, atol: float = PARAM_ATOL) -> None:
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    err = {k: float(np.max(np.abs(pa[k] - pb[k]))) for k in pa if not ZERO_GRAD.fullmatch(k)}
    worst = max(err, key=err.get)
    assert err[worst] <= atol, (worst, err[worst])


def _same_model_files(a: Path, b: Path) -> None:
    assert (a / "model.json").read_text() == (b / "model.json").read_text()
    files = sorted(p.relative_to(a) for p in (a / "tokenizer").rglob("*") if p.is_file())
    assert files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


STEPS = ["--config.total_steps=4", "--config.checkpoint.every=2", "--config.data.batch_size=8"]


@pytest.fixture(scope="module")
def runs(env) -> dict[str, Path]:
    """1 x 8 devices uninterrupted, and 2 x 4 devices killed (SIGKILL, both processes) right
    after the step-2 checkpoint, then resumed to step 4; the two start at once."""
    one, multi = env["root"] / "one", env["root"] / "multi"
    ref = _launch(env, one, 1, *STEPS)
    killed = _launch(env, multi, 2, *STEPS, "--sigkill_after_step=2")
    # Each process SIGKILLs itself after the step-2 checkpoint; one that is slower to get there
    # is aborted (SIGABRT) by JAX when the coordinator (in process 0) disappears.
    _wait(killed, returncodes=(-9, -6))
    assert killed[0].returncode == -9
    assert (multi / "checkpoints" / "2").is_dir() and not (multi / "export").exists()
    # Every process wrote its own shards of the state.
    assert {p.name for p in (multi / "checkpoints" / "2" / "state").glob("ocdbt.process_*")} == {
        "ocdbt.process_0", "ocdbt.process_1"}
    _wait(_launch(env, multi, 2, *STEPS))  # resumes from step 2
    _wait(ref)
    return dict(one=one, multi=multi)


def test_multihost_fsdp_kill_resume_export_matches_one_process(runs):
    one, multi = runs["one"], runs["multi"]
    # The data order: each process read its rows of the one-process run's global batches.
    ref = _order(one, 0)
    assert sorted(ref) == [1, 2, 3, 4] and all(len(v) == 8 for v in ref.values())
    for p, rows in ROWS_B8.items():
        got = _order(multi, p)
        assert sorted(got) == [1, 2, 3, 4]
        assert {s: got[s] for s in got} == {s: [ref[s][r] for r in rows] for s in ref}, p
    # The export of the killed + resumed multi-host run: the one-process parameters (to fp
    # tolerance), the same model.json and tokenizer.
    _assert_same_params(one / "export", multi / "export")
    _same_model_files(one / "export", multi / "export")
    # Both processes logged the same losses as the one-process run (fp tolerance).
    a = {m["step"]: m["loss"] for m in map(json.loads, (one / "metrics.jsonl").read_text()
                                           .splitlines())}
    b = {m["step"]: m["loss"] for m in map(json.loads, (multi / "metrics.jsonl").read_text()
                                           .splitlines())}
    assert a.keys() == b.keys() == {1, 2, 3, 4}
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-5)


def _export(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """The export CLI on one process and one device, as a user runs it; its init program comes
    from the first call's compile through the test run's persistent compilation cache
    (tests/conftest.py)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-m", "segearth_jax.export", "--workdir",
                           str(workdir), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=900, env=env)


def test_export_cli_reads_a_multihost_checkpoint_on_one_process(runs, tmp_path):
    """`python -m segearth_jax.export` on one process and one device, from the 2 x 4 run's
    checkpoints (orbax reshards onto its mesh): step 4 is the run's own end-of-training export
    (merged LoRA; the same numbers to fp32 rounding of the merge), step 2 is a valid model."""
    multi = runs["multi"]
    out = tmp_path / "e4"
    p = _export(multi, "--step", "4", "--out", str(out))
    assert p.returncode == 0, p.stderr[-4000:]
    _assert_same_params(multi / "export", out, atol=1e-6)
    _same_model_files(multi / "export", out)
    spec = json.loads((out / "model.json").read_text())
    assert spec["kind"] == "segearth_r2" and spec["model"]["mllm"]["llm"]["lora"]["rank"] == 0
    # Default step (the latest) and default --out (WORKDIR/export_<step>).
    p = _export(multi)
    assert p.returncode == 0, p.stderr[-4000:]
    _assert_same_params(out, multi / "export_4", atol=0)
    # The error contract: one `error:` line, status 2.
    for args, words in ((["--step", "3"], "--step 3"), (["--out", str(out)], "--out")):
        p = _export(multi, *args)
        assert p.returncode == 2 and p.stderr.startswith("error:") and words in p.stderr, p.stderr
    p = _export(tmp_path / "nowhere")
    assert p.returncode == 2 and "--workdir" in p.stderr, p.stderr


def test_export_help_exits_0():
    p = subprocess.run([sys.executable, "-m", "segearth_jax.export", "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "--workdir" in p.stdout and "--step" in p.stdout


def test_multihost_small_batch_and_eval_every_match_one_process(env):
    """Global batch 4 on 2 x 4 devices (fewer rows than devices): split over data, replicated
    over fsdp; both processes hold both data coordinates, so both read the same 4 rows. It
    trains as the one-process run does, and the in-training evaluation (eval_every=2, the first
    6 test records; each row scored by one process, merged on process 0) logs the same metrics
    and keeps the best model."""
    one, multi = env["root"] / "small_one", env["root"] / "small_multi"
    flags = ["--config.total_steps=2", "--config.checkpoint.every=2",
             "--config.data.batch_size=4", "--config.eval_every=2", "--config.eval.limit=6",
             "--config.eval.batch_size=4"]
    procs = _launch(env, one, 1, *flags) + _launch(env, multi, 2, *flags)
    _wait(procs)
    ref = _order(one, 0)
    assert sorted(ref) == [1, 2] and all(len(v) == 4 for v in ref.values())
    assert _order(multi, 0) == _order(multi, 1) == ref
    _assert_same_params(one / "export", multi / "export")
    lines = {}
    for w in (one, multi):
        evals = [m for m in map(json.loads, (w / "metrics.jsonl").read_text().splitlines())
                 if "eval/gIoU" in m]
        assert [m["step"] for m in evals] == [2]
        lines[w] = evals[0]
        # Every one of the 6 records scored once (the padded rows and the rows a second
        # process also holds are not counted twice); gIoU/cIoU per subset.
        assert evals[0]["eval/n_samples"] == 6 and evals[0]["eval/n_failed"] == 0
        assert any(re.fullmatch(r"eval/\w+/gIoU", k) for k in evals[0])
        best = json.loads((w / "best" / "best.json").read_text())
        assert best == {"step": 2, "metric": "eval/gIoU", "value": evals[0]["eval/gIoU"]}
        assert (w / "best" / "model.json").exists()
    assert lines[one].keys() == lines[multi].keys()
    for k in lines[one]:
        assert abs(lines[one][k] - lines[multi][k]) <= 1e-4, k
