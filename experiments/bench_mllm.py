"""Forward time of our Phi-2 vs transformers' PyTorch `PhiForCausalLM`, same config, same run.

    python experiments/bench_mllm.py                 # CPU: width 2560, 2 layers, seq 1024, fp32
    python experiments/bench_mllm.py --preset full   # GPU: the whole Phi-2 (32 layers), bf16

The PyTorch model is built with random weights and carried over by our converter table, so the
two compute the same function; the max abs difference of the logits is printed next to the times.
Prints one line per model and the ratio (PyTorch time / ours: > 1 means we are faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from convert.common import convert_tensors  # noqa: E402
from convert.mipha import rules  # noqa: E402
from segearth_jax.models.phi import PhiConfig, PhiForCausalLM  # noqa: E402

PRESETS = {
    "medium": dict(num_layers=2, seq=1024, batch=1, dtype="float32"),
    "full": dict(num_layers=32, seq=1024, batch=4, dtype="bfloat16"),
}


def timeit(fn, iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="medium")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--seq", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--attention-impl", default=None, help="None (auto), xla or cudnn")
    args = parser.parse_args()
    p = dict(PRESETS[args.preset])
    for k in ("layers", "seq", "batch"):
        if getattr(args, k) is not None:
            p["num_layers" if k == "layers" else k] = getattr(args, k)
    tdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[p["dtype"]]
    jdtype = jnp.dtype(p["dtype"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(os.cpu_count() or 1)

    cfg = PhiConfig.from_variant("phi-2", num_layers=p["num_layers"], dtype=jdtype,
                                 param_dtype=jdtype, attention_impl=args.attention_impl)
    torch.manual_seed(0)
    hf_cfg = transformers.PhiConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
        partial_rotary_factor=cfg.partial_rotary_factor, hidden_act="gelu_new",
        resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0, attn_implementation="sdpa")
    ref = transformers.PhiForCausalLM(hf_cfg).to(tdtype).eval()

    model = PhiForCausalLM(cfg)
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (p["batch"], p["seq"]))
    expected = {"llm": jax.eval_shape(model.init, jax.random.key(0), ids[:, :8])["params"]}
    source = ((k, (lambda v=v: v.float().numpy()), 0) for k, v in ref.state_dict().items())
    params = convert_tensors(source, rules(), expected, dtype=jdtype)["llm"]
    params = jax.device_put(params)
    ref = ref.to(device)

    fwd = jax.jit(lambda prm, x: model.apply({"params": prm}, x)[0])
    ids_j = jnp.asarray(ids, jnp.int32)
    t0 = time.perf_counter()
    ours_logits = fwd(params, ids_j).block_until_ready()
    compile_s = time.perf_counter() - t0
    ids_t = torch.from_numpy(ids).to(device)

    def torch_fwd():
        with torch.no_grad():
            out = ref(ids_t).logits
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    ref_logits = torch_fwd().float().cpu().numpy()
    diff = float(np.max(np.abs(np.asarray(ours_logits, np.float32) - ref_logits)))
    t_ours = timeit(lambda: fwd(params, ids_j).block_until_ready(), args.iters)
    t_ref = timeit(torch_fwd, args.iters)
    tokens = p["batch"] * p["seq"]
    n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
    # Matmuls with the weights, plus QK^T and PV (full L x L, as both implementations compute).
    attn_flops = 4 * cfg.num_layers * p["batch"] * p["seq"] ** 2 * cfg.hidden_size
    flops = 2 * n_params * tokens + attn_flops
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), torch on {device}, "
          f"jax {jax.__version__}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}")
    print(f"config: phi-2 width {cfg.hidden_size}, {cfg.num_layers} layers, batch {p['batch']}, "
          f"seq {p['seq']}, {p['dtype']}, attention_impl={args.attention_impl}")
    print(f"ours (jax, jit):        {t_ours * 1e3:9.1f} ms  ({tokens / t_ours:,.0f} tok/s, "
          f"{flops / t_ours / 1e12:.1f} TFLOP/s, compile {compile_s:.1f}s)")
    print(f"transformers (torch):   {t_ref * 1e3:9.1f} ms  ({tokens / t_ref:,.0f} tok/s)")
    print(f"ratio torch/ours: {t_ref / t_ours:.2f}x   max |logits diff|: {diff:.2e}")


if __name__ == "__main__":
    main()
