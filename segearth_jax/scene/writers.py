"""A scene's outputs, in formats GIS tools load directly: cloud-optimized GeoTIFFs (internal
tiles, overviews, nodata), polygons as GeoPackage (one layer per target) and GeoJSON, an overview
PNG with the targets named."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax import visualize

NODATA = 255  # mask.tif: 0 background, 1..254 targets, 255 nodata; probabilities: 0..254, 255
BLOCK = 256  # internal tile size of the written rasters
OVERVIEW_SIZE = 2048  # overview.png's longest side (at most)
FIELDS = ["name", "target", "area", "mean_probability"]
BINCOUNT_ROWS = 256  # rows per block of the per-region sums


def strip_profile(src: Any, count: int = 1) -> dict[str, Any]:
    """A tiled uint8 GeoTIFF on the source's grid (written strip by strip, then made a COG)."""
    return dict(driver="GTiff", height=src.height, width=src.width, count=count, dtype="uint8",
                crs=src.crs, transform=src.transform, nodata=NODATA, compress="deflate",
                tiled=True, blockxsize=BLOCK, blockysize=BLOCK)


def to_cog(tmp: Path, path: Path, resampling: str) -> None:
    """The tiled GeoTIFF `tmp` -> the cloud-optimized GeoTIFF `path` (GDAL's COG driver: tiles,
    overviews down to one tile, nodata kept); `tmp` is removed."""
    import rasterio.shutil

    rasterio.shutil.copy(tmp, path, driver="COG", compress="DEFLATE", blocksize=BLOCK,
                         overview_resampling=resampling)
    tmp.unlink()


def merge_bands(parts: list[Path], path: Path, src: Any, names: list[str], rows: int) -> None:
    """Single-band uint8 rasters -> one multi-band COG at `path` (band i named names[i]),
    copied `rows` rows at a time; the parts are removed."""
    import rasterio
    from rasterio.windows import Window

    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **strip_profile(src, len(parts))) as dst:
        for i, (part, name) in enumerate(zip(parts, names, strict=True), start=1):
            dst.set_band_description(i, name)
            with rasterio.open(part) as ds:
                for top in range(0, src.height, rows):
                    w = Window(0, top, src.width, min(rows, src.height - top))
                    dst.write(ds.read(1, window=w), i, window=w)
            part.unlink()
    to_cog(tmp, path, "average")


def target_polygons(labels: np.ndarray, prob: Any, t: int, name: str, transform: Any
                    ) -> list[dict[str, Any]]:
    """The connected regions of target t in the label band (4-connected, in the raster's CRS):
    geometry, target (0-based), name, area (CRS units^2), mean probability (its pixels' mean in
    the target's probability raster `prob`, an open dataset; 0..1). The regions are numbered
    (`cv2.connectedComponents`), their means are one `bincount`, and each is traced once:
    ~6 bytes per scene pixel (labels, the probability band, int32 region numbers), time linear
    in the pixels."""
    import cv2
    import rasterio.features
    import shapely.geometry

    n, regions = cv2.connectedComponents((labels == t + 1).view(np.uint8), connectivity=4,
                                         ltype=cv2.CV_32S)
    if n < 2:
        return []
    p = prob.read(1)
    sums, counts = np.zeros(n), np.zeros(n)
    for top in range(0, len(p), BINCOUNT_ROWS):  # blocks: bincount copies to int64 / float64
        r = regions[top:top + BINCOUNT_ROWS].ravel()
        sums += np.bincount(r, weights=p[top:top + BINCOUNT_ROWS].ravel(), minlength=n)
        counts += np.bincount(r, minlength=n)
    means = sums / np.maximum(counts, 1) / 254
    del p
    out = []
    for geom, value in rasterio.features.shapes(regions, mask=regions > 0, transform=transform,
                                                connectivity=4):
        shape = shapely.geometry.shape(geom)
        out.append(dict(geometry=shape, target=t, name=name, area=shape.area,
                        mean_probability=float(means[int(value)])))
    return out


def layer_name(name: str, used: set[str]) -> str:
    """A GeoPackage layer name for a target name (letters, digits, _; unique)."""
    base = re.sub(r"\W+", "_", name).strip("_") or "target"
    out, k = base, 2
    while out in used:
        out, k = f"{base}_{k}", k + 1
    used.add(out)
    return out


def write_vectors(mask: Path, probs: list[Path], names: list[str], out: Path) -> int:
    """targets.geojson (all polygons) and targets.gpkg (one layer per target; a lone empty
    layer `targets` when there is none), in the CRS of `mask`, one target at a time (memory:
    one target's polygons). -> the polygon count."""
    import rasterio
    import shapely
    import shapely.geometry
    from pyogrio import raw

    with rasterio.open(mask) as ds:
        labels, transform, crs = ds.read(1), ds.transform, ds.crs
    gpkg = out / "targets.gpkg"
    gpkg.unlink(missing_ok=True)
    used: set[str] = set()
    count = 0
    with open(out / "targets.geojson", "w") as geojson:
        head = json.dumps({"type": "FeatureCollection", "crs_wkt": crs.to_wkt() if crs else None})
        geojson.write(head[:-1] + ', "features": [\n')
        for t, name in enumerate(names or [None]):
            if name is None:
                rows, layer = [], "targets"
            else:
                with rasterio.open(probs[t]) as prob:
                    rows = target_polygons(labels, prob, t, name, transform)
                layer = layer_name(name, used)
            for f in rows:
                geojson.write((",\n" if count else "") + json.dumps({
                    "type": "Feature", "geometry": shapely.geometry.mapping(f["geometry"]),
                    "properties": {k: f[k] for k in FIELDS}}))
                count += 1
            geometry = np.array([shapely.to_wkb(f["geometry"]) for f in rows], dtype=object)
            data = [np.array([f["name"] for f in rows], dtype=object),
                    np.array([f["target"] for f in rows], np.int32),
                    np.array([f["area"] for f in rows], np.float64),
                    np.array([f["mean_probability"] for f in rows], np.float64)]
            raw.write(gpkg, geometry, data, fields=FIELDS, layer=layer, driver="GPKG",
                      crs=crs.to_wkt() if crs else None, geometry_type="Polygon")
        geojson.write("\n]}\n")
    return count


def write_overview(scene: Any, mask: Path, path: Path, names: list[str]) -> None:
    """The scene at <= OVERVIEW_SIZE px (decimated reads, the scene's stretch) with the targets
    drawn and named (the legend)."""
    import rasterio
    from rasterio.enums import Resampling

    image, _ = scene.decimated(OVERVIEW_SIZE)
    h, w = image.shape[:2]
    with rasterio.open(mask) as ds:
        labels = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
    masks = np.stack([labels == t + 1 for t in range(len(names))]) if names else \
        np.zeros((0, h, w), bool)
    visualize.write_png(path, visualize.overlay(image, masks, names))
