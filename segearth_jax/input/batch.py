"""The train batch's schema: every key the train step takes, with its shape and dtype.

The input pipeline (`pipeline.Preprocess`, batched) produces these keys; training derives its
abstract batch from here to init and compile without data, and `segearth_jax.testing` fills it
with random values. Shapes follow `config.data`: B rows, T = max_len, Q = max_seg,
S = image_size (the Swin canvas), G = siglip_size // patch_size (the spatial-loss grid).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from segearth_jax.constants import IGNORE_INDEX


def example_batch(config: Any, batch_size: int) -> dict[str, np.ndarray]:
    """Zeros with the pipeline's train-batch shapes (for init and compilation), from
    `config.data`:

    input_ids [B, T] int32; labels [B, T] int32 (IGNORE_INDEX: no text loss); siglip_pixels
    [B, siglip_size, siglip_size, 3] float32; pixels [B, S, S, 3] float32; seg_positions [B, Q]
    int32 (-1: padding); seg_valid [B, Q] bool; masks [B, Q, S, S] uint8; masks_grid
    [B, Q, G, G] float32.
    """
    d = config.data
    s, g, q = d.image_size, d.siglip_size // d.patch_size, d.max_seg
    return {
        "input_ids": np.zeros((batch_size, d.max_len), np.int32),
        "labels": np.full((batch_size, d.max_len), IGNORE_INDEX, np.int32),
        "siglip_pixels": np.zeros((batch_size, d.siglip_size, d.siglip_size, 3), np.float32),
        "pixels": np.zeros((batch_size, s, s, 3), np.float32),
        "seg_positions": np.full((batch_size, q), -1, np.int32),
        "seg_valid": np.zeros((batch_size, q), bool),
        "masks": np.zeros((batch_size, q, s, s), np.uint8),
        "masks_grid": np.zeros((batch_size, q, g, g), np.float32),
    }
