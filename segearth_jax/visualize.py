"""Pictures of predictions: mask overlays named after the answer's `<p>name</p>[SEG]`, attention
heatmaps (as the paper's attention figures) and COCO RLE for storing masks. numpy + OpenCV only;
images are RGB uint8 [H, W, 3] throughout (converted to BGR only when written).
"""

from __future__ import annotations

import colorsys
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

# Distinct RGB colours, in order of use; more masks continue with golden-ratio hues.
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (170, 110, 40),
)
_NAMED_SEG = re.compile(r"(?:<p>((?:(?!</?p>).)*?)</p>\s*)?\[SEG\]", re.DOTALL)


def parse_targets(answer: str) -> list[str]:
    """The name of each `[SEG]` in order: the `<p>name</p>` right before it (whitespace between
    allowed), else "target i" (1-based)."""
    names = []
    for i, match in enumerate(_NAMED_SEG.finditer(answer), start=1):
        name = (match.group(1) or "").strip()
        names.append(name or f"target {i}")
    return names


def color(i: int) -> tuple[int, int, int]:
    """RGB colour of the i-th mask."""
    if i < len(PALETTE):
        return PALETTE[i]
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
    return round(255 * r), round(255 * g), round(255 * b)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _label_anchor(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the mask pixel closest to the mask's centroid."""
    ys, xs = np.nonzero(mask)
    k = np.argmin((ys - ys.mean()) ** 2 + (xs - xs.mean()) ** 2)
    return int(xs[k]), int(ys[k])


def _put_label(out: np.ndarray, text: str, anchor: tuple[int, int], rgb: tuple[int, int, int]):
    """Writes `text` centred on `anchor`, kept inside the image, with a dark outline."""
    h, w = out.shape[:2]
    scale = max(0.3, min(h, w) / 1000)
    thick = max(1, round(2 * scale))
    font = cv2.FONT_HERSHEY_SIMPLEX
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    x = int(np.clip(anchor[0] - tw // 2, 0, max(0, w - tw)))
    y = int(np.clip(anchor[1] + th // 2, th, max(th, h - 1 - base)))
    cv2.putText(out, text, (x, y), font, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(out, text, (x, y), font, scale, rgb, thick, cv2.LINE_AA)


def overlay(image: np.ndarray, masks: np.ndarray, names: list[str], alpha: float = 0.5,
            contours: bool = True, labels: bool = True) -> np.ndarray:
    """RGB uint8 [H, W, 3] with masks [N, H, W] blended in distinct colours (later masks on top):
    pixel = round((1 - alpha) * pixel + alpha * colour); then each mask's outline and its name.
    Pixels outside every mask are unchanged except where outlines or names are drawn."""
    image = _check_image(image)
    masks = np.asarray(masks).astype(bool)
    if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
        raise ValueError(f"masks must be [N, H, W] with (H, W) = {image.shape[:2]}, "
                         f"got {masks.shape}")
    if len(names) != len(masks):
        raise ValueError(f"{len(names)} names for {len(masks)} masks: {names}")
    out = image.astype(np.float32)
    for i, mask in enumerate(masks):
        out[mask] = (1 - alpha) * out[mask] + alpha * np.asarray(color(i), np.float32)
    out = np.clip(np.round(out), 0, 255).astype(np.uint8)
    thick = max(1, round(min(image.shape[:2]) / 400))
    if contours:
        for i, mask in enumerate(masks):
            lines, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL,
                                        cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, lines, -1, color(i), thick)
    if labels:
        for i, (mask, name) in enumerate(zip(masks, names, strict=True)):
            if mask.any():
                _put_label(out, name, _label_anchor(mask), color(i))
    return out


def attention_heatmap(image: np.ndarray, attn: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB uint8 [H, W, 3]: attention [g, g'] min-max normalized, bilinearly upsampled to the
    image, coloured with cv2.COLORMAP_JET and blended: (1 - alpha) * image + alpha * heat."""
    image = _check_image(image)
    attn = np.asarray(attn, np.float64)
    if attn.ndim != 2 or not np.isfinite(attn).all():
        raise ValueError(f"attention must be a finite [g, g] map, got shape {attn.shape}")
    lo, hi = attn.min(), attn.max()
    norm = (attn - lo) / (hi - lo) if hi > lo else np.zeros_like(attn)
    h, w = image.shape[:2]
    up = cv2.resize(norm.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = cv2.applyColorMap(np.round(255 * np.clip(up, 0, 1)).astype(np.uint8),
                             cv2.COLORMAP_JET)
    heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
    blend = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(blend), 0, 255).astype(np.uint8)


def masks_to_rle(masks: np.ndarray) -> list[dict]:
    """[N, H, W] bool -> N COCO RLEs {"size": [H, W], "counts": str} (pycocotools)."""
    masks = np.asarray(masks).astype(np.uint8)
    if masks.ndim != 3:
        raise ValueError(f"masks must be [N, H, W], got shape {masks.shape}")
    if len(masks) == 0:
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    return [{"size": [int(s) for s in r["size"]], "counts": r["counts"].decode("ascii")}
            for r in rles]


def rle_to_masks(rles: list[dict], size: tuple[int, int] | None = None) -> np.ndarray:
    """COCO RLEs (compressed "counts" as str/bytes, or uncompressed lists) -> [N, H, W] bool.
    `size` = (H, W) gives the shape of an empty list."""
    if not rles:
        if size is None:
            raise ValueError("no RLE given and no size: cannot tell the mask shape")
        return np.zeros((0, *size), bool)
    coco = []
    for k, rle in enumerate(rles):
        h, w = (int(s) for s in rle["size"])
        if size is not None and (h, w) != tuple(size):
            raise ValueError(f"RLE {k} has size {[h, w]}, expected {list(size)}")
        size = (h, w)
        coco.append(mask_utils.frPyObjects(rle, h, w) if isinstance(rle["counts"], list) else rle)
    with warnings.catch_warnings():  # Raised inside pycocotools' Cython decode under numpy 2.
        warnings.filterwarnings("ignore", "__array__ implementation", DeprecationWarning)
        return mask_utils.decode(coco).transpose(2, 0, 1).astype(bool)  # [H, W, N] -> [N, H, W]


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Writes an RGB uint8 [H, W, 3] image (cv2.imwrite, after RGB -> BGR)."""
    try:
        rgb = _check_image(rgb)
        ok = cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    except (cv2.error, ValueError) as e:
        raise OSError(f"could not write {path}: {e}") from e
    if not ok:
        raise OSError(f"could not write {path} (does its folder exist?)")
