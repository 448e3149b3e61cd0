"""Whole-scene prediction: the rasters people have (16-bit or float, many bands, nodata, any
ground resolution), one or many questions, one or many scenes.

    python -m segearth_jax.predict --checkpoint DIR --scene scene.tif --bands 3,2,1 \
        --gsd 0.5 --prompt "..." --out DIR

Reading (`raster`): three bands (`--bands`, else the raster's red/green/blue colour
interpretation, else the first three) of any dtype, stretched to 8-bit between per-band
percentiles of the valid pixels (`--stretch 2,98`, computed once on a read decimated to
<= 1024 px; `none`: values clipped to 0..255; `auto`, the default: none for 8-bit rasters);
the raster's nodata / alpha / mask band is honoured: all-nodata windows are never run, nodata
pixels are nodata (255) in every output. `--gsd METRES` (or `--scale F`, model pixels per source
pixel) reads each window resampled on read (average when shrinking, bilinear when enlarging) so
the model sees that ground resolution; logits come back to the source grid, and every output
keeps the source's size, CRS and transform.

Windows (`tiling`, `core`): windows of the model's input size (at the model's scale) overlap
by `overlap`, run `batch_size` at a time; each window's logits are blended with a weight 1 in
its centre falling to `EDGE_WEIGHT` at its border (no seams). Targets are keyed by name: each
distinct normalised `<p>` name is one label (a window without that name counts as background,
`ABSENT_LOGIT`, for it); a `[SEG]` without a name keeps the index rule ("target i", its index in
the window's answer). Blended logits > 0 win, the highest where names overlap.

Many questions (`towers`): per batch of windows the vision towers (SigLIP; Swin + pixel
decoder) run once; each question runs only the language model and the mask decoder.

Memory is bounded by one strip of windows while the windows run (the float accumulators span one
window's rows; GDAL's block cache comes on top); the polygons are traced per target on the label
band afterwards (~6 bytes per scene pixel: labels, one probability band, int32 region numbers).

Outputs, per question: `mask.tif` (COG, uint8: 0 background, t = legend entry, 255 nodata),
`probabilities.tif` (`--probabilities`: COG, one band per target, sigmoid * 254, 255 nodata),
`targets.gpkg` (one layer per target: name, target, area in CRS units^2, mean probability),
`targets.geojson` (the same polygons), `overview.png` (named targets), `scene.json` (legend,
bands, stretch, scale, windows; written last: it marks the question done). Many scenes
(`many`): a glob or a list file, one folder per scene, resumable, `--shard I/N`.
"""

from segearth_jax.scene.core import predict_scene, run_scene
from segearth_jax.scene.many import list_scenes, predict_scenes, shard
from segearth_jax.scene.raster import SceneError, SceneRaster, open_scene
from segearth_jax.scene.tiling import (
           ABSENT_LOGIT,
           EDGE_WEIGHT,
           blend_weight,
           normalise,
           target_keys,
           window_starts,
)

__all__ = ["ABSENT_LOGIT", "EDGE_WEIGHT", "SceneError", "SceneRaster", "blend_weight",
           "list_scenes", "normalise", "open_scene", "predict_scene", "predict_scenes",
           "run_scene", "shard", "target_keys", "window_starts"]
