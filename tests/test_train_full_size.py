"""The paper's training setup at full size, shapes only (`jax.eval_shape`, nothing allocated):
configs/lasers.py (Mipha-3B with LoRA r8 on q/v, Swin-B + Mask2Former at 1024 px, batch 4,
1024 tokens, bf16) through `Trainer.abstract_init` and the jitted train step."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from configs import lasers
from segearth_jax.train import Trainer, example_batch


def _flat(tree) -> dict[str, jax.ShapeDtypeStruct]:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_lasers_step_shapes_and_trainable_split():
    config = lasers.get_config()
    trainer = Trainer(config)
    state, frozen = trainer.abstract_init()
    params, fro = _flat(state.params), _flat(frozen)

    # Trainable: exactly the paper's set, in float32; frozen: everything else, in bfloat16.
    assert params and all(x.dtype == jnp.float32 for x in params.values())
    assert all(x.dtype == jnp.bfloat16 for x in fro.values() if jnp.issubdtype(x.dtype,
                                                                               jnp.floating))
    patterns = [re.compile(p) for p in config.trainable]
    assert all(any(p.fullmatch(k) for p in patterns) for k in params)
    assert not any(any(p.fullmatch(k) for p in patterns) for k in fro)
    lora = {k: x.shape for k, x in params.items() if "/lora_" in k}
    # Phi-2: 32 layers, hidden 2560; rank 8 on q_proj and v_proj (A: [2560, 8], B: [8, 2560]),
    # stacked on the scanned layer axis.
    assert len(lora) == 4 and all(np.prod(s) == 32 * 2560 * 8 for s in lora.values()), lora
    assert params["mllm/llm/lm_head/kernel"].shape[0] == 2560
    assert "mllm/llm/lm_head/bias" not in params and "mllm/llm/lm_head/bias" not in fro
    assert params["seg_projector/kernel"].shape == (2560, 256)
    assert any(k.startswith("seg_head/backbone/") for k in fro)  # Swin-B frozen
    assert any(k.startswith("mllm/vision_tower/") for k in fro)  # SigLIP frozen
    # Optimizer state only for the trainable leaves (AdamW: mu and nu of the same shapes).
    opt = [x for x in jax.tree_util.tree_leaves(state.opt_state) if x.ndim]
    assert sum(x.size for x in opt) == 2 * sum(x.size for x in params.values())

    b = config.data.batch_size
    batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
             for k, v in example_batch(config, b).items()}
    assert batch["pixels"].shape == (4, 1024, 1024, 3)
    assert batch["siglip_pixels"].shape == (4, 384, 384, 3) and batch["input_ids"].shape[1] == 1024
    new, metrics = jax.eval_shape(trainer.step_fn, state, frozen, batch)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, c in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state),
                    strict=True):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)
    for key in ("loss", "text_loss", "bce_loss", "dice_loss", "spatial_loss", "grad_norm"):
        assert metrics[key].shape == () and metrics[key].dtype == jnp.float32, key
