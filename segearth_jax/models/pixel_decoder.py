"""Mask2Former's pixel decoder (Cheng et al. 2022), `MSDeformAttnPixelDecoder`, computed as
detectron2 Mask2Former / transformers' `Mask2FormerPixelDecoder`.

The coarsest `num_levels` backbone maps (res5, res4, res3: index 0 is res5, as detectron2's
`input_proj.0`) are projected to `conv_dim` (1x1 conv + GroupNorm), given a sine position
encoding plus a learned per-level embedding, flattened, concatenated and refined by a stack of
post-norm deformable-attention encoder layers; the result is split back into maps. The remaining,
finer maps (res2) form an FPN top-down path: lateral `adapter_k` (1x1 conv, GroupNorm) + bilinear
upsampling of the previous output, then `layer_k` (3x3 conv, GroupNorm, ReLU). `mask_features` is
a 1x1 conv of the finest FPN output (stride 4).

Parameter layout (detectron2 name in brackets; `encoder/layers` is an `nn.scan`, every leaf
stacked on axis 0 over the encoder layers):
  input_proj_{i}/conv, input_proj_{i}/norm    [input_proj.{i}.0, input_proj.{i}.1]
  level_embed                                  [transformer.level_embed]
  encoder/layers/self_attn/{sampling_offsets, attention_weights, value_proj, output_proj},
  encoder/layers/{norm1, linear1, linear2, norm2}   [transformer.encoder.layers.{n}.*]
  adapter_{k}/conv, adapter_{k}/norm           [adapter_{k}, adapter_{k}.norm]
  layer_{k}/conv, layer_{k}/norm               [layer_{k}, layer_{k}.norm]
  mask_features                                [mask_features]

Inputs and outputs are NHWC. No dropout: Mask2Former trains this encoder with dropout 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.common import FromVariant, check_stack, dense, layer_norm, layer_stack
from segearth_jax.models.msdeform_attn import MSDeformAttn
from segearth_jax.models.position_encoding import sine_position_embedding
from segearth_jax.resample import resize_bilinear

VARIANTS: dict[str, dict[str, Any]] = {
    # Mask2Former on Swin-B: res2..res5 with 128/256/512/1024 channels.
    "swin-b": dict(in_channels=(128, 256, 512, 1024)),
    # CPU tests and demos; GroupNorm(32) needs conv_dim % 32 == 0.
    "tiny": dict(in_channels=(16, 24, 32, 48), conv_dim=64, mask_dim=32, num_heads=4,
                 encoder_layers=2, ffn_dim=128),
}


@dataclasses.dataclass(frozen=True)
class PixelDecoderConfig(FromVariant, variants=VARIANTS, kind="pixel decoder"):
    in_channels: tuple[int, ...] = (128, 256, 512, 1024)  # res2..res5, finest first.
    conv_dim: int = 256
    mask_dim: int = 256
    num_heads: int = 8
    num_points: int = 4
    num_levels: int = 3  # the coarsest maps go through the deformable encoder; the rest: FPN.
    encoder_layers: int = 6
    ffn_dim: int = 1024
    num_groups: int = 32  # GroupNorm groups.
    group_norm_eps: float = 1e-5  # torch.nn.GroupNorm default.
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm default.
    # The official SegEarth-R2 uses Mask2Former-Simplify's FPN: its convs have a bias and the
    # lateral `adapter_k` ends in a ReLU. False: detectron2's Mask2Former (the paper's).
    simplify_fpn: bool = False
    scan: bool = True  # False: the encoder layer loop unrolled (models/common.layer_stack)
    # What the deformable encoder recomputes in the backward pass instead of keeping (at 1024
    # input its 6 layers keep ~21 GiB, most of it the bilinear corner values): a key of
    # models/common.REMAT_POLICIES for each whole encoder layer ("full": all of it), or
    # "sampling": only the bilinear sampling (the corner gathers, `jax.checkpoint`), the
    # projections and the FFN keep their activations.
    remat_policy: str = "none"
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_stack("pixel decoder", self.scan, self.remat_policy, extra=("sampling",))

    @property
    def num_fpn_levels(self) -> int:
        return len(self.in_channels) - self.num_levels


# detectron2's c2_xavier_fill: kaiming_uniform(a=1) = U(+-sqrt(3 / fan_in)), zero bias.
_c2_xavier = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")


def _conv(cfg: PixelDecoderConfig, features: int, kernel: int, use_bias: bool, name: str
          ) -> nn.Conv:
    return nn.Conv(features, (kernel, kernel), padding=kernel // 2, use_bias=use_bias,
                   kernel_init=_c2_xavier, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                   name=name)


def _group_norm(cfg: PixelDecoderConfig) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=cfg.num_groups, epsilon=cfg.group_norm_eps,
                        use_fast_variance=False, dtype=cfg.dtype, param_dtype=cfg.param_dtype,
                        name="norm")


class ConvNorm(nn.Module):
    """Conv (`conv`) -> GroupNorm (`norm`) [-> ReLU], NHWC."""

    config: PixelDecoderConfig
    kernel: int = 1
    use_bias: bool = True
    relu: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        x = _conv(cfg, cfg.conv_dim, self.kernel, self.use_bias, "conv")(x)
        x = _group_norm(cfg)(x)
        return nn.relu(x) if self.relu else x


class EncoderLayer(nn.Module):
    """Post-norm deformable encoder layer (detectron2 `MSDeformAttnTransformerEncoderLayer`):
    x = norm1(x + attn(x + pos)); x = norm2(x + linear2(relu(linear1(x))))."""

    config: PixelDecoderConfig
    spatial_shapes: tuple[tuple[int, int], ...]

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
                 padding_mask: jax.Array | None) -> tuple[jax.Array, None]:
        """x, pos [B, S, D]; reference_points [B or 1, S, L, 2] -> ([B, S, D], None) (scan)."""
        cfg = self.config
        xavier = lambda features, name: dense(cfg, features, name,
                                              kernel_init=nn.initializers.xavier_uniform())
        reference_points = jnp.broadcast_to(
            reference_points, (x.shape[0],) + reference_points.shape[1:])
        attn = MSDeformAttn(cfg.conv_dim, cfg.num_heads, cfg.num_levels, cfg.num_points,
                            remat_sampling=cfg.remat_policy == "sampling", dtype=cfg.dtype,
                            param_dtype=cfg.param_dtype, name="self_attn")
        x = layer_norm(cfg, "norm1")(x + attn(x + pos, reference_points, x, self.spatial_shapes,
                                              padding_mask))
        h = xavier(cfg.conv_dim, "linear2")(nn.relu(xavier(cfg.ffn_dim, "linear1")(x)))
        return layer_norm(cfg, "norm2")(x + h), None


class Encoder(nn.Module):
    """`encoder_layers` EncoderLayers, scanned: parameters stacked on axis 0 (`layers/...`);
    each layer rematerialized by `config.remat_policy` (models/common.layer_stack)."""

    config: PixelDecoderConfig
    spatial_shapes: tuple[tuple[int, int], ...]

    @nn.compact
    def __call__(self, x: jax.Array, pos: jax.Array, reference_points: jax.Array,
                 padding_mask: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        layers = layer_stack(EncoderLayer, scan=cfg.scan, remat_policy=cfg.remat_policy,
                             length=cfg.encoder_layers, variable_axes={"params": 0},
                             split_rngs={"params": True},
                             in_axes=(nn.broadcast, nn.broadcast, nn.broadcast))
        x, _ = layers(self.config, self.spatial_shapes, name="layers")(
            x, pos, reference_points, padding_mask)
        return x


def reference_points(spatial_shapes: Sequence[tuple[int, int]]) -> jax.Array:
    """[1, S, L, 2]: each position's pixel centre (x, y), normalized by its own map's size and
    repeated for every level (all maps fully valid, so no valid-ratio rescaling)."""
    points = []
    for h, w in spatial_shapes:
        y, x = jnp.meshgrid((jnp.arange(h, dtype=jnp.float32) + 0.5) / h,
                            (jnp.arange(w, dtype=jnp.float32) + 0.5) / w, indexing="ij")
        points.append(jnp.stack([x.reshape(-1), y.reshape(-1)], -1))  # row-major, as flatten.
    points = jnp.concatenate(points, 0)  # [S, 2]
    return jnp.broadcast_to(points[None, :, None, :],
                            (1, points.shape[0], len(spatial_shapes), 2))


class MSDeformAttnPixelDecoder(nn.Module):
    config: PixelDecoderConfig

    @nn.compact
    def __call__(self, features: Sequence[jax.Array]) -> tuple[jax.Array, list[jax.Array]]:
        """features: NHWC backbone maps finest first ([res2, res3, res4, res5], channels
        `in_channels`) -> (mask_features [B, H2, W2, mask_dim] at res2's size,
        multi_scale_features [res5-, res4-, res3-sized maps, each [B, h, w, conv_dim]],
        i.e. coarsest (1/32) first)."""
        cfg = self.config
        if len(features) != len(cfg.in_channels) or any(
                f.shape[-1] != c for f, c in zip(features, cfg.in_channels, strict=True)):
            raise ValueError(f"expected {len(cfg.in_channels)} NHWC maps with channels "
                             f"{cfg.in_channels}, got shapes {[f.shape for f in features]}")
        b = features[0].shape[0]
        d = cfg.conv_dim
        # Encoder levels, coarsest first: input_proj_0 acts on res5.
        deformable = features[::-1][:cfg.num_levels]
        spatial_shapes = tuple((f.shape[1], f.shape[2]) for f in deformable)
        level_embed = self.param("level_embed", nn.initializers.normal(1.0),
                                 (cfg.num_levels, d), cfg.param_dtype)
        src, pos = [], []
        for i, f in enumerate(deformable):
            h, w = f.shape[1:3]
            x = ConvNorm(cfg, name=f"input_proj_{i}")(f.astype(cfg.dtype))
            src.append(x.reshape(b, h * w, d))  # row-major, as torch's flatten(2).
            p = sine_position_embedding(h, w, d // 2, scale=2 * math.pi).reshape(1, h * w, d)
            pos.append(p + level_embed[i].astype(jnp.float32))
        src = jnp.concatenate(src, axis=1)  # [B, S, D]
        pos = jnp.concatenate(pos, axis=1).astype(cfg.dtype)  # [1, S, D]
        memory = Encoder(cfg, spatial_shapes, name="encoder")(
            src, pos, reference_points(spatial_shapes))
        outputs, start = [], 0
        for h, w in spatial_shapes:  # split back into maps: [B, h * w, D] -> [B, h, w, D]
            outputs.append(memory[:, start:start + h * w].reshape(b, h, w, d))
            start += h * w
        # FPN on the finer maps, coarse to fine: adapter_k acts on features[k - 1].
        for k in range(cfg.num_fpn_levels, 0, -1):
            lateral = ConvNorm(cfg, use_bias=cfg.simplify_fpn, relu=cfg.simplify_fpn,
                               name=f"adapter_{k}")(features[k - 1].astype(cfg.dtype))
            x = lateral + resize_bilinear(outputs[-1], lateral.shape[1:3], axes=(1, 2))
            outputs.append(ConvNorm(cfg, kernel=3, use_bias=cfg.simplify_fpn, relu=True,
                                    name=f"layer_{k}")(x))
        mask_features = _conv(cfg, cfg.mask_dim, 1, True, "mask_features")(outputs[-1])
        return mask_features, outputs[:cfg.num_levels]
