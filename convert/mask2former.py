"""Mask2Former COCO-panoptic Swin-B (detectron2 pickle) -> our `SegHead` parameters.

    python -m convert.mask2former --src model_final_54b88a.pkl --out DIR [--variant swin-b]

Backbone (`backbone.*`), pixel decoder (`sem_seg_head.pixel_decoder.*`) and transformer decoder
(`sem_seg_head.predictor.*`) through the rename tables of convert/swin.py,
convert/m2f_pixel_decoder.py and convert/m2f_transformer_decoder.py, strict both ways. The COCO
queries and class head are listed as unused. The pickle is read with an unpickler that accepts
only numpy arrays and plain containers. Key list:
tests/reference/mask2former_swinb_coco_panoptic_keys.tsv.

For the parity tests and benchmarks, `hf_config` gives transformers' `Mask2FormerConfig` of our
configs and `hf_rules` / `hf_unused` map its `Mask2FormerModel` to our `SegHead`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from convert import m2f_pixel_decoder, m2f_transformer_decoder, swin
from convert.common import (
    ConversionError,
    Gap,
    Progress,
    convert_tensors,
    converter_parser,
    count_layers,
    describe_gaps,
    read_detectron2_pickle,
    run_converter,
    write_converted,
)
from segearth_jax import cli
from segearth_jax.models.mask_decoder import MaskDecoderConfig
from segearth_jax.models.pixel_decoder import PixelDecoderConfig
from segearth_jax.models.seg_head import VARIANTS, SegHead, SegHeadConfig
from segearth_jax.models.swin import SwinConfig

BACKBONE, PIXEL_DECODER, PREDICTOR = r"backbone\.", r"sem_seg_head\.pixel_decoder\.", (
    r"sem_seg_head\.predictor\.")
# transformers' Mask2FormerModel: backbone, pixel decoder, transformer decoder.
HF_BACKBONE, HF_PIXEL_DECODER, HF_PREDICTOR = (
    r"pixel_level_module\.encoder\.", r"pixel_level_module\.decoder\.", r"transformer_module\.")


def rules():
    return [*swin.official_rules(BACKBONE, "backbone"),
            *m2f_pixel_decoder.d2_rules(PIXEL_DECODER, "pixel_decoder"),
            *m2f_transformer_decoder.d2_rules(PREDICTOR, "predictor")]


def unused() -> list[Gap]:
    return [*swin.official_unused(BACKBONE), *m2f_transformer_decoder.d2_unused(PREDICTOR),
            Gap(r"criterion\.empty_weight", "training-only buffer of the COCO loss")]


def hf_rules():
    """transformers `Mask2FormerModel` names -> our `SegHead` parameters."""
    return [*swin.hf_rules(HF_BACKBONE, "backbone"),
            *m2f_pixel_decoder.hf_rules(HF_PIXEL_DECODER, "pixel_decoder"),
            *m2f_transformer_decoder.hf_rules(HF_PREDICTOR, "predictor")]


def hf_unused() -> list[Gap]:
    return [*swin.hf_unused(HF_BACKBONE), *m2f_transformer_decoder.hf_unused(HF_PREDICTOR)]


def hf_config(*, swin: SwinConfig | None = None, pixel_decoder: PixelDecoderConfig | None = None,
              decoder: MaskDecoderConfig | None = None, **overrides: Any):
    """transformers' `Mask2FormerConfig` with the sizes of the parts given (transformers'
    defaults for the others), no dropout, no pretrained backbone; `overrides`: other fields
    (`num_queries`, ...).

    A whole `SegHeadConfig` `cfg`: `hf_config(swin=cfg.swin, pixel_decoder=cfg.pixel_decoder,
    decoder=cfg.decoder)`. HF has one head count for both decoders: they must agree."""
    import transformers  # only the tests and benchmarks need it

    kw: dict[str, Any] = dict(use_pretrained_backbone=False, dropout=0.0)
    if swin is not None:
        kw["backbone_config"] = transformers.SwinConfig(
            embed_dim=swin.embed_dim, depths=list(swin.depths), num_heads=list(swin.num_heads),
            window_size=swin.window_size, drop_path_rate=0.0,
            out_features=["stage1", "stage2", "stage3", "stage4"])
    if pixel_decoder is not None:
        kw.update(feature_size=pixel_decoder.conv_dim, mask_feature_size=pixel_decoder.mask_dim,
                  num_attention_heads=pixel_decoder.num_heads,
                  encoder_feedforward_dim=pixel_decoder.ffn_dim,
                  encoder_layers=pixel_decoder.encoder_layers)
    if decoder is not None:
        if kw.setdefault("num_attention_heads", decoder.num_heads) != decoder.num_heads:
            raise ValueError(f"pixel decoder heads {pixel_decoder.num_heads} != transformer "
                             f"decoder heads {decoder.num_heads}: HF Mask2Former has one count")
        kw.update(hidden_dim=decoder.hidden_dim, dim_feedforward=decoder.dim_feedforward,
                  decoder_layers=decoder.num_layers + 1)
        kw.setdefault("feature_size", decoder.hidden_dim)
        kw.setdefault("mask_feature_size", decoder.mask_dim)
    return transformers.Mask2FormerConfig(**{**kw, **overrides})


def source_sizes(shapes: Mapping[str, tuple[int, ...]], prefixes: tuple[str, str, str],
                 where: str) -> dict[str, dict[str, Any]]:
    """The segmentation head's sizes that the tensor shapes show, under the (backbone, pixel
    decoder, predictor) key `prefixes` of a detectron2 or official SegEarth-R2 checkpoint:
    part ("swin", "pixel_decoder", "decoder") -> fields. The decoders' head counts (and the
    deformable sampling points) come from the preset: no shape separates them."""
    backbone, pixel, predictor = prefixes
    mask_features = shapes.get(f"{pixel}mask_features.weight")  # [mask_dim, conv_dim, 1, 1]
    ffn = shapes.get(f"{predictor}transformer_ffn_layers.0.linear1.weight")  # [ff, hidden]
    if mask_features is None or ffn is None:
        raise ConversionError(f"{where}: no Mask2Former head under {pixel!r} / {predictor!r}")
    encoder = re.escape(pixel) + r"transformer\.encoder\.layers\.(?P<layer>\d+)\..*"
    return {
        "swin": swin.source_sizes(shapes, backbone, where),
        "pixel_decoder": dict(
            conv_dim=mask_features[1], mask_dim=mask_features[0],
            encoder_layers=count_layers(shapes, encoder),
            ffn_dim=shapes[f"{pixel}transformer.encoder.layers.0.linear1.weight"][0]),
        "decoder": dict(
            num_layers=count_layers(shapes, re.escape(predictor)
                                    + r"transformer_ffn_layers\.(?P<layer>\d+)\..*"),
            dim_feedforward=ffn[0]),
    }


def expected_params(cfg: SegHeadConfig):
    """Our parameter shapes (jax.eval_shape; nothing allocated)."""
    pixels = jnp.zeros((1, 128, 128, 3), cfg.swin.dtype)
    queries = jnp.zeros((1, 1, cfg.decoder.hidden_dim), cfg.swin.dtype)
    return jax.eval_shape(SegHead(cfg).init, jax.random.key(0), pixels, queries)["params"]


def convert(src: str | Path, out: str | Path, *, variant: str = "swin-b",
            dtype: str = "float32") -> Path:
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"--src {src} is not a file")
    tensors = list(read_detectron2_pickle(src))  # the pickle is in memory once read
    shapes = {k: tuple(load().shape) for k, load, _ in tensors}
    prefixes = ("backbone.", "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.")
    cfg = SegHeadConfig.from_variant(variant, **source_sizes(shapes, prefixes, str(src)))
    print(describe_gaps(unused(), []), file=sys.stderr)
    params = convert_tensors(iter(tensors), rules(), expected_params(cfg),
                             unused=unused(), dtype=np.dtype(dtype),
                             progress=Progress(src.stat().st_size))
    return write_converted(out, params, {"kind": "seg_head", "variant": variant, "dtype": dtype,
                                         "model": cfg.to_config("float32", "float32"),
                                         "source": str(src.absolute())})


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = converter_parser(__doc__, "detectron2 .pkl ({'model': {name: array}})", VARIANTS,
                              "swin-b")
    run_converter(convert, parser.parse_args(argv))


if __name__ == "__main__":
    main()
