"""Eval-mode model inputs of RGB images + instructions, shared by `predict` and `scene` (below
both: neither imports the other for them)."""

from __future__ import annotations

import numpy as np

from segearth_jax.inference import SegEarthPredictor


def prepare(image: np.ndarray, instruction: str, predictor: SegEarthPredictor
            ) -> dict[str, np.ndarray]:
    """One RGB uint8 image [H, W, 3] + instruction -> an eval-mode batch of one."""
    from segearth_jax.input import preprocess, tokens

    g = predictor.geometry
    swin, canvas_hw = preprocess.swin_view(image, g.image_size)
    enc = tokens.encode_prompt(
        predictor.tokenizer, instruction, n_image_tokens=g.n_image_tokens,
        image_token_id=g.image_token_id, max_prompt_len=g.max_prompt_len, **g.template_kwargs)
    return {"siglip_pixels": preprocess.siglip_view(image, g.siglip_size)[None],
            "pixels": swin[None], "input_ids": enc["input_ids"][None],
            "attention_mask": enc["attention_mask"][None],
            "canvas_hw": np.asarray([canvas_hw], np.int32),
            "image_hw": np.asarray([image.shape[:2]], np.int32)}


def stack(predictor: SegEarthPredictor, images: list[np.ndarray], instructions: list[str],
          batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Eval-mode batch of the images (+ instructions), filled up to `batch_size` rows by
    repeating the last one (every call one compiled shape)."""
    rows = [prepare(im, ins, predictor) for im, ins in zip(images, instructions, strict=True)]
    rows += rows[-1:] * max(0, (batch_size or len(rows)) - len(rows))
    return {k: np.concatenate([b[k] for b in rows]) for k in rows[0]}
