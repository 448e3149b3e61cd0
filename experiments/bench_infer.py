"""Seconds per image of the whole SegEarth-R2 predict path, by stage, ours (JAX) vs a transformers
PyTorch pipeline of the same architecture, same run.

    python experiments/bench_infer.py                              # tiny: CPU, fp32, canvas 128
    python experiments/bench_infer.py --preset full --iters 10     # GPU: Mipha-3B + Swin-B, bf16
    python experiments/bench_infer.py --new-tokens 64 --batch 4 --pad-to 0

Ours is the device work of `SegEarthPredictor.predict`: `encode_images` (SigLIP + projector),
`generate()` (prefill over the image + prompt, LEFT-padded to `--pad-to` tokens as the input
pipeline pads it, then the incremental `lax.while_loop`), the host read of the tokens, and
`segment` (Swin + pixel decoder + transformer decoder) on the hidden state of one generated
token (the last one stands in for the `[SEG]`: random weights generate none). The reference:
HF `SiglipVisionModel` (`hidden_states[-2]`) -> torch Linear/GELU/Linear -> embeddings spliced
into `PhiForCausalLM`'s (prompt unpadded), prefill with `inputs_embeds` and a manual greedy loop
with `past_key_values` (PhiForCausalLM's two halves, `model` then `lm_head` on the last position,
as its forward with `logits_to_keep=1`), the `[SEG]` projector (Linear E -> 256), HF's
`Mask2FormerModel` (`hf_mask2former`) with the projected `[SEG]` as its one query.

Both decode exactly `--new-tokens` tokens (our eos id is -1, which argmax never returns). The
stages are timed alone (each as its own jitted call on our side: `prefill`/`decode` mirror the
two halves of `generate()`, and the tokens they produce are checked against it); `total` is
the whole path run end to end. Weights: random PyTorch weights (N(0, 0.2) for tiny, HF init for
full) carried to ours by our converter tables. Prints median ms per image over `--iters`, the
ratio PyTorch / ours (> 1: we are faster) against PyTorch's fastest of `--torch-threads`
(default: 1 and all cores), the first-call (compile + one run) times of our
jitted functions, and in fp32 the max abs difference of the final mask logits.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from convert import mask2former  # noqa: E402
from convert import mipha as mipha_convert  # noqa: E402
from convert import segearth_r2 as r2_convert  # noqa: E402
from convert.common import convert_tensors, linear_rules  # noqa: E402
from convert.tiny_mipha import mipha_state_dict, torch_modules  # noqa: E402
from experiments.timing import timeit  # noqa: E402
from segearth_jax.generate import generate, init_cache  # noqa: E402
from segearth_jax.models.mipha import MiphaConfig  # noqa: E402
from segearth_jax.models.seg_head import SegHeadConfig  # noqa: E402
from segearth_jax.models.segearth_r2 import SegEarthR2, SegEarthR2Config  # noqa: E402

# mllm / head: variants; text_tokens: prompt tokens besides the image (the default template with
# a one-sentence instruction is about 60); pad_to: max_prompt_len of the configs (tiny.py,
# common.py); randomize: N(0, 0.2) weights (tiny: makes the parity check bite), else HF init;
# PyTorch runs at each of `--torch-threads` (default: 1 and all cores) and the ratio is taken
# against the fastest, so the reference is compared at its best setting.
PRESETS = {
    "tiny": dict(mllm="tiny", head="tiny", canvas=128, dtype="float32", text_tokens=24,
                 pad_to=192, randomize=True),
    "full": dict(mllm="mipha3b", head="swin-b", canvas=1024, dtype="bfloat16", text_tokens=64,
                 pad_to=960, randomize=False),
}


@dataclasses.dataclass
class TorchModels:
    phi: torch.nn.Module
    siglip: torch.nn.Module
    projector: torch.nn.Module
    seg_projector: torch.nn.Module
    m2f: torch.nn.Module


def hf_mask2former(cfg: SegHeadConfig, randomize: bool, num_queries: int = 1
                   ) -> transformers.Mask2FormerModel:
    """HF `Mask2FormerModel` of our head's config (HF init, N(0, 0.2) weights if `randomize`),
    zero query positional embedding."""
    model = transformers.Mask2FormerModel(mask2former.hf_config(
        swin=cfg.swin, pixel_decoder=cfg.pixel_decoder, decoder=cfg.decoder,
        num_queries=num_queries)).eval()
    with torch.no_grad():
        for p in model.parameters() if randomize else ():
            p.copy_(torch.randn_like(p) * 0.2)
        model.transformer_module.queries_embedder.weight.zero_()
    return model


def build_torch(cfg: SegEarthR2Config, mllm_variant: str, randomize: bool) -> TorchModels:
    """The reference modules, fp32 on the CPU (moved to the device after conversion)."""
    phi, siglip, projector = torch_modules(0, mllm_variant, randomize=randomize)
    for m in (phi, siglip):  # the fastest attention transformers has (the tests use eager)
        m.set_attn_implementation("sdpa")
    seg_projector = torch.nn.Linear(cfg.mllm.llm.hidden_size, cfg.seg_head.decoder.hidden_dim)
    with torch.no_grad():
        for p in seg_projector.parameters() if randomize else ():
            p.copy_(torch.randn_like(p) * 0.2)
    return TorchModels(phi, siglip, projector, seg_projector.eval(),
                       hf_mask2former(cfg.seg_head, randomize))


def convert_params(cfg: SegEarthR2Config, t: TorchModels, dtype) -> dict:
    """Our `SegEarthR2` tree from the PyTorch modules, through our converter tables."""
    expected = r2_convert.expected_params(cfg)
    tensors = lambda sd: ((k, (lambda v=v: v.detach().float().numpy()), 0) for k, v in sd.items())
    unused, missing_ok = mipha_convert.gaps(cfg.mllm)
    mllm = convert_tensors(tensors(mipha_state_dict(t.phi, t.siglip, t.projector)),
                           mipha_convert.rules(), expected["mllm"], unused=unused,
                           not_in_checkpoint=missing_ok, dtype=dtype)
    head = convert_tensors(tensors(t.m2f.state_dict()), mask2former.hf_rules(),
                           expected["seg_head"], dtype=dtype, unused=mask2former.hf_unused())
    proj = convert_tensors(tensors({f"seg_projector.{k}": v for k, v in
                                    t.seg_projector.state_dict().items()}),
                           linear_rules(r"seg_projector", "seg_projector"),
                           {"seg_projector": expected["seg_projector"]}, dtype=dtype)
    return {"mllm": mllm, "seg_head": head, **proj}


def jax_stages(model: SegEarthR2, new_tokens: int):
    """(prefill, decode): the two halves of `generate()` (greedy, no eos) as separate jits."""
    llm = lambda params, cache, ids, pos, kv_mask, feats: model.apply(
        {"params": params, "cache": cache}, ids, positions=pos, attention_mask=kv_mask,
        image_features=feats, decode=True, mutable=["cache"], method=SegEarthR2.llm)
    kv = lambda mask: jnp.concatenate([mask, jnp.ones((mask.shape[0], new_tokens), bool)], 1)

    @jax.jit
    def prefill(params, ids, prompt_mask, feats):
        """-> (cache after the prompt, first token [B], its position [B])."""
        b, p = ids.shape
        positions = jnp.maximum(jnp.cumsum(prompt_mask, axis=1) - 1, 0)
        (logits, _), state = llm(params, init_cache(model, b, p + new_tokens), ids, positions,
                                 kv(prompt_mask), feats)
        return state["cache"], jnp.argmax(logits[:, -1], -1).astype(jnp.int32), positions[:, -1] + 1

    @jax.jit
    def decode(params, cache, token, pos, prompt_mask):
        """-> tokens [B, n] (fed, as generate() returns them) and their hidden states [B, n, E]."""
        b, e = token.shape[0], model.config.mllm.llm.hidden_size
        mask = kv(prompt_mask)

        def body(step, c):
            cache, token, pos, tokens, hidden = c
            (logits, h), st = llm(params, cache, token[:, None], pos[:, None], mask, None)
            return (st["cache"], jnp.argmax(logits[:, -1], -1).astype(jnp.int32), pos + 1,
                    tokens.at[:, step].set(token), hidden.at[:, step].set(h[:, 0]))

        init = (cache, token, pos, jnp.zeros((b, new_tokens), jnp.int32),
                jnp.zeros((b, new_tokens, e), model.config.mllm.llm.dtype))
        return jax.lax.fori_loop(0, new_tokens, body, init)[3:]

    return prefill, decode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=32, help="decoded tokens, no early stop")
    parser.add_argument("--text-tokens", type=int, default=None,
                        help="prompt tokens besides the image (default: the preset's)")
    parser.add_argument("--pad-to", type=int, default=None,
                        help="our left-padded prompt length (default: the preset's "
                             "max_prompt_len; 0: no padding)")
    parser.add_argument("--torch-threads", type=int, nargs="+", default=[1, 0],
                        help="PyTorch intra-op thread counts to time, 0: all cores; the ratio "
                             "is taken against the fastest (default: 1 and all cores)")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    p = PRESETS[args.preset]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.preset == "full" and jax.default_backend() == "cpu":
        print("warning: --preset full (Mipha-3B + Swin-B at 1024) on the CPU is far too slow to "
              "be useful; it is meant for a GPU", file=sys.stderr)
    thread_counts = sorted({n or os.cpu_count() or 1 for n in args.torch_threads})
    jdtype, tdtype = jnp.dtype(p["dtype"]), getattr(torch, p["dtype"])
    fp32 = p["dtype"] == "float32"

    cfg = SegEarthR2Config(
        mllm=MiphaConfig.from_variant(p["mllm"], dtype=jdtype, param_dtype=jdtype),
        seg_head=SegHeadConfig.from_variant(p["head"], dtype=jdtype, param_dtype=jdtype))
    t = build_torch(cfg, p["mllm"], p["randomize"])
    params = jax.device_put(convert_params(cfg, t, jdtype))
    for name in ("phi", "siglip", "projector", "seg_projector", "m2f"):
        setattr(t, name, getattr(t, name).to(device=device, dtype=tdtype))
    model = SegEarthR2(cfg)

    # Inputs: an image token span after one text token (as bench_mllm.py places it), random
    # text ids; ours left-padded to `pad_to` with pad id 0 and a prompt mask.
    b, n_new, n_img = args.batch, args.new_tokens, cfg.mllm.vision.num_patches
    text_tokens = p["text_tokens"] if args.text_tokens is None else args.text_tokens
    prompt_len = n_img + text_tokens
    pad_to = max(prompt_len, p["pad_to"] if args.pad_to is None else args.pad_to)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, cfg.mllm.llm.vocab_size, (b, prompt_len)).astype(np.int32)
    ids[:, 1:1 + n_img] = cfg.mllm.llm.image_token_id
    ids_pad = np.zeros((b, pad_to), np.int32)
    ids_pad[:, pad_to - prompt_len:] = ids
    mask_pad = np.arange(pad_to)[None].repeat(b, 0) >= pad_to - prompt_len
    sig_size, canvas = cfg.mllm.vision.image_size, p["canvas"]
    sig_px = rng.uniform(-1, 1, (b, sig_size, sig_size, 3)).astype(np.float32)
    swin_px = rng.normal(size=(b, canvas, canvas, 3)).astype(np.float32)

    # ---- ours: SegEarthPredictor.predict's device work, and its stages alone.
    encode = jax.jit(lambda prm, x: model.apply({"params": prm}, x,
                                                method=SegEarthR2.encode_images))
    segment = jax.jit(lambda prm, px, h, v: model.apply({"params": prm}, px, h, v,
                                                        method=SegEarthR2.segment)[-1])
    prefill, decode = jax_stages(model, n_new)
    ids_j, mask_j = jnp.asarray(ids_pad), jnp.asarray(mask_pad)
    sig_j, swin_j = jnp.asarray(sig_px, jdtype), jnp.asarray(swin_px, jdtype)
    seg_index = jnp.full((b, 1, 1), n_new - 1, jnp.int32)  # the last token stands in for [SEG]
    valid = jnp.ones((b, 1), bool)

    def ours_predict():
        feats = encode(params, sig_j)
        out = generate(model, params, ids_j, mask_j, feats, max_new_tokens=n_new, eos_id=-1)
        tokens = np.asarray(out["tokens"])  # predict() reads them to find the [SEG]s
        hidden = jnp.take_along_axis(out["hidden"], seg_index, axis=1)
        return tokens, np.asarray(segment(params, swin_j, hidden, valid), np.float32)

    first_call = {}

    def first(name, fn, *a, **kw):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*a, **kw))
        first_call[name] = time.perf_counter() - t0
        return out

    feats = first("vision", encode, params, sig_j)
    cache, tok0, pos0 = first("prefill", prefill, params, ids_j, mask_j, feats)
    split_tokens, hidden = first("decode", decode, params, cache, tok0, pos0, mask_j)
    gen = first("generate", generate, model, params, ids_j, mask_j, feats,
                max_new_tokens=n_new, eos_id=-1)
    seg_hidden = jnp.take_along_axis(hidden, seg_index, axis=1)
    first("mask head", segment, params, swin_j, seg_hidden, valid)
    ours_tokens, ours_masks = ours_predict()
    t_ours = {
        "vision": timeit(lambda: encode(params, sig_j).block_until_ready(), args.iters),
        "prefill": timeit(lambda: jax.block_until_ready(prefill(params, ids_j, mask_j, feats)),
                          args.iters),
        "decode": timeit(lambda: jax.block_until_ready(
            decode(params, cache, tok0, pos0, mask_j)), args.iters),
        "mask head": timeit(lambda: segment(params, swin_j, seg_hidden, valid)
                            .block_until_ready(), args.iters),
        "total": timeit(ours_predict, args.iters),
    }

    # ---- transformers: the same pipeline.
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    ids_t = torch.from_numpy(ids).long().to(device)
    sig_t = torch.from_numpy(sig_px).permute(0, 3, 1, 2).to(device=device, dtype=tdtype)
    swin_t = torch.from_numpy(swin_px).permute(0, 3, 1, 2).to(device=device, dtype=tdtype)
    # Our [SEG] queries [B, 1, C] replace HF's learned one: a pre-hook on its decoder.
    seg_query = {}

    def inject(module, a, kw):
        kw["inputs_embeds"] = seg_query["q"].transpose(0, 1)  # [Q, B, C], as HF lays them out
        return a, kw

    t.m2f.transformer_module.decoder.register_forward_pre_hook(inject, with_kwargs=True)

    def t_vision():
        hs = t.siglip(sig_t, output_hidden_states=True).hidden_states[-2]
        return t.projector(hs)

    def t_prefill(feats):
        emb = t.phi.model.embed_tokens(ids_t.clamp(min=0))
        emb[:, 1:1 + n_img] = feats
        out = t.phi.model(inputs_embeds=emb, use_cache=True)
        return out.past_key_values, t.phi.lm_head(out.last_hidden_state[:, -1]).argmax(-1)

    def t_decode(cache, token):
        tokens, hidden = [], []
        for _ in range(n_new):
            tokens.append(token)
            out = t.phi.model(input_ids=token[:, None], past_key_values=cache, use_cache=True)
            hidden.append(out.last_hidden_state[:, 0])
            token = t.phi.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
        return torch.stack(tokens, 1), torch.stack(hidden, 1)

    def t_segment(seg_hidden):
        seg_query["q"] = t.seg_projector(seg_hidden)
        return t.m2f(swin_t).masks_queries_logits[-1]

    def t_predict():
        cache, token = t_prefill(t_vision())
        tokens, hidden = t_decode(cache, token)
        masks = t_segment(hidden[:, -1:])
        sync()
        return tokens, masks

    def timed(fn):
        def run():
            out = fn()
            sync()
            return out
        return run

    t_refs = {}  # thread count -> stage times
    with torch.inference_mode():
        for n_threads in thread_counts:
            torch.set_num_threads(n_threads)
            t_feats = t_vision()
            t_cache, t_tok0 = t_prefill(t_feats)
            # Every decode run appends to its cache: give each its own copy of the prefill cache.
            caches = iter([copy.deepcopy(t_cache) for _ in range(args.iters + 2)])
            t_hidden = t_decode(copy.deepcopy(t_cache), t_tok0)[1][:, -1:]
            ref_tokens, ref_masks = t_predict()
            t_refs[n_threads] = {
                "vision": timeit(timed(t_vision), args.iters),
                "prefill": timeit(timed(lambda f=t_feats: t_prefill(f)), args.iters),
                "decode": timeit(timed(lambda c=caches, t0=t_tok0: t_decode(next(c), t0)),
                                 args.iters),
                "mask head": timeit(timed(lambda h=t_hidden: t_segment(h)), args.iters),
                "total": timeit(t_predict, args.iters),
            }
        ref_tokens, ref_masks = ref_tokens.cpu().numpy(), ref_masks.float().cpu().numpy()
    best_threads = min(t_refs, key=lambda n: t_refs[n]["total"])
    t_ref = t_refs[best_threads]

    # ---- report.
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch on {device}, "
          f"jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"preset {args.preset}: Mipha {p['mllm']} + seg head {p['head']}, canvas {canvas}, "
          f"{p['dtype']}, batch {b}; prompt {prompt_len} tokens ({n_img} image + {text_tokens} "
          f"text; ours left-padded to {pad_to}), {n_new} new tokens, 1 query; median of "
          f"{args.iters}")
    print("transformers total per image by intra-op threads: " + ", ".join(
        f"{n}: {t_refs[n]['total'] / b * 1e3:.2f} ms" for n in thread_counts)
        + f"; the table uses the fastest ({best_threads} thread(s))")
    stages = [("vision", "vision (SigLIP + projector)"), ("prefill", "prefill"),
              ("decode", f"decode ({n_new} tokens)"), ("mask head", "mask head (1 query)")]
    print(f"{'ms per image':<30}{'ours (jax)':>12}{'transformers':>14}{'torch/ours':>12}")
    for key, label in [*stages, ("sum", "sum of stages"), ("total", "total (predict path)")]:
        if key == "sum":
            o, r = (sum(d[k] for k, _ in stages) for d in (t_ours, t_ref))
        else:
            o, r = t_ours[key], t_ref[key]
        print(f"{label:<30}{o / b * 1e3:12.2f}{r / b * 1e3:14.2f}{r / o:11.2f}x")
    print(f"total: ours {t_ours['total'] / b:.4f} s/image, transformers "
          f"{t_ref['total'] / b:.4f} s/image; decode per step: ours "
          f"{t_ours['decode'] / n_new * 1e3:.2f} ms, transformers "
          f"{t_ref['decode'] / n_new * 1e3:.2f} ms (batch {b})")
    print("ours, first call (compile + one run): "
          + ", ".join(f"{k} {v:.1f}s" for k, v in first_call.items()) + "; predict path "
          + f"{sum(first_call[k] for k in ('vision', 'generate', 'mask head')):.1f}s")
    gen_equal = np.array_equal(np.asarray(gen["tokens"]), np.asarray(split_tokens))
    same = int((ours_tokens == ref_tokens).all(axis=0).sum())
    diff = (f"{float(np.max(np.abs(ours_masks - ref_masks))):.2e}" if fp32
            else "not compared (bf16)")
    print(f"checks: prefill+decode tokens == generate(): {gen_equal}; greedy tokens equal to "
          f"transformers: {same}/{n_new}; max |mask logits diff|: {diff}")


if __name__ == "__main__":
    main()
