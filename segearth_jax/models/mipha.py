"""Mipha-3B, the MLLM half of SegEarth-R2: SigLIP -> mlp2x_gelu projector -> Phi-2 (LoRA).

The image is encoded to the SigLIP penultimate hidden states [B, 729, 1152], projected to the
LLM width [B, 729, 2560], and spliced into the prompt where `input_ids == image_token_id`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.common import dense, lookup_variant
from segearth_jax.models.lora import LoRAConfig
from segearth_jax.models.phi import PhiConfig, PhiForCausalLM
from segearth_jax.models.siglip import SiglipConfig, SiglipVisionTransformer

# Whole-MLLM variants: (SigLIP variant, Phi variant).
VARIANTS: dict[str, tuple[str, str]] = {
    "mipha3b": ("So400m/14", "phi-2"),
    "tiny": ("tiny", "tiny"),
}


@dataclasses.dataclass(frozen=True)
class MiphaConfig:
    vision: SiglipConfig = SiglipConfig()
    llm: PhiConfig = PhiConfig()
    select_layer: int = -2  # HF hidden_states index fed to the projector (Mipha: -2).

    @classmethod
    def from_variant(cls, name: str, *, lora: LoRAConfig = LoRAConfig(),  # noqa: B008
                     dtype: Any = jnp.float32,
                     param_dtype: Any = jnp.float32, **llm_overrides: Any) -> MiphaConfig:
        vision, llm = lookup_variant(VARIANTS, "Mipha", name)
        return cls(
            vision=SiglipConfig.from_variant(
                vision, dtype=dtype, param_dtype=param_dtype,
                attention_impl=llm_overrides.get("attention_impl", "auto")),
            llm=PhiConfig.from_variant(llm, lora=lora, dtype=dtype, param_dtype=param_dtype,
                                       **llm_overrides))

    @classmethod
    def from_config(cls, model: Any) -> MiphaConfig:
        """From a `config.model` ConfigDict/dict (see configs/mipha.py)."""
        m = dict(model)
        lora = LoRAConfig(**dict(m.pop("lora", {})))
        dtype, param_dtype = jnp.dtype(m.pop("dtype")), jnp.dtype(m.pop("param_dtype"))
        return cls.from_variant(m.pop("variant"), lora=lora, dtype=dtype,
                                param_dtype=param_dtype, **m)

    @property
    def vision_layers(self) -> int:
        """Encoder layers needed to produce `hidden_states[select_layer]`."""
        n = self.select_layer % (self.vision.depth + 1)
        if n == 0:
            raise ValueError("select_layer must pick an encoder layer, not the embeddings")
        return n


class Projector(nn.Module):
    """`mlp2x_gelu`: Linear(vision width -> E), GELU (erf), Linear(E -> E)."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, Dv] -> [B, N, E]."""
        fc = lambda name: dense(self, self.features, name)
        return fc("fc2")(jax.nn.gelu(fc("fc1")(x), approximate=False))


class Mipha(nn.Module):
    config: MiphaConfig

    def setup(self):
        cfg = self.config
        last = cfg.vision_layers == cfg.vision.depth
        self.vision_tower = SiglipVisionTransformer(cfg.vision, num_layers=cfg.vision_layers,
                                                    post_layernorm=last)
        self.mm_projector = Projector(cfg.llm.hidden_size, cfg.llm.dtype, cfg.llm.param_dtype)
        self.llm = PhiForCausalLM(cfg.llm)

    def encode_images(self, pixels: jax.Array) -> jax.Array:
        """SigLIP view [B, 384, 384, 3] -> image tokens in LLM space [B, 729, E]."""
        return self.mm_projector(self.vision_tower(pixels))

    def __call__(self, input_ids: jax.Array, pixels: jax.Array | None = None, *,
                 image_features: jax.Array | None = None, **llm_kwargs: Any
                 ) -> tuple[jax.Array, jax.Array]:
        """input_ids [B, T] with `image_token_id` placeholders; pixels [B, 384, 384, 3], or
        precomputed `image_features` [B, 729, E]. Other keyword arguments go to
        `PhiForCausalLM` (positions, attention_mask, seg_positions, decode, deterministic).
        Returns (logits [B, T, V], final hidden states [B, T, E]).
        """
        if pixels is not None:
            image_features = self.encode_images(pixels)
        return self.llm(input_ids, image_features=image_features, **llm_kwargs)
