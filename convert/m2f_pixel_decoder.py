"""Rename tables for Mask2Former's pixel decoder -> our `MSDeformAttnPixelDecoder` parameters.

Two sources name the same tensors differently:
  - detectron2 Mask2Former (`model_final_*.pkl`, keys `sem_seg_head.pixel_decoder.*`; listed in
    tests/reference/mask2former_swinb_coco_panoptic_keys.tsv);
  - transformers' `Mask2FormerPixelDecoder` state dict (used by the parity tests).
Both tables are strict data for `convert.common.convert_tensors`: conv weights OIHW -> HWIO,
linear weights (out, in) -> (in, out); encoder layer `n` fills slot `n` of our scanned
`encoder/layers` parameters. The FPN tables cover any number of FPN levels (`adapter_k`,
`layer_k`); Swin-B Mask2Former has one (k = 1, on res2).
"""

from __future__ import annotations

from convert.common import Rule, conv2d, linear_rules, norm_rules

_ATTN = r"(?P<p>sampling_offsets|attention_weights|value_proj|output_proj)"


def _dst(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith("/") else prefix + "/"


def _conv_rules(src: str, dst: str, bias: bool = True) -> list[Rule]:
    """nn.Conv2d `src.{weight,bias}` -> Conv `dst/{kernel,bias}`."""
    rules = [Rule(src + r"\.weight", dst + "/kernel", conv2d)]
    return rules + ([Rule(src + r"\.bias", dst + "/bias")] if bias else [])


def d2_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """detectron2 `MSDeformAttnPixelDecoder` keys -> our paths.

    src_prefix: a regex matching everything before the module's own key names, dot included
    (e.g. r"sem_seg_head\\.pixel_decoder\\."); dst_prefix: our '/'-path of the decoder (e.g.
    "pixel_decoder" or "pixel_decoder/"; "" for the root).
    """
    s, d = src_prefix, _dst(dst_prefix)
    layer = s + r"transformer\.encoder\.layers\.(?P<layer>\d+)\."
    return [
        *_conv_rules(s + r"input_proj\.(?P<i>\d+)\.0", d + "input_proj_{i}/conv"),
        *norm_rules(s + r"input_proj\.(?P<i>\d+)\.1", d + "input_proj_{i}/norm"),
        Rule(s + r"transformer\.level_embed", d + "level_embed"),
        *linear_rules(layer + r"self_attn\." + _ATTN, d + "encoder/layers/self_attn/{p}"),
        *linear_rules(layer + r"(?P<p>linear1|linear2)", d + "encoder/layers/{p}"),
        *norm_rules(layer + r"(?P<p>norm1|norm2)", d + "encoder/layers/{p}"),
        # detectron2 Conv2d(norm=GroupNorm): the conv has no bias, the norm is `.norm`.
        *_conv_rules(s + r"(?P<m>(?:adapter|layer)_\d+)", d + "{m}/conv", bias=False),
        *norm_rules(s + r"(?P<m>(?:adapter|layer)_\d+)\.norm", d + "{m}/norm"),
        *_conv_rules(s + r"mask_features", d + "mask_features"),
    ]


def hf_rules(src_prefix: str, dst_prefix: str) -> list[Rule]:
    """transformers `Mask2FormerPixelDecoder` state-dict keys -> our paths.

    src_prefix: a regex for what precedes the module's keys, dot included (e.g.
    r"model\\.pixel_level_module\\.decoder\\." inside `Mask2FormerModel`; "" for the bare
    module); dst_prefix: as in `d2_rules`.
    """
    s, d = src_prefix, _dst(dst_prefix)
    layer = s + r"encoder\.layers\.(?P<layer>\d+)\."
    return [
        *_conv_rules(s + r"input_projections\.(?P<i>\d+)\.0", d + "input_proj_{i}/conv"),
        *norm_rules(s + r"input_projections\.(?P<i>\d+)\.1", d + "input_proj_{i}/norm"),
        Rule(s + r"level_embed", d + "level_embed"),
        *linear_rules(layer + r"self_attn\." + _ATTN, d + "encoder/layers/self_attn/{p}"),
        *linear_rules(layer + r"fc1", d + "encoder/layers/linear1"),
        *linear_rules(layer + r"fc2", d + "encoder/layers/linear2"),
        *norm_rules(layer + r"self_attn_layer_norm", d + "encoder/layers/norm1"),
        *norm_rules(layer + r"final_layer_norm", d + "encoder/layers/norm2"),
        # nn.Sequential(Conv2d(bias=False), GroupNorm[, ReLU]).
        *_conv_rules(s + r"(?P<m>(?:adapter|layer)_\d+)\.0", d + "{m}/conv", bias=False),
        *norm_rules(s + r"(?P<m>(?:adapter|layer)_\d+)\.1", d + "{m}/norm"),
        *_conv_rules(s + r"mask_projection", d + "mask_features"),
    ]
