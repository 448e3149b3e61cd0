"""Whole-scene prediction on the rasters people have (segearth_jax.scene): a uint16 4-band
GeoTIFF (projected CRS, bands in B, G, R, NIR order, nodata = 0 outside the footprint) drawn by
the project's scene generator at twice the training resolution.

Most tests use a deterministic stand-in predictor (colour thresholds on the model's view, names
answered in swapped order in alternate windows), so that the outputs can be compared with a
reference computed by hand over the whole scene. The CLI tests and the many-questions test run
the real model code: the tiny config with random weights, exported as training exports it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.conftest  # noqa: F401  (the offline environment of conftest)

ROOT = Path(__file__).resolve().parents[1]
BASE_HW = (192, 288)  # the scene at the training resolution (1 m pixels)
FOOTPRINT_COL = 80  # base-grid columns left of this are outside the footprint (nodata)
CRS = "EPSG:32633"
BRIGHT, DARK = 170.0, 80.0  # the stand-in's luminance thresholds


def _scene_bands(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A generator scene at BASE_HW -> (uint16 [4, H, W] B, G, R, NIR with 0 outside the
    footprint, valid bool [H, W])."""
    from data.scenes import make_scene

    h, w = BASE_HW
    rgb = make_scene(np.random.default_rng(seed), h, w, 2.0).image.astype(np.uint16)
    nir = (rgb[..., 1] // 2 + 60).astype(np.uint16)  # any fourth band
    bands = np.stack([rgb[..., 2], rgb[..., 1], rgb[..., 0], nir]) * 37 + 400  # 12-bit-like
    valid = np.ones((h, w), bool)
    valid[:, :FOOTPRINT_COL] = False
    valid[:8] = False  # a nodata border along the top too
    return np.where(valid, bands, 0).astype(np.uint16), valid


def _write(path: Path, bands: np.ndarray, pixel: float) -> None:
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", height=bands.shape[1], width=bands.shape[2],
                       count=bands.shape[0], dtype="uint16", crs=CRS, nodata=0,
                       transform=from_origin(500000.0, 4000000.0, pixel, pixel)) as ds:
        ds.write(bands)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> dict[str, Path]:
    """base.tif (1 m pixels) and fine.tif (the same scene at 0.5 m: twice the training
    resolution, each pixel replicated 2 x 2)."""
    root = tmp_path_factory.mktemp("scenes")
    bands, _ = _scene_bands()
    _write(root / "base.tif", bands, 1.0)
    _write(root / "fine.tif", bands.repeat(2, axis=1).repeat(2, axis=2), 0.5)
    return dict(root=root, base=root / "base.tif", fine=root / "fine.tif")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from segearth_jax import text

    out = tmp_path_factory.mktemp("tok") / "tokenizer"
    text.train_tokenizer(out, [text.SYSTEM, "Where are the bright things and the dark things?",
                               "the <p>bright thing</p>[SEG] and <p>dark thing</p>[SEG]"],
                         vocab_size=2000)
    return out


class ColourPredictor:
    """A deterministic stand-in: on the Swin view (luminance, 4 x 4 mean = the canvas grid),
    "bright thing" where it exceeds BRIGHT and "dark thing" below DARK (logit: distance / 20).
    Batch rows alternate the answer's order (row 1, 3, ...: dark first), so a window's i-th
    `[SEG]` is not the same target everywhere; `orders` records the orders answered."""

    def __init__(self, tokenizer_dir: Path):
        from configs import tiny
        from segearth_jax import text
        from segearth_jax.input.settings import Settings

        self.geometry = Settings.from_config(tiny.get_config().data)
        self.tokenizer = text.load_tokenizer(tokenizer_dir)
        self.orders: set[bool] = set()

    def predict(self, batch):
        from segearth_jax.input import preprocess

        px = np.asarray(batch["pixels"]) * preprocess.IMAGENET_STD + preprocess.IMAGENET_MEAN
        lum = px.mean(-1)
        b, s, _ = lum.shape
        grid = lum.reshape(b, s // 4, 4, s // 4, 4).mean((2, 4))
        out = []
        for i in range(b):
            bright, dark = (grid[i] - BRIGHT) / 20, (DARK - grid[i]) / 20
            swapped = i % 2 == 1
            self.orders.add(swapped)
            answer = ("the <p>Dark thing</p>[SEG] and <p>bright  thing.</p>[SEG]" if swapped
                      else "the <p>bright thing</p>[SEG] and <p>dark thing</p>[SEG]")
            logits = np.stack([dark, bright] if swapped else [bright, dark])
            out.append(dict(answer=answer, mask_logits=logits.astype(np.float32)))
        return out


def _by_hand(predictor, path: Path, scale: float = 1.0) -> np.ndarray:
    """The reference labels, over the whole scene at once: the stretch (2nd and 98th
    percentiles of the valid pixels), windows that hold data, each window's logits resized to
    the source, blended with `blend_weight`, targets matched by name, nodata 255."""
    import cv2
    import rasterio

    from segearth_jax.inference import logits_to_image
    from segearth_jax.model_inputs import stack
    from segearth_jax.scene import ABSENT_LOGIT, blend_weight, window_starts

    with rasterio.open(path) as src:
        bgrn = src.read().astype(np.float64)
    valid = np.all(bgrn > 0, axis=0)
    rgb = np.zeros((*valid.shape, 3), np.uint8)
    for k, band in enumerate((2, 1, 0)):
        lo, hi = np.percentile(bgrn[band][valid], (2, 98), method="inverted_cdf")
        rgb[..., k] = np.clip(np.round((bgrn[band] - lo) * (255.0 / (hi - lo))), 0, 255)
    rgb[~valid] = 0
    h, w = valid.shape
    s = predictor.geometry.image_size
    win = int(round(s / scale))
    stride = int(round(win * 0.75))
    names = {"bright thing": 0, "dark thing": 1}
    acc, wsum = np.zeros((2, h, w), np.float32), np.zeros((h, w), np.float32)
    for r in window_starts(h, win, stride):
        for c in window_starts(w, win, stride):
            if not valid[r:r + win, c:c + win].any():
                continue
            crop = rgb[r:r + win, c:c + win]
            if scale != 1:
                crop = cv2.resize(crop, (s, s), interpolation=cv2.INTER_AREA)
            batch = stack(predictor, [crop], ["?"])
            res = predictor.predict(batch)[0]
            logits = logits_to_image(res["mask_logits"], tuple(batch["canvas_hw"][0]),
                                     (win, win), s)
            order = ["dark thing", "bright thing"] if "Dark" in res["answer"] \
                else ["bright thing", "dark thing"]
            for name, lg in zip(order, logits, strict=True):
                acc[names[name], r:r + win, c:c + win] += lg * blend_weight(win, win)
            wsum[r:r + win, c:c + win] += blend_weight(win, win)
    blended = acc / np.maximum(wsum, 1e-12)
    labels = np.where(blended.max(0) > 0, blended.argmax(0) + 1, 0).astype(np.uint8)
    labels[~valid] = 255
    del ABSENT_LOGIT  # every window answers both names: none is absent here
    return labels


def test_scene_uint16_bgrn_matches_the_reference_and_keeps_nodata(scenes, tokenizer_dir,
                                                                   tmp_path):
    """uint16 B, G, R, NIR with --bands 3,2,1: the streamed, batched, name-grouped labels equal
    the whole-scene reference exactly; nodata stays nodata (255) although the stand-in would
    call black "dark thing"; windows wholly outside the footprint are never run."""
    import rasterio

    from segearth_jax.scene import predict_scene

    fake = ColourPredictor(tokenizer_dir)
    summary = predict_scene(fake, scenes["fine"], "?", tmp_path / "out", bands="3,2,1",
                            batch_size=4)
    assert fake.orders == {False, True}  # both orders were answered: names, not indices
    assert summary["legend"] == {"1": "bright thing", "2": "dark thing"}
    assert summary["bands"] == [3, 2, 1] and summary["bands_from"] == "--bands"
    assert summary["stretch"]["percentiles"] == [2.0, 98.0]
    assert summary["windows_skipped_nodata"] == 4  # the first column of windows: no data
    with rasterio.open(tmp_path / "out" / "mask.tif") as ds:
        labels = ds.read(1)
        assert ds.nodata == 255
    reference = _by_hand(ColourPredictor(tokenizer_dir), scenes["fine"])
    np.testing.assert_array_equal(labels, reference)
    _, valid = _scene_bands()
    valid = valid.repeat(2, 0).repeat(2, 1)
    assert np.all(labels[~valid] == 255) and np.all(labels[valid] != 255)
    assert 0.01 < np.mean(labels[valid] == 1) < 0.5 and 0.01 < np.mean(labels[valid] == 2) < 0.5


def test_scene_gsd_reproduces_the_native_scale_result(scenes, tokenizer_dir, tmp_path):
    """fine.tif (0.5 m) read with --gsd 1 gives the model the windows of base.tif (1 m) at its
    own pixels: the labels agree with the native run's, pixel-replicated, on >= 99% of the
    pixels (they differ only where the logits are resized to another grid: at edges), and the
    outputs stay on fine.tif's grid."""
    import rasterio

    from segearth_jax.scene import predict_scene

    native = predict_scene(ColourPredictor(tokenizer_dir), scenes["base"], "?",
                           tmp_path / "native", bands="3,2,1", batch_size=4)
    fine = predict_scene(ColourPredictor(tokenizer_dir), scenes["fine"], "?", tmp_path / "gsd",
                         bands="3,2,1", batch_size=4, gsd=1.0)
    assert fine["scale"] == 0.5 and fine["window"] == 256 and fine["window_model"] == 128
    assert fine["windows"] == native["windows"] and fine["legend"] == native["legend"]
    with rasterio.open(tmp_path / "native" / "mask.tif") as a, \
            rasterio.open(tmp_path / "gsd" / "mask.tif") as b, \
            rasterio.open(scenes["fine"]) as src:
        assert b.transform == src.transform and b.shape == src.shape and b.crs == src.crs
        coarse, labels = a.read(1), b.read(1)
    replicated = coarse.repeat(2, 0).repeat(2, 1)
    np.testing.assert_array_equal(labels == 255, replicated == 255)
    assert np.mean(labels == replicated) >= 0.99
    assert set(np.unique(labels)) == {0, 1, 2, 255}
    # And against the whole-scene reference at that scale (windows shrunk by area averaging).
    reference = _by_hand(ColourPredictor(tokenizer_dir), scenes["fine"], scale=0.5)
    assert np.mean(labels == reference) >= 0.999


def test_scene_names_group_across_windows_and_unnamed_keep_the_index_rule():
    from segearth_jax.scene import target_keys

    assert target_keys("<p>Cars </p> [SEG], <p>trucks.</p>[SEG]") == ["cars", "trucks"]
    assert target_keys("<p>TRUCKS</p>[SEG] then [SEG]") == ["trucks", "target 2"]
    assert target_keys("no targets") == []


def test_scene_outputs_open_as_cog_and_geopackage_with_the_crs(scenes, tokenizer_dir,
                                                               tmp_path):
    """mask.tif and probabilities.tif are COGs (tiled, overviews, nodata, the CRS); the
    GeoPackage has one layer per target with name, area and mean probability."""
    import pyogrio
    import rasterio

    from segearth_jax.scene import predict_scene

    out = tmp_path / "out"
    summary = predict_scene(ColourPredictor(tokenizer_dir), scenes["fine"], "?", out,
                            bands="3,2,1", batch_size=4, probabilities=True)
    for name, count in (("mask.tif", 1), ("probabilities.tif", 2)):
        with rasterio.open(out / name) as ds:
            assert ds.crs.to_string() == CRS and ds.count == count and ds.nodata == 255
            assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
            assert ds.overviews(1) and ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
    with rasterio.open(out / "probabilities.tif") as p, rasterio.open(out / "mask.tif") as m:
        probs, labels = p.read(), m.read(1)
        assert p.descriptions == ("bright thing", "dark thing")
    inside = labels == 1
    assert probs[0][inside].min() >= 127 and np.all(probs[0][inside] >= probs[1][inside])
    assert probs[:, labels == 0].max() <= 127 and np.all(probs[:, labels == 255] == 255)
    layers = {name for name, _ in pyogrio.list_layers(out / "targets.gpkg")}
    assert layers == {"bright_thing", "dark_thing"}
    for layer, t in (("bright_thing", 0), ("dark_thing", 1)):
        info = pyogrio.read_info(out / "targets.gpkg", layer=layer)
        assert info["crs"] == CRS and info["features"] > 0
        assert list(info["fields"]) == ["name", "target", "area", "mean_probability"]
        _, _, geometry, fields = pyogrio.raw.read(out / "targets.gpkg", layer=layer)
        names, targets, areas, means = fields
        assert set(names) == {summary["targets"][t]} and set(targets) == {t}
        assert np.all(areas >= 0.25) and np.all((means >= 0.5) & (means <= 1))
        # the areas add up to the target's pixels (0.25 m^2 each), the means to its mean
        assert areas.sum() == pytest.approx(np.sum(labels == t + 1) * 0.25)
        assert np.sum(areas * means) / areas.sum() == pytest.approx(
            probs[t][labels == t + 1].mean() / 254, rel=1e-9)
    geo = json.loads((out / "targets.geojson").read_text())
    assert len(geo["features"]) == summary["polygons"] > 0
    assert (out / "overview.png").exists()


def test_scene_list_and_shard_split_exactly(tmp_path):
    from segearth_jax.scene import list_scenes, shard

    for k in range(7):
        (tmp_path / f"s{k}.tif").write_bytes(b"")
    files, folders = list_scenes(str(tmp_path / "*.tif"))
    assert folders and len(files) == 7
    parts = [shard(files, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == files and [len(p) for p in parts] == [3, 2, 2]
    (tmp_path / "list.txt").write_text("s1.tif\n# a comment\n\ns5.tif\n")
    assert list_scenes(str(tmp_path / "list.txt")) == (
        [str(tmp_path / "s1.tif"), str(tmp_path / "s5.tif")], True)
    assert list_scenes(str(tmp_path / "s2.tif")) == ([str(tmp_path / "s2.tif")], False)


# ---------------------------------------------------------------------------------------------
# The real model code (tiny config, random weights) and the CLI, as users run it.


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory, tokenizer_dir) -> Path:
    """The tiny config with random weights (`testing.random_export`: numpy draws on the traced
    shapes, seconds instead of a minute of compiling the init), exported as training exports
    it; the `[SEG]` column of the LM head is scaled up so that the random model emits `[SEG]`s."""
    from configs import tiny
    from segearth_jax import testing

    return testing.random_export(tmp_path_factory.mktemp("model") / "export", tiny.get_config(),
                                 tokenizer_dir)


def test_scene_prompts_equal_single_runs_bit_for_bit(scenes, tiny_export, tmp_path):
    """--prompts (K = 3 questions, the vision towers once per batch of windows) writes, per
    question, exactly the files of a single-question run (labels and probabilities bit for
    bit); the split model equals the model's own predict (answers; mask logits <= 1e-4)."""
    import rasterio

    from segearth_jax.inference import SegEarthPredictor
    from segearth_jax.model_inputs import stack
    from segearth_jax.scene import open_scene, run_scene
    from segearth_jax.scene.towers import TowerRunner

    predictor = SegEarthPredictor(tiny_export, max_new_tokens=8)
    prompts = ["Where are the tanks?", "Segment the ships.", "Find the dark things."]
    # The split runner against the model's predict on the same windows.
    scene = open_scene(str(scenes["base"]), bands="3,2,1")
    crops = [scene.read_window(8, c, 128, 128)[0] for c in (80, 160)]
    runner = TowerRunner(predictor, 2)
    seen = runner.look(crops)
    for prompt in prompts[:2]:
        whole = predictor.predict(stack(predictor, crops, [prompt] * 2))
        for (answer, logits, _), res in zip(runner.ask(seen, prompt), whole, strict=True):
            assert answer == res["answer"] and "[SEG]" in answer
            np.testing.assert_allclose(logits, res["mask_logits"], atol=1e-4, rtol=0)
    outs = [tmp_path / "many" / f"q{k}" for k in range(3)]
    run_scene(predictor, scene, prompts, outs, batch_size=2, probabilities=True)
    for k, prompt in enumerate(prompts):
        run_scene(predictor, scene, [prompt], [tmp_path / f"one{k}"], batch_size=2,
                  probabilities=True)
        for name in ("mask.tif", "probabilities.tif"):
            with rasterio.open(outs[k] / name) as a, rasterio.open(tmp_path / f"one{k}" / name) \
                    as b:
                np.testing.assert_array_equal(a.read(), b.read())
        many = json.loads((outs[k] / "scene.json").read_text())
        one = json.loads((tmp_path / f"one{k}" / "scene.json").read_text())
        assert many == one and many["prompt"] == prompt and many["targets"]
    scene.close()


def _predict(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """The predict command as a user runs it (the runs share the test run's persistent
    compilation cache, tests/conftest.py: each compiles the same functions)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "segearth_jax.predict", *args], cwd=ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-3000:])
    return p


def test_scene_cli_uint16_nodata_writes_cog_and_gpkg(scenes, tiny_export, tmp_path):
    """`predict --scene FILE --bands 3,2,1 --prompt ... --out DIR` on the uint16 4-band
    nodata=0 scene: DIR/mask.tif (tiled, overviews, nodata, nodata pixels kept nodata, the
    CRS) and DIR/targets.gpkg."""
    import pyogrio
    import rasterio

    out = tmp_path / "out"
    p = _predict("--checkpoint", str(tiny_export), "--scene", str(scenes["fine"]), "--bands",
                 "3,2,1", "--prompt", "Where are the tanks?", "--out", str(out),
                 "--batch-size", "4", "--max-new-tokens", "8")
    assert "1 done" in p.stdout, p.stdout
    _, valid = _scene_bands()
    valid = valid.repeat(2, 0).repeat(2, 1)
    with rasterio.open(out / "mask.tif") as ds:
        assert ds.crs.to_string() == CRS and ds.nodata == 255 and ds.profile["tiled"]
        assert ds.overviews(1)
        labels = ds.read(1)
    assert np.all(labels[~valid] == 255) and np.all(labels[valid] != 255)
    layers = pyogrio.list_layers(out / "targets.gpkg")[:, 0]
    assert len(layers) and all(pyogrio.read_info(out / "targets.gpkg", layer=layer)["crs"]
                               == CRS for layer in layers)
    summary = json.loads((out / "scene.json").read_text())
    assert summary["stretch"]["percentiles"] == [2.0, 98.0] and summary["bands"] == [3, 2, 1]


def test_scene_cli_many_scenes_shard_resume_and_a_bad_one(scenes, tiny_export, tmp_path):
    """`--scene "DIR/*.tif" --shard 0/2` over 3 scenes takes 2 (one folder each with its
    mask.tif); a rerun skips them; a corrupt scene is reported and the others still run."""
    import shutil

    d = tmp_path / "region"
    d.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(scenes["base"], d / f"{name}.tif")
    common = ["--checkpoint", str(tiny_export), "--prompt", "Where are the tanks?",
              "--batch-size", "4", "--max-new-tokens", "8", "--bands", "3,2,1"]
    out = tmp_path / "out"
    p = _predict("--scene", str(d / "*.tif"), "--shard", "0/2", "--out", str(out), *common)
    assert "2 scene(s) in this shard: 2 done" in p.stdout, p.stdout
    assert sorted(x.name for x in out.iterdir()) == ["a", "c"]
    assert all((out / n / "mask.tif").exists() for n in ("a", "c"))
    p = _predict("--scene", str(d / "*.tif"), "--shard", "0/2", "--out", str(out), *common)
    assert "0 done, 2 already there" in p.stdout, p.stdout
    (d / "b.tif").write_bytes(b"not a raster")
    p = _predict("--scene", str(d / "*.tif"), "--out", str(out), *common, check=False)
    assert p.returncode == 2 and "0 done, 2 already there, 1 failed" in p.stdout, p.stdout
    assert "error: 1 of 3 scene(s) failed" in p.stderr and "Traceback" not in p.stderr
    assert json.loads((out / "failures.jsonl").read_text())["scene"].endswith("b.tif")
    p = _predict("--scene", str(d / "*.tif"), "--shard", "2/2", "--out", str(out), *common,
                 check=False)
    assert p.returncode == 2 and "error: --shard 2/2" in p.stderr


def test_scene_reading_defaults_and_user_errors(scenes, tmp_path):
    """Bands default to the colour interpretation (else the first three); bad --bands,
    --stretch, --gsd / --scale are one-line SceneErrors naming the flag."""
    import rasterio
    from rasterio.enums import ColorInterp

    from segearth_jax.scene import SceneError, open_scene

    scene = open_scene(str(scenes["base"]))
    assert scene.bands == [1, 2, 3] and scene.bands_from.startswith("first three")
    assert scene.stretch_percentiles == (2.0, 98.0) and scene.scale == 1.0 and scene.gsd == 1.0
    scene.close()
    tagged = tmp_path / "tagged.tif"
    bands, _ = _scene_bands()
    _write(tagged, bands, 1.0)
    with rasterio.open(tagged, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red,
                          ColorInterp.undefined]
    scene = open_scene(str(tagged), stretch="none", scale=0.25)
    assert scene.bands == [3, 2, 1] and scene.bands_from == "colour interpretation"
    assert scene.stretch is None and scene.scale == 0.25
    rgb, valid = scene.read_window(0, 0, 64, 96)
    assert rgb.shape == (16, 24, 3) and valid.shape == (64, 96)
    scene.close()
    for kwargs, needle in ((dict(bands="5,3,2"), "--bands 5,3,2: "),
                           (dict(bands="a,b"), "--bands a,b: "),
                           (dict(stretch="98,2"), "--stretch 98,2: "),
                           (dict(gsd=-1.0), "--gsd -1.0: "),
                           (dict(scale=1000.0), "outside [0.01, 100]")):
        with pytest.raises(SceneError, match=needle.replace("[", r"\[").replace(".", r"\.")):
            open_scene(str(scenes["base"]), **kwargs)


def test_scene_float_reflectance_with_nan_nodata_reads_like_the_uint16(scenes, tokenizer_dir,
                                                                      tmp_path):
    """The same scene as float32 reflectance (value / 10000, NaN nodata): the percentile
    stretch maps it to the same 8-bit view, so the labels equal the uint16 run's (>= 99.9%;
    rounding at a level's edge may differ) and the nodata pixels are the same."""
    import rasterio
    from rasterio.transform import from_origin

    from segearth_jax.scene import predict_scene

    bands, valid = _scene_bands()
    refl = np.where(valid, bands / 10000.0, np.nan).astype(np.float32)
    with rasterio.open(tmp_path / "refl.tif", "w", driver="GTiff", height=refl.shape[1],
                       width=refl.shape[2], count=4, dtype="float32", crs=CRS, nodata=np.nan,
                       transform=from_origin(500000.0, 4000000.0, 1.0, 1.0)) as ds:
        ds.write(refl)
    a = predict_scene(ColourPredictor(tokenizer_dir), scenes["base"], "?", tmp_path / "u16",
                      bands="3,2,1", batch_size=4)
    b = predict_scene(ColourPredictor(tokenizer_dir), tmp_path / "refl.tif", "?",
                      tmp_path / "f32", bands="3,2,1", batch_size=4)
    np.testing.assert_allclose(np.asarray(b["stretch"]["values"]) * 10000,
                               a["stretch"]["values"], rtol=1e-5)
    with rasterio.open(tmp_path / "u16" / "mask.tif") as x, \
            rasterio.open(tmp_path / "f32" / "mask.tif") as y:
        u16, f32 = x.read(1), y.read(1)
    np.testing.assert_array_equal(u16 == 255, f32 == 255)
    assert np.all(f32[~valid] == 255) and np.mean(u16 == f32) >= 0.999


def test_scene_flags_in_predict_help():
    """`predict --help` lists the scene options and one --attention/--no-attention pair with
    its default; `predict` and `scene` do not import each other in a circle."""
    p = subprocess.run([sys.executable, "-c", "import sys, segearth_jax.scene; "
                        "print('segearth_jax.predict' in sys.modules)"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
    assert p.stdout.strip() == "False", p.stderr[-2000:]
    p = subprocess.run([sys.executable, "-m", "segearth_jax.predict", "--help"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                       text=True, timeout=300)
    text = " ".join(p.stdout.split())
    assert p.returncode == 0 and text.count("--no-attention") == 2  # usage + options
    assert "--attention, --no-attention" in text and "default: on for --image, off for --inputs" \
        in text
    for flag in ("--bands", "--stretch", "--gsd", "--scale", "--prompts", "--probabilities",
                 "--shard", "--overlap"):
        assert flag in text


def test_scene_without_targets_writes_empty_but_valid_outputs(scenes, tokenizer_dir, tmp_path):
    """An answer without `[SEG]` everywhere: all background (nodata kept), a GeoJSON with no
    feature and a GeoPackage with one empty `targets` layer in the CRS."""
    import pyogrio
    import rasterio

    from segearth_jax.scene import predict_scene

    class Nothing(ColourPredictor):
        def predict(self, batch):
            return [dict(answer="No such thing here.", mask_logits=np.zeros((0, 32, 32),
                                                                             np.float32))
                    for _ in range(len(batch["pixels"]))]

    s = predict_scene(Nothing(tokenizer_dir), scenes["base"], "?", tmp_path, bands="3,2,1")
    assert s["targets"] == [] and s["legend"] == {} and s["polygons"] == 0
    with rasterio.open(tmp_path / "mask.tif") as ds:
        assert set(np.unique(ds.read(1))) == {0, 255}
    assert json.loads((tmp_path / "targets.geojson").read_text())["features"] == []
    info = pyogrio.read_info(tmp_path / "targets.gpkg", layer="targets")
    assert info["features"] == 0 and info["crs"] == CRS
