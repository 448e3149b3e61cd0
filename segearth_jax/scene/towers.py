"""Many questions over one batch of windows, the image paid once: the vision towers (SigLIP and
its projector; Swin + pixel decoder) run once per batch of windows, and each question runs only
the language model (generation) and the mask decoder on the cached features.

    runner = window_runner(predictor, batch_size)
    seen = runner.look(crops)            # RGB uint8 windows (<= batch_size)
    for prompt in prompts:
        for answer, mask_logits, canvas_hw in runner.ask(seen, prompt): ...

A stand-in predictor without the model's towers (tests) gets `StackRunner`, which calls its
`predict(batch)` once per question.
"""

from __future__ import annotations

import weakref
from typing import Any, Protocol

import numpy as np

Answer = tuple[str, np.ndarray, tuple[int, int]]  # answer, mask logits [n, g, g], canvas (h, w)


class Runner(Protocol):
    def look(self, crops: list[np.ndarray]) -> Any: ...

    def ask(self, seen: Any, prompt: str) -> list[Answer]: ...


def window_runner(predictor: Any, batch_size: int) -> Runner:
    """TowerRunner for a SegEarthPredictor, StackRunner for any other `predict(batch)`."""
    from segearth_jax.inference import SegEarthPredictor

    if isinstance(predictor, SegEarthPredictor):
        return TowerRunner(predictor, batch_size)
    return StackRunner(predictor, batch_size)


class StackRunner:
    """Any predictor with `geometry`, `tokenizer` and `predict(eval batch)`: one full call per
    question (nothing shared)."""

    def __init__(self, predictor: Any, batch_size: int):
        self.predictor, self.batch_size = predictor, batch_size

    def look(self, crops: list[np.ndarray]) -> list[np.ndarray]:
        return crops

    def ask(self, seen: list[np.ndarray], prompt: str) -> list[Answer]:
        from segearth_jax.model_inputs import stack

        batch = stack(self.predictor, seen, [prompt] * len(seen), self.batch_size)
        results = self.predictor.predict(batch)[:len(seen)]
        return [(r["answer"], r["mask_logits"], tuple(int(v) for v in batch["canvas_hw"][i]))
                for i, r in enumerate(results)]


class TowerRunner:
    """A SegEarthPredictor split at its towers (`look`: SigLIP features, Swin + pixel decoder
    maps, once per batch) and its question part (`ask`: generation + `[SEG]` projection + mask
    decoder). Batches are filled up to `batch_size` rows (one compiled shape)."""

    def __init__(self, predictor: Any, batch_size: int):
        self.predictor, self.batch_size = predictor, batch_size
        if predictor not in _COMPILED:  # one compilation per predictor, whatever the runs
            _COMPILED[predictor] = _split(predictor)
        self._look, self._segment = _COMPILED[predictor]

    def look(self, crops: list[np.ndarray]) -> dict[str, Any]:
        from segearth_jax.input import preprocess

        g = self.predictor.geometry
        views = [preprocess.swin_view(c, g.image_size) for c in crops]
        rows = len(crops)
        pad = lambda a: np.concatenate([a, np.repeat(a[-1:], self.batch_size - rows, 0)])
        siglip = pad(np.stack([preprocess.siglip_view(c, g.siglip_size) for c in crops]))
        pixels = pad(np.stack([v[0] for v in views]))
        args = self.predictor._shard({"siglip_pixels": siglip, "pixels": pixels,
                                      "input_ids": np.zeros((self.batch_size, 1), np.int32)})
        feats, mask_features, maps = self._look(self.predictor.params, args["siglip_pixels"],
                                                args["pixels"])
        return dict(rows=rows, canvas=[v[1] for v in views], feats=feats,
                    mask_features=mask_features, maps=maps)

    def ask(self, seen: dict[str, Any], prompt: str) -> list[Answer]:
        import jax.numpy as jnp

        from segearth_jax.generate import generate
        from segearth_jax.input import tokens as tok

        p, g = self.predictor, self.predictor.geometry
        enc = tok.encode_prompt(p.tokenizer, prompt, n_image_tokens=g.n_image_tokens,
                                image_token_id=g.image_token_id, max_prompt_len=g.max_prompt_len,
                                **g.template_kwargs)
        b = self.batch_size
        ids = p._shard({"input_ids": np.repeat(enc["input_ids"][None], b, 0),
                        "attention_mask": np.repeat(enc["attention_mask"][None], b, 0)})
        out = generate(p.model, p.params, ids["input_ids"], ids["attention_mask"], seen["feats"],
                       max_new_tokens=p.max_new_tokens, eos_id=p.eos_id,
                       temperature=p.temperature, rng=p.rng)
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["lengths"])
        q = g.max_seg
        index, valid, found = np.zeros((b, q), np.int32), np.zeros((b, q), bool), []
        for i in range(b):
            pos = np.flatnonzero(tokens[i, :lengths[i]] == p.seg_id)[:q]
            index[i, :len(pos)], valid[i, :len(pos)] = pos, True
            found.append(len(pos))
        hidden = jnp.take_along_axis(out["hidden"], jnp.asarray(index)[..., None], axis=1)
        logits = np.asarray(self._segment(p.params, seen["mask_features"], seen["maps"], hidden,
                                          valid), np.float32)
        answers = []
        for i in range(seen["rows"]):
            toks = tokens[i, :lengths[i]]
            answers.append((p.tokenizer.decode(toks[toks != p.eos_id]), logits[i, :found[i]],
                            seen["canvas"][i]))
        return answers


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _split(predictor: Any) -> tuple[Any, Any]:
    """The jitted halves of a SegEarthPredictor's model: look(params, siglip_pixels, pixels)
    and segment(params, mask_features, maps, seg_hidden, seg_valid)."""
    import jax

    from segearth_jax.models.mask_decoder import MaskedTransformerDecoder
    from segearth_jax.models.pixel_decoder import MSDeformAttnPixelDecoder
    from segearth_jax.models.swin import SwinTransformer

    m, head = predictor.model, predictor.config.seg_head
    swin = SwinTransformer(head.swin)
    pixel_decoder = MSDeformAttnPixelDecoder(head.pixel_decoder)
    decoder = MaskedTransformerDecoder(head.decoder)

    def look(p, siglip_pixels, pixels):
        """-> SigLIP tokens [B, N, E], mask features [B, S/4, S/4, C], maps (coarsest first)."""
        feats = m.apply({"params": p}, siglip_pixels, method=m.encode_images)
        res = swin.apply({"params": p["seg_head"]["backbone"]}, pixels)
        mask_features, maps = pixel_decoder.apply(
            {"params": p["seg_head"]["pixel_decoder"]}, [res[f"res{i}"] for i in range(2, 6)])
        return feats, mask_features, maps

    def segment(p, mask_features, maps, seg_hidden, seg_valid):
        """seg_hidden [B, Q, E] -> the final mask logits [B, Q, S/4, S/4]."""
        queries = m.apply({"params": p}, seg_hidden, method=lambda mod, h: mod.seg_projector(
            h.astype(head.decoder.dtype)))
        return decoder.apply({"params": p["seg_head"]["predictor"]}, queries, maps,
                             mask_features, seg_valid)[-1]

    return jax.jit(look), jax.jit(segment)
