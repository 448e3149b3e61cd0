"""The Mipha converter: every published format, strictness, safe .bin loading, full-size layout."""

import ast
import json
import pickle

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from convert import mipha
from convert.common import ConversionError, convert_tensors, read_hf_checkpoint
from convert.tiny_mipha import mipha_state_dict, write_checkpoint
from segearth_jax import checkpoint
from segearth_jax.models.mipha import MiphaConfig
from tests.conftest import REFERENCE


def _leaves(tree):
    return jax.tree_util.tree_leaves_with_path(tree)


@pytest.mark.parametrize("fmt", ["sharded", "bin"])
def test_every_format_gives_the_same_params(fmt, tiny_params, tmp_path):
    src = write_checkpoint(tmp_path / "src", fmt, seed=0)
    out = mipha.convert(src, tmp_path / "out", dtype="float32")
    params = checkpoint.restore_params(out)
    a, b = _leaves(params), _leaves(tiny_params)
    assert [p for p, _ in a] == [p for p, _ in b]
    for (path, x), (_, y) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=str(path))


def test_bfloat16_checkpoint_is_read_exactly(tiny_torch, tmp_path):
    sd = {k: v.to(torch.bfloat16) for k, v in mipha_state_dict(*tiny_torch).items()}
    (tmp_path / "src").mkdir()
    save_file(sd, tmp_path / "src" / "model.safetensors")
    got = {k: load() for k, load, _ in read_hf_checkpoint(tmp_path / "src")}
    assert set(got) == set(sd)
    for k, v in sd.items():
        assert str(got[k].dtype) == "bfloat16"
        np.testing.assert_array_equal(got[k].astype(np.float32), v.float().numpy(), err_msg=k)


def test_all_problems_are_reported_in_one_error(tiny_torch, tmp_path):
    sd = mipha_state_dict(*tiny_torch)
    del sd["model.layers.1.mlp.fc2.bias"]  # missing (one slot of a stacked parameter)
    del sd["model.final_layernorm.weight"]  # missing
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(3)  # unexpected
    sd["model.mm_projector.2.weight"] = torch.zeros(64, 65)  # mis-shaped
    (tmp_path / "src").mkdir()
    save_file(sd, tmp_path / "src" / "model.safetensors")
    with pytest.raises(ConversionError) as e:
        mipha.convert(tmp_path / "src", tmp_path / "out", variant="tiny")
    msg = str(e.value)
    for needle in ["llm/model/layers/mlp/fc2/bias layers [1]", "llm/model/final_layernorm/scale",
                   "rotary_emb.inv_freq", "model.mm_projector.2.weight: (65, 64)"]:
        assert needle in msg, msg
    assert not (tmp_path / "out").exists()  # nothing written on failure


class _Exploit:
    def __reduce__(self):
        import os
        return (os.system, ("touch PWNED",))


def test_bin_loading_never_runs_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "pytorch_model.bin", "wb") as f:
        pickle.dump({"lm_head.weight": _Exploit()}, f)
    with pytest.raises(ConversionError, match="weights-only"):
        list(read_hf_checkpoint(tmp_path / "src"))
    assert not (tmp_path / "PWNED").exists()


def test_cli_converts_and_refuses_a_nonempty_out(tiny_checkpoint, tmp_path, capsys):
    mipha.main(["--src", str(tiny_checkpoint), "--out", str(tmp_path / "o"), "--no-lm-head-bias"])
    spec = json.loads((tmp_path / "o" / "model.json").read_text())
    assert spec["model"] == MiphaConfig.from_variant(
        "tiny", llm=dict(lm_head_bias=False)).to_config()  # every size, from the source
    params = checkpoint.restore_params(tmp_path / "o")
    assert "bias" not in params["llm"]["lm_head"]
    assert params["llm"]["lm_head"]["kernel"].dtype == np.dtype("bfloat16")
    assert (tmp_path / "o" / "tokenizer" / "vocab.json").exists()
    with pytest.raises(FileExistsError):
        mipha.convert(tiny_checkpoint, tmp_path / "o")


def _reference_source(drop=()):
    """(key, zero-stride view, 0) for every key of the real Mipha-3B list: nothing allocated."""
    for line in (REFERENCE / "mipha3b_keys.tsv").read_text().splitlines():
        name, shape, _ = line.split("\t")
        if name not in drop:
            shape = ast.literal_eval(shape)
            yield name, (lambda s=shape: np.broadcast_to(np.zeros((), np.float32), s)), 0


@pytest.mark.parametrize("lm_head_bias", [True, False])
def test_full_size_layout_matches_every_reference_key(lm_head_bias):
    cfg = MiphaConfig.from_variant("mipha3b", llm=dict(lm_head_bias=lm_head_bias))
    unused, missing_ok = mipha.gaps(cfg)
    expected = mipha.expected_params(cfg)  # jax.eval_shape: no weights allocated
    got = convert_tensors(_reference_source(), mipha.rules(), expected, unused=unused,
                          not_in_checkpoint=missing_ok, dry_run=True)
    n_params = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(got))
    # Phi-2 (2.78B incl. lm_head) + 26 SigLIP layers + projector; every leaf came from a key.
    assert len(jax.tree_util.tree_leaves(got)) == len(jax.tree_util.tree_leaves(expected))
    assert 3.1e9 < n_params < 3.3e9, n_params
    assert got["llm"]["model"]["layers"]["self_attn"]["q_proj"]["kernel"].shape == (32, 2560, 2560)
    assert got["vision_tower"]["layers"]["fc1"]["kernel"].shape == (26, 1152, 4304)


def test_full_size_layout_reports_a_missing_reference_key():
    cfg = MiphaConfig.from_variant("mipha3b")
    unused, missing_ok = mipha.gaps(cfg)
    with pytest.raises(ConversionError, match=r"self_attn/v_proj/kernel layers \[7\]"):
        convert_tensors(_reference_source(drop={"model.layers.7.self_attn.v_proj.weight"}),
                        mipha.rules(), mipha.expected_params(cfg), unused=unused,
                        not_in_checkpoint=missing_ok, dry_run=True)


def test_split_rule_fills_several_targets_from_one_fused_tensor():
    from convert.common import Rule, linear, split_rows

    fused = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)  # [3 * out, in], q;k;v rows
    expected = {n: {"kernel": jax.ShapeDtypeStruct((4, 2), np.float32)} for n in "qkv"}
    rule = Rule(r"attn\.qkv\.weight", ("q/kernel", "k/kernel", "v/kernel"), split_rows(3, linear))
    got = convert_tensors(iter([("attn.qkv.weight", lambda: fused, 0)]), [rule], expected)
    for i, n in enumerate("qkv"):
        np.testing.assert_array_equal(got[n]["kernel"], fused[2 * i: 2 * i + 2].T)


def test_any_size_converts_and_reloads(tmp_path):
    """A Mipha of no preset's size (Phi with 3 layers, SigLIP with 4, other MLP widths):
    the converter reads the sizes from the source, model.json stores them, and the model
    rebuilt from model.json alone matches the PyTorch modules (fp32, 1e-4)."""
    from convert import tiny_mipha
    from segearth_jax.generate import load_model

    cfg = MiphaConfig.from_variant("tiny", vision=dict(depth=4, mlp_dim=48),
                                   llm=dict(num_layers=3, intermediate_size=96))
    src = tiny_mipha.write_checkpoint(tmp_path / "src", config=cfg, seed=3)
    out = mipha.convert(src, tmp_path / "out", dtype="float32")  # no --variant
    spec = json.loads((out / "model.json").read_text())
    assert (spec["model"]["llm"]["num_layers"], spec["model"]["vision"]["depth"]) == (3, 4)
    model, params = load_model(out)
    assert model.config == cfg
    phi, siglip, projector = tiny_mipha.torch_modules(3, config=cfg)
    ids = np.random.default_rng(0).integers(0, 512, (2, 12)).astype(np.int32)
    logits, _ = model.apply({"params": params}, ids)
    pixels = np.random.default_rng(1).normal(size=(1, 56, 56, 3)).astype(np.float32)
    tokens = model.apply({"params": params}, pixels, method=model.encode_images)
    with torch.no_grad():
        ref_logits = phi(torch.from_numpy(ids).long()).logits.numpy()
        hidden = siglip(torch.from_numpy(pixels).permute(0, 3, 1, 2),
                        output_hidden_states=True).hidden_states[-2]
        ref_tokens = projector(hidden).numpy()
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(tokens, ref_tokens, atol=1e-4, rtol=0)


def test_sizes_that_disagree_with_config_json_are_refused(tmp_path):
    from convert import tiny_mipha

    src = tiny_mipha.write_checkpoint(tmp_path / "src")
    hf = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**hf, "num_hidden_layers": 5}))
    with pytest.raises(ConversionError, match="num_hidden_layers: 5 in config.json, 2 in"):
        mipha.convert(src, tmp_path / "out")


def test_sizes_inferred_from_the_real_layout_are_the_mipha3b_preset():
    """The sizes `source_sizes` reads from Mipha-3B's tensor shapes (its published key list)
    rebuild exactly the `mipha3b` preset (SigLIP 27 x 1152 at 384 / 14, Phi-2 32 x 2560)."""
    shapes = {}
    for line in (REFERENCE / "mipha3b_keys.tsv").read_text().splitlines():
        name, shape, _ = line.split("\t")
        shapes[name] = ast.literal_eval(shape)
    hf = {"hidden_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 32,
          "intermediate_size": 10240, "partial_rotary_factor": 0.4, "vocab_size": 51200}
    vision, llm = mipha.source_sizes(shapes, hf, "mipha3b_keys.tsv")
    preset = MiphaConfig.from_variant("mipha3b")
    assert mipha.preset_for(vision, llm, "mipha3b_keys.tsv") == "mipha3b"
    rebuilt = MiphaConfig.from_variant("mipha3b", vision=mipha.with_image_size(vision, preset),
                                       llm=llm)
    assert rebuilt == preset
    assert (vision["depth"], vision["grid"], llm["num_layers"]) == (27, 27, 32)
