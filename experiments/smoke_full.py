"""The full-size model (Mipha-3B + Swin-B at 1024, bf16, random weights) run for real on the CPU:
the init, one prediction, one train step. An experiment (minutes), not a test.

    python experiments/smoke_full.py --what init      # Trainer.init, configs/segearth_r2.py:lasers
    python experiments/smoke_full.py --what predict   # one image through SegEarthPredictor
    python experiments/smoke_full.py --what train     # one train step at batch 1, remat on

Each ends with one JSON line {"what", "seconds", "peak_rss_gib", "finite", ...}: `seconds` is the
measured part (init: `Trainer.init`; predict: loading the predictor + one `predict.predict` call,
compiles included, ~32 new tokens; train: the first step, compile included, with the compile and
the step also given apart), `peak_rss_gib` the process's peak resident set over that part (the
peak counter is reset after the setup; init: over the whole process), and `finite` that every
output checked is finite (asserted).

Setup for predict: `Trainer.init` (random weights, frozen bf16), then the training export
(`export.write_model`, merged LoRA) into a temporary folder with a small byte-level tokenizer, which
`SegEarthPredictor` loads as it loads any export. Random weights rarely emit `[SEG]`, so the
setup makes every generated token `[SEG]` (final layer norm: scale 0, bias b; the lm_head column
of `[SEG]`: 10 b): the decoder then runs its `max_new_tokens` steps and the head segments
`max_seg` (8) queries, the full inference path.

On the CPU the XLA pass while-loop-invariant-code-motion is disabled (unless XLA_FLAGS is set):
XLA:CPU would hoist f32 copies of every scanned bf16 stack out of its loop (experiments/
RESULTS.md), which a GPU does not make.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_disable_hlo_passes=while-loop-invariant-code-motion")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import segearth_r2  # noqa: E402
from experiments.timing import cpu_memory_reset, peak_rss_bytes  # noqa: E402
from segearth_jax import optim  # noqa: E402
from segearth_jax.testing import random_batch  # noqa: E402
from segearth_jax.train import Trainer  # noqa: E402

GIB = 2**30


def device_bytes(tree) -> int:
    """Bytes of `tree`'s arrays held by the first device."""
    dev = jax.devices()[0]
    return sum(s.data.nbytes for x in jax.tree.leaves(tree) for s in x.addressable_shards
               if s.device == dev)


def finite(tree) -> bool:
    return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree)
               if jnp.issubdtype(x.dtype, jnp.floating))


def run_init(config) -> dict:
    t0 = time.perf_counter()
    state, frozen = Trainer(config).init(0)
    jax.block_until_ready((state, frozen))
    seconds = time.perf_counter() - t0
    stats = jax.devices()[0].memory_stats() or {}
    return dict(seconds=seconds, peak_rss_gib=peak_rss_bytes() / GIB,
                per_device_gib=device_bytes((state, frozen)) / GIB,
                device_peak_gib=stats.get("peak_bytes_in_use", float("nan")) / GIB,
                finite=finite(state.params) and finite(frozen))


def always_seg(params: dict, seg_id: int) -> dict:
    """Every generated token becomes `[SEG]` (see the module docstring)."""
    llm = params["mllm"]["llm"]
    norm = llm["model"]["final_layernorm"]
    e = norm["scale"].shape[0]
    b = jnp.asarray(np.random.default_rng(0).normal(size=e), norm["bias"].dtype)
    norm["scale"], norm["bias"] = jnp.zeros_like(norm["scale"]), b
    kernel = llm["lm_head"]["kernel"]
    llm["lm_head"]["kernel"] = kernel.at[:, seg_id].set(10 * b.astype(kernel.dtype))
    return params


def run_predict(config, new_tokens: int) -> dict:
    from segearth_jax import predict, text
    from segearth_jax.export import write_model
    from segearth_jax.inference import SegEarthPredictor

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_dir = tmp / "tokenizer"
        text.train_tokenizer(tok_dir, ["A chat between a curious user and an assistant. "
                                       "Segment the <p>airplane</p> and the runway."] * 8, 300)
        seg_id = text.load_tokenizer(tok_dir).convert_tokens_to_ids(text.SEG)
        state, frozen = Trainer(config).init(0)
        params = always_seg(optim.merge_params(state.params, frozen), seg_id)
        del state, frozen
        write_model(tmp / "export", config, params, {}, tok_dir)
        del params
        base = cpu_memory_reset()
        t0 = time.perf_counter()
        predictor = SegEarthPredictor(tmp / "export", max_new_tokens=new_tokens)
        t1 = time.perf_counter()
        image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
        res = predict.predict(predictor, image, "Where could aircraft park?")
        seconds = time.perf_counter() - t0
    masks = res["masks"]
    return dict(seconds=seconds, load_s=t1 - t0, predict_s=seconds - (t1 - t0),
                peak_rss_gib=peak_rss_bytes() / GIB,
                rss_at_start_gib=(base or 0) / GIB,
                new_tokens=int(res["answer"].count(text.SEG)), masks=len(masks),
                finite=bool(len(masks)) and all(np.isfinite(a).all() for a in res["attention"]))


def run_train(config) -> dict:
    config.data.batch_size = 1
    config.model.mllm.llm.remat_policy = "full"
    config.model.seg_head.pixel_decoder.remat_policy = "full"
    trainer = Trainer(config)
    state, frozen = trainer.init(0)
    batch = trainer.global_batch(random_batch(config))
    base = cpu_memory_reset()
    t0 = time.perf_counter()
    compiled = trainer.step_fn.lower(state, frozen, batch).compile()
    t1 = time.perf_counter()
    state, metrics = compiled(state, frozen, batch)
    metrics = jax.device_get(metrics)
    t2 = time.perf_counter()
    return dict(seconds=t2 - t0, compile_s=t1 - t0, step_s=t2 - t1,
                peak_rss_gib=peak_rss_bytes() / GIB, rss_at_start_gib=(base or 0) / GIB,
                loss=float(metrics["loss"]), grad_norm=float(metrics["grad_norm"]),
                finite=bool(np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])
                            and int(state.bad_step) < 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--what", required=True, choices=["init", "predict", "train"])
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    config = segearth_r2.get_config("lasers")
    print(f"device: {jax.devices()[0].device_kind} x {jax.device_count()} "
          f"({jax.default_backend()}); XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}",
          flush=True)
    if args.what == "init":
        out = run_init(config)
    elif args.what == "predict":
        out = run_predict(config, args.new_tokens)
    else:
        out = run_train(config)
    line = json.dumps({"what": args.what, **out})
    assert out["finite"], line
    print(line, flush=True)


if __name__ == "__main__":
    main()
