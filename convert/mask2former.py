"""Mask2Former COCO-panoptic Swin-B (detectron2 pickle) -> our `SegHead` parameters.

    python -m convert.mask2former --src model_final_54b88a.pkl --out DIR [--variant swin-b]

Backbone (`backbone.*`), pixel decoder (`sem_seg_head.pixel_decoder.*`) and transformer decoder
(`sem_seg_head.predictor.*`) through the rename tables of convert/swin.py,
convert/m2f_pixel_decoder.py and convert/m2f_transformer_decoder.py, strict both ways. The COCO
queries and class head are listed as unused. The pickle is read with an unpickler that accepts
only numpy arrays and plain containers. Key list:
tests/reference/mask2former_swinb_coco_panoptic_keys.tsv.
"""

from __future__ import annotations

import sys
from pathlib import Path

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
    describe_gaps,
    read_detectron2_pickle,
    run_converter,
    write_converted,
)
from segearth_jax import cli
from segearth_jax.models.seg_head import VARIANTS, SegHead, SegHeadConfig

BACKBONE, PIXEL_DECODER, PREDICTOR = r"backbone\.", r"sem_seg_head\.pixel_decoder\.", (
    r"sem_seg_head\.predictor\.")


def rules():
    return [*swin.official_rules(BACKBONE, "backbone"),
            *m2f_pixel_decoder.d2_rules(PIXEL_DECODER, "pixel_decoder"),
            *m2f_transformer_decoder.d2_rules(PREDICTOR, "predictor")]


def unused() -> list[Gap]:
    return [*swin.official_unused(BACKBONE), *m2f_transformer_decoder.d2_unused(PREDICTOR),
            Gap(r"criterion\.empty_weight", "training-only buffer of the COCO loss")]


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
    cfg = SegHeadConfig.from_variant(variant)
    print(describe_gaps(unused(), []), file=sys.stderr)
    params = convert_tensors(read_detectron2_pickle(src), rules(), expected_params(cfg),
                             unused=unused(), dtype=np.dtype(dtype),
                             progress=Progress(src.stat().st_size))
    return write_converted(out, params, {"kind": "seg_head", "variant": variant, "dtype": dtype,
                                         "source": str(src.absolute())})


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = converter_parser(__doc__, "detectron2 .pkl ({'model': {name: array}})", VARIANTS,
                              "swin-b")
    run_converter(convert, parser.parse_args(argv))


if __name__ == "__main__":
    main()
