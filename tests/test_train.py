"""The jitted train step under different device layouts and process counts (tiny model, CPU).

Each layout runs in its own subprocess (`tests/train_probe.py`): the device count is fixed when
JAX starts; each compiles with `tests.conftest.FAST_COMPILE_XLA_FLAGS` (two steps: the compile is
the cost). All runs use the paper's trainable set, so the single-device run also checks that
frozen parameters never move while LoRA, lm_head and the decoders do.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
# fp32 with reductions split differently over devices: the same numbers up to rounding. Adam
# moves each parameter by about lr = 2e-3 (configs/tiny.py) per step whatever the gradient's
# size, so rounding in a small gradient shows up at that scale: 1e-4 is 5% of one update (a wrong
# reduction moves many parameters by a whole update and changes the second step's loss, checked
# to 1e-5).
LOSS_RTOL, PARAM_ATOL = 1e-5, 1e-4


def _probe(out: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tests.train_probe", "--out", str(out),
                             "--trainable", "paper", *args], cwd=ROOT,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _wait(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        out, _ = p.communicate(timeout=1200)
        assert p.returncode == 0, out[-4000:]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "r.npz"
    _wait([_probe(out, "--devices", "1", "--mesh", "1,1")])
    return dict(np.load(out))


# Gradients that are zero in exact arithmetic (only rounding noise moves them under Adam, which
# divides by the noise's own size): the decoder's self-attention is restricted to the diagonal
# (softmax over one key: q and k do not matter), and a key bias adds the same logit to every key
# of a softmax row.
ZERO_GRAD = re.compile(r"seg_head/predictor/layers/level_\d+/self_attn/(q|k)/.*|.*/k/bias")


def _compare(a: dict, b: dict) -> None:
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=LOSS_RTOL)
    keys = [k for k in a if k.startswith("after/")]
    assert keys and keys == [k for k in b if k.startswith("after/")]
    err = {k: float(np.max(np.abs(a[k] - b[k]))) for k in keys
           if not ZERO_GRAD.fullmatch(k[len("after/"):])}
    worst = max(err, key=err.get)
    assert err[worst] <= PARAM_ATOL, (worst, err[worst])


def test_frozen_params_unchanged_trainable_params_move(single):
    trainable = set(single["trainable"].tolist())
    names = [k[len("after/"):] for k in single if k.startswith("after/")]
    assert any("lora_b" in n for n in trainable) and "mllm/llm/lm_head/kernel" in trainable
    assert not any(n.startswith(("mllm/vision_tower", "seg_head/backbone")) for n in trainable)
    for n in names:
        before, after = single["before/" + n], single["after/" + n]
        if n not in trainable:
            assert np.array_equal(before, after), f"frozen {n} changed"
        elif not ZERO_GRAD.fullmatch(n):
            assert not np.array_equal(before, after), f"{n} did not change"
    assert np.all(np.isfinite(single["losses"]))


def test_step_on_8_devices_matches_1_device(single, tmp_path):
    out = tmp_path / "r.npz"
    _wait([_probe(out, "--devices", "8", "--mesh", "4,2")])
    _compare(single, dict(np.load(out)))


def test_two_processes_match_one(single, tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    out = tmp_path / "r.npz"
    procs = [_probe(out, "--devices", "1", "--mesh", "2,1", "--num-processes", "2",
                    "--process-id", str(i), "--port", port) for i in range(2)]
    _wait(procs)
    _compare(single, dict(np.load(out)))


# Accumulation is compared under plain SGD, where an update is lr x gradient: the summed
# micro-batch gradients must equal the one-batch gradient to fp32 rounding (relative to the
# leaf's update), not merely to Adam's noise-amplified ~lr. 3e-3: on this project's 2-core CI
# machine (2026-12-07) the pixel decoder's encoder linear1 kernel differs by 1.4e-3 of its update
# (the same on the tree before this change: the summation order of XLA:CPU's kernels); a
# per-micro-batch normalization is off by a factor of about accum_steps.
ACCUM_SGD_LR, ACCUM_RTOL = 0.01, 3e-3


def test_accum_micro_batches_give_the_one_batch_update(tmp_path):
    """optim.accum_steps=4: four micro-batches of 2 rows, one update == one batch of 8 (the
    same losses and SGD updates to rounding; no dropout or random points, whose draws differ).
    Normalizing each micro-batch by its own counts instead of the batch's fails this by far."""
    one, accum = tmp_path / "one.npz", tmp_path / "accum.npz"
    sgd = ("--deterministic", "--sgd", str(ACCUM_SGD_LR))
    _wait([_probe(one, *sgd), _probe(accum, *sgd, "--accum", "4")])
    a, b = dict(np.load(one)), dict(np.load(accum))
    assert len(a["losses"]) == 2 and a["losses"][0] != a["losses"][1]  # the update moved it
    np.testing.assert_allclose(a["losses"], b["losses"], rtol=LOSS_RTOL)
    trainable = a["trainable"].tolist()
    assert trainable and trainable == b["trainable"].tolist()
    moved = 0
    for k in trainable:
        da = a["after/" + k] - a["before/" + k]
        db = b["after/" + k] - b["before/" + k]
        assert np.array_equal(a["before/" + k], b["before/" + k]), k
        scale = float(np.max(np.abs(da)))
        moved += scale > 0
        err = float(np.max(np.abs(da - db)))
        assert err <= ACCUM_RTOL * scale + 1e-7, (k, err, scale)
    assert moved > len(trainable) // 2
