"""Incremental decoding with the KV cache: one prefill over image + prompt, then one token per step
inside `lax.while_loop`, all shapes fixed, batched over left-padded prompts.

Greedy by default (deterministic evaluation); `temperature > 0` samples (official: 0.2).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segearth_jax import checkpoint, cli, sharding, text
from segearth_jax.models.mipha import Mipha, MiphaConfig


def init_cache(model: nn.Module, batch: int, max_len: int) -> Any:
    """Zero KV cache for `max_len` slots, built from shapes only (no forward pass)."""
    ids = jnp.zeros((batch, max_len), jnp.int32)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), ids, positions=ids, decode=True,
                           method=_llm_call))["cache"]
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def _llm_call(module: nn.Module, input_ids, **kwargs):
    """Calls the language model of a `Mipha` (or a bare `PhiForCausalLM`)."""
    llm = getattr(module, "llm", module)
    return llm(input_ids, **kwargs)


@functools.partial(jax.jit, static_argnames=("model", "max_new_tokens", "temperature"))
def generate(model: nn.Module, params: Any, input_ids: jax.Array, prompt_mask: jax.Array,
             image_features: jax.Array | None, *, max_new_tokens: int, eos_id: int,
             temperature: float = 0.0, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """Decodes up to `max_new_tokens` tokens after each prompt.

    input_ids: [B, P] left-padded prompts (image placeholders included); prompt_mask: [B, P]
    valid prompt tokens; image_features: [B, N, E] projected image tokens or None.
    Returns tokens [B, max_new_tokens] (eos, then eos padding after a sequence ends),
    lengths [B] (generated tokens up to and including the first eos) and the final
    hidden state of every generated token's input position, hidden [B, max_new_tokens, E].
    """
    b, p = input_ids.shape
    total = p + max_new_tokens
    cache = init_cache(model, b, total)
    prompt_mask = prompt_mask.astype(bool)
    kv_mask = jnp.concatenate([prompt_mask, jnp.ones((b, max_new_tokens), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
    if rng is None:
        rng = jax.random.key(0)

    def pick(logits, key):
        if temperature > 0:
            return jax.random.categorical(key, logits / temperature).astype(jnp.int32)
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)

    run = lambda cache, ids, pos, feats: model.apply(
        {"params": params, "cache": cache}, ids, positions=pos, attention_mask=kv_mask,
        image_features=feats, decode=True, mutable=["cache"], method=_llm_call)
    (logits, hidden), state = run(cache, input_ids, positions, image_features)
    first = pick(logits[:, -1], jax.random.fold_in(rng, 0))
    e = hidden.shape[-1]
    carry = dict(
        step=jnp.array(0), cache=state["cache"], token=first, pos=positions[:, -1] + 1,
        done=jnp.zeros((b,), bool), tokens=jnp.full((b, max_new_tokens), eos_id, jnp.int32),
        hidden=jnp.zeros((b, max_new_tokens, e), hidden.dtype),
        lengths=jnp.full((b,), max_new_tokens, jnp.int32))

    def body(c):
        step, token = c["step"], jnp.where(c["done"], eos_id, c["token"])
        tokens = c["tokens"].at[:, step].set(token)
        is_eos = (token == eos_id) & ~c["done"]
        lengths = jnp.where(is_eos, step + 1, c["lengths"])
        done = c["done"] | is_eos
        # Feed the chosen token: its hidden state (e.g. of a [SEG]) is this step's output.
        (logits, h), st = run(c["cache"], token[:, None], c["pos"][:, None], None)
        nxt = pick(logits[:, -1], jax.random.fold_in(rng, step + 1))
        hidden = c["hidden"].at[:, step].set(h[:, 0])
        return dict(step=step + 1, cache=st["cache"], token=nxt, pos=c["pos"] + 1, done=done,
                    tokens=tokens, hidden=hidden, lengths=lengths)

    cond = lambda c: (c["step"] < max_new_tokens) & ~jnp.all(c["done"])
    out = jax.lax.while_loop(cond, body, carry)
    return {"tokens": out["tokens"], "lengths": out["lengths"], "hidden": out["hidden"]}


def load_model(directory: str | Path) -> tuple[Mipha, Any]:
    """A converted model directory (see `segearth_jax.checkpoint`) -> (module, params)."""
    spec = checkpoint.read_model_spec(directory)
    if spec.get("kind") != "mipha":
        raise cli.BadValue(f"{directory}: model kind {spec.get('kind')!r}, expected 'mipha' (a "
                           "convert.mipha output)")
    cfg = MiphaConfig.from_variant(spec["variant"], **spec.get("overrides", {}))
    model = Mipha(cfg)
    params = checkpoint.restore_params(directory)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, cfg.llm.param_dtype), params)
    return model, params


# ---------------------------------------------------------------------------------------------
# SegEarth-R2: generation, then one mask per generated `[SEG]`


@dataclasses.dataclass(frozen=True)
class InputGeometry:
    """Image and prompt sizes a SegEarth-R2 model was trained with (saved in model.json)."""

    siglip_size: int = 384
    image_size: int = 1024
    patch_size: int = 14
    image_token_id: int = -200
    max_prompt_len: int = 960
    max_seg: int = 8
    template: str = "default"
    seg_in_prompt: bool = False
    official_prompt: bool = False

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> InputGeometry:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in spec.get("input", {}).items() if k in known})


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
            raise ValueError(f"{directory}: model kind {spec.get('kind')!r}, expected "
                             "'segearth_r2' (a convert.segearth_r2 output or a training export)")
        self.config = SegEarthR2Config.from_config(spec["model"])
        self.model = SegEarthR2(self.config)
        self.geometry = InputGeometry.from_spec(spec)
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
        g = self.geometry.siglip_size // self.geometry.patch_size
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


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    """Generates an answer for one image and one instruction with a converted Mipha.

    The image is squashed to the SigLIP size with OpenCV bicubic and normalized with
    mean = std = 0.5 (the exact SigLIP view arrives with the input pipeline); with no --image, a
    random image is used.
    """
    parser = argparse.ArgumentParser(description="Greedy generation with a converted Mipha.")
    parser.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                        help="directory written by convert.mipha (--model: the old spelling)")
    parser.add_argument("--prompt", required=True, help="the instruction")
    parser.add_argument("--image", default=None, help="image file (default: random pixels)")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args(argv)

    cli.check_dir(args.checkpoint, "--checkpoint",
                  "a Mipha model directory (a convert.mipha --out)")
    if args.image and not Path(args.image).is_file():
        raise cli.MissingFile(f"--image {args.image}: no such file")
    model, params = load_model(args.checkpoint)
    cfg = model.config
    size = cfg.vision.image_size
    if args.image:
        import cv2

        bgr = cv2.imread(args.image, cv2.IMREAD_COLOR)
        if bgr is None:
            raise cli.BadValue(f"--image {args.image}: not an image OpenCV can read")
        rgb = cv2.resize(bgr[..., ::-1], (size, size), interpolation=cv2.INTER_CUBIC)
        pixels = (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5
    else:
        pixels = np.random.default_rng(0).uniform(-1, 1, (size, size, 3)).astype(np.float32)
    tok = text.load_tokenizer(Path(args.checkpoint) / "tokenizer")
    ids = text.tokenize_with_image(tok, text.conversation(args.prompt), cfg.vision.num_patches,
                                   cfg.llm.image_token_id)[None]
    t0 = time.perf_counter()
    feats = jax.jit(lambda p, x: model.apply({"params": p}, x, method=Mipha.encode_images))(
        params, pixels[None])
    out = generate(model, params, ids, np.ones_like(ids, bool), feats,
                   max_new_tokens=args.max_new_tokens, eos_id=tok.convert_tokens_to_ids(text.END),
                   temperature=args.temperature)
    n = int(out["lengths"][0])
    answer = tok.decode(np.asarray(out["tokens"][0, :n]), skip_special_tokens=True)
    print(f"prompt tokens: {ids.shape[1]} ({cfg.vision.num_patches} image), generated: {n} "
          f"in {time.perf_counter() - t0:.1f}s (incl. compilation)")
    print(f"answer: {answer!r}")


if __name__ == "__main__":
    main()
