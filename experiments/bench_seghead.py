"""Forward time of our segmentation head (Swin-B -> pixel decoder -> transformer decoder) vs
transformers' `Mask2FormerModel` of the same config, same run.

    python experiments/bench_seghead.py                          # CPU: 512 x 512, fp32, batch 1
    python experiments/bench_seghead.py --size 1024 --batch 4 --dtype bfloat16   # GPU

HF-initialized PyTorch weights are carried over by our rename tables; HF's learnable queries (as
many as ours) are our queries and its query positional embedding is zeroed, so both compute the
same masks (the max abs difference is printed). Also prints where our time goes: backbone, pixel
decoder (and the deformable sampling inside it), transformer decoder.
"""

from __future__ import annotations

import argparse
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
from convert.common import convert_tensors  # noqa: E402
from experiments.bench_infer import hf_mask2former  # noqa: E402
from experiments.timing import timeit  # noqa: E402
from segearth_jax.models.msdeform_attn import multi_scale_deformable_attention  # noqa: E402
from segearth_jax.models.pixel_decoder import MSDeformAttnPixelDecoder  # noqa: E402
from segearth_jax.models.seg_head import SegHead, SegHeadConfig  # noqa: E402
from segearth_jax.models.swin import SwinTransformer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--queries", type=int, default=1, help="[SEG] queries per image")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)
    jdtype, tdtype = jnp.dtype(args.dtype), getattr(torch, args.dtype)

    cfg = SegHeadConfig.from_variant("swin-b", dtype=jdtype, param_dtype=jdtype,
                                     decoder=dict(independent_queries=args.queries == 1))
    s, pd, dec = cfg.swin, cfg.pixel_decoder, cfg.decoder
    torch.manual_seed(0)
    ref = hf_mask2former(cfg, randomize=False, num_queries=args.queries)
    source = ((k, (lambda v=v: v.detach().float().numpy()), 0)
              for k, v in ref.state_dict().items())
    params = jax.device_put(convert_tensors(source, mask2former.hf_rules(),
                                            mask2former.expected_params(cfg),
                                            unused=mask2former.hf_unused(), dtype=jdtype))
    queries = np.broadcast_to(ref.transformer_module.queries_features.weight.detach().numpy(),
                              (args.batch, args.queries, dec.hidden_dim))
    ref = ref.to(device=device, dtype=tdtype)

    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(args.batch, args.size, args.size, 3)).astype(np.float32)
    px, qs = jnp.asarray(pixels, jdtype), jnp.asarray(queries, jdtype)
    model = SegHead(cfg)
    full = jax.jit(lambda p, x, q: model.apply({"params": p}, x, q)[-1])
    backbone = jax.jit(lambda p, x: SwinTransformer(s).apply({"params": p}, x))
    pixel_dec = jax.jit(lambda p, f: MSDeformAttnPixelDecoder(pd).apply(
        {"params": p}, [f[f"res{i}"] for i in range(2, 6)]))
    t0 = time.perf_counter()
    ours = full(params, px, qs).block_until_ready()
    compile_s = time.perf_counter() - t0
    feats = backbone(params["backbone"], px)

    px_t = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device=device, dtype=tdtype)

    def torch_fwd():
        with torch.no_grad():
            out = ref(px_t).masks_queries_logits[-1]
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    diff = float(np.max(np.abs(np.asarray(ours, np.float32)
                               - torch_fwd().float().cpu().numpy())))
    t_ours = timeit(lambda: full(params, px, qs).block_until_ready(), args.iters)
    t_ref = timeit(torch_fwd, args.iters)
    t_backbone = timeit(lambda: jax.block_until_ready(backbone(params["backbone"], px)),
                        args.iters)
    t_pixel = timeit(lambda: jax.block_until_ready(pixel_dec(params["pixel_decoder"], feats)),
                     args.iters)
    # The deformable sampling alone, as the pixel encoder calls it (6 layers).
    shapes = tuple((args.size // st, args.size // st) for st in (32, 16, 8))
    n = sum(h * w for h, w in shapes)
    heads, dh = pd.num_heads, pd.conv_dim // pd.num_heads
    value = jnp.asarray(rng.normal(size=(args.batch, n, heads, dh)), jdtype)
    locs = jnp.asarray(rng.uniform(size=(args.batch, n, heads, 3, pd.num_points, 2)), jnp.float32)
    attn = jnp.asarray(rng.uniform(size=(args.batch, n, heads, 3, pd.num_points)), jnp.float32)
    sample = jax.jit(lambda v, loc, a: multi_scale_deformable_attention(v, shapes, loc, a))
    t_sample = pd.encoder_layers * timeit(
        lambda: sample(value, locs, attn).block_until_ready(), args.iters)

    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch on {device}, "
          f"jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"Swin-B + MSDeformAttn pixel decoder + 9-layer decoder, {args.size}x{args.size}, "
          f"batch {args.batch}, {args.queries} queries, {args.dtype}")
    print(f"ours (jax, jit):        {t_ours * 1e3:9.1f} ms  (compile {compile_s:.1f}s)")
    print(f"transformers (torch):   {t_ref * 1e3:9.1f} ms")
    print(f"ratio torch/ours: {t_ref / t_ours:.2f}x   max |mask logits diff|: {diff:.2e}")
    print(f"ours by part: backbone {t_backbone * 1e3:.1f} ms, pixel decoder {t_pixel * 1e3:.1f} ms "
          f"(deformable sampling, 6 layers: {t_sample * 1e3:.1f} ms), transformer decoder + "
          f"mask head {max(t_ours - t_backbone - t_pixel, 0) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
