"""The SegEarth-R2 converter: a fake merged checkpoint of the tiny variant under the official key
names, converted exactly; strictness; the full-size layout of the real checkpoint by shape."""

import ast
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax.traverse_util import flatten_dict
from safetensors.torch import save_file

from convert import mask2former
from convert import segearth_r2 as conv
from convert.common import ConversionError, convert_tensors
from convert.tiny_mipha import mipha_state_dict
from segearth_jax import checkpoint
from segearth_jax.models.seg_head import SegHeadConfig
from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config
from tests import test_mask2former
from tests.conftest import REFERENCE

# The module-scoped tiny transformers Mask2Former of test_mask2former, reused as a fixture.
hf_model = test_mask2former.hf_model

EMBED_ROWS = 500  # len(tokenizer) after `[SEG]`: resize_token_embeddings shrinks the 512 rows.
TOKENIZER = {"vocab.json": '{"a": 0}', "merges.txt": "#version: 0.2\n",
             "tokenizer_config.json": '{"model_max_length": 2048}'}


def _official_seg_head(d2: dict[str, np.ndarray], rng) -> dict[str, np.ndarray]:
    """detectron2 names -> the official SegEarth-R2 names, written here from the official code
    independently of the converter's tables: `model.vision_tower_mask.` holds the backbone,
    `pixel_decoder.` the Mask2Former-Simplify decoder (Sequential FPN convs with a zero-initialized
    bias, the renames of `initial_mask_module`), `predictor.` the OPTPreTrain decoder (no class
    head; extra tables its forward does not read)."""
    out = {}
    for k, v in d2.items():
        if k.startswith("backbone."):
            out["model.vision_tower_mask." + k.removeprefix("backbone.")] = v
        elif k.startswith("sem_seg_head.pixel_decoder."):
            out["pixel_decoder." + k.removeprefix("sem_seg_head.pixel_decoder.")] = v
        elif k.startswith("sem_seg_head.predictor.") and ".class_embed." not in k:
            out["predictor." + k.removeprefix("sem_seg_head.predictor.")] = v
    for m in ("adapter_1", "layer_1"):  # change_w in SegEarthR2.initial_mask_module
        out[f"pixel_decoder.{m}.0.weight"] = out.pop(f"pixel_decoder.{m}.weight")
        out[f"pixel_decoder.{m}.1.weight"] = out.pop(f"pixel_decoder.{m}.norm.weight")
        out[f"pixel_decoder.{m}.1.bias"] = out.pop(f"pixel_decoder.{m}.norm.bias")
        out[f"pixel_decoder.{m}.0.bias"] = np.zeros(out[f"pixel_decoder.{m}.1.bias"].shape,
                                                    np.float32)
    out["predictor.query_feat.weight"] = out.pop("predictor.static_query.weight")
    d = out["predictor.query_feat.weight"].shape[1]
    normal = lambda *shape: rng.normal(size=shape).astype(np.float32)
    out["predictor.SEG_query_embed.weight"] = normal(out["predictor.query_feat.weight"].shape[0]
                                                     + 1, d)
    out["predictor.new_query_embed.weight"] = normal(1, d)
    for j in range(2):
        out[f"predictor.SEG_proj.layers.{j}.weight"] = normal(d, d)
        out[f"predictor.SEG_proj.layers.{j}.bias"] = normal(d)
    return out


@pytest.fixture(scope="module")
def official(tiny_torch, hf_model):
    """(state dict under the official names, detectron2 seg-head dict, SEG projector W, b)."""
    rng = np.random.default_rng(0)
    sd = {k: v.numpy() for k, v in mipha_state_dict(*tiny_torch).items()}
    del sd["lm_head.bias"]  # SegEarth-R2's lm_head is Linear(E, 51200, bias=False)
    sd["model.embed_tokens.weight"] = sd["model.embed_tokens.weight"][:EMBED_ROWS]
    d2 = test_mask2former._detectron2_state_dict(hf_model)
    sd.update(_official_seg_head(d2, rng))
    cfg = conv.model_config("tiny")
    w = rng.normal(size=(cfg.seg_head.decoder.hidden_dim, cfg.mllm.llm.hidden_size))
    sd["SEG_token_projector.weight"] = w.astype(np.float32)
    sd["SEG_token_projector.bias"] = rng.normal(size=w.shape[0]).astype(np.float32)
    return sd, d2, sd["SEG_token_projector.weight"], sd["SEG_token_projector.bias"]


def _write(sd, path, shards=1):
    """save_pretrained's layout: one model.safetensors, or shards plus the index JSON."""
    path.mkdir()
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    for name, text in TOKENIZER.items():
        (path / name).write_text(text)
    if shards == 1:
        save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
        return path
    keys = list(tensors)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {k: names[i * shards // len(keys)] for i, k in enumerate(keys)}
    for name in names:
        save_file({k: tensors[k] for k in keys if weight_map[k] == name}, path / name)
    (path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return path


@pytest.fixture(scope="module")
def converted(official, tmp_path_factory):
    src = _write(official[0], tmp_path_factory.mktemp("segearth") / "src")
    return conv.convert(src, src.parent / "out", variant="tiny", dtype="float32")


def test_every_parameter_is_its_source_tensor(official, converted, tiny_params):
    sd, d2, w, b = official
    ours = flatten_dict(checkpoint.restore_params(converted), sep="/")
    # References: the Mipha converter on the published Mipha layout (conftest), the Mask2Former
    # converter on the detectron2 names, the SEG projector by hand.
    mllm = {f"mllm/{k}": v for k, v in flatten_dict(tiny_params, sep="/").items()
            if k != "llm/lm_head/bias"}
    head_cfg = SegHeadConfig.from_variant("tiny")
    head = convert_tensors(((k, (lambda v=v: v), 0) for k, v in d2.items()), mask2former.rules(),
                           mask2former.expected_params(head_cfg), unused=mask2former.unused())
    reference = {**mllm, **{f"seg_head/{k}": v for k, v in flatten_dict(head, sep="/").items()},
                 "seg_projector/kernel": w.T, "seg_projector/bias": b}
    for m in ("adapter_1", "layer_1"):  # Mask2Former-Simplify's FPN conv biases
        reference[f"seg_head/pixel_decoder/{m}/conv/bias"] = sd[f"pixel_decoder.{m}.0.bias"]
    embed = "mllm/llm/model/embed_tokens/embedding"
    assert ours.keys() == reference.keys()
    for path, ref in reference.items():
        got = ours[path]
        assert got.dtype == np.float32, path
        if path == embed:  # the resized-down rows, then zero rows up to the model's vocabulary
            np.testing.assert_array_equal(got[:EMBED_ROWS], sd["model.embed_tokens.weight"])
            np.testing.assert_array_equal(got[EMBED_ROWS:], 0)
            np.testing.assert_array_equal(got[:EMBED_ROWS], ref[:EMBED_ROWS])
        else:
            np.testing.assert_array_equal(got, ref, err_msg=path)
    # The renamed FPN conv, checked against the official key directly (OIHW -> HWIO).
    np.testing.assert_array_equal(ours["seg_head/pixel_decoder/adapter_1/conv/kernel"],
                                  sd["pixel_decoder.adapter_1.0.weight"].transpose(2, 3, 1, 0))
    assert not any("lora" in p for p in ours)


def test_converted_model_rebuilds_and_runs(official, converted):
    spec = checkpoint.read_model_spec(converted)
    assert spec["kind"] == "segearth_r2" and spec["model"]["mllm"]["llm"]["lora"]["rank"] == 0
    cfg = SegEarthR2Config.from_config(spec["model"])
    assert cfg == conv.model_config("tiny") and not cfg.mllm.llm.lm_head_bias
    params = checkpoint.restore_params(converted, conv.expected_params(cfg))  # tree + dtypes
    model = SegEarthR2(cfg)
    rng = np.random.default_rng(1)
    grid = cfg.grid ** 2
    ids = jnp.asarray([[1, 2, *([cfg.mllm.llm.image_token_id] * grid), 7, 499, 3]])
    seg = grid + 3  # the position of token 499, our stand-in [SEG]
    siglip = rng.normal(size=(1, 56, 56, 3)).astype(np.float32)
    pixels = rng.normal(size=(1, 64, 64, 3)).astype(np.float32)
    # One compiled pass (the slow part of this file); capture the MLLM's and the projector's
    # outputs to check the [SEG] wiring inside it.
    capture = lambda mdl, method: mdl.name in ("mllm", "seg_projector")
    run = jax.jit(lambda p: model.apply({"params": p}, ids, siglip, pixels, jnp.asarray([[seg]]),
                                        jnp.ones((1, 1), bool), capture_intermediates=capture))
    out, state = run(params)
    n_pred = cfg.seg_head.decoder.num_layers + 1
    assert out["logits"].shape == (1, ids.shape[1], 512)
    assert out["mask_logits"].shape == (n_pred, 1, 1, 16, 16)
    assert np.isfinite(out["logits"]).all() and np.isfinite(out["mask_logits"]).all()
    # [SEG] final hidden state -> SEG_token_projector (W, b of the checkpoint) -> the queries.
    _, _, w, b = official
    (_, hidden), = state["intermediates"]["mllm"]["__call__"]
    (queries,) = state["intermediates"]["seg_projector"]["__call__"]
    np.testing.assert_allclose(queries[0, 0], np.asarray(hidden)[0, seg] @ w.T + b, atol=1e-5,
                               rtol=0)


def test_sharded_index_and_cli_give_the_same_params(official, converted, tmp_path, capsys):
    src = _write(official[0], tmp_path / "src", shards=3)
    conv.main(["--src", str(src), "--out", str(tmp_path / "dry"), "--dry-run"])  # variant inferred
    assert not (tmp_path / "dry").exists()
    conv.main(["--src", str(src), "--out", str(tmp_path / "out"), "--dtype", "float32"])
    assert "done:" in capsys.readouterr().out
    spec = checkpoint.read_model_spec(tmp_path / "out")
    assert spec["variant"] == "tiny" and spec["model"]["seg_head"]["dtype"] == "float32"
    a, b = flatten_dict(checkpoint.restore_params(tmp_path / "out"), sep="/"), flatten_dict(
        checkpoint.restore_params(converted), sep="/")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for name, text in TOKENIZER.items():
        assert (tmp_path / "out" / "tokenizer" / name).read_text() == text


@pytest.mark.parametrize("change, needle", [
    ("missing", "seg_head/predictor/head/decoder_norm/scale"),
    ("unexpected", "predictor.extra_head.weight"),
    ("fpn_bias", "pixel_decoder.layer_1.0.bias: a non-zero bias"),
])
def test_problems_raise_naming_the_key(official, tmp_path, change, needle):
    sd = dict(official[0])
    if change == "missing":
        del sd["predictor.decoder_norm.weight"]
    elif change == "unexpected":
        sd["predictor.extra_head.weight"] = np.zeros((2, 2), np.float32)
    else:  # detectron2-style FPN convs have no bias: only a zero one can be dropped exactly
        sd["pixel_decoder.layer_1.0.bias"] = np.full_like(sd["pixel_decoder.layer_1.0.bias"], .5)
    src = _write(sd, tmp_path / "src")
    with pytest.raises(ConversionError, match=needle.replace(".", r"\.")):
        conv.convert(src, tmp_path / "out", variant="tiny", dtype="float32",
                     simplify_fpn=change != "fpn_bias")
    assert not (tmp_path / "out").exists()


def _real_layout() -> dict[str, tuple[int, ...]]:
    """The real merged checkpoint's keys and shapes: Mipha-3B's list and Mask2Former's
    `backbone.*` / `sem_seg_head.*` under SegEarth-R2's names (see `_official_seg_head`)."""
    rows = {}
    for tsv in ("mipha3b_keys.tsv", "mask2former_swinb_coco_panoptic_keys.tsv"):
        for line in (REFERENCE / tsv).read_text().splitlines():
            name, shape, _ = line.split("\t")
            rows[name] = ast.literal_eval(shape)
    del rows["lm_head.bias"], rows["criterion.empty_weight"]
    d2 = {k: np.broadcast_to(np.float32(0), s) for k, s in rows.items()
          if k.startswith(("backbone.", "sem_seg_head."))}
    layout = {k: s for k, s in rows.items() if k not in d2}
    layout.update({k: v.shape for k, v in _official_seg_head(d2, np.random.default_rng(0)).items()})
    layout.update({"SEG_token_projector.weight": (256, 2560), "SEG_token_projector.bias": (256,)})
    return layout


def test_full_size_layout_matches_every_key_of_the_real_checkpoint():
    layout = _real_layout()
    assert layout["predictor.SEG_query_embed.weight"] == (101, 256)
    assert "predictor.class_embed.weight" not in layout
    cfg = conv.model_config("segearth_r2", "bfloat16")
    expected = conv.expected_params(cfg)  # jax.eval_shape: no weights allocated
    unused, missing_ok = conv.gaps(cfg)
    # Zero-stride views: nothing allocated (the FPN biases are zero: dropped exactly).
    source = ((k, (lambda s=s: np.broadcast_to(np.float32(0), s)), 0) for k, s in layout.items())
    got = convert_tensors(conv._fpn_biases(source, set(flatten_dict(expected, sep="/"))),
                          conv.rules(cfg), expected, unused=unused,
                          not_in_checkpoint=missing_ok, dry_run=True)
    assert flatten_dict(got, sep="/").keys() == flatten_dict(expected, sep="/").keys()
    n_params = sum(np.prod(s.shape) for s in jax.tree_util.tree_leaves(got))
    assert 3.2e9 < n_params < 3.4e9, n_params  # Mipha-3B (26 SigLIP layers) + Swin-B M2F head
    assert got["seg_projector"]["kernel"].shape == (2560, 256)


def test_any_size_converts_and_reloads(official, tmp_path):
    """A merged checkpoint of no preset's size (the tiny one with its deeper layers dropped: Phi
    with 1 layer, SigLIP with 2): the converter reads the sizes from the tensor shapes,
    model.json stores them, and the model rebuilt from model.json alone holds the source
    tensors and takes the inputs model.json describes."""
    from segearth_jax.input.settings import Settings

    drop = ("model.layers.1.", "model.vision_tower.vision_model.encoder.layers.2.")
    sd = {k: v for k, v in official[0].items() if not k.startswith(drop)}
    out = conv.convert(_write(sd, tmp_path / "src"), tmp_path / "out", dtype="float32")
    spec = checkpoint.read_model_spec(out)
    assert spec["model"]["mllm"]["llm"]["num_layers"] == 1
    assert spec["model"]["mllm"]["vision"]["depth"] == 2
    cfg = SegEarthR2Config.from_config(spec["model"])
    assert cfg.mllm.vision_layers == 1 and cfg != conv.model_config("tiny")
    Settings.from_spec(spec).check_model(cfg)
    ours = flatten_dict(checkpoint.restore_params(out, conv.expected_params(cfg)), sep="/")
    np.testing.assert_array_equal(ours["mllm/llm/model/layers/mlp/fc1/kernel"],
                                  sd["model.layers.0.mlp.fc1.weight"].T[None])
    np.testing.assert_array_equal(
        ours["mllm/vision_tower/layers/fc1/kernel"],
        sd["model.vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"].T[None])
