"""DETR's sine positional encoding on a 2-D grid, as Mask2Former's `PositionEmbeddingSine`."""

from __future__ import annotations

import math

import jax.numpy as jnp


def sine_position_embedding(height: int, width: int, num_pos_feats: int,
                            temperature: float = 10000.0, normalize: bool = True,
                            scale: float = 2 * math.pi, dtype=jnp.float32) -> jnp.ndarray:
    """[height, width, 2 * num_pos_feats]: y features then x features, each interleaved
    (sin, cos), positions 1..H / 1..W normalized to (0, scale] (no padding mask)."""
    y = jnp.arange(1, height + 1, dtype=jnp.float32)[:, None] * jnp.ones((1, width))
    x = jnp.arange(1, width + 1, dtype=jnp.float32)[None, :] * jnp.ones((height, 1))
    if normalize:
        eps = 1e-6
        y = y / (height + eps) * scale
        x = x / (width + eps) * scale
    dim_t = jnp.arange(num_pos_feats, dtype=jnp.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / num_pos_feats)

    def encode(pos):  # [H, W] -> [H, W, F], (sin, cos) pairs interleaved
        p = pos[..., None] / dim_t
        return jnp.stack([jnp.sin(p[..., 0::2]), jnp.cos(p[..., 1::2])], axis=-1).reshape(
            height, width, num_pos_feats)

    return jnp.concatenate([encode(y), encode(x)], axis=-1).astype(dtype)
