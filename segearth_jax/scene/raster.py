"""Reading a scene as the model sees it: three bands of any dtype stretched to 8-bit RGB,
the raster's nodata / alpha / mask band as a validity mask, windows read at the scale that gives
the model the requested ground resolution (rasterio's resampling on read)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from segearth_jax import errors

STRETCH_SIZE = 1024  # the percentile stretch reads the scene decimated to <= this many px a side


class SceneError(errors.UserError, ValueError):
    """A raster or a scene option the scene mode cannot use (a one-line message for the user)."""


@dataclasses.dataclass
class SceneRaster:
    """An open raster and how its windows become model inputs.

    bands: the three 1-based band indices read as R, G, B; bands_from: why those;
    stretch: per band (low, high) source values mapped to 0 and 255, or None (values clipped to
    0..255); stretch_percentiles: the (low, high) percentiles they came from, or None;
    scale: model pixels per source pixel (1: the raster's own pixels); gsd: the source pixel
    size in CRS units (None without a projected CRS).
    """

    src: Any  # rasterio DatasetReader
    path: str
    bands: list[int]
    bands_from: str
    stretch: list[tuple[float, float]] | None
    stretch_percentiles: tuple[float, float] | None
    scale: float
    gsd: float | None

    @property
    def height(self) -> int:
        return self.src.height

    @property
    def width(self) -> int:
        return self.src.width

    def close(self) -> None:
        self.src.close()

    def _read(self, window: Any, out_hw: tuple[int, int] | None, resampling: Any
              ) -> tuple[np.ndarray, np.ndarray]:
        """(RGB uint8 [h, w, 3], valid bool [h, w]) of `window` at `out_hw` (None: as is)."""
        from rasterio.enums import Resampling

        unique = sorted(set(self.bands))
        shape = None if out_hw is None else (len(unique), *out_hw)
        block = self.src.read(unique, window=window, out_shape=shape, resampling=resampling)
        masks = self.src.read_masks(unique, window=window, out_shape=shape,
                                    resampling=Resampling.nearest)
        valid = np.all(masks > 0, axis=0)
        planes = [block[unique.index(b)] for b in self.bands]
        rgb = np.stack([self._to_uint8(p, i) for i, p in enumerate(planes)], axis=-1)
        rgb[~valid] = 0
        return rgb, valid

    def _to_uint8(self, plane: np.ndarray, i: int) -> np.ndarray:
        """One band -> uint8 by the scene's stretch (or clipped to 0..255 without one)."""
        if self.stretch is None:
            if plane.dtype == np.uint8:
                return plane
            return np.clip(np.nan_to_num(plane), 0, 255).round().astype(np.uint8)
        lo, hi = self.stretch[i]
        x = (plane.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
        return np.clip(np.nan_to_num(x), 0, 255).round().astype(np.uint8)

    def read_window(self, row: int, col: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Source window (row, col, h, w) -> (RGB uint8 [hm, wm, 3] at the model's scale,
        valid bool [h, w] on the source grid). hm = round(h * scale) (>= 1)."""
        from rasterio.enums import Resampling
        from rasterio.windows import Window

        window = Window(col, row, w, h)
        if self.scale == 1:
            rgb, valid = self._read(window, None, Resampling.nearest)
            return rgb, valid
        hm, wm = model_size(h, self.scale), model_size(w, self.scale)
        resampling = Resampling.average if self.scale < 1 else Resampling.bilinear
        rgb, _ = self._read(window, (hm, wm), resampling)
        return rgb, self.valid(row, col, h, w)

    def valid(self, row: int, col: int, h: int, w: int) -> np.ndarray:
        """bool [h, w]: pixels of the source window with data in every band read."""
        from rasterio.windows import Window

        unique = sorted(set(self.bands))
        return np.all(self.src.read_masks(unique, window=Window(col, row, w, h)) > 0, axis=0)

    def decimated(self, max_side: int) -> tuple[np.ndarray, np.ndarray]:
        """The whole scene at <= max_side px a side (average resampling): (RGB uint8, valid)."""
        from rasterio.enums import Resampling

        f = min(1.0, max_side / max(self.height, self.width))
        hw = (max(1, math.floor(self.height * f)), max(1, math.floor(self.width * f)))
        return self._read(None, hw, Resampling.average)


def model_size(n: int, scale: float) -> int:
    """Source pixels -> model pixels at `scale` (>= 1)."""
    return max(1, int(round(n * scale)))


def default_bands(src: Any) -> tuple[list[int], str]:
    """The RGB bands by the raster's colour interpretation, else gray (1 or 2 bands: the first
    replicated), else the first three. -> (1-based bands, how they were chosen)."""
    from rasterio.enums import ColorInterp

    interp = list(src.colorinterp)
    if all(c in interp for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue)):
        return [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green,
                                              ColorInterp.blue)], "colour interpretation"
    if src.count <= 2:
        return [1, 1, 1], "gray (band 1 replicated)"
    return [1, 2, 3], "first three bands (no red/green/blue colour interpretation)"


def parse_bands(spec: str | None, count: int, path: str) -> list[int] | None:
    """`--bands 4,3,2` (1-based R,G,B; one band: gray) -> [r, g, b]; None -> None."""
    if spec is None:
        return None
    try:
        bands = [int(b) for b in spec.split(",")]
    except ValueError:
        raise SceneError(f"--bands {spec}: expected 1-based band numbers, e.g. 4,3,2") from None
    if len(bands) == 1:
        bands *= 3
    if len(bands) != 3:
        raise SceneError(f"--bands {spec}: give three bands (R,G,B) or one (gray)")
    if not all(1 <= b <= count for b in bands):
        raise SceneError(f"--bands {spec}: {path} has bands 1..{count}")
    return bands


def parse_stretch(spec: str) -> tuple[float, float] | None | str:
    """`--stretch`: "2,98" (low, high percentiles), "none", or "auto" (none for 8-bit rasters,
    2,98 otherwise)."""
    if spec in ("none", "auto"):
        return None if spec == "none" else "auto"
    try:
        lo, hi = (float(x) for x in spec.split(","))
    except ValueError:
        raise SceneError(f"--stretch {spec}: expected LOW,HIGH percentiles (e.g. 2,98), "
                         "'none' or 'auto'") from None
    if not 0 <= lo < hi <= 100:
        raise SceneError(f"--stretch {spec}: need 0 <= LOW < HIGH <= 100")
    return lo, hi


def open_scene(path: str, *, bands: str | None = None, stretch: str = "auto",
               gsd: float | None = None, scale: float | None = None) -> SceneRaster:
    """Opens `path` and settles its bands, stretch (computed once, on a read decimated to
    <= STRETCH_SIZE px, nodata excluded) and scale (`gsd`: the model's ground resolution in CRS
    units, or `scale`: model pixels per source pixel; neither: 1)."""
    import rasterio
    from rasterio.enums import Resampling

    try:
        src = rasterio.open(path)
    except rasterio.errors.RasterioIOError as e:
        raise SceneError(f"{path}: cannot be read as a raster ({e})") from None
    try:
        chosen = parse_bands(bands, src.count, path)
        chosen, why = (chosen, "--bands") if chosen else default_bands(src)
        pixel = abs(src.transform.a) if src.crs and src.crs.is_projected else None
        if gsd is not None and scale is not None:
            raise SceneError("give --gsd or --scale, not both")
        if gsd is not None:
            if gsd <= 0:
                raise SceneError(f"--gsd {gsd}: must be > 0")
            if pixel is None:
                raise SceneError(f"{path}: --gsd needs a projected CRS (metres); this raster has "
                                 f"{src.crs or 'no CRS'}: use --scale")
            scale = pixel / gsd
        scale = 1.0 if scale is None else float(scale)
        if not 0.01 <= scale <= 100:
            raise SceneError(f"scale {scale:g} (model pixels per source pixel) is outside "
                             "[0.01, 100]: check --gsd / --scale")
        mode = parse_stretch(stretch)
        if mode == "auto":
            mode = None if all(d == "uint8" for d in src.dtypes) else (2.0, 98.0)
        scene = SceneRaster(src, str(path), chosen, why, None, mode, scale, pixel)
        if mode is not None:
            scene.stretch = _percentiles(scene, mode, Resampling)
        return scene
    except BaseException:
        src.close()
        raise


def _percentiles(scene: SceneRaster, pct: tuple[float, float], resampling: Any
                 ) -> list[tuple[float, float]]:
    """Per band (low, high) values at the percentiles of the valid pixels of a decimated read
    (nearest; inverted-CDF percentiles, so an image and its pixel-replicated copy agree)."""
    src = scene.src
    f = min(1.0, STRETCH_SIZE / max(src.height, src.width))
    hw = (max(1, math.floor(src.height * f)), max(1, math.floor(src.width * f)))
    unique = sorted(set(scene.bands))
    block = src.read(unique, out_shape=(len(unique), *hw), resampling=resampling.nearest)
    masks = src.read_masks(unique, out_shape=(len(unique), *hw), resampling=resampling.nearest)
    valid = np.all(masks > 0, axis=0) & np.all(np.isfinite(block), axis=0)
    if not valid.any():
        raise SceneError(f"{scene.path}: no valid pixels (all nodata / masked)")
    out = []
    for b in scene.bands:
        values = block[unique.index(b)][valid]
        lo, hi = np.percentile(values, pct, method="inverted_cdf")
        out.append((float(lo), float(hi) if hi > lo else float(lo) + 1.0))
    return out
