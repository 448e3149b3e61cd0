"""Swin Transformer checkpoints -> our `SwinTransformer` parameters.

    python -m convert.swin --src swin_base_patch4_window12_384_22k.pth --out DIR [--variant B/12]

Rename tables for the official Swin names (the ImageNet .pth: `torch.load(f)["model"]`, and
detectron2's `backbone.*` in Mask2Former checkpoints, which adds `norm0..norm3`) and for
transformers' `SwinBackbone` (both the 4.x names of the published files and the 5.x module
names). Key list: tests/reference/swin_base_patch4_window12_384_22k_keys.tsv.

Our layout is the official one with `.` -> `/`, `layers.i` -> `layers_i` and block j of a stage
in slot j // 2 of the scanned pair's `blocks/w` (j even) or `blocks/sw` (j odd); the only
transforms are the fused `attn.qkv` split into q/k/v (rows stacked q, k, v) and the
PyTorch -> Flax kernel layouts (Linear [out, in] -> [in, out], Conv OIHW -> HWIO).
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

from convert.common import (
    ConversionError,
    Gap,
    Progress,
    Rule,
    conv2d,
    convert_tensors,
    converter_parser,
    count_layers,
    describe_gaps,
    linear,
    linear_rules,
    norm_rules,
    read_torch_bin,
    run_converter,
    split_rows,
    stacked_fields,
    with_fields,
    write_converted,
)
from segearth_jax import cli
from segearth_jax.models.swin import VARIANTS, SwinConfig, SwinTransformer

# Source regex of a block (after the prefix) and our path of it (after dst_prefix).
_BLOCK_SRC = r"layers\.(?P<i>\d+)\.blocks\.(?P<j>\d+)"
_BLOCK_DST = "layers_{i}/blocks/{pos}"  # block j: slot j // 2 of pair position w / sw
_PAIR = stacked_fields("j", ("w", "sw"))
_DOWN_SRC = r"layers\.(?P<i>\d+)\.downsample"
_DOWN_DST = "layers_{i}/downsample"

NORMS_REASON = "initialized at 1/0; Mask2Former's checkpoint provides them"


def official_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """Official Swin / detectron2 `D2SwinTransformer` names (after the regex `src_prefix`: "" for
    the ImageNet .pth, r"backbone\\." for Mask2Former) -> `dst_prefix/...` of our tree.

    `norm0..norm3` (detectron2's per-stage output norms) are mapped too; the ImageNet .pth lacks
    them (see `output_norms_gap`)."""
    p, d = src_prefix, dst_prefix
    b, blk = p + _BLOCK_SRC, f"{d}/{_BLOCK_DST}"
    return with_fields([
        Rule(p + r"patch_embed\.proj\.weight", d + "/patch_embed/proj/kernel", conv2d),
        Rule(p + r"patch_embed\.proj\.bias", d + "/patch_embed/proj/bias"),
        *norm_rules(p + r"patch_embed\.norm", d + "/patch_embed/norm"),
        *norm_rules(b + r"\.(?P<n>norm1|norm2)", blk + "/{n}"),
        Rule(b + r"\.attn\.relative_position_bias_table",
             blk + "/attn/relative_position_bias_table"),
        # Fused qkv: rows [q; k; v] (each C rows) -> three Dense layers.
        Rule(b + r"\.attn\.qkv\.weight", tuple(f"{blk}/attn/{n}/kernel" for n in "qkv"),
             split_rows(3, linear)),
        Rule(b + r"\.attn\.qkv\.bias", tuple(f"{blk}/attn/{n}/bias" for n in "qkv"),
             split_rows(3)),
        *linear_rules(b + r"\.attn\.proj", blk + "/attn/proj"),
        *linear_rules(b + r"\.mlp\.(?P<n>fc1|fc2)", blk + "/mlp/{n}"),
        Rule(p + _DOWN_SRC + r"\.reduction\.weight", f"{d}/{_DOWN_DST}/reduction/kernel", linear),
        *norm_rules(p + _DOWN_SRC + r"\.norm", f"{d}/{_DOWN_DST}/norm"),
        *norm_rules(p + r"norm(?P<i>\d+)", d + "/norm{i}"),
    ], "j", _PAIR)


def official_unused(src_prefix: str) -> list[Gap]:
    """Official-checkpoint keys we deliberately do not convert (after the regex `src_prefix`)."""
    p, b = src_prefix, src_prefix + _BLOCK_SRC
    return [
        Gap(b + r"\.attn\.relative_position_index", "a constant buffer, recomputed in the model"),
        Gap(b + r"\.attn_mask", "the shift-mask buffer depends on the input size; recomputed"),
        Gap(p + r"head\.(weight|bias)", "the ImageNet classifier"),
        Gap(p + r"norm\.(weight|bias)", "the classifier's final norm: the backbone has one "
                                        "output norm per stage (norm0..norm3) instead"),
    ]


def output_norms_gap(dst_prefix: str) -> Gap:
    """Our per-stage output norms, which the ImageNet .pth does not have (`not_in_checkpoint`)."""
    return Gap(dst_prefix + r"/norm\d+/(scale|bias)", NORMS_REASON)


def hf_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """transformers `SwinBackbone` names (after the regex `src_prefix`) -> `dst_prefix/...`.

    Accepts both spellings: the 4.x names of the published files (`embeddings.*`,
    `encoder.layers.i.blocks.j.attention.self.query`, `attention.output.dense`,
    `intermediate.dense`, `output.dense`) and the 5.x module names (`swin.embeddings.*`,
    `attention.q_proj`, `attention.o_proj`, `mlp.fc1`, ...). `hidden_states_norms.stageK` is the
    output norm of stage K - 1 (stage1 = res2 = our norm0)."""
    p, d = src_prefix + r"(?:swin\.)?", dst_prefix
    b, blk = p + r"encoder\." + _BLOCK_SRC, f"{d}/{_BLOCK_DST}"
    att = b + r"\.attention\."
    return with_fields([
        Rule(p + r"embeddings\.patch_embeddings\.projection\.weight",
             d + "/patch_embed/proj/kernel", conv2d),
        Rule(p + r"embeddings\.patch_embeddings\.projection\.bias", d + "/patch_embed/proj/bias"),
        *norm_rules(p + r"embeddings\.norm", d + "/patch_embed/norm"),
        *norm_rules(b + r"\.layernorm_before", blk + "/norm1"),
        *norm_rules(b + r"\.layernorm_after", blk + "/norm2"),
        Rule(att + r"(?:relative_position_bias|self)\.relative_position_bias_table",
             blk + "/attn/relative_position_bias_table"),
        *(r for n, old in (("q", "query"), ("k", "key"), ("v", "value"))
          for r in linear_rules(att + rf"(?:{n}_proj|self\.{old})", f"{blk}/attn/{n}")),
        *linear_rules(att + r"(?:o_proj|output\.dense)", blk + "/attn/proj"),
        *linear_rules(b + r"\.(?:mlp\.fc1|intermediate\.dense)", blk + "/mlp/fc1"),
        *linear_rules(b + r"\.(?:mlp\.fc2|output\.dense)", blk + "/mlp/fc2"),
        Rule(p + r"encoder\." + _DOWN_SRC + r"\.reduction\.weight",
             f"{d}/{_DOWN_DST}/reduction/kernel", linear),
        *norm_rules(p + r"encoder\." + _DOWN_SRC + r"\.norm", f"{d}/{_DOWN_DST}/norm"),
        *(r for k in range(4)
          for r in norm_rules(src_prefix + rf"hidden_states_norms\.stage{k + 1}", f"{d}/norm{k}")),
    ], "j", _PAIR)


def hf_unused(src_prefix: str) -> list[Gap]:
    """transformers `SwinBackbone` keys we deliberately do not convert."""
    return [Gap(src_prefix + r".*relative_position_index", "a constant buffer, recomputed"),
            Gap(src_prefix + r"(?:swin\.)?layernorm\.(weight|bias)",
                "SwinModel's final norm (5.x): the backbone uses the per-stage norms")]


def source_sizes(shapes: Mapping[str, tuple[int, ...]], prefix: str, where: str
                 ) -> dict[str, Any]:
    """Every Swin size of an official-layout checkpoint, from its tensor shapes under `prefix`
    (e.g. "", "backbone.", "model.vision_tower_mask."): embed_dim and patch_size (patch conv
    [C, 3, p, p]), depths (block counts), num_heads and window_size (each stage's first
    relative-position table [(2w - 1)^2, heads]), mlp_ratio (fc1 rows / width)."""
    p = re.escape(prefix)
    patch = shapes.get(f"{prefix}patch_embed.proj.weight")
    stages = count_layers(shapes, p + r"layers\.(?P<layer>\d+)\..*")
    if patch is None or not stages:
        raise ConversionError(f"{where}: no Swin backbone under {prefix!r} (no "
                              f"{prefix}patch_embed.proj.weight or {prefix}layers.*)")
    depths = tuple(count_layers(shapes, p + rf"layers\.{i}\.blocks\.(?P<layer>\d+)\..*")
                   for i in range(stages))
    tables = [shapes[f"{prefix}layers.{i}.blocks.0.attn.relative_position_bias_table"]
              for i in range(stages)]
    window = (round(tables[0][0] ** 0.5) + 1) // 2
    fc1 = shapes[f"{prefix}layers.0.blocks.0.mlp.fc1.weight"]  # [hidden, C]
    return dict(embed_dim=patch[0], patch_size=patch[2], depths=depths,
                num_heads=tuple(t[1] for t in tables), window_size=window,
                mlp_ratio=fc1[0] / patch[0])


def expected_params(cfg: SwinConfig):
    """Our parameter shapes (jax.eval_shape of `init`; nothing allocated)."""
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    return jax.eval_shape(SwinTransformer(cfg).init, jax.random.key(0), x)["params"]


def convert(src: str | Path, out: str | Path, *, variant: str = "B/12",
            dtype: str = "float32") -> Path:
    """Official Swin .pth -> `out` (orbax params + model.json). Every size is read from the
    tensor shapes (`source_sizes`; `variant` gives the rest: LayerNorm epsilon, attention
    implementation). The per-stage output norms, absent from the .pth, are written as
    LayerNorm's initial 1/0."""
    src = Path(src)
    if not src.is_file():
        raise ConversionError(f"--src {src} is not a file")
    shapes = {k: tuple(load().shape) for k, load, _ in read_torch_bin(src)}
    cfg = SwinConfig.from_variant(variant, **source_sizes(shapes, "", str(src)))
    unused, missing_ok = official_unused(""), [output_norms_gap("swin")]
    print(describe_gaps(unused, missing_ok), file=sys.stderr)
    params = convert_tensors(read_torch_bin(src), official_rules("", "swin"),
                             {"swin": expected_params(cfg)}, unused=unused,
                             not_in_checkpoint=missing_ok, dtype=np.dtype(dtype),
                             progress=Progress(src.stat().st_size))["swin"]
    for i, c in enumerate(cfg.channels):
        params[f"norm{i}"] = {"scale": np.ones(c, dtype), "bias": np.zeros(c, dtype)}
    return write_converted(out, params, {"kind": "swin", "variant": variant, "dtype": dtype,
                                         "model": cfg.to_dict(),
                                         "source": str(src.absolute())})


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = converter_parser(__doc__, "official Swin .pth ({'model': state})", VARIANTS, "B/12")
    run_converter(convert, parser.parse_args(argv))


if __name__ == "__main__":
    main()
