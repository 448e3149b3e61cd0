"""Multi-scale deformable attention (Zhu et al. 2021, Deformable DETR), as Mask2Former's pixel
decoder uses it (detectron2 `MSDeformAttn`, transformers'
`Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention`).

Each query attends to `num_points` bilinearly sampled points on each of `num_levels` feature
maps, around its reference point, with learned offsets and softmax weights (over levels x points,
per head). The sampling is `grid_sample(align_corners=False, padding_mode="zeros")`; it gathers
the four corner rows of each sample straight from the level's flattened value map, so memory is
O(B * Q * heads * points * head_dim) per corner and level: no per-query copy of a value map and no
dense one-hot interpolation matrix.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.common import dense
from segearth_jax.resample import bilinear_taps


def multi_scale_deformable_attention(value: jax.Array, spatial_shapes: Sequence[tuple[int, int]],
                                     sampling_locations: jax.Array,
                                     attention_weights: jax.Array) -> jax.Array:
    """Weighted sum of bilinear samples of multi-level value maps.

    value: [B, S, H, Dh], the levels' maps flattened row-major and concatenated
      (S = sum of H_l * W_l); spatial_shapes: static ((H_0, W_0), ...);
    sampling_locations: [B, Q, H, L, P, 2], normalized (x, y), (0, 0) the top-left corner of the
      map and (1, 1) the bottom-right one; samples outside the map read zeros;
    attention_weights: [B, Q, H, L, P].
    Returns [B, Q, H * Dh] (head-major channels, as the PyTorch reference).
    """
    b, s, n_heads, head_dim = value.shape
    _, q, _, n_levels, n_points, _ = sampling_locations.shape
    if s != sum(h * w for h, w in spatial_shapes) or n_levels != len(spatial_shapes):
        raise ValueError(f"value has {s} positions on {n_levels} levels, spatial shapes "
                         f"{tuple(spatial_shapes)} give {sum(h * w for h, w in spatial_shapes)}")
    out = jnp.zeros((b, n_heads, q, head_dim), value.dtype)
    start = 0
    for level, (height, width) in enumerate(spatial_shapes):
        # [B, HW_l, H, Dh] -> [B, H, HW_l, Dh]: one gather axis per (batch, head).
        v = value[:, start:start + height * width].transpose(0, 2, 1, 3)
        start += height * width
        # [B, Q, H, P, 2] -> [B, H, Q * P, 2]
        loc = sampling_locations[:, :, :, level].transpose(0, 2, 1, 3, 4).reshape(
            b, n_heads, q * n_points, 2)
        # [B, Q, H, P] -> [B, H, Q * P]
        attn = attention_weights[:, :, :, level].transpose(0, 2, 1, 3).reshape(
            b, n_heads, q * n_points)
        for index, w in bilinear_taps(loc, height, width):  # each [B, H, Q * P]
            corner = jnp.take_along_axis(v, index[..., None], axis=2)  # [B, H, Q * P, Dh]
            weight = (w * attn).astype(value.dtype)  # w is 0 outside the map
            # Sum over the points of each query: [B, H, Q, P, Dh] x [B, H, Q, P] -> [B, H, Q, Dh]
            out = out + jnp.einsum("bhqpd,bhqp->bhqd",
                                   corner.reshape(b, n_heads, q, n_points, head_dim),
                                   weight.reshape(b, n_heads, q, n_points))
    # [B, H, Q, Dh] -> [B, Q, H * Dh]
    return out.transpose(0, 2, 1, 3).reshape(b, q, n_heads * head_dim)


def grid_offsets_init(num_heads: int, num_levels: int, num_points: int):
    """Deformable DETR's `sampling_offsets.bias` init: head h points along angle 2*pi*h/heads,
    scaled so the larger coordinate is 1, point p at (p + 1) times that; flat (H, L, P, 2)."""

    def init(key, shape, dtype=jnp.float32):
        del key
        thetas = jnp.arange(num_heads, dtype=jnp.float32) * (2.0 * math.pi / num_heads)
        grid = jnp.stack([jnp.cos(thetas), jnp.sin(thetas)], -1)  # [H, 2]
        grid = grid / jnp.abs(grid).max(-1, keepdims=True)
        scale = jnp.arange(1, num_points + 1, dtype=jnp.float32)
        grid = grid[:, None, None, :] * scale[None, None, :, None]  # [H, 1, P, 2]
        grid = jnp.broadcast_to(grid, (num_heads, num_levels, num_points, 2))
        return grid.reshape(shape).astype(dtype)

    return init


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention with Deformable DETR's initialization (zero offset
    kernel + grid-pattern bias, zero attention-weight projection: uniform weights at init,
    xavier-uniform value/output projections)."""

    d_model: int = 256
    num_heads: int = 8
    num_levels: int = 4
    num_points: int = 4
    # Recompute the bilinear sampling (its corner gathers) in the backward pass instead of
    # keeping the gathered corner values: [B, H, Q * P, Dh] x 4 corners x levels.
    remat_sampling: bool = False
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, query: jax.Array, reference_points: jax.Array, input_flatten: jax.Array,
                 spatial_shapes: Sequence[tuple[int, int]],
                 padding_mask: jax.Array | None = None) -> jax.Array:
        """query [B, Q, D] (content + position), reference_points [B, Q, L, 2] normalized (x, y),
        input_flatten [B, S, D] (levels concatenated, row-major), spatial_shapes static
        ((H_l, W_l), ...), padding_mask [B, S] True where padded (optional) -> [B, Q, D]."""
        b, q, _ = query.shape
        s = input_flatten.shape[1]
        heads, levels, points = self.num_heads, self.num_levels, self.num_points
        if len(spatial_shapes) != levels:
            raise ValueError(f"{len(spatial_shapes)} spatial shapes for {levels} levels")
        xavier = dict(kernel_init=nn.initializers.xavier_uniform(),
                      bias_init=nn.initializers.zeros)
        zero = dict(kernel_init=nn.initializers.zeros, bias_init=nn.initializers.zeros)

        value = dense(self, self.d_model, "value_proj", **xavier)(input_flatten)
        if padding_mask is not None:
            value = jnp.where(padding_mask[..., None], 0, value)
        value = value.reshape(b, s, heads, self.d_model // heads)
        offsets = dense(self, heads * levels * points * 2, "sampling_offsets",
                        kernel_init=nn.initializers.zeros,
                        bias_init=grid_offsets_init(heads, levels, points))(query)
        offsets = offsets.astype(jnp.float32).reshape(b, q, heads, levels, points, 2)
        weights = dense(self, heads * levels * points, "attention_weights", **zero)(query)
        # Softmax over levels x points jointly, per head.
        weights = jax.nn.softmax(weights.astype(jnp.float32).reshape(b, q, heads, levels * points),
                                 axis=-1).reshape(b, q, heads, levels, points)
        # Offsets are in pixels of each level: normalize by (W_l, H_l).
        normalizer = jnp.array([(w, h) for h, w in spatial_shapes], jnp.float32)  # [L, 2]
        locations = (reference_points.astype(jnp.float32)[:, :, None, :, None, :]
                     + offsets / normalizer[None, None, None, :, None, :])
        sample = multi_scale_deformable_attention
        if self.remat_sampling:
            sample = jax.checkpoint(sample, static_argnums=(1,), prevent_cse=False)
        out = sample(value, tuple(spatial_shapes), locations, weights)
        return dense(self, self.d_model, "output_proj", **xavier)(out)
