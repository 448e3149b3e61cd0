"""Web app: `python -m segearth_jax.app --checkpoint DIR [--host 127.0.0.1 --port 7860]
[--examples DIR]` (Gradio; `pip install -e ".[app]"`).

Upload an image (or pick an example), type an instruction, and get what `predict` writes: the
answer, the overlay (each target in its colour, named), one mask and one `[SEG]` attention
heatmap per target, and result.json (COCO-RLE masks) to download. The model is loaded and
compiled once at start; requests wait in a queue and run one at a time. An upload is read by
`predict.read_image`, so the app takes and refuses what `predict --image` does, with the same
messages, shown in the page: gray is used as RGB, the alpha of RGBA is dropped; 16-bit, float,
multi-band, non-image files and images over `predict.MAX_IMAGE_PIXELS` are refused, and so are
uploads over MAX_UPLOAD. Masks are computed by `predict.predict` at the image's own size; only
the pictures sent to the page are downscaled (longest side DISPLAY_SIDE).
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax import cli, errors, visualize
from segearth_jax.predict import pictures, predict, read_image, result_json

MAX_UPLOAD = "100mb"  # Gradio refuses larger uploads before they reach the app.
DISPLAY_SIDE = 1024  # Longest side of the pictures sent to the page (display only).
N_EXAMPLES = 8  # At most this many examples, one per annotation file first.
DEMO_EXAMPLES = "demo_out/synthetic_raw/test"  # `bash run.sh demo`'s test images.

log = logging.getLogger("segearth_jax.app")


def for_display(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> the same, downscaled (area) so its longest side is at most
    DISPLAY_SIDE; smaller images unchanged."""
    import cv2

    h, w = rgb.shape[:2]
    scale = DISPLAY_SIDE / max(h, w)
    if scale >= 1:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def legend(names: list[str]) -> str:
    """HTML: one coloured swatch + name per target (the overlay's colours)."""
    if not names:
        return "<p>No target: the answer has no <code>[SEG]</code>.</p>"
    items = []
    for i, name in enumerate(names):
        r, g, b = visualize.color(i)
        items.append(f'<span class="target"><span class="swatch" style="background:rgb({r},{g},'
                     f'{b})"></span>{i + 1}. {html.escape(name)}</span>')
    return '<div class="legend">' + " ".join(items) + "</div>"


def read_upload(path: str | None) -> tuple[np.ndarray | None, str]:
    """An uploaded file -> (RGB uint8 [H, W, 3], "") or (None, a one-line message)."""
    from segearth_jax.input.records import BadInput

    if not path:
        return None, "Upload an image (or pick an example) first."
    name = Path(path).name
    try:
        return read_image(path, None), ""
    except BadInput as e:
        return None, f"{name}: {e.problem}"


class Segmenter:
    """The app's two handlers around one loaded, compiled predictor; `workdir` holds the
    result.json files offered for download."""

    def __init__(self, predictor: Any, workdir: Path):
        self.predictor, self.workdir = predictor, workdir

    def check(self, path: str | None) -> tuple[np.ndarray | None, str]:
        """On upload: (the image as the model takes it, for display; status)."""
        image, problem = read_upload(path)
        if image is None:
            return None, f"**Cannot use this file.** {problem}" if path else ""
        h, w = image.shape[:2]
        return for_display(image), f"{Path(path).name}: {w} x {h} pixels. Type an instruction."

    def segment(self, path: str | None, instruction: str) -> tuple:
        """(file, instruction) -> (answer, legend HTML, overlay, [(mask, caption)],
        [(heatmap, caption)], result.json path, status); on a bad input everything empty and
        the status says why."""
        empty = ("", "", None, [], [], None)
        image, problem = read_upload(path)
        if image is None:
            return (*empty, f"**Cannot use this file.** {problem}")
        if not instruction or not instruction.strip():
            return (*empty, "**Type an instruction** (e.g. \"Segment the vehicles.\").")
        start = time.perf_counter()
        try:
            res = predict(self.predictor, image, instruction.strip())
        except Exception as e:  # A bug: the page gets one line, the log the traceback.
            log.exception("prediction failed")
            return (*empty, f"**The model failed on this input** ({type(e).__name__}: {e}); "
                    "the server log has the details.")
        pics = {k: for_display(v) for k, v in pictures(image, res).items()}
        names = res["targets"]
        caption = lambda i: f"{i + 1}. {names[i]}"  # (its colour: the legend's swatch)
        masks = [(pics[f"mask_{i}"], caption(i)) for i in range(len(names))]
        heat = [(pics[f"attention_{i}"], caption(i)) for i in range(len(res.get("attention", [])))]
        out = Path(tempfile.mkdtemp(dir=self.workdir)) / f"{Path(path).stem}_result.json"
        out.write_text(json.dumps(result_json(image, instruction.strip(), res), indent=2) + "\n")
        h, w = image.shape[:2]
        status = (f"{len(names)} target(s) in {time.perf_counter() - start:.1f} s; masks at the "
                  f"image's size ({w} x {h}) in the result JSON"
                  + (", pictures downscaled for display" if max(h, w) > DISPLAY_SIDE else ""))
        return (res["answer"].strip(), legend(names), pics["overlay"], masks, heat, str(out),
                status)


def find_examples(folder: str | Path | None) -> list[list[str]]:
    """[[image path, instruction]] from a folder in the synthetic/LaSeRS layout (images/ and
    annotations/*.json lists of {"image_name", "description"}): the first record of each
    annotation file, then the next ones, each image once, up to N_EXAMPLES. A folder of images
    only: the images with an empty instruction. Absent folder: []."""
    from segearth_jax.input.readers import IMAGE_EXTENSIONS

    folder = Path(folder) if folder else None
    if folder is None or not folder.is_dir():
        return []
    lists = []
    for f in sorted((folder / "annotations").glob("*.json")):
        try:
            records = json.loads(f.read_text())
            lists.append([[str(folder / "images" / r["image_name"]), str(r["description"])]
                          for r in records if (folder / "images" / r["image_name"]).is_file()])
        except (ValueError, KeyError, TypeError):
            log.warning("examples: %s is not a list of {image_name, description}: skipped", f)
    examples, seen = [], set()
    for row in (rows[k] for k in range(N_EXAMPLES) for rows in lists if k < len(rows)):
        if row[0] not in seen:  # Subset files share records: each image once.
            seen.add(row[0])
            examples.append(row)
    if not lists:
        images = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        examples = [[str(p), ""] for p in images]
    return examples[:N_EXAMPLES]


def warm_up(predictor: Any) -> None:
    """Compiles every jitted call of a prediction (encode, generate, segment, attention probe)
    on a blank image, so the first request does not wait for XLA."""
    from segearth_jax.predict import stack

    g = predictor.geometry
    image = np.full((g.image_size, g.image_size, 3), 128, np.uint8)
    predict(predictor, image, "Segment the buildings.", attention=False)
    batch = stack(predictor, [image], ["Segment the buildings."])
    prompt = batch["input_ids"][0][batch["attention_mask"][0].astype(bool)]
    predictor.seg_attention(batch["siglip_pixels"][0], prompt, np.zeros(1, np.int32),
                            np.zeros(1, np.int32))


GALLERY = dict(format="png", columns=3, fit_columns=False, height=220, object_fit="contain")
CSS = """
.legend .target { margin-right: 1em; white-space: nowrap; }
.legend .swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em;
                  vertical-align: middle; border: 1px solid #0004; }
"""


def build(segmenter: Segmenter, examples: list[list[str]], title: str):
    """The page: inputs on the left, results on the right; API endpoint `/segment`."""
    import gradio as gr

    with gr.Blocks(title="SegEarth-R2") as demo:
        gr.Markdown(f"## SegEarth-R2: reasoning segmentation of remote-sensing images\n{title}")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="Image (PNG, JPEG, TIFF; 8-bit)", elem_id="upload")
                preview = gr.Image(label="Input", format="png", interactive=False,
                                   elem_id="preview")
                instruction = gr.Textbox(label="Instruction", elem_id="instruction",
                                         placeholder="e.g. Segment the vehicles.")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                if examples:
                    gr.Examples(examples, [upload, instruction], label="Examples")
            with gr.Column():
                status = gr.Markdown(elem_id="status")
                answer = gr.Textbox(label="Answer", interactive=False, elem_id="answer")
                names = gr.HTML(elem_id="legend")
                overlay = gr.Image(label="Overlay", format="png", interactive=False,
                                   elem_id="overlay")
                with gr.Row():
                    masks = gr.Gallery(label="Masks", elem_id="masks", **GALLERY)
                    heat = gr.Gallery(label="[SEG] attention", elem_id="attention", **GALLERY)
                download = gr.File(label="Result JSON (RLE masks)", elem_id="result")
        upload.change(segmenter.check, upload, [preview, status], api_visibility="private",
                      concurrency_limit=4)
        outputs = [answer, names, overlay, masks, heat, download, status]
        gr.on([run.click, instruction.submit], segmenter.segment, [upload, instruction],
              outputs, api_name="segment")
    return demo


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    """Serves the app; a user mistake (no model, no Gradio, a taken port) is one `error:` line
    and exit status 2 (segearth_jax/cli.py)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Required: the SegEarth-R2 model "
                        "directory (a training export or a convert.segearth_r2 output).")
    parser.add_argument("--host", default="127.0.0.1", help="The address to listen on "
                        "(0.0.0.0: every interface; default: %(default)s).")
    parser.add_argument("--port", type=int, default=7860,
                        help="The port to listen on (default: %(default)s).")
    parser.add_argument("--examples", default=DEMO_EXAMPLES, help="A folder of example images "
                        "(the synthetic/LaSeRS layout gives them their instructions).")
    parser.add_argument("--max-new-tokens", type=int, default=128,
                        help="The longest answer, in tokens (default: %(default)s).")
    parser.add_argument("--queue-size", type=int, default=32,
                        help="How many requests may wait at most (default: %(default)s).")
    args = parser.parse_args(argv)
    errors.check_dir(args.checkpoint, "--checkpoint", "a SegEarth-R2 model directory (a training "
                     "export or a convert.segearth_r2 output)")
    if not (Path(args.checkpoint) / "model.json").is_file():
        raise errors.MissingFile(f"--checkpoint {args.checkpoint}: no model.json there (expected a "
                                 "training export or a convert.segearth_r2 output)")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing sent anywhere
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise errors.BadValue('the web app needs Gradio: pip install -e ".[app]"') from None
    from segearth_jax.inference import SegEarthPredictor

    t = time.perf_counter()
    predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens)
    warm_up(predictor)
    print(f"model {args.checkpoint} loaded and compiled in {time.perf_counter() - t:.0f} s",
          flush=True)
    examples = find_examples(args.examples)
    with tempfile.TemporaryDirectory(prefix="segearth_app_") as work:
        demo = build(Segmenter(predictor, Path(work)), examples, f"Model: `{args.checkpoint}`")
        demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
        try:
            demo.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_UPLOAD,
                        ssr_mode=False, footer_links=["api"], css=CSS,
                        allowed_paths=[str(Path(args.examples).resolve())] if examples else None)
        except OSError as e:  # e.g. the port is taken
            raise errors.BadValue(f"--host/--port: cannot serve on {args.host}:{args.port}: {e}"
                                  ) from None


if __name__ == "__main__":
    main()
