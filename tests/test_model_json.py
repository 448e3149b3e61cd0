"""model.json files written before every size was explicit (they named presets): expanded from
the presets with a one-line warning, rewritable, and as strict as the current form otherwise.
The old files below are what that version wrote (its export for configs/tiny.py and
configs/segearth_r2.py, convert.segearth_r2 --variant tiny, convert.mipha, convert.mask2former)."""

from __future__ import annotations

import json
import logging

import pytest

from segearth_jax import checkpoint, errors, init
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.seg_head import SegHeadConfig
from segearth_jax.models.segearth_r2 import SegEarthR2Config

LORA = {"alpha": 16.0, "dropout": 0.0, "rank": 0, "targets": ".*/(q_proj|v_proj)"}
# The old version's mllm and seg_head entries for the tiny preset (convert.segearth_r2 --variant
# tiny); its exports of configs/tiny.py and configs/segearth_r2.py differ where shown.
OLD_MLLM = {"attention_impl": "auto", "dtype": "float32", "lm_head_bias": False, "lora": LORA,
            "param_dtype": "float32", "remat_policy": "none", "seg_probe_heads": "mean",
            "variant": "tiny"}
OLD_HEAD = {"dtype": "float32", "param_dtype": "float32", "pixel_decoder": {"simplify_fpn": True},
            "variant": "tiny"}
OLD_TINY_CONVERTED = {"mllm": OLD_MLLM, "seg_head": OLD_HEAD}
PIXEL_DECODER = {"remat": "layer", "simplify_fpn": False}
OLD_TINY_EXPORT = {
    "mllm": {**OLD_MLLM, "attention_impl": "xla", "vocab_size": 2048},
    "seg_head": {**OLD_HEAD, "pixel_decoder": PIXEL_DECODER}}
OLD_FULL_EXPORT = {
    "mllm": {**OLD_MLLM, "dtype": "bfloat16", "remat_policy": "dots_no_batch",
             "variant": "mipha3b"},
    "seg_head": {**OLD_HEAD, "dtype": "bfloat16", "pixel_decoder": PIXEL_DECODER,
                 "variant": "swin-b"}}


def _write(directory, spec) -> dict:
    directory.mkdir(exist_ok=True)
    checkpoint.write_model_spec(directory, spec)
    return checkpoint.read_model_spec(directory)


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("name", ["tiny", "segearth_r2"])
def test_old_export_rebuilds_the_configs_model_with_one_warning(tmp_path, caplog, name):
    """The old export passes the structure check against the config it was trained with (as
    `config.init.checkpoint`), its remat spellings become `remat_policy`, and it says once how
    to rewrite the file; the rewritten file gives the same config and no warning."""
    from configs import segearth_r2, tiny

    config = tiny.get_config() if name == "tiny" else segearth_r2.get_config("lasers")
    old = OLD_TINY_EXPORT if name == "tiny" else OLD_FULL_EXPORT
    spec = _write(tmp_path, {"kind": "segearth_r2", "model": old, "input": {"a": 1}})
    with caplog.at_level(logging.WARNING):
        cfg = checkpoint.model_config(tmp_path, spec, SegEarthR2Config.from_config)
        init.check_structure(spec, config, "checkpoint", str(tmp_path))  # raises on a mismatch
    (line,) = set(_warnings(caplog))
    assert str(tmp_path / "model.json") in line and "rewrite_model_spec" in line
    assert "\n" not in line
    assert cfg.seg_head.pixel_decoder.remat_policy == "full"  # old remat "layer"
    assert cfg.mllm.vision.attention_impl == old["mllm"]["attention_impl"]  # as the old code
    assert cfg.mllm.llm.remat_policy == old["mllm"]["remat_policy"]
    assert cfg.mllm.llm.lora.rank == 0 and not cfg.mllm.llm.lm_head_bias
    if name == "tiny":
        assert cfg.mllm.llm.vocab_size == 2048 and cfg.mllm.llm.num_layers == 2
    else:  # Mipha-3B + Swin-B at full size
        assert (cfg.mllm.llm.hidden_size, cfg.mllm.llm.num_layers) == (2560, 32)
        assert cfg.mllm.vision.width == 1152 and cfg.seg_head.swin.embed_dim == 128

    caplog.clear()
    path = checkpoint.rewrite_model_spec(tmp_path)
    assert json.loads((tmp_path / "model.json.old").read_text())["model"] == old
    new = checkpoint.read_model_spec(tmp_path)
    assert new["input"] == {"a": 1} and "variant" not in new["model"]["mllm"]
    with caplog.at_level(logging.WARNING):
        assert checkpoint.model_config(tmp_path, new, SegEarthR2Config.from_config) == cfg
    assert _warnings(caplog) == []
    assert checkpoint.rewrite_model_spec(tmp_path) == path  # a current file stays as it is
    assert checkpoint.read_model_spec(tmp_path) == new


def test_old_converter_outputs_expand_from_their_presets(tmp_path, caplog):
    r2 = _write(tmp_path / "r2", {"kind": "segearth_r2", "variant": "tiny",
                                  "model": OLD_TINY_CONVERTED, "input": {}})
    cfg = checkpoint.model_config(tmp_path / "r2", r2, SegEarthR2Config.from_config)
    assert cfg.seg_head.pixel_decoder.simplify_fpn  # the official FPN form
    assert cfg.mllm == MiphaConfig.from_variant("tiny", vision={"attention_impl": "auto"},
                                                llm={"lm_head_bias": False, "lora": LORA,
                                                     "seg_probe_heads": "mean"})
    mipha = _write(tmp_path / "mipha", {"kind": "mipha", "variant": "tiny", "dtype": "bfloat16",
                                        "overrides": {"lm_head_bias": False}, "source": "x"})
    got = checkpoint.model_config(tmp_path / "mipha", mipha, MiphaConfig.from_config)
    assert got == MiphaConfig.from_variant("tiny", llm={"lm_head_bias": False})  # float32
    head = _write(tmp_path / "head", {"kind": "seg_head", "variant": "swin-b",
                                      "dtype": "bfloat16", "source": "x"})
    got = checkpoint.model_config(tmp_path / "head", head, SegHeadConfig.from_config)
    assert got == SegHeadConfig.from_variant("swin-b")
    checkpoint.rewrite_model_spec(tmp_path / "mipha")
    new = checkpoint.read_model_spec(tmp_path / "mipha")
    assert "overrides" not in new and new["source"] == "x"
    assert MiphaConfig.from_config(new["model"]) == MiphaConfig.from_variant(
        "tiny", llm={"lm_head_bias": False})


def test_old_model_json_with_an_unknown_key_or_preset_is_one_error(tmp_path):
    """Expansion keeps what the old version did not write, so the strict check names it."""
    bad = {**OLD_TINY_EXPORT, "mllm": {**OLD_TINY_EXPORT["mllm"], "colour": 1}}
    spec = _write(tmp_path / "a", {"kind": "segearth_r2", "model": bad})
    with pytest.raises(errors.BadValue, match=r"model\.json.*colour"):
        checkpoint.model_config(tmp_path / "a", spec, SegEarthR2Config.from_config)
    spec = _write(tmp_path / "b", {"kind": "seg_head", "variant": "swin-z", "dtype": "float32"})
    with pytest.raises(errors.BadValue, match=r"model\.json.*swin-z"):
        checkpoint.model_config(tmp_path / "b", spec, SegHeadConfig.from_config)
