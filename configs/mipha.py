"""The Mipha MLLM alone (SigLIP -> projector -> Phi-2 + LoRA).

Variants (`--config configs/mipha.py:VARIANT`): `tiny` (CPU tests and demo), `mipha3b` (real
sizes: SigLIP So400m/14 at 384, Phi-2 2.7B).
"""

import ml_collections


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
        lora=dict(rank=8, alpha=16.0, dropout=0.05, targets=r".*/(q_proj|v_proj)"),
    ))
    return config
