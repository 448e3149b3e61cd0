"""Image and mask preprocessing (docs/design.md sections 2 and 3), numpy + OpenCV, no PIL at
runtime.

* `resize`: Pillow's `Image.resize` for 8-bit images, bit for bit (tested against Pillow 13):
  separable filter whose support widens by the downscale factor (antialiasing), bicubic a = -0.5
  or triangle (bilinear), 22-bit fixed-point coefficients, one pass per axis (horizontal first,
  except Pillow 13's vertical-first case), each rounded and clipped to uint8. Each pass is an
  (out x in) weight matrix (`weight_matrix`) applied to the input; the matrix is banded (at most
  `2 * ceil(support) + 1` taps per row), so it is stored as (first input index, taps) and applied
  as a banded matmul in int32, Pillow's accumulator: exact, and 2-4x faster than a dense float64
  GEMM at 1024 px (about 2.5x slower than Pillow's C loop). Channels are processed as planes,
  the horizontal pass on cv2-transposed planes so that every tap reads contiguous rows.
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

PRECISION_BITS = 32 - 8 - 2  # Pillow's Resample.c, 8-bit path.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
PAD_VALUE = 128  # official code: canvas padding before normalization


def _bicubic(x: np.ndarray) -> np.ndarray:
    """Pillow's bicubic filter (a = -0.5), support 2; same operation order as Resample.c."""
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _triangle(x: np.ndarray) -> np.ndarray:
    """Pillow's bilinear filter, support 1."""
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


FILTERS = {"bicubic": (_bicubic, 2.0), "bilinear": (_triangle, 1.0)}


@functools.lru_cache(maxsize=64)
def _taps(in_size: int, out_size: int, filter: str) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for one axis.

    Returns start [out] (first input index of each output) and taps [out, K] int32 fixed-point
    weights (2**22 = 1.0): output j = sum_k taps[j, k] * input[start[j] + k]; taps past the input
    edge are 0 and their index is clamped.
    """
    fn, support = FILTERS[filter]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    # C's (int) cast truncates toward zero.
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    x = np.arange(ksize)
    w = fn(((x[None, :] + xmin[:, None]) - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(x[None, :] < xmax[:, None], w, 0.0)
    ww = np.cumsum(w, axis=1)[:, -1:]  # sequential sum, as the C loop
    w = np.divide(w, ww, out=w.copy(), where=ww != 0.0)
    one = float(1 << PRECISION_BITS)
    k = np.trunc(np.where(w < 0, -0.5 + w * one, 0.5 + w * one)).astype(np.int32)
    return xmin, k


def weight_matrix(in_size: int, out_size: int, filter: str = "bicubic") -> np.ndarray:
    """The dense (out x in) float64 weight matrix of one resize pass (fixed point / 2**22)."""
    start, k = _taps(in_size, out_size, filter)
    m = np.zeros((out_size, in_size))
    for j in range(k.shape[1]):
        valid = start + j < in_size
        m[np.arange(out_size)[valid], (start + j)[valid]] += k[valid, j]
    return m / float(1 << PRECISION_BITS)


def _rows_pass(x: np.ndarray, out_size: int, filter: str) -> np.ndarray:
    """One 8-bit pass of Pillow's resampler along axis 1 of uint8 planes [C, N, R] -> [C, out, R]:
    int32 accumulation from 2**21 (rounding), >> 22, clip to 0..255. Each tap gathers whole
    contiguous rows and scales them by one weight per output row."""
    c, n, r = x.shape
    start, k = _taps(n, out_size, filter)
    acc = np.full((c, out_size, r), 1 << (PRECISION_BITS - 1), np.int32)
    tmp = np.empty_like(acc)
    for j in range(k.shape[1]):
        kj = k[:, j]
        if not kj.any():
            continue
        np.multiply(np.take(x, np.minimum(start + j, n - 1), axis=1), kj[None, :, None], out=tmp)
        acc += tmp
    acc >>= PRECISION_BITS  # arithmetic shift = floor, as Pillow's clip8
    return np.clip(acc, 0, 255).astype(np.uint8)


def _transpose_planes(x: np.ndarray) -> np.ndarray:
    """[C, A, B] -> [C, B, A], contiguous (cv2.transpose: ~10x faster than numpy's copy)."""
    return np.stack([cv2.transpose(p) for p in x])


def _vertical(x: np.ndarray, out_h: int, filter: str) -> np.ndarray:
    return _rows_pass(x, out_h, filter)


def _horizontal(x: np.ndarray, out_w: int, filter: str) -> np.ndarray:
    return _transpose_planes(_rows_pass(_transpose_planes(x), out_w, filter))


def resize(img: np.ndarray, size: tuple[int, int], filter: str = "bicubic",
           pass_order: str = "pillow13") -> np.ndarray:
    """Pillow-exact `Image.resize((w, h), BICUBIC | BILINEAR)` of a uint8 [H, W, C] (or [H, W])
    image to size = (out_h, out_w). A pass whose size does not change is skipped, as in Pillow.

    pass_order: "pillow13" (Pillow >= 13, python-pillow/Pillow#9549): the vertical pass runs
    first when the height shrinks by more than twice what the width shrinks,
    `H - out_h > 2 * (W - out_w)` (found by probing Pillow 13.0.0: ~1500 random size pairs and
    ~1200 pairs at the boundary, no exception); otherwise, and always for "horizontal"
    (Pillow <= 12), horizontal first. The two orders round differently (a gray level here and
    there); equal-ratio shrinks of images at most twice as tall as wide, the cases of this
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
    # Planes [C, H, W] (cv2.split/merge: fast channel (de)interleaving).
    planes = np.ascontiguousarray(img)[None] if img.ndim == 2 else np.stack(cv2.split(img))
    vertical_first = (pass_order == "pillow13" and out_h < in_h
                      and in_h - out_h > 2 * (in_w - out_w))
    if vertical_first:
        planes = _vertical(planes, out_h, filter)
    if out_w != in_w:
        planes = _horizontal(planes, out_w, filter)
    if not vertical_first and out_h != in_h:
        planes = _vertical(planes, out_h, filter)
    return planes[0] if img.ndim == 2 else cv2.merge(list(planes)).reshape(out_h, out_w, -1)


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
