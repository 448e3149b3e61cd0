"""Mask2Former pixel decoder and multi-scale deformable attention parity with transformers
(fp32, max abs error <= 1e-4 in every comparison), and the full-size detectron2 layout."""

import ast

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from transformers import Mask2FormerConfig
from transformers.models.mask2former import modeling_mask2former as hf

from convert.common import ConversionError, Rule, convert_tensors, linear_rules
from convert.m2f_pixel_decoder import d2_rules, hf_rules
from convert.mask2former import hf_config
from segearth_jax.models.msdeform_attn import MSDeformAttn, multi_scale_deformable_attention
from segearth_jax.models.pixel_decoder import MSDeformAttnPixelDecoder, PixelDecoderConfig
from segearth_jax.resample import resize_bilinear
from tests.conftest import REFERENCE

TOL = 1e-4  # fp32 max abs error against the PyTorch reference.


def _randomize(module: torch.nn.Module, seed: int, scale: float = 0.2) -> None:
    """Every parameter (GroupNorm/LayerNorm affine and level_embed included) random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * scale)


def _source(module: torch.nn.Module):
    return ((k, (lambda v=v: v.detach().numpy()), 0) for k, v in module.state_dict().items())


def _max_err(ours, ref: torch.Tensor) -> float:
    return float(np.max(np.abs(np.asarray(ours) - ref.detach().numpy())))


# Non-square levels, one of them 1x1; locations reach outside [0, 1] on every side.
SHAPES = ((6, 4), (3, 5), (1, 1))


def test_sampling_matches_grid_sample():
    rng = np.random.default_rng(0)
    b, q, heads, dh, points = 2, 7, 3, 5, 4
    s = sum(h * w for h, w in SHAPES)
    value = rng.normal(size=(b, s, heads, dh)).astype(np.float32)
    loc = rng.uniform(-0.3, 1.3, (b, q, heads, len(SHAPES), points, 2)).astype(np.float32)
    loc[0, 0, 0, :, 0] = [[0.0, 0.0]] * len(SHAPES)  # exact corners and edges
    loc[0, 0, 0, :, 1] = [[1.0, 1.0]] * len(SHAPES)
    loc[0, 0, 0, :, 2] = [[-0.6, 0.5]] * len(SHAPES)  # fully outside: zeros
    weights = rng.uniform(0, 1, (b, q, heads, len(SHAPES), points)).astype(np.float32)
    ours = jax.jit(multi_scale_deformable_attention, static_argnums=1)(value, SHAPES, loc,
                                                                      weights)
    ref = hf.multi_scale_deformable_attention(torch.from_numpy(value), list(SHAPES),
                                              torch.from_numpy(loc), torch.from_numpy(weights))
    assert ours.shape == ref.shape == (b, q, heads * dh)
    assert _max_err(ours, ref) <= TOL


def test_msdeform_attn_module_matches_hf():
    d, heads, points = 32, 4, 4
    ref = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(d, heads, len(SHAPES),
                                                                          points)
    _randomize(ref, seed=1, scale=0.3)
    rng = np.random.default_rng(1)
    s = sum(h * w for h, w in SHAPES)
    b, q = 2, 9
    query = rng.normal(size=(b, q, d)).astype(np.float32)
    pos = rng.normal(size=(b, q, d)).astype(np.float32)
    memory = rng.normal(size=(b, s, d)).astype(np.float32)
    refs = rng.uniform(0, 1, (b, q, len(SHAPES), 2)).astype(np.float32)
    pad = np.zeros((b, s), bool)
    pad[1, -3:] = True  # padded positions contribute nothing
    model = MSDeformAttn(d, heads, len(SHAPES), points)
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), query, refs, memory, SHAPES))
    rules = linear_rules(r"(?P<p>sampling_offsets|attention_weights|value_proj|output_proj)",
                         "{p}")
    params = convert_tensors(_source(ref), rules, expected["params"])
    ours = model.apply({"params": params}, query + pos, refs, memory, SHAPES, pad)
    with torch.no_grad():
        t = torch.from_numpy
        out, _ = ref(t(query), attention_mask=t(pad), encoder_hidden_states=t(memory),
                     position_embeddings=t(pos), reference_points=t(refs),
                     spatial_shapes_list=list(SHAPES))
    assert _max_err(ours, out) <= TOL


def test_msdeform_attn_init_is_deformable_detr():
    model = MSDeformAttn(64, 8, 3, 4)
    x, memory = jnp.zeros((1, 2, 64)), jnp.zeros((1, 3, 64))
    p = model.init(jax.random.key(0), x, jnp.zeros((1, 2, 3, 2)), memory,
                   ((1, 1), (1, 1), (1, 1)))
    p = p["params"]
    ref = hf.Mask2FormerPixelDecoderEncoderMultiscaleDeformableAttention(64, 8, 3, 4)
    hf.Mask2FormerPreTrainedModel._init_weights(
        type("M", (), {"config": Mask2FormerConfig()})(), ref)
    np.testing.assert_allclose(p["sampling_offsets"]["bias"],
                               ref.sampling_offsets.bias.detach().numpy(), atol=1e-6)
    for name in ("sampling_offsets", "attention_weights"):
        assert not np.any(p[name]["kernel"])
    assert not np.any(p["attention_weights"]["bias"])
    bound = np.sqrt(6 / (64 + 64))  # xavier uniform
    for name in ("value_proj", "output_proj"):
        k = np.asarray(p[name]["kernel"])
        assert np.abs(k).max() <= bound and k.std() > bound / 3 and not np.any(p[name]["bias"])


@pytest.mark.parametrize("size", [(7, 10), (8, 8), (1, 3)])
def test_bilinear_resize_matches_torch_interpolate(size):
    x = np.random.default_rng(2).normal(size=(2, *size, 3)).astype(np.float32)
    for out in [(2 * size[0], 2 * size[1]), (2 * size[0] - 1, 2 * size[1] + 1)]:
        ours = resize_bilinear(jnp.asarray(x), out, axes=(1, 2))
        ref = torch.nn.functional.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=out,
                                              mode="bilinear", align_corners=False)
        assert _max_err(ours, ref.permute(0, 2, 3, 1)) <= TOL


def _hf_decoder(cfg: PixelDecoderConfig, seed: int):
    ref = hf.Mask2FormerPixelDecoder(hf_config(pixel_decoder=cfg),
                                     feature_channels=list(cfg.in_channels)).eval()
    _randomize(ref, seed)
    return ref


def _pyramid(cfg: PixelDecoderConfig, batch: int, grid: tuple[int, int], seed: int
             ) -> list[np.ndarray]:
    """Random NHWC maps res2..res5 with `cfg.in_channels`: res2 is `grid` (h, w), each next map
    ceil-halved."""
    rng = np.random.default_rng(seed)
    (h, w), feats = grid, []
    for c in cfg.in_channels:
        feats.append(rng.normal(size=(batch, h, w, c)).astype(np.float32))
        h, w = -(-h // 2), -(-w // 2)
    return feats


def _both(cfg: PixelDecoderConfig, ref, rules: list[Rule], feats: list[np.ndarray]):
    """Ours (weights converted from `ref` by `rules`) and `ref` on `feats`: ((mask_features,
    maps), HF output)."""
    model = MSDeformAttnPixelDecoder(cfg)
    expected = jax.eval_shape(model.init, jax.random.key(0), feats)["params"]
    params = convert_tensors(_source(ref), rules, {"pixel_decoder": expected})["pixel_decoder"]
    ours = jax.jit(model.apply)({"params": params}, feats)
    with torch.no_grad():
        return ours, ref([torch.from_numpy(f).permute(0, 3, 1, 2) for f in feats])


@pytest.mark.parametrize("grid", [(12, 20), (13, 9)])  # res2 size; odd: res3 = ceil(res2 / 2)
def test_pixel_decoder_matches_hf(grid):
    cfg = PixelDecoderConfig.from_variant("tiny")
    ref = _hf_decoder(cfg, seed=3)
    feats = _pyramid(cfg, 2, grid, seed=3)
    (mask, maps), out = _both(cfg, ref, hf_rules("", "pixel_decoder"), feats)
    nchw = lambda t: t.permute(0, 2, 3, 1)
    assert mask.shape == (2, *grid, cfg.mask_dim)
    assert _max_err(mask, nchw(out.mask_features)) <= TOL
    assert len(maps) == len(out.multi_scale_features) == 3
    for i, (ours, theirs) in enumerate(zip(maps, out.multi_scale_features, strict=True)):
        assert ours.shape == nchw(theirs).shape == feats[3 - i].shape[:3] + (cfg.conv_dim,)
        assert _max_err(ours, nchw(theirs)) <= TOL, f"multi-scale map {i}"



def test_encoder_remat_gives_the_same_outputs_and_gradients():
    """`remat_policy="full"` (each deformable layer recomputed in the backward), `"sampling"`
    (only its bilinear sampling recomputed) and `scan=False` (the layers unrolled; forward only,
    to keep its compile short): the values and gradients of the plain scan (fp32)."""
    rng = np.random.default_rng(5)
    h, w = 12, 20
    cfg = PixelDecoderConfig.from_variant("tiny")
    feats = []
    for c in cfg.in_channels:
        feats.append(jnp.asarray(rng.normal(size=(2, h, w, c)), jnp.float32))
        h, w = -(-h // 2), -(-w // 2)
    params = MSDeformAttnPixelDecoder(cfg).init(jax.random.key(1), feats)["params"]

    def loss(p, knobs):
        scan, policy = knobs
        model = MSDeformAttnPixelDecoder(PixelDecoderConfig.from_variant(
            "tiny", scan=scan, remat_policy=policy))
        mask, maps = model.apply({"params": p}, feats)
        return jnp.sum(mask ** 2) + sum(jnp.sum(jnp.sin(m)) for m in maps)

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain, g_plain = grad(params, (True, "none"))
    enc = g_plain["encoder"]["layers"]["self_attn"]["sampling_offsets"]["kernel"]
    assert float(jnp.max(jnp.abs(enc))) > 0  # the gradient reaches the deformable sampling
    unrolled = jax.jit(loss, static_argnums=1)(params, (False, "none"))
    assert abs(float(plain) - float(unrolled)) <= TOL * max(1.0, abs(float(plain)))
    for remat in ((True, "full"), (True, "sampling")):
        value, g = grad(params, remat)
        assert abs(float(plain) - float(value)) <= TOL * max(1.0, abs(float(plain))), remat
        for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g), strict=True):
            assert float(jnp.max(jnp.abs(a - b))) <= TOL, remat
    with pytest.raises(ValueError, match="remat_policy"):
        PixelDecoderConfig(remat_policy="everything")


def test_simplify_fpn_matches_hf_with_mask2former_simplify_convs():
    """The official SegEarth-R2 FPN (Mask2Former-Simplify): convs with a bias and a ReLU after
    the lateral GroupNorm. The reference is HF's decoder with exactly those modules swapped in."""
    cfg = PixelDecoderConfig.from_variant("tiny", simplify_fpn=True)
    ref = _hf_decoder(cfg, seed=5)
    c_in, d = cfg.in_channels[0], cfg.conv_dim
    # In place: HF's forward reaches these Sequentials through its own lists.
    ref.adapter_1[0] = torch.nn.Conv2d(c_in, d, 1, bias=True)
    ref.adapter_1.append(torch.nn.ReLU())
    ref.layer_1[0] = torch.nn.Conv2d(d, d, 3, padding=1, bias=True)
    _randomize(ref, 5)
    feats = _pyramid(cfg, 1, (10, 14), seed=5)
    expected = jax.eval_shape(MSDeformAttnPixelDecoder(cfg).init, jax.random.key(0), feats)
    conv = expected["params"]["adapter_1"]["conv"], expected["params"]["layer_1"]["conv"]
    assert all("bias" in c for c in conv)
    rules = hf_rules("", "pixel_decoder") + [
        Rule(r"(?P<m>(?:adapter|layer)_1)\.0\.bias", "pixel_decoder/{m}/conv/bias")]
    (mask, _), out = _both(cfg, ref, rules, feats)
    assert _max_err(mask, out.mask_features.permute(0, 2, 3, 1)) <= TOL


def _reference_source(drop=()):
    """(key, zero-stride view, 0) for every pixel-decoder key of the real Mask2Former list."""
    for line in (REFERENCE / "mask2former_swinb_coco_panoptic_keys.tsv"
                 ).read_text().splitlines():
        name, shape, _ = line.split("\t")
        if name.startswith("sem_seg_head.pixel_decoder.") and name not in drop:
            shape = ast.literal_eval(shape)
            yield name, (lambda s=shape: np.broadcast_to(np.zeros((), np.float32), s)), 0


def _swin_b_features(size=1024):
    return [jax.ShapeDtypeStruct((1, size // s, size // s, c), jnp.float32)
            for s, c in zip((4, 8, 16, 32), (128, 256, 512, 1024), strict=True)]


def test_full_size_layout_matches_every_detectron2_key():
    model = MSDeformAttnPixelDecoder(PixelDecoderConfig.from_variant("swin-b"))
    feats = _swin_b_features()
    expected = jax.eval_shape(model.init, jax.random.key(0), feats)["params"]
    rules = d2_rules(r"sem_seg_head\.pixel_decoder\.", "")
    got = convert_tensors(_reference_source(), rules, expected, dry_run=True)
    leaves = jax.tree_util.tree_leaves(got)
    assert len(leaves) == len(jax.tree_util.tree_leaves(expected))
    assert sum(1 for _ in _reference_source()) == 117  # 12 + 1 + 6 * 16 + 2 + 6
    assert got["encoder"]["layers"]["self_attn"]["sampling_offsets"]["kernel"].shape == (
        6, 256, 192)
    assert got["layer_1"]["conv"]["kernel"].shape == (3, 3, 256, 256)
    with pytest.raises(ConversionError, match=r"encoder/layers/linear2/bias layers \[4\]"):
        convert_tensors(_reference_source(drop={
            "sem_seg_head.pixel_decoder.transformer.encoder.layers.4.linear2.bias"}),
            rules, expected, dry_run=True)

    params = jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype), expected)
    mask, maps = jax.eval_shape(model.apply, {"params": params}, feats)
    assert mask.shape == (1, 256, 256, 256)
    assert [m.shape for m in maps] == [(1, 32, 32, 256), (1, 64, 64, 256), (1, 128, 128, 256)]
