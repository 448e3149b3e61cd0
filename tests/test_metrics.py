"""Metrics: every preset on hand-made masks with hand-counted I and U (exact up to float64
rounding, compared with pytest.approx at rel 1e-12), spaces checked against cv2 resizes done here,
count mismatch, subsets/average, markdown/JSON, merge and failures."""

import json

import cv2
import numpy as np
import pytest

from segearth_jax.metrics import (
    PRESETS,
    THRESHOLDS,
    Evaluator,
    Preset,
    match_counts,
    space_size,
    to_space,
)

EXACT = dict(rel=1e-12, abs=0.0)


def m(*rows: str) -> np.ndarray:
    """One bool mask from rows of '0'/'1'."""
    return np.array([[c == "1" for c in r] for r in rows], bool)


def stack(*masks: np.ndarray) -> np.ndarray:
    return np.stack(masks).astype(bool)


# Two samples; hand counts:
#   s1 mask A: gt 2 px, pred 1 px inside it          -> I=1, U=2, IoU 1/2
#   s1 mask B: gt 2 px, pred 3 px overlapping 1 px   -> I=1, U=4, IoU 1/4
#   s2 mask C: pred == gt, 4 px                       -> I=4, U=4, IoU 1
GT_S1 = stack(m("1100", "0000", "0000", "0000"), m("0000", "0000", "1100", "0000"))
PRED_S1 = stack(m("1000", "0000", "0000", "0000"), m("0000", "0000", "0111", "0000"))
GT_S2 = stack(m("0000", "0000", "0000", "1111"))
PRED_S2 = GT_S2.copy()
# Per mask: gIoU = (1/2 + 1/4 + 1) / 3 = 7/12; Pr@0.5 '>' = 1/3, '>=' = 2/3; Pr@0.6.. = 1/3.
# Per sample: s1 = (1+1)/(2+4) = 1/3, s2 = 1 -> gIoU = 2/3; Pr@0.5 '>' = 1/2.
# cIoU = (1+1+4) / (2+4+4) = 0.6 in every convention (4x4 -> 1024 or 480 is an integer scale).


def _two_samples(preset: str) -> dict:
    ev = Evaluator(preset)
    ev.add("s1", ["all"], PRED_S1, GT_S1)
    ev.add("s2", ["all"], PRED_S2, GT_S2)
    return ev.summary()["subsets"]["all"]


@pytest.mark.parametrize("preset,giou,pr50,pr60", [
    ("segearth_r2", 7 / 12, 1 / 3, 1 / 3),
    ("lisa", 7 / 12, 1 / 3, 1 / 3),
    ("rmsin", 7 / 12, 2 / 3, 1 / 3),
    ("segearth_r1", 2 / 3, 1 / 2, 1 / 2),
])
def test_presets_on_hand_counted_masks(preset, giou, pr50, pr60):
    row = _two_samples(preset)
    assert row["gIoU"] == pytest.approx(giou, **EXACT)
    assert row["cIoU"] == pytest.approx(0.6, **EXACT)
    assert row["Pr@0.5"] == pytest.approx(pr50, **EXACT)
    for t in THRESHOLDS[1:]:
        assert row[f"Pr@{t}"] == pytest.approx(pr60, **EXACT)
    assert (row["n_samples"], row["n_masks"]) == (2, 3)


def test_simple_iou_two_thirds():
    gt = stack(m("1100", "1100", "0000", "0000"))
    pred = stack(m("1110", "1110", "0000", "0000"))  # I = 4, U = 6.
    ev = Evaluator("lisa")
    ev.add("r", ["x"], pred, gt)
    row = ev.summary()["subsets"]["x"]
    assert row["gIoU"] == pytest.approx(2 / 3, **EXACT)
    assert row["cIoU"] == pytest.approx(2 / 3, **EXACT)
    assert [row[f"Pr@{t}"] for t in THRESHOLDS] == [1.0, 1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("preset,strict", [("segearth_r1", True), ("lisa", True),
                                           ("segearth_r2", True), ("rmsin", False)])
def test_pr_at_exactly_half(preset, strict):
    gt = stack(m("1111", "0000", "0000", "0000"))
    pred = stack(m("1100", "0000", "0000", "0000"))  # I = 2, U = 4: IoU exactly 0.5.
    ev = Evaluator(preset)
    ev.add("r", ["x"], pred, gt)
    row = ev.summary()["subsets"]["x"]
    assert row["gIoU"] == 0.5
    assert row["Pr@0.5"] == (0.0 if strict else 1.0)
    assert PRESETS[preset].pr_strict is strict


def test_empty_union_both_conventions():
    empty = np.zeros((1, 4, 4), bool)
    half_gt = stack(m("1100", "0000", "0000", "0000"))
    half_pred = stack(m("1000", "0000", "0000", "0000"))  # I = 1, U = 2.
    want = {  # preset: (gIoU of an all-empty sample, cIoU of it, gIoU of [empty, 1/2] sample)
        "lisa": (1.0, 1.0, (1.0 + 0.5) / 2),
        "segearth_r2": (1.0, 1.0, (1.0 + 0.5) / 2),
        "rmsin": (0.0, 0.0, (0.0 + 0.5) / 2),
        "segearth_r1": (1.0, 1.0, 1 / 2),  # Per sample: (0 + 1) / (0 + 2).
    }
    for preset, (g_empty, c_empty, g_mixed) in want.items():
        ev = Evaluator(preset)
        ev.add("e", ["empty"], empty, empty)
        ev.add("m", ["mixed"], np.concatenate([empty, half_pred]),
               np.concatenate([empty, half_gt]))
        s = ev.summary()["subsets"]
        assert s["empty"]["gIoU"] == g_empty, preset
        assert s["empty"]["cIoU"] == c_empty, preset
        assert s["mixed"]["gIoU"] == pytest.approx(g_mixed, **EXACT), preset
        assert s["mixed"]["cIoU"] == pytest.approx(0.5, **EXACT), preset


def test_match_counts():
    a, b, c = m("10", "00"), m("01", "00"), m("11", "11")
    preds = stack(a, b, c)
    np.testing.assert_array_equal(match_counts(preds[:1], 3), stack(a, a, a))
    np.testing.assert_array_equal(match_counts(preds[:2], 3), stack(a, b, b))
    np.testing.assert_array_equal(match_counts(preds, 2), stack(a, b))
    np.testing.assert_array_equal(match_counts(preds, 3), preds)
    z = match_counts(np.zeros((0, 2, 2), bool), 2)
    assert z.shape == (2, 2, 2) and not z.any()


def test_count_mismatch_in_the_evaluator():
    g1, g2 = m("1100", "0000", "0000", "0000"), m("0011", "0000", "0000", "0000")
    ev = Evaluator("lisa")
    # Fewer: the one prediction (== g1) is repeated: IoUs 1 and 0 (I = 0, U = 4).
    ev.add("fewer", ["fewer"], stack(g1), stack(g1, g2))
    # More: only the first prediction is scored: IoU 1.
    ev.add("more", ["more"], stack(g1, g2, ~g1), stack(g1))
    # None: empty masks: IoU 0 against a non-empty GT, 1 (empty union) against an empty one.
    ev.add("none", ["none"], np.zeros((0, 4, 4), bool), stack(g1, np.zeros((4, 4), bool)))
    s = ev.summary()["subsets"]
    assert s["fewer"]["gIoU"] == 0.5 and s["fewer"]["cIoU"] == pytest.approx(2 / 6, **EXACT)
    assert s["more"]["gIoU"] == 1.0 and s["more"]["n_masks"] == 1
    assert s["none"]["gIoU"] == 0.5 and s["none"]["cIoU"] == 0.0


def test_space_sizes():
    assert space_size(3, 5, "original") == (3, 5)
    assert space_size(3, 5, "letterbox") == (614, 1024)  # int(3 * 1024 / 5 + 0.5) = int(614.9).
    assert space_size(5, 3, "canvas") == (1024, 614)
    assert space_size(1, 3, "canvas") == (341, 1024)  # int(341.33 + 0.5).
    assert space_size(2000, 1000, "letterbox") == (1024, 512)
    assert space_size(3, 5, "square480") == (480, 480)


def test_letterbox_by_hand():
    # 1x3 -> 341x1024 nearest: column x samples source column floor(x * 3 / 1024), so source
    # columns 0, 1, 2 get 342, 341, 341 columns. GT = column 0, pred = columns 0-1:
    # original IoU 1/2; letterboxed I = 342 * 341, U = (342 + 341) * 341 -> 342 / 683.
    gt, pred = stack(m("100")), stack(m("110"))
    for preset, want in [("lisa", 0.5), ("segearth_r1", 342 / 683), ("segearth_r2", 342 / 683)]:
        ev = Evaluator(preset)
        ev.add("r", ["x"], pred, gt)
        assert ev.summary()["subsets"]["x"]["gIoU"] == pytest.approx(want, **EXACT), preset


def _cv2_iou(pred: np.ndarray, gt: np.ndarray, hw: tuple[int, int]) -> tuple[int, int]:
    """I and U of one mask pair after a cv2 nearest resize to hw = (h, w), counted here."""
    h, w = hw
    p = cv2.resize(pred.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    g = cv2.resize(gt.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return int((p & g).sum()), int((p | g).sum())


@pytest.mark.parametrize("preset,hw", [("segearth_r1", (796, 1024)), ("segearth_r2", (796, 1024)),
                                       ("rmsin", (480, 480)), ("lisa", (7, 9))])
def test_spaces_against_cv2_on_non_square_masks(preset, hw):
    rng = np.random.default_rng(0)
    gt = rng.random((2, 7, 9)) < 0.4  # 7x9 -> 796x1024 or 480x480: non-integer scales.
    pred = rng.random((2, 7, 9)) < 0.5
    counts = [_cv2_iou(pred[k], gt[k], hw) for k in range(2)]
    orig = [(int((pred[k] & gt[k]).sum()), int((pred[k] | gt[k]).sum())) for k in range(2)]
    if preset != "lisa":  # The resize must matter for this test to mean anything.
        assert [i / u for i, u in counts] != pytest.approx([i / u for i, u in orig], rel=1e-6)
    ev = Evaluator(preset)
    ev.add("r", ["x"], pred, gt)
    row = ev.summary()["subsets"]["x"]
    (i0, u0), (i1, u1) = counts
    giou = (i0 + i1) / (u0 + u1) if PRESETS[preset].unit == "sample" else (i0 / u0 + i1 / u1) / 2
    assert row["gIoU"] == pytest.approx(giou, **EXACT)
    assert row["cIoU"] == pytest.approx((i0 + i1) / (u0 + u1), **EXACT)
    assert to_space(gt, PRESETS[preset].space).shape == (2, *hw)


def test_subsets_and_average():
    ev = Evaluator("segearth_r2")
    ev.add("s1", ["b", "a"], PRED_S1, GT_S1)  # In both subsets.
    ev.add("s2", ["b"], PRED_S2, GT_S2)
    s = ev.summary()
    assert list(s["subsets"]) == ["a", "b"]
    a, b, avg = s["subsets"]["a"], s["subsets"]["b"], s["average"]
    assert a["gIoU"] == pytest.approx((1 / 2 + 1 / 4) / 2, **EXACT)  # 0.375
    assert a["cIoU"] == pytest.approx(2 / 6, **EXACT)
    assert b["gIoU"] == pytest.approx(7 / 12, **EXACT)
    assert avg["gIoU"] == pytest.approx((0.375 + 7 / 12) / 2, **EXACT)
    assert avg["cIoU"] == pytest.approx((2 / 6 + 0.6) / 2, **EXACT)
    assert (avg["n_samples"], avg["n_masks"], avg["n_subsets"]) == (2, 3, 2)

    one = Evaluator("segearth_r2")
    one.add("s1", ["only"], PRED_S1, GT_S1)
    s = one.summary()
    for key in ("gIoU", "cIoU", "Pr@0.5", "Pr@0.9", "n_samples", "n_masks"):
        assert s["average"][key] == s["subsets"]["only"][key]


def test_same_record_twice_in_a_subset_raises():
    ev = Evaluator("lisa")
    ev.add("s1", ["a"], PRED_S1, GT_S1)
    ev.add("s1", ["b"], PRED_S1, GT_S1)  # Another subset is fine.
    with pytest.raises(ValueError, match="'s1' was already scored"):
        ev.add("s1", ["a"], PRED_S1, GT_S1)


def test_markdown_and_json(tmp_path):
    ev = Evaluator("segearth_r1")
    ev.add("s1", ["all"], PRED_S1, GT_S1)
    ev.add("s2", ["all"], PRED_S2, GT_S2)
    ev.failed("s3", RuntimeError("no [SEG] in the answer"), ["all"])
    md = ev.markdown("LaSeRS test")
    assert "## LaSeRS test" in md and "`segearth_r1`" in md
    assert "| all | 66.67 | 60.00 | 50.00 | 50.00 | 50.00 | 50.00 | 50.00 | 2 | 3 |" in md
    assert "| average | 66.67 | 60.00 |" in md
    assert "`s3`: no [SEG] in the answer" in md
    ev.to_markdown(tmp_path / "r.md", "LaSeRS test")
    assert (tmp_path / "r.md").read_text() == md
    ev.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["preset"] == "segearth_r1" and "fractions" in data["values"]
    assert data["subsets"]["all"]["gIoU"] == pytest.approx(2 / 3, **EXACT)
    assert data["subsets"]["all"]["n_failed"] == 1


def test_failures_are_listed_not_scored():
    ev = Evaluator("lisa")
    ev.add("ok", ["a"], PRED_S2, GT_S2)
    ev.failed("bad2", "timeout", ["a"])
    ev.failed("bad1", ValueError("decode error"), ["b"])
    s = ev.summary()
    assert s["failures"] == [
        {"record_id": "bad1", "error": "decode error", "subsets": ["b"]},
        {"record_id": "bad2", "error": "timeout", "subsets": ["a"]}]
    assert s["subsets"]["a"]["n_samples"] == 1 and s["subsets"]["a"]["gIoU"] == 1.0
    assert s["subsets"]["b"]["n_samples"] == 0 and s["subsets"]["b"]["gIoU"] is None
    assert s["average"]["gIoU"] == 1.0 and s["average"]["n_failed"] == 2  # b has nothing scored.
    assert "| b | - | - |" in ev.markdown()


def test_merge_equals_single_process():
    rng = np.random.default_rng(1)
    records = []
    for k in range(9):
        n, mm = int(rng.integers(1, 4)), int(rng.integers(0, 4))
        h, w = int(rng.integers(3, 9)), int(rng.integers(3, 9))
        subsets = [["a"], ["b"], ["a", "b"]][k % 3]
        pred, gt = rng.random((mm, h, w)) < 0.5, rng.random((n, h, w)) < 0.5
        records.append((f"r{k}", subsets, pred, gt, int(rng.integers(0, 5))))
    for preset in PRESETS:
        single = Evaluator(preset)
        shards = [Evaluator(preset), Evaluator(preset)]
        for k, rec in enumerate(records):
            single.add(*rec)
            shards[k % 2].add(*rec)
        single.failed("bad", "oom")
        shards[1].failed("bad", "oom")
        merged = Evaluator(preset).merge([s.state() for s in reversed(shards)])
        assert merged.summary() == single.summary(), preset
        assert merged.markdown() == single.markdown()
        with pytest.raises(ValueError, match="already scored"):
            merged.merge([shards[0].state()])
        assert merged.summary() == single.summary()  # A refused merge adds nothing.
    with pytest.raises(ValueError, match="cannot merge"):
        Evaluator("lisa").merge([Evaluator("rmsin").state()])


def test_input_errors_name_the_record():
    ev = Evaluator("lisa")
    with pytest.raises(ValueError, match=r"record 'img7'.*\(4, 4\) != GT size \(4, 5\)"):
        ev.add("img7", ["a"], np.zeros((1, 4, 4), bool), np.zeros((1, 4, 5), bool))
    with pytest.raises(ValueError, match="record 'img8'.*threshold logits"):
        ev.add("img8", ["a"], np.zeros((1, 4, 4), np.float32), np.zeros((1, 4, 4), bool))
    with pytest.raises(ValueError, match="record 'img9'.*no GT mask"):
        ev.add("img9", ["a"], np.zeros((1, 4, 4), bool), np.zeros((0, 4, 4), bool))
    with pytest.raises(ValueError, match="record 'img10'.*\\[N, H, W\\]"):
        ev.add("img10", ["a"], np.zeros((4, 4), bool), np.zeros((1, 4, 4), bool))
    assert ev.summary()["subsets"] == {}
    with pytest.raises(ValueError, match="space"):
        Preset("x", "mask", 1.0, True, "square512", "")


def test_seg_emission_counts_by_subset():
    """`n_emitted` (generated `[SEG]`s) against the GT mask count, per subset: equal / fewer (but
    some) / more / none; records scored without it (teacher-forced) are not counted."""
    ev = Evaluator("segearth_r2")
    gt2, gt1 = np.ones((2, 4, 4), bool), np.ones((1, 4, 4), bool)
    ev.add("eq", ["a"], gt2, gt2, n_emitted=2)
    ev.add("few", ["a"], gt2[:1], gt2, n_emitted=1)
    ev.add("more", ["a", "b"], gt2, gt1, n_emitted=9)
    ev.add("none", ["b"], gt1[:0], gt1, n_emitted=0)
    units = ev.add("forced", ["c"], gt2, gt2)
    assert units == [1.0, 1.0]
    s = ev.summary()["subsets"]
    assert s["a"]["seg_emission"] == dict(equal=1, fewer=1, more=1, none=0)
    assert s["b"]["seg_emission"] == dict(equal=0, fewer=0, more=1, none=1)
    assert "seg_emission" not in s["c"]
    assert "| a | 1 | 1 | 1 | 0 |" in ev.markdown()
