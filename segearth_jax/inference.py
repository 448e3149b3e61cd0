"""Inference with a SegEarth-R2 directory (converted or exported): the answer, one mask per
`[SEG]`, and the `[SEG]`->image attention, shared by evaluate, predict, the scene tiler and the app.

    predictor = SegEarthPredictor("runs/x/export")
    results = predictor.predict(batch)   # an eval batch of segearth_jax.input.pipeline
    masks = masks_to_image(results[0]["mask_logits"], canvas_hw, image_hw, canvas_size)
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from segearth_jax import checkpoint, errors, sharding, text
from segearth_jax.generate import generate
from segearth_jax.input.settings import Settings


class SegEarthPredictor:
    """A converted or exported SegEarth-R2 directory, ready to answer and segment.

    `predict(batch)` takes the eval-mode batch of `segearth_jax.input.pipeline` (left-padded
    prompts, the two image views, `canvas_hw`, `image_hw`) and returns per image the answer,
    the generated tokens, and one mask-logit map per generated `[SEG]` on the canvas grid.
    """

    def __init__(self, directory: str | Path, *, max_new_tokens: int = 128,
                 temperature: float = 0.0, seed: int = 0):
        from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config

        spec = checkpoint.read_model_spec(directory)
        if spec.get("kind") != "segearth_r2":
            raise errors.BadValue(f"{directory}: model kind {spec.get('kind')!r}, expected "
                             "'segearth_r2' (a convert.segearth_r2 output or a training export)")
        self.config = checkpoint.model_config(directory, spec, SegEarthR2Config.from_config)
        self.model = SegEarthR2(self.config)
        self.geometry = Settings.from_spec(spec)  # the inputs it was trained on
        self.geometry.check_model(self.config)
        # Params replicated on this process's devices; batches split over them (data parallel;
        # the jitted calls follow the inputs' shardings). Processes get different records.
        self.mesh = sharding.make_mesh(-1, 1, jax.local_devices())
        self.params = jax.device_put(checkpoint.restore_params(directory),
                                     sharding.replicated(self.mesh))
        self.tokenizer = text.load_tokenizer(Path(directory) / "tokenizer")
        self.seg_id = self.tokenizer.convert_tokens_to_ids(text.SEG)
        self.eos_id = self.tokenizer.convert_tokens_to_ids(text.END)
        self.max_new_tokens, self.temperature = max_new_tokens, temperature
        self.rng = jax.random.key(seed)
        m = self.model
        self._encode = jax.jit(lambda p, x: m.apply({"params": p}, x, method=m.encode_images))
        self._segment = jax.jit(lambda p, px, h, v: m.apply({"params": p}, px, h, v,
                                                            method=m.segment)[-1])
        # One forward over prompt + answer (the lm_head's logits are unused and compiled away).
        self._forced = jax.jit(lambda p, ids, sp, px, pos, v: m.apply(
            {"params": p}, ids, sp, px, pos, v)["mask_logits"][-1])

    def teacher_forced(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """The official evaluation: no generation; one forward over prompt + GT answer (the
        teacher-forced eval batch of `segearth_jax.input.pipeline`) and one mask per GT `[SEG]`,
        its query the hidden state at that position. -> per image: mask_logits [n, S/4, S/4]
        (canvas grid, float32) for its n GT `[SEG]`s."""
        keys = ("input_ids", "siglip_pixels", "pixels", "seg_positions", "seg_valid")
        args = self._shard({k: batch[k] for k in keys})
        logits = np.asarray(self._forced(self.params, *(args[k] for k in keys)), np.float32)
        n = np.asarray(batch["seg_valid"]).sum(axis=1)
        return [dict(mask_logits=logits[i, :n[i]]) for i in range(len(logits))]

    def predict(self, batch: dict[str, np.ndarray]) -> list[dict[str, Any]]:
        """-> per image: answer (str), tokens [n], seg_index [Q] (position of each `[SEG]` in
        the generated tokens), mask_logits [Q, S/4, S/4] (canvas grid, float32), prompt
        (input ids [P]) for the attention probe."""
        host, batch = batch, self._shard(batch)
        feats = self._encode(self.params, batch["siglip_pixels"])
        out = generate(self.model, self.params, batch["input_ids"], batch["attention_mask"],
                       feats, max_new_tokens=self.max_new_tokens, eos_id=self.eos_id,
                       temperature=self.temperature, rng=self.rng)
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
        b, q = tokens.shape[0], self.geometry.max_seg
        index = np.zeros((b, q), np.int32)
        valid = np.zeros((b, q), bool)
        found = []
        for i in range(b):
            pos = np.flatnonzero(tokens[i, :lengths[i]] == self.seg_id)[:q]
            index[i, :len(pos)], valid[i, :len(pos)] = pos, True
            found.append(len(pos))
        hidden = jnp.take_along_axis(out["hidden"], jnp.asarray(index)[..., None], axis=1)
        logits = np.asarray(self._segment(self.params, batch["pixels"], hidden, valid),
                            np.float32)
        results = []
        for i in range(b):
            toks = tokens[i, :lengths[i]]
            results.append(dict(
                answer=self.tokenizer.decode(toks[toks != self.eos_id]),
                tokens=toks, seg_index=index[i, :found[i]], mask_logits=logits[i, :found[i]],
                prompt=np.asarray(host["input_ids"][i])[np.asarray(host["attention_mask"][i],
                                                                    bool)]))
        return results

    def _shard(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        """The model inputs of `batch` split over the devices along the batch axis (when the
        batch divides evenly; otherwise replicated)."""
        keys = [k for k in ("siglip_pixels", "pixels", "input_ids", "attention_mask",
                            "seg_positions", "seg_valid") if k in batch]
        n = len(batch["input_ids"])
        put = lambda v: jax.device_put(v, sharding.batch_sharding(self.mesh, v.ndim)
                                       if n % self.mesh.size == 0
                                       else sharding.replicated(self.mesh))
        return {**batch, **{k: put(np.asarray(batch[k])) for k in keys}}

    def seg_attention(self, siglip_pixels: np.ndarray, prompt: np.ndarray, tokens: np.ndarray,
                      seg_index: np.ndarray) -> np.ndarray:
        """The `[SEG]`->image attention (mean over layers and heads) of one answer, by a
        teacher-forced pass over prompt + generated tokens: [Q, g, g]."""
        # Padded at the end to one fixed length (one compilation): causal rows never see it.
        length = self.geometry.max_prompt_len + self.max_new_tokens
        ids = np.zeros((1, length), np.int32)
        ids[0, :len(prompt) + len(tokens)] = np.concatenate([prompt, tokens])
        seg = np.full((1, self.geometry.max_seg), -1, np.int32)
        seg[0, :len(seg_index)] = len(prompt) + np.asarray(seg_index, np.int32)
        att = np.asarray(self._probe(self.params, siglip_pixels[None], ids, seg))[0]
        if att.ndim == 3:  # [H, Q, N] when the probe keeps heads
            att = att.mean(axis=0)
        g = self.geometry.grid
        return att[:len(seg_index)].reshape(len(seg_index), g, g)

    @functools.cached_property
    def _probe(self):
        from segearth_jax.models.segearth_r2 import seg_attention

        m = self.model

        def probe(p, x, ids, seg):
            feats = m.apply({"params": p}, x, method=m.encode_images)
            _, inter = m.apply({"params": p}, ids, image_features=feats, seg_positions=seg,
                               method=m.llm, mutable=["intermediates"])
            return seg_attention(inter["intermediates"]).mean(axis=0)

        return jax.jit(probe)


def logits_to_image(mask_logits: np.ndarray, canvas_hw: tuple[int, int],
                    image_hw: tuple[int, int], canvas_size: int) -> np.ndarray:
    """Mask logits on the canvas grid [Q, h, w] -> float32 logits [Q, H, W] on the original
    image: bilinear to the canvas, crop the content (no padding), bilinear to the original size."""
    import cv2

    out = np.zeros((len(mask_logits), *image_hw), np.float32)
    for i, m in enumerate(mask_logits):
        m = cv2.resize(m, (canvas_size, canvas_size), interpolation=cv2.INTER_LINEAR)
        m = m[:canvas_hw[0], :canvas_hw[1]]
        out[i] = cv2.resize(m, (image_hw[1], image_hw[0]), interpolation=cv2.INTER_LINEAR)
    return out


def masks_to_image(mask_logits: np.ndarray, canvas_hw: tuple[int, int],
                   image_hw: tuple[int, int], canvas_size: int) -> np.ndarray:
    """Mask logits on the canvas grid [Q, h, w] -> boolean masks [Q, H, W] of the original image
    (`logits_to_image` > 0)."""
    return logits_to_image(mask_logits, canvas_hw, image_hw, canvas_size) > 0


