"""The user-facing commands on the tiny config and a small synthetic set: train (killed and
resumed), evaluate, predict. Each command runs as a subprocess, as a user runs it; a shared
persistent compilation cache keeps the repeated compilations cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

import tests.conftest  # the offline environment and the compile flags of conftest
from segearth_jax import checkpoint
from segearth_jax.input.sources import open_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """Synthetic raw files + TFDS build + a tokenizer trained once; common CLI settings."""
    from configs import tiny
    from data import builders, synthetic
    from segearth_jax.input.sources import load_or_make_tokenizer

    root = tmp_path_factory.mktemp("e2e")
    synthetic.generate(root / "raw", n=60, seed=0)
    builders.build("synthetic", manual_dir=root / "raw", data_dir=root / "tfds")
    config = tiny.get_config()
    config.data.data_dir = str(root / "tfds")
    load_or_make_tokenizer(config, root, open_source(config.data, "train"))
    return dict(root=root, flags=[
        f"--config.data.data_dir={root / 'tfds'}", f"--config.tokenizer={root / 'tokenizer'}",
        "--config.data.batch_size=4", "--config.log_every=1"],
        env=dict(os.environ))  # with the run's compilation cache (tests/conftest.py)


def _run(env: dict, module: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env["env"],
                       capture_output=True, text=True, timeout=1500)
    if check:
        assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-6000:])
    return p


def _train(env: dict, workdir: Path, *extra: str, check: bool = True):
    """The training command with the test hooks of tests/train_hooks.py (the data order of each
    step; an optional SIGKILL), compiled fast (tests/conftest.py; every run here alike: six
    steps, the compile is the cost)."""
    fast = {**env, "env": {**env["env"], "XLA_FLAGS": tests.conftest.FAST_COMPILE_XLA_FLAGS}}
    return _run(fast, "tests.train_hooks", "--config", "configs/tiny.py", "--workdir",
                str(workdir), *env["flags"], "--config.total_steps=6",
                "--config.checkpoint.every=2", "--log_data_order", *extra, check=check)


def _data_order(workdir: Path) -> dict[int, str]:
    """step -> record indices; the last line for a step wins (a resumed run redoes steps)."""
    order = {}
    for line in (workdir / "data_order.0.txt").read_text().splitlines():
        step, rest = line.split(" ", 1)
        order[int(step)] = rest
    return order


@pytest.fixture(scope="module")
def trained(env) -> Path:
    """An uninterrupted 6-step run (its export is the model the other tests use)."""
    workdir = env["root"] / "run_a"
    _train(env, workdir)
    return workdir


def test_killed_run_resumes_bitwise(env, trained):
    workdir = env["root"] / "run_b"
    killed = _train(env, workdir, "--sigkill_after_step=4", check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (workdir / "export").exists()
    _train(env, workdir)  # resumes from the step-4 checkpoint
    assert _data_order(workdir) == _data_order(trained)
    assert sorted(_data_order(workdir)) == list(range(1, 7))
    a = checkpoint.restore_params(trained / "export")
    b = checkpoint.restore_params(workdir / "export")
    import jax

    for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a),
                            jax.tree_util.tree_leaves(b), strict=True):
        assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)
    # The run logged every loss component separately (clu writer, TensorBoard event file), and
    # metrics.jsonl holds the same means per log line; the killed + resumed run re-logs the
    # steps after its checkpoint with the same values.
    assert list((trained / "logs").glob("events.out.tfevents.*"))
    logged = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in logged] == list(range(1, 7))
    assert all(np.isfinite(m[k]) for m in logged for k in
               ("loss", "text_loss", "bce_loss", "dice_loss", "spatial_loss"))
    resumed = {m["step"]: m for m in map(json.loads, (workdir / "metrics.jsonl").read_text()
                                          .splitlines())}
    assert resumed == {m["step"]: m for m in logged}


def test_evaluate_reports_every_subset(env, trained, tmp_path):
    p = _run(env, "segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint",
             str(trained / "export"), "--out", str(tmp_path), *env["flags"][:2])
    report = json.loads((tmp_path / "eval_test_segearth_r2.json").read_text())
    subsets = {"semantic", "instance", "part", "single", "multiple", "explicit", "implicit",
               "short", "long"}
    assert subsets <= set(report["subsets"]), report.keys()
    assert "segearth_r2" in p.stdout and "| average |" in p.stdout
    assert (tmp_path / "eval_test_segearth_r2.md").exists()
    # configs/tiny.py evaluates by generation: the report says so and counts, per subset, the
    # answers by their [SEG] count against the GT masks.
    assert report["mode"] == "generate" and "generate" in p.stdout
    for name, row in report["subsets"].items():
        emission = row["seg_emission"]
        assert set(emission) == {"equal", "fewer", "more", "none"}, name
        assert sum(emission.values()) == row["n_samples"], name
    lines = [json.loads(x) for x in
             (tmp_path / "eval_test_segearth_r2_records.jsonl").read_text().splitlines()]
    assert len(lines) == report["average"]["n_samples"] + report["average"]["n_failed"]
    assert all("answer" in x and x["n_seg_emitted"] >= 0 for x in lines)
    # Deterministic: the same checkpoint and data give the same numbers.
    again = tmp_path / "again"
    _run(env, "segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint",
         str(trained / "export"), "--out", str(again), *env["flags"][:2])
    assert (again / "eval_test_segearth_r2.json").read_text() == \
        (tmp_path / "eval_test_segearth_r2.json").read_text()
    # Batches split over 8 (simulated) devices: the same report.
    sharded = tmp_path / "sharded"
    eight = {**env, "env": {**env["env"],
                            "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}}
    _run(eight, "segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint",
         str(trained / "export"), "--out", str(sharded), *env["flags"][:2])
    assert (sharded / "eval_test_segearth_r2.json").read_text() == \
        (tmp_path / "eval_test_segearth_r2.json").read_text()


def _check_outputs(out: Path, shape: tuple[int, ...], heatmaps: bool = True) -> None:
    """One prediction's files; `heatmaps`: one attention_<i>.png per mask (predict --image
    writes them by default, --inputs only with --attention)."""
    result = json.loads((out / "result.json").read_text())
    assert result["image_size"] == list(shape[:2])
    assert cv2.imread(str(out / "overlay.png")).shape[:2] == shape[:2]
    n = len(result["masks"])
    assert len(list(out.glob("mask_*.png"))) == n
    assert len(list(out.glob("attention_*.png"))) == (n if heatmaps else 0)
    for rle, name in zip(result["masks"], result["targets"], strict=True):
        assert rle["size"] == list(shape[:2]) and name


def test_predict_cli_writes_masks_overlay_heatmaps(env, trained, tmp_path):
    shape = (90, 150, 3)  # non-square
    path = tmp_path / "in.png"
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
    p = _run(env, "segearth_jax.predict", "--checkpoint", str(trained / "export"), "--image",
             str(path), "--prompt", "Segment the storage tanks.", "--out", str(tmp_path / "out"),
             "--max-new-tokens", "24")
    assert "answer:" in p.stdout
    _check_outputs(tmp_path / "out", shape)


def test_predict_odd_images(trained, tmp_path):
    """Gray, RGBA and a 5 x 7 image, through the same loader as the command line."""
    from segearth_jax.inference import SegEarthPredictor
    from segearth_jax.input.records import load_image
    from segearth_jax.predict import predict

    predictor = SegEarthPredictor(trained / "export", max_new_tokens=24)
    rng = np.random.default_rng(1)
    for kind, shape in {"gray": (64, 64), "rgba": (80, 60, 4), "tiny": (5, 7, 3)}.items():
        path = tmp_path / f"{kind}.png"
        cv2.imwrite(str(path), rng.integers(0, 255, shape, dtype=np.uint8))
        image = load_image(path, kind)
        assert image.shape == (*shape[:2], 3) and image.dtype == np.uint8
        res = predict(predictor, image, "Segment the storage tanks.", tmp_path / kind)
        assert all(m.shape == shape[:2] for m in res["masks"])
        _check_outputs(tmp_path / kind, shape)


def test_predict_unreadable_image_is_a_clear_error(env, trained, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    p = _run(env, "segearth_jax.predict", "--checkpoint", str(trained / "export"), "--image",
             str(bad), "--prompt", "x", check=False)
    assert p.returncode != 0 and "bad.png" in p.stderr and "Traceback" not in p.stderr


def test_non_finite_loss_stops_without_saving(env, trained, tmp_path):
    # Start from the trained export with NaN [SEG] projector weights: the first step's loss is
    # NaN. (Poisoned weights rather than, say, lr=1e30: the compiled program stays the one in
    # the compilation cache; a new constant would cost a full recompilation.)
    params = checkpoint.restore_params(trained / "export")
    kernel = np.asarray(params["seg_projector"]["kernel"])
    params["seg_projector"]["kernel"] = np.full_like(kernel, np.nan)
    checkpoint.save_params(tmp_path / "nan_init", params)
    workdir = tmp_path / "run"
    p = _train(env, workdir, f"--config.init.checkpoint={tmp_path / 'nan_init'}", check=False)
    assert p.returncode == 1, p.stderr[-3000:]
    assert "non-finite loss or gradient at step 0" in p.stderr
    assert not list((workdir / "checkpoints").glob("[0-9]*")) and not (workdir / "export").exists()


def test_evaluate_teacher_forced_mode_cli(env, trained, tmp_path):
    """--mode teacher_forced: the report names the mode, scores every record with one mask per
    GT [SEG] (no generation, so no emission counts)."""
    p = _run(env, "segearth_jax.evaluate", "--config", "configs/tiny.py", "--checkpoint",
             str(trained / "export"), "--out", str(tmp_path), "--mode", "teacher_forced",
             *env["flags"][:2])
    report = json.loads((tmp_path / "eval_test_segearth_r2.json").read_text())
    assert report["mode"] == "teacher_forced" and "teacher-forced" in p.stdout
    assert report["average"]["n_samples"] > 0 and report["average"]["n_failed"] == 0
    assert all("seg_emission" not in row for row in report["subsets"].values())
    lines = [json.loads(x) for x in
             (tmp_path / "eval_test_segearth_r2_records.jsonl").read_text().splitlines()]
    assert all(len(x["iou"]) == x["n_gt"] for x in lines)


def test_teacher_forced_masks_are_the_forward_at_the_gt_seg_positions(env, trained):
    """The teacher-forced predictor reads each mask query at a GT [SEG] of prompt + GT answer:
    its masks equal the model's own forward (LLM hidden states at those positions -> segment),
    one per GT [SEG], to fp32 rounding (1e-4)."""
    import jax
    import jax.numpy as jnp

    from configs import tiny
    from segearth_jax import text
    from segearth_jax.inference import SegEarthPredictor
    from segearth_jax.input import pipeline

    predictor = SegEarthPredictor(trained / "export")
    config = tiny.get_config()
    config.data.data_dir = str(env["root"] / "tfds")
    source = open_source(config.data, "test")
    config.data.batch_size = 4
    batch = next(iter(pipeline.make_loader(source, predictor.tokenizer, config.data, train=False,
                                           seed=0, teacher_forced=True, worker_count=0)))
    ids, pos, valid = batch["input_ids"], batch["seg_positions"], batch["seg_valid"]
    seg_id = predictor.tokenizer.convert_tokens_to_ids(text.SEG)
    for i in range(len(ids)):
        rec = source[int(batch["record_index"][i])]
        n = int(valid[i].sum())
        assert n == np.asarray(rec["masks"]).shape[0] >= 1
        assert np.all(ids[i, pos[i, :n]] == seg_id)  # the GT answer's [SEG]s, in order
    forced = predictor.teacher_forced(batch)
    m = predictor.model

    @jax.jit  # the reference in one program (op by op it takes longer than compiling it)
    def reference(params, ids, siglip_pixels, pixels, pos, valid):
        _, hidden = m.apply({"params": params}, ids, siglip_pixels,
                            method=lambda mod, x, px: mod.mllm(x, px, seg_positions=pos))
        seg_hidden = jnp.take_along_axis(hidden, jnp.maximum(pos, 0)[..., None], axis=1)
        return m.apply({"params": params}, pixels, seg_hidden, valid, method=m.segment)[-1]

    ref = np.asarray(reference(predictor.params, ids, batch["siglip_pixels"], batch["pixels"],
                               pos, valid))
    for i, res in enumerate(forced):
        n = int(valid[i].sum())
        assert res["mask_logits"].shape == (n, *ref.shape[2:])
        assert float(np.max(np.abs(res["mask_logits"] - ref[i, :n]))) <= 1e-4


def test_batch_predict_folder_resumes_and_skips_bad_files(env, trained, tmp_path):
    """--inputs FOLDER: one result folder per image (same-stem files get their relative path as
    name), results.jsonl with RLE masks, an unreadable file reported and skipped; a rerun skips
    what is done."""
    rng = np.random.default_rng(3)
    folder = tmp_path / "in"
    shapes = {"a.png": (90, 150, 3), "b.jpg": (64, 64, 3), "c.png": (40, 70, 3),
              "sub/a.png": (50, 50, 3)}
    for name, shape in shapes.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / name), rng.integers(0, 255, shape, dtype=np.uint8))
    (folder / "bad.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    args = ["--checkpoint", str(trained / "export"), "--inputs", str(folder), "--prompt",
            "Segment the storage tanks.", "--out", str(out), "--batch-size", "2",
            "--max-new-tokens", "24"]
    p = _run(env, "segearth_jax.predict", *args)
    assert "4 predicted, 0 already there, 1 unreadable" in p.stdout, p.stdout
    assert "bad.png" in p.stdout + p.stderr and "Traceback" not in p.stderr
    names = {"a": "a.png", "sub__a": "sub/a.png", "b": "b.jpg", "c": "c.png"}
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(x["name"] for x in lines) == sorted(names)
    for name, file in names.items():
        _check_outputs(out / name, shapes[file], heatmaps=False)
    (failure,) = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["name"] == "bad"
    stamps = {n: (out / n / "result.json").stat().st_mtime_ns for n in names}
    p = _run(env, "segearth_jax.predict", *args)
    assert "0 predicted, 4 already there, 1 unreadable" in p.stdout, p.stdout
    assert stamps == {n: (out / n / "result.json").stat().st_mtime_ns for n in names}
    assert len((out / "results.jsonl").read_text().splitlines()) == 4


def test_batch_predict_equals_one_image_at_a_time(trained, tmp_path):
    """A batch of images gives each one the answer and masks it gets alone (batching is
    padding only: the masks agree to a boundary pixel)."""
    from segearth_jax.inference import SegEarthPredictor
    from segearth_jax.predict import list_inputs, predict, predict_batch

    predictor = SegEarthPredictor(trained / "export", max_new_tokens=24)
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, s, dtype=np.uint8) for s in ((70, 90, 3), (128, 128, 3))]
    prompts = ["Segment the storage tanks.", "Where are the ships?"]
    together = predict_batch(predictor, images, prompts, attention=False, batch_size=4)
    for image, prompt, res in zip(images, prompts, together, strict=True):
        alone = predict(predictor, image, prompt, attention=False)
        assert alone["answer"] == res["answer"] and len(alone["masks"]) == len(res["masks"])
        for a, b in zip(alone["masks"], res["masks"], strict=True):
            assert np.mean(a != b) <= 0.01
    # A JSONL of (image, prompt) pairs, paths relative to the file.
    spec = tmp_path / "pairs.jsonl"
    spec.write_text(json.dumps({"image": "x.png", "prompt": "Where?"}) + "\n\n"
                    + json.dumps({"image": "sub/y.png"}) + "\n")
    with pytest.raises(ValueError, match=r"pairs.jsonl:3: no prompt"):
        list_inputs(str(spec), None)
    assert list_inputs(str(spec), "Fallback?") == [
        ("x", str(tmp_path / "x.png"), "Where?"), ("y", str(tmp_path / "sub/y.png"), "Fallback?")]
    spec.write_text(json.dumps({"image": "x.png", "prompt": "a"}) + "\n"
                    + json.dumps({"image": "x.png", "prompt": "b"}) + "\n")
    with pytest.raises(ValueError, match="share a name"):
        list_inputs(str(spec), None)


def _geotiff(path: Path, h: int, w: int) -> tuple:
    """An RGB GeoTIFF (UTM 33N, 0.5 m pixels) with bright rectangles across window borders."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(5)
    image = rng.integers(40, 90, (3, h, w), dtype=np.uint8)
    for y, x in ((80, 80), (200, 250), (300, 500), (20, 400)):  # windows: 128 px, stride 96
        image[:, y:y + 40, x:x + 60] = 230
    crs, transform = "EPSG:32633", from_origin(500000.0, 4000000.0, 0.5, 0.5)
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=3, dtype="uint8",
                       crs=crs, transform=transform) as ds:
        ds.write(image)
    return crs, transform


def test_scene_cli_keeps_the_georeference(env, trained, tmp_path):
    """--scene on a 400 x 600 GeoTIFF (the tiny model's windows: 128 px, 25% overlap): the label
    mask has the source's CRS, transform and size; the GeoJSON, overview and summary are
    written."""
    import rasterio

    h, w = 400, 600
    crs, transform = _geotiff(tmp_path / "scene.tif", h, w)
    out = tmp_path / "out"
    p = _run(env, "segearth_jax.predict", "--checkpoint", str(trained / "export"), "--scene",
             str(tmp_path / "scene.tif"), "--prompt", "Segment the storage tanks.", "--out",
             str(out), "--batch-size", "4", "--max-new-tokens", "24")
    assert "24 windows" in p.stdout, p.stdout  # rows 0/96/192/272 x columns 0/96/.../384/472
    with rasterio.open(out / "mask.tif") as ds:
        assert ds.crs.to_string() == crs and ds.transform == transform
        assert (ds.height, ds.width, ds.count, ds.dtypes[0]) == (h, w, 1, "uint8")
    assert json.loads((out / "targets.geojson").read_text())["type"] == "FeatureCollection"
    assert json.loads((out / "scene.json").read_text())["crs"] == crs
    assert cv2.imread(str(out / "overview.png")).shape[:2] == (h, w)
    p = _run(env, "segearth_jax.predict", "--checkpoint", str(trained / "export"), "--scene",
             str(tmp_path / "missing.tif"), "--prompt", "x", check=False)
    assert p.returncode != 0 and "missing.tif" in p.stderr and "Traceback" not in p.stderr


class _BrightPredictor:
    """The trained predictor's geometry and tokenizer, with a deterministic 'model': target 0
    (tank) where the Swin view is bright, target 1 (ground) elsewhere, as canvas-grid logits."""

    def __init__(self, real):
        self.geometry, self.tokenizer = real.geometry, real.tokenizer

    def predict(self, batch):
        px = np.asarray(batch["pixels"]).mean(-1)  # [B, S, S], normalized
        b, s, _ = px.shape
        grid = px.reshape(b, s // 4, 4, s // 4, 4).mean((2, 4))
        return [dict(answer="the <p>tank</p>[SEG] on the <p>ground</p>[SEG]",
                     mask_logits=np.stack([grid[i] - 0.5, 0.3 - grid[i]]).astype(np.float32))
                for i in range(b)]


def test_scene_is_stitched_without_seams(trained, tmp_path):
    """The streamed, strip-by-strip stitching equals the same windows blended by hand over the
    whole scene (no seam where windows or strips meet); polygons lie in the source CRS."""
    import rasterio

    from segearth_jax.inference import SegEarthPredictor, logits_to_image
    from segearth_jax.predict import stack
    from segearth_jax.scene import ABSENT_LOGIT, blend_weight, predict_scene, window_starts

    h, w = 400, 600
    crs, transform = _geotiff(tmp_path / "scene.tif", h, w)
    fake = _BrightPredictor(SegEarthPredictor(trained / "export"))
    summary = predict_scene(fake, tmp_path / "scene.tif", "tanks?", tmp_path / "out",
                            batch_size=4)
    assert summary["targets"] == ["tank", "ground"] and summary["windows"] == 24
    with rasterio.open(tmp_path / "out" / "mask.tif") as ds:
        labels = ds.read(1)
    win, q = fake.geometry.image_size, fake.geometry.max_seg
    with rasterio.open(tmp_path / "scene.tif") as src:
        image = src.read().transpose(1, 2, 0)
    acc, wsum = np.zeros((q, h, w), np.float32), np.zeros((h, w), np.float32)
    for r in window_starts(h, win, 96):
        for c in window_starts(w, win, 96):
            batch = stack(fake, [image[r:r + win, c:c + win]], ["tanks?"])
            res = fake.predict(batch)[0]
            logits = np.full((q, win, win), ABSENT_LOGIT, np.float32)
            logits[:2] = logits_to_image(res["mask_logits"], (win, win), (win, win), win)
            acc[:, r:r + win, c:c + win] += logits * blend_weight(win, win)
            wsum[r:r + win, c:c + win] += blend_weight(win, win)
    blended = acc / wsum
    by_hand = np.where(blended.max(0) > 0, blended.argmax(0) + 1, 0)
    np.testing.assert_array_equal(labels, by_hand)
    assert 0.02 < np.mean(labels == 1) < 0.5 and np.mean(labels == 2) > 0.4
    assert labels[200 + 20, 250 + 30] == 1 and labels[5, 5] == 2  # a rectangle, the ground

    geo = json.loads((tmp_path / "out" / "targets.geojson").read_text())
    tanks = [f for f in geo["features"] if f["properties"]["name"] == "tank"]
    assert len(tanks) >= 4  # the four rectangles (each across a window border)
    left, top = transform.c, transform.f
    for f in geo["features"]:
        xs, ys = np.asarray(f["geometry"]["coordinates"][0]).T
        assert left <= xs.min() and xs.max() <= left + 0.5 * w
        assert top - 0.5 * h <= ys.min() and ys.max() <= top
    assert "32633" in (geo["crs_wkt"] or "") or "UTM zone 33N" in geo["crs_wkt"]
