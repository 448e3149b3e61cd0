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
from segearth_jax.models.phi import PhiConfig, PhiForCausalLM
from segearth_jax.models.siglip import SiglipConfig, SiglipVisionTransformer

# Whole-MLLM presets: (SigLIP variant, Phi variant).
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
    def from_variant(cls, name: str, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                     vision: dict[str, Any] | None = None, llm: dict[str, Any] | None = None,
                     select_layer: int = -2) -> MiphaConfig:
        """The preset `name`, its parts' fields updated by `vision` (SigLIP) and `llm` (Phi)."""
        v, p = lookup_variant(VARIANTS, "Mipha", name)
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        return cls(vision=SiglipConfig.from_variant(v, **dt, **(vision or {})),
                   llm=PhiConfig.from_variant(p, **dt, **(llm or {})), select_layer=select_layer)

    @classmethod
    def preset(cls, name: str, *, dtype: str = "float32", param_dtype: str = "float32",
               vision: dict[str, Any] | None = None, llm: dict[str, Any] | None = None
               ) -> dict[str, Any]:
        """The preset `name` as a config file's `model.mllm` (every size and knob spelled out),
        the parts' fields updated by `vision` / `llm`."""
        return cls.from_variant(name, vision=vision, llm=llm).to_config(dtype, param_dtype)

    def to_config(self, dtype: str | None = None, param_dtype: str | None = None
                  ) -> dict[str, Any]:
        """The `from_config` dict of this config (what model.json stores)."""
        return {"dtype": dtype or jnp.dtype(self.llm.dtype).name,
                "param_dtype": param_dtype or jnp.dtype(self.llm.param_dtype).name,
                "select_layer": self.select_layer,
                "vision": self.vision.to_dict(), "llm": self.llm.to_dict()}

    @classmethod
    def from_config(cls, model: Any) -> MiphaConfig:
        """From a `config.model.mllm` ConfigDict or model.json dict: `dtype`, `param_dtype`,
        `select_layer`, `vision` (every SigLIP field), `llm` (every Phi field, `lora` a dict)."""
        m = dict(model)
        want = {"dtype", "param_dtype", "select_layer", "vision", "llm"}
        if set(m) != want:
            raise ValueError(f"Mipha config: keys {sorted(m)}, expected {sorted(want)}")
        dt = dict(dtype=jnp.dtype(m["dtype"]), param_dtype=jnp.dtype(m["param_dtype"]))
        return cls(vision=SiglipConfig.from_dict(dict(m["vision"]), **dt),
                   llm=PhiConfig.from_dict({k: dict(v) if k == "lora" else v
                                            for k, v in dict(m["llm"]).items()}, **dt),
                   select_layer=m["select_layer"])

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
