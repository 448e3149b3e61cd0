"""Stand-ins for tests and benchmarks: random batches with the input pipeline's shapes, and a
random-weight model exported as training exports it. Never imports the trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from segearth_jax import text
from segearth_jax.constants import IGNORE_INDEX
from segearth_jax.input.batch import example_batch
from segearth_jax.merged import write_model
from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config


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


def random_params(config: ml_collections.ConfigDict, seed: int = 0) -> dict[str, Any]:
    """The model of `config.model` with random numpy weights: normal(0, 0.02), norm scales 1,
    biases 0. Drawn on the init's traced shapes (`jax.eval_shape`), so it takes seconds where
    compiling the init takes a minute; the same `seed` gives the same weights."""
    model = SegEarthR2(SegEarthR2Config.from_config(config.model))
    b = example_batch(config, 1)
    shapes = jax.eval_shape(lambda rng: model.init(
        rng, b["input_ids"], b["siglip_pixels"], b["pixels"], b["seg_positions"],
        b["seg_positions"] >= 0)["params"], jax.random.key(0))
    rng = np.random.default_rng(seed)

    def draw(path: tuple, leaf: jax.ShapeDtypeStruct) -> np.ndarray:
        name = path[-1].key
        if name in ("scale", "bias"):
            return np.full(leaf.shape, 1.0 if name == "scale" else 0.0, leaf.dtype)
        return (rng.standard_normal(leaf.shape) * 0.02).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_export(directory: Path, config: ml_collections.ConfigDict, tokenizer_dir: Path,
                  seg_scale: float = 40.0, seed: int = 0) -> Path:
    """`random_params` exported to `directory` as training exports a model (`write_model`:
    LoRA merged, model.json, the tokenizer of `tokenizer_dir`); returns it. The `[SEG]` column
    of the LM head is multiplied by `seg_scale` so that the random model answers with `[SEG]`s
    (scene tests and benchmarks need masks)."""
    params = random_params(config, seed)
    seg = text.load_tokenizer(tokenizer_dir).convert_tokens_to_ids(text.SEG)
    params["mllm"]["llm"]["lm_head"]["kernel"][:, seg] *= seg_scale
    return write_model(Path(directory), config, jax.device_put(params), {}, tokenizer_dir)
