"""Dataset readers, bad-input policy and TFDS builders, on tiny fixture folders written here."""

from __future__ import annotations

import json
import pickle
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from segearth_jax.input import datasets, readers
from segearth_jax.input.records import (
    BadInput,
    Record,
    SkipReport,
    check_example,
    decode_rle,
    load_image,
    load_mask,
)
from tests import data_fixtures as fx

tfds.disable_progress_bar()
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
REPO = Path(__file__).resolve().parents[1]
FUZZ = settings(max_examples=50, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


def _assert_records(got: list[Record], expected: list[fx.Expected]) -> None:
    assert [r.id for r in got] == [e.id for e in expected]
    for r, e in zip(got, expected, strict=True):
        assert (r.image_path, r.instruction, r.answer, r.subset, r.source) == (
            e.image_path, e.instruction, e.answer, e.subset, e.source), r.id
        if e.masks is None:
            assert r.masks is None, r.id
        else:
            m = r.masks()
            assert m.dtype == np.uint8 and m.shape == e.masks.shape, (r.id, m.shape)
            np.testing.assert_array_equal(m, e.masks, err_msg=r.id)


# ----------------------------------------------------------------------------- readers

@pytest.mark.parametrize("name", sorted(fx.WRITERS))
def test_reader_yields_expected_records(tmp_path, name):
    expected = fx.WRITERS[name](tmp_path)
    for split, records in expected.items():
        _assert_records(list(readers.READERS[name](tmp_path, split)), records)
        for r, e in zip(readers.READERS[name](tmp_path, split), records, strict=True):
            np.testing.assert_array_equal(load_image(r.image_path, r.id), e.image)


def test_referring_templates_have_one_seg():
    assert readers.REFER_ANSWER.count("[SEG]") == 1
    assert "[SEG]" not in readers.REFER_INSTRUCTION
    assert readers.NO_TARGET_ANSWER.count("[SEG]") == 0


# ----------------------------------------------------------------------------- TFDS builders

def _check_built(source: dict, expected: dict[str, list[fx.Expected]]) -> None:
    assert sorted(source) == sorted(expected)
    for split, records in expected.items():
        ds = source[split]
        got = {ds[i]["id"].decode(): ds[i] for i in range(len(ds))}
        assert sorted(got) == sorted(e.id for e in records), split
        for e in records:
            g = got[e.id]
            assert g["instruction"].decode() == e.instruction
            assert g["answer"].decode() == e.answer
            assert g["subset"].decode() == e.subset
            assert g["image_name"].decode() == Path(e.image_path).name
            assert (int(g["height"]), int(g["width"])) == e.image.shape[:2]
            bgr = cv2.imdecode(np.frombuffer(g["image"], np.uint8), cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(bgr[:, :, ::-1], e.image, err_msg=e.id)
            if e.masks is None:
                assert not g["has_masks"] and g["masks"].shape == (0, *e.image.shape[:2])
            else:
                assert g["has_masks"] and g["masks"].dtype == np.uint8
                np.testing.assert_array_equal(g["masks"], e.masks, err_msg=e.id)


@pytest.mark.parametrize("name", sorted(fx.WRITERS))
def test_tfds_build_round_trip(tmp_path, name):
    expected = fx.WRITERS[name](tmp_path / "raw")
    builder = datasets.build(name, tmp_path / "raw", tmp_path / "tfds")
    assert builder.name == name and builder.on_error == "raise"
    _check_built(datasets.load(name, tmp_path / "tfds"), expected)
    assert datasets.build(name, None, tmp_path / "tfds").is_prepared()  # Reused, not rebuilt.


def test_build_needs_manual_dir_when_not_built(tmp_path):
    with pytest.raises(FileNotFoundError, match="rrsisd is not built"):
        datasets.build("rrsisd", None, tmp_path / "tfds")


def test_cli_entry_point(tmp_path):
    """`python -m data.builders` (the demo's entry point), in a fresh interpreter."""
    expected = fx.write_risbench(tmp_path / "raw")
    proc = subprocess.run(
        [sys.executable, "-m", "data.builders", "risbench", "--manual_dir", str(tmp_path / "raw"),
         "--data_dir", str(tmp_path / "tfds"), "--on_error", "skip"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "risbench/train: policy=skip, kept 3 record(s), skipped nothing" in proc.stdout
    _check_built(datasets.load("risbench", tmp_path / "tfds"), expected)


def test_build_skip_policy_reports_and_drops(tmp_path, capsys):
    expected = fx.write_lasers(tmp_path / "raw")
    bad = tmp_path / "raw" / "train" / "images" / "a.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(BadInput, match="unreadable|does not decode") as e:
        datasets.build("lasers", tmp_path / "raw", tmp_path / "tfds_raise")
    assert str(bad) in str(e.value) and "train_ann/1" in str(e.value)

    datasets.build("lasers", tmp_path / "raw", tmp_path / "tfds", on_error="skip")
    out = capsys.readouterr().out
    assert "lasers/train: policy=skip, kept 1 record(s), skipped 1 record(s)" in out
    assert "unreadable_image: 1" in out and str(bad) in out
    expected["train"] = expected["train"][1:]
    _check_built(datasets.load("lasers", tmp_path / "tfds"), expected)
    meta = json.loads((tmp_path / "tfds" / "lasers" / "1.0.0" / "metadata.json").read_text())
    assert meta["skip_report_train"]["by_reason"] == {"unreadable_image": 1}
    assert meta["skip_report_test"]["skipped"] == 0


def test_build_all_skipped_fails_loudly(tmp_path):
    fx.write_lasers(tmp_path / "raw")
    ann = tmp_path / "raw" / "train" / "annotations" / "train_ann.json"
    ann.write_text(ann.read_text()[:50])
    with pytest.raises(ValueError, match="lasers/train: no valid example"):
        datasets.build("lasers", tmp_path / "raw", tmp_path / "tfds", on_error="skip")


def test_on_error_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(datasets.ON_ERROR_ENV, "skip")
    assert datasets.Lasers(data_dir=tmp_path).on_error == "skip"
    assert datasets.Lasers(data_dir=tmp_path, on_error="raise").on_error == "raise"
    monkeypatch.setenv(datasets.ON_ERROR_ENV, "ignore")
    with pytest.raises(ValueError, match="SEGEARTH_ON_ERROR"):
        datasets.Lasers(data_dir=tmp_path)


def test_build_without_any_split_names_the_layout(tmp_path):
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "README").write_text("wrong folder")
    with pytest.raises(BadInput, match="no earthreason split found"):
        datasets.build("earthreason", tmp_path / "raw", tmp_path / "tfds")


# ----------------------------------------------------------------------------- bad input

def _lasers_entry(root: Path, **fields) -> Path:
    """Updates the first train entry (id 1, image a.png, one [SEG]); returns the JSON path."""
    path = root / "train" / "annotations" / "train_ann.json"
    items = json.loads(path.read_text())
    items[0].update(fields)
    path.write_text(json.dumps(items))
    return path


def _image_a(root: Path, name: str = "a.png") -> Path:
    path = root / "train" / "images" / name
    if name != "a.png":
        _lasers_entry(root, image_name=name)
    return path


def _corrupt(root):
    path = _image_a(root)
    path.write_bytes(b"this is not an image")
    return path


def _missing(root):
    path = _image_a(root)
    path.unlink()
    return path


def _truncated_jpeg(root):
    path = _image_a(root, "a.jpg")
    fx.write_rgb(path, fx.rgb(5))
    path.write_bytes(path.read_bytes()[:-100])
    # cv2.imread decodes it anyway (gray fill, a warning only); load_image must refuse it.
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).shape == (fx.H, fx.W, 3)
    return path


def _png16(root):
    path = _image_a(root)
    assert cv2.imwrite(str(path), np.full((fx.H, fx.W, 3), 1000, np.uint16))
    return path


def _tiff16(root):
    path = _image_a(root, "a.tif")
    assert cv2.imwrite(str(path), np.full((fx.H, fx.W, 3), 1000, np.uint16))
    return path


def _tiff_float(root):
    path = _image_a(root, "a.tif")
    assert cv2.imwrite(str(path), np.full((fx.H, fx.W, 3), 0.5, np.float32))
    return path


def _tiff_multiband(root):
    path = _image_a(root, "a.tif")
    fx.write_tiff(path, np.zeros((fx.H, fx.W, 5), np.uint8))
    return path


def _tiff_multipage(root):
    path = _image_a(root, "a.tif")
    assert cv2.imwritemulti(str(path), [fx.rgb(6), fx.rgb(7)])
    return path


BAD_CASES = {
    # name: (mutation returning the file the message must name, kind, text in the message)
    "corrupt image": (_corrupt, "unreadable_image", "does not decode"),
    "missing image": (_missing, "missing_file", "does not exist"),
    "truncated jpeg": (_truncated_jpeg, "unreadable_image", "does not decode"),
    "16-bit png": (_png16, "unsupported_image", "16-bit"),
    "16-bit tiff": (_tiff16, "unsupported_image", "16-bit"),
    "float tiff": (_tiff_float, "unsupported_image", "float32"),
    "multi-band tiff": (_tiff_multiband, "unsupported_image", "5 bands"),
    "multi-page tiff": (_tiff_multipage, "unsupported_image", "multi-page"),
    "rle count != [SEG] count": (
        lambda r: _lasers_entry(r, mask=[fx.rle(fx.rect(0, 5, 0, 5))] * 2), "mask_count",
        "2 mask(s) but the answer has 1 [SEG]"),
    "mask size != image size": (
        lambda r: _lasers_entry(r, mask=[fx.rle(fx.rect(0, 5, 0, 5, h=fx.H + 1))]),
        "mask_shape", "21x30 (HxW) but image"),
    "answer without [SEG]": (
        lambda r: _lasers_entry(r, answer="It is the building.", mask=[]), "no_seg",
        "answer has no [SEG]"),
    "malformed rle": (
        lambda r: _lasers_entry(r, mask=[{"size": [fx.H, fx.W], "counts": "!!"}]), "bad_rle",
        "RLE alphabet"),
    "rle sum != size": (
        lambda r: _lasers_entry(r, mask=[{"size": [fx.H, fx.W], "counts": [5, 5]}]), "bad_rle",
        "sum to 10 but size 20x30 has 600"),
    "missing description": (
        lambda r: _lasers_entry(r, description=None), "bad_annotation", "'description'"),
    "mask not a list": (lambda r: _lasers_entry(r, mask="abc"), "bad_rle", "'mask' must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_and_skips(tmp_path, case):
    mutate, kind, text = BAD_CASES[case]
    fx.write_lasers(tmp_path)
    bad_file = mutate(tmp_path)

    with pytest.raises(BadInput) as e:
        list(datasets.generate_examples("lasers", tmp_path, "train", SkipReport("raise")))
    err = e.value
    assert (err.kind, err.record_id, err.file) == (kind, "train_ann/1", str(bad_file))
    assert str(bad_file) in str(err) and "record train_ann/1" in str(err) and text in str(err)

    report = SkipReport("skip", name="lasers/train")
    kept = list(datasets.generate_examples("lasers", tmp_path, "train", report))
    assert [key for key, _ in kept] == ["train_ann/x2"]  # The other record survives.
    assert dict(report.counts) == {kind: 1} and report.kept == 1
    summary = report.summary()
    assert f"{kind}: 1" in summary and "skipped 1 record(s)" in summary and str(bad_file) in summary


def test_tiff_layout_reads_the_first_ifd(tmp_path):
    """The band count and bit depth of TIFFs that do not decode, for the error message."""
    from segearth_jax.input.records import _tiff_layout

    fx.write_tiff(tmp_path / "a.tif", np.zeros((4, 5, 7), np.uint16))
    data = (tmp_path / "a.tif").read_bytes()
    assert _tiff_layout(data) == (7, 16)
    with pytest.raises(BadInput, match="7 bands of 16-bit samples") as e:
        load_image(tmp_path / "a.tif", "r")
    assert e.value.kind == "unsupported_image"
    assert _tiff_layout(b"\x89PNG\r\n\x1a\n") is None
    # Big-endian (the same 8-bit gray tags, written as Motorola): 1 sample of 8 bits.
    tags = [(256, 3, 1, 5), (257, 3, 1, 4), (258, 3, 1, 8), (277, 3, 1, 1)]
    ifd = struct.pack(">H", len(tags)) + b"".join(
        struct.pack(">HHIHH", code, typ, n, v, 0) for code, typ, n, v in tags)
    assert _tiff_layout(b"MM\x00*" + struct.pack(">I", 8) + ifd + bytes(4)) == (1, 8)
    for n in (8, 12, 40, 140):  # Truncated: the tags read before the cut, no exception.
        assert _tiff_layout(data[:n]) in (None, (1, 1))


def test_duplicate_id_in_a_file(tmp_path):
    fx.write_lasers(tmp_path)
    ann = _lasers_entry(tmp_path, id="x2")
    with pytest.raises(BadInput, match="occurs twice") as e:
        list(readers.read_lasers(tmp_path, "train"))
    assert (e.value.kind, e.value.record_id, e.value.file) == ("duplicate_id", "train_ann/x2",
                                                               str(ann))
    report = SkipReport("skip")
    assert [r.id for r in readers.read_lasers(tmp_path, "train", report)] == ["train_ann/x2"]
    assert dict(report.counts) == {"duplicate_id": 1}


def test_truncated_json_is_a_whole_file_error(tmp_path):
    expected = fx.write_lasers(tmp_path)
    ann = tmp_path / "test" / "annotations" / "multiple.json"
    ann.write_text(ann.read_text()[:-7])
    with pytest.raises(BadInput, match="not valid JSON") as e:
        list(readers.read_lasers(tmp_path, "test"))
    assert e.value.record_id is None and e.value.kind == "bad_file"
    assert str(e.value).startswith(f"{ann}: (whole file): ")

    report = SkipReport("skip", name="lasers/test")
    got = list(readers.read_lasers(tmp_path, "test", report))
    _assert_records(got, [x for x in expected["test"] if x.subset != "multiple"])
    assert report.whole_files == [str(ann)] and report.skipped == 0
    assert "whole files skipped (1; their number of records is unknown" in report.summary()


def test_grayscale_and_rgba_are_converted(tmp_path):
    gray = np.arange(fx.H * fx.W, dtype=np.uint8).reshape(fx.H, fx.W)
    for name in ("g.png", "g.tif"):
        fx.write_gray(tmp_path / name, gray)
        np.testing.assert_array_equal(load_image(tmp_path / name, "r"),
                                      np.stack([gray, gray, gray], axis=2))
    rgba = np.concatenate([fx.rgb(8), np.full((fx.H, fx.W, 1), 7, np.uint8)], axis=2)
    cv2.imwrite(str(tmp_path / "c.png"), rgba[:, :, [2, 1, 0, 3]])  # RGBA -> BGRA on disk.
    np.testing.assert_array_equal(load_image(tmp_path / "c.png", "r"), rgba[:, :, :3])
    fx.write_tiff(tmp_path / "c.tif", rgba)
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif", "r"), rgba[:, :, :3])
    fx.write_tiff(tmp_path / "rgb.tif", rgba[:, :, :3])  # Our hand-written TIFF is readable.
    np.testing.assert_array_equal(load_image(tmp_path / "rgb.tif", "r"), rgba[:, :, :3])

    # Through the builder: a gray training image is stored as 3 equal channels.
    fx.write_lasers(tmp_path / "raw")
    fx.write_gray(tmp_path / "raw" / "train" / "images" / "a.png", gray)
    examples = dict(datasets.generate_examples("lasers", tmp_path / "raw", "train",
                                               SkipReport()))
    png = examples["train_ann/1"]["image"]
    bgr = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(bgr, np.stack([gray, gray, gray], axis=2))


def test_masks_any_nonzero_is_foreground(tmp_path):
    m = np.array([[0, 1, 255], [0, 0, 2]], np.uint8)
    fx.write_gray(tmp_path / "m.png", m)
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", "r"), [[0, 1, 1], [0, 0, 1]])
    color = np.zeros((2, 3, 4), np.uint8)
    color[0, 0, 1] = 9  # Green only.
    color[:, :, 3] = 255  # Opaque alpha everywhere: ignored.
    cv2.imwrite(str(tmp_path / "c.png"), color)
    np.testing.assert_array_equal(load_mask(tmp_path / "c.png", "r"), [[1, 0, 0], [0, 0, 0]])


def test_earthreason_unpaired_stem(tmp_path):
    fx.write_earthreason(tmp_path)
    (tmp_path / "train" / "labels" / "e2.png").unlink()
    with pytest.raises(BadInput, match="no file with stem 'e2' in labels/") as e:
        list(readers.read_earthreason(tmp_path, "train"))
    assert e.value.record_id == "e2" and e.value.kind == "unpaired"
    assert e.value.file == str(tmp_path / "train" / "images" / "e2.jpg")
    report = SkipReport("skip")
    ids = [r.id for r in readers.read_earthreason(tmp_path, "train", report)]
    assert ids == ["e1_0", "e1_1", "e3_0"] and dict(report.counts) == {"unpaired": 1}


def test_earthreason_no_target_must_have_an_empty_label(tmp_path):
    fx.write_earthreason(tmp_path)
    label = tmp_path / "train" / "labels" / "e3.png"
    fx.write_gray(label, fx.rect(0, 1, 0, 1) * 255)
    report = SkipReport("skip")
    kept = dict(datasets.generate_examples("earthreason", tmp_path, "train", report,
                                           allow_no_target=True))
    assert sorted(kept) == ["e1_0", "e1_1", "e2_0"]
    assert dict(report.counts) == {"mask_count": 1} and str(label) in report.messages[0]


def test_earthreason_no_target_needs_the_allowance(tmp_path):
    fx.write_earthreason(tmp_path)
    with pytest.raises(BadInput, match="answer has no") as e:
        list(datasets.generate_examples("earthreason", tmp_path, "train", SkipReport()))
    assert e.value.record_id == "e3_0"


def test_phrase_file_bad_line_and_missing_mask(tmp_path):
    fx.write_refsegrs(tmp_path)
    src = tmp_path / "output_phrase_val.txt"
    src.write_text("2 the building\n2\n")
    with pytest.raises(BadInput, match="line 2: expected '<file name> <phrase>'"):
        list(readers.read_refsegrs(tmp_path, "val"))
    report = SkipReport("skip")
    assert [r.id for r in readers.read_refsegrs(tmp_path, "val", report)] == ["2_0"]
    assert dict(report.counts) == {"bad_annotation": 1}

    (tmp_path / "masks" / "3.tif").unlink()
    with pytest.raises(BadInput, match="does not exist") as e:
        list(datasets.generate_examples("refsegrs", tmp_path, "test", SkipReport()))
    assert e.value.file == str(tmp_path / "masks" / "3.tif") and e.value.record_id == "3_0"


def test_rrsisd_bad_refs_pickle_and_bad_polygon(tmp_path):
    fx.write_rrsisd(tmp_path)
    refs = tmp_path / "rrsisd" / "refs(unc).p"
    good = refs.read_bytes()
    refs.write_bytes(pickle.dumps([Path("x")]))  # An object: refused, nothing executed.
    with pytest.raises(BadInput, match=r"\(whole file\).*only plain lists") as e:
        list(readers.read_rrsisd(tmp_path, "train"))
    assert e.value.file == str(refs)
    refs.write_bytes(good[:-10])
    with pytest.raises(BadInput, match="not a readable refs pickle"):
        list(readers.read_rrsisd(tmp_path, "train"))

    refs.write_bytes(good)
    inst = tmp_path / "rrsisd" / "instances.json"
    coco = json.loads(inst.read_text())
    coco["annotations"][1]["segmentation"] = [[5, 4, 15, 4]]  # Two points.
    inst.write_text(json.dumps(coco))
    (record,) = readers.read_rrsisd(tmp_path, "val")
    with pytest.raises(BadInput, match=">= 3 points") as e:
        record.masks()
    assert (e.value.file, e.value.record_id, e.value.kind) == (str(inst), "1_0", "bad_rle")


def test_check_example_direct():
    image = np.zeros((4, 5, 3), np.uint8)
    rec = Record("r1", "img.png", "q", "a [SEG] b [SEG]", None, "s", "ann.json")
    check_example(rec, image, None)  # No masks in this split: only the text is checked.
    ok = np.zeros((2, 4, 5), np.uint8)
    ok[:, 0, 0] = 1
    check_example(rec, image, ok)
    with pytest.raises(BadInput, match="masks must be uint8"):
        check_example(rec, image, ok.astype(bool))
    with pytest.raises(BadInput, match="values must be 0/1"):
        check_example(rec, image, ok * 255)
    no_seg = Record("r2", "img.png", "q", "none", None, "s", "ann.json")
    check_example(no_seg, image, np.zeros((0, 4, 5), np.uint8), allow_no_target=True)
    with pytest.raises(BadInput, match="ann.json: record r2: answer has no"):
        check_example(no_seg, image, None)


def test_skip_report_policy():
    with pytest.raises(ValueError, match="on_error policy"):
        SkipReport("ignore")
    err = BadInput("f.json", "r", "broken", "bad_rle")
    with pytest.raises(BadInput):
        SkipReport("raise").run(lambda: (_ for _ in ()).throw(err))
    report = SkipReport("skip")
    with report.guard():
        raise err
    with pytest.raises(KeyError):  # Only BadInput is skippable: bugs are not swallowed.
        report.run(lambda: {}["x"])
    assert dict(report.counts) == {"bad_rle": 1} and report.messages == [str(err)]
    assert pickle.loads(pickle.dumps(err)).kind == "bad_rle"
    with pytest.raises(ValueError, match="unknown BadInput kind"):
        BadInput("f", "r", "x", "nonsense")


# ----------------------------------------------------------------------------- RLE decoding

@FUZZ
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_rle_round_trip(h, w, data):
    mask = np.array(data.draw(st.lists(st.integers(0, 1), min_size=h * w, max_size=h * w)),
                    np.uint8).reshape(h, w)
    np.testing.assert_array_equal(decode_rle(fx.rle(mask), "r", "s"), mask)
    np.testing.assert_array_equal(decode_rle(fx.uncompressed_rle(mask), "r", "s"), mask)
    enc = mask_utils.encode(np.asfortranarray(mask))  # bytes counts, as pycocotools gives
    np.testing.assert_array_equal(decode_rle(enc, "r", "s"), mask)


def test_rle_long_runs():
    """Runs > 2**25 need 6 characters per count in the compressed string."""
    h = w = 5800
    mask = np.zeros((h, w), np.uint8)
    mask[-1, -1] = 1
    enc = fx.rle(mask)
    assert len(enc["counts"]) == 7  # 6 characters for the run of 0s, 1 for the single 1.
    out = decode_rle(enc, "r", "s")
    assert out.shape == (h, w) and out.sum() == 1 and out[-1, -1] == 1


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=12)
_rle_text = st.text(alphabet=[chr(c) for c in range(40, 120)], max_size=20)
_counts = _rle_text | st.binary(max_size=20) | st.lists(st.integers(-5, 700), max_size=8) | _json
_size = st.lists(st.integers(-2, 30), min_size=0, max_size=3) | _json


@FUZZ
@given(st.fixed_dictionaries({"size": _size, "counts": _counts}) | _json)
def test_decode_rle_garbage_gives_bad_input_only(rle):
    try:
        out = decode_rle(rle, "r1", "ann.json")
    except BadInput as e:
        assert str(e).startswith("ann.json: record r1: mask RLE ")
        return
    assert out.dtype == np.uint8 and out.shape == tuple(rle["size"]) and out.max(initial=0) <= 1


@FUZZ
@given(st.text(max_size=60))
def test_parse_phrase_line_garbage(line):
    try:
        parsed = readers.parse_phrase_line(line, "phr.txt", 3)
    except BadInput as e:
        assert str(e).startswith("phr.txt: record line 3: ")
        return
    if parsed is None:
        assert not line.strip()
    else:
        name, phrase = parsed
        assert name and phrase and not any(c.isspace() for c in name) and "/" not in name
        assert phrase in line


def test_parse_phrase_line_examples():
    assert readers.parse_phrase_line("12 the  red\troof \n", "f", 1) == ("12", "the  red\troof")
    assert readers.parse_phrase_line("x.png\ta pond", "f", 1) == ("x.png", "a pond")
    assert readers.parse_phrase_line("   \n", "f", 1) is None
    with pytest.raises(BadInput, match="plain file name"):
        readers.parse_phrase_line("../x.png a pond", "f", 1)


_entry = st.fixed_dictionaries(
    {}, optional={"id": st.integers() | st.text(max_size=5) | _json,
                  "image_name": st.text(max_size=5) | _json,
                  "description": st.text(max_size=10) | _json,
                  "answer": st.text(max_size=10) | _json,
                  "mask": st.lists(_json, max_size=2) | _json})


@FUZZ
@given(_entry | _json, st.booleans())
def test_parse_lasers_item_garbage(item, require_mask):
    try:
        it = readers.parse_lasers_item(item, "dir/ann.json", 4, require_mask=require_mask)
    except BadInput as e:
        assert str(e).startswith("dir/ann.json: record ann/")
        return
    assert isinstance(it.answer, str) and isinstance(it.image_name, str) and it.image_name
    assert it.rles is None or isinstance(it.rles, list)


@FUZZ
@given(st.fixed_dictionaries({}, optional={"questions": st.lists(st.text(max_size=5)) | _json,
                                           "answer": st.lists(st.text(max_size=5)) | _json})
       | _json)
def test_parse_earthreason_qa_garbage(qa):
    try:
        questions, answer = readers.parse_earthreason_qa(qa, "qa.json", "s")
    except BadInput as e:
        assert str(e).startswith("qa.json: record s: ")
        return
    assert questions and all(isinstance(q, str) and q for q in questions)
    assert answer is None or answer.count("[SEG]") <= 1


@FUZZ
@given(st.binary(max_size=200) | st.sampled_from([b"\x89PNG\r\n\x1a\n", b"II*\x00",
                                                  b"\xff\xd8\xff\xda", b"MM\x00*\x00\x00\x00\x08"]))
def test_load_image_and_json_garbage(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.png"
        path.write_bytes(data)
        try:
            image = load_image(path, "r")
            assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        except BadInput as e:
            assert str(e).startswith(f"{path}: record r: ")
        try:
            readers.load_json(path)
        except BadInput as e:
            assert e.record_id is None and e.kind == "bad_file"


def test_empty_gt_mask_kept_for_evaluation_skipped_for_training(tmp_path):
    """An empty GT mask (RRSIS-D's release has some): an evaluation split keeps the record (every
    published metric scores it); the training split skips it with a count, under either policy,
    naming instances.json, where the mask is."""
    fx.write_rrsisd(tmp_path)
    inst = tmp_path / "rrsisd" / "instances.json"
    coco = json.loads(inst.read_text())
    empty = fx.rle(np.zeros((fx.H, fx.W), np.uint8))
    coco["annotations"][0]["segmentation"] = [empty]  # ref 0: train, 2 sentences
    coco["annotations"][2]["segmentation"] = [empty]  # ref 2: test
    inst.write_text(json.dumps(coco))
    (key, example), = datasets.generate_examples("rrsisd", tmp_path, "test", SkipReport())
    assert key == "2_0" and example["masks"].shape == (1, fx.H, fx.W)
    assert not example["masks"].any()
    for policy in ("raise", "skip"):
        report = SkipReport(policy)
        assert list(datasets.generate_examples("rrsisd", tmp_path, "train", report)) == []
        assert dict(report.counts) == {"empty_mask": 2} and report.kept == 0
        assert str(inst) in report.messages[0] and "no foreground" in report.messages[0]


def test_earthreason_nested_split_folder_and_skips_counted_per_question(tmp_path):
    """The release unpacks val as val/val/: read as val/. A bad triple costs one example per
    question of its QAs file (e1 has 2), not one per file."""
    expected = fx.write_earthreason(tmp_path)
    (tmp_path / "val").rename(tmp_path / "val_tmp")
    (tmp_path / "val").mkdir()
    (tmp_path / "val_tmp").rename(tmp_path / "val" / "val")
    assert [r.id for r in readers.read_earthreason(tmp_path, "val")] == \
        [e.id for e in expected["val"]]
    (tmp_path / "train" / "labels" / "e1.png").unlink()
    report = SkipReport("skip")
    ids = [r.id for r in readers.read_earthreason(tmp_path, "train", report)]
    assert ids == ["e2_0", "e3_0"] and dict(report.counts) == {"unpaired": 2}
    qa = tmp_path / "train" / "QAs" / "e2.json"
    qa.write_text(json.dumps({"questions": ["a?", "b?", "c?"], "answer": ["[SEG] [SEG]"]}))
    report = SkipReport("skip")
    assert [r.id for r in readers.read_earthreason(tmp_path, "train", report)] == ["e3_0"]
    assert dict(report.counts) == {"unpaired": 2, "mask_count": 3}
