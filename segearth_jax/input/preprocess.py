"""Image and mask preprocessing (docs/conventions.md, Input): Pillow for the image
resizes, numpy + OpenCV for the rest.

* `resize`: Pillow's `Image.resize` (BICUBIC / BILINEAR, antialiased when shrinking) of a uint8
  image, the resampler of the official code and of transformers' `SiglipImageProcessor`. The
  order of the two passes is applied here, as two single-axis Pillow resizes, rather than left
  to the installed Pillow, so the views do not depend on its version: by default Pillow <= 12's
  (width pass, then height pass), the Pillow of the official code's environment and the one we
  pin (gradio needs pillow < 13); `pass_order="pillow13"` gives Pillow 13's (python-pillow/
  Pillow#9549: vertical first when the height shrinks by more than twice what the width
  shrinks). The two differ only on such tall shrinks, by a gray level here and there.
* `siglip_view`: the SigLIP input, the whole image squashed to size x size (bicubic), /255,
  (x - 0.5) / 0.5: what transformers' `SiglipImageProcessor` (PIL backend) returns.
* `swin_view`: the Swin input, long edge to `size` (bilinear), padded bottom/right with 128,
  ImageNet normalization on the 0..255 scale. `canvas_extent` is the official code's
  detectron2 `ResizeShortestEdge(size, max_size=size)` arithmetic: short edge
  `int(short * size / long + 0.5)` (round half up), with the same float operations.
* `masks_to_canvas`: GT masks onto the same canvas (nearest to the content extent, zero padding).
* `masks_to_grid`: GT masks at SigLIP patch resolution for the spatial loss (section 3).
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from PIL import Image

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PAD_VALUE = 128  # official code: canvas padding before normalization
FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def _pil_resize(plane: np.ndarray, out_h: int, out_w: int, filter: str) -> np.ndarray:
    """One Pillow resize of a uint8 [H, W] ("L") or [H, W, 3] ("RGB") array."""
    im = Image.fromarray(plane).resize((out_w, out_h), resample=FILTERS[filter])
    return np.asarray(im)


def _resize_channels(img: np.ndarray, out_h: int, out_w: int, filter: str) -> np.ndarray:
    """RGB and gray in one Pillow call; any other channel count one "L" plane at a time (Pillow
    resamples the channels of an 8-bit image independently, so the result is the same; RGBA is
    not passed whole because Pillow premultiplies its alpha)."""
    if img.ndim == 2 or img.shape[2] == 3:
        return _pil_resize(img, out_h, out_w, filter)
    return np.stack([_pil_resize(img[..., c], out_h, out_w, filter)
                     for c in range(img.shape[2])], axis=-1)


def resize(img: np.ndarray, size: tuple[int, int], filter: str = "bicubic",
           pass_order: str = "horizontal") -> np.ndarray:
    """Pillow's `Image.resize((w, h), BICUBIC | BILINEAR)` of a uint8 [H, W, C] (or [H, W])
    image to size = (out_h, out_w) -> uint8 [out_h, out_w(, C)]; a new array even when the size
    does not change. When both axes change, each pass is one single-axis Pillow resize:

    pass_order: "pillow13" (Pillow >= 13): the vertical pass first when the height shrinks and
    `H - out_h > 2 * (W - out_w)` (found by probing Pillow 13.0.0: ~1500 random size pairs and
    ~1200 pairs at the boundary, no exception), otherwise horizontal first; "horizontal"
    (Pillow <= 12): always horizontal first. The two orders round differently (a gray level here
    and there); equal-ratio shrinks of images at most twice as tall as wide, the cases of this
    project, are horizontal first in both.
    """
    if img.dtype != np.uint8 or img.ndim not in (2, 3):
        raise ValueError(f"resize expects a uint8 [H, W(, C)] image, got {img.dtype} {img.shape}")
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; known: {sorted(FILTERS)}")
    if pass_order not in ("pillow13", "horizontal"):
        raise ValueError(f"unknown pass order {pass_order!r}; known: 'pillow13', 'horizontal'")
    out_h, out_w = size
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"invalid output size {size}")
    in_h, in_w = img.shape[:2]
    if (out_h, out_w) == (in_h, in_w):
        return img.copy()
    img = np.ascontiguousarray(img)
    if out_h != in_h and out_w != in_w:
        vertical_first = (pass_order == "pillow13" and out_h < in_h
                          and in_h - out_h > 2 * (in_w - out_w))
        first = (out_h, in_w) if vertical_first else (in_h, out_w)
        img = _resize_channels(img, *first, filter)
    return _resize_channels(img, out_h, out_w, filter)


@functools.lru_cache(maxsize=4)
def _siglip_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.float64)
    return ((v / 255.0 - 0.5) / 0.5).astype(np.float32)


def siglip_view(img: np.ndarray, size: int = 384) -> np.ndarray:
    """SigLIP input: uint8 [H, W, 3] -> float32 [size, size, 3], squashed (bicubic) to a square,
    scaled to [0, 1], normalized with mean = std = 0.5."""
    return cv2.LUT(resize(img, (size, size), "bicubic"), _siglip_lut())


def canvas_extent(h: int, w: int, size: int) -> tuple[int, int]:
    """(h1, w1): the image's extent on the size x size canvas, long edge = size. Same float
    operations as detectron2's ResizeShortestEdge(size, max_size=size) in the official code."""
    s = size * 1.0
    scale = s / min(h, w)
    newh, neww = (s, scale * w) if h < w else (scale * h, s)
    if max(newh, neww) > size:
        scale = size * 1.0 / max(newh, neww)
        newh, neww = newh * scale, neww * scale
    return int(newh + 0.5), int(neww + 0.5)


@functools.lru_cache(maxsize=4)
def _imagenet_lut() -> np.ndarray:
    v = np.arange(256, dtype=np.float32)[:, None]
    mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    return (v - mean) / std  # [256, 3], float32 like the official torch code


def swin_view(img: np.ndarray, size: int = 1024) -> tuple[np.ndarray, tuple[int, int]]:
    """Swin input: uint8 [H, W, 3] -> (float32 [size, size, 3], (h1, w1)): long edge resized to
    `size` (Pillow bilinear), padded bottom/right with 128, ImageNet-normalized (0..255 scale).
    (h1, w1) is the content extent on the canvas."""
    h1, w1 = canvas_extent(img.shape[0], img.shape[1], size)
    content = resize(img, (h1, w1), "bilinear")
    lut = _imagenet_lut()
    out = np.empty((size, size, 3), np.float32)
    out[:] = lut[PAD_VALUE]
    out[:h1, :w1] = cv2.LUT(np.ascontiguousarray(content), lut.reshape(256, 1, 3))
    return out, (h1, w1)


def masks_to_canvas(masks: np.ndarray, size: int, extent: tuple[int, int] | None = None
                    ) -> np.ndarray:
    """GT masks uint8 [N, H, W] -> uint8 [N, size, size] aligned with `swin_view`: nearest to the
    content extent (h1, w1), zero padding bottom/right.

    Nearest is cv2 INTER_NEAREST_EXACT (source pixel floor((j + 0.5) * in / out), the pixel-centre
    convention of Pillow's resize of the image); plain INTER_NEAREST (floor(j * in / out)) shifts
    masks up-left by up to one source pixel against the image. (The official code's
    `preprocess_mask` uses INTER_NEAREST, truncates the short edge and pads centred, which is
    misaligned with its top-left image; its training loss reads the original-size masks instead.)
    """
    n, h, w = masks.shape
    h1, w1 = extent if extent is not None else canvas_extent(h, w, size)
    out = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        out[i, :h1, :w1] = cv2.resize(np.ascontiguousarray(masks[i], dtype=np.uint8), (w1, h1),
                                      interpolation=cv2.INTER_NEAREST_EXACT)
    return out


def _torch_nearest(in_size: int, out_size: int) -> np.ndarray:
    """Source index of each output of PyTorch's `F.interpolate(mode="nearest")` (float32 math)."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def _torch_bilinear(in_size: int, out_size: int) -> np.ndarray:
    """(out x in) float32 weights of PyTorch's bilinear interpolation, align_corners=False,
    no antialias (float32 math as the CPU kernel)."""
    scale = np.float32(in_size) / np.float32(out_size)
    src = scale * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0))
    i0 = np.floor(src).astype(np.int64)
    lam1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1)
    m = np.zeros((out_size, in_size), np.float32)
    rows = np.arange(out_size)
    np.add.at(m, (rows, i0), np.float32(1) - lam1)
    np.add.at(m, (rows, i1), lam1)
    return m


OFFICIAL_GT_SIZE = 800  # official code: masks go to 800 x 800 (nearest) before the 27 x 27 grid


def masks_to_grid(masks: np.ndarray, grid: int, method: str = "paper") -> np.ndarray:
    """GT masks [N, H, W] (0/1) -> float32 0/1 [N, grid, grid], the target of the spatial loss
    (grid = SigLIP patches per side, the mask squashed like the SigLIP view).

    method "paper": a cell is 1 when the mask covers >= half of its area (area fraction by
    cv2 INTER_AREA, exact area weights when shrinking; masks smaller than the grid get
    INTER_AREA's bilinear upsampling). "official": nearest to 800 x 800, then bilinear to
    grid x grid (PyTorch semantics, align_corners=False), > 0.
    """
    n, h, w = masks.shape
    if method == "paper":
        out = np.zeros((n, grid, grid), np.float32)
        for i in range(n):
            frac = cv2.resize(masks[i].astype(np.float32), (grid, grid),
                              interpolation=cv2.INTER_AREA)
            out[i] = frac >= 0.5
        return out
    if method == "official":
        ny, nx = _torch_nearest(h, OFFICIAL_GT_SIZE), _torch_nearest(w, OFFICIAL_GT_SIZE)
        by = _torch_bilinear(OFFICIAL_GT_SIZE, grid)
        bx = _torch_bilinear(OFFICIAL_GT_SIZE, grid)
        # Compose: bilinear(nearest(m)) = By @ m[ny][:, nx] @ Bx^T = (By Sy) @ m @ (Bx Sx)^T,
        # with S the 0/1 selection matrices of the nearest step. Weights are >= 0, so "> 0" is
        # exactly "some source pixel with a positive weight is set".
        wy = np.zeros((grid, h), np.float32)
        np.add.at(wy, (slice(None), ny), by)
        wx = np.zeros((grid, w), np.float32)
        np.add.at(wx, (slice(None), nx), bx)
        vals = np.einsum("gh,nhw,kw->ngk", wy, masks.astype(np.float32), wx, optimize=True)
        return (vals > 0).astype(np.float32)
    raise ValueError(f"unknown spatial GT method {method!r}; known: 'paper', 'official'")
