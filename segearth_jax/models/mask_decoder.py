"""Mask2Former's masked-attention transformer decoder, with queries supplied from outside.

In SegEarth-R2 every query is a projected `[SEG]` hidden state; there are no learnable queries,
the query positional embedding is zero, and there is no class head. Each layer (post-norm):
masked cross-attention to one pixel-decoder level (cycling 1/32, 1/16, 1/8) -> self-attention ->
FFN. The cross-attention of layer i is blocked where sigmoid(mask prediction i, resized to the
level) < 0.5, and unblocked for a query whose whole row would be blocked. Predictions: one from
the input queries and one after each layer (num_layers + 1 = 10 for deep supervision).

`independent_queries` (default) restricts query-to-query self-attention to the diagonal: N
queries in one pass then give exactly what N single-query passes (the official code) give.
Padded queries (`query_valid` False) never influence valid ones.

The layers run as an `nn.scan` over num_layers // num_levels rounds, each round one layer per
level (their memories differ in size, so one round is the repeated unit), optionally
rematerialized (`remat`). Parameter layout: `level_embed`, `head/{decoder_norm,
mask_embed_{0,1,2}}` (shared by every prediction) and `layers/level_{l}/{cross_attn, self_attn,
cross_attn_norm, self_attn_norm, linear1, linear2, ffn_norm}`, stacked on axis 0 over the
rounds: detectron2's layer i is slot i // num_levels of `level_{i % num_levels}`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.attention import dot_product_attention
from segearth_jax.models.common import FromVariant, check_stack, dense, layer_norm, layer_stack
from segearth_jax.models.position_encoding import sine_position_embedding
from segearth_jax.resample import resize_bilinear

VARIANTS: dict[str, dict[str, Any]] = {
    # detectron2 DEC_LAYERS = 10 means 9 layers here (plus the prediction from the input queries).
    "m2f": dict(hidden_dim=256, num_heads=8, dim_feedforward=2048, num_layers=9, mask_dim=256),
    "tiny": dict(hidden_dim=32, num_heads=4, dim_feedforward=64, num_layers=3, mask_dim=32),
}


@dataclasses.dataclass(frozen=True)
class MaskDecoderConfig(FromVariant, variants=VARIANTS, kind="mask decoder"):
    hidden_dim: int = 256
    num_heads: int = 8
    dim_feedforward: int = 2048
    num_layers: int = 9
    mask_dim: int = 256
    num_levels: int = 3
    independent_queries: bool = True
    layer_norm_eps: float = 1e-5  # torch.nn.LayerNorm default.
    attention_impl: str | None = "auto"
    scan: bool = True  # False: the round loop unrolled (models/common.layer_stack)
    remat_policy: str = "none"  # per round; a key of models/common.REMAT_POLICIES
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_stack("mask decoder", self.scan, self.remat_policy)


class MultiHeadAttention(nn.Module):
    """`torch.nn.MultiheadAttention` (batch first): q/k/v/out projections with biases."""

    config: MaskDecoderConfig

    @nn.compact
    def __call__(self, query: jax.Array, key: jax.Array, value: jax.Array,
                 mask: jax.Array | None) -> jax.Array:
        """query [B, Q, C], key/value [B, S, C], mask: bool allowed [B, 1|H, Q, S]. -> [B, Q, C]."""
        cfg = self.config
        b, q_len, c = query.shape
        heads = lambda x: x.reshape(*x.shape[:2], cfg.num_heads, c // cfg.num_heads)
        q = heads(dense(cfg, c, "q")(query))
        k = heads(dense(cfg, c, "k")(key))
        v = heads(dense(cfg, c, "v")(value))
        out = dot_product_attention(q, k, v, mask=mask, implementation=cfg.attention_impl)
        return dense(cfg, c, "out")(out.reshape(b, q_len, c))


class MaskedDecoderLayer(nn.Module):
    config: MaskDecoderConfig

    @nn.compact
    def __call__(self, x, query_pos, memory, memory_pos, memory_mask, self_mask):
        """x, query_pos [B, Q, C]; memory, memory_pos [B, S, C]; masks bool allowed."""
        cfg = self.config
        t = MultiHeadAttention(cfg, name="cross_attn")(x + query_pos, memory + memory_pos, memory,
                                                       memory_mask)
        x = layer_norm(cfg, "cross_attn_norm")(x + t)
        qk = x + query_pos
        t = MultiHeadAttention(cfg, name="self_attn")(qk, qk, x, self_mask)
        x = layer_norm(cfg, "self_attn_norm")(x + t)
        t = dense(cfg, cfg.hidden_dim, "linear2")(
            nn.relu(dense(cfg, cfg.dim_feedforward, "linear1")(x)))
        return layer_norm(cfg, "ffn_norm")(x + t)


class MaskHead(nn.Module):
    """decoder_norm -> mask_embed (3-layer MLP) -> dot product with the mask features."""

    config: MaskDecoderConfig

    @nn.compact
    def __call__(self, x: jax.Array, mask_features: jax.Array) -> jax.Array:
        """x [B, Q, C], mask_features [B, H, W, mask_dim] -> mask logits [B, Q, H, W]."""
        cfg = self.config
        h = layer_norm(cfg, "decoder_norm")(x)
        for i, width in enumerate((cfg.hidden_dim, cfg.hidden_dim, cfg.mask_dim)):
            h = dense(cfg, width, f"mask_embed_{i}")(h)
            h = nn.relu(h) if i < 2 else h
        return jnp.einsum("bqc,bhwc->bqhw", h, mask_features.astype(h.dtype))


def attention_mask_from_prediction(mask_logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Masked attention: [B, Q, H, W] logits -> allowed keys [B, 1, Q, h*w] at a level's size.

    Bilinear resize with half-pixel centers and no antialiasing (torch's
    `F.interpolate(mode="bilinear", align_corners=False)`); blocked where sigmoid < 0.5; a row
    that would be fully blocked is fully allowed. No gradient flows through the mask.
    """
    b, q = mask_logits.shape[:2]
    resized = resize_bilinear(mask_logits.astype(jnp.float32), size)
    allowed = (jax.nn.sigmoid(resized) >= 0.5).reshape(b, q, -1)
    allowed = allowed | ~jnp.any(allowed, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(allowed)[:, None]


class DecoderRound(nn.Module):
    """One layer per level (`level_{l}` cross-attends to level l), each followed by the shared
    mask head's prediction, which masks the next layer's cross-attention: a scan body."""

    config: MaskDecoderConfig
    sizes: tuple[tuple[int, int], ...]

    @nn.compact
    def __call__(self, carry, memories, positions, query_pos, self_mask, mask_features,
                 head_params):
        """carry: (x [B, Q, C], last prediction [B, Q, H, W]); memories/positions: per level
        [B, S_l, C]; head_params: the shared MaskHead's (a broadcast input, so that every
        prediction uses, and trains, the same head). -> (carry, predictions [levels, B, Q, H,
        W])."""
        cfg = self.config
        x, prediction = carry
        head = MaskHead(cfg, parent=None)  # unbound: applied with the shared params
        predictions = []
        for level, size in enumerate(self.sizes):
            memory_mask = attention_mask_from_prediction(prediction, size)
            x = MaskedDecoderLayer(cfg, name=f"level_{level}")(
                x, query_pos, memories[level], positions[level], memory_mask, self_mask)
            prediction = head.apply({"params": head_params}, x, mask_features)
            predictions.append(prediction)
        return (x, prediction), jnp.stack(predictions)


class MaskedTransformerDecoder(nn.Module):
    config: MaskDecoderConfig

    @nn.compact
    def __call__(self, queries: jax.Array, multi_scale_features: list[jax.Array],
                 mask_features: jax.Array, query_valid: jax.Array | None = None) -> jax.Array:
        """All mask predictions.

        queries: [B, Q, C] (projected `[SEG]` states); multi_scale_features: num_levels NHWC maps
        [B, h_l, w_l, C], coarsest first (pixel decoder order); mask_features: [B, H, W, mask_dim]
        (stride 4); query_valid: [B, Q] bool, False for padding (None: all valid).
        Returns mask logits [num_layers + 1, B, Q, H, W], the last one the final prediction.
        """
        cfg = self.config
        if len(multi_scale_features) != cfg.num_levels:
            raise ValueError(f"expected {cfg.num_levels} feature levels, got "
                             f"{len(multi_scale_features)}")
        b, n_q, c = queries.shape
        level_embed = self.param("level_embed", nn.initializers.normal(1.0),
                                 (cfg.num_levels, c), cfg.param_dtype)
        memories, positions, sizes = [], [], []
        for i, f in enumerate(multi_scale_features):
            h, w = f.shape[1:3]
            sizes.append((h, w))
            memories.append(f.reshape(b, h * w, c).astype(cfg.dtype) + level_embed[i].astype(
                cfg.dtype))
            pe = sine_position_embedding(h, w, c // 2, dtype=cfg.dtype)
            positions.append(jnp.broadcast_to(pe.reshape(1, h * w, c), (b, h * w, c)))
        query_pos = jnp.zeros_like(queries, dtype=cfg.dtype)
        x = queries.astype(cfg.dtype)

        if cfg.independent_queries:
            self_mask = jnp.eye(n_q, dtype=bool)[None, None]
        elif query_valid is not None:
            self_mask = query_valid.astype(bool)[:, None, None, :]
        else:
            self_mask = None

        if cfg.num_layers % cfg.num_levels:
            raise ValueError(f"mask decoder: num_layers {cfg.num_layers} must be a multiple of "
                             f"num_levels {cfg.num_levels} (the layers run in rounds over the "
                             "levels)")
        head = MaskHead(cfg, name="head")
        first = head(x, mask_features)
        rounds = layer_stack(DecoderRound, scan=cfg.scan, remat_policy=cfg.remat_policy,
                             length=cfg.num_layers // cfg.num_levels,
                             variable_axes={"params": 0}, split_rngs={"params": True},
                             in_axes=(nn.broadcast,) * 6)
        _, later = rounds(cfg, tuple(sizes), name="layers")(
            (x, first), memories, positions, query_pos, self_mask, mask_features,
            head.variables["params"])
        # [rounds, levels, B, Q, H, W] -> [num_layers, ...] in layer order (round-major).
        return jnp.concatenate([first[None], later.reshape(-1, *later.shape[2:])])
