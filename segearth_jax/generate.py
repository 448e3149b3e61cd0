"""Incremental decoding with the KV cache: one prefill over image + prompt, then one token per step
inside `lax.while_loop`, all shapes fixed, batched over left-padded prompts.

Greedy by default (deterministic evaluation); `temperature > 0` samples (official: 0.2).
"""

from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from segearth_jax import checkpoint, cli, errors, text
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
        raise errors.BadValue(f"{directory}: model kind {spec.get('kind')!r}, expected 'mipha' (a "
                              "convert.mipha output)")
    cfg = checkpoint.model_config(directory, spec, MiphaConfig.from_config)
    model = Mipha(cfg)
    params = checkpoint.restore_params(directory)
    params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, cfg.llm.param_dtype), params)
    return model, params


@cli.entry_point
def main(argv: list[str] | None = None) -> None:
    """Generates an answer for one image and one instruction with a converted Mipha.

    The image is read and squashed to the SigLIP size exactly as training, evaluation and
    `predict` do (`records.load_image`, `preprocess.siglip_view`: Pillow's bicubic, mean = std
    = 0.5); with no --image, a random image is used.
    """
    parser = argparse.ArgumentParser(description="Greedy generation with a converted Mipha.")
    parser.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                        help="Required: a directory written by convert.mipha (--model: the old "
                             "spelling).")
    parser.add_argument("--prompt", required=True, help="Required: the instruction.")
    parser.add_argument("--image", default=None,
                        help="An image file (default: random pixels).")
    parser.add_argument("--max-new-tokens", type=int, default=32,
                        help="The longest answer, in tokens (default: %(default)s).")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="The sampling temperature; 0 is greedy (default: %(default)s).")
    args = parser.parse_args(argv)

    errors.check_dir(args.checkpoint, "--checkpoint",
                     "a Mipha model directory (a convert.mipha --out)")
    if args.image and not Path(args.image).is_file():
        raise errors.MissingFile(f"--image {args.image}: no such file")
    model, params = load_model(args.checkpoint)
    cfg = model.config
    size = cfg.vision.image_size
    if args.image:
        from segearth_jax.input import preprocess, records

        pixels = preprocess.siglip_view(records.load_image(args.image, "--image"), size)
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
