"""Forward time of our MLLM vs transformers' PyTorch modules of the same config, same run.

    python experiments/bench_mllm.py                    # CPU: Phi-2 width 2560, 2 layers,
                                                        #      seq 1024, fp32
    python experiments/bench_mllm.py --preset phi2      # GPU: the whole Phi-2, bf16
    python experiments/bench_mllm.py --preset mipha3b   # GPU: SigLIP So400m + projector + Phi-2

PyTorch weights (HF init) are carried over by our converter table, so both compute the same
function; the max abs difference of the logits is printed with the times. The `mipha3b` reference
is the Mipha pipeline: SigLIP `hidden_states[-2]` -> mlp2x_gelu -> spliced embeddings -> Phi-2.
Prints both times and the ratio (PyTorch time / ours: > 1 means we are faster).
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

from convert import mipha as mipha_convert  # noqa: E402
from convert.common import convert_tensors  # noqa: E402
from convert.tiny_mipha import mipha_state_dict, torch_modules  # noqa: E402
from experiments.timing import timeit  # noqa: E402
from segearth_jax.models.mipha import Mipha, MiphaConfig  # noqa: E402

PRESETS = {
    "medium": dict(num_layers=2, seq=1024, batch=1, dtype="float32", images=False),
    "phi2": dict(num_layers=32, seq=1024, batch=4, dtype="bfloat16", images=False),
    "mipha3b": dict(num_layers=32, seq=1024, batch=4, dtype="bfloat16", images=True),
}



def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--attention-impl", default="auto", help="auto, xla or cudnn")
    args = parser.parse_args()
    p = dict(PRESETS[args.preset])
    for k in ("layers", "seq", "batch"):
        if getattr(args, k) is not None:
            p["num_layers" if k == "layers" else k] = getattr(args, k)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[p["dtype"]]
    jdtype = jnp.dtype(p["dtype"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)

    cfg = MiphaConfig.from_variant("mipha3b", dtype=jdtype, param_dtype=jdtype,
                                   vision=dict(attention_impl=args.attention_impl),
                                   llm=dict(num_layers=p["num_layers"],
                                            attention_impl=args.attention_impl))
    phi, siglip, projector = torch_modules(0, "mipha3b", randomize=False)
    for m in (phi, siglip):  # the fastest attention transformers has (the tests use eager)
        m.set_attn_implementation("sdpa")
    phi.model.layers = phi.model.layers[: p["num_layers"]]
    phi.config.num_hidden_layers = p["num_layers"]

    # Our params through the converter's table (the vision part only when images are used).
    model = Mipha(cfg)
    expected = mipha_convert.expected_params(cfg)
    unused, missing_ok = mipha_convert.gaps(cfg)
    sd = mipha_state_dict(phi, siglip, projector)
    if not p["images"]:
        expected = {"llm": expected["llm"]}
        sd = {k: v for k, v in sd.items() if not k.startswith("model.vision_tower")
              and not k.startswith("model.mm_projector")}
    source = ((k, (lambda v=v: v.float().numpy()), 0) for k, v in sd.items())
    params = jax.device_put(convert_tensors(source, mipha_convert.rules(), expected,
                                            unused=unused, not_in_checkpoint=missing_ok,
                                            dtype=jdtype))
    phi, siglip, projector = (m.to(device=device, dtype=tdtype) for m in (phi, siglip, projector))

    rng = np.random.default_rng(0)
    b, seq, n_img = p["batch"], p["seq"], cfg.vision.num_patches
    ids = rng.integers(0, 50000, (b, seq)).astype(np.int32)
    size = cfg.vision.image_size
    pixels = rng.uniform(-1, 1, (b, size, size, 3)).astype(np.float32)
    if p["images"]:
        ids[:, 1:1 + n_img] = cfg.llm.image_token_id
        fwd = jax.jit(lambda prm, x, px: model.apply({"params": prm}, x, px)[0])
        run_ours = lambda: fwd(params, ids_j, px_j)
    else:
        fwd = jax.jit(lambda prm, x: model.apply({"params": prm}, x, method=lambda m, i:
                                                 m.llm(i))[0])
        run_ours = lambda: fwd(params, ids_j)
    ids_j, px_j = jnp.asarray(ids), jnp.asarray(pixels, jdtype)
    t0 = time.perf_counter()
    ours_logits = run_ours().block_until_ready()
    compile_s = time.perf_counter() - t0

    ids_t = torch.from_numpy(np.where(ids < 0, 0, ids)).long().to(device)
    px_t = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device=device, dtype=tdtype)

    def torch_fwd():
        with torch.no_grad():
            if p["images"]:
                feats = projector(siglip(px_t, output_hidden_states=True).hidden_states[-2])
                emb = phi.model.embed_tokens(ids_t)
                emb[:, 1:1 + n_img] = feats
                out = phi(inputs_embeds=emb).logits
            else:
                out = phi(ids_t).logits
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    ref_logits = torch_fwd().float().cpu().numpy()
    diff = float(np.max(np.abs(np.asarray(ours_logits, np.float32) - ref_logits)))
    t_ours = timeit(lambda: run_ours().block_until_ready(), args.iters)
    t_ref = timeit(torch_fwd, args.iters)
    tokens = b * seq
    llm_params = sum(x.size for x in jax.tree_util.tree_leaves(params["llm"]))
    flops = 2 * llm_params * tokens + 4 * p["num_layers"] * b * seq ** 2 * cfg.llm.hidden_size
    if p["images"]:  # SigLIP (26 layers run) + projector
        vis = sum(x.size for x in jax.tree_util.tree_leaves(params["vision_tower"]))
        proj = sum(x.size for x in jax.tree_util.tree_leaves(params["mm_projector"]))
        flops += 2 * (vis + proj) * b * n_img + 4 * cfg.vision_layers * b * n_img ** 2 * 1152
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch on {device}, "
          f"jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"preset {args.preset}: {'SigLIP So400m + projector + ' if p['images'] else ''}"
          f"Phi-2 width 2560, {p['num_layers']} layers, batch {b}, seq {seq}"
          f"{f' ({n_img} image tokens)' if p['images'] else ''}, {p['dtype']}, "
          f"attention {args.attention_impl}")
    print(f"ours (jax, jit):        {t_ours * 1e3:9.1f} ms  ({tokens / t_ours:,.0f} tok/s, "
          f"{flops / t_ours / 1e12:.1f} TFLOP/s, compile {compile_s:.1f}s)")
    print(f"transformers (torch):   {t_ref * 1e3:9.1f} ms  ({tokens / t_ref:,.0f} tok/s)")
    print(f"ratio torch/ours: {t_ref / t_ours:.2f}x   max |logits diff|: {diff:.2e}")


if __name__ == "__main__":
    main()
