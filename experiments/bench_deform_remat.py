"""The pixel decoder's backward at full size: what each remat choice costs in memory and time.

    python experiments/bench_deform_remat.py                 # batch 1, 1024 input, bf16
    python experiments/bench_deform_remat.py --batch 4 --compile-only

Mask2Former's pixel decoder (Swin-B channels, 6 deformable encoder layers) on the backbone maps
of a 1024 x 1024 image (res2..res5: 256^2 x 128 ... 32^2 x 1024), computed in bf16 with fp32
parameters, as configs/segearth_r2.py:lasers trains it; the value and gradient of a scalar of
its outputs with respect to all its parameters, for `remat_policy` = "none" (autodiff keeps
every activation, the gathered bilinear corner values included), "sampling" (only the bilinear
sampling is recomputed in the backward: `jax.checkpoint` around
`multi_scale_deformable_attention`) and "full" (each whole encoder layer is recomputed:
`nn.remat`; called "layer" before issue 24). Prints per variant the compiled program's memory
(XLA's memory analysis: arguments + temporaries) and, unless `--compile-only`, the median time of
a step over `--iters`. On the CPU, run it with
`XLA_FLAGS=--xla_disable_hlo_passes=while-loop-invariant-code-motion` (as bench_train's memory
report: XLA:CPU would otherwise hoist f32 copies of the scanned bf16 stacks out of the loop).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments.timing import timeit  # noqa: E402
from segearth_jax.models.pixel_decoder import (  # noqa: E402
    MSDeformAttnPixelDecoder,
    PixelDecoderConfig,
)

GIB = 2**30
REMAT = ("none", "full", "sampling")  # pixel decoder remat_policy values compared


def run(remat: str, batch: int, image: int, iters: int, compile_only: bool) -> dict:
    cfg = PixelDecoderConfig.from_variant("swin-b", remat_policy=remat, dtype=jnp.bfloat16)
    model = MSDeformAttnPixelDecoder(cfg)
    rng = np.random.default_rng(0)
    feats = [jnp.asarray(rng.normal(size=(batch, image // s, image // s, c)), jnp.bfloat16)
             for s, c in zip((4, 8, 16, 32), cfg.in_channels, strict=True)]
    params = jax.jit(model.init)(jax.random.key(0), feats)["params"]

    def loss(p, f):
        mask, multi = model.apply({"params": p}, f)
        return (jnp.mean(jnp.square(mask.astype(jnp.float32)))
                + sum(jnp.mean(m.astype(jnp.float32)) for m in multi))

    step = jax.jit(jax.value_and_grad(loss))
    t0 = time.perf_counter()
    compiled = step.lower(params, feats).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    out = dict(remat=remat, compile_s=compile_s, args_gib=mem.argument_size_in_bytes / GIB,
               temp_gib=mem.temp_size_in_bytes / GIB)
    if not compile_only:
        out["step_s"] = timeit(lambda: jax.block_until_ready(compiled(params, feats)), iters, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--compile-only", action="store_true")
    parser.add_argument("--remat", nargs="+", default=list(REMAT), choices=REMAT,
                        help="the pixel decoder remat_policy values to measure")
    args = parser.parse_args()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); batch "
          f"{args.batch}, image {args.image}", flush=True)
    print(f"{'remat':>9} {'compile s':>9} {'args GiB':>8} {'temp GiB':>8} {'step s':>7}")
    for remat in args.remat:
        r = run(remat, args.batch, args.image, args.iters, args.compile_only)
        step = f"{r['step_s']:7.2f}" if "step_s" in r else "      -"
        print(f"{remat:>9} {r['compile_s']:9.1f} {r['args_gib']:8.2f} {r['temp_gib']:8.2f} "
              f"{step}", flush=True)


if __name__ == "__main__":
    main()
