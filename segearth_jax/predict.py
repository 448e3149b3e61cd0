"""Prediction on one image: `python -m segearth_jax.predict --checkpoint DIR --image IMG
--prompt "..." [--out DIR]`; on many: `--inputs FOLDER|"GLOB"|FILE.jsonl [--prompt "..."]
[--batch-size 8]` (one result folder per input, `results.jsonl` with RLE masks, resumable); on
whole scenes: `--scene RASTER|"GLOB"|LIST --prompt "..."|--prompts FILE` (`segearth_jax.scene`:
any dtype and band count, nodata, `--gsd`; sliding windows; COG label masks, GeoPackage
polygons; `--shard I/N`).

Prints the answer and writes, in `--out`: `mask_<i>.png` (one per `[SEG]`, 0/255, original
size), `overlay.png` (masks in distinct colours with their `<p>` names), `attention_<i>.png`
(the `[SEG]`'s attention over the image-token grid, mean over layers and heads, as the paper's
Figure 4d), and `result.json` (answer, target names, COCO-RLE masks).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax import cli, errors, visualize
from segearth_jax.inference import SegEarthPredictor, masks_to_image
from segearth_jax.model_inputs import prepare, stack  # noqa: F401  (re-exported)
from segearth_jax.scene.many import LIST_SUFFIXES, list_scenes, parse_shard
from segearth_jax.scene.raster import SceneError

# Largest image one prediction takes (its masks come back at full size, float32 logits first);
# larger rasters go through `--scene`.
MAX_IMAGE_PIXELS = 1 << 26  # 67 megapixels, e.g. 8192 x 8192


def predict_batch(predictor: SegEarthPredictor, images: list[np.ndarray],
                  instructions: list[str], outs: list[Path | None] | None = None,
                  attention: bool = True, batch_size: int | None = None) -> list[dict[str, Any]]:
    """Answers + masks (original size) for several images, run together (prompts padded to the
    model's prompt length; a short batch is filled up to `batch_size` rows by repeating its last
    one, so every call has one compiled shape); each result's files go into its `outs` entry."""
    batch = stack(predictor, images, instructions, batch_size)
    n = len(images)
    outs = outs or [None] * n
    results = []
    for i, res in enumerate(predictor.predict(batch)[:n]):
        image = images[i]
        masks = masks_to_image(res["mask_logits"], tuple(batch["canvas_hw"][i]),
                               image.shape[:2], predictor.geometry.image_size)
        names = visualize.parse_targets(res["answer"])[:len(masks)]
        names += [f"target {j + 1}" for j in range(len(names), len(masks))]
        result = {"answer": res["answer"], "targets": names, "masks": masks}
        if attention and len(masks):
            result["attention"] = predictor.seg_attention(
                batch["siglip_pixels"][i], res["prompt"], res["tokens"], res["seg_index"])
        if outs[i] is not None:
            write_result(outs[i], image, instructions[i], result)
        results.append(result)
    return results


def predict(predictor: SegEarthPredictor, image: np.ndarray, instruction: str,
            out: Path | None = None, attention: bool = True) -> dict[str, Any]:
    """Answer + masks (original size) for one image; writes the PNGs and JSON into `out`."""
    return predict_batch(predictor, [image], [instruction], [out], attention)[0]


def pictures(image: np.ndarray, result: dict[str, Any]) -> dict[str, np.ndarray]:
    """The pictures of one prediction, RGB uint8 [H, W, 3] at the image's size, by file stem:
    `mask_<i>` (0/255), `overlay` (masks in their colours, named), `attention_<i>` (heatmaps)."""
    masks, names = result["masks"], result["targets"]
    out = {f"mask_{i}": np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=-1)
           for i, m in enumerate(masks)}
    out["overlay"] = visualize.overlay(image, masks, names)
    for i, att in enumerate(result.get("attention", [])):
        out[f"attention_{i}"] = visualize.attention_heatmap(image, att)
    return out


def result_json(image: np.ndarray, instruction: str, result: dict[str, Any]) -> dict[str, Any]:
    """result.json's content: instruction, answer, target names, image size, COCO-RLE masks."""
    return {"instruction": instruction, "answer": result["answer"], "targets": result["targets"],
            "image_size": list(image.shape[:2]), "masks": visualize.masks_to_rle(result["masks"])}


def write_result(out: Path, image: np.ndarray, instruction: str, result: dict[str, Any]) -> None:
    """The masks, overlay, heatmaps and result.json of one prediction, into `out` (result.json
    last: its presence marks a finished result)."""
    out.mkdir(parents=True, exist_ok=True)
    for stem, rgb in pictures(image, result).items():
        visualize.write_png(out / f"{stem}.png", rgb)
    (out / "result.json").write_text(json.dumps(result_json(image, instruction, result),
                                                indent=2) + "\n")


def read_image(path: str | os.PathLike, name: str | None) -> np.ndarray:
    """An image file as the model takes it: RGB uint8 [H, W, 3] (`records.load_image`: 8-bit gray
    replicated to RGB, the alpha of RGBA and gray + alpha dropped; 16-bit, float, multi-band,
    multi-page, corrupt or non-image files refused), at most MAX_IMAGE_PIXELS pixels.
    Raises `records.BadInput` (message: file, `name`, what is wrong, what to do)."""
    from segearth_jax.input.records import BadInput, load_image

    image = load_image(path, name)
    h, w = image.shape[:2]
    if h * w > MAX_IMAGE_PIXELS:
        raise BadInput(path, name, f"{w}x{h} image ({h * w / 1e6:.0f} megapixels) is larger than "
                       f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels: for a large raster use "
                       "`predict --scene` (sliding windows), or downscale it", "unsupported_image")
    return image


# ---------------------------------------------------------------------------------------------
# Many inputs: a folder, a glob or a JSONL of (image, prompt) pairs


def list_inputs(spec: str, prompt: str | None) -> list[tuple[str, str, str]]:
    """`spec` (a folder: its image files, sorted; a glob; or a .jsonl file of {"image": path,
    "prompt": text} lines, paths relative to the file) -> [(name, image path, prompt)]. `prompt`
    is used where a line has none (and for folders and globs, where it is required). Names are
    the files' stems, made unique with their relative folders where two stems collide; they
    name the result folders, so a rerun finds what it already did."""
    import glob

    from segearth_jax.input.readers import IMAGE_EXTENSIONS

    path = Path(spec)
    if path.suffix == ".jsonl" and path.is_file():
        items = []
        for k, raw in enumerate(path.read_text().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                line = json.loads(raw)
                image = str((path.parent / line["image"]).resolve())
            except (ValueError, KeyError, TypeError) as e:
                raise InputError(f"{path}:{k}: expected {{\"image\": ..., \"prompt\": ...}}, got "
                                 f"{raw[:80]!r} ({type(e).__name__}: {e})") from None
            text = line.get("prompt") or prompt
            if not text:
                raise InputError(f"{path}:{k}: no prompt (give one per line or --prompt)")
            items.append((image, text))
    else:
        if path.is_dir():
            files = sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            files = sorted(glob.glob(spec, recursive=True))
        if not files:
            raise InputError(f"--inputs {spec}: no image files found")
        if not prompt:
            raise InputError("--prompt is required with a folder or a glob")
        items = [(f, prompt) for f in files]
    stems = [Path(f).stem for f, _ in items]
    common = Path(os.path.commonpath([str(Path(f).parent) for f, _ in items]))
    names = [s if stems.count(s) == 1 else
             str(Path(f).relative_to(common).with_suffix("")).replace(os.sep, "__")
             for s, (f, _) in zip(stems, items, strict=True)]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"--inputs {spec}: inputs share a name: {dup[:5]} (the same image "
                         "twice? give each (image, prompt) pair once)")
    return [(n, f, t) for n, (f, t) in zip(names, items, strict=True)]


class InputError(errors.UserError, ValueError):
    """A bad --inputs specification (a one-line message for the user)."""


def predict_many(predictor: SegEarthPredictor, inputs: list[tuple[str, str, str]], out: Path,
                 batch_size: int = 8, attention: bool = False) -> dict[str, int]:
    """Each (name, image, prompt) into `out/<name>/` (as `predict` writes), `batch_size` images
    per call, with a progress bar (images/s); `out/results.jsonl` gets one line per input
    (answer, targets, RLE masks). Inputs whose `out/<name>/result.json` exists are skipped (a
    rerun resumes); an unreadable image is reported and skipped. -> counts done / skipped /
    failed."""
    from tqdm import tqdm

    from segearth_jax.input.records import BadInput

    out.mkdir(parents=True, exist_ok=True)
    todo = [x for x in inputs if not (out / x[0] / "result.json").exists()]
    counts = {"done": 0, "skipped": len(inputs) - len(todo), "failed": 0}
    if counts["skipped"]:
        print(f"{counts['skipped']} of {len(inputs)} inputs already have results in {out}/: "
              "skipped", flush=True)
    bar = tqdm(total=len(todo), unit="img", desc="predict", dynamic_ncols=True)
    with open(out / "results.jsonl", "a") as log, open(out / "failures.jsonl", "a") as bad:
        for start in range(0, len(todo), batch_size):
            chunk, images = [], []
            for name, file, prompt in todo[start:start + batch_size]:
                try:
                    images.append(read_image(file, name))
                    chunk.append((name, file, prompt))
                except BadInput as e:
                    counts["failed"] += 1
                    tqdm.write(f"skipped {file}: {e.problem}")
                    bad.write(json.dumps({"name": name, "image": file, "error": str(e)}) + "\n")
                    bar.update(1)
            if not chunk:
                continue
            results = predict_batch(predictor, images, [p for *_, p in chunk],
                                    [out / n for n, *_ in chunk], attention, batch_size)
            for (name, file, prompt), image, res in zip(chunk, images, results, strict=True):
                log.write(json.dumps({
                    "name": name, "image": file, "prompt": prompt, "answer": res["answer"],
                    "targets": res["targets"], "image_size": list(image.shape[:2]),
                    "masks": visualize.masks_to_rle(res["masks"])}) + "\n")
            log.flush()
            counts["done"] += len(chunk)
            bar.update(len(chunk))
    bar.close()
    return counts


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="SegEarth-R2 model directory")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--image", help="one image file (8-bit RGB, gray or RGBA; up to "
                      f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels)")
    what.add_argument("--inputs", help="many: a folder of images, a glob (quoted), or a .jsonl of "
                      '{"image": path, "prompt": text} lines')
    what.add_argument("--scene", help="whole scenes in sliding windows: one raster (GeoTIFF of "
                      "any dtype and band count, PNG, JPEG; outputs in OUT), a glob (quoted) or a "
                      f"list file ({', '.join(LIST_SUFFIXES)}: one path a line; outputs in "
                      "OUT/<scene>/): mask.tif (COG labels), targets.gpkg/.geojson, overview.png, "
                      "scene.json")
    parser.add_argument("--prompt", help="the instruction (for --inputs: used where a JSONL line "
                        "has none)")
    parser.add_argument("--prompts", help="--scene: a file of instructions, one a line, each "
                        "answered over every window (the vision towers run once per window); "
                        "outputs in q1/, q2/, ... of each scene's folder")
    parser.add_argument("--out", default="predict_out", help="output directory")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="images (or scene windows) per call")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default); the official code samples at 0.2")
    parser.add_argument("--attention", action=argparse.BooleanOptionalAction, default=None,
                        help="write the [SEG] attention heatmaps (one more pass per image; "
                        "default: on for --image, off for --inputs; --scene writes none)")
    scene = parser.add_argument_group("--scene options")
    scene.add_argument("--overlap", type=float, default=0.25,
                       help="windows overlap by this fraction of their size")
    scene.add_argument("--bands", help="1-based bands read as R,G,B (e.g. 4,3,2; one band: "
                       "gray); default: by the raster's colour interpretation, else the first "
                       "three (scene.json says which)")
    scene.add_argument("--stretch", default="auto", help="LOW,HIGH percentiles of each band "
                       "mapped to 0 and 255 (e.g. 2,98; computed once per scene), 'none' (values "
                       "clipped to 0..255), or 'auto': none for 8-bit rasters, else 2,98")
    res = scene.add_mutually_exclusive_group()
    res.add_argument("--gsd", type=float, help="the ground resolution (CRS units, metres) the "
                     "model sees: windows are resampled on read; outputs stay on the source "
                     "grid (default: the raster's own pixels)")
    res.add_argument("--scale", type=float, help="model pixels per source pixel (e.g. 0.5: "
                     "windows twice the model's size, halved), for rasters without a projected "
                     "CRS")
    scene.add_argument("--probabilities", action="store_true", help="also write "
                       "probabilities.tif (COG, one band per target, 0..254, 255 nodata)")
    scene.add_argument("--shard", help="I/N: take every N-th scene from the I-th (0-based), "
                       "e.g. a SLURM array task's index")
    args = parser.parse_args(argv)


    out = Path(args.out)
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    errors.check_dir(args.checkpoint, "--checkpoint", "a SegEarth-R2 model directory (a "
                     "convert.segearth_r2 --out or a training export)")
    if args.prompts and not args.scene:
        parser.error("--prompts goes with --scene (for many images use --inputs FILE.jsonl)")
    if args.scene:
        return _scenes(args, parser, out)
    if args.inputs:
        inputs = list_inputs(args.inputs, args.prompt)
        predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens,
                                      temperature=args.temperature)
        c = predict_many(predictor, inputs, out, args.batch_size, bool(args.attention))
        print(f"{c['done']} predicted, {c['skipped']} already there, {c['failed']} unreadable "
              f"(listed in {out}/failures.jsonl); results in {out}/<name>/ and "
              f"{out}/results.jsonl")
        return
    if not args.prompt:
        parser.error("--prompt is required")
    image = read_image(args.image, "predict")  # a BadInput is a UserError
    predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature)
    attention = args.attention is not False
    res = predict(predictor, image, args.prompt, out, attention=attention)
    print(f"answer: {res['answer']}")
    n = len(res["masks"])
    print(f"{n} mask(s) ({', '.join(res['targets']) or 'none'}) written to {out}/: "
          f"mask_*.png, overlay.png{', attention_*.png' if n and attention else ''}"
          f", result.json")


def _scenes(args: argparse.Namespace, parser: argparse.ArgumentParser, out: Path) -> None:
    """--scene: one or many rasters, one or many questions (`segearth_jax.scene`)."""
    from segearth_jax.scene import predict_scenes

    if bool(args.prompt) == bool(args.prompts):
        parser.error("--scene takes --prompt or --prompts (one of them)")
    if args.prompts:
        if not Path(args.prompts).is_file():
            raise errors.MissingFile(f"--prompts {args.prompts}: no such file; --prompts takes a "
                                     "text file of instructions, one a line")
        prompts = [ln.strip() for ln in Path(args.prompts).read_text().splitlines() if ln.strip()]
        if not prompts:
            raise errors.BadValue(f"--prompts {args.prompts}: no instruction in it")
    else:
        prompts = [args.prompt]
    list_scenes(args.scene)  # a bad --scene or --shard fails before the model loads
    parse_shard(args.shard)
    predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature)
    c = predict_scenes(predictor, args.scene, prompts, out, single_prompt=not args.prompts,
                       shard_spec=args.shard,
                       open_kwargs=dict(bands=args.bands, stretch=args.stretch, gsd=args.gsd,
                                        scale=args.scale),
                       run_kwargs=dict(overlap=args.overlap, batch_size=args.batch_size,
                                       probabilities=args.probabilities))
    print(f"{c['scenes']} scene(s) in this shard: {c['done']} done, {c['skipped']} already "
          f"there, {c['failed']} failed; outputs in {', '.join(c['folders'][:3])}"
          f"{' ...' if len(c['folders']) > 3 else ''} (mask.tif, targets.gpkg, targets.geojson, "
          "overview.png, scene.json)")
    if c["failed"]:
        raise SceneError(f"{c['failed']} of {c['scenes']} scene(s) failed: see "
                         f"{out}/failures.jsonl")


if __name__ == "__main__":
    main()
