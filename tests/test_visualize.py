"""Visualization: target names, overlay pixel math (exact, uint8), heatmap placement, RLE round
trip with hand-encoded counts, PNG writing, tiny and non-square images."""

import cv2
import numpy as np
import pytest

from segearth_jax.visualize import (
    PALETTE,
    attention_heatmap,
    color,
    masks_to_rle,
    overlay,
    parse_targets,
    rle_to_masks,
    write_png,
)


@pytest.mark.parametrize("answer,want", [
    ("It is the <p>building</p>[SEG] next to the <p>ground track field</p> [SEG].",
     ["building", "ground track field"]),
    ("[SEG] and [SEG]", ["target 1", "target 2"]),
    ("<p>road</p> is near [SEG]", ["target 1"]),  # Not immediately before.
    ("<p>a</p><p>b</p>[SEG] then [SEG]", ["b", "target 2"]),
    ("<p> </p>[SEG]<p>lake</p>[SEG]", ["target 1", "lake"]),
    ("no target here", []),
])
def test_parse_targets(answer, want):
    assert parse_targets(answer) == want


def _scene(h=20, w=30, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((2, h, w), bool)
    masks[0, 2:10, 3:15] = True
    masks[1, 6:16, 10:25] = True  # Overlaps mask 0 at [6:10, 10:15].
    return image, masks


def test_overlay_alpha_math_and_untouched_background():
    image, masks = _scene()
    out = overlay(image, masks, ["a", "b"], alpha=0.25, contours=False, labels=False)
    assert out.dtype == np.uint8 and out.shape == image.shape
    c0, c1 = np.array(PALETTE[0], float), np.array(PALETTE[1], float)
    px = image.astype(float)
    # Only mask 0 at (3, 4); only mask 1 at (14, 20); both at (7, 12) (mask 1 drawn last).
    np.testing.assert_array_equal(out[3, 4], np.round(0.75 * px[3, 4] + 0.25 * c0))
    np.testing.assert_array_equal(out[14, 20], np.round(0.75 * px[14, 20] + 0.25 * c1))
    # Exact in binary floating point (sixteenths), rounded once at the end.
    np.testing.assert_array_equal(
        out[7, 12], np.round(0.75 * (0.75 * px[7, 12] + 0.25 * c0) + 0.25 * c1))
    outside = ~masks.any(0)
    np.testing.assert_array_equal(out[outside], image[outside])
    assert (out[masks.any(0)] != image[masks.any(0)]).any(axis=-1).mean() > 0.9

    # Outlines (1 px below 400 px) lie on mask pixels: the background is still untouched.
    with_lines = overlay(image, masks, ["a", "b"], alpha=0.25, labels=False)
    np.testing.assert_array_equal(with_lines[outside], image[outside])
    np.testing.assert_array_equal(with_lines[2, 5], PALETTE[0])  # Top edge of mask 0.
    np.testing.assert_array_equal(with_lines[15, 20], PALETTE[1])  # Bottom edge of mask 1.


def test_overlay_writes_names():
    image = np.full((120, 200, 3), 100, np.uint8)
    masks = np.zeros((1, 120, 200), bool)
    masks[0, 40:80, 60:140] = True
    plain = overlay(image, masks, ["lake"], contours=False, labels=False)
    named = overlay(image, masks, ["lake"], contours=False)
    changed = np.argwhere((plain != named).any(-1))
    assert len(changed) > 20
    # The name is centred on the mask (anchor = centroid pixel (100, 60)).
    assert abs(changed[:, 0].mean() - 60) < 10 and abs(changed[:, 1].mean() - 100) < 15
    dark = named.astype(int).sum(-1).min()  # Its dark outline: darker than anything in `plain`.
    assert dark < 0.5 * plain.astype(int).sum(-1).min()


def test_distinct_colours():
    colours = [color(i) for i in range(60)]
    assert len(set(colours)) == 60
    assert all(0 <= v <= 255 for c in colours for v in c)


@pytest.mark.parametrize("h,w", [(8, 8), (1, 1), (5, 13), (300, 7)])
def test_tiny_and_non_square_images(h, w):
    rng = np.random.default_rng(h * w)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = rng.random((3, h, w)) < 0.4
    masks[2] = False  # An empty mask is skipped, not an error.
    out = overlay(image, masks, ["a very long target name", "b", "c"])
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert overlay(image, np.zeros((0, h, w), bool), []).shape == (h, w, 3)
    heat = attention_heatmap(image, rng.random((3, 2)))
    assert heat.shape == (h, w, 3) and heat.dtype == np.uint8


def test_overlay_rejects_wrong_shapes():
    image, masks = _scene()
    with pytest.raises(ValueError, match="2 names for 1 masks"):
        overlay(image, masks[:1], ["a", "b"])
    with pytest.raises(ValueError, match=r"\(H, W\) = \(20, 30\)"):
        overlay(image, masks[:, :10], ["a", "b"])
    with pytest.raises(ValueError, match="RGB uint8"):
        overlay(image.astype(np.float32), masks, ["a", "b"])


def _jet_index(rgb: np.ndarray) -> np.ndarray:
    """Inverse of COLORMAP_JET: the 0..255 level whose colour is nearest to each pixel."""
    lut = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[None], cv2.COLORMAP_JET)[0]
    lut = lut[:, ::-1].astype(int)  # BGR -> RGB.
    d = ((rgb.reshape(-1, 1, 3).astype(int) - lut[None]) ** 2).sum(-1)
    return d.argmin(-1).reshape(rgb.shape[:2])


def test_attention_heatmap_places_the_hot_cell():
    # Cells of 9 x 15 pixels (odd), so a pixel centre falls exactly on each cell centre.
    image = np.zeros((36, 60, 3), np.uint8)
    attn = np.full((4, 4), 0.1)
    attn[1, 2] = 3.0  # Image block rows 9:18, cols 30:45; centre pixel (13, 37).
    attn[3, 0] = -1.0  # Coldest: rows 27:36, cols 0:15.
    heat = attention_heatmap(image, attn, alpha=1.0)
    assert heat.shape == (36, 60, 3) and heat.dtype == np.uint8
    level = _jet_index(heat)
    assert level[13, 37] == 255 and level.max() == 255
    ys, xs = np.nonzero(level == 255)
    assert ys.min() >= 9 and ys.max() < 18 and xs.min() >= 30 and xs.max() < 45
    ys, xs = np.nonzero(level == 0)
    assert len(ys) and ys.min() >= 27 and xs.max() < 15
    # The background cells (0.1 -> (0.1 + 1) / 4 = 0.275 after min-max) far from both.
    assert abs(level[4, 7] - round(255 * 0.275)) <= 1

    # alpha blends with the image: out = round(0.5 * image + 0.5 * heat) (uint8).
    image = np.full((36, 60, 3), 200, np.uint8)
    half = attention_heatmap(image, attn, alpha=0.5)
    np.testing.assert_array_equal(half, np.round(0.5 * 200 + 0.5 * heat.astype(float)))
    # A constant map is all-cold, not NaN: JET(0) is RGB (0, 0, 128).
    flat = attention_heatmap(np.zeros((4, 4, 3), np.uint8), np.ones((2, 2)), alpha=1.0)
    assert (flat == np.array([0, 0, 128])).all()
    with pytest.raises(ValueError, match="finite"):
        attention_heatmap(image, np.full((2, 2), np.nan))


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    masks = rng.random((3, 7, 11)) < 0.5
    rles = masks_to_rle(masks)
    assert len(rles) == 3
    assert all(isinstance(r["counts"], str) and r["size"] == [7, 11] for r in rles)
    np.testing.assert_array_equal(rle_to_masks(rles), masks)
    assert rle_to_masks([], size=(7, 11)).shape == (0, 7, 11)
    assert masks_to_rle(np.zeros((0, 7, 11), bool)) == []


def test_rle_by_hand():
    # [[0, 1], [1, 1]] in column-major order is 0, 1, 1, 1: runs [1, 3] -> chars "1", "3".
    mask = np.array([[[0, 1], [1, 1]]], bool)
    assert masks_to_rle(mask) == [{"size": [2, 2], "counts": "13"}]
    # Uncompressed counts (COCO iscrowd style): runs 1 zero, 2 ones, 3 zeros, column-major.
    got = rle_to_masks([{"size": [2, 3], "counts": [1, 2, 3]}])
    np.testing.assert_array_equal(got, [[[0, 1, 0], [1, 0, 0]]])
    with pytest.raises(ValueError, match="expected"):
        rle_to_masks(masks_to_rle(mask) + [{"size": [3, 3], "counts": "9"}])


def test_write_png(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
    write_png(tmp_path / "x.png", rgb)
    back = cv2.imread(str(tmp_path / "x.png"), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(back[..., ::-1], rgb)
    with pytest.raises(OSError, match="missing/x.png"):
        write_png(tmp_path / "missing" / "x.png", rgb)
    with pytest.raises(OSError, match="x.unknownext"):
        write_png(tmp_path / "x.unknownext", rgb)
