"""SigLIP vision transformer (Zhai et al. 2023), computed as transformers' `SiglipVisionModel`.

Patch embedding (conv, stride = patch) + learned position embedding, pre-LN encoder blocks
(`layer_norm1` -> attention -> residual, `layer_norm2` -> MLP(gelu tanh) -> residual), scanned
over layers (`scan`, `remat_policy`: models/common.layer_stack), optional `post_layernorm`.
The MAP pooling `head` is not implemented: nothing here uses it (Mipha feeds the LLM the
penultimate hidden states).

Inputs are NHWC: pixels [B, H, W, 3], normalized with mean = std = 0.5.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.attention import dot_product_attention
from segearth_jax.models.common import FromVariant, check_stack, dense, layer_norm, layer_stack

VARIANTS: dict[str, dict[str, Any]] = {
    "So400m/14": dict(width=1152, depth=27, mlp_dim=4304, num_heads=16, patch_size=14,
                      image_size=384),
    "B/16": dict(width=768, depth=12, mlp_dim=3072, num_heads=12, patch_size=16, image_size=224),
    "tiny": dict(width=32, depth=3, mlp_dim=64, num_heads=4, patch_size=14, image_size=56),
}


@dataclasses.dataclass(frozen=True)
class SiglipConfig(FromVariant, variants=VARIANTS, kind="SigLIP"):
    width: int = 1152
    depth: int = 27
    mlp_dim: int = 4304
    num_heads: int = 16
    patch_size: int = 14
    image_size: int = 384
    layer_norm_eps: float = 1e-6
    attention_impl: str | None = "auto"  # see models/attention.py
    scan: bool = True  # False: the layer loop unrolled (models/common.layer_stack)
    remat_policy: str = "none"  # a key of models/common.REMAT_POLICIES
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_stack("SigLIP", self.scan, self.remat_policy)

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class SiglipAttention(nn.Module):
    config: SiglipConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, N, D] -> [B, N, D], bidirectional."""
        cfg = self.config
        b, n, d = x.shape
        heads = lambda y: y.reshape(b, n, cfg.num_heads, d // cfg.num_heads)
        q = heads(dense(cfg, d, "q_proj")(x))
        k = heads(dense(cfg, d, "k_proj")(x))
        v = heads(dense(cfg, d, "v_proj")(x))
        out = dot_product_attention(q, k, v, implementation=cfg.attention_impl)
        return dense(cfg, d, "out_proj")(out.reshape(b, n, d))


class SiglipEncoderLayer(nn.Module):
    config: SiglipConfig
    collect_outputs: bool = False  # emit each layer's output as a scan output.

    @nn.compact
    def __call__(self, x: jax.Array, _) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        x = x + SiglipAttention(cfg, name="self_attn")(layer_norm(cfg, "layer_norm1")(x))
        h = layer_norm(cfg, "layer_norm2")(x)
        h = dense(cfg, cfg.mlp_dim, "fc1")(h)
        h = dense(cfg, cfg.width, "fc2")(jax.nn.gelu(h, approximate=True))
        x = x + h
        return x, (x if self.collect_outputs else None)


class SiglipVisionTransformer(nn.Module):
    """SigLIP tower with its first `num_layers` encoder layers (None: all `depth`).

    Mipha's feature is HF `hidden_states[-2]`: build it with `num_layers=depth - 1,
    post_layernorm=False`, so the unused last layer is neither stored nor computed.
    """

    config: SiglipConfig
    num_layers: int | None = None
    post_layernorm: bool = True

    @nn.compact
    def __call__(self, pixels: jax.Array, return_all_layers: bool = False
                 ) -> jax.Array | tuple[jax.Array, jax.Array]:
        """pixels [B, H, W, 3] -> tokens [B, N, D] (post-LN if `post_layernorm`).

        With `return_all_layers`, also returns every hidden state [num_layers + 1, B, N, D]
        (embeddings first, as HF's `hidden_states`).
        """
        cfg = self.config
        n_layers = cfg.depth if self.num_layers is None else self.num_layers
        patches = nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                          padding="VALID", dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                          name="patch_embedding")(pixels.astype(cfg.dtype))
        b, gh, gw, d = patches.shape
        x = patches.reshape(b, gh * gw, d)  # row-major over the patch grid, as HF's flatten.
        pos = self.param("position_embedding", nn.initializers.normal(1.0 / d ** 0.5),
                         (gh * gw, d), cfg.param_dtype)
        x = x + pos.astype(cfg.dtype)[None]
        layers = layer_stack(SiglipEncoderLayer, scan=cfg.scan, remat_policy=cfg.remat_policy,
                             length=n_layers, variable_axes={"params": 0},
                             split_rngs={"params": True})
        embeddings = x
        x, per_layer = layers(cfg, return_all_layers, name="layers")(x, None)
        if self.post_layernorm:
            x = layer_norm(cfg, "post_layernorm")(x)
        if return_all_layers:
            return x, jnp.concatenate([embeddings[None], per_layer], axis=0)
        return x
