"""The Mipha MLLM alone (SigLIP -> projector -> Phi-2 + LoRA).

Variants (`--config configs/mipha.py:VARIANT`): `tiny` (CPU tests and demo), `mipha3b` (real
sizes: SigLIP So400m/14 at 384, Phi-2 2.7B).
"""

import dataclasses

import ml_collections

from segearth_jax.models.lora import LoRAConfig


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(
        variant=arg,  # a key of segearth_jax.models.mipha.VARIANTS
        dtype="float32" if arg == "tiny" else "bfloat16",  # compute dtype
        param_dtype="float32",
        lm_head_bias=True,  # False: the official SegEarth-R2 lm_head
        attention_impl="auto",  # "auto" (cuDNN on GPU where it applies), "xla", "cudnn"
        remat_policy="none" if arg == "tiny" else "dots_no_batch",
        seg_probe_heads="mean",
        lora=dataclasses.asdict(LoRAConfig(rank=8)),  # r8 on q/v, alpha 16 (the paper)
    ))
    # The key every config has (in-training evaluation every N steps, 0: off); this config
    # describes the MLLM alone and trains nothing.
    config.eval_every = 0
    return config
