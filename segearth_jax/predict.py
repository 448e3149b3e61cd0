"""Prediction on one image: `python -m segearth_jax.predict --checkpoint DIR --image IMG
--prompt "..." [--out DIR]`.

Prints the answer and writes, in `--out`: `mask_<i>.png` (one per `[SEG]`, 0/255, original
size), `overlay.png` (masks in distinct colours with their `<p>` names), `attention_<i>.png`
(the `[SEG]`'s attention over the image-token grid, mean over layers and heads, as the paper's
Figure 4d), and `result.json` (answer, target names, COCO-RLE masks).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from segearth_jax import visualize
from segearth_jax.generate import SegEarthPredictor, masks_to_image


def prepare(image: np.ndarray, instruction: str, predictor: SegEarthPredictor
            ) -> dict[str, np.ndarray]:
    """One RGB uint8 image + instruction -> an eval-mode batch of one."""
    from segearth_jax.input import preprocess, tokens

    g = predictor.geometry
    swin, canvas_hw = preprocess.swin_view(image, g.image_size)
    enc = tokens.encode_prompt(
        predictor.tokenizer, instruction, n_image_tokens=(g.siglip_size // g.patch_size) ** 2,
        image_token_id=g.image_token_id, max_prompt_len=g.max_prompt_len, template=g.template,
        seg_in_prompt=g.seg_in_prompt, official_prompt=g.official_prompt)
    return {"siglip_pixels": preprocess.siglip_view(image, g.siglip_size)[None],
            "pixels": swin[None], "input_ids": enc["input_ids"][None],
            "attention_mask": enc["attention_mask"][None],
            "canvas_hw": np.asarray([canvas_hw], np.int32),
            "image_hw": np.asarray([image.shape[:2]], np.int32)}


def predict(predictor: SegEarthPredictor, image: np.ndarray, instruction: str,
            out: Path | None = None, attention: bool = True) -> dict[str, Any]:
    """Answer + masks (original size) for one image; writes the PNGs and JSON into `out`."""
    batch = prepare(image, instruction, predictor)
    res = predictor.predict(batch)[0]
    masks = masks_to_image(res["mask_logits"], tuple(batch["canvas_hw"][0]), image.shape[:2],
                           predictor.geometry.image_size)
    names = visualize.parse_targets(res["answer"])[:len(masks)]
    names += [f"target {i + 1}" for i in range(len(names), len(masks))]
    result = {"answer": res["answer"], "targets": names, "masks": masks}
    if attention and len(masks):
        result["attention"] = predictor.seg_attention(batch["siglip_pixels"][0], res["prompt"],
                                                      res["tokens"], res["seg_index"])
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for i, m in enumerate(masks):
            visualize.write_png(out / f"mask_{i}.png",
                                np.repeat((m * 255).astype(np.uint8)[..., None], 3, axis=-1))
        visualize.write_png(out / "overlay.png", visualize.overlay(image, masks, names))
        for i, att in enumerate(result.get("attention", [])):
            visualize.write_png(out / f"attention_{i}.png",
                                visualize.attention_heatmap(image, att))
        (out / "result.json").write_text(json.dumps({
            "instruction": instruction, "answer": res["answer"], "targets": names,
            "image_size": list(image.shape[:2]), "masks": visualize.masks_to_rle(masks)},
            indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="SegEarth-R2 model directory")
    parser.add_argument("--image", required=True, help="image file (any size; RGB, gray, RGBA)")
    parser.add_argument("--prompt", required=True, help="the instruction")
    parser.add_argument("--out", default="predict_out", help="output directory")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0: greedy (default); the official code samples at 0.2")
    parser.add_argument("--no-attention", action="store_true", help="skip the heatmaps")
    args = parser.parse_args(argv)

    from segearth_jax.input.records import BadInput, load_image

    try:
        image = load_image(args.image, "predict")
    except BadInput as e:
        sys.exit(f"error: {e}")
    predictor = SegEarthPredictor(args.checkpoint, max_new_tokens=args.max_new_tokens,
                                  temperature=args.temperature)
    out = Path(args.out)
    res = predict(predictor, image, args.prompt, out, attention=not args.no_attention)
    print(f"answer: {res['answer']}")
    n = len(res["masks"])
    print(f"{n} mask(s) ({', '.join(res['targets']) or 'none'}) written to {out}/: "
          f"mask_*.png, overlay.png{', attention_*.png' if n and not args.no_attention else ''}"
          f", result.json")


if __name__ == "__main__":
    main()
