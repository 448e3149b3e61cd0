"""SegEarth-R2: the MLLM (SigLIP -> projector -> Phi-2 + LoRA) whose `[SEG]` hidden states,
projected by `Linear(E -> 256)`, are the queries of the segmentation head (Swin -> pixel decoder
-> masked transformer decoder). One `[SEG]`, one query, one mask.

Parameter tree: `mllm/{vision_tower,mm_projector,llm}` (as `convert.mipha` writes it),
`seg_projector/{kernel,bias}` (the official `SEG_token_projector`),
`seg_head/{backbone,pixel_decoder,predictor}` (as `convert.mask2former` writes it).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.mipha import Mipha, MiphaConfig
from segearth_jax.models.seg_head import SegHead, SegHeadConfig

# Where the `[SEG]`->image attention probe lands in the 'intermediates' collection.
SEG_ATTENTION_PATH = ("mllm", "llm", "model", "layers", "self_attn", "seg_attention")


@dataclasses.dataclass(frozen=True)
class SegEarthR2Config:
    mllm: MiphaConfig = MiphaConfig()
    seg_head: SegHeadConfig = SegHeadConfig()

    @classmethod
    def from_config(cls, model: Any) -> SegEarthR2Config:
        """From a `config.model` ConfigDict or model.json's "model" dict: `mllm`
        (`MiphaConfig.from_config`) and `seg_head` (`SegHeadConfig.from_config`), every size
        and knob explicit."""
        if set(model) != {"mllm", "seg_head"}:
            raise ValueError(f"SegEarth-R2 config: keys {sorted(model)}, expected ['mllm', "
                             "'seg_head']")
        return cls(mllm=MiphaConfig.from_config(model["mllm"]),
                   seg_head=SegHeadConfig.from_config(model["seg_head"]))

    def to_config(self) -> dict[str, Any]:
        """The `from_config` dict of this config (what model.json stores)."""
        return {"mllm": self.mllm.to_config(), "seg_head": self.seg_head.to_config()}

    @property
    def grid(self) -> int:
        """Image tokens per side (27 for SigLIP So400m/14 at 384)."""
        return self.mllm.vision.image_size // self.mllm.vision.patch_size


class SegEarthR2(nn.Module):
    config: SegEarthR2Config

    def setup(self):
        cfg = self.config
        self.mllm = Mipha(cfg.mllm)
        self.seg_projector = nn.Dense(cfg.seg_head.decoder.hidden_dim,
                                      dtype=cfg.seg_head.decoder.dtype,
                                      param_dtype=cfg.seg_head.decoder.param_dtype)
        self.seg_head = SegHead(cfg.seg_head)

    def __call__(self, input_ids: jax.Array, siglip_pixels: jax.Array, pixels: jax.Array,
                 seg_positions: jax.Array, seg_valid: jax.Array, *,
                 attention_mask: jax.Array | None = None, deterministic: bool = True
                 ) -> dict[str, jax.Array]:
        """Teacher-forced pass (training, scoring).

        input_ids [B, T] with the image span as `image_token_id`; siglip_pixels [B, 384, 384, 3];
        pixels [B, 1024, 1024, 3] (Swin view); seg_positions [B, Q] index of each answer `[SEG]`
        (< 0 padding); seg_valid [B, Q]; attention_mask [B, T] or None (right padding needs none:
        the causal mask already hides it from every valid position).
        Returns logits [B, T, V] fp32 and mask_logits [P, B, Q, H/4, W/4] (P = decoder layers
        + 1, the last is the prediction). The `[SEG]`->image attention of every layer is sown
        at `SEG_ATTENTION_PATH` (apply with `mutable=["intermediates"]`).
        """
        logits, hidden = self.mllm(input_ids, siglip_pixels, attention_mask=attention_mask,
                                   seg_positions=seg_positions, deterministic=deterministic)
        seg_hidden = jnp.take_along_axis(hidden, jnp.maximum(seg_positions, 0)[..., None], axis=1)
        return {"logits": logits, "mask_logits": self.segment(pixels, seg_hidden, seg_valid)}

    def segment(self, pixels: jax.Array, seg_hidden: jax.Array, seg_valid: jax.Array
                ) -> jax.Array:
        """pixels [B, H, W, 3]; seg_hidden [B, Q, E] final hidden states of the `[SEG]` tokens;
        seg_valid [B, Q] -> mask logits [P, B, Q, H/4, W/4]."""
        queries = self.seg_projector(seg_hidden.astype(self.config.seg_head.decoder.dtype))
        return self.seg_head(pixels, queries, seg_valid)

    def encode_images(self, siglip_pixels: jax.Array) -> jax.Array:
        """[B, 384, 384, 3] -> projected image tokens [B, 729, E]."""
        return self.mllm.encode_images(siglip_pixels)

    def llm(self, input_ids: jax.Array, **kwargs: Any):
        """The language model alone (generation with the KV cache, see `generate.py`)."""
        return self.mllm.llm(input_ids, **kwargs)


def seg_attention(intermediates: Any) -> jax.Array:
    """The sown probe, [layers, B, Q, N] (head mean) or [layers, B, H, Q, N]."""
    node = intermediates
    for key in SEG_ATTENTION_PATH:
        node = node[key]
    return node[0]
