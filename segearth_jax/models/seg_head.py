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

# Presets: (Swin variant, pixel decoder variant, mask decoder variant).
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
                     decoder: dict[str, Any] | None = None) -> SegHeadConfig:
        """The preset `name`, each part's fields updated by its own dict (`swin`,
        `pixel_decoder`, `decoder`), made consistent (`assemble`)."""
        s, p, d = lookup_variant(VARIANTS, "segmentation head", name)
        dt = dict(dtype=dtype, param_dtype=param_dtype)
        swin_cfg = SwinConfig.from_variant(s, **dt, **(swin or {}))
        pd = PixelDecoderConfig.from_variant(p, **{"in_channels": swin_cfg.channels, **dt,
                                                   **(pixel_decoder or {})})
        dec = MaskDecoderConfig.from_variant(d, **{"hidden_dim": pd.conv_dim,
                                                   "mask_dim": pd.mask_dim, **dt,
                                                   **(decoder or {})})
        return cls(swin_cfg, pd, dec)

    @classmethod
    def preset(cls, name: str, *, dtype: str = "float32", param_dtype: str = "float32",
               **parts: dict[str, Any]) -> dict[str, Any]:
        """The preset `name` as a config file's `model.seg_head` (every size and knob spelled
        out), the parts' fields updated by `swin` / `pixel_decoder` / `decoder` dicts."""
        return cls.from_variant(name, **parts).to_config(dtype, param_dtype)

    def to_config(self, dtype: str | None = None, param_dtype: str | None = None
                  ) -> dict[str, Any]:
        """The `from_config` dict of this config (what model.json stores): the derived sizes
        (the pixel decoder's `in_channels`, the decoder's `hidden_dim` / `mask_dim`) left out."""
        dts = ("dtype", "param_dtype")
        return {"dtype": dtype or jnp.dtype(self.swin.dtype).name,
                "param_dtype": param_dtype or jnp.dtype(self.swin.param_dtype).name,
                "swin": self.swin.to_dict(),
                "pixel_decoder": self.pixel_decoder.to_dict(exclude=(*dts, "in_channels")),
                "decoder": self.decoder.to_dict(exclude=(*dts, "hidden_dim", "mask_dim"))}

    @classmethod
    def from_config(cls, head: Any) -> SegHeadConfig:
        """From a `config.model.seg_head` ConfigDict or model.json dict: `dtype`, `param_dtype`,
        and every field of `swin`, `pixel_decoder` and `decoder` but the derived ones: the pixel
        decoder reads the Swin channels, the decoder's widths are the pixel decoder's."""
        h = dict(head)
        want = {"dtype", "param_dtype", "swin", "pixel_decoder", "decoder"}
        if set(h) != want:
            raise ValueError(f"segmentation head config: keys {sorted(h)}, expected "
                             f"{sorted(want)}")
        dt = dict(dtype=jnp.dtype(h["dtype"]), param_dtype=jnp.dtype(h["param_dtype"]))
        swin = SwinConfig.from_dict(dict(h["swin"]), **dt)
        pd = PixelDecoderConfig.from_dict(dict(h["pixel_decoder"]), in_channels=swin.channels,
                                          **dt)
        dec = MaskDecoderConfig.from_dict(dict(h["decoder"]), hidden_dim=pd.conv_dim,
                                          mask_dim=pd.mask_dim, **dt)
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
