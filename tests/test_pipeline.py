"""Tokens (exact prompt/answer layout, truncation) and the grain pipeline (exact batch contents,
sharding, resumption, workers, error policy), at tiny sizes: SigLIP 56, canvas 64, patch 14 ->
a 4 x 4 grid and 16 image tokens, with the tiny byte-level BPE tokenizer."""

from __future__ import annotations

import cv2
import grain
import numpy as np
import pytest

from configs import segearth_r2 as segearth_r2_config
from segearth_jax import text
from segearth_jax.input import pipeline, tokens
from segearth_jax.input import preprocess as P

N_IMG = 16  # (56 // 14) ** 2
INSTRUCTION = "Please segment the airplane and the tennis court."
ANSWER = "Sure, it is <p>airplane</p>[SEG] and <p>tennis court</p>[SEG]."


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from convert.tiny_mipha import write_tokenizer

    d = tmp_path_factory.mktemp("tokenizer")
    write_tokenizer(d, vocab_size=512)
    return text.load_tokenizer(d)


def _ids(tok, s):
    return tok(s, add_special_tokens=False)["input_ids"]


def _encode(tok, instruction=INSTRUCTION, answer=ANSWER, **kw):
    args = dict(n_image_tokens=N_IMG, image_token_id=-200, max_len=200, max_seg=4,
                seg_id=tok.convert_tokens_to_ids("[SEG]"), record_id="s/7 (7.png)")
    return tokens.encode_train(tok, instruction, answer, **{**args, **kw})


# ----------------------------------------------------------------------------- tokens


def test_conversation_parts_join_to_the_conversation():
    for kw in [{}, dict(seg_in_prompt=True), dict(official_prompt=True)]:
        prompt, reply = text.conversation_parts(INSTRUCTION, ANSWER, **kw)
        assert prompt + reply == text.conversation(INSTRUCTION, ANSWER, **kw)
        assert prompt == text.conversation(INSTRUCTION, **kw) and prompt.endswith(" ASSISTANT:")
    assert text.conversation(INSTRUCTION, ANSWER) == (
        f"{text.SYSTEM} USER: <image>\n{INSTRUCTION} ASSISTANT: {ANSWER}<|endoftext|>")
    with pytest.raises(ValueError, match="template"):
        text.conversation(INSTRUCTION, template="llama")


def test_encode_train_exact_layout(tok):
    out = _encode(tok)
    seg, end = tok.convert_tokens_to_ids("[SEG]"), tok.convert_tokens_to_ids("<|endoftext|>")
    before = _ids(tok, f"{text.SYSTEM} USER: ")
    prompt = before + [-200] * N_IMG + _ids(tok, f"\n{INSTRUCTION} ASSISTANT:")
    answer = _ids(tok, f" {ANSWER}") + [end]
    p, n = len(prompt), len(prompt) + len(answer)
    ids, labels, mask = out["input_ids"], out["labels"], out["attention_mask"]
    assert ids.dtype == labels.dtype == out["seg_positions"].dtype == np.int32
    assert ids.shape == labels.shape == mask.shape == (200,)
    np.testing.assert_array_equal(ids[:n], prompt + answer)
    np.testing.assert_array_equal(ids[n:], end)  # padding id: eos (no pad token)
    np.testing.assert_array_equal(labels[:p], -100)
    np.testing.assert_array_equal(labels[p:n], ids[p:n])  # the answer, incl. [SEG]s and eos
    np.testing.assert_array_equal(labels[n:], -100)
    np.testing.assert_array_equal(mask, np.arange(200) < n)
    # The image span: 16 placeholders right after "... USER: ".
    np.testing.assert_array_equal(np.flatnonzero(ids == -200), len(before) + np.arange(N_IMG))
    # [SEG] positions point at [SEG]s of the answer, in order, -1 padded.
    assert int(out["n_seg"]) == 2 and not out["truncated"]
    pos = out["seg_positions"]
    np.testing.assert_array_equal(pos[2:], -1)
    np.testing.assert_array_equal(pos[:2], np.flatnonzero(ids == seg))
    assert (pos[:2] >= p).all() and labels[n - 1] == end
    # The kept tokens spell the conversation (image span removed).
    kept = ids[:n][ids[:n] != -200]
    assert tok.decode(kept) == text.conversation(INSTRUCTION, ANSWER).replace("<image>", "")


def test_encode_train_template_options(tok):
    seg = tok.convert_tokens_to_ids("[SEG]")
    out = _encode(tok, seg_in_prompt=True)
    ids, labels = out["input_ids"], out["labels"]
    all_seg = np.flatnonzero(ids == seg)
    assert len(all_seg) == 3 and int(out["n_seg"]) == 2
    # The prompt [SEG] ends the user turn, is unlabelled, and is not a mask query.
    prompt_seg = all_seg[0]
    assert labels[prompt_seg] == -100 and prompt_seg not in out["seg_positions"]
    assert tok.decode(ids[prompt_seg + 1: prompt_seg + 3]) == " ASSISTANT"
    np.testing.assert_array_equal(out["seg_positions"][:2], all_seg[1:])

    out = _encode(tok, official_prompt=True)
    ids = out["input_ids"]
    first_img = np.flatnonzero(ids == -200)[0]
    assert tok.decode(ids[:first_img]).endswith("USER: This is an image \n")
    kept = ids[out["attention_mask"]]
    assert tok.decode(kept[kept != -200]) == text.conversation(
        INSTRUCTION, ANSWER, official_prompt=True).replace("<image>", "")


def test_truncation_never_cuts_a_seg(tok):
    answer = "<p>airplane</p>[SEG] then many more words about buildings roads water trees ships"
    full = _encode(tok, answer=answer, max_len=400)
    n = int(full["attention_mask"].sum())
    last_seg = int(full["seg_positions"][0])
    # Cut after the [SEG]: the tail (and the eos) go, the [SEG] stays labelled.
    out = _encode(tok, answer=answer, max_len=last_seg + 3)
    assert out["truncated"] and int(out["n_seg"]) == 1
    assert out["attention_mask"].all()
    np.testing.assert_array_equal(out["input_ids"], full["input_ids"][:last_seg + 3])
    np.testing.assert_array_equal(out["labels"], full["labels"][:last_seg + 3])
    assert out["seg_positions"][0] == last_seg
    assert out["labels"][-1] != tok.convert_tokens_to_ids("<|endoftext|>")
    # Exactly up to the [SEG] still fits; one less does not.
    up_to_seg = _encode(tok, answer=answer, max_len=last_seg + 1)
    assert up_to_seg["labels"][-1] == tok.convert_tokens_to_ids("[SEG]")
    with pytest.raises(tokens.TooLong, match=r"s/7 \(7.png\)"):
        _encode(tok, answer=answer, max_len=last_seg)
    # The whole answer fits exactly: not truncated, eos kept.
    fit = _encode(tok, answer=answer, max_len=n)
    assert not fit["truncated"] and fit["labels"][-1] == tok.convert_tokens_to_ids("<|endoftext|>")


def test_too_many_segs_raises(tok):
    with pytest.raises(tokens.TooLong, match="max_seg=1"):
        _encode(tok, max_seg=1)


def test_encode_prompt_left_padded(tok):
    train = _encode(tok)
    p = int(np.flatnonzero(train["labels"] != -100)[0])
    out = tokens.encode_prompt(tok, INSTRUCTION, n_image_tokens=N_IMG, image_token_id=-200,
                               max_prompt_len=p + 5)
    np.testing.assert_array_equal(out["input_ids"][5:], train["input_ids"][:p])
    np.testing.assert_array_equal(out["attention_mask"], np.arange(p + 5) >= 5)
    with pytest.raises(tokens.TooLong, match="max_prompt_len"):
        tokens.encode_prompt(tok, INSTRUCTION, n_image_tokens=N_IMG, image_token_id=-200,
                             max_prompt_len=p - 1, record_id="x")


# ----------------------------------------------------------------------------- pipeline

SIZES = [(20, 30), (30, 20), (25, 25), (40, 33), (18, 50)]


def make_record(i: int, n_masks: int | None = None, *, has_masks: bool = True,
                instruction: str = INSTRUCTION, answer: str | None = None) -> dict:
    """Record i: a random image (seeded by i) of one of SIZES, n_masks random masks, an answer
    with one [SEG] per mask; the TFDS layout (text as bytes)."""
    rng = np.random.default_rng(100 + i)
    h, w = SIZES[i % len(SIZES)]
    n = i % 3 if n_masks is None else n_masks
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = (rng.random((n, h, w)) > 0.6).astype(np.uint8)
    if answer is None:
        answer = " and ".join(["it is <p>airplane</p>[SEG]"] * n) or "There is none."
    return dict(id=str(i).encode(), subset=b"sub", image_name=f"{i}.png".encode(),
                instruction=instruction.encode(), answer=answer.encode(),
                image=cv2.imencode(".png", img[..., ::-1])[1].tobytes(),
                masks=masks if has_masks else np.zeros((0, h, w), np.uint8),
                has_masks=has_masks, height=h, width=w)


def _image(record) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(record["image"], np.uint8), 1),
                        cv2.COLOR_BGR2RGB)


def data_config(**kw):
    c = segearth_r2_config.base().data
    c.update(dict(siglip_size=56, image_size=64, patch_size=14, max_len=160, max_seg=3,
                  max_prompt_len=128, batch_size=2, worker_count=0, prefetch=1, read_threads=1,
                  # the short template (the official prompt where a test asks for it)
                  official_prompt=False, seg_in_prompt=False))
    c.update(kw)
    return c


def _loader(source, tok, *, train=True, shard=None, **kw):
    cfg_kw = {k: kw.pop(k) for k in list(kw) if k in segearth_r2_config.base().data}
    return pipeline.make_loader(source, tok, data_config(**cfg_kw), train=train, seed=3,
                                shard_options=shard or grain.sharding.NoSharding(), **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


@pytest.fixture(scope="module")
def records():
    return [make_record(i) for i in range(10)]


@pytest.mark.parametrize("spatial_gt", ["paper", "official"])
def test_train_batch_exact(tok, records, spatial_gt):
    seg_id = tok.convert_tokens_to_ids("[SEG]")
    batches = list(iter(_loader(records, tok, num_epochs=1, spatial_gt=spatial_gt)))
    assert len(batches) == 5
    seen = []
    for b in batches:
        assert b["siglip_pixels"].shape == (2, 56, 56, 3) and b["siglip_pixels"].dtype == np.float32
        assert b["pixels"].shape == (2, 64, 64, 3) and b["pixels"].dtype == np.float32
        assert b["masks"].shape == (2, 3, 64, 64) and b["masks"].dtype == np.uint8
        assert b["masks_grid"].shape == (2, 3, 4, 4) and b["masks_grid"].dtype == np.float32
        assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (2, 160)
        assert b["seg_positions"].dtype == np.int32 and b["seg_valid"].dtype == bool
        assert b["record_index"].dtype == np.int64 and b["image_hw"].dtype == np.int32
        for j, idx in enumerate(b["record_index"]):
            r = records[idx]
            seen.append(int(idx))
            img = _image(r)
            n = r["masks"].shape[0]
            np.testing.assert_array_equal(b["siglip_pixels"][j], P.siglip_view(img, 56))
            pixels, extent = P.swin_view(img, 64)
            np.testing.assert_array_equal(b["pixels"][j], pixels)
            np.testing.assert_array_equal(b["image_hw"][j], img.shape[:2])
            np.testing.assert_array_equal(b["canvas_hw"][j], extent)
            np.testing.assert_array_equal(b["masks"][j, :n], P.masks_to_canvas(r["masks"], 64))
            np.testing.assert_array_equal(b["masks"][j, n:], 0)
            np.testing.assert_array_equal(b["masks_grid"][j, :n],
                                          P.masks_to_grid(r["masks"], 4, spatial_gt))
            np.testing.assert_array_equal(b["masks_grid"][j, n:], 0)
            np.testing.assert_array_equal(b["seg_valid"][j], np.arange(3) < n)
            t = tokens.encode_train(tok, INSTRUCTION, r["answer"].decode(), n_image_tokens=N_IMG,
                                    image_token_id=-200, seg_id=seg_id, max_len=160, max_seg=3)
            for k in ("input_ids", "labels", "attention_mask", "seg_positions"):
                np.testing.assert_array_equal(b[k][j], t[k], err_msg=k)
            ids = b["input_ids"][j]
            assert (ids[b["seg_positions"][j][:n]] == seg_id).all()
            assert (ids == -200).sum() == N_IMG
    assert sorted(seen) == list(range(10))  # one epoch, shuffled, every record once


def test_tfds_source_gives_the_same_batches(tok, records, tmp_path):
    import tensorflow_datasets as tfds
    from etils import epath

    class TinyRecords(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        VERSION = tfds.core.Version("1.0.0")

        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):  # TFDS' default needs `importlib_resources` inside a package
            return epath.Path(__file__)

        def _info(self):
            text_feature = tfds.features.Text()
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "id": text_feature, "subset": text_feature, "image_name": text_feature,
                "instruction": text_feature, "answer": text_feature,
                "image": tfds.features.Tensor(shape=(), dtype=np.object_),
                "masks": tfds.features.Tensor(shape=(None, None, None), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.ZLIB),
                "has_masks": tfds.features.Scalar(dtype=np.bool_),
                "height": tfds.features.Scalar(dtype=np.int32),
                "width": tfds.features.Scalar(dtype=np.int32)}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i, r in enumerate(records):
                yield i, {k: (v.decode() if isinstance(v, bytes) and k != "image" else v)
                          for k, v in r.items()}

    builder = TinyRecords(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source()["train"]
    assert len(source) == len(records)
    # TFDS stores examples in its own (hashed) order: the same records, as written, in that order.
    by_id = {r["id"]: r for r in records}
    same_order = [by_id[source[i]["id"]] for i in range(len(source))]
    from_tfds = _take(iter(_loader(source, tok)), 6)
    from_list = _take(iter(_loader(same_order, tok)), 6)
    _assert_batches_equal(from_tfds, from_list)


def test_sharding_covers_every_record_once(tok, records):
    per_shard = []
    for i in range(2):
        shard = grain.sharding.ShardOptions(shard_index=i, shard_count=2, drop_remainder=True)
        loader = _loader(records, tok, shard=shard, num_epochs=1, batch_size=2,
                         drop_remainder=False)
        batches = list(iter(loader))
        assert all(b["input_ids"].shape[0] == 1 for b in batches)  # per-process batch 2 // 2
        per_shard.append([int(x) for b in batches for x in b["record_index"]])
    assert len(per_shard[0]) == len(per_shard[1]) == 5
    assert not set(per_shard[0]) & set(per_shard[1])
    assert sorted(per_shard[0] + per_shard[1]) == list(range(10))
    with pytest.raises(ValueError, match="global batch"):
        _loader(records, tok, shard=grain.sharding.ShardOptions(0, 2), batch_size=3)


def test_resume_from_iterator_state(tok, records):
    loader = _loader(records, tok)
    it = iter(loader)
    _take(it, 3)
    state = it.get_state()
    expected = _take(it, 4)  # crosses an epoch boundary (5 batches per epoch)
    it2 = iter(_loader(records, tok))
    it2.set_state(state)
    _assert_batches_equal(_take(it2, 4), expected)


def test_worker_count_does_not_change_batches(tok, records):
    in_process = _take(iter(_loader(records, tok, worker_count=0)), 4)
    one_worker = _take(iter(_loader(records, tok, worker_count=1)), 4)
    _assert_batches_equal(in_process, one_worker)


def test_eval_batch(tok):
    recs = [make_record(0, 2), make_record(1, has_masks=False, answer="a [SEG] b [SEG] c [SEG]"),
            make_record(2, 1), make_record(3, has_masks=False, answer="")]
    batches = list(iter(_loader(recs, tok, train=False)))  # eval: one epoch by default
    assert set(batches[0]) == {"input_ids", "attention_mask", "siglip_pixels", "pixels",
                               "image_hw", "canvas_hw", "n_seg", "record_index"}
    got = {int(i): int(n) for b in batches for i, n in zip(b["record_index"], b["n_seg"],
                                                              strict=True)}
    assert got == {0: 2, 1: 3, 2: 1, 3: 0}  # no shuffling in eval: order kept
    assert [int(i) for b in batches for i in b["record_index"]] == [0, 1, 2, 3]
    prompt = tokens.encode_prompt(tok, INSTRUCTION, n_image_tokens=N_IMG, image_token_id=-200,
                                  max_prompt_len=128)
    for b in batches:
        assert b["input_ids"].shape == (2, 128)
        for j in range(2):
            np.testing.assert_array_equal(b["input_ids"][j], prompt["input_ids"])
            np.testing.assert_array_equal(b["attention_mask"][j], prompt["attention_mask"])
            assert b["attention_mask"][j, -1]  # left padding: the prompt ends the row


def _bad_records():
    recs = [make_record(i) for i in range(6)]
    recs[1] = make_record(1, instruction="long " * 200)  # prompt > max_len
    recs[3] = make_record(3, has_masks=False)  # cannot train without masks
    recs[4] = dict(make_record(4, 2), answer=b"only one <p>x</p>[SEG]")  # 2 masks, 1 [SEG]
    return recs


def test_skip_policy_counts_and_reports(tok, caplog):
    recs = _bad_records()
    with caplog.at_level("WARNING"):
        loader = _loader(recs, tok, on_error="skip", num_epochs=1, drop_remainder=False)
    v = loader.validation
    assert v.n_skipped == 3 and list(v.kept) == [0, 2, 5]
    assert [s.split(":")[0] for s in v.skipped["too_long"]] == ["sub/1 (1.png)"]
    assert sorted(s.split(":")[0] for s in v.skipped["invalid"]) == ["sub/3 (3.png)",
                                                                      "sub/4 (4.png)"]
    assert "skipped 3 of 6 records" in caplog.text
    seen = sorted(int(x) for b in iter(loader) for x in b["record_index"])
    assert seen == [0, 2, 5]


@pytest.mark.parametrize("bad,match", [(1, r"sub/1 \(1.png\).*max_len"),
                                       (3, r"sub/3 \(3.png\): has no masks"),
                                       (4, r"sub/4 \(4.png\): 2 masks for 1 \[SEG\]")])
def test_raise_policy_names_the_record(tok, bad, match):
    recs = _bad_records()
    loader = _loader([recs[bad]] * 2, tok, num_epochs=1)
    with pytest.raises(tokens.RecordError, match=match):
        next(iter(loader))
