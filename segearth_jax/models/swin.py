"""Swin Transformer backbone (Liu et al. 2021), computed as detectron2's `D2SwinTransformer`
(Mask2Former's backbone, from which SegEarth-R2 takes its weights).

Patch embedding (4x4 conv + LayerNorm), four stages of window-attention blocks (odd blocks use
windows shifted by window // 2 with the cross-region mask), patch merging between stages, and a
LayerNorm on each stage output. Maps that the window does not divide are zero-padded at the
bottom/right after `norm1`, as the official code does (padded tokens are keys like any other;
only the shifted regions are masked). As in detectron2, odd blocks always shift, even when a map
is no larger than the window (transformers then disables the shift; the checkpoint was trained
with detectron2's behaviour). Inputs and outputs are NHWC.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

VARIANTS: dict[str, dict[str, Any]] = {
    "B/12": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12),
    "tiny": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4),
}


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @classmethod
    def from_variant(cls, name: str, **overrides: Any) -> SwinConfig:
        if name not in VARIANTS:
            raise ValueError(f"unknown Swin variant {name!r}; known: {sorted(VARIANTS)}")
        return cls(**{**VARIANTS[name], **overrides})

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of res2..res5."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))


def relative_position_index(window: int) -> np.ndarray:
    """[window^2, window^2] index into the (2w - 1)^2-row bias table (official construction)."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_window_mask(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[num_windows, w^2, w^2] additive mask (0 / -100) for shifted windows on a padded
    height x width map: tokens from different regions of the rolled map do not attend."""
    img = np.zeros((height, width), np.float32)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    windows = img.reshape(height // window, window, width // window, window)
    windows = windows.transpose(0, 2, 1, 3).reshape(-1, window * window)
    return np.where(windows[:, None, :] != windows[:, :, None], -100.0, 0.0).astype(np.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """[B, H, W, C] -> [B, num_windows, w^2, C] (windows row-major over the grid)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_merge(x: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: [B, num_windows, w^2, C] -> [B, H, W, C]."""
    b, _, _, c = x.shape
    x = x.reshape(b, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


def _dense(cfg: SwinConfig, features: int, name: str, use_bias: bool = True) -> nn.Dense:
    return nn.Dense(features, use_bias=use_bias, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                    name=name)


def _layer_norm(cfg: SwinConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=cfg.layer_norm_eps, use_fast_variance=False, dtype=cfg.dtype,
                        param_dtype=cfg.param_dtype, name=name)


class WindowAttention(nn.Module):
    config: SwinConfig
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: np.ndarray | None) -> jax.Array:
        """x [B, num_windows, N = w^2, C]; mask [num_windows, N, N] additive or None."""
        cfg = self.config
        b, nw, n, c = x.shape
        w = cfg.window_size
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * w - 1) ** 2, self.num_heads), cfg.param_dtype)
        bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, self.num_heads)
        bias = bias.transpose(2, 0, 1).astype(jnp.float32)  # [heads, N, N]
        if mask is not None:
            bias = bias[None] + jnp.asarray(mask)[:, None]  # [nW, heads, N, N]
        heads = lambda y: y.reshape(b, nw, n, self.num_heads, c // self.num_heads)
        q = heads(_dense(cfg, c, "q")(x)) * (c // self.num_heads) ** -0.5
        k = heads(_dense(cfg, c, "k")(x))
        v = heads(_dense(cfg, c, "v")(x))
        # Window attention is small (N = w^2 keys): plain einsums, softmax in fp32.
        logits = jnp.einsum("bwqhd,bwkhd->bwhqk", q, k).astype(jnp.float32) + bias
        probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        out = jnp.einsum("bwhqk,bwkhd->bwqhd", probs, v).reshape(b, nw, n, c)
        return _dense(cfg, c, "proj")(out)


class SwinBlock(nn.Module):
    config: SwinConfig
    num_heads: int
    shift: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        cfg = self.config
        w = cfg.window_size
        b, h, wd, c = x.shape
        shortcut = x
        x = _layer_norm(cfg, "norm1")(x)
        hp, wp = -(-h // w) * w, -(-wd // w) * w
        x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - wd), (0, 0)))
        mask = None
        if self.shift:
            x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
            mask = shift_window_mask(hp, wp, w, self.shift)
        x = WindowAttention(cfg, self.num_heads, name="attn")(window_partition(x, w), mask)
        x = window_merge(x, w, hp, wp)
        if self.shift:
            x = jnp.roll(x, (self.shift, self.shift), axis=(1, 2))
        x = shortcut + x[:, :h, :wd]
        y = _layer_norm(cfg, "norm2")(x)
        y = _dense(cfg, int(c * cfg.mlp_ratio), "fc1")(y)
        y = _dense(cfg, c, "fc2")(jax.nn.gelu(y, approximate=False))
        return x + y


class PatchMerging(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C] (odd maps zero-padded first)."""
        b, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        x = _layer_norm(self.config, "norm")(x)
        return _dense(self.config, 2 * c, "reduction", use_bias=False)(x)


class SwinTransformer(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        """pixels [B, H, W, 3] (normalized) -> {"res2": [B, H/4, W/4, C], ..., "res5":
        [B, H/32, W/32, 8C]} (ceil division), each after its stage's output LayerNorm."""
        cfg = self.config
        p = cfg.patch_size
        b, h, w, _ = pixels.shape
        x = jnp.pad(pixels.astype(cfg.dtype), ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        x = nn.Conv(cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="patch_embed_proj")(x)
        x = _layer_norm(cfg, "patch_embed_norm")(x)
        outputs = {}
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            for j in range(depth):
                shift = cfg.window_size // 2 if j % 2 else 0
                x = SwinBlock(cfg, heads, shift, name=f"layers_{i}_blocks_{j}")(x)
            outputs[f"res{i + 2}"] = _layer_norm(cfg, f"norm{i}")(x)
            if i < len(cfg.depths) - 1:
                x = PatchMerging(cfg, name=f"layers_{i}_downsample")(x)
        return outputs
