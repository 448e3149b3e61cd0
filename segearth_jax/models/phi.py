"""Phi-2 decoder, computed exactly as transformers' `PhiForCausalLM`.

Each block is parallel: `x + attn(ln(x)) + mlp(ln(x))` with one `input_layernorm`; attention has
biased q/k/v/dense projections and rotary embeddings (rotate-half) on the first
`partial_rotary_factor * head_dim` dims; the MLP is fc1 -> gelu_new -> fc2. Layers are scanned
(`nn.scan`, parameters stacked on a leading layer axis; `scan=False` unrolls the loop) and
rematerialized by `remat_policy`.

Extras over the HF model:
  * multimodal embedding: rows of `input_ids` equal to `image_token_id` are replaced, in order,
    by the rows of `image_features` (the projected SigLIP tokens);
  * a KV cache (`decode=True`, Linen 'cache' collection) for incremental decoding;
  * the `[SEG]` attention probe: given `seg_positions`, every layer sows (collection
    'intermediates', name 'seg_attention') the post-softmax attention of the `[SEG]` query rows
    over the image-token columns, computed for those rows only (docs/conventions.md, Losses).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from segearth_jax.constants import IMAGE_TOKEN_ID
from segearth_jax.models.attention import dot_product_attention
from segearth_jax.models.common import FromVariant, check_stack, layer_norm, layer_stack
from segearth_jax.models.lora import LoRAConfig, dense

# Architecture variants (HF PhiConfig field meanings). `phi-2` is the Mipha-3B language model.
VARIANTS: dict[str, dict[str, Any]] = {
    "phi-2": dict(vocab_size=51200, hidden_size=2560, num_layers=32, num_heads=32,
                  intermediate_size=10240),
    "tiny": dict(vocab_size=512, hidden_size=64, num_layers=2, num_heads=4,
                 intermediate_size=128),
}


@dataclasses.dataclass(frozen=True)
class PhiConfig(FromVariant, variants=VARIANTS, kind="Phi"):
    vocab_size: int = 51200
    hidden_size: int = 2560
    num_layers: int = 32
    num_heads: int = 32
    intermediate_size: int = 10240
    partial_rotary_factor: float = 0.4
    rope_theta: float = 10000.0
    layer_norm_eps: float = 1e-5
    lm_head_bias: bool = True  # Mipha/HF: True; the official SegEarth-R2 rebuilds it without.
    resid_pdrop: float = 0.0
    embd_pdrop: float = 0.0
    image_token_id: int = IMAGE_TOKEN_ID
    seg_probe_heads: str = "mean"  # 'mean': [B, S, N] per layer; 'all': [B, H, S, N].
    attention_impl: str | None = "auto"  # see models/attention.py
    scan: bool = True  # False: the layer loop unrolled (models/common.layer_stack)
    remat_policy: str = "none"  # a key of models/common.REMAT_POLICIES.
    lora: LoRAConfig = LoRAConfig()
    dtype: Any = jnp.float32  # compute dtype.
    param_dtype: Any = jnp.float32

    def __post_init__(self):
        check_stack("Phi", self.scan, self.remat_policy)
        if isinstance(self.lora, dict):  # from a config file or model.json
            object.__setattr__(self, "lora", LoRAConfig(**self.lora))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)


@flax.struct.dataclass
class SegProbe:
    """Where the `[SEG]` rows and the image columns are, for the attention probe.

    seg_positions: [B, S] int, sequence index of each `[SEG]` token; < 0 marks padding.
    image_positions: [B, N] int, sequence index of each image token.
    """

    seg_positions: jax.Array
    image_positions: jax.Array


def rotary(x: jax.Array, positions: jax.Array, rotary_dim: int, theta: float) -> jax.Array:
    """Rotate-half RoPE on the first `rotary_dim` dims. x: [B, T, H, D]; positions: [B, T]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, rotary_dim, 2, dtype=jnp.float32) / rotary_dim))
    freqs = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, rotary_dim / 2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, rotary_dim]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x_rot, x_pass = x[..., :rotary_dim], x[..., rotary_dim:]
    x1, x2 = jnp.split(x_rot, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return jnp.concatenate([x_rot * cos + rotated * sin, x_pass], axis=-1)


def seg_attention_rows(q: jax.Array, k: jax.Array, key_mask: jax.Array, probe: SegProbe,
                       scale: float) -> jax.Array:
    """Post-softmax attention of the `[SEG]` rows over the image columns, those rows only.

    q, k: [B, L, H, D] (after rotary); key_mask: [B, L] valid keys. Returns [B, H, S, N]; rows of
    padded `[SEG]`s are zero. Memory is O(B H S L), never O(L^2).
    """
    seg = probe.seg_positions
    q_seg = jnp.take_along_axis(q, jnp.maximum(seg, 0)[:, :, None, None], axis=1)  # [B,S,H,D]
    logits = jnp.einsum("bshd,blhd->bhsl", q_seg.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits * scale
    keys = jnp.arange(k.shape[1])
    visible = (keys[None, None, :] <= seg[:, :, None]) & key_mask[:, None, :]  # [B, S, L]
    logits = jnp.where(visible[:, None], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1)  # fp32, as HF eager attention.
    probs = jnp.take_along_axis(probs, probe.image_positions[:, None, None, :], axis=-1)
    return jnp.where((seg >= 0)[:, None, :, None], probs, 0.0)


class PhiAttention(nn.Module):
    config: PhiConfig
    decode: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array, key_mask: jax.Array | None,
                 probe: SegProbe | None) -> jax.Array:
        """x: [B, T, E]; positions: [B, T]; key_mask: [B, L_kv] valid keys or None (all valid).

        Full pass: L_kv = T, causal. Decode: L_kv = cache length, query t sits at cache slot
        `cache_index + t`. Returns [B, T, E].
        """
        cfg = self.config
        b, t, _ = x.shape
        proj = lambda name, n: dense(self, name, n, cfg.lora, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype)
        split = lambda y: y.reshape(b, t, cfg.num_heads, cfg.head_dim)
        q = split(proj("q_proj", cfg.hidden_size)(x, self.deterministic))
        k = split(proj("k_proj", cfg.hidden_size)(x, self.deterministic))
        v = split(proj("v_proj", cfg.hidden_size)(x, self.deterministic))
        q = rotary(q, positions, cfg.rotary_dim, cfg.rope_theta)
        k = rotary(k, positions, cfg.rotary_dim, cfg.rope_theta)

        mask, is_causal = None, False
        if self.decode and self.has_variable("cache", "cached_key"):
            cached_k = self.variable("cache", "cached_key", jnp.zeros, (), k.dtype)
            cached_v = self.variable("cache", "cached_value", jnp.zeros, (), v.dtype)
            index = self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            idx = index.value
            k = jax.lax.dynamic_update_slice(cached_k.value, k.astype(cached_k.value.dtype),
                                             (0, idx, 0, 0))
            v = jax.lax.dynamic_update_slice(cached_v.value, v.astype(cached_v.value.dtype),
                                             (0, idx, 0, 0))
            cached_k.value, cached_v.value, index.value = k, v, idx + t
            slots = jnp.arange(k.shape[1])
            mask = slots[None, :] <= (idx + jnp.arange(t))[:, None]  # [T, L_cache]
            mask = mask[None, None]
            if key_mask is not None:
                mask = mask & key_mask[:, None, None, :]
        else:
            if self.decode:  # Initialization: declare the cache with its full shape.
                self.variable("cache", "cached_key", jnp.zeros, k.shape, k.dtype)
                self.variable("cache", "cached_value", jnp.zeros, v.shape, v.dtype)
                self.variable("cache", "cache_index", jnp.zeros, (), jnp.int32)
            if key_mask is None:
                is_causal = True
            else:
                causal = jnp.tril(jnp.ones((t, t), dtype=bool))
                mask = causal[None, None] & key_mask[:, None, None, :]

        if probe is not None:
            rows = seg_attention_rows(q, k, key_mask if key_mask is not None
                                      else jnp.ones(k.shape[:2], bool), probe,
                                      cfg.head_dim ** -0.5)
            if cfg.seg_probe_heads == "mean":
                rows = rows.mean(axis=1)  # [B, S, N]
            self.sow("intermediates", "seg_attention", rows)

        out = dot_product_attention(q, k.astype(q.dtype), v.astype(q.dtype), mask=mask,
                                    is_causal=is_causal, implementation=cfg.attention_impl)
        out = out.reshape(b, t, cfg.hidden_size)
        return proj("dense", cfg.hidden_size)(out, self.deterministic)


class PhiMLP(nn.Module):
    config: PhiConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        proj = lambda name, n: dense(self, name, n, cfg.lora, dtype=cfg.dtype,
                                     param_dtype=cfg.param_dtype)
        h = proj("fc1", cfg.intermediate_size)(x, self.deterministic)
        h = jax.nn.gelu(h, approximate=True)  # gelu_new
        return proj("fc2", cfg.hidden_size)(h, self.deterministic)


class PhiDecoderLayer(nn.Module):
    config: PhiConfig
    decode: bool = False
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, key_mask, probe):
        cfg = self.config
        h = layer_norm(cfg, "input_layernorm")(x)
        attn = PhiAttention(cfg, self.decode, self.deterministic, name="self_attn")(
            h, positions, key_mask, probe)
        mlp = PhiMLP(cfg, self.deterministic, name="mlp")(h)
        drop = nn.Dropout(cfg.resid_pdrop, deterministic=self.deterministic)
        return x + drop(attn) + drop(mlp), None  # (carry, per-layer output) for nn.scan.


class PhiModel(nn.Module):
    config: PhiConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array, key_mask: jax.Array | None,
                 image_features: jax.Array | None, seg_positions: jax.Array | None,
                 decode: bool, deterministic: bool) -> jax.Array:
        """input_ids: [B, T]; image_features: [B, N, E] or None. Returns final hidden [B, T, E]."""
        cfg = self.config
        embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype,
                         param_dtype=cfg.param_dtype, name="embed_tokens")
        is_image = input_ids == cfg.image_token_id
        x = embed(jnp.where(is_image, 0, input_ids))
        probe = None
        if image_features is not None:
            n_img = image_features.shape[1]
            # i-th placeholder row of a sequence takes the i-th image feature.
            img_idx = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, n_img - 1)
            feats = jnp.take_along_axis(image_features.astype(x.dtype), img_idx[..., None], axis=1)
            x = jnp.where(is_image[..., None], feats, x)
            if seg_positions is not None:
                image_positions = jax.vmap(
                    lambda m: jnp.nonzero(m, size=n_img, fill_value=0)[0])(is_image)
                probe = SegProbe(seg_positions.astype(jnp.int32), image_positions)
        elif seg_positions is not None:
            raise ValueError("seg_positions needs image_features: the probe reads image columns")
        x = nn.Dropout(cfg.embd_pdrop, deterministic=deterministic)(x)

        layers = layer_stack(PhiDecoderLayer, scan=cfg.scan, remat_policy=cfg.remat_policy,
                             length=cfg.num_layers,
                             variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                             split_rngs={"params": True, "dropout": True},
                             in_axes=(nn.broadcast, nn.broadcast, nn.broadcast))
        x, _ = layers(cfg, decode, deterministic, name="layers")(x, positions, key_mask, probe)
        return layer_norm(cfg, "final_layernorm")(x)


class PhiForCausalLM(nn.Module):
    config: PhiConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 attention_mask: jax.Array | None = None,
                 image_features: jax.Array | None = None,
                 seg_positions: jax.Array | None = None, *, decode: bool = False,
                 deterministic: bool = True) -> tuple[jax.Array, jax.Array]:
        """Returns (logits [B, T, V] fp32, final hidden states [B, T, E]).

        input_ids: [B, T] token ids, `image_token_id` where image features go.
        positions: [B, T] rotary positions; default arange(T) (full pass only).
        attention_mask: [B, L_kv] bool, valid keys (full pass: L_kv = T, e.g. left padding;
          decode: over the cache slots). None: all valid (full pass uses a fused causal mask).
        image_features: [B, N, E] projected image tokens, or None.
        seg_positions: [B, S] indices of `[SEG]` tokens (< 0 = padding) for the attention probe.
        decode: use and update the KV cache ('cache' collection).
        """
        cfg = self.config
        if positions is None:
            if decode:
                raise ValueError("decode=True needs explicit positions")
            positions = jnp.broadcast_to(jnp.arange(input_ids.shape[1]), input_ids.shape)
        if attention_mask is not None:
            attention_mask = attention_mask.astype(bool)
        hidden = PhiModel(cfg, name="model")(input_ids, positions, attention_mask, image_features,
                                             seg_positions, decode, deterministic)
        logits = nn.Dense(cfg.vocab_size, use_bias=cfg.lm_head_bias, dtype=cfg.dtype,
                          param_dtype=cfg.param_dtype, name="lm_head")(hidden)
        return logits.astype(jnp.float32), hidden
