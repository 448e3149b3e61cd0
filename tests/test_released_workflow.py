"""The released model's workflow: the official prompt token for token, and fine-tuning from a
converted SegEarth-R2 checkpoint (at tiny size through the CLIs a user runs; at full size by
shapes for every `config.init` route)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import tests.conftest
from segearth_jax import text
from segearth_jax.input import tokens
from tests import test_convert_segearth_r2

ROOT = Path(__file__).resolve().parents[1]
# The official-layout tiny state dict of the converter's test, reused as a fixture.
official, hf_model = test_convert_segearth_r2.official, test_convert_segearth_r2.hf_model
N_IMG = 16
IMAGE_TOKEN_INDEX, REFER_TOKEN_INDEX = -200, -300  # the official `utils/constants.py` markers

# ----------------------------------------------------------------------------- official prompt
# Transcribed from earth-insights/SegEarth-R2 `segearth_r2/datasets/dataset.py` at 3bed2e8
# (`LaSeRSDataset.__getitem__`, `RS_Base_Dataset.tokenizer_special_tokens` and
# `preprocess_llama2`) and Mipha's `phi-2` conversation (`SeparatorStyle.TWO`: system, sep " ",
# sep2 "<|endoftext|>", roles USER / ASSISTANT), independently of segearth_jax.text.
OFFICIAL_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                   "The assistant gives helpful, detailed, and polite answers to the user's "
                   "questions.")
OFFICIAL_PREFIX_INST = ("This is an image \n<image>\n, please doing Reasoning Segmentation "
                        "according to the following instruction:")


def _official_get_prompt(messages: list[tuple[str, str]]) -> str:
    """`Conversation.get_prompt` for SeparatorStyle.TWO."""
    seps = [" ", "<|endoftext|>"]
    ret = OFFICIAL_SYSTEM + seps[0]
    for i, (role, message) in enumerate(messages):
        ret += role + ": " + message + seps[i % 2]
    return ret


def _official_tokenize(tok, prompt: str) -> list[int]:
    """`tokenizer_special_tokens`: split on <image>/<refer>, each chunk encoded on its own."""
    ids = []
    for chunk in re.split("(<image>|<refer>)", prompt):
        if chunk == "<image>":
            ids.append(IMAGE_TOKEN_INDEX)
        elif chunk == "<refer>":
            ids.append(REFER_TOKEN_INDEX)
        elif chunk != "":
            ids.extend(tok.encode(chunk, add_special_tokens=False))
    return ids


def official_example(tok, description: str, answer: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels) the model sees: the official ids with `<image>` expanded to N_IMG
    image positions and `<refer>` to `token_refer_id` (the instruction encoded alone + the first
    id of "[SEG]"); labels by `preprocess_llama2`'s non-v0 rule (first token and the round's
    `parts[0]` minus 2 ignored), the expanded positions unlabelled."""
    instruction = description.strip()
    refer = (tok.encode(instruction, add_special_tokens=False)
             + [tok.encode("[SEG]", add_special_tokens=False)[0]])
    conversation = _official_get_prompt([("USER", OFFICIAL_PREFIX_INST + "\n<refer> <|assistant|>"),
                                         ("ASSISTANT", "\n" + answer)])
    ids = _official_tokenize(tok, conversation)
    target = list(ids)
    sep = " " + "ASSISTANT" + ": "
    rounds = conversation.split("<|endoftext|>")
    cur = 1
    target[:cur] = [-100] * cur
    for rou in rounds:
        if rou == "":
            continue
        parts = rou.split(sep)
        assert len(parts) == 2
        parts[0] += sep
        round_len = len(_official_tokenize(tok, rou))
        instruction_len = len(_official_tokenize(tok, parts[0])) - 2
        target[cur:cur + instruction_len] = [-100] * instruction_len
        cur += round_len
    target[cur:] = [-100] * (len(target) - cur)
    # The official length check (cur == tokens that are not padding) holds: every token counted.
    assert cur == len(ids) and ids[-1] == tok.convert_tokens_to_ids("<|endoftext|>")
    expanded_ids, expanded_labels = [], []
    for i, t in zip(ids, target, strict=True):
        span = {IMAGE_TOKEN_INDEX: [IMAGE_TOKEN_INDEX] * N_IMG, REFER_TOKEN_INDEX: refer}.get(i)
        expanded_ids += span if span else [i]
        expanded_labels += [-100] * len(span) if span else [t]
    return expanded_ids, expanded_labels


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from convert.tiny_mipha import write_tokenizer

    d = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(d, vocab_size=512)
    return text.load_tokenizer(d)


@pytest.mark.parametrize("description, answer", [
    # LaSeRS / EarthReason style: a question and an explanation with [SEG]s.
    ("What in this image could be used for landing aircraft? ",
     "Sure, it is <p>airplane</p>[SEG] on the <p>runway</p>[SEG]."),
    # Referring style (RRSIS-D, RefSegRS, RISBench): an expression.
    ("the tennis court on the left", "Sure, it is <p>the tennis court on the left</p>[SEG]."),
])
def test_official_prompt_ids_and_labels_equal_the_official_code(tok, description, answer):
    seg = tok.convert_tokens_to_ids("[SEG]")
    want_ids, want_labels = official_example(tok, description, answer)
    out = tokens.encode_train(tok, description, answer, n_image_tokens=N_IMG,
                              image_token_id=IMAGE_TOKEN_INDEX, seg_id=seg, max_len=256,
                              max_seg=4, official_prompt=True, seg_in_prompt=True)
    n = int(out["attention_mask"].sum())
    assert out["input_ids"][:n].tolist() == want_ids
    assert out["labels"][:n].tolist() == want_labels
    # The [SEG] of the <refer> splice is prompt, not a mask query; the answer's are.
    queries = out["seg_positions"][:int(out["n_seg"])]
    assert int(out["n_seg"]) == answer.count("[SEG]") == np.sum(np.asarray(want_ids) == seg) - 1
    assert all(want_labels[q] == seg for q in queries)
    # The generation prompt is the same prefix, left-padded.
    p = tokens.encode_prompt(tok, description, n_image_tokens=N_IMG,
                             image_token_id=IMAGE_TOKEN_INDEX, max_prompt_len=200,
                             official_prompt=True, seg_in_prompt=True)
    prompt = p["input_ids"][p["attention_mask"]].tolist()
    first_label = next(i for i, t in enumerate(want_labels) if t != -100)
    assert prompt == want_ids[:first_label]


def test_official_prompt_is_the_segearth_r2_default_and_tiny_keeps_its_own():
    from configs import segearth_r2, tiny
    from segearth_jax.input.settings import Settings

    for variant in segearth_r2.DATASETS:
        s = Settings.from_config(segearth_r2.get_config(variant).data)
        assert s.official_prompt and s.seg_in_prompt, variant
    s = Settings.from_config(tiny.get_config().data)
    assert not s.official_prompt and not s.seg_in_prompt


# ----------------------------------------------------------------------------- full size, shapes


def _flat(tree) -> dict:
    from flax import traverse_util

    return traverse_util.flatten_dict(tree, sep="/")


def _mipha_spec(lm_head_bias: bool) -> dict:
    """model.json of `convert.mipha --variant mipha3b` (written by convert/mipha.py: `convert`)."""
    from segearth_jax.models.mipha import MiphaConfig

    cfg = MiphaConfig.from_variant("mipha3b", llm=dict(lm_head_bias=lm_head_bias))
    return {"kind": "mipha", "dtype": "bfloat16", "model": cfg.to_config("float32", "float32")}


def test_finetune_full_size_structure_is_checked_naming_the_flag():
    """model.json against configs/segearth_r2.py:lasers for each init route: one error naming
    the flag where the structures differ, none where they agree."""
    from configs import segearth_r2
    from convert import segearth_r2 as conv
    from segearth_jax import init

    config = segearth_r2.get_config("lasers")
    # model.json as `convert.segearth_r2.convert` writes it.
    r2 = {"kind": "segearth_r2", "variant": "segearth_r2",
          "model": conv.model_spec("segearth_r2", "bfloat16")}
    with pytest.raises(ValueError) as e:  # the released model's FPN is Mask2Former-Simplify
        init.check_structure(r2, config, "checkpoint", "ckpt/r2")
    assert "ckpt/r2 (config.init.checkpoint)" in str(e.value) and "(1 fields" in str(e.value)
    assert "set --config.model.seg_head.pixel_decoder.simplify_fpn=True" in str(e.value)
    init.check_structure(r2, config, "mllm", "ckpt/r2")  # another kind: the key check decides
    init.check_structure(_mipha_spec(False), config, "mllm", "ckpt/mipha3b")
    with pytest.raises(ValueError, match=r"set --config\.model\.mllm\.llm\.lm_head_bias=True"):
        init.check_structure(_mipha_spec(True), config, "mllm", "ckpt/mipha3b")
    from segearth_jax.models.seg_head import SegHeadConfig

    m2f = {"kind": "seg_head", "variant": "swin-b", "dtype": "float32",  # convert.mask2former's
           "model": SegHeadConfig.from_variant("swin-b").to_config("float32", "float32")}
    init.check_structure(m2f, config, "seg_head", "ckpt/m2f")

    config.model.seg_head.pixel_decoder.simplify_fpn = True  # the flag the error named
    init.check_structure(r2, config, "checkpoint", "ckpt/r2")
    with pytest.raises(ValueError, match=r"simplify_fpn=False"):
        init.check_structure(m2f, config, "seg_head", "ckpt/m2f")
    config.model.mllm.llm.vocab_size = 50304  # a size: named with the key that sets it
    with pytest.raises(ValueError) as e:
        init.check_structure(r2, config, "checkpoint", "ckpt/r2")
    assert "mllm.llm.vocab_size: the checkpoint has 51200, the config builds 50304" in str(e.value)
    assert "set --config.model.mllm.llm.vocab_size=51200" in str(e.value)


def test_finetune_full_size_converter_tree_fits_lasers_for_every_init_route():
    """The converter's full-size tree (`expected_params`, shapes only) against the training
    model of configs/segearth_r2.py:lasers (`Trainer.abstract_init`: LoRA, trainable/frozen
    split), through `init.check_checkpoint` for the checkpoint, mllm and seg_head routes."""
    from configs import segearth_r2
    from convert import segearth_r2 as conv
    from segearth_jax import init, optim
    from segearth_jax.train import Trainer

    expected = _flat(conv.expected_params(conv.model_config("segearth_r2", "bfloat16")))
    config = segearth_r2.get_config("lasers")
    config.model.seg_head.pixel_decoder.simplify_fpn = True
    state, frozen = Trainer(config).abstract_init()
    target = _flat(optim.merge_params(state.params, frozen))
    assert any("lora_a" in k for k in target) and "seg_head/pixel_decoder/adapter_1/conv/bias" \
        in target
    for key, prefix, missing_ok in init.SOURCES:
        found = {k.removeprefix(f"{prefix}/"): v for k, v in expected.items()
                 if not prefix or k.startswith(f"{prefix}/")}
        assert found, key
        init.check_checkpoint(found, target, prefix, missing_ok, f"config.init.{key}")
    # Without the flag the trees differ exactly by the two FPN conv biases.
    config.model.seg_head.pixel_decoder.simplify_fpn = False
    state, frozen = Trainer(config).abstract_init()
    target = _flat(optim.merge_params(state.params, frozen))
    with pytest.raises(ValueError) as e:
        init.check_checkpoint(expected, target, "", r".*/lora_[ab]", "ckpt/r2")
    assert "(2 problems)" in str(e.value)
    assert "unexpected seg_head/pixel_decoder/adapter_1/conv/bias" in str(e.value)
    assert "unexpected seg_head/pixel_decoder/layer_1/conv/bias" in str(e.value)


# ----------------------------------------------------------------------------- tiny, CLIs


def _run(env: dict, module: str, *args: str, check: bool = True):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=1200)
    if check:
        assert p.returncode == 0, (module, p.stdout[-3000:], p.stderr[-6000:])
    return p


def test_finetune_from_converted_official_checkpoint_cli(official, tmp_path):
    """The released-model workflow at tiny size, each step the command a user runs: an
    official-layout merged directory -> convert.segearth_r2 -> train 2 steps from it
    (config.init.checkpoint; first without the structure flags: exit 2 naming them) -> the
    run's export -> evaluate --mode teacher_forced -> predict. Trained with lr 0, the export is
    the converted checkpoint, leaf for leaf: the training run restored the converter's output."""
    import json
    import os

    import cv2
    import jax

    from configs import tiny
    from data import builders, synthetic
    from segearth_jax import checkpoint
    from segearth_jax.input.sources import open_source

    synthetic.generate(tmp_path / "raw", n=20, seed=0)
    builders.build("synthetic", manual_dir=tmp_path / "raw", data_dir=tmp_path / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(tmp_path / "tfds")
    corpus = [text.SYSTEM, text.OFFICIAL_PREFIX, text.OFFICIAL_USER_END]
    for split in ("train", "test"):
        source = open_source(config.data, split)
        corpus += [str(source[i][k]) for i in range(len(source))
                   for k in ("instruction", "answer")]
    # The merged directory: the official tiny state dict (tests/test_convert_segearth_r2.py)
    # and its tokenizer (490 tokens + [SEG]: fewer than the 500 embedding rows).
    merged = test_convert_segearth_r2._write(official[0], tmp_path / "merged")
    text.train_tokenizer(merged, corpus, vocab_size=490)
    # The run's compilation cache and fast compiles (tests/conftest.py): each command compiles the
    # tiny model and runs it for a few steps; the export is compared to the converted weights
    # exactly (lr 0), the rest are smoke checks.
    env = {**os.environ, "XLA_FLAGS": tests.conftest.FAST_COMPILE_XLA_FLAGS}

    ckpt = tmp_path / "r2"
    _run(env, "convert.segearth_r2", "--src", str(merged), "--out", str(ckpt), "--variant",
         "tiny", "--dtype", "float32")
    spec = json.loads((ckpt / "model.json").read_text())
    # The released model's inputs travel with it: predict/the app prompt it the official way.
    assert spec["kind"] == "segearth_r2" and spec["input"]["official_prompt"]
    assert spec["input"]["seg_in_prompt"] and spec["input"]["siglip_size"] == 56

    # configs/tiny.py with the segearth_r2 configs' official prompt (long in this small
    # tokenizer's tokens: longer sequences).
    data = [f"--config.data.data_dir={tmp_path}/tfds", "--config.data.official_prompt=True",
            "--config.data.seg_in_prompt=True", "--config.data.max_len=448",
            "--config.data.max_prompt_len=384"]
    flags = ["--config", "configs/tiny.py", f"--config.init.checkpoint={ckpt}",
             f"--config.tokenizer={ckpt / 'tokenizer'}", *data, "--config.data.batch_size=2",
             "--config.total_steps=2", "--config.log_every=1"]
    p = _run(env, "segearth_jax.train", "--workdir", str(tmp_path / "bad"), *flags, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-3000:]
    for flag in ("--config.model.seg_head.pixel_decoder.simplify_fpn=True",
                 "--config.model.mllm.llm.vocab_size=512"):
        assert flag in p.stderr, p.stderr[-3000:]

    run = tmp_path / "run"
    _run(env, "segearth_jax.train", "--workdir", str(run), *flags,
         "--config.model.seg_head.pixel_decoder.simplify_fpn=True",
         "--config.model.mllm.llm.vocab_size=512", "--config.optim.lr=0.0")
    export = run / "export"
    spec = json.loads((export / "model.json").read_text())
    assert spec["model"]["seg_head"]["pixel_decoder"]["simplify_fpn"] is True
    assert spec["input"]["official_prompt"] and spec["input"]["seg_in_prompt"]
    a = checkpoint.restore_params(ckpt)
    b = checkpoint.restore_params(export)
    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves(b),
                            strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y),
                                      err_msg=jax.tree_util.keystr(path))

    out = tmp_path / "eval"
    p = _run(env, "segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint",
             str(export), "--out", str(out), "--mode", "teacher_forced", *data)
    report = json.loads((out / "eval_test_segearth_r2.json").read_text())
    assert report["mode"] == "teacher_forced" and report["average"]["n_samples"] > 0
    assert report["average"]["n_failed"] == 0

    image = tmp_path / "in.png"
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (60, 90, 3), np.uint8))
    p = _run(env, "segearth_jax.predict", "--checkpoint", str(export), "--image", str(image),
             "--prompt", "Segment the storage tanks.", "--out", str(tmp_path / "pred"),
             "--max-new-tokens", "8")
    assert "answer:" in p.stdout
    assert json.loads((tmp_path / "pred" / "result.json").read_text())["image_size"] == [60, 90]
