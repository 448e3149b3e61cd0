"""Rename tables for Mask2Former's masked-attention transformer decoder -> our
`MaskedTransformerDecoder` (models/mask_decoder.py): detectron2 names (the released .pkl and
SegEarth-R2's `predictor.*`) and transformers' `Mask2FormerTransformerModule` names.

Our layers are scanned in rounds over the feature levels: source layer i fills slot
i // num_levels of `layers/level_{i % num_levels}` (`convert.common.stacked_fields`)."""

from __future__ import annotations

from convert.common import (
    Gap,
    Rule,
    linear,
    linear_rules,
    norm_rules,
    split_rows,
    stacked_fields,
    with_fields,
)

_L = r"(?P<i>\d+)"
NUM_LEVELS = 3  # Mask2Former's decoder cycles over 3 pixel-decoder levels


def _levels(rules: list[Rule], num_levels: int) -> list[Rule]:
    """Layer i's rules -> slot i // num_levels of `layers/level_{i % num_levels}`."""
    names = tuple(f"level_{n}" for n in range(num_levels))
    return with_fields(rules, "i", stacked_fields("i", names))


def _fused_attention(src: str, dst: str) -> list[Rule]:
    """nn.MultiheadAttention `in_proj_{weight,bias}` (q; k; v rows) + `out_proj`."""
    return [
        Rule(src + r"\.in_proj_weight", (dst + "/q/kernel", dst + "/k/kernel", dst + "/v/kernel"),
             split_rows(3, linear)),
        Rule(src + r"\.in_proj_bias", (dst + "/q/bias", dst + "/k/bias", dst + "/v/bias"),
             split_rows(3)),
        *linear_rules(src + r"\.out_proj", dst + "/out"),
    ]


def d2_rules(src_prefix: str, dst_prefix: str, num_levels: int = NUM_LEVELS) -> list[Rule]:
    """detectron2 `MultiScaleMaskedTransformerDecoder` keys (after `src_prefix`, a regex)."""
    p, d = src_prefix, dst_prefix
    layer = d + "/layers/{pos}"
    return _levels([
        *_fused_attention(p + rf"transformer_cross_attention_layers\.{_L}\.multihead_attn",
                          layer + "/cross_attn"),
        *norm_rules(p + rf"transformer_cross_attention_layers\.{_L}\.norm",
                    layer + "/cross_attn_norm"),
        *_fused_attention(p + rf"transformer_self_attention_layers\.{_L}\.self_attn",
                          layer + "/self_attn"),
        *norm_rules(p + rf"transformer_self_attention_layers\.{_L}\.norm",
                    layer + "/self_attn_norm"),
        *linear_rules(p + rf"transformer_ffn_layers\.{_L}\.(?P<n>linear1|linear2)",
                      layer + "/{n}"),
        *norm_rules(p + rf"transformer_ffn_layers\.{_L}\.norm", layer + "/ffn_norm"),
        *norm_rules(p + r"decoder_norm", d + "/head/decoder_norm"),
        *linear_rules(p + r"mask_embed\.layers\.(?P<j>[0-2])", d + "/head/mask_embed_{j}"),
        Rule(p + r"level_embed\.weight", d + "/level_embed"),
    ], num_levels)


def d2_unused(src_prefix: str) -> list[Gap]:
    """detectron2 predictor keys SegEarth-R2 does not use: its queries are `[SEG]` states."""
    p = src_prefix
    return [
        Gap(p + r"(static_query|query_feat|query_embed)\.weight",
            "COCO's 100 learnable queries and their positional embedding: the queries are "
            "projected [SEG] hidden states with a zero positional embedding"),
        Gap(p + r"class_embed\.(weight|bias)", "COCO class head: SegEarth-R2 has no class head"),
    ]


def hf_rules(src_prefix: str, dst_prefix: str, num_levels: int = NUM_LEVELS) -> list[Rule]:
    """transformers `Mask2FormerTransformerModule` keys (after `src_prefix`, a regex)."""
    p, d = src_prefix, dst_prefix
    layer = d + "/layers/{pos}"
    hl = p + rf"decoder\.layers\.{_L}"
    return _levels([
        *_fused_attention(hl + r"\.cross_attn", layer + "/cross_attn"),
        *norm_rules(hl + r"\.cross_attn_layer_norm", layer + "/cross_attn_norm"),
        *linear_rules(hl + r"\.self_attn\.(?P<n>q|k|v|out)_proj", layer + "/self_attn/{n}"),
        *norm_rules(hl + r"\.self_attn_layer_norm", layer + "/self_attn_norm"),
        *linear_rules(hl + r"\.fc1", layer + "/linear1"),
        *linear_rules(hl + r"\.fc2", layer + "/linear2"),
        *norm_rules(hl + r"\.final_layer_norm", layer + "/ffn_norm"),
        *norm_rules(p + r"decoder\.layernorm", d + "/head/decoder_norm"),
        *linear_rules(p + r"decoder\.mask_predictor\.mask_embedder\.(?P<j>[0-2])\.0",
                      d + "/head/mask_embed_{j}"),
        Rule(p + r"level_embed\.weight", d + "/level_embed"),
    ], num_levels)


def hf_unused(src_prefix: str) -> list[Gap]:
    return [Gap(src_prefix + r"queries_(embedder|features)\.weight",
                "learnable queries: SegEarth-R2's queries come from the [SEG] states")]
