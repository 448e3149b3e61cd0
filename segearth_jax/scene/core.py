"""One scene, one or more questions: windows read strip by strip, each batch of windows seen
once by the vision towers and asked every question, each question's logits blended into its own
strip accumulator and written out as the strip is final."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax.scene import writers
from segearth_jax.scene.raster import SceneError, SceneRaster, model_size, open_scene
from segearth_jax.scene.tiling import ABSENT_LOGIT, blend_weight, target_keys, window_starts
from segearth_jax.scene.towers import Runner, window_runner

MAX_TARGETS = 254  # label values 1..254 (255 is nodata)


class Stitcher:
    """One question's blended logits over the current strip of the scene, and its outputs.

    Targets are keyed by name (`tiling.target_keys`); label t + 1 is the t-th key met. acc
    [T, rows, width] holds sum(weight * logit) and wsum [rows, width] sum(weight) for scene rows
    [top, top + rows); a key first met mid-scene starts at ABSENT_LOGIT * wsum (every window
    before it lacked it). Rows are final once no later window covers them: `flush` writes their
    labels (and per-target probabilities, 0..254) to tiled GeoTIFFs, nodata where the source
    has none.
    """

    def __init__(self, scene: SceneRaster, out: Path, rows: int):
        import rasterio

        self.scene, self.out, self.top = scene, out, 0
        out.mkdir(parents=True, exist_ok=True)
        self.keys: dict[str, int] = {}
        self.acc = np.zeros((0, rows, scene.width), np.float32)
        self.wsum = np.zeros((rows, scene.width), np.float32)
        self.mask = rasterio.open(out / "mask.tmp.tif", "w", **writers.strip_profile(scene.src))
        self.probs: list[Any] = []

    def _label(self, key: str) -> int:
        import rasterio
        from rasterio.windows import Window

        if key not in self.keys:
            if len(self.keys) == MAX_TARGETS:
                raise SceneError(f"{self.scene.path}: more than {MAX_TARGETS} distinct target "
                                 "names")
            self.keys[key] = len(self.keys)
            self.acc = np.concatenate([self.acc, ABSENT_LOGIT * self.wsum[None]])
            prob = rasterio.open(self.out / f"probability_{len(self.probs)}.tmp.tif", "w",
                                 **writers.strip_profile(self.scene.src))
            for top in range(0, self.top, self.wsum.shape[0]):  # rows written before: 0
                h = min(self.wsum.shape[0], self.top - top)
                prob.write(self._nodata(np.zeros((h, self.scene.width), np.uint8), top)[None],
                           window=Window(0, top, self.scene.width, h))
            self.probs.append(prob)
        return self.keys[key]

    def add(self, row: int, col: int, answer: str, logits: np.ndarray) -> None:
        """One window's logits [n, h, w] (source grid) at (row, col); n = its `[SEG]`s."""
        h, w = logits.shape[1:]
        weight = blend_weight(h, w)
        r = row - self.top
        mine = {}
        for key, lg in zip(target_keys(answer), logits, strict=False):
            t = self._label(key)
            mine[t] = np.maximum(mine[t], lg) if t in mine else lg  # one name twice: max
        for t in range(len(self.keys)):
            lg = mine.get(t)
            self.acc[t, r:r + h, col:col + w] += (weight * ABSENT_LOGIT if lg is None
                                                  else lg * weight)
        self.wsum[r:r + h, col:col + w] += weight

    def _nodata(self, band: np.ndarray, top: int) -> np.ndarray:
        band[~self.scene.valid(top, 0, band.shape[0], self.scene.width)] = writers.NODATA
        return band

    def flush(self, rows: int) -> None:
        """Writes scene rows [top, top + rows) and moves the strip down by `rows`."""
        from rasterio.windows import Window

        window = Window(0, self.top, self.scene.width, rows)
        logits = self.acc[:, :rows] / np.maximum(self.wsum[:rows], 1e-12)[None]
        if len(logits):
            best = np.argmax(logits, axis=0)
            labels = np.where(np.max(logits, axis=0) > 0, best + 1, 0).astype(np.uint8)
        else:
            labels = np.zeros((rows, self.scene.width), np.uint8)
        self.mask.write(self._nodata(labels, self.top)[None], window=window)
        for t, prob in enumerate(self.probs):
            p = np.round(254 / (1 + np.exp(-logits[t]))).astype(np.uint8)
            prob.write(self._nodata(p, self.top)[None], window=window)
        keep = self.acc.shape[1] - rows  # the overlap rows roll to the start of the strip
        self.acc[:, :keep], self.wsum[:keep] = self.acc[:, rows:].copy(), self.wsum[rows:].copy()
        self.acc[:, keep:], self.wsum[keep:] = 0, 0
        self.top += rows

    def finish(self, probabilities: bool) -> dict[str, Any]:
        """COGs, vectors and the overview; -> the question's summary (names, polygons)."""
        self.mask.close()
        names = list(self.keys)
        parts = [Path(p.name) for p in self.probs]
        for p in self.probs:
            p.close()
        writers.to_cog(self.out / "mask.tmp.tif", self.out / "mask.tif", "nearest")
        polygons = writers.write_vectors(self.out / "mask.tif", parts, names, self.out)
        writers.write_overview(self.scene, self.out / "mask.tif", self.out / "overview.png",
                               names)
        if probabilities and parts:
            writers.merge_bands(parts, self.out / "probabilities.tif", self.scene.src, names,
                                self.wsum.shape[0])
        for part in parts:
            part.unlink(missing_ok=True)
        return dict(targets=names, legend={str(t + 1): n for t, n in enumerate(names)},
                    polygons=polygons)


def run_scene(predictor: Any, scene: SceneRaster, prompts: list[str], outs: list[Path], *,
              overlap: float = 0.25, batch_size: int = 8, probabilities: bool = False,
              runner: Runner | None = None, bar: Any = None) -> list[dict[str, Any]]:
    """Every question of `prompts` over the open `scene`, question k's outputs into outs[k]
    (mask.tif, probabilities.tif, targets.gpkg/.geojson, overview.png, scene.json last); ->
    the summaries written to each scene.json."""
    if not 0 <= overlap < 1:
        raise SceneError(f"--overlap {overlap}: must be in [0, 1)")
    runner = runner or window_runner(predictor, batch_size)
    win_model = predictor.geometry.image_size
    win = max(1, int(round(win_model / scene.scale)))  # a window in source pixels
    stride = max(1, int(round(win * (1 - overlap))))
    height, width = scene.height, scene.width
    rows, cols = window_starts(height, win, stride), window_starts(width, win, stride)
    strip = min(win, height)
    stitchers = [Stitcher(scene, out, strip) for out in outs]
    skipped = 0
    if bar is not None:
        bar.reset(total=len(rows) * len(cols))
    for r_i, r in enumerate(rows):
        windows, before = [], skipped
        for c in cols:
            h, w = min(win, height - r), min(win, width - c)
            if scene.valid(r, c, h, w).any():
                windows.append((r, c, h, w))
            else:
                skipped += 1  # all nodata: never run
        for k in range(0, len(windows), batch_size):
            chunk = windows[k:k + batch_size]
            crops = [scene.read_window(*wdw)[0] for wdw in chunk]
            seen = runner.look(crops)
            for prompt, st in zip(prompts, stitchers, strict=True):
                for (r0, c0, h, w), (answer, logits, canvas) in zip(
                        chunk, runner.ask(seen, prompt), strict=True):
                    st.add(r0, c0, answer, _to_source(logits, canvas, (h, w), win_model))
            if bar is not None:
                bar.update(len(chunk))
        if bar is not None:
            bar.update(skipped - before)
        final = (rows[r_i + 1] if r_i + 1 < len(rows) else height) - stitchers[0].top
        for st in stitchers:
            st.flush(final)
    summaries = []
    for prompt, st, out in zip(prompts, stitchers, outs, strict=True):
        summary = dict(raster=scene.path, prompt=prompt, size=[height, width],
                       crs=scene.src.crs.to_string() if scene.src.crs else None,
                       bands=scene.bands, bands_from=scene.bands_from,
                       stretch=dict(percentiles=scene.stretch_percentiles, values=scene.stretch),
                       scale=scene.scale, source_gsd=scene.gsd,
                       model_gsd=scene.gsd / scene.scale if scene.gsd else None,
                       window=win, window_model=model_size(win, scene.scale), stride=stride,
                       windows=len(rows) * len(cols), windows_skipped_nodata=skipped,
                       nodata=writers.NODATA, target_rule="one label per normalised <p> name; "
                       "a [SEG] without a name is 'target i', i its index in the window's answer")
        summary.update(st.finish(probabilities))
        text = json.dumps(summary, indent=2)
        (out / "scene.json").write_text(text + "\n")
        summaries.append(json.loads(text))  # as scene.json reads
    return summaries


def _to_source(mask_logits: np.ndarray, canvas_hw: tuple[int, int], hw: tuple[int, int],
               canvas_size: int) -> np.ndarray:
    """Canvas-grid logits [n, g, g] -> float32 [n, h, w] on the window's source grid."""
    from segearth_jax.inference import logits_to_image

    if not len(mask_logits):
        return np.zeros((0, *hw), np.float32)
    return logits_to_image(mask_logits, tuple(canvas_hw), hw, canvas_size)


def predict_scene(predictor: Any, raster: str | Path, prompt: str, out: Path, *,
                  overlap: float = 0.25, batch_size: int = 8, bands: str | None = None,
                  stretch: str = "auto", gsd: float | None = None, scale: float | None = None,
                  probabilities: bool = False) -> dict[str, Any]:
    """One raster, one question (see `run_scene`); -> the summary written to scene.json."""
    scene = open_scene(str(raster), bands=bands, stretch=stretch, gsd=gsd, scale=scale)
    try:
        return run_scene(predictor, scene, [prompt], [Path(out)], overlap=overlap,
                         batch_size=batch_size, probabilities=probabilities)[0]
    finally:
        scene.close()
