"""Swin Transformer backbone (Liu et al. 2021), computed as detectron2's `D2SwinTransformer`
(Mask2Former's backbone, from which SegEarth-R2 takes its weights).

Patch embedding (4x4 conv + LayerNorm), four stages of window-attention blocks (odd blocks use
windows shifted by window // 2 with the cross-region mask), patch merging at the end of every
stage but the last, and a LayerNorm on each stage output (before its patch merging). Inputs and
outputs are NHWC.

Padding follows the official code exactly:
- the image is zero-padded bottom/right to a multiple of the patch size before the patch conv;
- in each block, the map is zero-padded bottom/right to a multiple of the window *after*
  `norm1`; padded tokens are keys like any other (they are not masked; only the shifted regions
  are), and the padded rows/columns are cropped after the window attention;
- before patch merging, an odd map gets one zero row/column.
As in detectron2, odd blocks always shift, even when a map is no larger than the window, and the
shift mask is built on the padded size (transformers' Swin disables the shift when the map is no
larger than the window; the checkpoint was trained with detectron2's behaviour).

The blocks of a stage run as an `nn.scan` over (W-MSA, SW-MSA) pairs (one compiled pair per
stage instead of `depth` unrolled blocks; `scan=False` unrolls it), rematerialized by
`remat_policy` (models/common.layer_stack).

Parameter layout (the official names with `.` -> `/` and `layers.i` -> `layers_i`; official
block j of stage i is slot j // 2 of `blocks/w` (j even, unshifted) or `blocks/sw` (j odd,
shifted), every leaf stacked on axis 0 over the depth // 2 pairs):
    patch_embed/{proj, norm}
    layers_{i}/blocks/{w, sw}/{norm1, attn/{q, k, v, proj, relative_position_bias_table}, norm2,
                               mlp/{fc1, fc2}}
    layers_{i}/downsample/{norm, reduction}     (i < num_stages - 1)
    norm{i}                                     (output norm of stage i, i.e. of res{i + 2})
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segearth_jax.models.attention import dot_product_attention
from segearth_jax.models.common import FromVariant, check_stack, dense, layer_norm, layer_stack

VARIANTS: dict[str, dict[str, Any]] = {
    # Swin-B, window 12 (the IN-22k 384 checkpoint Mask2Former's Swin-B IN21k-384 starts from).
    "B/12": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=12,
                 patch_size=4, mlp_ratio=4.0),
    "tiny": dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), window_size=4,
                 patch_size=4, mlp_ratio=4.0),
}

# The additive value official Swin puts on attention logits between different shifted regions.
SHIFT_MASK_VALUE = -100.0


@dataclasses.dataclass(frozen=True)
class SwinConfig(FromVariant, variants=VARIANTS, kind="Swin"):
    embed_dim: int = 128
    depths: tuple[int, ...] = (2, 2, 18, 2)
    num_heads: tuple[int, ...] = (4, 8, 16, 32)
    window_size: int = 12
    patch_size: int = 4
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    attention_impl: str | None = "auto"  # see models/attention.py (with its bias: XLA)
    scan: bool = True  # False: each stage's pair loop unrolled (models/common.layer_stack)
    remat_policy: str = "none"  # per block pair; a key of models/common.REMAT_POLICIES
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_stack("Swin", self.scan, self.remat_policy)

    @property
    def channels(self) -> tuple[int, ...]:
        """Output channels of res2..res5 (C, 2C, 4C, 8C)."""
        return tuple(self.embed_dim * 2 ** i for i in range(len(self.depths)))


# ---------------------------------------------------------------------------------------------
# Trace-time constants (numpy) and window reshapes.


def relative_position_index(window: int) -> np.ndarray:
    """[w^2, w^2] int index into the (2w - 1)^2-row bias table (the official construction):
    entry (a, b) is the row of the relative offset (ya - yb, xa - xb), shifted to >= 0."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
    coords = coords.reshape(2, -1)  # [2, w^2], row-major (y, x) of each window token
    rel = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return rel[..., 0] * (2 * window - 1) + rel[..., 1]


def shift_region_ids(height: int, width: int, window: int, shift: int) -> np.ndarray:
    """[num_windows, w^2] region label of each token of the rolled, padded height x width map,
    per window (the official `img_mask` windowed): after the roll by -shift, the last `shift`
    rows/columns came from the top/left edge, so they form their own regions."""
    img = np.zeros((height, width), np.int32)
    cnt = 0
    for hs in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
        for ws in (slice(0, -window), slice(-window, -shift), slice(-shift, None)):
            img[hs, ws] = cnt
            cnt += 1
    windows = img.reshape(height // window, window, width // window, window)
    return windows.transpose(0, 2, 1, 3).reshape(-1, window * window)


def shift_window_mask(height: int, width: int, window: int, shift: int) -> jax.Array:
    """[num_windows, w^2, w^2] additive mask (0 / -100, float32) for shifted windows on a padded
    height x width map: tokens of different regions of the rolled map do not attend.

    Built from the [num_windows, w^2] labels by one compare, so under jit the constant is the
    labels, not the (large) mask."""
    ids = jnp.asarray(shift_region_ids(height, width, window, shift))
    return jnp.where(ids[:, None, :] != ids[:, :, None], SHIFT_MASK_VALUE, 0.0
                     ).astype(jnp.float32)


def window_partition(x: jax.Array, window: int) -> jax.Array:
    """[B, H, W, C] -> [B, num_windows, w^2, C] (windows row-major over the grid, tokens
    row-major inside a window)."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_merge(x: jax.Array, window: int, height: int, width: int) -> jax.Array:
    """Inverse of `window_partition`: [B, num_windows, w^2, C] -> [B, H, W, C]."""
    b, _, _, c = x.shape
    x = x.reshape(b, height // window, width // window, window, window, c)
    return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, c)


# ---------------------------------------------------------------------------------------------
# Modules.


class WindowAttention(nn.Module):
    """Multi-head self-attention inside each window, with the relative position bias."""

    config: SwinConfig
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
        """x [B, nW, N = w^2, C]; mask [nW, N, N] additive (shifted blocks) or None."""
        cfg = self.config
        b, nw, n, c = x.shape
        w, h = cfg.window_size, self.num_heads
        table = self.param("relative_position_bias_table", nn.initializers.truncated_normal(0.02),
                           ((2 * w - 1) ** 2, h), cfg.param_dtype)
        # [(2w-1)^2, heads] gathered to [N, N, heads] -> [heads, N, N]; fp32 like the logits.
        bias = table[relative_position_index(w).reshape(-1)].reshape(n, n, h)
        bias = bias.transpose(2, 0, 1).astype(jnp.float32)[None]  # [1, heads, N, N]
        if mask is not None:
            # [nW, heads, N, N], then the same for every image: [B * nW, heads, N, N].
            bias = bias + mask[:, None]
            bias = jnp.broadcast_to(bias[None], (b, nw, h, n, n)).reshape(b * nw, h, n, n)
        # Windows become the batch of the attention: [B * nW, N, heads, head_dim].
        heads = lambda y: y.reshape(b * nw, n, h, c // h)
        q, k, v = (heads(dense(cfg, c, name)(x)) for name in ("q", "k", "v"))
        # Scale head_dim^-0.5 (the official qk_scale default); logits and softmax in fp32.
        out = dot_product_attention(q, k, v, bias=bias, implementation=cfg.attention_impl)
        return dense(cfg, c, "proj")(out.reshape(b, nw, n, c))


class Mlp(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[..., C] -> [..., C]: fc1 (C -> mlp_ratio * C), exact GELU, fc2."""
        cfg = self.config
        c = x.shape[-1]
        x = jax.nn.gelu(dense(cfg, int(c * cfg.mlp_ratio), "fc1")(x), approximate=False)
        return dense(cfg, c, "fc2")(x)


class SwinBlock(nn.Module):
    """x + W-MSA(norm1(x)) (shifted windows if `shift`), then x + MLP(norm2(x))."""

    config: SwinConfig
    num_heads: int
    shift: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, H, W, C]."""
        cfg = self.config
        w = cfg.window_size
        _, h, wd, _ = x.shape
        shortcut = x
        x = layer_norm(cfg, "norm1")(x)
        hp, wp = -(-h // w) * w, -(-wd // w) * w
        x = jnp.pad(x, ((0, 0), (0, hp - h), (0, wp - wd), (0, 0)))  # zeros after norm1
        mask = None
        if self.shift:
            x = jnp.roll(x, (-self.shift, -self.shift), axis=(1, 2))
            mask = shift_window_mask(hp, wp, w, self.shift)
        x = WindowAttention(cfg, self.num_heads, name="attn")(window_partition(x, w), mask)
        x = window_merge(x, w, hp, wp)
        if self.shift:
            x = jnp.roll(x, (self.shift, self.shift), axis=(1, 2))
        x = shortcut + x[:, :h, :wd]
        return x + Mlp(cfg, name="mlp")(layer_norm(cfg, "norm2")(x))


class PatchMerging(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), 2C]: odd maps get a zero row/column, the
        2x2 neighbours are concatenated as (0,0), (1,0), (0,1), (1,1) (row, column) offsets,
        LayerNorm(4C), Linear(4C -> 2C, no bias)."""
        _, h, w, c = x.shape
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
        x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                             x[:, 1::2, 1::2]], axis=-1)
        x = layer_norm(self.config, "norm")(x)
        return dense(self.config, 2 * c, "reduction", use_bias=False)(x)


class SwinBlockPair(nn.Module):
    """Blocks 2p (`w`: windows) and 2p + 1 (`sw`: windows shifted by window // 2): the body of a
    stage's scan."""

    config: SwinConfig
    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array, _: None = None) -> tuple[jax.Array, None]:
        """[B, H, W, C] -> ([B, H, W, C], None) (carry, per-pair output) for nn.scan."""
        x = SwinBlock(self.config, self.num_heads, 0, name="w")(x)
        return SwinBlock(self.config, self.num_heads, self.config.window_size // 2,
                         name="sw")(x), None


class SwinStage(nn.Module):
    """One `BasicLayer`: `depth` blocks (odd ones shifted) as depth // 2 scanned pairs, then
    patch merging if `downsample`."""

    config: SwinConfig
    depth: int
    num_heads: int
    downsample: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """[B, H, W, C] -> (stage output [B, H, W, C], next stage input [B, H', W', C'])."""
        if self.depth % 2:
            raise ValueError(f"Swin stage depth {self.depth} is odd: the blocks run as "
                             "(W-MSA, SW-MSA) pairs")
        blocks = layer_stack(SwinBlockPair, scan=self.config.scan,
                             remat_policy=self.config.remat_policy, length=self.depth // 2,
                             variable_axes={"params": 0}, split_rngs={"params": True})
        x, _ = blocks(self.config, self.num_heads, name="blocks")(x, None)
        down = PatchMerging(self.config, name="downsample")(x) if self.downsample else x
        return x, down


class PatchEmbed(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> [B, ceil(H/p), ceil(W/p), C] (zero-padded bottom/right to a multiple
        of the patch size p, conv p x p stride p, LayerNorm)."""
        cfg = self.config
        p = cfg.patch_size
        _, h, w, _ = pixels.shape
        x = jnp.pad(pixels.astype(cfg.dtype), ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
        x = nn.Conv(cfg.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=cfg.dtype,
                    param_dtype=cfg.param_dtype, name="proj")(x)
        return layer_norm(cfg, "norm")(x)


class SwinTransformer(nn.Module):
    config: SwinConfig

    @nn.compact
    def __call__(self, pixels: jax.Array) -> dict[str, jax.Array]:
        """pixels [B, H, W, 3] (normalized) -> {"res2": [B, H/4, W/4, C], "res3": [B, H/8, W/8,
        2C], "res4": [B, H/16, W/16, 4C], "res5": [B, H/32, W/32, 8C]} (ceil divisions), each
        after its stage's output LayerNorm `norm{i}`."""
        cfg = self.config
        x = PatchEmbed(cfg, name="patch_embed")(pixels)
        outputs = {}
        num_stages = len(cfg.depths)
        for i, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            out, x = SwinStage(cfg, depth, heads, downsample=i < num_stages - 1,
                               name=f"layers_{i}")(x)
            outputs[f"res{i + 2}"] = layer_norm(cfg, f"norm{i}")(out)
        return outputs
