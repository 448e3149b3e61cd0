"""Masked-attention transformer decoder vs transformers' Mask2Former decoder, with the queries
fed from outside (fp32, max abs error <= 1e-4), and the independent-query mode."""

import jax
import numpy as np
import pytest
import torch
from transformers.models.mask2former import modeling_mask2former as m2f

from convert import m2f_transformer_decoder as tables
from convert.common import convert_tensors
from convert.mask2former import hf_config
from segearth_jax.models.mask_decoder import MaskDecoderConfig, MaskedTransformerDecoder

TOL = 1e-4  # fp32 max abs error against the PyTorch reference.
# Two rounds of the three levels: the scanned layers' slot order is exercised.
C, HEADS, LAYERS = 32, 4, 6
SIZES = [(3, 5), (6, 10), (12, 20)]  # 1/32, 1/16, 1/8 of a non-square 96x160 image
MASK_HW = (24, 40)  # stride 4


@pytest.fixture(scope="module")
def hf_module():
    ours = MaskDecoderConfig.from_variant("tiny", num_layers=LAYERS)
    assert (ours.hidden_dim, ours.mask_dim, ours.num_heads) == (C, C, HEADS)
    cfg = hf_config(decoder=ours, num_queries=5, pre_norm=False)
    torch.manual_seed(0)
    module = m2f.Mask2FormerTransformerModule(in_features=C, config=cfg).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    return module


@pytest.fixture(scope="module")
def params(hf_module):
    cfg = MaskDecoderConfig.from_variant("tiny", num_layers=LAYERS)
    model = MaskedTransformerDecoder(cfg)
    feats, mask_feats, queries = _inputs(0, 2, 3)
    expected = jax.eval_shape(model.init, jax.random.key(0), queries, feats, mask_feats)
    source = ((k, (lambda v=v: v.detach().numpy()), 0)
              for k, v in hf_module.state_dict().items())
    return convert_tensors(source, tables.hf_rules("", "dec"), {"dec": expected["params"]},
                           unused=tables.hf_unused(""))["dec"]


def _inputs(seed, batch, n_queries):
    rng = np.random.default_rng(seed)
    feats = [rng.normal(size=(batch, h, w, C)).astype(np.float32) for h, w in SIZES]
    mask_feats = rng.normal(size=(batch, *MASK_HW, C)).astype(np.float32)
    queries = rng.normal(size=(batch, n_queries, C)).astype(np.float32)
    return feats, mask_feats, queries


def _hf_masks(module, feats, mask_feats, queries):
    """HF's decoder as `Mask2FormerTransformerModule.forward` drives it, learnable queries
    replaced by ours and a zero query positional embedding. -> [L + 1, B, Q, H, W]."""
    with torch.no_grad():
        srcs, poss, sizes = [], [], []
        for i, f in enumerate(feats):
            x = torch.from_numpy(f).permute(0, 3, 1, 2)
            sizes.append(x.shape[-2:])
            pos = module.position_embedder(x.shape, x.device, x.dtype, None).flatten(2)
            srcs.append((module.input_projections[i](x).flatten(2)
                         + module.level_embed.weight[i][None, :, None]).permute(2, 0, 1))
            poss.append(pos.permute(2, 0, 1))
        q = torch.from_numpy(queries).permute(1, 0, 2)
        out = module.decoder(inputs_embeds=q, multi_stage_positional_embeddings=poss,
                             pixel_embeddings=torch.from_numpy(mask_feats).permute(0, 3, 1, 2),
                             encoder_hidden_states=srcs, query_position_embeddings=q * 0,
                             feature_size_list=sizes, return_dict=True)
    return np.stack([m.numpy() for m in out.masks_queries_logits])


def test_every_layer_mask_logits_match_hf_decoder(hf_module, params):
    feats, mask_feats, queries = _inputs(1, 2, 3)
    model = MaskedTransformerDecoder(
        MaskDecoderConfig.from_variant("tiny", num_layers=LAYERS, independent_queries=False))
    ours = model.apply({"params": params}, queries, feats, mask_feats)
    ref = _hf_masks(hf_module, feats, mask_feats, queries)
    assert ours.shape == ref.shape == (LAYERS + 1, 2, 3, *MASK_HW)
    # The masked attention matters here: some rows are partly blocked.
    assert 0.05 < float(np.mean(ref[:-1] > 0)) < 0.95
    np.testing.assert_allclose(ours, ref, atol=TOL, rtol=0)


def test_independent_queries_equal_single_query_runs_of_hf(hf_module, params):
    feats, mask_feats, queries = _inputs(2, 2, 4)
    model = MaskedTransformerDecoder(MaskDecoderConfig.from_variant("tiny", num_layers=LAYERS))
    batched = model.apply({"params": params}, queries, feats, mask_feats)
    for q in range(4):
        single = _hf_masks(hf_module, feats, mask_feats, queries[:, q: q + 1])
        np.testing.assert_allclose(batched[:, :, q: q + 1], single, atol=TOL, rtol=0)


def test_padded_queries_do_not_change_valid_ones(params):
    feats, mask_feats, queries = _inputs(3, 1, 2)
    for independent in (True, False):
        model = MaskedTransformerDecoder(
            MaskDecoderConfig.from_variant("tiny", num_layers=LAYERS,
                                           independent_queries=independent))
        alone = model.apply({"params": params}, queries, feats, mask_feats)
        junk = np.random.default_rng(4).normal(size=(1, 3, C)).astype(np.float32) * 10
        padded = model.apply({"params": params}, np.concatenate([queries, junk], 1), feats,
                             mask_feats, query_valid=np.array([[True, True, False, False, False]]))
        np.testing.assert_allclose(padded[:, :, :2], alone, atol=TOL, rtol=0)


def test_remat_and_scan_off_give_the_same_predictions_and_gradients(params):
    """`remat_policy="full"` (each scanned round recomputed in the backward) and `scan=False`
    (the rounds unrolled; forward only, to keep its compile short): the values and gradients
    of the plain scan (fp32)."""
    feats, mask_feats, queries = _inputs(5, 2, 2)

    def loss(p, knobs):
        scan, policy = knobs
        model = MaskedTransformerDecoder(MaskDecoderConfig.from_variant(
            "tiny", num_layers=LAYERS, scan=scan, remat_policy=policy))
        return jax.numpy.sum(jax.numpy.tanh(model.apply({"params": p}, queries, feats,
                                                        mask_feats)))

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain, g_plain = grad(params, (True, "none"))
    assert float(np.abs(np.asarray(g_plain["head"]["mask_embed_0"]["kernel"])).max()) > 0
    value, g = grad(params, (True, "full"))
    assert abs(float(plain) - float(value)) <= TOL * max(1.0, abs(float(plain)))
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g), strict=True):
        assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= TOL
    unrolled = jax.jit(loss, static_argnums=1)(params, (False, "none"))
    assert abs(float(plain) - float(unrolled)) <= TOL * max(1.0, abs(float(plain)))


def test_layers_not_a_multiple_of_the_levels_are_refused():
    feats, mask_feats, queries = _inputs(0, 1, 1)
    model = MaskedTransformerDecoder(MaskDecoderConfig.from_variant("tiny", num_layers=4))
    with pytest.raises(ValueError, match="multiple of num_levels 3"):
        model.init(jax.random.key(0), queries, feats, mask_feats)

def test_full_size_layout_matches_the_reference_predictor_keys():
    import ast

    from tests.conftest import REFERENCE

    model = MaskedTransformerDecoder(MaskDecoderConfig.from_variant("m2f"))
    feats = [np.zeros((1, s, s, 256), np.float32) for s in (32, 64, 128)]
    queries, mask_feats = np.zeros((1, 2, 256), np.float32), np.zeros((1, 256, 256, 256))
    expected = jax.eval_shape(model.init, jax.random.key(0), queries, feats, mask_feats)["params"]
    prefix = "sem_seg_head.predictor."
    source = []
    for line in (REFERENCE / "mask2former_swinb_coco_panoptic_keys.tsv").read_text(
            ).splitlines():
        name, shape, _ = line.split("\t")
        if name.startswith(prefix):
            shape = ast.literal_eval(shape)
            source.append((name, lambda s=shape: np.broadcast_to(np.float32(0), s), 0))
    got = convert_tensors(iter(source), tables.d2_rules(r"sem_seg_head\.predictor\.", "p"),
                          {"p": expected}, unused=tables.d2_unused(r"sem_seg_head\.predictor\."),
                          dry_run=True)
    assert len(jax.tree_util.tree_leaves(got)) == len(jax.tree_util.tree_leaves(expected))
    out = jax.eval_shape(model.apply, {"params": expected}, queries, feats, mask_feats)
    assert out.shape == (10, 1, 2, 256, 256)
