"""Swin backbone: parity with transformers' SwinBackbone, the official-checkpoint converter, the
full-size layout and the shifted windows (fp32, max abs error <= 1e-4 against PyTorch)."""

import ast
import functools

import jax
import numpy as np
import pytest
import torch
import transformers
from flax.traverse_util import flatten_dict

from convert import swin as swin_convert
from convert.common import ConversionError, convert_tensors
from segearth_jax import checkpoint
from segearth_jax.models.swin import SwinBlock, SwinConfig, SwinTransformer, shift_window_mask
from tests.conftest import REFERENCE

TOL = 1e-4  # fp32 max abs error against the PyTorch reference.
TINY = SwinConfig.from_variant("tiny")
# Every stage map is larger than the 4x4 window (there transformers and detectron2 agree), and
# one compile covers the cases: 160 x 200 -> maps 40x50, 20x25, 10x13, 5x7 (heights 40/20 are
# multiples of the window, every width and the later heights are not: padding; odd maps merged).
SIZE = (160, 200)


@functools.cache
def _apply():
    return jax.jit(SwinTransformer(TINY).apply)  # one compile per input shape for the file


def _pixels(size, seed=0):
    return np.random.default_rng(seed).normal(size=(2, *size, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def hf_backbone():
    hf_cfg = transformers.SwinConfig(
        image_size=224, patch_size=TINY.patch_size, embed_dim=TINY.embed_dim,
        depths=list(TINY.depths), num_heads=list(TINY.num_heads), window_size=TINY.window_size,
        mlp_ratio=TINY.mlp_ratio, drop_path_rate=0.0, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, out_features=["stage1", "stage2", "stage3", "stage4"])
    torch.manual_seed(0)
    model = transformers.SwinBackbone(hf_cfg).eval()
    with torch.no_grad():  # every weight random: norms, biases and bias tables included
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _hf_source(state_dict):
    return ((k, (lambda v=v: v.detach().numpy()), 0) for k, v in state_dict.items())


def _hf_params(state_dict):
    return convert_tensors(_hf_source(state_dict), swin_convert.hf_rules("", "swin"),
                           {"swin": swin_convert.expected_params(TINY)},
                           unused=swin_convert.hf_unused(""))["swin"]


@functools.cache
def _hf_features(hf_backbone, size):
    with torch.no_grad():
        maps = hf_backbone(torch.from_numpy(_pixels(size)).permute(0, 3, 1, 2)).feature_maps
    return [m.permute(0, 2, 3, 1).numpy() for m in maps]


def _assert_matches_hf(params, hf_backbone, size):
    ours = _apply()({"params": params}, _pixels(size))
    for i, ref in enumerate(_hf_features(hf_backbone, size)):
        got = np.asarray(ours[f"res{i + 2}"])
        assert got.shape == ref.shape, f"res{i + 2}"
        err = np.abs(got - ref).max()
        assert err <= TOL, f"res{i + 2} {size}: max abs error {err}"


def test_stage_outputs_match_hf_swin_backbone(hf_backbone):
    _assert_matches_hf(_hf_params(hf_backbone.state_dict()), hf_backbone, SIZE)


def test_remat_gives_the_same_outputs_and_input_gradient(hf_backbone):
    """`remat_policy="full"` (each scanned block pair recomputed in the backward) and
    `scan=False` (the pairs unrolled; forward only, to keep its compile short): the same
    features and the same gradient of a scalar of them with respect to the pixels (fp32)."""
    import dataclasses

    params = _hf_params(hf_backbone.state_dict())
    x = _pixels((64, 48), seed=2)

    def loss(px, knobs):
        scan, policy = knobs
        feats = SwinTransformer(dataclasses.replace(TINY, scan=scan, remat_policy=policy)).apply(
            {"params": params}, px)
        return sum(jax.numpy.sum(jax.numpy.sin(f)) for f in feats.values())

    grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
    plain, g_plain = grad(x, (True, "none"))
    assert float(np.abs(np.asarray(g_plain)).max()) > 0
    value, g = grad(x, (True, "full"))
    assert abs(float(plain) - float(value)) <= TOL * max(1.0, abs(float(plain)))
    assert float(np.abs(np.asarray(g_plain) - np.asarray(g)).max()) <= TOL
    unrolled = jax.jit(loss, static_argnums=1)(x, (False, "none"))
    assert abs(float(plain) - float(unrolled)) <= TOL * max(1.0, abs(float(plain)))


def test_odd_stage_depth_is_refused():
    import dataclasses

    with pytest.raises(ValueError, match="depth 3 is odd"):
        SwinTransformer(dataclasses.replace(TINY, depths=(2, 3, 2, 2))).init(
            jax.random.key(0), _pixels((32, 32)))

def test_hf_rules_read_the_4x_names_of_published_files(hf_backbone):
    """The hub files use transformers 4.x names (renamed at load time by 5.x); both convert to
    the same parameters."""
    renames = [("attention.self.query", "attention.q_proj"),
               ("attention.self.key", "attention.k_proj"),
               ("attention.self.value", "attention.v_proj"),
               ("attention.self.relative_position_bias_table",
                "attention.relative_position_bias.relative_position_bias_table"),
               ("attention.output.dense", "attention.o_proj"),
               ("intermediate.dense", "mlp.fc1"), ("output.dense", "mlp.fc2")]
    old = {}
    for k, v in hf_backbone.state_dict().items():
        if k.startswith("swin.layernorm."):  # 4.x SwinBackbone has no final norm
            continue
        k = k.removeprefix("swin.")
        for o, n in renames:
            k = k.replace(n, o)
        old[k] = v
    old["encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(16, 16)
    assert "encoder.layers.0.blocks.0.output.dense.weight" in old
    new = flatten_dict(_hf_params(old), sep="/")
    ref = flatten_dict(_hf_params(hf_backbone.state_dict()), sep="/")
    assert new.keys() == ref.keys()
    for k in ref:
        np.testing.assert_array_equal(new[k], ref[k], err_msg=k)


def _official_state_dict(hf_backbone):
    """The HF weights under the official Swin .pth names, written here independently of the
    converter's table (qkv = rows of query, key, value), plus the buffers and the classifier."""
    sd = {k: v.detach().clone() for k, v in hf_backbone.state_dict().items()}
    e = "swin.embeddings."
    out = {"patch_embed.proj.weight": sd[e + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": sd[e + "patch_embeddings.projection.bias"],
           "patch_embed.norm.weight": sd[e + "norm.weight"],
           "patch_embed.norm.bias": sd[e + "norm.bias"]}
    n = TINY.window_size ** 2
    for i, depth in enumerate(TINY.depths):
        for j in range(depth):
            h, o = f"swin.encoder.layers.{i}.blocks.{j}.", f"layers.{i}.blocks.{j}."
            for t in ("weight", "bias"):
                for hf, official in (("layernorm_before", "norm1"),
                                     ("attention.o_proj", "attn.proj"),
                                     ("layernorm_after", "norm2"), ("mlp.fc1", "mlp.fc1"),
                                     ("mlp.fc2", "mlp.fc2")):
                    out[o + f"{official}.{t}"] = sd[h + f"{hf}.{t}"]
                out[o + f"attn.qkv.{t}"] = torch.cat(
                    [sd[h + f"attention.{x}_proj.{t}"] for x in "qkv"])
            out[o + "attn.relative_position_bias_table"] = sd[
                h + "attention.relative_position_bias.relative_position_bias_table"]
            out[o + "attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)
            if j % 2:
                out[o + "attn_mask"] = torch.zeros(4, n, n)
        if i < len(TINY.depths) - 1:
            h = f"swin.encoder.layers.{i}.downsample."
            out[f"layers.{i}.downsample.reduction.weight"] = sd[h + "reduction.weight"]
            out[f"layers.{i}.downsample.norm.weight"] = sd[h + "norm.weight"]
            out[f"layers.{i}.downsample.norm.bias"] = sd[h + "norm.bias"]
    c = TINY.channels[-1]
    out["norm.weight"], out["norm.bias"] = torch.ones(c), torch.zeros(c)
    out["head.weight"], out["head.bias"] = torch.zeros(10, c), torch.zeros(10)
    return out


def test_official_pth_converter_gives_hf_outputs(hf_backbone, tmp_path, capsys):
    torch.save({"model": _official_state_dict(hf_backbone)}, tmp_path / "swin.pth")
    swin_convert.main(["--src", str(tmp_path / "swin.pth"), "--out", str(tmp_path / "out"),
                       "--variant", "tiny"])
    assert "done:" in capsys.readouterr().out
    assert checkpoint.read_model_spec(tmp_path / "out")["kind"] == "swin"
    params = checkpoint.restore_params(tmp_path / "out")
    # The .pth has no per-stage output norms: they come out as 1/0. Give ours HF's norms (the
    # HF mapping of those is checked above) to compare the outputs.
    for i in range(4):
        np.testing.assert_array_equal(params[f"norm{i}"]["scale"], 1)
        np.testing.assert_array_equal(params[f"norm{i}"]["bias"], 0)
        norm = hf_backbone.hidden_states_norms[f"stage{i + 1}"]
        params[f"norm{i}"] = {"scale": norm.weight.detach().numpy(),
                              "bias": norm.bias.detach().numpy()}
    _assert_matches_hf(params, hf_backbone, SIZE)


def test_official_converter_reports_every_problem(hf_backbone, tmp_path):
    sd = _official_state_dict(hf_backbone)
    del sd["layers.1.blocks.0.mlp.fc1.bias"]  # missing
    sd["layers.0.blocks.0.attn.extra"] = torch.zeros(2)  # unexpected
    sd["layers.2.downsample.reduction.weight"] = torch.zeros(3, 3)  # mis-shaped
    torch.save({"model": sd}, tmp_path / "swin.pth")
    with pytest.raises(ConversionError) as e:
        swin_convert.convert(tmp_path / "swin.pth", tmp_path / "out", variant="tiny")
    msg = str(e.value)
    # The mis-shaped kernel is also listed as missing (nothing filled it).
    for needle in ("2 missing", "layers_1/blocks/w/mlp/fc1/bias", "1 unexpected",
                   "layers.0.blocks.0.attn.extra", "1 mis-shaped",
                   "layers.2.downsample.reduction.weight: (3, 3)"):
        assert needle in msg, msg
    assert not (tmp_path / "out").exists()  # nothing written on failure


def _reference_source(tsv, keep=lambda name: True):
    """(name, zero-stride view of the listed shape, 0) for each listed key: nothing allocated."""
    source = []
    for line in (REFERENCE / tsv).read_text().splitlines():
        name, shape, _ = line.split("\t")
        if keep(name):
            shape = ast.literal_eval(shape)
            source.append((name, lambda s=shape: np.broadcast_to(np.float32(0), s), 0))
    return source


def test_full_size_layout_matches_the_reference_keys():
    cfg = SwinConfig.from_variant("B/12")
    expected = swin_convert.expected_params(cfg)
    n_leaves = len(jax.tree_util.tree_leaves(expected))
    # The official ImageNet-22k .pth: everything but the 4 output norms (8 leaves).
    got = convert_tensors(
        iter(_reference_source("swin_base_patch4_window12_384_22k_keys.tsv")),
        swin_convert.official_rules("", "s"), {"s": expected},
        unused=swin_convert.official_unused(""),
        not_in_checkpoint=[swin_convert.output_norms_gap("s")], dry_run=True)
    assert len(jax.tree_util.tree_leaves(got)) == n_leaves - 8
    # detectron2's `backbone.*` of the Mask2Former checkpoint: everything, norm0..norm3 included.
    got = convert_tensors(
        iter(_reference_source("mask2former_swinb_coco_panoptic_keys.tsv",
                               lambda k: k.startswith("backbone."))),
        swin_convert.official_rules(r"backbone\.", "b"), {"b": expected},
        unused=swin_convert.official_unused(r"backbone\."), dry_run=True)
    assert len(jax.tree_util.tree_leaves(got)) == n_leaves
    out = jax.eval_shape(SwinTransformer(cfg).apply, {"params": expected},
                         jax.ShapeDtypeStruct((1, 1024, 1024, 3), np.float32))
    assert {k: v.shape for k, v in out.items()} == {
        "res2": (1, 256, 256, 128), "res3": (1, 128, 128, 256), "res4": (1, 64, 64, 512),
        "res5": (1, 32, 32, 1024)}


def test_shift_mask_matches_the_official_construction():
    """Reference: Swin's img_mask / window_partition / masked_fill(-100) code, in torch."""
    hp, wp, w, s = 8, 12, 4, 2
    img = torch.zeros(1, hp, wp, 1)
    cnt = 0
    for hs in (slice(0, -w), slice(-w, -s), slice(-s, None)):
        for ws in (slice(0, -w), slice(-w, -s), slice(-s, None)):
            img[:, hs, ws, :] = cnt
            cnt += 1
    win = img.view(1, hp // w, w, wp // w, w, 1).permute(0, 1, 3, 2, 4, 5).reshape(-1, w * w)
    ref = win.unsqueeze(1) - win.unsqueeze(2)
    ref = ref.masked_fill(ref != 0, -100.0).masked_fill(ref == 0, 0.0).numpy()
    ours = np.asarray(shift_window_mask(hp, wp, w, s))
    np.testing.assert_array_equal(ours, ref)
    assert (ours != 0).any() and (ours[0] == 0).all()  # the top-left window is one region


def _expected_links(h, w, window, shift):
    """[h*w, h*w] bool: which input tokens may reach which output tokens through one block,
    from the definition: windows of the (zero-padded) map rolled by -shift; within a window,
    tokens that wrapped around an edge (original row/column < shift) only see each other."""
    hp, wp = -(-h // window) * window, -(-w // window) * window
    y, x = np.divmod(np.arange(h * w), w)
    win = ((y - shift) % hp // window, (x - shift) % wp // window)
    same = lambda a: a[:, None] == a[None, :]
    links = same(win[0]) & same(win[1])
    if shift:
        links &= same(y < shift) & same(x < shift)
    return links


# (6, 7): padded to 8x8 (windows split by the padding); (3, 3): no larger than the window,
# where detectron2 still shifts (transformers would attend over the whole map).
@pytest.mark.parametrize("size", [(6, 7), (3, 3)])
@pytest.mark.parametrize("shift", [0, 2])
def test_block_attention_never_mixes_windows_or_shifted_regions(size, shift):
    """Perturbs one input token at a time and records which output tokens change."""
    h, w = size
    cfg = SwinConfig(embed_dim=4, depths=(2,), num_heads=(2,), window_size=4)
    block = SwinBlock(cfg, num_heads=2, shift=shift)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, h, w, 4)).astype(np.float32)
    # Batch row 0: x; row 1 + u: x with token u perturbed.
    delta = np.zeros((h * w, h, w, 4), np.float32)
    delta[np.arange(h * w), *np.divmod(np.arange(h * w), w)] = rng.normal(size=(h * w, 4))
    shapes = jax.eval_shape(block.init, jax.random.key(0), x)  # random weights, norms too
    params = jax.tree_util.tree_map(
        lambda s: (0.3 * rng.normal(size=s.shape)).astype(s.dtype), shapes)
    out = np.asarray(jax.jit(block.apply)(params, np.concatenate([x, x + delta])))
    links = np.abs(out[1:] - out[:1]).max(axis=-1).reshape(h * w, h * w)  # [input, output]
    expected = _expected_links(h, w, 4, shift)
    if shift:
        assert not expected.all()  # something is blocked, even for the 3x3 map
    # Allowed links are >= ~1e-4 here; a blocked one gets weight exp(-100): exactly 0 in fp32.
    assert links[expected].min() > 1e-6, "a link the official block has is missing"
    assert links[~expected].max(initial=0) < 1e-9, "a token attends outside its window/region"
