"""The segmentation half of SegEarth-R2: Swin backbone -> MSDeformAttn pixel decoder -> masked
transformer decoder whose queries are the projected `[SEG]` states (one query, one mask)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from segearth_jax.models.common import lookup_variant
from segearth_jax.models.mask_decoder import MaskDecoderConfig, MaskedTransformerDecoder
from segearth_jax.models.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderConfig
from segearth_jax.models.swin import SwinConfig, SwinTransformer

# (Swin variant, pixel decoder variant, mask decoder variant).
VARIANTS: dict[str, tuple[str, str, str]] = {
    "swin-b": ("B/12", "swin-b", "m2f"),
    "tiny": ("tiny", "tiny", "tiny"),
}


@dataclasses.dataclass(frozen=True)
class SegHeadConfig:
    swin: SwinConfig = SwinConfig()
    pixel_decoder: PixelDecoderConfig = PixelDecoderConfig()
    decoder: MaskDecoderConfig = MaskDecoderConfig()

    @classmethod
    def from_variant(cls, name: str, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                     swin: dict[str, Any] | None = None,
                     pixel_decoder: dict[str, Any] | None = None,
                     **decoder_overrides: Any) -> SegHeadConfig:
        """The three parts, made consistent: the pixel decoder reads the Swin channels and the
        transformer decoder's width is the pixel decoder's. `swin` / `pixel_decoder`: overrides of
        `SwinConfig` / `PixelDecoderConfig` (e.g. `remat`, `simplify_fpn`); other keywords
        override the decoder's."""
        s, p, d = lookup_variant(VARIANTS, "segmentation head", name)
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        swin = SwinConfig.from_variant(s, **dt, **(swin or {}))
        pd = PixelDecoderConfig.from_variant(p, in_channels=swin.channels, **dt,
                                             **(pixel_decoder or {}))
        dec = MaskDecoderConfig.from_variant(d, **{"hidden_dim": pd.conv_dim,
                                                   "mask_dim": pd.mask_dim, **dt,
                                                   **decoder_overrides})
        return cls(swin, pd, dec)


class SegHead(nn.Module):
    config: SegHeadConfig

    @nn.compact
    def __call__(self, pixels: jax.Array, queries: jax.Array,
                 query_valid: jax.Array | None = None) -> jax.Array:
        """pixels [B, H, W, 3] (Swin view, normalized); queries [B, Q, hidden]; query_valid
        [B, Q] -> mask logits [num_layers + 1, B, Q, H/4, W/4] (last = final prediction)."""
        feats = SwinTransformer(self.config.swin, name="backbone")(pixels)
        mask_features, maps = MSDeformAttnPixelDecoder(self.config.pixel_decoder,
                                                       name="pixel_decoder")(
            [feats[f"res{i}"] for i in range(2, 6)])
        return MaskedTransformerDecoder(self.config.decoder, name="predictor")(
            queries, maps, mask_features, query_valid)
