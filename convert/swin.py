"""Swin Transformer checkpoints -> our `SwinTransformer` parameters.

    python -m convert.swin --src swin_base_patch4_window12_384_22k.pth --out DIR [--variant B/12]

Rename tables for the official Swin names (the ImageNet .pth: `torch.load(f)["model"]`, and
detectron2's `backbone.*` in Mask2Former checkpoints, which adds `norm0..norm3`) and for
transformers' `SwinBackbone`. Key list:
../shared/reference/swin_base_patch4_window12_384_22k_keys.tsv.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from convert.common import (
    ConversionError,
    Gap,
    Progress,
    Rule,
    conv2d,
    convert_tensors,
    describe_gaps,
    ensure_new_dir,
    linear,
    linear_rules,
    norm_rules,
    read_torch_bin,
    split_rows,
)
from segearth_jax import checkpoint
from segearth_jax.models.swin import VARIANTS, SwinConfig, SwinTransformer

_B = r"layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)"
_BLOCK = "layers_{i}_blocks_{j}"


def official_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """Official Swin / detectron2 names (after the regex `src_prefix`) -> `dst_prefix/...`."""
    p, d = src_prefix, dst_prefix
    blk = f"{d}/{_BLOCK}"
    return [
        Rule(p + r"patch_embed\.proj\.weight", d + "/patch_embed_proj/kernel", conv2d),
        Rule(p + r"patch_embed\.proj\.bias", d + "/patch_embed_proj/bias"),
        *norm_rules(p + r"patch_embed\.norm", d + "/patch_embed_norm"),
        *norm_rules(p + _B + r"\.(?P<n>norm1|norm2)", blk + "/{n}"),
        Rule(p + _B + r"\.attn\.relative_position_bias_table",
             blk + "/attn/relative_position_bias_table"),
        Rule(p + _B + r"\.attn\.qkv\.weight", tuple(f"{blk}/attn/{n}/kernel" for n in "qkv"),
             split_rows(3, linear)),
        Rule(p + _B + r"\.attn\.qkv\.bias", tuple(f"{blk}/attn/{n}/bias" for n in "qkv"),
             split_rows(3)),
        *linear_rules(p + _B + r"\.attn\.proj", blk + "/attn/proj"),
        *linear_rules(p + _B + r"\.mlp\.(?P<n>fc1|fc2)", blk + "/{n}"),
        Rule(p + r"layers\.(?P<i>\d+)\.downsample\.reduction\.weight",
             d + "/layers_{i}_downsample/reduction/kernel", linear),
        *norm_rules(p + r"layers\.(?P<i>\d+)\.downsample\.norm", d + "/layers_{i}_downsample/norm"),
        *norm_rules(p + r"norm(?P<i>[0-3])", d + "/norm{i}"),
    ]


def official_unused(src_prefix: str) -> list[Gap]:
    p = src_prefix
    return [
        Gap(p + _B + r"\.attn\.relative_position_index", "a constant, recomputed in the model"),
        Gap(p + _B + r"\.attn_mask", "the shift mask depends on the input size; recomputed"),
        Gap(p + r"(head|norm)\.(weight|bias)", "ImageNet classifier and its final norm: the "
                                               "backbone has one output norm per stage"),
    ]


def hf_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """transformers (5.x) `SwinBackbone` names (after the regex `src_prefix`) ->
    `dst_prefix/...`."""
    p, d = src_prefix, dst_prefix
    b = p + r"swin\.encoder\.layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)"
    blk = f"{d}/{_BLOCK}"
    return [
        Rule(p + r"swin\.embeddings\.patch_embeddings\.projection\.weight",
             d + "/patch_embed_proj/kernel", conv2d),
        Rule(p + r"swin\.embeddings\.patch_embeddings\.projection\.bias",
             d + "/patch_embed_proj/bias"),
        *norm_rules(p + r"swin\.embeddings\.norm", d + "/patch_embed_norm"),
        *norm_rules(b + r"\.layernorm_before", blk + "/norm1"),
        *norm_rules(b + r"\.layernorm_after", blk + "/norm2"),
        Rule(b + r"\.attention\.relative_position_bias\.relative_position_bias_table",
             blk + "/attn/relative_position_bias_table"),
        *linear_rules(b + r"\.attention\.(?P<n>q|k|v)_proj", blk + "/attn/{n}"),
        *linear_rules(b + r"\.attention\.o_proj", blk + "/attn/proj"),
        *linear_rules(b + r"\.mlp\.(?P<n>fc1|fc2)", blk + "/{n}"),
        Rule(p + r"swin\.encoder\.layers\.(?P<i>\d+)\.downsample\.reduction\.weight",
             d + "/layers_{i}_downsample/reduction/kernel", linear),
        *norm_rules(p + r"swin\.encoder\.layers\.(?P<i>\d+)\.downsample\.norm",
                    d + "/layers_{i}_downsample/norm"),
        # stageK is the output of stage K - 1 (stage1 = res2 = our norm0).
        *(r for k in range(4) for r in norm_rules(p + rf"hidden_states_norms\.stage{k + 1}",
                                                  f"{d}/norm{k}")),
    ]


def hf_unused(src_prefix: str) -> list[Gap]:
    return [Gap(src_prefix + r".*relative_position_index", "a constant, recomputed"),
            Gap(src_prefix + r"swin\.layernorm\.(weight|bias)",
                "SwinModel's final norm: the backbone uses the per-stage norms")]


def expected_params(cfg: SwinConfig):
    """Our parameter shapes (jax.eval_shape; nothing allocated)."""
    x = jnp.zeros((1, 64, 64, 3), cfg.dtype)
    return jax.eval_shape(SwinTransformer(cfg).init, jax.random.key(0), x)["params"]


def convert(src: str | Path, out: str | Path, *, variant: str = "B/12",
            dtype: str = "float32") -> Path:
    """Official Swin .pth -> `out` (orbax params + model.json)."""
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"--src {src} is not a file")
    cfg = SwinConfig.from_variant(variant)
    unused = official_unused("")
    # The .pth has no per-stage output norms: they start at LayerNorm's 1/0 init.
    missing_ok = [Gap(r"swin/norm[0-3]/(scale|bias)",
                      "per-stage output norms: initialized at 1/0; Mask2Former's checkpoint "
                      "provides them")]
    print(describe_gaps(unused, missing_ok), file=sys.stderr)
    expected = expected_params(cfg)
    params = convert_tensors(read_torch_bin(src), official_rules("", "swin"),
                             {"swin": expected}, unused=unused, not_in_checkpoint=missing_ok,
                             dtype=np.dtype(dtype), progress=Progress(src.stat().st_size))["swin"]
    for i, c in enumerate(cfg.channels):
        params[f"norm{i}"] = {"scale": np.ones(c, dtype), "bias": np.zeros(c, dtype)}
    out = ensure_new_dir(out)
    checkpoint.save_params(out, params)
    checkpoint.write_model_spec(out, {"kind": "swin", "variant": variant, "dtype": dtype,
                                      "source": str(src.absolute())})
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", required=True, help="official Swin .pth ({'model': state})")
    parser.add_argument("--out", required=True, help="new output directory")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="B/12")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.out, variant=args.variant, dtype=args.dtype)
    except ConversionError as e:
        sys.exit(f"error: {e}")
    print(f"done: {out}")


if __name__ == "__main__":
    main()
