"""Whole-scene prediction: one instruction over a large raster (GeoTIFF, or a plain PNG/JPEG), in
sliding windows of the model's input size.

    python -m segearth_jax.predict --checkpoint DIR --scene scene.tif --prompt "..." --out DIR

Windows of `image_size` pixels (the model's canvas, no resampling) overlap by `overlap` of their
size and are run `batch_size` at a time. Target i of the scene is the i-th `[SEG]` of each
window's answer (named by the most common `<p>` name among the windows that emit it). Each
window's mask logits, at full resolution, are blended into the scene with a weight that is 1 in
the window's centre and falls linearly to `EDGE_WEIGHT` at its border, so overlaps average
smoothly and no seam shows where windows meet; a window that does not emit target i counts as
background (`ABSENT_LOGIT`) for it. The blended logits are thresholded at 0 and written as one
label band (0 = background, i + 1 = target i, the highest logit wins where targets overlap).

Memory is bounded by one row of windows: windows are read from the raster and their results
written to the output strip by strip (the float accumulators span `image_size` rows of the
scene, never the whole scene); the overview reads both rasters decimated, and the polygons are
traced on the uint8 label band (1 byte per scene pixel, the one whole-scene array).

Outputs in `out`: `mask.tif` (uint8 labels, the source's CRS and transform, deflate),
`targets.geojson` (polygons of each target in the source CRS, `rasterio.features.shapes` on the
label raster, properties `target` and `name`), `overview.png` (the scene at <= 2048 px with the
targets drawn), `scene.json` (answer names, window count, sizes).
"""

from __future__ import annotations

import collections
import functools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax import cli, visualize
from segearth_jax.inference import SegEarthPredictor, logits_to_image

EDGE_WEIGHT = 0.05  # blend weight at a window's border (1 at its centre)
ABSENT_LOGIT = -20.0  # a window without target i: background for it
OVERVIEW_SIZE = 2048


class SceneError(cli.UserError, ValueError):
    """A raster the scene mode cannot read (a one-line message for the user)."""


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of windows of `window` covering [0, size) with step `stride`, the last one flush
    with the end (one window at 0 when the scene is smaller)."""
    if size <= window:
        return [0]
    starts = list(range(0, size - window, stride))
    return starts + [size - window]


@functools.lru_cache(maxsize=8)
def blend_weight(h: int, w: int) -> np.ndarray:
    """[h, w] float32: 1 in the centre, falling linearly to EDGE_WEIGHT at the border (cached:
    every full window shares one; do not modify it)."""

    def ramp(n: int) -> np.ndarray:
        d = np.minimum(np.arange(n) + 0.5, n - np.arange(n) - 0.5) / (n / 2)  # 0 edge .. 1 centre
        return EDGE_WEIGHT + (1 - EDGE_WEIGHT) * np.clip(d, 0, 1)

    return np.outer(ramp(h), ramp(w)).astype(np.float32)


def _rgb(block: np.ndarray, path: str) -> np.ndarray:
    """[bands, h, w] raster block -> RGB uint8 [h, w, 3] (gray replicated, alpha dropped)."""
    if block.dtype != np.uint8:
        raise SceneError(f"{path}: bands are {block.dtype}; the scene mode reads 8-bit imagery "
                         "(convert it first, e.g. gdal_translate -ot Byte -scale)")
    if block.shape[0] in (1, 2):
        block = np.repeat(block[:1], 3, axis=0)
    return np.ascontiguousarray(block[:3].transpose(1, 2, 0))


def predict_scene(predictor: SegEarthPredictor, raster: str | Path, prompt: str, out: Path, *,
                  overlap: float = 0.25, batch_size: int = 8) -> dict[str, Any]:
    """Runs the scene (see the module docstring); -> the summary written to scene.json."""
    import rasterio
    from rasterio.windows import Window
    from tqdm import tqdm

    if not 0 <= overlap < 1:
        raise SceneError(f"--overlap {overlap}: must be in [0, 1)")
    try:
        src = rasterio.open(raster)
    except rasterio.errors.RasterioIOError as e:
        raise SceneError(f"{raster}: cannot be read as a raster ({e})") from None
    win = predictor.geometry.image_size
    stride = max(1, int(round(win * (1 - overlap))))
    height, width = src.height, src.width
    rows, cols = window_starts(height, win, stride), window_starts(width, win, stride)
    q = predictor.geometry.max_seg
    out.mkdir(parents=True, exist_ok=True)
    profile = dict(driver="GTiff", height=height, width=width, count=1, dtype="uint8",
                   crs=src.crs, transform=src.transform, compress="deflate", tiled=True,
                   blockxsize=256, blockysize=256)
    names: dict[int, collections.Counter] = collections.defaultdict(collections.Counter)
    bar = tqdm(total=len(rows) * len(cols), unit="window", desc="scene", dynamic_ncols=True)
    with rasterio.open(out / "mask.tif", "w", **profile) as dst:
        # acc/wsum cover scene rows [top, top + win); rows above the next window row are final.
        top = 0
        acc = np.zeros((q, min(win, height), width), np.float32)
        wsum = np.zeros((min(win, height), width), np.float32)
        for r_i, r in enumerate(rows):
            windows = [(r, c, min(win, height - r), min(win, width - c)) for c in cols]
            for (r0, c0, h, w), logits in _window_logits(predictor, src, str(raster), prompt,
                                                         windows, batch_size, names):
                weight = blend_weight(h, w)
                acc[:, r0 - top:r0 - top + h, c0:c0 + w] += logits * weight
                wsum[r0 - top:r0 - top + h, c0:c0 + w] += weight
                bar.update(1)
            final = (rows[r_i + 1] if r_i + 1 < len(rows) else height) - top
            dst.write(_labels(acc[:, :final], wsum[:final])[None],
                      window=Window(0, top, width, final))
            # Roll the overlap part of the strip to the start of the next one.
            keep = acc.shape[1] - final
            acc[:, :keep], wsum[:keep] = acc[:, final:].copy(), wsum[final:].copy()
            acc[:, keep:], wsum[keep:] = 0, 0
            top += final
    bar.close()
    n_targets = max(names, default=-1) + 1
    target_names = [names[t].most_common(1)[0][0] if names[t] else f"target {t + 1}"
                    for t in range(n_targets)]
    summary = dict(raster=str(raster), prompt=prompt, size=[height, width],
                   crs=src.crs.to_string() if src.crs else None, window=win, stride=stride,
                   windows=len(rows) * len(cols), targets=target_names)
    summary["polygons"] = _write_vectors(src, out, target_names)
    src.close()
    (out / "scene.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _window_logits(predictor: SegEarthPredictor, src: Any, raster: str, prompt: str,
                   windows: list[tuple[int, int, int, int]], batch_size: int,
                   names: dict[int, collections.Counter]):
    """Yields ((row, col, h, w), logits [Q, h, w]) per window (row, col, h, w) of `src`, run in
    batches; a target the answer lacks gets ABSENT_LOGIT. Counts the target names in `names`."""
    from rasterio.windows import Window

    from segearth_jax.predict import stack

    q, win = predictor.geometry.max_seg, predictor.geometry.image_size
    for k in range(0, len(windows), batch_size):
        chunk = windows[k:k + batch_size]
        crops = [_rgb(src.read(window=Window(c, r, w, h)), raster) for r, c, h, w in chunk]
        batch = stack(predictor, crops, [prompt] * len(crops), batch_size)
        results = predictor.predict(batch)[:len(chunk)]
        for i, ((r0, c0, h, w), res) in enumerate(zip(chunk, results, strict=True)):
            logits = np.full((q, h, w), ABSENT_LOGIT, np.float32)
            n = len(res["mask_logits"])
            logits[:n] = logits_to_image(res["mask_logits"], tuple(batch["canvas_hw"][i]),
                                         (h, w), win)
            for t, name in enumerate(visualize.parse_targets(res["answer"])[:n]):
                names[t][name] += 1
            yield (r0, c0, h, w), logits


def _write_vectors(src: Any, out: Path, target_names: list[str]) -> int:
    """targets.geojson (polygons of mask.tif in the source CRS) and overview.png; -> the
    polygon count."""
    features = _polygons(out / "mask.tif", target_names)
    (out / "targets.geojson").write_text(json.dumps({
        "type": "FeatureCollection", "crs_wkt": src.crs.to_wkt() if src.crs else None,
        "features": features}) + "\n")
    _overview(src, out / "mask.tif", out / "overview.png", target_names)
    return len(features)


def _labels(acc: np.ndarray, wsum: np.ndarray) -> np.ndarray:
    """Blended logits [Q, h, w] / weights [h, w] -> uint8 labels (0 background, i + 1 target
    i with the highest positive logit)."""
    logits = acc / np.maximum(wsum, 1e-12)[None]
    best = np.argmax(logits, axis=0)
    return np.where(np.max(logits, axis=0) > 0, best + 1, 0).astype(np.uint8)


def _polygons(mask_path: Path, names: list[str]) -> list[dict]:
    """GeoJSON features of each label's connected regions, in the raster's CRS."""
    import rasterio
    import rasterio.features
    import shapely.geometry

    features = []
    with rasterio.open(mask_path) as ds:
        labels = ds.read(1)  # uint8: the one whole-scene array (1 byte per pixel)
        for geom, value in rasterio.features.shapes(labels, mask=labels > 0,
                                                    transform=ds.transform):
            t = int(value) - 1
            shape = shapely.geometry.shape(geom)
            features.append({"type": "Feature", "geometry": shapely.geometry.mapping(shape),
                             "properties": {"target": t, "area": shape.area,
                                            "name": names[t] if t < len(names)
                                            else f"target {t + 1}"}})
    return features


def _overview(src: Any, mask_path: Path, path: Path, names: list[str]) -> None:
    """The scene at <= OVERVIEW_SIZE px (decimated reads) with the targets drawn."""
    import rasterio
    from rasterio.enums import Resampling

    scale = min(1.0, OVERVIEW_SIZE / max(src.height, src.width))
    h, w = max(1, math.floor(src.height * scale)), max(1, math.floor(src.width * scale))
    image = _rgb(src.read(out_shape=(src.count, h, w), resampling=Resampling.average),
                 src.name)
    with rasterio.open(mask_path) as ds:
        labels = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    masks = np.stack([labels == t + 1 for t in range(len(names))]) if names else \
        np.zeros((0, h, w), bool)
    visualize.write_png(path, visualize.overlay(image, masks, names))
