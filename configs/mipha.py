"""The Mipha MLLM alone (SigLIP -> projector -> Phi-2 + LoRA).

Variants (`--config configs/mipha.py:VARIANT`): `tiny` (CPU tests and demo), `mipha3b` (real
sizes: SigLIP So400m/14 at 384, Phi-2 2.7B). The preset expands into every size and knob of
`model` (`vision`: SigLIP, `llm`: Phi-2; `MiphaConfig.from_config` reads exactly these keys);
override any with `--config.model.llm.num_layers=2` and the like.
"""

import ml_collections

from segearth_jax.models.lora import LoRAConfig
from segearth_jax.models.mipha import MiphaConfig


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(MiphaConfig.preset(
        arg,
        dtype="float32" if arg == "tiny" else "bfloat16",  # compute dtype
        param_dtype="float32",
        # attention_impl: "auto" (cuDNN on GPU where it applies), "xla", "cudnn".
        vision=dict(attention_impl="auto", scan=True, remat_policy="none"),
        llm=dict(lm_head_bias=True,  # False: the official SegEarth-R2 lm_head
                 attention_impl="auto", scan=True, seg_probe_heads="mean",
                 remat_policy="none" if arg == "tiny" else "dots_no_batch",
                 lora=LoRAConfig(rank=8))))  # r8 on q/v, alpha 16 (the paper)
    # The key every config has (in-training evaluation every N steps, 0: off); this config
    # describes the MLLM alone and trains nothing.
    config.eval_every = 0
    return config
