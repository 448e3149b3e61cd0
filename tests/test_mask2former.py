"""The whole segmentation head (Swin -> pixel decoder -> transformer decoder) vs transformers'
`Mask2FormerModel`, and the detectron2-checkpoint converter (fp32, max abs error <= 1e-4)."""

import ast
import pickle

import jax
import numpy as np
import pytest
import torch
import transformers

from convert import mask2former
from convert.common import ConversionError, convert_tensors
from segearth_jax import checkpoint
from segearth_jax.models.seg_head import SegHead, SegHeadConfig
from segearth_jax.models.swin import SwinConfig
from tests.conftest import REFERENCE
from tests.test_swin import _official_state_dict as _official_swin_state_dict

TOL = 1e-4  # fp32 max abs error against the PyTorch reference.


@pytest.fixture(scope="module")
def hf_model():
    cfg = SegHeadConfig.from_variant("tiny")
    hf_cfg = mask2former.hf_config(swin=cfg.swin, pixel_decoder=cfg.pixel_decoder,
                                   decoder=cfg.decoder, num_queries=3)
    torch.manual_seed(0)
    model = transformers.Mask2FormerModel(hf_cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
        model.transformer_module.queries_embedder.weight.zero_()  # SegEarth: zero query pos
    return model


def _hf_outputs(hf_model, pixels):
    with torch.no_grad():
        out = hf_model(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    return np.stack([m.numpy() for m in out.masks_queries_logits])


def _queries(hf_model, batch):
    q = hf_model.transformer_module.queries_features.weight.detach().numpy()
    return np.broadcast_to(q, (batch, *q.shape))


def _ours(params, pixels, queries):
    # HF mixes its queries
    cfg = SegHeadConfig.from_variant("tiny", decoder=dict(independent_queries=False))
    return SegHead(cfg).apply({"params": params}, pixels, queries)


def test_segmentation_head_matches_hf_mask2former(hf_model):
    cfg = SegHeadConfig.from_variant("tiny")
    source = ((k, (lambda v=v: v.detach().numpy()), 0) for k, v in hf_model.state_dict().items())
    params = convert_tensors(source, mask2former.hf_rules(), mask2former.expected_params(cfg),
                             unused=mask2former.hf_unused())
    pixels = np.random.default_rng(0).normal(size=(2, 160, 192, 3)).astype(np.float32)
    ours = _ours(params, pixels, _queries(hf_model, 2))
    ref = _hf_outputs(hf_model, pixels)
    assert ours.shape == ref.shape == (cfg.decoder.num_layers + 1, 2, 3, 40, 48)
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def _detectron2_state_dict(hf_model) -> dict[str, np.ndarray]:
    """HF weights under detectron2's names, by a correspondence written here independently of
    the converter's tables (fused q/k/v where detectron2 fuses them)."""
    sd = {k: v.detach().numpy().copy() for k, v in hf_model.state_dict().items()}
    out = {}
    enc, pdp, tm = "pixel_level_module.encoder.", "pixel_level_module.decoder.", (
        "transformer_module.")
    cfg = SegHeadConfig.from_variant("tiny")
    # Backbone: the official Swin names (tests/test_swin.py), under `backbone.`, with the
    # per-stage output norms and without the .pth-only buffers and classifier.
    swin_official = _official_swin_state_dict(hf_model.pixel_level_module.encoder)
    for k, v in swin_official.items():
        if not (k.endswith("attn_mask") or k.split(".")[0] in ("head", "norm")):
            out["backbone." + k] = v.numpy()
    for t in ("weight", "bias"):
        for i in range(4):
            out[f"backbone.norm{i}.{t}"] = sd[enc + f"hidden_states_norms.stage{i + 1}.{t}"]
    # Pixel decoder.
    d2 = "sem_seg_head.pixel_decoder."
    for t in ("weight", "bias"):
        for i in range(3):
            out[d2 + f"input_proj.{i}.0.{t}"] = sd[pdp + f"input_projections.{i}.0.{t}"]
            out[d2 + f"input_proj.{i}.1.{t}"] = sd[pdp + f"input_projections.{i}.1.{t}"]
        for i in range(cfg.pixel_decoder.encoder_layers):
            h, o = pdp + f"encoder.layers.{i}.", d2 + f"transformer.encoder.layers.{i}."
            for n in ("sampling_offsets", "attention_weights", "value_proj", "output_proj"):
                out[o + f"self_attn.{n}.{t}"] = sd[h + f"self_attn.{n}.{t}"]
            for theirs, ours in (("self_attn_layer_norm", "norm1"), ("fc1", "linear1"),
                                 ("fc2", "linear2"), ("final_layer_norm", "norm2")):
                out[o + f"{ours}.{t}"] = sd[h + f"{theirs}.{t}"]
        out[d2 + f"mask_features.{t}"] = sd[pdp + f"mask_projection.{t}"]
        out[d2 + f"adapter_1.norm.{t}"] = sd[pdp + f"adapter_1.1.{t}"]
        out[d2 + f"layer_1.norm.{t}"] = sd[pdp + f"layer_1.1.{t}"]
    out[d2 + "adapter_1.weight"] = sd[pdp + "adapter_1.0.weight"]
    out[d2 + "layer_1.weight"] = sd[pdp + "layer_1.0.weight"]
    out[d2 + "transformer.level_embed"] = sd[pdp + "level_embed"]
    # Transformer decoder.
    p = "sem_seg_head.predictor."
    for i in range(cfg.decoder.num_layers):
        h = tm + f"decoder.layers.{i}."
        sa, ca, ffn = (p + f"transformer_self_attention_layers.{i}.",
                       p + f"transformer_cross_attention_layers.{i}.",
                       p + f"transformer_ffn_layers.{i}.")
        for t in ("weight", "bias"):
            out[sa + f"self_attn.in_proj_{t}"] = np.concatenate(
                [sd[h + f"self_attn.{n}_proj.{t}"] for n in "qkv"])
            for theirs, ours in (("self_attn.out_proj", sa + "self_attn.out_proj"),
                                 ("self_attn_layer_norm", sa + "norm"),
                                 ("cross_attn.out_proj", ca + "multihead_attn.out_proj"),
                                 ("cross_attn_layer_norm", ca + "norm"),
                                 ("fc1", ffn + "linear1"), ("fc2", ffn + "linear2"),
                                 ("final_layer_norm", ffn + "norm")):
                out[f"{ours}.{t}"] = sd[h + f"{theirs}.{t}"]
            out[ca + f"multihead_attn.in_proj_{t}"] = sd[h + f"cross_attn.in_proj_{t}"]
    for t in ("weight", "bias"):
        out[p + f"decoder_norm.{t}"] = sd[tm + f"decoder.layernorm.{t}"]
        for j in range(3):
            out[p + f"mask_embed.layers.{j}.{t}"] = sd[
                tm + f"decoder.mask_predictor.mask_embedder.{j}.0.{t}"]
    out[p + "level_embed.weight"] = sd[tm + "level_embed.weight"]
    out[p + "static_query.weight"] = sd[tm + "queries_features.weight"]
    out[p + "query_embed.weight"] = sd[tm + "queries_embedder.weight"]
    out[p + "class_embed.weight"] = np.zeros((134, cfg.decoder.hidden_dim), np.float32)
    out[p + "class_embed.bias"] = np.zeros(134, np.float32)
    out["criterion.empty_weight"] = np.ones(134, np.float32)
    return out


def test_detectron2_checkpoint_converts_to_the_hf_outputs(hf_model, tmp_path):
    sd = _detectron2_state_dict(hf_model)
    with open(tmp_path / "model_final.pkl", "wb") as f:
        pickle.dump({"model": sd, "__author__": "Detectron2 Model Zoo"}, f)
    mask2former.main(["--src", str(tmp_path / "model_final.pkl"), "--out", str(tmp_path / "o"),
                      "--variant", "tiny"])
    params = checkpoint.restore_params(tmp_path / "o")
    pixels = np.random.default_rng(1).normal(size=(1, 160, 160, 3)).astype(np.float32)
    np.testing.assert_allclose(_ours(params, pixels, _queries(hf_model, 1)),
                               _hf_outputs(hf_model, pixels), atol=TOL, rtol=0)


def test_detectron2_converter_reports_every_problem(hf_model, tmp_path):
    sd = _detectron2_state_dict(hf_model)
    del sd["sem_seg_head.pixel_decoder.adapter_1.weight"]
    sd["sem_seg_head.predictor.new_head.weight"] = np.zeros(3, np.float32)
    sd["backbone.norm2.weight"] = np.zeros(5, np.float32)
    with open(tmp_path / "m.pkl", "wb") as f:
        pickle.dump({"model": sd}, f)
    with pytest.raises(ConversionError) as e:
        mask2former.convert(tmp_path / "m.pkl", tmp_path / "o", variant="tiny")
    for needle in ("pixel_decoder/adapter_1/conv/kernel", "predictor.new_head.weight",
                   "backbone.norm2.weight: (5,)"):
        assert needle in str(e.value), str(e.value)


def test_full_size_layout_matches_all_650_reference_keys():
    cfg = SegHeadConfig.from_variant("swin-b")
    source = []
    for line in (REFERENCE / "mask2former_swinb_coco_panoptic_keys.tsv"
                 ).read_text().splitlines():
        name, shape, _ = line.split("\t")
        shape = ast.literal_eval(shape)
        source.append((name, lambda s=shape: np.broadcast_to(np.float32(0), s), 0))
    assert len(source) == 650
    expected = mask2former.expected_params(cfg)
    got = convert_tensors(iter(source), mask2former.rules(), expected,
                          unused=mask2former.unused(), dry_run=True)
    assert len(jax.tree_util.tree_leaves(got)) == len(jax.tree_util.tree_leaves(expected))


def test_sizes_inferred_from_the_real_layout_are_the_swin_b_preset():
    """The sizes `source_sizes` reads from the real checkpoint's shapes (its published key
    list) rebuild exactly the `swin-b` preset."""
    shapes = {}
    for line in (REFERENCE / "mask2former_swinb_coco_panoptic_keys.tsv"
                 ).read_text().splitlines():
        name, shape, _ = line.split("\t")
        shapes[name] = ast.literal_eval(shape)
    prefixes = ("backbone.", "sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.")
    sizes = mask2former.source_sizes(shapes, prefixes, "reference")
    assert sizes["swin"]["depths"] == (2, 2, 18, 2) and sizes["swin"]["window_size"] == 12
    # The Swin backbone entirely from the shapes (over the tiny preset: nothing of it left)...
    assert SwinConfig.from_variant("tiny", **sizes["swin"]) == SwinConfig.from_variant("B/12")
    # ... the decoders' head counts and sampling points from the preset.
    assert SegHeadConfig.from_variant("swin-b", **sizes) == SegHeadConfig.from_variant("swin-b")
    assert sizes["decoder"]["num_layers"] == 9 and sizes["pixel_decoder"]["encoder_layers"] == 6
