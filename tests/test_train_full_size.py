"""The paper's training setup at full size, shapes only (`jax.eval_shape`, nothing allocated):
configs/segearth_r2.py:lasers (Mipha-3B with LoRA r8 on q/v, Swin-B + Mask2Former at 1024 px,
batch 4, 1024 tokens, bf16) through `Trainer.abstract_init` and the jitted train step, and the
FLOPs of that step, counted from its jaxpr."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np

from configs import segearth_r2
from segearth_jax.flops import count_flops
from segearth_jax.models.segearth_r2 import SegEarthR2Config
from segearth_jax.train import Trainer, abstract_batch


def _flat(tree) -> dict[str, jax.ShapeDtypeStruct]:
    return {jax.tree_util.keystr(p, simple=True, separator="/"): x
            for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def test_lasers_step_shapes_and_trainable_split():
    config = segearth_r2.get_config("lasers")
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

    batch = abstract_batch(config)
    assert batch["pixels"].shape == (4, 1024, 1024, 3)
    assert batch["siglip_pixels"].shape == (4, 384, 384, 3) and batch["input_ids"].shape[1] == 1024
    new, metrics = jax.eval_shape(trainer.step_fn, state, frozen, batch)
    assert jax.tree.structure(new) == jax.tree.structure(state)
    for a, c in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(state),
                    strict=True):
        assert (a.shape, a.dtype) == (c.shape, c.dtype)
    for key in ("loss", "text_loss", "bce_loss", "dice_loss", "spatial_loss", "grad_norm"):
        assert metrics[key].shape == () and metrics[key].dtype == jnp.float32, key


def test_lasers_step_flops_match_the_closed_form():
    """The full-size step's model FLOPs (`segearth_jax.flops`, traced without remat, XLA
    attention): Phi-2's forward and backward equal the textbook count exactly, and the frozen
    towers get no backward at all (no gradient is computed through SigLIP, its projector or
    Swin-B)."""
    config = segearth_r2.get_config("lasers")
    for part in (config.model.mllm.vision, config.model.mllm.llm, config.model.seg_head.swin,
                 config.model.seg_head.decoder):
        part.attention_impl = "xla"
    config.model.mllm.llm.remat_policy = "none"
    trainer = Trainer(config)
    state, frozen = trainer.abstract_init()
    count = count_flops(trainer.step_fn, state, frozen, abstract_batch(config))
    got = count.by_scope

    for part in ("mllm/vision_tower", "mllm/mm_projector", "seg_head/backbone"):
        assert got[(part, "forward")] > 0 and (part, "backward") not in got, part
    for part in ("mllm/llm", "seg_projector", "seg_head/pixel_decoder", "seg_head/predictor"):
        assert got[(part, "backward")] > 0, part

    llm = SegEarthR2Config.from_config(config.model).mllm.llm
    b, t, n_seg = config.data.batch_size, config.data.max_len, config.data.max_seg
    e, inter, vocab, n_layers, r = (llm.hidden_size, llm.intermediate_size, llm.vocab_size,
                                    llm.num_layers, llm.lora.rank)
    assert (b, t, e, n_layers, r) == (4, 1024, 2560, 32, 8)
    tokens = b * t
    weights = 2 * tokens * n_layers * (4 * e * e + 2 * e * inter)  # q, k, v, dense, fc1, fc2
    lm_head = 2 * tokens * e * vocab
    attention = 2 * 2 * b * n_layers * t * t * e  # QK^T and AV, all heads, full T x T
    lora = 2 * tokens * n_layers * 2 * (e * r + r * e)  # q_proj and v_proj: x A, then (x A) B
    probe = 2 * b * n_layers * n_seg * t * e  # the [SEG] rows' QK^T for the spatial loss
    assert got[("mllm/llm", "forward")] == weights + lm_head + attention + lora + probe
    # Backward: the activation gradient through every frozen matmul, no weight gradient but the
    # lm_head's; LoRA's, attention's and the probe's two products per forward product.
    assert got[("mllm/llm", "backward")] == (weights + 2 * lm_head + 2 * attention + 2 * lora
                                             + 2 * probe)
    assert 0.8 < (got[("mllm/llm", "forward")] + got[("mllm/llm", "backward")]) / count.total
