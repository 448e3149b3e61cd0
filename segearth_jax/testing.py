"""Stand-ins for tests and benchmarks: random batches with the input pipeline's shapes."""

from __future__ import annotations

import ml_collections
import numpy as np

from segearth_jax.constants import IGNORE_INDEX
from segearth_jax.input.batch import example_batch


def random_batch(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, np.ndarray]:
    """A deterministic random global train batch with the pipeline's shapes: image span, a
    labelled answer span, one or two `[SEG]`s with rectangle masks (tests, benchmarks)."""
    d = config.data
    b = d.batch_size
    r = np.random.default_rng(seed)
    batch = example_batch(config, b)
    g = d.siglip_size // d.patch_size
    n_img = g * g
    a = 3 + n_img + 10  # answer start
    if a + 20 > d.max_len:
        raise ValueError(f"max_len {d.max_len} < {a + 20} needed by the random batch")
    ids = r.integers(1, 400, (b, d.max_len)).astype(np.int32)
    ids[:, 3:3 + n_img] = d.image_token_id
    batch["input_ids"] = ids
    labels = np.full((b, d.max_len), IGNORE_INDEX, np.int32)
    labels[:, a:a + 20] = ids[:, a:a + 20]
    batch["labels"] = labels
    batch["siglip_pixels"] = r.uniform(-1, 1, batch["siglip_pixels"].shape).astype(np.float32)
    batch["pixels"] = r.normal(size=batch["pixels"].shape).astype(np.float32)
    batch["seg_positions"][:, 0] = a + 5
    batch["seg_positions"][::2, 1] = a + 10
    batch["seg_valid"] = batch["seg_positions"] >= 0
    s = d.image_size
    masks = np.zeros_like(batch["masks"])
    masks[:, :, s // 4:s // 2, s // 8:s // 2] = 1
    batch["masks"] = masks * batch["seg_valid"][:, :, None, None]
    grid = np.zeros_like(batch["masks_grid"])
    grid[:, :, 1:3, 0:2] = 1
    batch["masks_grid"] = grid * batch["seg_valid"][:, :, None, None]
    return batch
