"""Config files are the single source of truth: every key the code reads is written out in each
config file (nothing falls back to a default in the code), and the model sizes of a config or a
model.json rebuild the model with no variant table involved."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from configs import mipha as mipha_config
from configs import segearth_r2, tiny
from segearth_jax.input.settings import Settings
from segearth_jax.models.mipha import MiphaConfig
from segearth_jax.models.segearth_r2 import SegEarthR2Config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "segearth_jax"

TRAINING_CONFIGS = [(f"segearth_r2.py:{v}", segearth_r2.get_config(v))
                    for v in segearth_r2.DATASETS] + [("tiny.py", tiny.get_config())]

# Where code reads a config section under another name: (file, the name, the section).
ALIASES = (("losses.py", "config", "loss"), ("input/pipeline.py", "config", "data"),
           ("input/sources.py", "d", "data"), ("optim.py", "o", "optim"),
           ("sharding.py", "d", "distributed"))
SECTIONS = ("data", "loss", "optim", "eval", "checkpoint", "init", "mesh", "distributed")


def keys_read() -> set[tuple[str, str]]:
    """(section, key) of every `config.<section>.<key>` read in segearth_jax, plus the reads
    of the `ALIASES`; section "" for top-level `config.<key>`."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        src = path.read_text()
        rel = path.relative_to(PACKAGE).as_posix()
        aliases = {name: section for file, name, section in ALIASES if file == rel}
        for name, section in aliases.items():
            found |= {(section, k) for k in re.findall(rf"\b{name}\.(\w+)\b", src)
                      if k != section}  # docstrings name the section: `config.data`
        if "config" in aliases:  # `config` is a section there
            continue
        for section, key in re.findall(r"\bconfig\.(" + "|".join(SECTIONS) + r")\.(\w+)\b",
                                       src):
            found.add((section, key))
        for key in re.findall(r"\bconfig\.(\w+)\b(?!\.)", src):
            found.add(("", key))
    # ConfigDict's own methods (`config.to_json()`, `config.unlocked()`) are not keys, nor is
    # the run's `config.json` file (export.py) named in the text.
    return {(section, key) for section, key in found
            if not hasattr(ConfigDict, key) and (section, key) != ("", "json")}


def test_no_defaulted_config_reads():
    out = subprocess.run(["git", "grep", "-n", r"getattr(config\|config.get(", "--",
                          "segearth_jax"], cwd=ROOT, capture_output=True, text=True)
    assert out.stdout == "", out.stdout


@pytest.mark.parametrize("name,config", TRAINING_CONFIGS, ids=[n for n, _ in TRAINING_CONFIGS])
def test_every_key_the_code_reads_is_in_the_config(name, config):
    methods = {"get", "to_dict", "update", "keys", "items", "values", "lock", "unlock",
               "copy_and_resolve_references", "x"}  # ConfigDict methods; `config.x` in docs
    # Names a module binds to a whole section or a model part (read through the model below).
    parts = {"model", "mllm", "seg_head", "swin", "pixel_decoder", "decoder", "scan",
             "remat_policy", "window_size", "batch_size", "spatial_variant", "bce_weight",
             "dice_weight", "frozen_dtype"}
    missing = []
    for section, key in sorted(keys_read()):
        if key in methods or (section == "" and key in parts | set(SECTIONS)):
            continue
        holder = config if section == "" else config[section]
        if key not in holder:
            missing.append(f"{section}.{key}" if section else key)
    # Keys read by name from a whole section (not as `section.key`).
    missing += [f"data.{k}" for k in Settings.__dataclass_fields__ if k not in config.data]
    assert not missing, f"configs/{name} lacks keys the code reads: {missing}"
    for section, key in (("loss", "bce_weight"), ("loss", "dice_weight"),
                         ("loss", "spatial_variant"), ("data", "batch_size"), ("", "frozen_dtype")):
        assert key in (config if section == "" else config[section]), (section, key)
    cfg = SegEarthR2Config.from_config(config.model)  # strict: every size and knob, no more
    assert SegEarthR2Config.from_config(cfg.to_config()) == cfg
    Settings.from_config(config.data).check_model(cfg)


def test_model_config_is_strict_both_ways():
    model = tiny.get_config().model.to_dict()
    del model["mllm"]["llm"]["num_layers"]
    with pytest.raises(ValueError, match=r"missing keys \['num_layers'\]"):
        SegEarthR2Config.from_config(model)
    model = tiny.get_config().model.to_dict()
    model["seg_head"]["decoder"]["remat"] = True  # the old spelling: no longer a key
    with pytest.raises(ValueError, match=r"unknown keys \['remat'\]"):
        SegEarthR2Config.from_config(model)


def test_presets_expand_into_explicit_sizes_and_overrides_route_to_their_part():
    c = segearth_r2.get_config()
    assert "variant" not in c.model.mllm and "variant" not in c.model.seg_head
    assert c.model.mllm.vision.depth == 27 and c.model.mllm.llm.num_layers == 32
    assert list(c.model.seg_head.swin.depths) == [2, 2, 18, 2]
    c.model.mllm.llm.num_layers = 2
    c.model.mllm.vision.depth = 3
    c.model.seg_head.decoder.remat_policy = "full"
    cfg = SegEarthR2Config.from_config(c.model)
    assert (cfg.mllm.llm.num_layers, cfg.mllm.vision.depth) == (2, 3)
    # Each knob reaches its own stack only.
    assert cfg.seg_head.decoder.remat_policy == "full"
    assert cfg.seg_head.pixel_decoder.remat_policy == "full"  # the config file's own value
    assert cfg.seg_head.swin.remat_policy == "none"
    m = MiphaConfig.from_config(mipha_config.get_config("tiny").model)
    assert m.vision.attention_impl == "auto" and m.llm.remat_policy == "none"



def test_from_variant_routes_each_keyword_to_its_own_part():
    """No keyword falls through to another module: a part's field goes in that part's dict."""
    from segearth_jax.models.seg_head import SegHeadConfig

    with pytest.raises(TypeError):
        SegHeadConfig.from_variant("tiny", remat_policy="full")  # which stack? not guessed
    with pytest.raises(TypeError):
        MiphaConfig.from_variant("tiny", attention_impl="xla")
    mllm = MiphaConfig.from_variant("tiny", llm=dict(attention_impl="xla"))
    assert (mllm.llm.attention_impl, mllm.vision.attention_impl) == ("xla", "auto")
    head = SegHeadConfig.from_variant("tiny", decoder=dict(remat_policy="full"))
    assert head.decoder.remat_policy == "full"
    assert head.pixel_decoder.remat_policy == head.swin.remat_policy == "none"
    with pytest.raises(ValueError, match="remat_policy"):
        SegHeadConfig.from_variant("tiny", swin=dict(remat_policy="layer"))


def test_an_old_model_json_is_one_clear_error(tmp_path):
    """A model.json of the older format (it names a variant instead of holding the sizes) is
    expanded from the presets (tests/test_model_json.py); one whose preset no longer exists is a
    BadValue (one `error:` line at a command line) naming the file, not a traceback."""
    import json

    from segearth_jax.errors import BadValue
    from segearth_jax.generate import load_model

    (tmp_path / "model.json").write_text(json.dumps(
        {"kind": "mipha", "variant": "nonesuch", "overrides": {"lm_head_bias": False}}))
    with pytest.raises(BadValue, match=r"model\.json: its \"model\" entry does not rebuild"):
        load_model(tmp_path)
