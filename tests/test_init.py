"""Initial parameters (`segearth_jax.init` through `Trainer.init`): converted checkpoints restored
into their sharded, typed targets; the rest from the random init; strict key checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

ROOT = Path(__file__).resolve().parents[1]


def _config(fsdp: int = 1):
    from configs import segearth_r2, tiny

    c = tiny.get_config()
    c.trainable = segearth_r2.TRAINABLE  # the paper's split: frozen towers, LoRA + heads trained
    c.frozen_dtype = "bfloat16"
    c.data.batch_size = 8
    c.mesh.fsdp = fsdp
    c.mesh.data = -1
    c.optim.flatten = False  # the per-leaf AdamW moments checked below
    return c


def _flat(tree) -> dict:
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _random(config, seed: int, fold: int | None = None) -> dict:
    """The model's full random init with `jax.random.key(seed)` (folded with `fold`: the
    params key of `Trainer.init(seed)` is `fold_in(key(seed), 1)`), flattened."""
    from segearth_jax.train import build_model, random_params

    key = jax.random.key(seed)
    key = key if fold is None else jax.random.fold_in(key, fold)
    return _flat(jax.jit(random_params(config, build_model(config)))(key))


def write_converted(tmp: Path, config) -> dict:
    """Converted-style checkpoints of the tiny model (other random values than the init's):
    `mllm` without LoRA factors, `seg_head` whole. Returns their flat source values."""
    from segearth_jax import checkpoint

    src = _random(config, seed=7)
    for prefix in ("mllm", "seg_head"):
        sub = {k[len(prefix) + 1:]: v for k, v in src.items()
               if k.startswith(prefix + "/") and "lora_" not in k}
        checkpoint.save_params(tmp / prefix, traverse_util.unflatten_dict(sub, sep="/"))
    return src


def check_restore(tmp: Path, fsdp: int) -> None:
    """Trainer.init from the converted checkpoints: restored leaves equal the source (cast to
    their dtype), the rest equal the random init, every leaf in its target sharding."""
    from segearth_jax import optim
    from segearth_jax.train import Trainer

    config = _config(fsdp)
    src = write_converted(tmp, config)
    config.init.mllm, config.init.seg_head = str(tmp / "mllm"), str(tmp / "seg_head")
    trainer = Trainer(config)
    state, frozen = trainer.init(0)
    target_state, target_frozen = trainer.abstract_init()
    for tree, target in ((state, target_state), (frozen, target_frozen)):
        for x, t in zip(jax.tree.leaves(tree), jax.tree.leaves(target), strict=True):
            assert x.dtype == t.dtype and x.shape == t.shape
            assert x.sharding.is_equivalent_to(t.sharding, x.ndim)
    if fsdp > 1:  # the largest leaves are split, not replicated
        emb = frozen["mllm"]["llm"]["model"]["embed_tokens"]["embedding"]
        assert "fsdp" in str(emb.sharding.spec)
    params = _flat(optim.merge_params(state.params, frozen))
    fresh = _random(config, seed=0, fold=1)
    trained = set(_flat(state.params))
    n_restored = 0
    for k, v in params.items():
        from_ckpt = k.startswith(("mllm/", "seg_head/")) and "lora_" not in k
        expected = src[k] if from_ckpt else fresh[k]
        n_restored += from_ckpt
        assert v.dtype == (np.float32 if k in trained else jnp.bfloat16), k
        np.testing.assert_array_equal(np.asarray(v, np.float32),
                                      np.asarray(jnp.asarray(expected).astype(v.dtype),
                                                 np.float32), err_msg=k)
    assert n_restored > 50 and any("lora_a" in k for k in params)
    assert "seg_projector/kernel" in params
    # The restored values are the checkpoint's, not the random init's.
    k = "mllm/llm/model/embed_tokens/embedding"
    assert not np.array_equal(np.asarray(src[k]), np.asarray(fresh[k]))
    assert np.all(np.asarray(state.opt_state.inner_state[1][0].mu["seg_projector"]["kernel"]) == 0)


def test_init_restores_checkpoints_into_typed_targets(tmp_path):
    check_restore(tmp_path, fsdp=1)


def test_init_restores_into_fsdp_shards_on_8_devices(tmp_path):
    code = ("import tests.test_init as t; from pathlib import Path; "
            f"t.check_restore(Path({str(tmp_path)!r}), 8)")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


def test_init_without_checkpoints_is_the_random_init():
    from segearth_jax import optim
    from segearth_jax.train import Trainer

    config = _config()
    state, frozen = Trainer(config).init(3)
    fresh = _random(config, seed=3, fold=1)
    params = _flat(optim.merge_params(state.params, frozen))
    assert params.keys() == fresh.keys()
    for k, v in params.items():
        np.testing.assert_array_equal(np.asarray(v, np.float32),
                                      np.asarray(jnp.asarray(fresh[k]).astype(v.dtype),
                                                 np.float32), err_msg=k)


def test_init_lists_every_mismatch_in_one_error(tmp_path):
    from segearth_jax import checkpoint
    from segearth_jax.train import Trainer

    config = _config()
    src = _random(config, seed=1)
    sub = {k[len("seg_head/"):]: v for k, v in src.items() if k.startswith("seg_head/")}
    dropped = sorted(sub)[0]
    del sub[dropped]
    sub["extra/kernel"] = np.zeros((2, 2), np.float32)
    bad = "pixel_decoder/mask_features/bias"
    sub[bad] = np.zeros((sub[bad].shape[0] + 1,), np.float32)
    checkpoint.save_params(tmp_path / "seg", traverse_util.unflatten_dict(sub, sep="/"))
    config.init.seg_head = str(tmp_path / "seg")
    with pytest.raises(ValueError) as e:
        Trainer(config).init(0)
    msg = str(e.value)
    assert "3 problems" in msg and str(tmp_path / "seg") in msg
    assert f"missing seg_head/{dropped}" in msg
    assert "unexpected seg_head/extra/kernel" in msg
    assert f"seg_head/{bad}: shape" in msg
