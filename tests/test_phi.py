"""Phi-2 / Mipha parity with transformers, the [SEG] attention probe and the KV cache.

Every comparison is fp32 with max abs error <= 1e-4 against transformers' PyTorch modules whose
weights reached us through `convert.mipha`.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from segearth_jax.generate import generate
from segearth_jax.models.mipha import Mipha, MiphaConfig

TOL = 1e-4  # fp32 max abs error against the PyTorch reference.
IMG = -200  # image placeholder id (PhiConfig.image_token_id)


def _ids(seed, shape, vocab=512):
    return np.random.default_rng(seed).integers(0, vocab, shape).astype(np.int32)


def _hf_embeds(phi, ids, feats):
    """HF inputs_embeds with image features spliced where ids == IMG (as Mipha does)."""
    ids_t = torch.from_numpy(np.where(ids == IMG, 0, ids)).long()
    emb = phi.model.embed_tokens(ids_t).detach().clone()
    for b in range(ids.shape[0]):
        pos = np.nonzero(ids[b] == IMG)[0]
        emb[b, pos] = torch.from_numpy(np.asarray(feats[b, : len(pos)]))
    return emb


def test_phi_logits_match_hf(tiny_torch, tiny_params):
    phi = tiny_torch[0]
    model = Mipha(MiphaConfig.from_variant("tiny"))
    ids = _ids(0, (2, 24))
    logits, _ = model.apply({"params": tiny_params}, ids)
    with torch.no_grad():
        ref = phi(torch.from_numpy(ids).long()).logits.numpy()
    np.testing.assert_allclose(logits, ref, atol=TOL, rtol=0)


def test_phi_left_padded_batch_matches_hf(tiny_torch, tiny_params):
    phi = tiny_torch[0]
    model = Mipha(MiphaConfig.from_variant("tiny"))
    ids = _ids(1, (2, 16))
    mask = np.ones_like(ids, bool)
    mask[0, :5] = False  # left padding
    pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
    logits, _ = model.apply({"params": tiny_params}, ids, positions=pos, attention_mask=mask)
    with torch.no_grad():
        ref = phi(torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long(),
                  position_ids=torch.from_numpy(pos).long()).logits.numpy()
    np.testing.assert_allclose(logits[mask], ref[mask], atol=TOL, rtol=0)


@pytest.mark.parametrize("scan", [True, False])
def test_multimodal_forward_matches_hf_pipeline(tiny_torch, tiny_params, scan):
    """SigLIP hidden_states[-2] -> projector -> spliced at the <image> rows -> Phi logits; the
    same parameters with both stacks scanned or unrolled (`scan=False`)."""
    phi, siglip, projector = tiny_torch
    knobs = dict(scan=scan, remat_policy="none" if scan else "full")
    model = Mipha(MiphaConfig.from_variant("tiny", vision=knobs, llm=knobs))
    n = model.config.vision.num_patches
    px = np.random.default_rng(3).uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
    ids = np.concatenate([_ids(4, (2, 3)), np.full((2, n), IMG, np.int32), _ids(5, (2, 7))], 1)
    logits, hidden = model.apply({"params": tiny_params}, ids, px)
    with torch.no_grad():
        feats = projector(siglip(torch.from_numpy(px).permute(0, 3, 1, 2),
                                 output_hidden_states=True).hidden_states[-2])
        out = phi(inputs_embeds=_hf_embeds(phi, ids, feats.numpy()), output_hidden_states=True)
    np.testing.assert_allclose(logits, out.logits.numpy(), atol=TOL, rtol=0)
    # HF's last hidden_states entry is after final_layernorm, like ours.
    np.testing.assert_allclose(hidden, out.hidden_states[-1].numpy(), atol=TOL, rtol=0)


@pytest.mark.parametrize("heads", ["all", "mean"])
def test_seg_probe_equals_rows_of_hf_attention(tiny_torch, tiny_params, heads):
    phi = tiny_torch[0]
    cfg = MiphaConfig.from_variant("tiny", llm=dict(seg_probe_heads=heads))
    model = Mipha(cfg)
    n, e = 16, cfg.llm.hidden_size
    feats = np.random.default_rng(6).normal(size=(2, n, e)).astype(np.float32)
    ids = np.concatenate([_ids(7, (2, 4)), np.full((2, n), IMG, np.int32), _ids(8, (2, 10))], 1)
    seg = np.array([[22, 27, -1], [29, 21, 25]], np.int32)  # -1: padded [SEG] slot
    (_, _), state = model.apply({"params": tiny_params}, ids, image_features=feats,
                                seg_positions=seg, mutable=["intermediates"])
    (probe,) = state["intermediates"]["llm"]["model"]["layers"]["self_attn"]["seg_attention"]
    with torch.no_grad():
        att = phi(inputs_embeds=_hf_embeds(phi, ids, feats), output_attentions=True).attentions
    ref = np.stack([a.numpy() for a in att])  # [layers, B, H, L, L]
    img_cols = np.arange(4, 4 + n)
    for b in range(2):
        for s, row in enumerate(seg[b]):
            got = probe[:, b, :, s] if heads == "all" else probe[:, b, s]
            if row < 0:
                np.testing.assert_array_equal(got, 0)
                continue
            want = ref[:, b, :, row][..., img_cols]  # [layers, H, N]
            if heads == "mean":
                want = want.mean(axis=1)
            np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_probe_keeps_no_square_attention(tiny_params):
    """The sown probe is [layers, B, S, N]; nothing L x L is stored."""
    model = Mipha(MiphaConfig.from_variant("tiny"))
    ids = np.concatenate([np.full((1, 16), IMG, np.int32), _ids(9, (1, 40))], 1)
    feats = np.zeros((1, 16, 64), np.float32)
    _, state = jax.eval_shape(lambda: model.apply(
        {"params": tiny_params}, ids, image_features=feats, seg_positions=np.array([[50]]),
        mutable=["intermediates"]))
    shapes = [x.shape for x in jax.tree_util.tree_leaves(state)]
    assert shapes == [(2, 1, 1, 16)]


def test_greedy_kv_cache_decoding_equals_full_forward_argmax(tiny_params):
    model = Mipha(MiphaConfig.from_variant("tiny"))
    n = model.config.vision.num_patches
    px = np.random.default_rng(10).uniform(-1, 1, (2, 56, 56, 3)).astype(np.float32)
    feats = model.apply({"params": tiny_params}, px, method=Mipha.encode_images)
    prompt = np.concatenate([_ids(11, (2, 3)), np.full((2, n), IMG, np.int32),
                             _ids(12, (2, 6))], 1)
    mask = np.ones_like(prompt, bool)
    mask[1, :2] = False  # left-padded second prompt
    steps = 12
    out = generate(model, tiny_params, prompt, mask, feats, max_new_tokens=steps, eos_id=-1)
    tokens = np.asarray(out["tokens"])
    # Teacher-forced full forward over prompt + generated tokens.
    full = np.concatenate([prompt, tokens], 1)
    full_mask = np.concatenate([mask, np.ones_like(tokens, bool)], 1)
    pos = np.maximum(np.cumsum(full_mask, 1) - 1, 0)
    logits, hidden = model.apply({"params": tiny_params}, full, positions=pos,
                                 attention_mask=full_mask, image_features=feats)
    p = prompt.shape[1]
    want = np.argmax(np.asarray(logits[:, p - 1: p - 1 + steps]), -1)
    np.testing.assert_array_equal(tokens, want)
    # Hidden states collected while decoding are those of the generated tokens' positions.
    np.testing.assert_allclose(out["hidden"], hidden[:, p:], atol=TOL, rtol=0)


def test_generation_stops_at_eos(tiny_params):
    model = Mipha(MiphaConfig.from_variant("tiny"))
    prompt = _ids(13, (1, 5))
    mask = np.ones_like(prompt, bool)
    free = np.asarray(generate(model, tiny_params, prompt, mask, None, max_new_tokens=8,
                               eos_id=-1)["tokens"])[0]
    eos = int(free[2])  # make the third greedy token the end token
    out = generate(model, tiny_params, prompt, mask, None, max_new_tokens=8, eos_id=eos)
    first = int(np.argmax(free == eos))
    assert int(out["lengths"][0]) == first + 1
    np.testing.assert_array_equal(np.asarray(out["tokens"])[0, : first + 1], free[: first + 1])
    assert np.all(np.asarray(out["tokens"])[0, first + 1:] == eos)


def test_unrolled_layers_decode_with_the_kv_cache_as_scanned(tiny_params):
    """`scan=False` (Phi's layers unrolled) keeps the KV cache per layer as the scan does:
    greedy decoding gives the same tokens and final hidden states (fp32, 1e-4)."""
    prompt = _ids(14, (2, 6))
    mask = np.ones_like(prompt, bool)
    outs = [generate(Mipha(MiphaConfig.from_variant("tiny", llm=dict(scan=scan))), tiny_params,
                     prompt, mask, None, max_new_tokens=5, eos_id=-1) for scan in (True, False)]
    np.testing.assert_array_equal(np.asarray(outs[0]["tokens"]), np.asarray(outs[1]["tokens"]))
    np.testing.assert_allclose(np.asarray(outs[0]["hidden"]), np.asarray(outs[1]["hidden"]),
                               atol=TOL, rtol=0)


def test_dataclass_configs_are_hashable():
    cfg = MiphaConfig.from_variant("mipha3b")
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert cfg.llm.rotary_dim == 32 and cfg.llm.head_dim == 80 and cfg.vision_layers == 26
    assert jnp.dtype(cfg.llm.dtype) == jnp.float32


def test_config_file_builds_the_model_config():
    from configs import mipha as mipha_config

    cfg = MiphaConfig.from_config(mipha_config.get_config("mipha3b").model)
    assert cfg.llm.lora.rank == 8 and cfg.llm.lora.is_target("llm/model/layers/self_attn/v_proj")
    assert not cfg.llm.lora.is_target("llm/model/layers/self_attn/k_proj")
    assert jnp.dtype(cfg.llm.dtype) == jnp.bfloat16 and cfg.llm.remat_policy == "dots_no_batch"
    assert cfg.vision.width == 1152 and cfg.llm.hidden_size == 2560


def test_generate_command_preprocesses_as_the_pipeline(tiny_converted, tmp_path, monkeypatch,
                                                       capsys):
    """`python -m segearth_jax.generate --image` reads and squashes the image with the same
    functions as training and `predict` (`records.load_image`, `preprocess.siglip_view`), and
    the model sees exactly their output."""
    import cv2

    from segearth_jax import generate as generate_mod
    from segearth_jax.input import preprocess, records

    image = np.random.default_rng(0).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "img.png"), image[..., ::-1])  # RGB -> BGR file
    seen = {}
    view = preprocess.siglip_view

    def spy(img, size):
        seen["view"] = out = view(img, size)
        np.testing.assert_array_equal(img, records.load_image(tmp_path / "img.png", None))
        return out

    encode = Mipha.encode_images

    def encode_spy(self, pixels):  # runs under jit: the values come back by a callback
        jax.debug.callback(lambda p: seen.__setitem__("pixels", np.asarray(p)), pixels)
        return encode(self, pixels)

    monkeypatch.setattr(preprocess, "siglip_view", spy)
    monkeypatch.setattr(Mipha, "encode_images", encode_spy)
    generate_mod.main(["--checkpoint", str(tiny_converted), "--prompt", "what is here?",
                       "--image", str(tmp_path / "img.png"), "--max-new-tokens", "2"])
    assert "answer:" in capsys.readouterr().out
    assert seen["view"].shape == (56, 56, 3)
    np.testing.assert_array_equal(seen["pixels"][0], seen["view"])
