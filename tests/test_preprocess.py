"""Image and mask preprocessing against Pillow, transformers' SiglipImageProcessor and PyTorch.

Tolerances: `resize` is bit-exact with Pillow 13 (max abs diff 0, all pixels exact); the SigLIP
view matches `SiglipImageProcessorPil` to 1e-6 (float rounding of the normalization; one gray
level would be 2/255 = 7.8e-3); the Swin view matches Pillow's bilinear resize + 128 padding +
ImageNet normalization exactly; the "official" spatial GT matches torch's F.interpolate exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from segearth_jax.input import preprocess as P

PIL_FILTER = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def _pil_resize(img: np.ndarray, size: tuple[int, int], filter: str) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size[::-1], resample=PIL_FILTER[filter]))


def _smooth_image(rng, h: int, w: int) -> np.ndarray:
    """Noise plus gradients: both flat and busy regions."""
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([255 * yy / max(h - 1, 1), 255 * xx / max(w - 1, 1),
                     127 + 100 * np.sin(xx / 3.0 + yy / 5.0)], -1)
    return np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255).astype(np.uint8)


# (in_h, in_w) -> [(out_h, out_w)]: down/up scales, non-square, one-axis, and cases where
# Pillow 13 runs the vertical pass first (height shrinks > 2x what the width shrinks).
CASES = [
    ((1024, 1024), [(384, 384)]),
    ((800, 600), [(384, 384), (56, 56), (1024, 768)]),
    ((37, 53), [(56, 56), (17, 29), (37, 20), (90, 53)]),
    ((100, 64), [(56, 56), (17, 29), (201, 64)]),
    ((300, 40), [(56, 56), (30, 45)]),
    ((5, 7), [(64, 40)]),
]


@pytest.mark.parametrize("filter", ["bicubic", "bilinear"])
def test_resize_is_pillow_exact(filter):
    rng = np.random.default_rng(0)
    total = exact = 0
    for (h, w), outs in CASES:
        for img in (rng.integers(0, 256, (h, w, 3), dtype=np.uint8), _smooth_image(rng, h, w)):
            for size in outs:
                ours, ref = P.resize(img, size, filter), _pil_resize(img, size, filter)
                assert ours.shape == ref.shape and ours.dtype == np.uint8
                diff = np.abs(ours.astype(int) - ref.astype(int))
                total, exact = total + diff.size, exact + int((diff == 0).sum())
                assert diff.max() == 0, f"{(h, w)} -> {size} {filter}: max diff {diff.max()}"
    assert exact == total  # fraction exact: 1.0


def test_resize_horizontal_first_is_two_single_axis_pillow_resizes():
    """pass_order="horizontal" (Pillow <= 12, the default): Pillow's width-only resize, then
    height-only; "pillow13" differs on these tall shrinks."""
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (100, 64, 3), dtype=np.uint8)
    for size in [(56, 56), (17, 29)]:  # vertical-first cases under Pillow 13
        ref = _pil_resize(_pil_resize(img, (100, size[1]), "bicubic"), size, "bicubic")
        np.testing.assert_array_equal(P.resize(img, size, "bicubic", pass_order="horizontal"), ref)
        assert np.array_equal(P.resize(img, size, "bicubic"), ref)  # the default
        assert not np.array_equal(P.resize(img, size, "bicubic", pass_order="pillow13"), ref)


def test_resize_grayscale_and_identity():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    np.testing.assert_array_equal(P.resize(img, (20, 45)), _pil_resize(img, (20, 45), "bicubic"))
    same = P.resize(img, (40, 30))
    np.testing.assert_array_equal(same, img)
    assert same is not img


def test_resize_other_channel_counts_are_per_channel_pillow():
    """[H, W, 1] and [H, W, 4] (not RGBA to Pillow, which would premultiply the alpha): each
    channel as Pillow resizes it in an RGB or gray image."""
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 53, 4), dtype=np.uint8)
    img[..., 3] = rng.integers(0, 2, (37, 53)) * 255  # an alpha-like channel
    for size in [(20, 30), (56, 56)]:  # horizontal first in every Pillow version
        out = P.resize(img, size)
        assert out.shape == (*size, 4)
        np.testing.assert_array_equal(out[..., :3], _pil_resize(img[..., :3], size, "bicubic"))
        np.testing.assert_array_equal(out[..., 3], _pil_resize(img[..., 3].copy(), size,
                                                               "bicubic"))
        np.testing.assert_array_equal(P.resize(img[..., :1], size)[..., 0], out[..., 0])


@pytest.mark.parametrize("hw", [(37, 53), (120, 80), (56, 56), (200, 31)])
def test_siglip_view_matches_transformers(hw):
    from transformers import SiglipImageProcessorPil

    rng = np.random.default_rng(4)
    img = _smooth_image(rng, *hw)
    proc = SiglipImageProcessorPil(size={"height": 56, "width": 56})
    ref = np.asarray(proc(images=img, return_tensors="np")["pixel_values"][0]).transpose(1, 2, 0)
    ours = P.siglip_view(img, 56)
    assert ours.shape == (56, 56, 3) and ours.dtype == np.float32
    assert np.abs(ours - ref).max() <= 1e-6


def test_canvas_extent_official_convention():
    # long edge -> size, short edge int(x + 0.5) (round half up)
    assert P.canvas_extent(30, 50, 64) == (38, 64)  # 38.4
    assert P.canvas_extent(50, 30, 64) == (64, 38)
    assert P.canvas_extent(45, 50, 64) == (58, 64)  # 57.6
    assert P.canvas_extent(5, 8, 64) == (40, 64)  # exact
    assert P.canvas_extent(1024, 1024, 1024) == (1024, 1024)
    assert P.canvas_extent(800, 800, 1024) == (1024, 1024)
    assert P.canvas_extent(600, 800, 1024) == (768, 1024)
    assert P.canvas_extent(1, 128, 64) == (1, 64)  # 0.5 -> 1

    def official(h, w, size):  # segearth_r2/datasets/dataset.py: preprocess_image (float path)
        s = size * 1.0
        scale = s / min(h, w)
        newh, neww = (s, scale * w) if h < w else (scale * h, s)
        if max(newh, neww) > size:
            scale = size * 1.0 / max(newh, neww)
            newh, neww = newh * scale, neww * scale
        return int(newh + 0.5), int(neww + 0.5)

    rng = np.random.default_rng(5)
    for h, w in rng.integers(1, 3000, (200, 2)):
        assert P.canvas_extent(int(h), int(w), 1024) == official(int(h), int(w), 1024)


@pytest.mark.parametrize("hw,extent", [((30, 50), (38, 64)), ((50, 30), (64, 38))])
def test_swin_view_constant_image(hw, extent):
    color = np.array([200, 30, 90], np.uint8)
    img = np.broadcast_to(color, (*hw, 3)).copy()
    pixels, (h1, w1) = P.swin_view(img, 64)
    assert (h1, w1) == extent and pixels.shape == (64, 64, 3) and pixels.dtype == np.float32
    mean, std = np.float32(P.IMAGENET_MEAN), np.float32(P.IMAGENET_STD)
    inside = (color.astype(np.float32) - mean) / std
    pad = (np.float32(128) - mean) / std
    np.testing.assert_array_equal(pixels[:h1, :w1], np.broadcast_to(inside, (h1, w1, 3)))
    np.testing.assert_array_equal(pixels[h1:], np.broadcast_to(pad, (64 - h1, 64, 3)))
    np.testing.assert_array_equal(pixels[:, w1:], np.broadcast_to(pad, (64, 64 - w1, 3)))


@pytest.mark.parametrize("hw", [(37, 53), (53, 37), (64, 64), (20, 30)])
def test_swin_view_matches_pillow_pipeline(hw):
    """The official code: PIL bilinear to (h1, w1), np.pad 128, (x - mean) / std in float32."""
    img = _smooth_image(np.random.default_rng(6), *hw)
    pixels, (h1, w1) = P.swin_view(img, 64)
    ref = np.pad(_pil_resize(img, (h1, w1), "bilinear"), ((0, 64 - h1), (0, 64 - w1), (0, 0)),
                 constant_values=128)
    ref = (ref.astype(np.float32) - np.float32(P.IMAGENET_MEAN)) / np.float32(P.IMAGENET_STD)
    np.testing.assert_array_equal(pixels, ref)


def test_masks_to_canvas_stays_on_the_object():
    """A mask drawn where a coloured rectangle is stays on the rectangle after both views."""
    h, w, size = 50, 30, 64
    img = np.full((h, w, 3), 20, np.uint8)
    img[10:30, 5:20] = (250, 250, 250)
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 10:30, 5:20] = 1
    masks[1, 40:50, 25:30] = 1  # touches the bottom-right corner of the content
    pixels, extent = P.swin_view(img, size)
    canvas = P.masks_to_canvas(masks, size, extent)
    assert canvas.shape == (2, size, size) and canvas.dtype == np.uint8
    h1, w1 = extent
    assert canvas[:, h1:].sum() == 0 and canvas[:, :, w1:].sum() == 0  # padding is background
    # The image's bright region, thresholded half way between the two colours (bilinear blur
    # at the border), is exactly the mask: rows 10..30 * 64/50 = 12.8..38.4 -> pixel centres
    # 13..37, columns 5..20 * 38/30 = 6.3..25.3 -> 6..24.
    bright = pixels[..., 0] > (135 - P.IMAGENET_MEAN[0]) / P.IMAGENET_STD[0]
    on = canvas[0].astype(bool)
    np.testing.assert_array_equal(on, bright)
    ys, xs = np.nonzero(on)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (13, 37, 6, 24)
    ys, xs = np.nonzero(canvas[1])
    assert ys.max() == h1 - 1 and xs.max() == w1 - 1


def _area_fraction(mask: np.ndarray, grid: int) -> np.ndarray:
    """Exact area fraction of the squashed mask per cell: upsample by `grid` (each source pixel
    becomes grid x grid subpixels), then each cell is an H x W block of subpixels."""
    h, w = mask.shape
    up = np.kron(mask.astype(np.float64), np.ones((grid, grid)))
    return up.reshape(grid, h, grid, w).mean(axis=(1, 3))


@pytest.mark.parametrize("hw,grid", [((8, 8), 4), ((6, 6), 4), ((30, 50), 4), ((81, 54), 27),
                                     ((100, 77), 27)])
def test_masks_to_grid_paper_is_area_fraction(hw, grid):
    rng = np.random.default_rng(7)
    masks = np.stack([(rng.random(hw) > p).astype(np.uint8) for p in (0.3, 0.5, 0.7)])
    # plus a blob, so cells are both full and partial
    blob = np.zeros(hw, np.uint8)
    blob[hw[0] // 4: 3 * hw[0] // 4, hw[1] // 3:] = 1
    masks = np.concatenate([masks, blob[None]])
    out = P.masks_to_grid(masks, grid, "paper")
    assert out.shape == (4, grid, grid) and out.dtype == np.float32
    for m, o in zip(masks, out, strict=True):
        np.testing.assert_array_equal(o, (_area_fraction(m, grid) >= 0.5).astype(np.float32))


def test_masks_to_grid_paper_hand_computed():
    m = np.zeros((8, 8), np.uint8)
    m[0:2, 0:2] = 1  # cell (0, 0) full
    m[2:4, 2] = 1  # cell (1, 1) half -> 1 (>= 0.5)
    m[4, 4] = 1  # cell (2, 2) a quarter -> 0
    m[6:8, 6:8] = 1
    m[6, 6] = 0  # cell (3, 3) three quarters -> 1
    expect = np.zeros((4, 4), np.float32)
    expect[0, 0] = expect[1, 1] = expect[3, 3] = 1
    np.testing.assert_array_equal(P.masks_to_grid(m[None], 4, "paper")[0], expect)


@pytest.mark.parametrize("hw,grid", [((800, 800), 27), ((37, 53), 27), ((120, 90), 4),
                                     ((1000, 700), 27), ((400, 400), 27)])
def test_masks_to_grid_official_matches_torch(hw, grid):
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(8)
    masks = np.zeros((3, *hw), np.uint8)
    masks[0] = rng.random(hw) > 0.999  # sparse dots: tests which source pixels get weight
    masks[1, hw[0] // 3: hw[0] // 2, hw[1] // 5: hw[1] // 4] = 1
    masks[2, -1, -1] = 1  # a corner pixel
    ours = P.masks_to_grid(masks, grid, "official")
    m = torch.from_numpy(masks).float()[:, None]
    m = F.interpolate(m, size=(800, 800), mode="nearest")
    ref = (F.interpolate(m, size=(grid, grid), mode="bilinear", align_corners=False) > 0)
    np.testing.assert_array_equal(ours, ref[:, 0].numpy().astype(np.float32))


def test_unknown_options_raise():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown filter"):
        P.resize(img, (2, 2), "lanczos")
    with pytest.raises(ValueError, match="spatial GT"):
        P.masks_to_grid(np.zeros((1, 4, 4), np.uint8), 2, "mean")
    with pytest.raises(ValueError, match="uint8"):
        P.resize(img.astype(np.float32), (2, 2))
